"""trend: follow an EMA crossover when the move is strong and orderly.

Idea: the fast EMA above the slow EMA means an up-trend, below means a down-trend. To avoid
chopping in a range, an entry also needs the EMAs to be at least ``min_spread_pct`` apart and
Kaufman's efficiency ratio (net move / path length over ``slow`` candles) to be at least
``min_efficiency``. A position is closed when the EMAs cross back (the opposite signal).

Params (defaults suit 1m-5m candles):

* ``fast`` (9), ``slow`` (21): EMA periods, ``fast < slow``.
* ``min_spread_pct`` (0.001 = 0.1%): minimum |fast - slow| / slow to enter.
* ``min_efficiency`` (0.3): minimum efficiency ratio in [0, 1] to enter.

Confidence: 0.5 at the thresholds, + up to 0.25 as the spread grows to 4x ``min_spread_pct``,
+ up to 0.25 as the efficiency ratio grows to 1.
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


class TrendParams(FastSlowParams):
    """Validated params of the trend strategy."""

    fast: int = Field(9, ge=2, le=200)
    slow: int = Field(21, ge=3, le=500)
    min_spread_pct: float = Field(0.001, ge=0.0, le=0.1)
    min_efficiency: float = Field(0.3, ge=0.0, le=1.0)


class TrendStrategy(RuleStrategy):
    """EMA fast/slow crossover with a spread and efficiency-ratio filter."""

    name = "trend"

    def __init__(self, params: TrendParams) -> None:
        self.params = params
        self.min_klines = params.slow * 3

    def spread(self, s: Series) -> float:
        """(fast EMA - slow EMA) / slow EMA on closes."""
        fast, slow = ind.ema_pair(s.closes, self.params.fast, self.params.slow)
        return (fast - slow) / slow

    def label(self) -> str:
        """'ema9/ema21' for reasons."""
        return f"ema{self.params.fast}/ema{self.params.slow}"

    def entry(self, s: Series) -> Signal:
        """Enter in the direction of the spread when spread and efficiency pass the filters."""
        p = self.params
        spread = self.spread(s)
        if abs(spread) < p.min_spread_pct or spread == 0.0:
            return hold(f"{self.label()} spread {signed_pct(spread)} below filter")
        eff = ind.efficiency_ratio(s.closes, p.slow)  # only past the spread filter
        if eff < p.min_efficiency:
            return hold(f"choppy: efficiency {eff:.2f} < {p.min_efficiency:.2f}")
        side = 1 if spread > 0 else -1
        conf = (
            0.5
            + 0.25 * ind.ramp(abs(spread), p.min_spread_pct, 4 * p.min_spread_pct)
            + 0.25 * ind.ramp(eff, p.min_efficiency, 1.0)
        )
        word = "above" if side > 0 else "below"
        reason = f"ema{p.fast} {word} ema{p.slow} ({signed_pct(spread)}), efficiency {eff:.2f}"
        return enter(side, conf, reason)

    def exit(self, s: Series, side: int, entry_price: float) -> Signal:
        """Close when the EMAs have crossed against the position."""
        spread = self.spread(s)
        if spread * side < 0:
            word = "below" if side > 0 else "above"
            return close(f"ema{self.params.fast} crossed {word} ema{self.params.slow}")
        return hold(f"trend intact: {self.label()} spread {signed_pct(spread)}")


def build(params: Mapping[str, object], seed: int) -> TrendStrategy:
    """Validate params and build the strategy (``seed`` is unused: it is deterministic)."""
    return TrendStrategy(parse_params(TrendParams, params))
