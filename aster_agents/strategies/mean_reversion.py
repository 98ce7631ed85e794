"""mean_reversion: fade stretched moves beyond the Bollinger bands, exit at the mean.

Idea: when the close is outside the Bollinger band *and* RSI confirms the extreme (oversold
below the lower band, overbought above the upper band), bet on a return to the moving average.
The position is closed when the close is back at (or through) the middle band.

Params:

* ``period`` (20): Bollinger SMA/stdev window.
* ``width`` (2.0): band half-width in standard deviations.
* ``rsi_period`` (14), ``rsi_low`` (30), ``rsi_high`` (70): RSI window and the oversold /
  overbought levels (``rsi_low`` in [0, 50], ``rsi_high`` in [50, 100]).

Confidence: 0.5 at the band, + up to 0.25 as the close reaches 1.5 stdev beyond the band,
+ up to 0.25 as RSI goes 20 points past its level.
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
)


class MeanReversionParams(StrategyParams):
    """Validated params of the mean_reversion strategy."""

    period: int = Field(20, ge=5, le=500)
    width: float = Field(2.0, gt=0.0, le=5.0)
    rsi_period: int = Field(14, ge=2, le=200)
    rsi_low: float = Field(30.0, ge=0.0, le=50.0)
    rsi_high: float = Field(70.0, ge=50.0, le=100.0)


class MeanReversionStrategy(RuleStrategy):
    """Bollinger band + RSI extremes, exit at the middle band."""

    name = "mean_reversion"

    def __init__(self, params: MeanReversionParams) -> None:
        self.params = params
        self.min_klines = max(params.period, params.rsi_period * 3) + 1

    def entry(self, s: Series) -> Signal:
        """Fade a close beyond a band when RSI agrees."""
        p = self.params
        band = ind.bollinger(s.closes, p.period, p.width)
        rsi = ind.rsi(s.closes, p.rsi_period)
        dev = (band.upper - band.middle) / p.width
        if s.last < band.lower and rsi <= p.rsi_low:
            return enter(
                1,
                self._conf(band.lower - s.last, dev, p.rsi_low - rsi),
                (f"close below lower band ({s.last:.6g} < {band.lower:.6g}), rsi {rsi:.0f}"),
            )
        if s.last > band.upper and rsi >= p.rsi_high:
            return enter(
                -1,
                self._conf(s.last - band.upper, dev, rsi - p.rsi_high),
                (f"close above upper band ({s.last:.6g} > {band.upper:.6g}), rsi {rsi:.0f}"),
            )
        return hold(f"inside bands ({band.lower:.6g}..{band.upper:.6g}), rsi {rsi:.0f}")

    @staticmethod
    def _conf(beyond: float, dev: float, rsi_excess: float) -> float:
        stretch = beyond / dev if dev > 0 else 0.0
        return 0.5 + 0.25 * ind.ramp(stretch, 0.0, 1.5) + 0.25 * ind.ramp(rsi_excess, 0.0, 20.0)

    def exit(self, s: Series, side: int, entry_price: float) -> Signal:
        """Close once the close is back at the middle band."""
        mid = ind.sma(s.closes, self.params.period)
        if (s.last - mid) * side >= 0:
            return close(f"mean reached: close {s.last:.6g} vs sma{self.params.period} {mid:.6g}")
        return hold(f"waiting for the mean {mid:.6g} (close {s.last:.6g})")


def build(params: Mapping[str, object], seed: int) -> MeanReversionStrategy:
    """Validate params and build the strategy (``seed`` is unused)."""
    return MeanReversionStrategy(parse_params(MeanReversionParams, params))
