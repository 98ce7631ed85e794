"""Read queries for trade history and the HTML report (design.md section 12: reports).

Like ``history``, each function takes a ``backend.Conn`` and only SELECTs; callers outside
the package use them through ``Ledger`` or ``ReadOnlyLedger`` methods (the read-only view
checks first that the table exists: an old ledger reads as empty). ``import_equity`` is the
one writer: many equity snapshots in one transaction (history imports, benches), with NAV
per unit computed as ``Ledger.snapshot_equity`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, NamedTuple

from aster_agents.errors import LedgerError
from aster_agents.ledger.backend import Conn
from aster_agents.ledger.rows import (
    EQUITY_COLS,
    INDEXED_EVENTS,
    REBALANCE_COLS,
    EquityPoint,
    RebalanceRow,
    dec,
    equity_point,
    rebalance_row,
)


class TradeFill(NamedTuple):
    """One booked fill with the intent it belongs to: ``kind`` open/close/protect and the
    ``note`` written at reservation (the strategy's reason, or which protective order)."""

    agent_id: str
    trade_id: int
    client_order_id: str
    symbol: str
    qty: Decimal  # signed: + buy, - sell
    price: Decimal
    realized_pnl: Decimal
    commission: Decimal
    time_ms: int
    kind: str | None
    note: str | None


class FundingRow(NamedTuple):
    agent_id: str
    symbol: str
    amount: Decimal  # + received
    time_ms: int


class StateChange(NamedTuple):
    """An ``agent_state`` audit entry: active / probation / disabled, with its reason."""

    time_ms: int
    agent_id: str
    state: str
    reason: str


class ForcedClose(NamedTuple):
    """A position dropped without a fill (reconcile found the exchange flat)."""

    time_ms: int
    agent_id: str
    symbol: str
    reason: str


def _where(clauses: Iterable[tuple[str, object | None]]) -> tuple[str, list[object]]:
    used = [(sql, value) for sql, value in clauses if value is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(sql for sql, _ in used), [v for _, v in used]


def trade_fills(
    conn: Conn, agent_id: str | None = None, symbol: str | None = None
) -> list[TradeFill]:
    """Every booked fill (of one agent and/or symbol), oldest first."""
    where, args = _where((("f.agent_id = ?", agent_id), ("f.symbol = ?", symbol)))
    rows = conn.execute(
        "SELECT f.agent_id, f.trade_id, f.client_order_id, f.symbol, f.side, f.qty, f.price, "
        "f.realized_pnl, f.commission, f.time_ms, i.kind, i.reason FROM fills f "
        f"LEFT JOIN intents i ON i.client_order_id = f.client_order_id{where} "
        "ORDER BY f.time_ms, f.trade_id",
        args,
    ).fetchall()
    return [
        TradeFill(
            str(r[0]),
            int(r[1]),
            str(r[2]),
            str(r[3]),
            dec(r[5]) if r[4] == "BUY" else -dec(r[5]),
            dec(r[6]),
            dec(r[7]),
            dec(r[8]),
            int(r[9]),
            None if r[10] is None else str(r[10]),
            None if r[11] is None else str(r[11]),
        )
        for r in rows
    ]


def funding_rows(conn: Conn, agent_id: str | None = None) -> list[FundingRow]:
    """Funding booked to agents, oldest first."""
    where, args = _where((("agent_id = ?", agent_id),))
    rows = conn.execute(
        f"SELECT agent_id, symbol, amount, time_ms FROM funding{where} ORDER BY time_ms, tran_id",
        args,
    ).fetchall()
    return [FundingRow(str(r[0]), str(r[1]), dec(r[2]), int(r[3])) for r in rows]


def _audit_rows(conn: Conn, event: str) -> list[tuple[int, str, dict[str, object]]]:
    rows = conn.execute(
        f"SELECT time_ms, agent_id, detail FROM audit WHERE event = ? AND {INDEXED_EVENTS} "
        "AND agent_id IS NOT NULL "
        "ORDER BY time_ms, id",
        (event,),
    ).fetchall()
    return [(int(r[0]), str(r[1]), json.loads(r[2])) for r in rows]


def state_changes(conn: Conn) -> list[StateChange]:
    """Every agent state change (kill switches, probation, operator), oldest first."""
    return [
        StateChange(t, a, str(d.get("state", "")), str(d.get("reason", "")))
        for t, a, d in _audit_rows(conn, "agent_state")
    ]


def forced_closes(conn: Conn) -> list[ForcedClose]:
    """Positions dropped without a fill (``Ledger.close_position``), oldest first."""
    return [
        ForcedClose(t, a, str(d.get("symbol", "")), str(d["reason"]))
        for t, a, d in _audit_rows(conn, "position_closed")
        if d.get("reason")
    ]


def import_equity(conn: Conn, agent_id: str, points: Iterable[tuple[int, Decimal]]) -> int:
    """Append many ``(time_ms, equity)`` snapshots at the agent's current units (inside a
    write transaction); the number written."""
    row = conn.execute("SELECT units FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    if row is None:
        raise LedgerError(f"agent {agent_id} is not registered in the ledger")
    units = dec(row[0])
    rows: list[tuple[Any, ...]] = [
        (agent_id, t, str(e), str(units), str(e / units) if units > 0 else None) for t, e in points
    ]
    conn.executemany(
        "INSERT INTO equity (agent_id, time_ms, equity, units, nav) VALUES (?, ?, ?, ?, ?)", rows
    )
    return len(rows)


def rebalance_rows(conn: Conn) -> list[RebalanceRow]:
    """Every applied rebalance, oldest first."""
    rows = conn.execute(f"SELECT {REBALANCE_COLS} FROM rebalances ORDER BY id").fetchall()
    return [rebalance_row(r) for r in rows]


def equity_points(
    conn: Conn, agent_id: str, since_ms: int | None = None, *, has_nav: bool = True
) -> list[EquityPoint]:
    """One agent's equity snapshots at or after ``since_ms`` (all when None), oldest first
    (``has_nav`` False: a file older than that column, read without migrating)."""
    cols = EQUITY_COLS if has_nav else "time_ms, equity, NULL"
    rows = conn.execute(
        f"SELECT {cols} FROM equity WHERE agent_id = ? AND time_ms >= ? ORDER BY time_ms, rowid",
        (agent_id, -1 if since_ms is None else since_ms),
    ).fetchall()
    return [equity_point(r) for r in rows]


def equity_curve(conn: Conn, agent_id: str) -> list[tuple[int, Decimal]]:
    """``(time_ms, equity)`` of every snapshot of one agent, oldest first: the portfolio's
    curves (one Decimal per row, no row object: a month of one-minute marks is 43,200)."""
    rows = conn.execute(
        "SELECT time_ms, equity FROM equity WHERE agent_id = ? ORDER BY time_ms, rowid",
        (agent_id,),
    ).fetchall()
    return [(int(t), Decimal(e)) for t, e in rows]
