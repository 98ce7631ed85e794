"""Risk profiles built from the style strategies: ``conservative`` and ``aggressive``.

conservative
    Trend with extra confirmation: enters only when the trend rule (EMA ``fast``/``slow``
    spread + efficiency filter, stricter defaults than ``trend``) *and* the momentum rule
    (rate of change + RSI) agree on the direction. Confidence is the lower of the two, so a
    lukewarm agreement stays below a typical ``min_confidence``. It exits early: CLOSE as soon
    as either the EMAs cross back or momentum fades.
    Params: ``fast`` (12), ``slow`` (26), ``min_spread_pct`` (0.0015), ``min_efficiency``
    (0.35), ``roc_period`` (10), ``roc_threshold`` (0.002), ``rsi_period`` (14),
    ``rsi_margin`` (5).

aggressive
    Momentum *or* breakout with looser thresholds: enters when either fires; when both agree
    on the direction the confidence gets a 0.1 bonus. Exits only when momentum fades
    (ROC or RSI turn against the position).
    Params: ``roc_period`` (5), ``roc_threshold`` (0.0015), ``rsi_period`` (14),
    ``rsi_margin`` (2), ``lookback`` (10), ``atr_period`` (14), ``atr_buffer`` (0.0),
    ``volume_mult`` (0.0 = volume ignored).
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from aster_agents.strategies.base import (
    Action,
    FastSlowParams,
    RuleStrategy,
    Series,
    Signal,
    StrategyParams,
    close,
    enter,
    hold,
    parse_params,
)
from aster_agents.strategies.breakout import BreakoutParams, BreakoutStrategy
from aster_agents.strategies.momentum import MomentumParams, MomentumStrategy
from aster_agents.strategies.trend import TrendParams, TrendStrategy


class ConservativeParams(FastSlowParams):
    """Validated params of the conservative profile."""

    fast: int = Field(12, ge=2, le=200)
    slow: int = Field(26, ge=3, le=500)
    min_spread_pct: float = Field(0.0015, ge=0.0, le=0.1)
    min_efficiency: float = Field(0.35, ge=0.0, le=1.0)
    roc_period: int = Field(10, ge=1, le=500)
    roc_threshold: float = Field(0.002, gt=0.0, le=0.5)
    rsi_period: int = Field(14, ge=2, le=200)
    rsi_margin: float = Field(5.0, ge=0.0, le=45.0)


class ConservativeStrategy(RuleStrategy):
    """Trend and momentum must agree; exit when either disagrees."""

    name = "conservative"

    def __init__(self, params: ConservativeParams) -> None:
        self.params = params
        self.trend = TrendStrategy(
            TrendParams(
                fast=params.fast,
                slow=params.slow,
                min_spread_pct=params.min_spread_pct,
                min_efficiency=params.min_efficiency,
            )
        )
        self.momentum = MomentumStrategy(
            MomentumParams(
                roc_period=params.roc_period,
                roc_threshold=params.roc_threshold,
                rsi_period=params.rsi_period,
                rsi_margin=params.rsi_margin,
            )
        )
        self.min_klines = max(self.trend.min_klines, self.momentum.min_klines)

    def entry(self, s: Series) -> Signal:
        """Enter only when trend and momentum point the same way."""
        trend = self.trend.entry(s)
        if trend.action not in (Action.LONG, Action.SHORT):
            return trend
        side, mom_conf, mom_reason = self.momentum.signal(s)
        if side != (1 if trend.action == Action.LONG else -1):
            return hold(f"trend without momentum agreement ({mom_reason})")
        return enter(side, min(trend.confidence, mom_conf), f"{trend.reason}; {mom_reason}")

    def exit(self, s: Series, side: int, entry_price: float) -> Signal:
        """Close when the trend crosses back or momentum fades."""
        trend_exit = self.trend.exit(s, side, entry_price)
        if trend_exit.action == Action.CLOSE:
            return trend_exit
        faded = self.momentum.faded(s, side)
        return close(faded) if faded else hold("trend and momentum intact")


class AggressiveParams(StrategyParams):
    """Validated params of the aggressive profile."""

    roc_period: int = Field(5, ge=1, le=500)
    roc_threshold: float = Field(0.0015, gt=0.0, le=0.5)
    rsi_period: int = Field(14, ge=2, le=200)
    rsi_margin: float = Field(2.0, ge=0.0, le=45.0)
    lookback: int = Field(10, ge=2, le=500)
    atr_period: int = Field(14, ge=2, le=200)
    atr_buffer: float = Field(0.0, ge=0.0, le=10.0)
    volume_mult: float = Field(0.0, ge=0.0, le=20.0)


class AggressiveStrategy(RuleStrategy):
    """Momentum or breakout, whichever fires; exit when momentum fades."""

    name = "aggressive"

    def __init__(self, params: AggressiveParams) -> None:
        self.params = params
        self.momentum = MomentumStrategy(
            MomentumParams(
                roc_period=params.roc_period,
                roc_threshold=params.roc_threshold,
                rsi_period=params.rsi_period,
                rsi_margin=params.rsi_margin,
            )
        )
        self.breakout = BreakoutStrategy(
            BreakoutParams(
                lookback=params.lookback,
                exit_lookback=min(params.lookback, 10),
                atr_period=params.atr_period,
                atr_buffer=params.atr_buffer,
                volume_mult=params.volume_mult,
            )
        )
        self.min_klines = max(self.momentum.min_klines, self.breakout.min_klines)

    def entry(self, s: Series) -> Signal:
        """Enter on momentum or a breakout; a bonus when both agree, nothing when they clash."""
        m_side, m_conf, m_reason = self.momentum.signal(s)
        b_side, b_conf, b_reason = self.breakout.breakout(s)
        if m_side and b_side and m_side != b_side:
            return hold(f"momentum and breakout disagree ({m_reason}; {b_reason})")
        if m_side and b_side:
            return enter(m_side, max(m_conf, b_conf) + 0.1, f"{m_reason}; {b_reason}")
        if m_side or b_side:
            side, conf, reason = (
                (m_side, m_conf, m_reason) if m_side else (b_side, b_conf, b_reason)
            )
            return enter(side, conf, reason)
        return hold(f"{m_reason}; {b_reason}")

    def exit(self, s: Series, side: int, entry_price: float) -> Signal:
        """Close as soon as momentum fades."""
        faded = self.momentum.faded(s, side)
        return close(faded) if faded else hold("momentum holds")


def build_conservative(params: Mapping[str, object], seed: int) -> ConservativeStrategy:
    """Validate params and build the conservative profile (``seed`` is unused)."""
    return ConservativeStrategy(parse_params(ConservativeParams, params))


def build_aggressive(params: Mapping[str, object], seed: int) -> AggressiveStrategy:
    """Validate params and build the aggressive profile (``seed`` is unused)."""
    return AggressiveStrategy(parse_params(AggressiveParams, params))
