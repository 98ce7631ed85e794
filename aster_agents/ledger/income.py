"""Exchange income (funding, transfers, trades no agent placed), booked once per source.

Functions over a ``backend.Conn``. ``source`` is ``tran:<tranId>`` or ``trade:<tradeId>``;
an amount with an agent is that agent's funding, one without goes to the account's
unallocated cash.
"""

from __future__ import annotations

from decimal import Decimal

from aster_agents.ledger import books, fills
from aster_agents.ledger.audit import record
from aster_agents.ledger.backend import Conn


def _insert(
    conn: Conn,
    user: str,
    source: str,
    agent_id: str | None,
    kind: str,
    symbol: str,
    amount: Decimal,
    time_ms: int,
) -> bool:
    cur = conn.execute(
        "INSERT INTO income (user, source, agent_id, kind, symbol, amount, time_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (user, source, agent_id, kind, symbol, str(amount), time_ms),
    )
    return cur.rowcount > 0


def book_income(
    conn: Conn,
    user: str,
    tran_id: int,
    *,
    kind: str,
    symbol: str,
    amount: Decimal,
    time_ms: int,
    agent_id: str | None,
) -> bool:
    """Book one exchange income entry once per (user, tranId); False if already booked."""
    if not _insert(conn, user, f"tran:{tran_id}", agent_id, kind, symbol, amount, time_ms):
        return False
    if agent_id is None:
        books.require_books(conn, user)
        books.move_cash(conn, user, amount)
    else:
        fills.insert_funding(conn, agent_id, symbol, amount, tran_id, time_ms)
        fills.credit_funding(conn, agent_id, amount)
    record(
        conn,
        agent_id,
        "income",
        user=user,
        kind=kind,
        symbol=symbol,
        amount=amount,
        tran_id=tran_id,
    )
    return True


def book_unowned_trade(
    conn: Conn,
    user: str,
    trade_id: int,
    *,
    symbol: str,
    realized_pnl: Decimal,
    commission: Decimal,
    time_ms: int,
) -> bool:
    """Book a trade of an order no agent placed (web UI, another tool) to unallocated."""
    amount = realized_pnl - commission
    if not _insert(conn, user, f"trade:{trade_id}", None, "TRADE", symbol, amount, time_ms):
        return False
    books.require_books(conn, user)
    books.move_cash(conn, user, amount)
    record(
        conn,
        None,
        "unowned_trade",
        user=user,
        symbol=symbol,
        trade_id=trade_id,
        amount=amount,
    )
    return True


def newest(conn: Conn, user: str, kind: str) -> int | None:
    """The time of the newest booked income of ``kind`` (e.g. FUNDING_FEE), or None."""
    row = conn.execute(
        "SELECT MAX(time_ms) FROM income WHERE user = ? AND kind = ?", (user, kind)
    ).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def booked(conn: Conn, user: str, source: str) -> bool:
    """True when ``source`` (``tran:<id>`` or ``trade:<id>``) is already booked."""
    row = conn.execute(
        "SELECT 1 FROM income WHERE user = ? AND source = ?", (user, source)
    ).fetchone()
    return row is not None
