"""swing: buy RSI pull-backs in a slow EMA trend, sell rallies in a down-trend.

Idea: the slow EMAs (``fast`` above ``slow``) set the direction; an entry waits for RSI to
pull back to ``pullback_rsi`` or below in an up-trend (to ``100 - pullback_rsi`` or above in a
down-trend). A long is closed when RSI reaches ``target_rsi`` (the swing is done) or the EMAs
cross down (the trend is over); mirror for a short.

Params:

* ``fast`` (20), ``slow`` (50): EMA periods, ``fast < slow``.
* ``rsi_period`` (14).
* ``pullback_rsi`` (45): RSI level for a long entry, in [5, 50).
* ``target_rsi`` (70): RSI level that closes a long, in (50, 95].

Confidence: 0.5 at the pull-back level, + up to 0.25 as RSI pulls back 15 points further,
+ up to 0.25 as the EMA spread reaches 1%.
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


class SwingParams(FastSlowParams):
    """Validated params of the swing strategy."""

    fast: int = Field(20, ge=2, le=300)
    slow: int = Field(50, ge=3, le=1000)
    rsi_period: int = Field(14, ge=2, le=200)
    pullback_rsi: float = Field(45.0, ge=5.0, lt=50.0)
    target_rsi: float = Field(70.0, gt=50.0, le=95.0)


class SwingStrategy(RuleStrategy):
    """Slow EMA trend with RSI pull-back entries."""

    name = "swing"

    def __init__(self, params: SwingParams) -> None:
        self.params = params
        self.min_klines = params.slow * 2

    def _state(self, s: Series) -> tuple[float, float]:
        p = self.params
        fast, slow = ind.ema_pair(s.closes, p.fast, p.slow)
        return (fast - slow) / slow, ind.rsi(s.closes, p.rsi_period)

    def entry(self, s: Series) -> Signal:
        """Enter with the trend once RSI has pulled back far enough."""
        p = self.params
        spread, rsi = self._state(s)
        if spread == 0.0:
            return hold("no trend: EMAs equal")
        side = 1 if spread > 0 else -1
        depth = (p.pullback_rsi - rsi) if side > 0 else (rsi - (100.0 - p.pullback_rsi))
        trend = f"ema{p.fast}/ema{p.slow} {signed_pct(spread)}"
        if depth < 0:
            return hold(f"{trend}, rsi {rsi:.0f}: waiting for a pull-back")
        conf = 0.5 + 0.25 * ind.ramp(depth, 0.0, 15.0) + 0.25 * ind.ramp(abs(spread), 0.0, 0.01)
        word = "pull-back" if side > 0 else "rally"
        return enter(side, conf, f"rsi {rsi:.0f} {word} in {trend} trend")

    def exit(self, s: Series, side: int, entry_price: float) -> Signal:
        """Close when RSI reaches the target or the EMAs cross against the position."""
        p = self.params
        spread, rsi = self._state(s)
        target = p.target_rsi if side > 0 else 100.0 - p.target_rsi
        if (rsi - target) * side >= 0:
            return close(f"swing target: rsi {rsi:.0f}")
        if spread * side < 0:
            return close(f"trend over: ema{p.fast}/ema{p.slow} {signed_pct(spread)}")
        return hold(f"swing running: rsi {rsi:.0f}")


def build(params: Mapping[str, object], seed: int) -> SwingStrategy:
    """Validate params and build the strategy (``seed`` is unused)."""
    return SwingStrategy(parse_params(SwingParams, params))
