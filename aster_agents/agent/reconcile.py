"""Ledger vs exchange: book what is missing, report what differs (``aster-agent reconcile``).

For one account (``user``), through any client signed for it, ``reconcile_account``:

1. reads the exchange: server time, wallet balance, positions with their marks, open orders,
   ``userTrades`` of every symbol with ledger or exchange activity since the last reconcile,
   and the income history since the last booked entry;
2. repairs what is safe and idempotent: fills of the ledger's own client order ids that are
   not booked yet; trades of orders no agent placed (web UI) and income no agent owns
   (transfers, funding on a symbol nobody held) into the account's ``unallocated`` sleeve;
   closes the exchange made itself (liquidation ``autoclose-*``, ADL ``adl_autoclose``) to
   the agent whose position they closed;
   funding into the agent that held the symbol then; ledger positions the exchange shows
   flat with no working order on the symbol are closed;
3. compares per symbol the sum of the agents' ledger positions with the exchange position,
   each booked trade's realized P&L and commission with the exchange's, and the exchange
   equity (wallet + unrealized at the marks) with the books (sleeves at the same marks +
   unallocated); a difference it cannot safely repair (a position no agent owns, a quantity
   mismatch while orders work) is reported and left alone; so is a trade that does not
   match the order it names (another symbol or side, an order the exchange does not know,
   more than the order's ``executedQty``): reconcile reports it instead of guessing;
4. records the marks, one equity snapshot per sleeve at those marks and the exchange equity.

``dry_run`` reads and compares only. No ledger transaction is held across a network call,
and no order is ever placed, so it is safe while agents run (their fills may then show as a
transient difference). ``reconcile`` exits 0 when the books agree within 0.01 USDT.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aster_agents.decimals import plain
from aster_agents.errors import OrderNotFound
from aster_agents.ledger import facts

if TYPE_CHECKING:
    from pathlib import Path

    from aster_agents.config.schema import FleetConfig
    from aster_agents.exchange.base import Exchange  # the read-only calls are all reconcile uses
    from aster_agents.ledger import Ledger
    from aster_agents.ledger.rows import Intent
    from aster_agents.models import Income, Order, UserTrade

ZERO: Final = Decimal(0)
TOLERANCE: Final = Decimal("0.01")
PAGE: Final = 1000
MAX_PAGES: Final = 50
FUNDING: Final = "FUNDING_FEE"
TRADE_INCOME: Final = frozenset({"REALIZED_PNL", "COMMISSION"})  # booked from userTrades
QTY_EPS: Final = Decimal("1e-12")


def exchange_close_event(client_order_id: str) -> str | None:
    """``liquidation`` or ``adl`` for an order the exchange placed itself, else None."""
    if client_order_id.startswith("autoclose-"):
        return "liquidation"
    if client_order_id.startswith("adl_autoclose"):
        return "adl"
    return None


def book_exchange_close(ledger: Ledger, user: str, trade: UserTrade, coid: str) -> str | None:
    """Book one trade of a liquidation or ADL order to the agent it closed; None if it is
    not such a trade or no agent held the position."""
    event = exchange_close_event(coid)
    if event is None:
        return None
    return ledger.book_exchange_close(
        user,
        event=event,
        order_id=trade.order_id,
        client_order_id=coid,
        trade_id=trade.id,
        symbol=trade.symbol,
        side=trade.side,
        qty=trade.qty,
        price=trade.price,
        realized_pnl=trade.realized_pnl,
        commission=trade.commission,
        time_ms=trade.time,
    )


class Difference(NamedTuple):
    """One thing the ledger and the exchange disagree on, and whether reconcile fixed it."""

    kind: str  # position, fill, equity, unowned_position
    symbol: str | None
    ledger: str
    exchange: str
    repaired: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


@dataclass
class AccountReport:
    """What reconcile saw, did and found for one account."""

    user: str
    exchange_ms: int = 0
    exchange_equity: Decimal = ZERO
    books_equity: Decimal = ZERO
    unallocated: Decimal | None = None
    repairs: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def open_differences(self) -> list[Difference]:
        return [d for d in self.differences if not d.repaired]

    @property
    def ok(self) -> bool:
        return not self.open_differences

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "ok": self.ok,
            "exchange_time_ms": self.exchange_ms,
            "exchange_equity": plain(self.exchange_equity),
            "books_equity": plain(self.books_equity),
            "equity_difference": plain(self.books_equity - self.exchange_equity),
            "unallocated": None if self.unallocated is None else plain(self.unallocated),
            "repairs": self.repairs,
            "differences": [d.to_json() for d in self.differences],
        }


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The exchange's state as read at the start of a reconcile."""

    time_ms: int
    wallet: Decimal
    positions: dict[str, Decimal]
    marks: dict[str, Decimal]
    unrealized: Decimal
    working: frozenset[str]  # symbols with an open order

    @property
    def equity(self) -> Decimal:
        return self.wallet + self.unrealized


def _read(client: Exchange, ledger_symbols: Iterable[str]) -> _Snapshot:
    time_ms = client.server_time()
    wallet = client.account().total_wallet_balance
    risk = [p for p in client.position_risk() if p.position_amt != 0]
    positions: dict[str, Decimal] = {}
    marks: dict[str, Decimal] = {}
    for p in risk:
        positions[p.symbol] = positions.get(p.symbol, ZERO) + p.position_amt
        marks[p.symbol] = p.mark_price
    unrealized = sum((p.unrealized_profit for p in risk), ZERO)
    for symbol in sorted(set(ledger_symbols) - set(marks)):
        marks[symbol] = client.premium_index(symbol).mark_price
    working = frozenset(o.symbol for o in client.open_orders())
    return _Snapshot(time_ms, wallet, positions, marks, unrealized, working)


def reconcile_account(
    ledger: Ledger, client: Exchange, user: str, *, dry_run: bool = False
) -> AccountReport:
    """Reconcile one account; see the module docstring for the steps."""
    report = AccountReport(user)
    ledger_symbols = {p.symbol for p in ledger.positions(user=user)}
    snap = _read(client, ledger_symbols)
    report.exchange_ms, report.exchange_equity = snap.time_ms, snap.equity
    unknown = _unknown_history(ledger, client, user, ledger_symbols | ledger.intent_symbols(user))
    if unknown:
        report.books_equity = ledger.books_equity(user, snap.marks)
        report.differences.append(Difference("exchange", None, *unknown, False, NEW_EXCHANGE))
        return report  # repairing would mix two exchanges' books
    if not dry_run:
        ledger.record_marks(user, snap.marks, snap.time_ms)
        _ensure_books(ledger, user, snap)
    since = _since(ledger, user)
    incomes = _incomes(client, max(_opened(ledger, user) + 1, since))
    traded = {i.symbol for i in incomes if i.income_type in TRADE_INCOME and i.symbol}
    symbols = ledger_symbols | set(snap.positions) | ledger.intent_symbols(user) | traded
    for symbol in sorted(symbols):
        _sync_trades(ledger, client, user, symbol, since, report, dry_run)
    _sync_income(ledger, user, incomes, report, dry_run)
    _check_positions(ledger, user, snap, report, dry_run)
    _check_equity(ledger, user, snap, report)
    if not dry_run:
        _snapshot_sleeves(ledger, user, snap)
        ledger.note_reconcile(user, snap.time_ms, len(report.open_differences))
    return report


NEW_EXCHANGE: Final = (
    "the exchange has none of the trades these books hold for this account: it is not the "
    "exchange they were kept against (a restarted simulator, or another base_url). Nothing "
    "was repaired. To start fresh: `aster-agent down`, move the state dir away (e.g. "
    "`mv state state.old`), then start the agents again"
)


def _unknown_history(
    ledger: Ledger, client: Exchange, user: str, symbols: Iterable[str]
) -> tuple[str, str] | None:
    """(ledger, exchange) counts when the exchange knows none of the account's booked trades.

    A trade counts as known when the exchange has its id with the same realized P&L and
    commission (a restarted simulator numbers its trades from 1 again).
    """
    booked = total = 0
    for symbol in sorted(symbols):
        mine = {i: v for i, v in ledger.booked_trades(user, symbol).items() if v is not None}
        if not mine:
            continue
        booked += len(mine)
        theirs = client.user_trades(symbol, from_id=min(mine), limit=PAGE)
        total += len(theirs)
        if any(mine.get(t.id) == (t.realized_pnl, t.commission) for t in theirs):
            return None
    if not booked:
        return None
    return f"{booked} trade(s) booked", f"none of them among its {total}"


def _ensure_books(ledger: Ledger, user: str, snap: _Snapshot) -> None:
    if ledger.account_books(user) is None:
        ledger.set_account_limits(user, max_total_positions=10, max_gross_leverage=Decimal(3))
    books = ledger.account_books(user)
    if books is not None and books.unallocated is None:
        ledger.ensure_account(user, snap.equity, snap.time_ms)


def _since(ledger: Ledger, user: str) -> int:
    """Exchange time to read trades from: the last reconcile, else the books' opening."""
    last = ledger.last_reconcile_ms(user)
    if last is not None:
        return max(0, last - 60_000)
    return 0


def _trades(client: Exchange, symbol: str, since: int) -> list[UserTrade]:
    out: list[UserTrade] = []
    page = client.user_trades(symbol, start_time=since, limit=PAGE)
    for _ in range(MAX_PAGES):
        out += page
        if len(page) < PAGE:
            break
        page = client.user_trades(symbol, from_id=page[-1].id + 1, limit=PAGE)
    return out


def _sync_trades(
    ledger: Ledger,
    client: Exchange,
    user: str,
    symbol: str,
    since: int,
    report: AccountReport,
    dry_run: bool,
) -> None:
    booked = ledger.booked_trades(user, symbol)
    opened = _opened(ledger, user)
    orders: dict[int, Order] = {}
    for trade in _trades(client, symbol, since):
        if trade.symbol != symbol:
            _distrusted(report, symbol, trade, f"a trade of {trade.symbol} in the answer")
            continue
        if trade.id in booked:
            mine = booked[trade.id]
            if mine is not None:  # None: booked to unallocated before
                _compare_fill(trade, mine, report)
            continue
        order = orders.get(trade.order_id)
        if order is None:
            try:
                order = client.query_order(symbol, order_id=trade.order_id)
            except OrderNotFound:
                _distrusted(report, symbol, trade, f"order {trade.order_id} is not known")
                continue
            orders[trade.order_id] = order
        if (order.order_id, order.symbol) != (trade.order_id, symbol):
            what = f"order {trade.order_id} answered as {order.order_id} ({order.symbol})"
            _distrusted(report, symbol, trade, what)
            continue
        _book_trade(ledger, user, trade, order, opened, report, dry_run)


def _opened(ledger: Ledger, user: str) -> int:
    books = ledger.account_books(user)
    return books.opened_ms if books is not None and books.opened_ms is not None else 0


def _compare_fill(trade: UserTrade, mine: tuple[Decimal, Decimal], report: AccountReport) -> None:
    if mine != (trade.realized_pnl, trade.commission):
        report.differences.append(
            Difference(
                "fill",
                trade.symbol,
                f"pnl {plain(mine[0])} fee {plain(mine[1])}",
                f"pnl {plain(trade.realized_pnl)} fee {plain(trade.commission)}",
                False,
                f"trade {trade.id}: booked figures differ",
            )
        )


def _distrusted(report: AccountReport, symbol: str, trade: UserTrade, what: str) -> None:
    """A trade that does not match the order it names: reported, never booked."""
    report.differences.append(
        Difference(
            "fill",
            symbol,
            "-",
            f"trade {trade.id}: {trade.side.value} {trade.qty} {trade.symbol}",
            False,
            f"{what}: not booked; check the exchange's trade history",
        )
    )


def _intent_problem(intent: Intent, order: Order, trade: UserTrade, booked: Decimal) -> str | None:
    if (intent.symbol, intent.side) != (trade.symbol, trade.side):
        return f"{intent.client_order_id} is a {intent.side.value} of {intent.symbol}"
    if booked + trade.qty > order.executed_qty:
        return f"{booked} booked + {trade.qty} would pass executedQty {order.executed_qty}"
    return None


def _book_trade(
    ledger: Ledger,
    user: str,
    trade: UserTrade,
    order: Order,
    opened: int,
    report: AccountReport,
    dry_run: bool,
) -> None:
    coid = order.client_order_id
    intent = ledger.intent(coid)
    what = f"trade {trade.id} of {coid or trade.order_id} on {trade.symbol}"
    if intent is None and trade.time <= opened:
        return  # before the books opened: already inside the opening equity
    if intent is not None:
        booked = facts.booked_qty(ledger, intent.agent_id, coid)
        problem = _intent_problem(intent, order, trade, booked)
        if problem is not None:
            _distrusted(report, trade.symbol, trade, f"{what}: {problem}")
            return
    if dry_run:
        report.repairs.append(f"would book {what}")
        return
    if intent is not None:
        ledger.book_fill(
            coid,
            trade_id=trade.id,
            symbol=trade.symbol,
            side=trade.side,
            qty=trade.qty,
            price=trade.price,
            realized_pnl=trade.realized_pnl,
            commission=trade.commission,
            time_ms=trade.time,
        )
        report.repairs.append(f"booked {what} to {intent.agent_id}")
        return
    holder = book_exchange_close(ledger, user, trade, coid)
    if holder is not None:
        report.repairs.append(f"booked {what} ({exchange_close_event(coid)}) to {holder}")
        return
    ledger.book_unowned_trade(
        user,
        trade.id,
        symbol=trade.symbol,
        realized_pnl=trade.realized_pnl,
        commission=trade.commission,
        time_ms=trade.time,
    )
    report.repairs.append(f"booked {what} (no agent's order) to unallocated")


def _incomes(client: Exchange, start: int) -> list[Income]:
    out: list[Income] = []
    for _ in range(MAX_PAGES):
        page = client.income(start_time=start, limit=PAGE)
        out += page
        if len(page) < PAGE:
            break
        start = page[-1].time
    return out


def _sync_income(
    ledger: Ledger, user: str, incomes: list[Income], report: AccountReport, dry_run: bool
) -> None:
    opened = _opened(ledger, user)
    for income in incomes:
        if income.income_type in TRADE_INCOME or income.time <= opened:
            continue
        if ledger.income_booked(user, f"tran:{income.tran_id}"):
            continue
        if dry_run:
            report.repairs.append(f"would book {income.income_type} {income.tran_id}")
            continue
        if book_income(ledger, user, income):
            report.repairs.append(
                f"booked {income.income_type} {income.income} ({income.symbol or '-'}, "
                f"tranId {income.tran_id})"
            )


def book_income(ledger: Ledger, user: str, income: Income) -> bool:
    """Book one income entry: funding to the agent that held the symbol, the rest to
    unallocated; once per (user, tranId). False if it was already booked.

    An entry already booked is known by one indexed read, before the holder is looked up
    (a scan of the symbol's fills) and a write is taken: the runner asks for funding from
    the newest booked entry on, so that one comes back every time.
    """
    if ledger.income_booked(user, f"tran:{income.tran_id}"):
        return False
    holder = None
    if income.income_type == FUNDING and income.symbol:
        holder = ledger.holder_at(user, income.symbol, income.time)
    return ledger.book_income(
        user,
        income.tran_id,
        kind=income.income_type,
        symbol=income.symbol,
        amount=income.income,
        time_ms=income.time,
        agent_id=holder,
    )


def book_funding(
    ledger: Ledger, user: str, incomes: Sequence[Income], opened_ms: int | None
) -> int:
    """Book the FUNDING_FEE entries after ``opened_ms`` (the runner's call); returns how many."""
    booked = 0
    for income in incomes:
        if income.income_type != FUNDING or (opened_ms is not None and income.time <= opened_ms):
            continue
        booked += book_income(ledger, user, income)
    return booked


def _check_positions(
    ledger: Ledger, user: str, snap: _Snapshot, report: AccountReport, dry_run: bool
) -> None:
    held: dict[str, Decimal] = {}
    for p in ledger.positions(user=user):
        held[p.symbol] = held.get(p.symbol, ZERO) + p.qty
    for symbol in sorted(set(held) | set(snap.positions)):
        mine, theirs = held.get(symbol, ZERO), snap.positions.get(symbol, ZERO)
        if abs(mine - theirs) <= QTY_EPS:
            continue
        repaired = False
        note = "not repaired: check the exchange and the agents' logs"
        if theirs == 0 and symbol not in snap.working:
            note = "exchange flat, no working order: ledger position closed"
            if dry_run:
                note = "exchange flat, no working order: would close the ledger position"
            else:
                for p in ledger.positions(user=user):
                    if p.symbol == symbol:
                        ledger.close_position(p.agent_id, symbol, "reconcile: flat on exchange")
                repaired = True
        elif mine == 0:
            note = "a position no agent owns: close it on the exchange or leave it"
        elif symbol in snap.working:
            note = "quantities differ while orders work on the symbol: run again later"
        kind = "unowned_position" if mine == 0 else "position"
        report.differences.append(
            Difference(kind, symbol, plain(mine), plain(theirs), repaired, note)
        )
        if repaired:
            report.repairs.append(f"closed the ledger position on {symbol}")


def _check_equity(ledger: Ledger, user: str, snap: _Snapshot, report: AccountReport) -> None:
    books = ledger.account_books(user)
    report.unallocated = books.unallocated if books is not None else None
    report.books_equity = ledger.books_equity(user, snap.marks)
    gap = report.books_equity - snap.equity
    if abs(gap) > TOLERANCE:
        report.differences.append(
            Difference(
                "equity",
                None,
                plain(report.books_equity),
                plain(snap.equity),
                False,
                f"books differ from the exchange by {plain(gap)}",
            )
        )


def _snapshot_sleeves(ledger: Ledger, user: str, snap: _Snapshot) -> None:
    for agent_id, equity in ledger.sleeve_equities(user, snap.marks).items():
        ledger.snapshot_equity(agent_id, equity.quantize(Decimal("0.00000001")))
    ledger.ensure_account(user, snap.equity, snap.time_ms)


# ---------------------------------------------------------------------- fleet level


class ReconcileReport(NamedTuple):
    accounts: tuple[AccountReport, ...]

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.accounts)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "accounts": [a.to_json() for a in self.accounts]}


def reconcile_fleet(
    fleet: FleetConfig, state_dir: Path, *, agent_id: str | None = None, dry_run: bool = False
) -> ReconcileReport:
    """Reconcile every account of the fleet (or ``agent_id``'s), through the tool nonce slot."""
    from aster_agents.agent.clients import make_client
    from aster_agents.ledger import Ledger, SharedBudget

    agents = [fleet.agent(agent_id)] if agent_id else list(fleet.agents)
    by_user = {a.exchange.user: a for a in reversed(agents)}
    reports = []
    with Ledger(state_dir, url=fleet.ledger_url) as ledger:
        for user, agent in sorted(by_user.items()):
            budget = SharedBudget(
                state_dir, user=user, url=fleet.ledger_url, group=fleet.portfolio.rate_group
            )
            with make_client(fleet, agent, budget=budget) as client:
                reports.append(reconcile_account(ledger, client, user, dry_run=dry_run))
    return ReconcileReport(tuple(reports))
