"""momentum: ride a strong rate of change that RSI confirms.

Idea: if price moved more than ``roc_threshold`` over the last ``roc_period`` candles and
RSI sits on the same side of 50 by at least ``rsi_margin``, the move tends to continue.
A long is closed when momentum fades: the rate of change turns negative or RSI drops below
50 (mirror for a short).

Params:

* ``roc_period`` (10), ``roc_threshold`` (0.003 = 0.3%): rate-of-change window and the
  minimum |move| to enter.
* ``rsi_period`` (14), ``rsi_margin`` (5): RSI window and the distance from 50 required
  (RSI >= 55 for a long, <= 45 for a short with the defaults).

Confidence: 0.5 at the thresholds, + up to 0.25 as |ROC| reaches 3x the threshold,
+ up to 0.25 as RSI reaches 80 (or 20).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from aster_agents.strategies import indicators as ind
from aster_agents.strategies.base import (
    RuleStrategy,
    Series,
    Signal,
    StrategyParams,
    close,
    enter,
    hold,
    parse_params,
    signed_pct,
)


class MomentumParams(StrategyParams):
    """Validated params of the momentum strategy."""

    roc_period: int = Field(10, ge=1, le=500)
    roc_threshold: float = Field(0.003, gt=0.0, le=0.5)
    rsi_period: int = Field(14, ge=2, le=200)
    rsi_margin: float = Field(5.0, ge=0.0, le=45.0)


class MomentumStrategy(RuleStrategy):
    """Rate-of-change threshold confirmed by RSI."""

    name = "momentum"

    def __init__(self, params: MomentumParams) -> None:
        self.params = params
        self.min_klines = max(params.roc_period + 1, params.rsi_period * 3)

    def signal(self, s: Series) -> tuple[int, float, str]:
        """(side, confidence, reason); side 0 when momentum is not strong enough."""
        p = self.params
        roc = ind.roc(s.closes, p.roc_period)
        rsi = ind.rsi(s.closes, p.rsi_period)
        side = 1 if roc > 0 else -1
        state = f"roc{p.roc_period} {signed_pct(roc)}, rsi {rsi:.0f}"
        if abs(roc) < p.roc_threshold or (rsi - 50.0) * side < p.rsi_margin:
            return 0, 0.0, f"no momentum: {state}"
        conf = (
            0.5
            + 0.25 * ind.ramp(abs(roc), p.roc_threshold, 3 * p.roc_threshold)
            + 0.25 * ind.ramp(abs(rsi - 50.0), p.rsi_margin, 30.0)
        )
        return side, conf, f"{'up' if side > 0 else 'down'} momentum: {state}"

    def faded(self, s: Series, side: int) -> str | None:
        """Why momentum no longer supports a position on ``side``, or None."""
        p = self.params
        roc = ind.roc(s.closes, p.roc_period)
        rsi = ind.rsi(s.closes, p.rsi_period)
        if roc * side < 0 or (rsi - 50.0) * side < 0:
            return f"momentum faded: roc{p.roc_period} {signed_pct(roc)}, rsi {rsi:.0f}"
        return None

    def entry(self, s: Series) -> Signal:
        """Enter with strong, RSI-confirmed momentum."""
        side, conf, reason = self.signal(s)
        return enter(side, conf, reason) if side else hold(reason)

    def exit(self, s: Series, side: int, entry_price: float) -> Signal:
        """Close when ROC or RSI turn against the position."""
        reason = self.faded(s, side)
        return close(reason) if reason else hold("momentum holds")


def build(params: Mapping[str, object], seed: int) -> MomentumStrategy:
    """Validate params and build the strategy (``seed`` is unused)."""
    return MomentumStrategy(parse_params(MomentumParams, params))
