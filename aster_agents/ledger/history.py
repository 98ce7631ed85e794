"""Read-only history queries for metrics and the kill switches (governance).

Each function takes a connection (the read-write store's or ``ReadOnlyLedger``'s), so the
read-write ledger and the read-only view used by ``portfolio`` share them; callers outside
the package use them through ``Ledger`` or ``ReadOnlyLedger`` methods. They only SELECT.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Final, NamedTuple

from aster_agents.ledger.backend import Conn
from aster_agents.ledger.rows import INDEXED_EVENTS, dec

# The reason of an operator's ``agents enable``: it restarts the drawdown peaks (see governance).
OPERATOR_ENABLE: Final = "enabled by operator"


class FillRecord(NamedTuple):
    """One booked fill; ``qty`` is signed (+ buy, - sell).

    ``time_ms`` is when the ledger booked it, on the local clock of the equity snapshots (a
    simulator's market time can run many times faster); the exchange's trade time for fills
    booked before the ledger recorded that (``has_booked`` False: a file older than the column).
    """

    time_ms: int
    symbol: str
    qty: Decimal
    realized_pnl: Decimal


def fills(conn: Conn, agent_id: str, *, has_booked: bool = True) -> list[FillRecord]:
    """Every fill of ``agent_id``, oldest first by booking time."""
    when = "COALESCE(booked_ms, time_ms)" if has_booked else "time_ms"
    rows = conn.execute(
        f"SELECT {when}, symbol, side, qty, realized_pnl FROM fills WHERE agent_id = ? "
        f"ORDER BY {when}, trade_id",
        (agent_id,),
    ).fetchall()
    return [
        FillRecord(int(r[0]), str(r[1]), dec(r[3]) if r[2] == "BUY" else -dec(r[3]), dec(r[4]))
        for r in rows
    ]


def nav_after(
    conn: Conn, agent_id: str, after_ms: int | None = None, *, has_nav: bool = True
) -> list[tuple[int, float, float | None]]:
    """Equity snapshots newer than ``after_ms`` (all when None), oldest first, as floats
    ``(time_ms, equity, nav per unit)``; nav is None for snapshots written before the ledger
    recorded it (``has_nav`` False: a file older than that column, read without migrating)."""
    nav = "CAST(nav AS REAL)" if has_nav else "NULL"
    rows: list[tuple[int, float, float | None]] = conn.execute(
        f"SELECT time_ms, CAST(equity AS REAL), {nav} FROM equity WHERE agent_id = ? "
        "AND time_ms > ? ORDER BY time_ms, rowid",
        (agent_id, -1 if after_ms is None else after_ms),
    ).fetchall()
    return rows


def operator_enables(conn: Conn, agent_ids: Sequence[str]) -> dict[str, int]:
    """The time of each agent's latest enable by an operator (agents never enabled are absent)."""
    if not agent_ids:
        return {}
    marks = ", ".join("?" * len(agent_ids))
    rows = conn.execute(
        f"SELECT agent_id, MAX(time_ms) FROM audit WHERE event = 'agent_state' "
        f"AND {INDEXED_EVENTS} AND agent_id IN ({marks}) AND detail LIKE ? GROUP BY agent_id",
        (*agent_ids, f'%"reason": "{OPERATOR_ENABLE}%'),
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}
