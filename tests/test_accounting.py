"""Ledger NAV accounting: unallocated sleeve, allocation at NAV, income once, funding holders."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.agent.reconcile import book_income
from aster_agents.errors import LedgerError
from aster_agents.ledger import Ledger
from aster_agents.models import Income, Side

D = Decimal
U = "u1"
T0 = 1_700_000_000_000


@pytest.fixture
def books(state_dir: Path) -> Iterator[Ledger]:
    """Account u1 (no equity yet), a1 with 100 capital; the books open at 1000."""
    led = Ledger(state_dir)
    led.set_account_limits(U, max_total_positions=5, max_gross_leverage=D(5))
    led.register_agent("a1", U, max_positions=2, capital=D(100))
    led.ensure_account(U, D(1000), T0)
    yield led
    led.close()


def unallocated(ledger: Ledger, user: str = U) -> Decimal:
    acct = ledger.account_books(user)
    assert acct is not None and acct.unallocated is not None
    return acct.unallocated


def nav(ledger: Ledger, agent_id: str) -> Decimal:
    row = ledger.agent(agent_id)
    assert row is not None
    return ledger.sleeve_equities(row.user)[agent_id] / row.units


def buy(ledger: Ledger, agent_id: str, symbol: str, *, trade_id: int, time_ms: int) -> None:
    """Open 0.004 at 40,000 with 80 margin (a reserved intent, then its fill)."""
    intent = ledger.reserve(agent_id, symbol, Side.BUY, margin=D(80), notional=D(160))
    ledger.book_fill(
        intent.client_order_id,
        trade_id=trade_id,
        symbol=symbol,
        side=Side.BUY,
        qty=D("0.004"),
        price=D(40000),
        realized_pnl=D(0),
        commission=D(0),
        time_ms=time_ms,
    )


def dump(state_dir: Path) -> list[str]:
    with sqlite3.connect(state_dir / "ledger.sqlite3") as conn:
        return list(conn.iterdump())


def funding(symbol: str, amount: str, tran_id: int, time_ms: int) -> Income:
    return Income(symbol, "FUNDING_FEE", D(amount), "USDT", "", time_ms, tran_id, "")


def test_ensure_account_opens_the_unallocated_sleeve_once(books: Ledger) -> None:
    """ensure_account opens unallocated at equity - sleeves once; later calls only record equity."""
    assert unallocated(books) == D(900)
    assert books.ensure_account(U, D(1234), T0 + 5000) == D(900)
    acct = books.account_books(U)
    assert acct is not None
    assert (acct.exchange_equity, acct.exchange_equity_ms, acct.opened_ms) == (
        D(1234),
        T0 + 5000,
        T0,
    )
    opened = [e for e in books.audit(limit=1000) if e.event == "unallocated_opened"]
    assert len(opened) == 1


def test_second_agent_takes_cash_and_does_not_reopen_the_books(books: Ledger) -> None:
    """A second agent's capital comes out of unallocated; ensure_account does not re-initialise."""
    books.register_agent("a2", U, max_positions=1, capital=D(50))
    assert unallocated(books) == D(850)
    assert books.ensure_account(U, D(1000), T0 + 1) == D(850)
    assert books.books_equity(U) == D(1000)
    acct = books.account_books(U)
    assert acct is not None and acct.opened_ms == T0


def test_ensure_account_needs_the_account_limits(state_dir: Path) -> None:
    """ensure_account on an account without limits fails and says what to do first."""
    with Ledger(state_dir) as ledger, pytest.raises(LedgerError, match="set_account_limits"):
        ledger.ensure_account("nobody", D(1))


def test_allocate_issues_units_at_nav(books: Ledger) -> None:
    """allocate moves cash from unallocated and issues units at NAV: NAV and total unchanged."""
    book_income(books, U, funding("", "10", 1, T0 + 1))  # to unallocated: no holder
    books.book_income(
        U, 2, kind="FUNDING_FEE", symbol="BTCUSDT", amount=D(10), time_ms=T0 + 2, agent_id="a1"
    )
    before_nav, before_total = nav(books, "a1"), books.books_equity(U)
    assert before_nav == D("1.1")
    books.allocate("a1", D(210))
    row = books.agent("a1")
    assert row is not None and row.capital == D(210)
    assert nav(books, "a1") == pytest.approx(before_nav, abs=D("1e-20"))
    assert row.units == pytest.approx(D(100) + D(110) / D("1.1"), abs=D("1e-20"))
    assert books.books_equity(U) == before_total
    assert unallocated(books) == D(900) + D(10) - D(110)


def test_reallocate_keeps_nav_and_total_and_writes_a_rebalance(books: Ledger) -> None:
    """reallocate sets capitals at each sleeve's NAV; the account total stays; a rebalances row."""
    books.register_agent("a2", U, max_positions=1, capital=D(100))
    books.book_income(
        U, 3, kind="FUNDING_FEE", symbol="ETHUSDT", amount=D(-20), time_ms=T0 + 3, agent_id="a2"
    )
    navs, total = {a: nav(books, a) for a in ("a1", "a2")}, books.books_equity(U)
    rid = books.reallocate({"a1": D(300), "a2": D(50)}, reason="test", detail={"by": "test"})
    for agent_id, before in navs.items():
        assert nav(books, agent_id) == pytest.approx(before, abs=D("1e-20"))
    assert books.books_equity(U) == total
    assert unallocated(books) == D(800) - D(200) + D(50)
    last = books.last_rebalance()
    assert last is not None and (last.id, last.reason) == (rid, "test")
    assert '"capital_after": "300"' in last.detail


@pytest.mark.parametrize(
    ("moves", "message"),
    [
        ({"a1": D(5000)}, "unallocated"),
        ({"a1": D(-1)}, "must be >= 0"),
        ({"a1": D(10)}, "margin"),
        ({"ghost": D(10)}, "not registered"),
    ],
)
def test_reallocate_refuses_and_writes_nothing(
    books: Ledger, state_dir: Path, moves: dict[str, Decimal], message: str
) -> None:
    """reallocate refuses negative cash or targets, cuts below used margin, unknown agents."""
    buy(books, "a1", "BTCUSDT", trade_id=1, time_ms=T0 + 10)  # 80 margin in use
    before = dump(state_dir)
    with pytest.raises(LedgerError, match=message):
        books.reallocate(moves, reason="test", detail={})
    assert dump(state_dir) == before
    assert books.last_rebalance() is None


def test_book_income_once_per_tran_id(books: Ledger) -> None:
    """The same tranId is booked once, whoever books it (agent or reconcile)."""
    entry = funding("BTCUSDT", "1.5", 42, T0 + 100)
    assert book_income(books, U, entry) is True
    assert book_income(books, U, entry) is False
    assert books.income_booked(U, "tran:42")
    assert unallocated(books) == D("901.5")


def test_funding_goes_to_the_agent_that_held_the_symbol(books: Ledger) -> None:
    """Funding on a held symbol goes to its holder then; before, or elsewhere: unallocated."""
    buy(books, "a1", "BTCUSDT", trade_id=7, time_ms=T0 + 1000)
    assert books.holder_at(U, "BTCUSDT", T0 + 2000) == "a1"
    assert books.holder_at(U, "BTCUSDT", T0 + 500) is None
    assert book_income(books, U, funding("BTCUSDT", "-0.25", 1, T0 + 2000))
    assert book_income(books, U, funding("BTCUSDT", "0.5", 2, T0 + 500))
    assert book_income(books, U, funding("ETHUSDT", "0.75", 3, T0 + 2000))
    row = books.agent("a1")
    assert row is not None and row.funding == D("-0.25")
    assert unallocated(books) == D(900) + D("1.25")


def test_unowned_trade_goes_to_unallocated_once(books: Ledger) -> None:
    """A trade no agent placed books realized - commission to unallocated, once per trade id."""
    for expected in (True, False):
        booked = books.book_unowned_trade(
            U, 99, symbol="SOLUSDT", realized_pnl=D(5), commission=D(1), time_ms=T0 + 9
        )
        assert booked is expected
    assert unallocated(books) == D(904)
    assert books.booked_trades(U, "SOLUSDT") == {99: None}


def test_unowned_income_needs_open_books(state_dir: Path) -> None:
    """Income for an account whose books are not open yet is refused, nothing booked."""
    with Ledger(state_dir) as ledger:
        ledger.set_account_limits(U, max_total_positions=1, max_gross_leverage=D(1))
        with pytest.raises(LedgerError, match="no unallocated sleeve"):
            ledger.book_unowned_trade(
                U, 1, symbol="BTCUSDT", realized_pnl=D(1), commission=D(0), time_ms=T0
            )
        assert not ledger.income_booked(U, "trade:1")


def test_equity_snapshots_carry_nav(books: Ledger) -> None:
    """snapshot_equity stores equity and NAV per unit (equity / units at that time)."""
    books.snapshot_equity("a1", D(100), T0)
    books.book_income(
        U, 5, kind="FUNDING_FEE", symbol="BTCUSDT", amount=D(25), time_ms=T0 + 1, agent_id="a1"
    )
    books.snapshot_equity("a1", D(125), T0 + 60_000)
    books.allocate("a1", D(225))  # 100 more at NAV 1.25: 80 units
    books.snapshot_equity("a1", D(250), T0 + 120_000)
    points = books.equity_history("a1")
    assert [(p.time_ms, p.equity) for p in points] == [
        (T0, D(100)),
        (T0 + 60_000, D(125)),
        (T0 + 120_000, D(250)),
    ]
    assert [p.nav for p in points] == [D(1), D("1.25"), D("1.25")]
