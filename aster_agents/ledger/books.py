"""The books (design 7): sleeves in units x NAV, the unallocated cash, rebalances, equity.

Functions over a ``backend.Conn``. Each agent's sleeve is capital + realized P&L - fees +
funding + unrealized P&L at the recorded marks; the account's unallocated sleeve makes the
books add up to the exchange's equity. Capital moves issue or redeem units at the sleeve's
NAV per unit, so reallocations do not move any NAV per unit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, NamedTuple

from aster_agents.errors import LedgerError
from aster_agents.ledger.audit import now_ms, record, require_agent
from aster_agents.ledger.backend import Conn
from aster_agents.ledger.rows import (
    ACCOUNT_BOOK_COLS,
    AGENT_COLS,
    EQUITY_COLS,
    POSITION_COLS,
    REBALANCE_COLS,
    UNRESOLVED,
    AccountBooks,
    EquityPoint,
    RebalanceRow,
    account_books_row,
    agent_row,
    dec,
    equity_point,
    position_row,
    rebalance_row,
    sleeve_equity,
)

ZERO: Final = Decimal(0)


def marks(conn: Conn, user: str) -> dict[str, Decimal]:
    """The latest recorded mark price of each symbol of ``user``."""
    rows = conn.execute("SELECT symbol, mark FROM marks WHERE user = ?", (user,)).fetchall()
    return {str(r[0]): dec(r[1]) for r in rows}


_MARKS_SQL: Final = (
    "INSERT INTO marks (user, symbol, mark, time_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (user, symbol) DO UPDATE SET mark = excluded.mark, "
    "time_ms = excluded.time_ms"
)
MarkRow = tuple[str, str, str, int]  # user, symbol, mark (text), time_ms
EquityRow = tuple[str, int, str, str | None, str | None]  # agent, time_ms, equity, units, nav


def mark_rows(user: str, prices: Mapping[str, Decimal], when: int) -> list[MarkRow]:
    """The rows ``record_marks`` writes, in the order it writes them."""
    return [(user, s, str(m), when) for s, m in sorted(prices.items())]


def record_marks(conn: Conn, user: str, prices: Mapping[str, Decimal], when: int) -> None:
    conn.executemany(_MARKS_SQL, mark_rows(user, prices, when))


def equity_row(
    agent_id: str, equity: Decimal, time_ms: int | None, units: Decimal | None
) -> EquityRow:
    """The row ``snapshot_equity`` writes: NAV per unit is equity / units (None without)."""
    nav = equity / units if units is not None and units > 0 else None
    return (
        agent_id,
        now_ms() if time_ms is None else time_ms,
        str(equity),
        None if units is None else str(units),
        None if nav is None else str(nav),
    )


def write_snapshots(conn: Conn, marks: Sequence[MarkRow], equity: Sequence[EquityRow]) -> None:
    """Write marks and equity rows made by ``mark_rows`` and ``equity_row``, in order."""
    if marks:
        conn.executemany(_MARKS_SQL, marks)
    if equity:
        conn.executemany(_INSERT_EQUITY, equity)


def nav_row(conn: Conn, row: EquityRow) -> tuple[int, float, float | None]:
    """``row`` as ``history.nav_after`` reads it once written: the stored text (the columns
    are TEXT) converted by the same SQLite ``CAST``, not by Python's ``float``, whose
    rounding of a long decimal SQLite's need not match."""
    found = conn.execute("SELECT CAST(? AS REAL), CAST(? AS REAL)", (row[2], row[4])).fetchone()
    return (row[1], float(found[0]), None if found[1] is None else float(found[1]))


def sleeve_equities(
    conn: Conn, user: str, prices: Mapping[str, Decimal] | None = None
) -> dict[str, Decimal]:
    """Each agent of ``user``: book equity + unrealized P&L at ``prices`` (default: marks)."""
    agents = [
        agent_row(r)
        for r in conn.execute(
            f"SELECT {AGENT_COLS} FROM agents a WHERE a.user = ? ORDER BY a.agent_id", (user,)
        )
    ]
    held = [
        position_row(r)
        for r in conn.execute(f"SELECT {POSITION_COLS} FROM positions WHERE user = ?", (user,))
    ]
    at = marks(conn, user) if prices is None else prices
    return {a.agent_id: sleeve_equity(a, held, at) for a in agents}


def books_equity(conn: Conn, user: str, prices: Mapping[str, Decimal] | None = None) -> Decimal:
    """Sum of the account's sleeves at ``prices`` plus its unallocated cash."""
    sleeves = sleeve_equities(conn, user, prices)
    row = conn.execute("SELECT unallocated FROM accounts WHERE user = ?", (user,)).fetchone()
    free = dec(row[0]) if row is not None and row[0] is not None else ZERO
    return sum(sleeves.values(), ZERO) + free


def account_books(conn: Conn, user: str) -> AccountBooks | None:
    row = conn.execute(
        f"SELECT {ACCOUNT_BOOK_COLS} FROM accounts WHERE user = ?", (user,)
    ).fetchone()
    return None if row is None else account_books_row(row)


def ensure_account(conn: Conn, user: str, equity: Decimal, time_ms: int | None) -> Decimal:
    """Record the exchange equity; the first time, open the unallocated sleeve at
    ``equity`` - the account's sleeves. Returns the unallocated cash."""
    row = conn.execute("SELECT unallocated FROM accounts WHERE user = ?", (user,)).fetchone()
    if row is None:
        raise LedgerError(f"account {user} has no limits in the ledger: set_account_limits first")
    when = now_ms() if time_ms is None else time_ms
    free = (
        dec(row[0])
        if row[0] is not None
        else equity - sum(sleeve_equities(conn, user).values(), ZERO)
    )
    conn.execute(
        "UPDATE accounts SET equity = ?, equity_ms = ?, unallocated = ?, "
        "opened_ms = COALESCE(opened_ms, ?) WHERE user = ?",
        (str(equity), when, str(free), when, user),
    )
    if row[0] is None:
        record(conn, None, "unallocated_opened", user=user, equity=equity, unallocated=free)
    return free


def move_cash(conn: Conn, user: str, amount: Decimal) -> None:
    """Add ``amount`` to the account's unallocated cash, once that sleeve exists."""
    row = conn.execute("SELECT unallocated FROM accounts WHERE user = ?", (user,)).fetchone()
    if row is not None and row[0] is not None:
        conn.execute(
            "UPDATE accounts SET unallocated = ? WHERE user = ?",
            (str(dec(row[0]) + amount), user),
        )


def require_books(conn: Conn, user: str) -> None:
    row = conn.execute("SELECT unallocated FROM accounts WHERE user = ?", (user,)).fetchone()
    if row is None or row[0] is None:
        raise LedgerError(
            f"account {user} has no unallocated sleeve yet: start an agent of it or run "
            "reconcile first (ensure_account)"
        )


def allocate(conn: Conn, agent_id: str, capital: Decimal, equity: Decimal | None) -> None:
    """Set the agent's capital, issuing/redeeming units at its NAV per unit (``equity``, or
    the sleeve at the recorded marks); the difference moves to/from unallocated cash."""
    row = conn.execute(
        "SELECT capital, units, user FROM agents WHERE agent_id = ?", (agent_id,)
    ).fetchone()
    if row is None:
        require_agent(0, agent_id)
    old_cap, units, user = dec(row[0]), dec(row[1]), str(row[2])
    sleeve = sleeve_equities(conn, user)[agent_id] if equity is None else equity
    nav = sleeve / units if units > 0 and sleeve > 0 else Decimal(1)
    new_units = max(ZERO, units + (capital - old_cap) / nav)
    conn.execute(
        "UPDATE agents SET capital = ?, units = ? WHERE agent_id = ?",
        (str(capital), str(new_units), agent_id),
    )
    move_cash(conn, user, old_cap - capital)
    record(conn, agent_id, "allocate", capital=capital, units=new_units, nav=nav)


_INSERT_EQUITY: Final = (
    "INSERT INTO equity (agent_id, time_ms, equity, units, nav) VALUES (?, ?, ?, ?, ?)"
)
_AS_NAV_AFTER: Final = " RETURNING time_ms, CAST(equity AS REAL), CAST(nav AS REAL)"


def snapshot_equity(
    conn: Conn,
    agent_id: str,
    equity: Decimal,
    time_ms: int | None,
    *,
    units: Decimal | None = None,
    returning: bool = False,
) -> tuple[int, float, float | None] | None:
    """Append a sleeve equity point with the agent's units and NAV per unit at that time
    (``units``: the agent's, when the caller has just read them). ``returning``: the row as
    ``history.nav_after`` reads it (SQLite's conversion of the stored text to a float)."""
    if units is None:
        row = conn.execute("SELECT units FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        units = None if row is None else dec(row[0])
    values = equity_row(agent_id, equity, time_ms, units)
    if not returning:
        conn.execute(_INSERT_EQUITY, values)
        return None
    (stored,) = conn.execute(_INSERT_EQUITY + _AS_NAV_AFTER, values).fetchall()
    return (int(stored[0]), float(stored[1]), None if stored[2] is None else float(stored[2]))


def equity_history(conn: Conn, agent_id: str) -> list[EquityPoint]:
    """Equity snapshots oldest first: (time_ms, equity, nav per unit or None)."""
    rows = conn.execute(
        f"SELECT {EQUITY_COLS} FROM equity WHERE agent_id = ? ORDER BY time_ms, rowid",
        (agent_id,),
    ).fetchall()
    return [equity_point(r) for r in rows]


# ---------------------------------------------------------------------- rebalances


def reallocate(
    conn: Conn,
    moves: Mapping[str, Decimal],
    reason: str,
    detail: Mapping[str, object],
    time_ms: int | None = None,
) -> int:
    """Set each agent's capital to its target (see ``Ledger.reallocate``); the rebalance id."""
    plan = _plan_moves(conn, moves)
    for m in plan.moves:
        conn.execute(
            "UPDATE agents SET capital = ?, units = ? WHERE agent_id = ?",
            (str(m.capital_after), str(m.units_after), m.agent_id),
        )
        record(
            conn,
            m.agent_id,
            "reallocate",
            capital=m.capital_after,
            units=m.units_after,
            nav=m.nav,
            reason=reason,
        )
    for user, (_, after) in plan.cash.items():
        conn.execute("UPDATE accounts SET unallocated = ? WHERE user = ?", (str(after), user))
    doc = {**detail, **plan.detail()}
    rid = conn.execute(
        "INSERT INTO rebalances (time_ms, reason, detail) VALUES (?, ?, ?) RETURNING id",
        (
            now_ms() if time_ms is None else time_ms,
            reason,
            json.dumps(doc, default=str, sort_keys=True),
        ),
    ).fetchone()[0]
    record(conn, None, "rebalance", id=rid, reason=reason)
    return int(rid)


def last_rebalance(conn: Conn) -> RebalanceRow | None:
    row = conn.execute(
        f"SELECT {REBALANCE_COLS} FROM rebalances ORDER BY id DESC LIMIT 1"
    ).fetchone()
    return None if row is None else rebalance_row(row)


def rebalances(conn: Conn, limit: int) -> list[RebalanceRow]:
    """The newest ``limit`` rebalances, newest first."""
    rows = conn.execute(
        f"SELECT {REBALANCE_COLS} FROM rebalances ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return [rebalance_row(r) for r in rows]


class _Move(NamedTuple):
    agent_id: str
    user: str
    capital_before: Decimal
    capital_after: Decimal
    units_before: Decimal
    units_after: Decimal
    nav: Decimal
    equity_before: Decimal
    equity_after: Decimal


@dataclass(frozen=True, slots=True)
class _Plan:
    """A checked reallocation: the agents' new capital and units, each account's cash."""

    moves: tuple[_Move, ...]
    cash: dict[str, tuple[Decimal, Decimal]]  # user -> (unallocated before, after)
    totals: dict[str, Decimal]  # user -> sum of sleeves + unallocated (unchanged by the plan)

    def detail(self) -> dict[str, object]:
        def weight(equity: Decimal, user: str) -> str:
            total = self.totals[user]
            return str(equity / total) if total > 0 else "0"

        return {
            "moves": {
                m.agent_id: {
                    "user": m.user,
                    "capital_before": str(m.capital_before),
                    "capital_after": str(m.capital_after),
                    "units_before": str(m.units_before),
                    "units_after": str(m.units_after),
                    "nav": str(m.nav),
                    "equity_before": str(m.equity_before),
                    "equity_after": str(m.equity_after),
                    "weight_before": weight(m.equity_before, m.user),
                    "weight_after": weight(m.equity_after, m.user),
                }
                for m in self.moves
            },
            "unallocated": {
                u: {"before": str(b), "after": str(a)} for u, (b, a) in self.cash.items()
            },
        }


def _plan_moves(conn: Conn, moves: Mapping[str, Decimal]) -> _Plan:
    users: dict[str, str] = {}
    for agent_id, target in moves.items():
        row = conn.execute("SELECT user FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
        if row is None:
            raise LedgerError(f"reallocate: agent {agent_id} is not registered in the ledger")
        if not target.is_finite() or target < 0:
            raise LedgerError(f"reallocate: capital for {agent_id} must be >= 0, got {target}")
        users[agent_id] = str(row[0])
    planned: list[_Move] = []
    cash: dict[str, tuple[Decimal, Decimal]] = {}
    totals: dict[str, Decimal] = {}
    for user in sorted(set(users.values())):
        free = _unallocated(conn, user)
        sleeves = sleeve_equities(conn, user)
        totals[user] = sum(sleeves.values(), ZERO) + free
        mine = [
            _move(conn, a, user, moves[a], sleeves[a]) for a in sorted(moves) if users[a] == user
        ]
        after = free - sum((m.capital_after - m.capital_before for m in mine), ZERO)
        if after < 0:
            raise LedgerError(
                f"reallocate: account {user} has {free} unallocated, the moves need "
                f"{free - after}; lower the targets"
            )
        planned += mine
        cash[user] = (free, after)
    return _Plan(tuple(planned), cash, totals)


def _unallocated(conn: Conn, user: str) -> Decimal:
    row = conn.execute("SELECT unallocated FROM accounts WHERE user = ?", (user,)).fetchone()
    if row is None or row[0] is None:
        raise LedgerError(
            f"reallocate: account {user} has no unallocated sleeve yet; start one of its agents "
            "or run reconcile first"
        )
    return dec(row[0])


def _move(conn: Conn, agent_id: str, user: str, target: Decimal, equity: Decimal) -> _Move:
    row = conn.execute(
        "SELECT capital, units, realized_pnl, fees, funding FROM agents WHERE agent_id = ?",
        (agent_id,),
    ).fetchone()
    capital, units = dec(row[0]), dec(row[1])
    nav = equity / units if units > 0 and equity > 0 else Decimal(1)
    delta = target - capital
    used = _margin_in_use(conn, agent_id)
    if equity + delta < used:
        raise LedgerError(
            f"reallocate: {agent_id} would have {equity + delta} equity, below the {used} "
            "margin its open positions and intents use; close positions or lower the cut"
        )
    return _Move(
        agent_id,
        user,
        capital,
        target,
        units,
        max(ZERO, units + delta / nav),
        nav,
        equity,
        equity + delta,
    )


def _margin_in_use(conn: Conn, agent_id: str) -> Decimal:
    used = sum(
        (
            dec(r[0])
            for r in conn.execute("SELECT margin FROM positions WHERE agent_id = ?", (agent_id,))
        ),
        ZERO,
    )
    used += sum(
        (
            dec(r[0])
            for r in conn.execute(
                f"SELECT margin FROM intents WHERE agent_id = ? AND {UNRESOLVED} "
                "AND kind = 'open' AND state IN ('reserved', 'confirmed') AND margin_booked = 0",
                (agent_id,),
            )
        ),
        ZERO,
    )
    return used
