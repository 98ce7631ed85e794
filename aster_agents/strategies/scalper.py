"""scalper: buy micro pull-backs in a short-term trend, take small profits fast.

Idea: with short EMAs (``fast`` above ``slow`` by ``min_spread_pct``), a down candle whose
low dips to the fast EMA while the close holds above the slow EMA is a pull-back worth buying
(mirror for shorts: an up candle whose high reaches the fast EMA, closing below the slow
EMA). Exits are tight: close at ``take_profit_pct`` gain or ``stop_pct`` loss from the entry
price, or as soon as the close crosses the slow EMA against the position. The exchange-side
protective orders stay as the backstop.

Params:

* ``fast`` (5), ``slow`` (13): EMA periods, ``fast < slow``.
* ``min_spread_pct`` (0.0005 = 0.05%): minimum EMA spread that counts as a trend.
* ``take_profit_pct`` (0.003), ``stop_pct`` (0.002): exit distances from the entry price.

Confidence: 0.5 at ``min_spread_pct``, rising to 1.0 as the spread reaches 4x that.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from aster_agents.strategies import indicators as ind
from aster_agents.strategies.base import (
    FastSlowParams,
    RuleStrategy,
    Series,
    Signal,
    close,
    enter,
    hold,
    parse_params,
    signed_pct,
)


class ScalperParams(FastSlowParams):
    """Validated params of the scalper strategy."""

    fast: int = Field(5, ge=2, le=100)
    slow: int = Field(13, ge=3, le=200)
    min_spread_pct: float = Field(0.0005, ge=0.0, le=0.05)
    take_profit_pct: float = Field(0.003, gt=0.0, le=0.1)
    stop_pct: float = Field(0.002, gt=0.0, le=0.1)


class ScalperStrategy(RuleStrategy):
    """Short-EMA trend, pull-back entries, tight exits."""

    name = "scalper"

    def __init__(self, params: ScalperParams) -> None:
        self.params = params
        self.min_klines = params.slow * 3

    def entry(self, s: Series) -> Signal:
        """Enter on a touch of the fast EMA that holds the slow EMA, in the trend's direction."""
        p = self.params
        fast, slow = ind.ema_pair(s.closes, p.fast, p.slow)
        spread = (fast - slow) / slow
        if abs(spread) < p.min_spread_pct or spread == 0.0:
            return hold(f"no short-term trend: ema{p.fast}/ema{p.slow} {signed_pct(spread)}")
        side = 1 if spread > 0 else -1
        touched = s.lows[-1] <= fast if side > 0 else s.highs[-1] >= fast
        against = (s.last - s.opens[-1]) * side < 0
        held = (s.last - slow) * side > 0
        if not (touched and against and held):
            return hold(f"trend {signed_pct(spread)}, waiting for a pull-back to ema{p.fast}")
        conf = 0.5 + 0.5 * ind.ramp(abs(spread), p.min_spread_pct, 4 * p.min_spread_pct)
        word = "dip" if side > 0 else "pop"
        return enter(side, conf, f"{word} to ema{p.fast} in {signed_pct(spread)} trend")

    def exit(self, s: Series, side: int, entry_price: float) -> Signal:
        """Close at the profit target, the stop, or a close through the slow EMA."""
        p = self.params
        if entry_price > 0:
            gain = (s.last / entry_price - 1.0) * side
            if gain >= p.take_profit_pct:
                return close(f"target hit: {signed_pct(gain)}")
            if gain <= -p.stop_pct:
                return close(f"stop hit: {signed_pct(gain)}")
        slow = ind.ema(s.closes, p.slow)
        if (s.last - slow) * side < 0:
            return close(f"close crossed ema{p.slow} against the position")
        return hold("scalp running")


def build(params: Mapping[str, object], seed: int) -> ScalperStrategy:
    """Validate params and build the strategy (``seed`` is unused)."""
    return ScalperStrategy(parse_params(ScalperParams, params))
