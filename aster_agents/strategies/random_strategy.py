"""random: coin-flip entries and exits, for load and fault testing (not for real money).

Idea: a strategy that trades often and unpredictably but *reproducibly*, so tests of the
runner, ledger and simulator (many agents, fault injection) exercise every path. The draw is
derived from ``(seed, symbol, open time of the last kline)`` through SHA-256, never from a
shared RNG: the same inputs always give the same signal, across processes and restarts.

Flat: with probability ``p_enter`` go LONG or SHORT (50/50), else HOLD.
In a position: with probability ``p_exit`` CLOSE, else HOLD. Confidence is always 1.0 so every
signal (HOLD included) passes ``min_confidence``.

Params: ``p_enter`` (0.3) and ``p_exit`` (0.2), both in [0, 1]. The seed comes from
``get_strategy(..., seed=...)``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

from pydantic import Field

from aster_agents.strategies.base import (
    Action,
    MarketSnapshot,
    PositionView,
    Signal,
    StrategyParams,
    hold,
    parse_params,
)


class RandomParams(StrategyParams):
    """Validated params of the random strategy."""

    p_enter: float = Field(0.3, ge=0.0, le=1.0)
    p_exit: float = Field(0.2, ge=0.0, le=1.0)


class RandomStrategy:
    """Seeded coin flips; deterministic per (seed, symbol, last kline open time)."""

    name = "random"
    min_klines = 1

    def __init__(self, params: RandomParams, seed: int) -> None:
        self.params = params
        self.seed = seed

    def _rng(self, market: MarketSnapshot) -> random.Random:
        key = f"{self.seed}|{market.symbol}|{market.klines[-1].open_time}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))

    def decide(self, market: MarketSnapshot, position: PositionView) -> Signal:
        """Flip the seeded coins for this candle."""
        if len(market.klines) < self.min_klines:
            return hold(f"need {self.min_klines} closed klines, have {len(market.klines)}")
        rng = self._rng(market)
        draw = rng.random()
        if position.qty != 0:
            if draw < self.params.p_exit:
                return Signal(Action.CLOSE, 1.0, f"random exit ({draw:.2f} < {self.params.p_exit})")
            return Signal(
                Action.HOLD, 1.0, f"random hold ({draw:.2f} >= p_exit {self.params.p_exit})"
            )
        if draw < self.params.p_enter:
            action = Action.LONG if rng.random() < 0.5 else Action.SHORT
            return Signal(action, 1.0, f"random {action} ({draw:.2f} < {self.params.p_enter})")
        return Signal(
            Action.HOLD, 1.0, f"random hold ({draw:.2f} >= p_enter {self.params.p_enter})"
        )


def build(params: Mapping[str, object], seed: int) -> RandomStrategy:
    """Validate params and build the strategy with its seed."""
    return RandomStrategy(parse_params(RandomParams, params), seed)
