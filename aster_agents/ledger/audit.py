"""The audit trail (one row per state change) and what every use-case module shares.

Functions over a ``backend.Conn`` (one transaction, or the store's connection for reads).
"""

from __future__ import annotations

import json
from typing import Any, Final

from aster_agents.errors import LedgerError
from aster_agents.ledger.backend import Conn
from aster_agents.ledger.rows import INDEXED_EVENTS, AuditEntry
from aster_agents.models import now_ms as now_ms  # the ledger modules' clock, re-exported

# ``json.dumps(detail, default=str, sort_keys=True)``, without building an encoder per call
# (``json.dumps`` makes one for any non-default option): the same text, every audit row.
DETAIL_JSON: Final = json.JSONEncoder(default=str, sort_keys=True)
RECONCILE: Final = "reconcile"
EXCHANGE_DOWN: Final = "exchange_unreachable"
EXCHANGE_UP: Final = "exchange_reachable"


def record(conn: Conn, agent_id: str | None, event: str, **detail: Any) -> None:
    """Append an audit row stamped now; ``detail`` becomes sorted JSON."""
    record_at(conn, now_ms(), agent_id, event, **detail)


def record_at(conn: Conn, time_ms: int, agent_id: str | None, event: str, **detail: Any) -> None:
    conn.execute(
        "INSERT INTO audit (time_ms, agent_id, event, detail) VALUES (?, ?, ?, ?)",
        (time_ms, agent_id, event, DETAIL_JSON.encode(detail)),
    )


def require_agent(rowcount: int, agent_id: str) -> None:
    """Raise the unknown-agent error when a statement on ``agent_id`` touched no row."""
    if rowcount == 0:
        raise LedgerError(f"agent {agent_id} is not registered in the ledger: register_agent first")


def entries(conn: Conn, limit: int, agent_id: str | None = None) -> list[AuditEntry]:
    """The newest ``limit`` audit entries (of one agent, or all), newest first."""
    where, args = ("WHERE agent_id = ?", [agent_id]) if agent_id else ("", [])
    rows = conn.execute(
        f"SELECT id, time_ms, agent_id, event, detail FROM audit {where} ORDER BY id DESC LIMIT ?",
        [*args, limit],
    ).fetchall()
    return [AuditEntry(*r) for r in rows]


def last_reconcile_ms(conn: Conn, user: str) -> int | None:
    """The exchange time the last reconcile of ``user`` saw, or None.

    Found by the JSON text of ``detail`` and checked after parsing it, so the query needs no
    dialect's JSON functions (a LIKE wildcard in ``user`` can only add rows the check drops).
    """
    pattern = "%" + json.dumps({"user": user})[1:-1] + "%"
    for (detail,) in conn.execute(
        f"SELECT detail FROM audit WHERE event = ? AND {INDEXED_EVENTS} AND detail LIKE ? "
        "ORDER BY id DESC",
        (RECONCILE, pattern),
    ):
        doc = json.loads(detail)
        if doc.get("user") == user:
            value = doc.get("exchange_ms")
            return None if value is None else int(value)
    return None


def note_reachability(conn: Conn, agent_id: str, url: str, reachable: bool, **detail: Any) -> bool:
    """Record that the exchange at ``url`` went unreachable (or answers again), unless the
    newest such row for ``url`` already says so: one row per change however many agents
    see it. A recovery is only recorded after a recorded outage. True when a row was added."""
    event = EXCHANGE_UP if reachable else EXCHANGE_DOWN
    last = _reachability(conn, url)
    if last == event or (reachable and last is None):
        return False
    record(conn, agent_id, event, url=url, **detail)
    return True


def _reachability(conn: Conn, url: str) -> str | None:
    """The newest reachability event recorded for ``url`` (matched as last_reconcile_ms does)."""
    pattern = "%" + json.dumps({"url": url})[1:-1] + "%"
    for event, detail in conn.execute(
        "SELECT event, detail FROM audit WHERE event IN (?, ?) AND detail LIKE ? ORDER BY id DESC",
        (EXCHANGE_DOWN, EXCHANGE_UP, pattern),
    ):
        if json.loads(detail).get("url") == url:
            return str(event)
    return None
