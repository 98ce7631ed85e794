"""Fault injection for the simulated exchange: errors, latency, unknown outcomes, drops."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Probabilities are per request, in [0, 1]; all zero means a well-behaved exchange.

    ``error_rates`` maps an HTTP status (e.g. 500, 502, 503) to the chance a request is
    answered with it *without* being processed. ``accepted_503_rate`` is the chance that an
    accepted new order (POST /order, /batchOrders) is answered 503 "execution status unknown"
    after it was placed. ``drop_rate`` closes the connection without an answer, before the
    request is processed.
    """

    error_rates: Mapping[int, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    accepted_503_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        rates = [*self.error_rates.values(), self.accepted_503_rate, self.drop_rate]
        if any(not 0 <= r <= 1 for r in rates) or sum(self.error_rates.values()) > 1:
            raise ValueError("fault rates must be probabilities in [0, 1] (and sum to <= 1)")
        if any(not 400 <= s <= 599 for s in self.error_rates):
            raise ValueError("fault error statuses must be HTTP 4xx/5xx codes")

    @property
    def active(self) -> bool:
        return bool(
            self.error_rates
            or self.latency_ms
            or self.latency_jitter_ms
            or self.accepted_503_rate
            or self.drop_rate
        )


class Verdict(Enum):
    PROCEED = "proceed"
    DROP = "drop"


class Faults:
    """Draws fault decisions from a seeded generator (thread-safe)."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def delay(self) -> None:
        cfg = self.config
        if cfg.latency_ms or cfg.latency_jitter_ms:
            extra = cfg.latency_jitter_ms * self._draw()
            time.sleep((cfg.latency_ms + extra) / 1000)

    def before(self) -> Verdict | int:
        """DROP, an HTTP status to answer with, or PROCEED."""
        cfg = self.config
        if cfg.drop_rate and self._draw() < cfg.drop_rate:
            return Verdict.DROP
        if cfg.error_rates:
            x, acc = self._draw(), 0.0
            for status, rate in sorted(cfg.error_rates.items()):
                acc += rate
                if x < acc:
                    return status
        return Verdict.PROCEED

    def unknown_after_accept(self) -> bool:
        rate = self.config.accepted_503_rate
        return bool(rate) and self._draw() < rate
