"""breakout: trade a close outside the Donchian channel, confirmed by ATR and volume.

Idea: a close above the highest high (below the lowest low) of the previous ``lookback``
candles starts a move. To skip marginal pokes the close must clear the channel by at least
``atr_buffer`` x ATR, and the breakout candle's volume must be at least ``volume_mult`` x the
average volume of the channel candles (volume is ignored when the feed reports none).
Exit like the turtles: a long is closed when the close falls below the lowest low of the
previous ``exit_lookback`` candles (a short when it rises above their highest high).

Params:

* ``lookback`` (20): entry channel length in candles.
* ``exit_lookback`` (10): exit channel length, at most ``lookback``.
* ``atr_period`` (14), ``atr_buffer`` (0.1): ATR window and how far past the channel the
  close must be, in ATRs.
* ``volume_mult`` (1.0): minimum breakout volume relative to the channel's average.

Confidence: 0.5 at the thresholds, + up to 0.25 as the close clears the channel by one more
ATR, + up to 0.25 as volume reaches twice the required ratio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import Field, ValidationInfo, field_validator

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
)


class BreakoutParams(StrategyParams):
    """Validated params of the breakout strategy."""

    lookback: int = Field(20, ge=2, le=500)
    exit_lookback: int = Field(10, ge=2, le=500)
    atr_period: int = Field(14, ge=2, le=200)
    atr_buffer: float = Field(0.1, ge=0.0, le=10.0)
    volume_mult: float = Field(1.0, ge=0.0, le=20.0)

    @field_validator("exit_lookback")
    @classmethod
    def _not_longer_than_entry(cls, value: int, info: ValidationInfo) -> int:
        lookback = info.data.get("lookback")
        if isinstance(lookback, int) and value > lookback:
            raise ValueError(f"must be at most lookback ({lookback})")
        return value


class BreakoutStrategy(RuleStrategy):
    """Donchian channel breakout with ATR and volume filters."""

    name = "breakout"

    def __init__(self, params: BreakoutParams) -> None:
        self.params = params
        self.min_klines = max(params.lookback, params.atr_period * 2) + 1

    def breakout(self, s: Series) -> tuple[int, float, str]:
        """(side, confidence, reason) of a breakout on the last candle; side 0 if none."""
        p = self.params
        chan = ind.donchian(s.highs[:-1], s.lows[:-1], p.lookback)
        above, below = s.last - chan.upper, chan.lower - s.last
        side, excess = (1, above) if above > 0 else (-1, below) if below > 0 else (0, 0.0)
        if side == 0:
            return 0, 0.0, f"inside channel {chan.lower:.6g}..{chan.upper:.6g}"
        atr = ind.atr(s.highs, s.lows, s.closes, p.atr_period)  # only a break needs it
        buffer = excess / atr if atr > 0 else math.inf
        if buffer < p.atr_buffer:
            return 0, 0.0, f"break too small: {buffer:.2f} ATR < {p.atr_buffer:.2f}"
        vol_ratio = self._volume_ratio(s)
        if vol_ratio < p.volume_mult:
            return 0, 0.0, f"break on thin volume: {vol_ratio:.2f}x < {p.volume_mult:.2f}x"
        conf = (
            0.5
            + 0.25 * ind.ramp(buffer, p.atr_buffer, p.atr_buffer + 1.0)
            + 0.25 * ind.ramp(vol_ratio, p.volume_mult, 2.0 * max(p.volume_mult, 0.5))
        )
        word = "above" if side > 0 else "below"
        edge = chan.upper if side > 0 else chan.lower
        return side, conf, f"close {word} {p.lookback}-candle channel {edge:.6g} ({buffer:.1f} ATR)"

    def _volume_ratio(self, s: Series) -> float:
        avg = ind.sma(s.volumes[:-1], self.params.lookback)
        return s.volumes[-1] / avg if avg > 0 else math.inf

    def entry(self, s: Series) -> Signal:
        """Enter in the direction of a confirmed channel break."""
        side, conf, reason = self.breakout(s)
        return enter(side, conf, reason) if side else hold(reason)

    def exit(self, s: Series, side: int, entry_price: float) -> Signal:
        """Close when the close crosses the opposite edge of the exit channel."""
        n = self.params.exit_lookback
        chan = ind.donchian(s.highs[:-1], s.lows[:-1], n)
        if side > 0 and s.last < chan.lower:
            return close(f"close below {n}-candle low {chan.lower:.6g}")
        if side < 0 and s.last > chan.upper:
            return close(f"close above {n}-candle high {chan.upper:.6g}")
        return hold(f"inside exit channel {chan.lower:.6g}..{chan.upper:.6g}")


def build(params: Mapping[str, object], seed: int) -> BreakoutStrategy:
    """Validate params and build the strategy (``seed`` is unused)."""
    return BreakoutStrategy(parse_params(BreakoutParams, params))
