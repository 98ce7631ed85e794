"""Monotonic counters the exporter reads, kept in the ledger's ``counters`` table.

Every counter is bumped inside a transaction its writer already runs, never in one of its
own, so counting costs no extra lock or fsync:

- ``audit``: one per audit row, by event: orders by outcome, fills, state changes, pauses.
  PostgreSQL counts them with a trigger on ``audit``. SQLite folds them in batches: the
  ``AUDIT_MARK`` row holds the highest audit id counted, one writer of the host adds the
  rows past it about once a second (``sqlite.SqliteStore``), and ``read`` adds the rows not
  folded yet, in the same statement, so a reader's counts are exact at any moment.
- ``reservation_denials``: by bounded reason, in ``reserve``'s transaction.
- ``ledger_lock_wait_seconds``: a histogram of every write's flock wait (SQLite), kept in
  the writing process and added by one of its writes every few seconds, and at close.
- ``exchange_*``: what an agent's requests saw (status, error code, latency by endpoint),
  gathered in memory and added by the next request's budget transaction.

Histogram buckets are stored non-cumulative (one row per bucket hit); readers cumulate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Final, NamedTuple

from aster_agents.ledger.backend import Conn

LOCK_WAIT_BUCKETS: Final = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5)
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INF: Final = "+Inf"
DENIAL_REASONS: Final = (
    ("agent disabled", "disabled"),
    ("agent not registered", "not_registered"),
    ("has no limits", "no_limits"),
    ("symbol owned", "symbol_owned"),
    ("max_positions", "max_positions"),
    ("max_total_positions", "max_total_positions"),
    ("gross notional", "leverage"),
    ("margin", "margin"),
    ("holds no position", "no_position"),
)

_UPSERT: Final = (
    "INSERT INTO counters (name, agent_id, labels, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (name, agent_id, labels) DO UPDATE SET value = counters.value + excluded.value"
)

# The ``counters`` row whose value is the highest audit id counted in ``audit`` rows
# (SQLite, migration ``audit-counts-folded``); no such row means every audit row is counted.
AUDIT_MARK: Final = "audit_counted_to_id"
_READ_SQL: Final = (
    "SELECT name, agent_id, labels, value FROM counters WHERE name <> ? "
    "UNION ALL "
    "SELECT '', COALESCE(agent_id, ''), event, COUNT(*) FROM audit "
    "WHERE id > (SELECT value FROM counters WHERE name = ? AND agent_id = '' AND labels = '{}') "
    "GROUP BY COALESCE(agent_id, ''), event"
)

CounterKey = tuple[str, str, str]  # name, agent_id ('' for host-wide), labels as JSON


class Counter(NamedTuple):
    name: str
    agent_id: str
    labels: dict[str, str]
    value: float


def key(name: str, agent_id: str | None = None, **labels: str) -> CounterKey:
    return name, agent_id or "", json.dumps(labels, sort_keys=True, separators=(",", ":"))


def bump(conn: Conn, deltas: Mapping[CounterKey, float]) -> None:
    """Add ``deltas`` inside the caller's transaction (one statement per counter)."""
    conn.executemany(_UPSERT, [(*k, v) for k, v in deltas.items() if v])


def bucket_for(value: float, bounds: Iterable[float]) -> str:
    """The smallest upper bound ``value`` fits under, as its ``le`` label."""
    for bound in bounds:
        if value <= bound:
            return repr(bound)
    return INF


def observe(
    deltas: dict[CounterKey, float],
    name: str,
    value: float,
    bounds: Iterable[float],
    agent_id: str | None = None,
    **labels: str,
) -> None:
    """Add one histogram observation (bucket, sum, count) to ``deltas``."""
    for k in (
        key(f"{name}_bucket", agent_id, le=bucket_for(value, bounds), **labels),
        key(f"{name}_count", agent_id, **labels),
    ):
        deltas[k] = deltas.get(k, 0.0) + 1
    s = key(f"{name}_sum", agent_id, **labels)
    deltas[s] = deltas.get(s, 0.0) + value


def denial_reason(reason: str) -> str:
    """A bounded label for a ``ReservationDenied`` reason (the text carries numbers)."""
    for needle, label in DENIAL_REASONS:
        if needle in reason:
            return label
    return "other"


def lock_wait_deltas(wait_s: float) -> dict[CounterKey, float]:
    deltas: dict[CounterKey, float] = {}
    observe(deltas, "ledger_lock_wait_seconds", wait_s, LOCK_WAIT_BUCKETS)
    return deltas


@lru_cache(maxsize=4096)
def _labels(text: str) -> dict[str, str]:
    """Parsed once per distinct label set (a bounded few): a reader's counters share the
    dict, which nobody modifies."""
    labels: dict[str, str] = json.loads(text)
    return labels


def read(conn: Conn) -> list[Counter]:
    """Every counter; the audit rows past ``AUDIT_MARK`` (if any) counted in, read in the
    same statement (one snapshot) so a fold running meanwhile never counts a row twice."""
    rows = conn.execute(_READ_SQL, (AUDIT_MARK, AUDIT_MARK)).fetchall()
    audit: dict[tuple[str, str], float] = {}
    out = []
    for name, agent_id, labels, value in rows:
        if name == "":  # not folded yet: labels holds the bare event
            k = (str(agent_id), str(labels))
            audit[k] = audit.get(k, 0.0) + float(value)
        else:
            out.append(Counter(str(name), str(agent_id), _labels(str(labels)), float(value)))
    for i, c in enumerate(out):
        if c.name == "audit" and audit:
            extra = audit.pop((c.agent_id, c.labels.get("event", "")), 0.0)
            out[i] = c._replace(value=c.value + extra)
    out += [Counter("audit", a, {"event": e}, v) for (a, e), v in audit.items()]
    return out
