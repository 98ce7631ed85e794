"""Fills, funding and positions: what the exchange says happened, booked once per trade id.

Functions over a ``backend.Conn``. A fill moves the agent's position (average in, keep on
reduce, reset on flip) and its realized P&L and fees; a position reaching zero frees its
slot and its symbol.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

from aster_agents.errors import LedgerError
from aster_agents.ledger.audit import now_ms, record, require_agent
from aster_agents.ledger.backend import Conn
from aster_agents.ledger.rows import POSITION_COLS, LedgerPosition, dec, position_row
from aster_agents.models import Side

ZERO: Final = Decimal(0)


# time_ms is the exchange's trade time; booked_ms the local clock's when the ledger booked it
INSERT_FILL: Final = (
    "INSERT INTO fills (agent_id, trade_id, client_order_id, symbol, side, qty, price, "
    "realized_pnl, commission, time_ms, booked_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT DO NOTHING"
)


def apply_fill(
    qty: Decimal, entry: Decimal, fill_qty: Decimal, price: Decimal
) -> tuple[Decimal, Decimal]:
    """(signed qty, entry) after a signed fill: average in, keep on reduce, reset on flip."""
    new_qty = qty + fill_qty
    if new_qty == 0:
        return ZERO, ZERO
    if qty == 0 or (qty > 0) == (fill_qty > 0):
        return new_qty, (abs(qty) * entry + abs(fill_qty) * price) / abs(new_qty)
    if (new_qty > 0) == (qty > 0):
        return new_qty, entry
    return new_qty, price


def book_fill(
    conn: Conn,
    coid: str,
    *,
    trade_id: int,
    symbol: str,
    side: Side,
    qty: Decimal,
    price: Decimal,
    realized_pnl: Decimal,
    commission: Decimal,
    time_ms: int,
) -> bool:
    """Book one trade of the order ``coid``; False if already booked."""
    intent = conn.execute(
        "SELECT agent_id, user, kind, margin, margin_booked FROM intents WHERE client_order_id = ?",
        (coid,),
    ).fetchone()
    if intent is None:
        raise LedgerError(
            f"fill {trade_id}: no intent with client order id {coid}; "
            "run reconcile to adopt foreign orders"
        )
    agent_id, user, kind, margin, margin_booked = intent
    cur = conn.execute(
        INSERT_FILL,
        (
            agent_id,
            trade_id,
            coid,
            symbol,
            side.value,
            str(qty),
            str(price),
            str(realized_pnl),
            str(commission),
            time_ms,
            now_ms(),
        ),
    )
    if cur.rowcount == 0:
        return False
    signed = qty if side is Side.BUY else -qty
    extra_margin = ZERO
    if kind == "open" and not margin_booked:
        extra_margin = dec(margin)
        conn.execute("UPDATE intents SET margin_booked = 1 WHERE client_order_id = ?", (coid,))
    _move_position(conn, agent_id, user, symbol, signed, price, extra_margin)
    _add_pnl(conn, agent_id, realized_pnl, commission)
    record(conn, agent_id, "fill", coid=coid, trade_id=trade_id, qty=signed)
    return True


def _move_position(
    conn: Conn,
    agent_id: str,
    user: str,
    symbol: str,
    signed: Decimal,
    price: Decimal,
    extra_margin: Decimal,
) -> None:
    now = now_ms()
    row = conn.execute(
        "SELECT qty, entry_price, margin FROM positions WHERE agent_id = ? AND symbol = ?",
        (agent_id, symbol),
    ).fetchone()
    qty, entry, margin = (ZERO, ZERO, ZERO) if row is None else tuple(map(dec, row))
    new_qty, new_entry = apply_fill(qty, entry, signed, price)
    if new_qty == 0:
        conn.execute("DELETE FROM positions WHERE agent_id = ? AND symbol = ?", (agent_id, symbol))
        record(conn, agent_id, "position_closed", symbol=symbol)
        return
    conn.execute(
        "INSERT INTO positions (agent_id, symbol, user, qty, entry_price, margin, opened_ms, "
        "updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, symbol) DO UPDATE "
        "SET qty = excluded.qty, entry_price = excluded.entry_price, "
        "margin = excluded.margin, updated_ms = excluded.updated_ms",
        (
            agent_id,
            symbol,
            user,
            str(new_qty),
            str(new_entry),
            str(margin + extra_margin),
            now,
            now,
        ),
    )


def _add_pnl(conn: Conn, agent_id: str, realized: Decimal, commission: Decimal) -> None:
    row = conn.execute(
        "SELECT realized_pnl, fees FROM agents WHERE agent_id = ?", (agent_id,)
    ).fetchone()
    conn.execute(
        "UPDATE agents SET realized_pnl = ?, fees = ? WHERE agent_id = ?",
        (str(dec(row[0]) + realized), str(dec(row[1]) + commission), agent_id),
    )


def book_exchange_close(
    conn: Conn,
    user: str,
    *,
    event: str,
    order_id: int,
    client_order_id: str,
    trade_id: int,
    symbol: str,
    side: Side,
    qty: Decimal,
    price: Decimal,
    realized_pnl: Decimal,
    commission: Decimal,
    time_ms: int,
) -> str | None:
    """Book a trade of an order the exchange placed (liquidation, ADL) to the agent whose
    position it reduces; see ``Ledger.book_exchange_close``. None when no agent holds it."""
    coid = f"{event}-{order_id}"
    signed = qty if side is Side.BUY else -qty
    agent_id = _exchange_close_holder(conn, user, symbol, coid, signed)
    if agent_id is None:
        return None
    cur = conn.execute(
        INSERT_FILL,
        (
            agent_id,
            trade_id,
            coid,
            symbol,
            side.value,
            str(qty),
            str(price),
            str(realized_pnl),
            str(commission),
            time_ms,
            now_ms(),
        ),
    )
    if cur.rowcount == 0:
        return agent_id
    conn.execute(
        "INSERT INTO intents (seq, client_order_id, agent_id, user, symbol, side, kind, margin, "
        "notional, state, pid, created_ms, expires_ms, updated_ms, sent, reason) "
        "SELECT COALESCE(MAX(seq), 0) + 1, ?, ?, ?, ?, ?, ?, '0', '0', 'filled', 0, ?, ?, ?, 1, ? "
        "FROM intents WHERE TRUE ON CONFLICT DO NOTHING",  # WHERE: SQLite's upsert parsing
        (
            coid,
            agent_id,
            user,
            symbol,
            side.value,
            event,
            time_ms,
            time_ms,
            time_ms,
            client_order_id,
        ),
    )
    _move_position(conn, agent_id, user, symbol, signed, price, ZERO)
    _add_pnl(conn, agent_id, realized_pnl, commission)
    record(
        conn,
        agent_id,
        event,
        user=user,
        symbol=symbol,
        qty=signed,
        price=price,
        realized_pnl=realized_pnl,
        commission=commission,
        trade_id=trade_id,
        order_id=order_id,
        exchange_coid=client_order_id,
    )
    return agent_id


def _exchange_close_holder(
    conn: Conn, user: str, symbol: str, coid: str, signed: Decimal
) -> str | None:
    """The order's earlier trades' agent, else the agent whose position on ``symbol`` the
    trade reduces (the largest one)."""
    row = conn.execute("SELECT agent_id FROM intents WHERE client_order_id = ?", (coid,)).fetchone()
    if row is not None:
        return str(row[0])
    rows = conn.execute(
        "SELECT agent_id, qty FROM positions WHERE user = ? AND symbol = ?", (user, symbol)
    ).fetchall()
    reduced = [(abs(dec(q)), str(a)) for a, q in rows if (dec(q) > 0) != (signed > 0)]
    return max(reduced)[1] if reduced else None


def close_position(conn: Conn, agent_id: str, symbol: str, reason: str) -> bool:
    """Drop a position without a fill (reconcile found it flat); frees slot and symbol."""
    cur = conn.execute(
        "DELETE FROM positions WHERE agent_id = ? AND symbol = ?", (agent_id, symbol)
    )
    if cur.rowcount == 0:
        return False
    record(conn, agent_id, "position_closed", symbol=symbol, reason=reason)
    return True


def insert_funding(
    conn: Conn, agent_id: str, symbol: str, amount: Decimal, tran_id: int, time_ms: int
) -> bool:
    """The funding row of one payment (signed: + received); False if already there."""
    cur = conn.execute(
        "INSERT INTO funding (agent_id, tran_id, symbol, amount, time_ms) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (agent_id, tran_id, symbol, str(amount), time_ms),
    )
    return cur.rowcount > 0


def credit_funding(conn: Conn, agent_id: str, amount: Decimal) -> None:
    """Add ``amount`` to the agent's funding total."""
    row = conn.execute("SELECT funding FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
    if row is None:
        require_agent(0, agent_id)
    conn.execute(
        "UPDATE agents SET funding = ? WHERE agent_id = ?",
        (str(dec(row[0]) + amount), agent_id),
    )


def book_funding(
    conn: Conn, agent_id: str, symbol: str, amount: Decimal, tran_id: int, time_ms: int
) -> bool:
    """Book one funding payment to the agent; False if already booked."""
    if not insert_funding(conn, agent_id, symbol, amount, tran_id, time_ms):
        return False
    credit_funding(conn, agent_id, amount)
    record(conn, agent_id, "funding", symbol=symbol, amount=amount, tran_id=tran_id)
    return True


def positions(
    conn: Conn, agent_id: str | None = None, user: str | None = None
) -> list[LedgerPosition]:
    """Open positions, optionally of one agent and/or one account."""
    sql = f"SELECT {POSITION_COLS} FROM positions WHERE 1 = 1"
    args: list[str] = []
    if agent_id is not None:
        sql += " AND agent_id = ?"
        args.append(agent_id)
    if user is not None:
        sql += " AND user = ?"
        args.append(user)
    rows = conn.execute(sql + " ORDER BY agent_id, symbol", args).fetchall()
    return [position_row(r) for r in rows]


def symbol_owner(conn: Conn, user: str, symbol: str) -> str | None:
    """The agent holding ``symbol`` on ``user`` (position or active open intent)."""
    row = conn.execute(
        "SELECT agent_id FROM positions WHERE user = ? AND symbol = ? LIMIT 1", (user, symbol)
    ).fetchone()
    if row is None:
        row = conn.execute(
            "SELECT agent_id FROM intents WHERE state IN ('reserved', 'confirmed') "
            "AND kind = 'open' AND user = ? AND symbol = ? LIMIT 1",
            (user, symbol),
        ).fetchone()
    return None if row is None else str(row[0])


def counts(conn: Conn, user: str) -> tuple[int, int]:
    """(open positions, slots reserved by open intents on symbols not yet held)."""
    held = {
        (r[0], r[1])
        for r in conn.execute("SELECT agent_id, symbol FROM positions WHERE user = ?", (user,))
    }
    pending = {
        (r[0], r[1])
        for r in conn.execute(
            "SELECT agent_id, symbol FROM intents WHERE state IN ('reserved', "
            "'confirmed') AND kind = 'open' AND user = ?",
            (user,),
        )
    }
    return len(held), len(pending - held)


def booked_trades(conn: Conn, user: str, symbol: str) -> dict[int, tuple[Decimal, Decimal] | None]:
    """Trade ids already booked on ``symbol``: ours -> (realized P&L, commission), unowned
    (booked to unallocated) -> None."""
    rows = conn.execute(
        "SELECT f.trade_id, f.realized_pnl, f.commission FROM fills f JOIN intents i "
        "ON i.client_order_id = f.client_order_id WHERE i.user = ? AND f.symbol = ?",
        (user, symbol),
    ).fetchall()
    foreign = conn.execute(
        "SELECT source FROM income WHERE user = ? AND symbol = ? AND kind = 'TRADE'",
        (user, symbol),
    ).fetchall()
    out: dict[int, tuple[Decimal, Decimal] | None] = {
        int(r[0]): (dec(r[1]), dec(r[2])) for r in rows
    }
    out.update({int(str(r[0]).split(":", 1)[1]): None for r in foreign})
    return out


def holder_at(conn: Conn, user: str, symbol: str, time_ms: int) -> str | None:
    """The agent whose booked fills left it a position on ``symbol`` just before ``time_ms``.

    Used to attribute funding, which has a symbol but no client order id; with the
    exclusive symbol policy at most one agent holds a symbol at a time.
    """
    rows = conn.execute(
        "SELECT f.agent_id, f.side, f.qty FROM fills f JOIN intents i "
        "ON i.client_order_id = f.client_order_id "
        "WHERE i.user = ? AND f.symbol = ? AND f.time_ms < ? ORDER BY f.time_ms, f.trade_id",
        (user, symbol, time_ms),
    ).fetchall()
    held: dict[str, Decimal] = {}
    for agent_id, side, qty in rows:
        signed = dec(qty) if side == Side.BUY.value else -dec(qty)
        held[agent_id] = held.get(agent_id, ZERO) + signed
    owners = sorted(a for a, q in held.items() if q != 0)
    return owners[0] if owners else None
