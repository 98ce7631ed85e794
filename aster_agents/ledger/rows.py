"""Frozen rows the ledger hands out: no sqlite3.Row or dict leaves the package."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from aster_agents.models import Side

DB_NAME: Final = "ledger.sqlite3"
# A ledger "URL" meaning the SQLite file in the state dir whatever ``$ASTER_AGENTS_LEDGER_URL`` or
# ``ledger.url`` say: a backtest's own books, never the fleet's shared ledger.
STATE_DIR_FILE: Final = "file:state-dir"
LOCK_NAME: Final = "ledger.lock"
BUSY_TIMEOUT_MS: Final = 10_000
INTENT_KINDS: Final = ("open", "close", "protect")
EXCHANGE_CLOSE_KINDS: Final = ("liquidation", "adl")  # intents of orders the exchange placed
ACTIVE_STATES: Final = ("reserved", "confirmed")
FINAL_STATES: Final = ("released", "expired", "filled", "canceled", "rejected")
AGENT_STATES: Final = ("active", "probation", "disabled")
# The events of every order's path (a reservation, its send, confirm or release, a fill and
# the intent it completes): most audit rows. SQLite's ``audit_by_event`` index leaves them
# out (migration ``audit-by-event-partial``) so that an order's commits write no index page.
# A query by any other event adds ``INDEXED_EVENTS`` to its WHERE: SQLite uses a partial
# index only for a query that repeats its condition. Never add it to a query for one of these.
ORDER_PATH_EVENTS: Final = ("reserve", "sent", "confirmed", "released", "fill", "intent_filled")
INDEXED_EVENTS: Final = " AND ".join(f"event <> '{e}'" for e in ORDER_PATH_EVENTS)


class Intent(NamedTuple):
    """A write-ahead order intent; ``client_order_id`` is sent as ``newClientOrderId``."""

    client_order_id: str
    seq: int
    agent_id: str
    user: str
    symbol: str
    side: Side
    kind: str
    margin: Decimal
    notional: Decimal
    state: str
    pid: int
    created_ms: int
    expires_ms: int
    updated_ms: int
    sent: bool
    reason: str | None
    nonce: int | None = None  # the nonce the order was sent with (recorded by ``mark_sent``)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


class LedgerPosition(NamedTuple):
    """One agent's signed position on one symbol, as booked from fills."""

    agent_id: str
    user: str
    symbol: str
    qty: Decimal
    entry_price: Decimal
    margin: Decimal
    opened_ms: int
    updated_ms: int


class AgentRow(NamedTuple):
    """Everything status and portfolio views need about one agent."""

    agent_id: str
    user: str
    nonce_slot: int
    max_positions: int
    enabled: bool
    state: str
    state_reason: str | None
    capital: Decimal
    units: Decimal
    realized_pnl: Decimal
    fees: Decimal
    funding: Decimal
    heartbeat_pid: int | None
    heartbeat_ms: int | None
    heartbeat_error: str | None
    ticks: int
    positions: int
    reserved: int
    heartbeat_host: str | None = None  # the host of the last heartbeat (None: before hosts)
    heartbeat_stopped: bool = False  # the run of the last heartbeat ended normally

    @property
    def book_equity(self) -> Decimal:
        """Capital plus realized P&L, minus fees, plus funding (no unrealized P&L)."""
        return self.capital + self.realized_pnl - self.fees + self.funding

    @property
    def nav_per_unit(self) -> Decimal:
        return self.book_equity / self.units if self.units > 0 else Decimal(1)


class SleeveState(NamedTuple):
    """An agent's state and units: what the account's kill switch reads of every sleeve
    each tick (``AgentRow`` has them too, at the price of two counts and eight decimals)."""

    agent_id: str
    user: str
    state: str
    state_reason: str | None
    units: Decimal


class AccountLimits(NamedTuple):
    """Per-account (``user``) limits shared by all of its agents."""

    user: str
    max_total_positions: int
    max_gross_leverage: Decimal
    equity: Decimal | None


class EquityPoint(NamedTuple):
    """One sleeve equity snapshot; ``nav`` is equity per unit then (None before units existed).

    Returns are measured on ``nav``: it does not move when capital is reallocated, while
    ``equity`` jumps by the amount moved.
    """

    time_ms: int
    equity: Decimal
    nav: Decimal | None


class RebalanceRow(NamedTuple):
    """One applied reallocation; ``detail`` is JSON (before/after capital, weights, NAV)."""

    id: int
    time_ms: int
    reason: str
    detail: str

    def details(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.detail)
        return parsed


class AccountBooks(NamedTuple):
    """The ledger's view of one account: unallocated cash and the exchange equity last seen."""

    user: str
    unallocated: Decimal | None  # None until the account was first seen with an equity
    exchange_equity: Decimal | None
    exchange_equity_ms: int | None
    opened_ms: int | None  # the exchange time the unallocated sleeve was opened at


class AuditEntry(NamedTuple):
    """One state change, newest first in ``Ledger.audit``."""

    id: int
    time_ms: int
    agent_id: str | None
    event: str
    detail: str


INTENT_COLS: Final = (
    "client_order_id, seq, agent_id, user, symbol, side, kind, margin, notional, state, pid, "
    "created_ms, expires_ms, updated_ms, sent, reason, nonce"
)
EQUITY_COLS: Final = "time_ms, equity, nav"
ACCOUNT_BOOK_COLS: Final = "user, unallocated, equity, equity_ms, opened_ms"
REBALANCE_COLS: Final = "id, time_ms, reason, detail"
POSITION_COLS: Final = "agent_id, user, symbol, qty, entry_price, margin, opened_ms, updated_ms"
# An intent not resolved yet: reserved or confirmed, or reaped after it was sent (it may still
# land). The condition of the partial index intents_unresolved_by_agent, written exactly so in
# every query of an agent's intents (SQLite uses a partial index only for a query that repeats
# its condition).
UNRESOLVED: Final = "(state IN ('reserved', 'confirmed') OR (state = 'expired' AND sent = 1))"

AGENT_COLS: Final = (
    "a.agent_id, a.user, a.nonce_slot, a.max_positions, a.enabled, a.state, a.state_reason, "
    "a.capital, a.units, a.realized_pnl, a.fees, a.funding, a.hb_pid, a.hb_ms, a.hb_error, "
    "a.ticks, (SELECT COUNT(*) FROM positions p WHERE p.agent_id = a.agent_id), "
    "(SELECT COUNT(*) FROM intents WHERE intents.agent_id = a.agent_id AND "
    f"{UNRESOLVED} AND kind = 'open' AND state IN ('reserved', 'confirmed') AND NOT EXISTS "
    "(SELECT 1 FROM positions p WHERE p.agent_id = intents.agent_id "
    "AND p.symbol = intents.symbol)), "
    "a.hb_host, a.hb_stopped"
)


def agent_cols(has_host: bool, has_stopped: bool) -> str:
    """``AGENT_COLS`` for a file not yet migrated: a later migration's column as its default
    (before "hosts": no host; before "heartbeat-clean-stop": not stopped)."""
    cols = AGENT_COLS if has_stopped else AGENT_COLS.replace("a.hb_stopped", "0")
    return cols if has_host else cols.replace("a.hb_host", "NULL")


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


def unrealized(positions: Iterable[LedgerPosition], marks: Mapping[str, Decimal]) -> Decimal:
    """Sum of (mark - entry) x qty; a position without a mark counts at its entry (0)."""
    return sum(
        ((marks.get(p.symbol, p.entry_price) - p.entry_price) * p.qty for p in positions),
        Decimal(0),
    )


def sleeve_equity(
    row: AgentRow, positions: Iterable[LedgerPosition], marks: Mapping[str, Decimal]
) -> Decimal:
    """capital + realized - fees + funding + unrealized at ``marks`` (the agent's positions)."""
    return row.book_equity + unrealized((p for p in positions if p.agent_id == row.agent_id), marks)


SLEEVE_STATE_COLS: Final = "agent_id, user, state, state_reason, units"


def sleeve_state(row: tuple[Any, ...]) -> SleeveState:
    return SleeveState(str(row[0]), str(row[1]), str(row[2]), row[3], dec(row[4]))


def equity_point(row: tuple[Any, ...]) -> EquityPoint:
    return EquityPoint(int(row[0]), dec(row[1]), None if row[2] is None else dec(row[2]))


def account_books_row(row: tuple[Any, ...]) -> AccountBooks:
    return AccountBooks(
        str(row[0]),
        None if row[1] is None else dec(row[1]),
        None if row[2] is None else dec(row[2]),
        None if row[3] is None else int(row[3]),
        None if row[4] is None else int(row[4]),
    )


def rebalance_row(row: tuple[Any, ...]) -> RebalanceRow:
    return RebalanceRow(int(row[0]), int(row[1]), str(row[2]), str(row[3]))


def position_row(row: tuple[Any, ...]) -> LedgerPosition:
    return LedgerPosition(
        agent_id=row[0],
        user=row[1],
        symbol=row[2],
        qty=dec(row[3]),
        entry_price=dec(row[4]),
        margin=dec(row[5]),
        opened_ms=row[6],
        updated_ms=row[7],
    )


def agent_row(row: tuple[Any, ...]) -> AgentRow:
    return AgentRow(
        agent_id=row[0],
        user=row[1],
        nonce_slot=row[2],
        max_positions=row[3],
        enabled=bool(row[4]),
        state=row[5],
        state_reason=row[6],
        capital=dec(row[7]),
        units=dec(row[8]),
        realized_pnl=dec(row[9]),
        fees=dec(row[10]),
        funding=dec(row[11]),
        heartbeat_pid=row[12],
        heartbeat_ms=row[13],
        heartbeat_error=row[14],
        ticks=row[15],
        positions=row[16],
        reserved=row[17],
        heartbeat_host=row[18],
        heartbeat_stopped=bool(row[19]),
    )
