"""Cross-process token buckets for the exchange's limits, stored in the ledger (design 6).

Buckets: request weight per IP, orders per account per 10 s and per minute. Each bucket
holds ``limit * safety`` tokens and refills linearly over its window. A 429/418 pauses every
process behind that IP until the stated time.

The buckets live in the ledger's store, so on a PostgreSQL ledger shared by several hosts
the order buckets are one per account for every host (the exchange counts orders per
account), while request weight, which the exchange counts per IP, has one bucket (and one
pause) per rate group: ``weight:<group>``, the group being the host's name unless
``rate_group:`` says several hosts share one IP (``liveness.rate_group``). On the SQLite
file (one host) the group is ``ip``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aster_agents.errors import RateLimited
from aster_agents.ledger.backend import Conn, Store, open_store
from aster_agents.ledger.counters import LATENCY_BUCKETS, CounterKey, bump, key, observe
from aster_agents.ledger.liveness import host_name, rate_group

if TYPE_CHECKING:
    from aster_agents.exchange.base import RequestLog

MAX_PAUSE_WAIT_S: Final = 5.0
MAX_SLEEP_S: Final = 0.25


@dataclass(frozen=True, slots=True)
class _Bucket:
    key: str
    capacity: float
    window_s: float
    cost_name: str


class SharedBudget:
    """Implements ``aster_agents.exchange.base.RequestBudget`` across processes."""

    def __init__(
        self,
        state_dir: Path,
        *,
        user: str,
        weight_per_minute: int = 2400,
        orders_per_10s: int = 300,
        orders_per_minute: int = 1200,
        safety: float = 0.8,
        max_pause_wait_s: float = MAX_PAUSE_WAIT_S,
        agent_id: str | None = None,
        url: str | None = None,
        group: str | None = None,
    ) -> None:
        """``url``: the ledger's (``ledger.url``; ``$ASTER_AGENTS_LEDGER_URL`` wins), None for
        the file in ``state_dir``; ``group``: ``rate_group:`` of ``_portfolio.yaml``."""
        self.store: Store = open_store(Path(state_dir), url)
        shared = getattr(self.store, "backend", "sqlite") != "sqlite"
        self.group = rate_group(group, shared=shared)
        # host-wide counters name their host where several hosts share the ledger
        self._host: dict[str, str] = {"host": host_name()} if shared else {}
        self.user = user
        self.agent_id = agent_id
        self._pending: dict[CounterKey, float] = {}  # request counters not yet in the ledger
        self.max_pause_wait_s = max_pause_wait_s
        self._buckets = (
            _Bucket(f"weight:{self.group}", weight_per_minute * safety, 60.0, "weight"),
            _Bucket(f"orders10s:{user}", orders_per_10s * safety, 10.0, "orders"),
            _Bucket(f"orders1m:{user}", orders_per_minute * safety, 60.0, "orders"),
        )

    def close(self) -> None:
        self.store.close()

    def acquire(self, weight: int, orders: int = 0) -> None:
        """Block until the tokens are there; raise ``RateLimited`` if paused for too long."""
        costs = {"weight": float(weight), "orders": float(orders)}
        for bucket in self._buckets:
            if costs[bucket.cost_name] > bucket.capacity:
                raise ValueError(
                    f"request cost {costs[bucket.cost_name]} exceeds bucket {bucket.key} "
                    f"capacity {bucket.capacity}: lower the cost or raise safety"
                )
        while True:
            wait = self._try_take(costs)
            if wait <= 0:
                return
            time.sleep(min(wait, MAX_SLEEP_S))

    def record(self, entry: RequestLog) -> None:
        """Count one finished request (an ``on_request`` hook); stored by the next write.

        The counters ride on the budget transaction every request already runs, so the
        exporter's request metrics cost no write of their own; the last few requests before
        a process exits may go uncounted.
        """
        deltas, agent = self._pending, self.agent_id
        status = str(entry.status) if entry.status is not None else "none"
        for k in (key("exchange_requests", agent, status=status),) + (
            (key("exchange_errors", agent, code=str(entry.error_code)),)
            if entry.error_code is not None
            else ()
        ):
            deltas[k] = deltas.get(k, 0.0) + 1
        if entry.status in (429, 418):
            k = key("exchange_rate_limited", None, status=status, **self._host)
            deltas[k] = deltas.get(k, 0.0) + 1
        seconds = entry.elapsed_ms / 1000
        observe(
            deltas,
            "exchange_request_duration_seconds",
            seconds,
            LATENCY_BUCKETS,
            None,
            endpoint=f"{entry.method} {entry.path}",
            **self._host,
        )

    def _flush(self, conn: Conn) -> None:
        if self._pending:
            bump(conn, self._pending)
            self._pending = {}

    def _try_take(self, costs: dict[str, float]) -> float:
        with self.store.write() as conn:
            self._flush(conn)
            now = time.time()
            paused = self._pause_row(conn, self.group)
            if paused is not None and paused[0] > now:
                if paused[0] - now > self.max_pause_wait_s:
                    raise RateLimited(
                        f"host paused until {paused[0]:.0f} ({paused[1]})", retry_at=paused[0]
                    )
                return paused[0] - now
            levels = {b.key: self._level(conn, b, now) for b in self._buckets}
            waits = [
                (costs[b.cost_name] - levels[b.key]) * b.window_s / b.capacity
                for b in self._buckets
            ]
            if max(waits) > 0:
                return max(waits)
            for b in self._buckets:
                self._store_level(conn, b, levels[b.key] - costs[b.cost_name], now)
            return 0.0

    @staticmethod
    def _pause_row(conn: Conn, group: str) -> tuple[float, str] | None:
        row = conn.execute(
            "SELECT until_s, reason FROM rate_pauses WHERE grp = ?", (group,)
        ).fetchone()
        return None if row is None else (float(row[0]), str(row[1]))

    @staticmethod
    def _level(conn: Conn, bucket: _Bucket, now: float) -> float:
        row = conn.execute(
            "SELECT tokens, updated_s FROM budgets WHERE key = ?", (bucket.key,)
        ).fetchone()
        if row is None:
            return bucket.capacity
        refill = max(0.0, now - float(row[1])) * bucket.capacity / bucket.window_s
        return float(min(bucket.capacity, float(row[0]) + refill))

    @staticmethod
    def _store_level(conn: Conn, bucket: _Bucket, tokens: float, now: float) -> None:
        conn.execute(
            "INSERT INTO budgets (key, tokens, capacity, refill_per_s, updated_s) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, "
            "capacity = excluded.capacity, refill_per_s = excluded.refill_per_s, "
            "updated_s = excluded.updated_s",
            (bucket.key, tokens, bucket.capacity, bucket.capacity / bucket.window_s, now),
        )

    def observe(
        self,
        used_weight_1m: int | None,
        order_count_10s: int | None,
        order_count_1m: int | None,
    ) -> None:
        """Lower the buckets to what the exchange's headers say is left."""
        used = (used_weight_1m, order_count_10s, order_count_1m)
        if all(u is None for u in used):
            return
        with self.store.write() as conn:
            self._flush(conn)
            now = time.time()
            for bucket, count in zip(self._buckets, used, strict=True):
                if count is not None:
                    level = self._level(conn, bucket, now)
                    left = max(0.0, bucket.capacity - count)
                    self._store_level(conn, bucket, min(level, left), now)

    def pause(self, until: float, reason: str) -> None:
        """Pause every process of this rate group (this host, or the hosts behind its IP)
        until ``until`` (epoch seconds); never shortens a pause."""
        with self.store.write() as conn:
            row = self._pause_row(conn, self.group)
            if row is None:
                conn.execute(
                    "INSERT INTO rate_pauses (grp, until_s, reason) VALUES (?, ?, ?)",
                    (self.group, until, reason),
                )
            elif until > row[0]:
                conn.execute(
                    "UPDATE rate_pauses SET until_s = ?, reason = ? WHERE grp = ?",
                    (until, reason, self.group),
                )
            detail = {"until": until, "reason": reason, "group": self.group}
            conn.execute(
                "INSERT INTO audit (time_ms, agent_id, event, detail) VALUES (?, NULL, 'pause', ?)",
                (int(time.time() * 1000), json.dumps(detail)),
            )

    def paused_until(self) -> float | None:
        row = self._pause_row(self.store.conn, self.group)
        return row[0] if row is not None and row[0] > time.time() else None

    def state(self) -> dict[str, Any]:
        """Bucket levels and the pause, for ``status``."""
        now = time.time()
        with self.store.read() as conn:
            levels = {b.key: round(self._level(conn, b, now), 3) for b in self._buckets}
            paused = self._pause_row(conn, self.group)
        active = paused is not None and paused[0] > now
        return {
            "buckets": levels,
            "capacity": {b.key: b.capacity for b in self._buckets},
            "paused_until": paused[0] if active and paused else None,
            "pause_reason": paused[1] if active and paused else None,
        }
