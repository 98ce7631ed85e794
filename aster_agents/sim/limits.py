"""Request-weight (per IP) and order-count (per account) limits, with 429 then 418 bans."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Final

from aster_agents.sim.engine import ApiError

MAX_BAN_SECONDS: Final = 3 * 86_400.0


@dataclass(frozen=True, slots=True)
class LimitConfig:
    """The real exchange's limits by default; tests shrink them."""

    weight_per_window: int = 2400
    weight_window_s: float = 60.0
    orders_short: int = 300
    orders_short_window_s: float = 10.0
    orders_long: int = 1200
    orders_long_window_s: float = 60.0
    ban_seconds: float = 120.0
    # Requests that were already in flight when a 429 went out cannot have honoured it:
    # during this grace they get another 429; only a request sent after it earns a 418.
    grace_s: float = 1.0
    align_to_start: bool = False  # count windows from the server start instead of the clock

    def rate_limits_doc(self) -> list[dict[str, object]]:
        """The ``rateLimits`` array of exchangeInfo."""
        return [
            _doc("REQUEST_WEIGHT", self.weight_window_s, self.weight_per_window),
            _doc("ORDERS", self.orders_long_window_s, self.orders_long),
            _doc("ORDERS", self.orders_short_window_s, self.orders_short),
        ]


def _doc(kind: str, window: float, limit: int) -> dict[str, object]:
    if window >= 60 and window % 60 == 0:
        return {
            "rateLimitType": kind,
            "interval": "MINUTE",
            "intervalNum": int(window // 60),
            "limit": limit,
        }
    return {
        "rateLimitType": kind,
        "interval": "SECOND",
        "intervalNum": max(1, int(window)),
        "limit": limit,
    }


@dataclass(slots=True)
class _Window:
    index: int = -1
    used: int = 0

    def roll(self, now: float, size: float, origin: float) -> float:
        """Reset on a new window; returns the seconds left in the current one."""
        index = int((now - origin) // size)
        if index != self.index:
            self.index, self.used = index, 0
        return origin + (index + 1) * size - now


@dataclass(slots=True)
class _IpState:
    weight: _Window = field(default_factory=_Window)
    retry_until: float = 0.0
    limited_at: float = 0.0
    banned_until: float = 0.0
    bans: int = 0
    limited: int = 0


@dataclass(slots=True)
class _AccountState:
    short: _Window = field(default_factory=_Window)
    long: _Window = field(default_factory=_Window)


def _ceil(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class RateLimiter:
    """Fixed-window counters, as the X-MBX-* headers report them. Thread-safe.

    Windows are counted from ``origin`` (default 0: aligned to the wall clock like the real
    exchange's minutes); tests pass the start time so no window boundary falls mid-test.
    """

    def __init__(self, config: LimitConfig, origin: float = 0.0) -> None:
        self.config = config
        self.origin = origin
        self._ips: dict[str, _IpState] = {}
        self._accounts: dict[str, _AccountState] = {}
        self._lock = threading.Lock()

    def weight(self, ip: str, weight: int, now: float) -> int:
        """Charge ``weight`` to ``ip``; returns the used weight or raises 429/418."""
        cfg = self.config
        with self._lock:
            st = self._ips.setdefault(ip, _IpState())
            if now < st.banned_until:
                raise self._banned(st, now)
            if now < st.retry_until and now < st.limited_at + cfg.grace_s:
                st.limited += 1
                raise self._weight_exceeded(cfg, st.retry_until - now)
            if now < st.retry_until:
                st.bans += 1
                ban = min(cfg.ban_seconds * 2 ** (st.bans - 1), MAX_BAN_SECONDS)
                st.banned_until, st.retry_until = now + ban, 0.0
                raise self._banned(st, now)
            left = st.weight.roll(now, cfg.weight_window_s, self.origin)
            if st.weight.used + weight > cfg.weight_per_window:
                st.retry_until, st.limited_at = now + left, now
                st.limited += 1
                raise self._weight_exceeded(cfg, left)
            st.weight.used += weight
            return st.weight.used

    @staticmethod
    def _weight_exceeded(cfg: LimitConfig, left: float) -> ApiError:
        return ApiError(
            -1003,
            f"Too many requests; current limit is {cfg.weight_per_window} request "
            "weight per minute. Please use the websocket for live updates to avoid "
            "polling the API.",
            429,
            _ceil(left),
        )

    def counts(self) -> tuple[int, int]:
        """(429 answers, 418 bans) given so far, over every IP: for tests and benches."""
        with self._lock:
            return (
                sum(s.limited for s in self._ips.values()),
                sum(s.bans for s in self._ips.values()),
            )

    @staticmethod
    def _banned(st: _IpState, now: float) -> ApiError:
        until_ms = int(st.banned_until * 1000)
        return ApiError(
            -1003,
            f"Way too many requests; IP banned until {until_ms}. Please use the "
            "websocket for live updates to avoid bans.",
            418,
            _ceil(st.banned_until - now),
        )

    def used_weight(self, ip: str, now: float) -> int:
        with self._lock:
            st = self._ips.setdefault(ip, _IpState())
            st.weight.roll(now, self.config.weight_window_s, self.origin)
            return st.weight.used

    def orders(self, user: str, count: int, now: float) -> tuple[int, int]:
        """Count ``count`` new orders for ``user``; returns (short, long) counts or raises 429."""
        cfg = self.config
        with self._lock:
            st = self._accounts.setdefault(user.lower(), _AccountState())
            left_s = st.short.roll(now, cfg.orders_short_window_s, self.origin)
            left_l = st.long.roll(now, cfg.orders_long_window_s, self.origin)
            if st.short.used + count > cfg.orders_short:
                raise self._too_many(cfg.orders_short, cfg.orders_short_window_s, left_s)
            if st.long.used + count > cfg.orders_long:
                raise self._too_many(cfg.orders_long, cfg.orders_long_window_s, left_l)
            st.short.used += count
            st.long.used += count
            return st.short.used, st.long.used

    @staticmethod
    def _too_many(limit: int, window: float, left: float) -> ApiError:
        return ApiError(
            -1015,
            f"Too many new orders; current limit is {limit} orders per {window:g} seconds.",
            429,
            _ceil(left),
        )
