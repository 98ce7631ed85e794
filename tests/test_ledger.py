"""Unit tests of the ledger package: storage, reservations, fills, liveness, budgets, cache."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.errors import AlreadyRunning, LedgerError, ReservationDenied
from aster_agents.ledger import (
    AgentLock,
    Intent,
    Ledger,
    MarketDataCache,
    SharedBudget,
    apply_fill,
    audit,
    facts,
    make_client_order_id,
    pid_alive,
)
from aster_agents.ledger.sqlite import MIGRATIONS
from aster_agents.models import Kline, Side
from tests.plugins.ledger import kill_child, run_python, spawn_python

D = Decimal
COID_RE = re.compile(r"[A-Za-z0-9_-]{1,36}")


def _open(ledger: Ledger, agent: str = "a1", symbol: str = "BTCUSDT", **kw: object) -> Intent:
    args: dict[str, object] = {"margin": D(10), "notional": D(50)} | kw
    return ledger.reserve(agent, symbol, Side.BUY, **args)  # type: ignore[arg-type]


def _fill(
    ledger: Ledger,
    coid: str,
    trade_id: int,
    side: Side = Side.BUY,
    qty: str = "1",
    price: str = "50",
    symbol: str = "BTCUSDT",
    pnl: str = "0",
) -> bool:
    return ledger.book_fill(
        coid,
        trade_id=trade_id,
        symbol=symbol,
        side=side,
        qty=D(qty),
        price=D(price),
        realized_pnl=D(pnl),
        commission=D("0.1"),
        time_ms=1,
    )


def _hold(ledger: Ledger, agent: str, symbol: str) -> None:
    """Open a one-unit long position for ``agent`` on ``symbol``."""
    intent = _open(ledger, agent, symbol)
    assert ledger.confirm(intent.client_order_id)
    assert _fill(ledger, intent.client_order_id, hash((agent, symbol)) % 10**9, symbol=symbol)
    ledger.finish_intent(intent.client_order_id, "filled")


def _denied(
    ledger: Ledger, pattern: str, agent: str = "a1", symbol: str = "ETHUSDT", **kw: object
) -> None:
    with pytest.raises(ReservationDenied, match=pattern) as info:
        _open(ledger, agent, symbol, **kw)
    assert re.search(pattern, info.value.reason)


# ----------------------------------------------------------------- storage


def test_creates_wal_database_lock_file_and_records_migrations(state_dir: Path) -> None:
    """A fresh state dir gets ledger.sqlite3 in WAL mode, ledger.lock and one recorded migration."""
    Ledger(state_dir).close()
    led = Ledger(state_dir)
    assert (state_dir / "ledger.sqlite3").exists() and (state_dir / "ledger.lock").exists()
    conn = sqlite3.connect(state_dir / "ledger.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    assert rows == [(v, name) for v, (name, _) in enumerate(MIGRATIONS, start=1)]
    assert rows[0] == (1, "initial") and led.schema_version() == len(MIGRATIONS)
    assert led.store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL + WAL sync
    conn.close()
    led.close()


def test_newer_schema_is_refused_with_a_clear_error(state_dir: Path) -> None:
    """A ledger written by a newer schema raises LedgerError naming both versions."""
    Ledger(state_dir).close()
    conn = sqlite3.connect(state_dir / "ledger.sqlite3")
    future = len(MIGRATIONS) + 1
    conn.execute("INSERT INTO schema_migrations VALUES (?, 'future', 0)", (future,))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match=rf"schema version {future}, newer .*\(\d+\).*upgrade"):
        Ledger(state_dir)


def test_corrupt_file_raises_ledger_error(state_dir: Path) -> None:
    """A file that is not SQLite gives LedgerError naming the path, not a raw sqlite3 error."""
    state_dir.mkdir(parents=True)
    (state_dir / "ledger.sqlite3").write_bytes(b"not a database" * 100)
    with pytest.raises(LedgerError, match=r"ledger\.sqlite3"):
        Ledger(state_dir)


def test_failed_write_leaves_nothing_half_written(ledger: Ledger) -> None:
    """An error inside a write transaction rolls back every statement of it."""
    before = len(ledger.audit(1000))
    with pytest.raises(RuntimeError), ledger.store.write() as conn:
        conn.execute("UPDATE agents SET capital = '999' WHERE agent_id = 'a1'")
        conn.execute("INSERT INTO audit (time_ms, event, detail) VALUES (0, 'x', '')")
        raise RuntimeError("boom")
    row = ledger.agent("a1")
    assert row is not None and row.capital == D(100)
    assert len(ledger.audit(1000)) == before


KILLED_WRITER = """
import sys, time
from pathlib import Path
from aster_agents.ledger import Ledger
ledger = Ledger(Path(sys.argv[1]))
with ledger.store.write() as conn:
    conn.execute("UPDATE agents SET capital = '999' WHERE agent_id = 'a1'")
    conn.execute("INSERT INTO audit (time_ms, event, detail) VALUES (0, 'half', '')")
    print("inside", flush=True)
    time.sleep(60)
"""


def test_writer_killed_mid_transaction_leaves_nothing_and_frees_the_lock(
    ledger: Ledger, state_dir: Path
) -> None:
    """SIGKILL inside a write transaction: nothing of it persists and the next write proceeds."""
    child = spawn_python(KILLED_WRITER, str(state_dir))
    assert child.stdout is not None and child.stdout.readline().strip() == "inside"
    kill_child(child)
    _open(ledger)
    row = ledger.agent("a1")
    assert row is not None and row.capital == D(100)
    assert all(e.event != "half" for e in ledger.audit(1000))
    assert ledger.integrity_check() == "ok"


def test_fill_for_unknown_order_writes_nothing(ledger: Ledger) -> None:
    """book_fill of an unknown client order id raises and books no position or P&L."""
    with pytest.raises(LedgerError, match="no intent with client order id nope"):
        _fill(ledger, "nope", 1, pnl="5")
    assert ledger.positions() == []
    row = ledger.agent("a1")
    assert row is not None and row.realized_pnl == 0 and row.fees == 0


# ----------------------------------------------------------------- agents and accounts


def test_register_agent_is_idempotent_and_slots_are_unique_per_user(ledger: Ledger) -> None:
    """Re-registering keeps the nonce slot; slots are unique per user and restart per user."""
    assert ledger.register_agent("a1", "u1", max_positions=2) == 0
    assert ledger.register_agent("a2", "u1", max_positions=2) == 1
    assert ledger.register_agent("a3", "u1", max_positions=1) == 2
    assert ledger.register_agent("b1", "u2", max_positions=1) == 0
    assert ledger.register_agent("a3", "u2", max_positions=1) == 1
    assert ledger.register_agent("a4", "u1", max_positions=1) == 2
    rows = {r.agent_id: r for r in ledger.agent_rows()}
    assert rows["a1"].capital == D(100) and rows["a3"].user == "u2"
    allocations = sum(1 for e in ledger.audit(1000) if e.event == "allocate")
    ledger.register_agent("a1", "u1", max_positions=2, capital=D(100))
    assert sum(1 for e in ledger.audit(1000) if e.event == "allocate") == allocations
    ledger.register_agent("a1", "u1", max_positions=2, capital=D(150))
    row = ledger.agent("a1")
    assert row is not None and row.capital == D(150) and row.units == D(150)


def test_register_agent_refuses_bad_ids_and_a_65th_agent(ledger: Ledger) -> None:
    """Agent ids must match [a-z0-9-]{1,20}; a user has at most 64 nonce slots."""
    with pytest.raises(LedgerError, match="must match"):
        ledger.register_agent("Bad_Id", "u1", max_positions=1)
    for i in range(64):
        ledger.register_agent(f"x{i}", "u9", max_positions=1)
    with pytest.raises(LedgerError, match="no nonce slot left"):
        ledger.register_agent("x64", "u9", max_positions=1)


def test_set_enabled_blocks_opening_but_not_closing(ledger: Ledger) -> None:
    """A disabled agent opens nothing, may still close its positions, and the change is audited."""
    _hold(ledger, "a1", "BTCUSDT")
    ledger.set_enabled("a1", False, "losing")
    row = ledger.agent("a1")
    assert row is not None and not row.enabled and row.state == "disabled"
    assert row.state_reason == "losing"
    _denied(ledger, "agent disabled")
    close = ledger.reserve("a1", "BTCUSDT", Side.SELL, margin=D(0), notional=D(50), kind="close")
    assert close.kind == "close" and close.client_order_id.endswith("-close")
    assert any(e.event == "agent_state" for e in ledger.audit(5, agent_id="a1"))
    ledger.set_enabled("a1", True, "back")
    _open(ledger, "a1", "ETHUSDT")


def test_set_state_probation_still_opens_and_unknown_state_is_refused(ledger: Ledger) -> None:
    """Probation keeps the agent enabled; an unknown state raises LedgerError."""
    ledger.set_state("a1", "probation", "drawdown")
    _open(ledger, "a1")
    with pytest.raises(LedgerError, match="not one of"):
        ledger.set_state("a1", "sleepy", "x")
    with pytest.raises(LedgerError, match="not registered"):
        ledger.set_state("zz", "active", "x")


def test_set_state_with_expect_is_a_compare_and_set(ledger: Ledger) -> None:
    """set_state(expect=...) changes nothing when the state moved meanwhile."""
    ledger.set_state("a1", "disabled", "operator")
    assert not ledger.set_state("a1", "probation", "drawdown 12%", expect="active")
    row = ledger.agent("a1")
    assert row is not None and (row.state, row.state_reason) == ("disabled", "operator")
    assert ledger.set_state("a1", "active", "operator enable", expect="disabled")


def test_register_again_never_re_enables_a_disabled_agent(ledger: Ledger) -> None:
    """A restart (register_agent enabled=True) keeps a kill-switched agent disabled."""
    ledger.set_state("a1", "disabled", "kill switch: drawdown 21% >= 20%")
    row = ledger.agent("a1")
    assert row is not None
    ledger.register_agent("a1", row.user, max_positions=3, enabled=True)
    again = ledger.agent("a1")
    assert again is not None and again.state == "disabled" and not again.enabled
    _denied(ledger, "agent disabled")
    ledger.register_agent("a1", row.user, max_positions=3, enabled=False)
    ledger.set_state("a1", "active", "operator enable")
    ledger.register_agent("a1", row.user, max_positions=3, enabled=True)
    last = ledger.agent("a1")
    assert last is not None and last.state == "active" and last.enabled


def test_allocate_issues_units_at_current_nav(ledger: Ledger) -> None:
    """First allocation is at NAV 1; later ones issue/redeem units at the NAV after P&L."""
    row = ledger.agent("a1")
    assert row is not None and row.units == D(100) and row.nav_per_unit == 1
    intent = _open(ledger)
    _fill(ledger, intent.client_order_id, 1, pnl="20.1")  # +20.1 - 0.1 fee = +20
    ledger.allocate("a1", D(160))  # NAV 1.2: +60 capital -> +50 units
    row = ledger.agent("a1")
    assert row is not None and row.units == D(150) and row.capital == D(160)
    assert row.nav_per_unit == D(180) / D(150)
    ledger.allocate("a1", D(100), equity=D(90))  # NAV 0.6: -60 capital -> -100 units
    row = ledger.agent("a1")
    assert row is not None and row.units == D(50)


def test_account_limits_are_readable(ledger: Ledger) -> None:
    """set_account_limits upserts and account_limits reads it back."""
    ledger.set_account_limits("u1", max_total_positions=9, max_gross_leverage=D(2))
    limits = ledger.account_limits("u1")
    assert limits is not None and limits.max_total_positions == 9 and limits.equity is None
    assert ledger.account_limits("nobody") is None


# ----------------------------------------------------------------- reservations


def test_client_order_id_is_deterministic_short_and_safe() -> None:
    """<agent>-<seq 6+ digits>-<kind>, at most 36 chars of [A-Za-z0-9_-] even at the extremes."""
    assert make_client_order_id("a01", 123, "open") == "a01-000123-open"
    longest = make_client_order_id("a" * 20, 10**9, "protect")
    assert COID_RE.fullmatch(longest) and longest.endswith("-p")
    assert make_client_order_id("a" * 20, 999_999, "protect") == "a" * 20 + "-999999-protect"


def test_reserve_writes_a_reserved_intent(ledger: Ledger) -> None:
    """reserve returns and stores a reserved intent with pid, expiry and a valid client id."""
    intent = _open(ledger, ttl_seconds=30)
    assert COID_RE.fullmatch(intent.client_order_id)
    assert intent.client_order_id == f"a1-{intent.seq:06d}-open"
    assert intent.state == "reserved" and intent.pid == os.getpid() and intent.user == "u1"
    assert intent.expires_ms - intent.created_ms == 30_000
    assert ledger.intent(intent.client_order_id) == intent
    assert ledger.symbol_owner("u1", "BTCUSDT") == "a1"
    assert ledger.counts("u1") == (0, 1)


def test_denied_when_agent_not_registered(ledger: Ledger) -> None:
    """An unknown agent is denied."""
    _denied(ledger, "agent not registered", agent="ghost")


def test_denied_when_account_has_no_limits(ledger: Ledger) -> None:
    """An agent whose account has no limits set cannot open."""
    ledger.register_agent("c1", "u3", max_positions=3, capital=D(100))
    _denied(ledger, "has no limits", agent="c1")


def test_denied_at_agent_max_positions(ledger: Ledger) -> None:
    """open+reserved < max_positions: the third slot of a 2-slot agent is denied."""
    _hold(ledger, "a1", "BTCUSDT")
    _open(ledger, "a1", "ETHUSDT")
    _denied(ledger, r"agent at max_positions \(2 open\+reserved of 2\)", symbol="SOLUSDT")


def test_adding_to_own_symbol_takes_no_new_slot(ledger: Ledger) -> None:
    """A symbol the agent already holds does not count against max_positions again."""
    _hold(ledger, "a1", "BTCUSDT")
    _hold(ledger, "a1", "ETHUSDT")
    _open(ledger, "a1", "BTCUSDT")


def test_denied_at_account_max_total_positions(ledger: Ledger) -> None:
    """The account's open+reserved < max_total_positions across its agents."""
    _hold(ledger, "a1", "BTCUSDT")
    _open(ledger, "a1", "ETHUSDT")
    _open(ledger, "a2", "SOLUSDT")
    _denied(ledger, r"account at max_total_positions \(3 of 3\)", agent="a2", symbol="XRPUSDT")


def test_denied_when_symbol_owned_by_another_agent(ledger: Ledger) -> None:
    """Exclusive policy: a reserved or held symbol belongs to one agent per account."""
    _open(ledger, "a1", "BTCUSDT")
    _denied(ledger, "symbol owned by a1", agent="a2", symbol="BTCUSDT")


def test_denied_over_gross_leverage(ledger: Ledger) -> None:
    """Gross notional (positions + open reservations) may not exceed leverage x equity."""
    _open(ledger, "a1", "BTCUSDT", notional=D(4000))
    _denied(ledger, r"gross notional 5001 would exceed 5x equity \(5000\)", notional=D(1001))
    _open(ledger, "a2", "ETHUSDT", notional=D(1000))


def test_denied_when_margin_exceeds_free_capital(ledger: Ledger) -> None:
    """Margin must fit in capital + P&L minus margin of positions and reservations."""
    _open(ledger, "a1", "BTCUSDT", margin=D(60))
    _denied(ledger, r"margin 41 exceeds free capital 40", margin=D(41))
    _open(ledger, "a1", "ETHUSDT", margin=D(40))


def test_close_and_protect_need_the_symbol_but_no_slot(ledger: Ledger) -> None:
    """close/protect intents require the agent's position and ignore slot limits."""
    with pytest.raises(ReservationDenied, match="holds no position"):
        ledger.reserve("a1", "BTCUSDT", Side.SELL, margin=D(0), notional=D(1), kind="close")
    _hold(ledger, "a1", "BTCUSDT")
    _hold(ledger, "a1", "ETHUSDT")
    stop = ledger.reserve("a1", "BTCUSDT", Side.SELL, margin=D(0), notional=D(1), kind="protect")
    assert stop.client_order_id.endswith("-protect")
    with pytest.raises(ReservationDenied, match="holds no position"):
        ledger.reserve("a2", "BTCUSDT", Side.SELL, margin=D(0), notional=D(1), kind="close")
    with pytest.raises(LedgerError, match="kind"):
        ledger.reserve("a1", "BTCUSDT", Side.SELL, margin=D(0), notional=D(1), kind="weird")


def test_confirm_and_release_are_conditional(ledger: Ledger) -> None:
    """confirm only from reserved; release from reserved or confirmed; both report success."""
    first, second = _open(ledger, "a1", "BTCUSDT"), _open(ledger, "a1", "ETHUSDT")
    assert ledger.confirm(first.client_order_id) is True
    assert ledger.confirm(first.client_order_id) is False
    assert ledger.release(first.client_order_id, "canceled") is True
    assert ledger.release(first.client_order_id, "again") is False
    assert ledger.release(second.client_order_id, "not sent") is True
    assert ledger.confirm(second.client_order_id) is False
    released = ledger.intent(second.client_order_id)
    assert released is not None and released.state == "released"
    assert released.reason == "not sent"
    assert ledger.counts("u1") == (0, 0) and ledger.symbol_owner("u1", "BTCUSDT") is None


def test_expired_reservation_is_reaped_but_stays_queryable(ledger: Ledger) -> None:
    """A reservation past its TTL is reaped by the next reserve it is in the way of."""
    stale = _open(ledger, "a1", "BTCUSDT", ttl_seconds=0)
    _open(ledger, "a2", "BTCUSDT")
    reaped = ledger.intent(stale.client_order_id)
    assert reaped is not None and reaped.state == "expired" and reaped.reason == "ttl"
    assert ledger.confirm(stale.client_order_id) is False
    assert any(e.event == "reap" for e in ledger.audit(10))


def _dead_pid() -> int:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    assert not pid_alive(pid)
    return pid


def test_dead_pid_reservation_is_reaped_and_its_fill_still_books(ledger: Ledger) -> None:
    """A dead process's unsent reservation is reaped when in the way; a fill on it still books."""
    orphan = _open(ledger, "a1", "BTCUSDT", pid=_dead_pid())
    _open(ledger, "a1", "ETHUSDT")  # a1's second slot of 2: the orphan holds the first
    _open(ledger, "a1", "SOLUSDT")  # would be denied (max_positions) unless the orphan goes
    reaped = ledger.intent(orphan.client_order_id)
    assert reaped is not None and reaped.state == "expired" and reaped.reason == "pid dead"
    assert orphan.client_order_id not in {
        i.client_order_id for i in ledger.unresolved_intents("a1")
    }
    assert _fill(ledger, orphan.client_order_id, 7) is True
    assert [p.symbol for p in ledger.positions(agent_id="a1")] == ["BTCUSDT"]


def test_reaper_runs_when_a_limit_would_deny_or_the_interval_passed(state_dir: Path) -> None:
    """``reserve`` reaps before any denial, and at least every ``reap_interval_s`` anyway.

    Skipping a reap only ever makes limits tighter, never looser; reaping before every
    denial means a stale reservation never causes one, and the interval bounds how long
    one can linger where nothing needs its slot.
    """
    lazy = Ledger(state_dir, reap_interval_s=3600)
    lazy.set_account_limits("u1", max_total_positions=9, max_gross_leverage=D(5))
    lazy.register_agent("a1", "u1", max_positions=9, capital=D(100))
    _open(lazy, "a1", "S0")  # a process's first reservation reaps: nothing to reap yet
    orphan = _open(lazy, "a1", "BTCUSDT", pid=_dead_pid())
    _open(lazy, "a1", "ETHUSDT")  # nothing in the way, interval not passed: no reap
    assert lazy.intent(orphan.client_order_id).state == "reserved"  # type: ignore[union-attr]
    eager = Ledger(state_dir, reap_interval_s=0, reap_min_age_s=0)
    try:
        _open(eager, "a1", "SOLUSDT")  # the interval has passed: reaps though not denied
        reaped = eager.intent(orphan.client_order_id)
        assert reaped is not None and reaped.state == "expired" and reaped.reason == "pid dead"
    finally:
        eager.close()
        lazy.close()


def test_sweep_skips_young_reservations_but_a_denial_reaps_them_all(state_dir: Path) -> None:
    """The periodic sweep leaves reservations younger than ``reap_min_age_s`` alone (a live
    owner resolves those itself); before a denial every stale one is reaped regardless."""
    led = Ledger(state_dir, reap_interval_s=0, reap_min_age_s=3600)
    try:
        led.set_account_limits("u1", max_total_positions=3, max_gross_leverage=D(5))
        led.register_agent("a1", "u1", max_positions=3, capital=D(100))
        orphans = [_open(led, "a1", s, pid=_dead_pid()) for s in ("S0", "S1")]
        _open(led, "a1", "S2")  # a sweep ran (interval 0) and kept the young orphans
        assert [led.intent(o.client_order_id).state for o in orphans] == ["reserved"] * 2  # type: ignore[union-attr]
        _open(led, "a1", "S3")  # max_positions 3 would deny: both orphans are reaped first
        assert [led.intent(o.client_order_id).reason for o in orphans] == ["pid dead"] * 2  # type: ignore[union-attr]
    finally:
        led.close()


def test_live_pid_with_stale_heartbeat_is_reaped(state_dir: Path) -> None:
    """A reservation whose pid's own heartbeat is older than the stale limit is reaped."""
    led = Ledger(state_dir, stale_heartbeat_s=0)
    led.set_account_limits("u1", max_total_positions=5, max_gross_leverage=D(5))
    led.register_agent("a1", "u1", max_positions=5, capital=D(100))
    child = spawn_python("import time; time.sleep(60)")
    try:
        led.heartbeat("a1", child.pid)
        intent = _open(led, "a1", "BTCUSDT", pid=child.pid)
        deadline = time.monotonic() + 5
        while led.intent(intent.client_order_id).state != "expired":  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "stale-heartbeat reservation never reaped"
            _open(led, "a1", f"S{int(time.monotonic() * 1e6)}", margin=D(0))
        assert led.intent(intent.client_order_id).reason == "heartbeat stale"  # type: ignore[union-attr]
    finally:
        kill_child(child)
        led.close()


def test_live_pid_reservation_is_not_reaped(ledger: Ledger) -> None:
    """A reservation of a live process within its TTL survives other reservations."""
    child = spawn_python("import time; time.sleep(60)")
    try:
        kept = _open(ledger, "a1", "BTCUSDT", pid=child.pid)
        _open(ledger, "a2", "ETHUSDT")
        assert ledger.intent(kept.client_order_id).state == "reserved"  # type: ignore[union-attr]
    finally:
        kill_child(child)


def test_unresolved_intents_and_finish_intent(ledger: Ledger) -> None:
    """Reserved and confirmed intents are unresolved until finished with a final state."""
    first, second = _open(ledger, "a1", "BTCUSDT"), _open(ledger, "a1", "ETHUSDT")
    ledger.confirm(second.client_order_id)
    ids = [i.client_order_id for i in ledger.unresolved_intents("a1")]
    assert ids == [first.client_order_id, second.client_order_id]
    ledger.finish_intent(second.client_order_id, "canceled")
    ledger.finish_intent(second.client_order_id, "canceled")
    assert [i.client_order_id for i in ledger.unresolved_intents("a1")] == [first.client_order_id]
    with pytest.raises(LedgerError, match="final intent state"):
        ledger.finish_intent(first.client_order_id, "reserved")
    with pytest.raises(LedgerError, match="no intent"):
        ledger.finish_intent("missing", "filled")
    with pytest.raises(LedgerError, match="no intent"):
        ledger.mark_sent("missing")
    assert ledger.intent("missing") is None


def test_mark_sent_is_recorded(ledger: Ledger) -> None:
    """mark_sent sets the sent flag used by start-up recovery."""
    intent = _open(ledger)
    ledger.mark_sent(intent.client_order_id)
    sent = ledger.intent(intent.client_order_id)
    assert sent is not None and sent.sent


# ----------------------------------------------------------------- fills, funding, positions


@pytest.mark.parametrize(
    ("qty", "entry", "fill", "price", "expected"),
    [
        ("0", "0", "2", "10", ("2", "10")),
        ("2", "10", "2", "20", ("4", "15")),
        ("4", "15", "-1", "30", ("3", "15")),
        ("3", "15", "-5", "12", ("-2", "12")),
        ("-2", "12", "2", "11", ("0", "0")),
    ],
)
def test_apply_fill_averages_keeps_and_flips(
    qty: str, entry: str, fill: str, price: str, expected: tuple[str, str]
) -> None:
    """Entry price averages on adds, stays on reductions and resets on a flip."""
    assert apply_fill(D(qty), D(entry), D(fill), D(price)) == (D(expected[0]), D(expected[1]))


def test_book_fill_is_idempotent_and_tracks_position_and_pnl(ledger: Ledger) -> None:
    """Fills are booked once per trade id and move qty, entry, P&L and fees."""
    intent = _open(ledger)
    assert ledger.confirm(intent.client_order_id)
    assert _fill(ledger, intent.client_order_id, 1, qty="1", price="100") is True
    assert _fill(ledger, intent.client_order_id, 1, qty="1", price="100") is False
    assert _fill(ledger, intent.client_order_id, 2, qty="1", price="110") is True
    (pos,) = ledger.positions(agent_id="a1")
    assert pos.qty == D(2) and pos.entry_price == D(105) and pos.margin == D(10)
    close = ledger.reserve("a1", "BTCUSDT", Side.SELL, margin=D(0), notional=D(1), kind="close")
    assert _fill(ledger, close.client_order_id, 3, side=Side.SELL, qty="1", pnl="5")
    (pos,) = ledger.positions(agent_id="a1")
    assert pos.qty == D(1) and pos.entry_price == D(105)
    row = ledger.agent("a1")
    assert row is not None and row.realized_pnl == D(5) and row.fees == D("0.3")


def test_position_reaching_zero_frees_slot_and_symbol(ledger: Ledger) -> None:
    """Closing a position to zero frees its slot and lets another agent take the symbol."""
    _hold(ledger, "a1", "BTCUSDT")
    _denied(ledger, "owned by a1", agent="a2", symbol="BTCUSDT")
    assert ledger.counts("u1") == (1, 0)
    close = ledger.reserve("a1", "BTCUSDT", Side.SELL, margin=D(0), notional=D(1), kind="close")
    ledger.confirm(close.client_order_id)
    _fill(ledger, close.client_order_id, 99, side=Side.SELL)
    ledger.finish_intent(close.client_order_id, "filled")
    assert ledger.positions() == [] and ledger.symbol_owner("u1", "BTCUSDT") is None
    assert ledger.counts("u1") == (0, 0)
    _open(ledger, "a2", "BTCUSDT")


def test_close_position_drops_a_position_without_a_fill(ledger: Ledger) -> None:
    """close_position (reconcile) removes the position and reports whether there was one."""
    _hold(ledger, "a1", "BTCUSDT")
    assert ledger.close_position("a1", "BTCUSDT", "flat on exchange") is True
    assert ledger.close_position("a1", "BTCUSDT", "again") is False
    assert ledger.positions() == []


def test_book_funding_is_idempotent(ledger: Ledger) -> None:
    """Funding is booked once per transaction id and summed into the agent's funding."""
    assert ledger.book_funding("a1", "BTCUSDT", D("-0.5"), 11, 1) is True
    assert ledger.book_funding("a1", "BTCUSDT", D("-0.5"), 11, 1) is False
    assert ledger.book_funding("a1", "BTCUSDT", D("0.2"), 12, 2) is True
    row = ledger.agent("a1")
    assert row is not None and row.funding == D("-0.3")
    with pytest.raises(LedgerError, match="not registered"):
        ledger.book_funding("ghost", "BTCUSDT", D(1), 13, 3)


def test_positions_filter_by_agent_and_user(ledger: Ledger) -> None:
    """positions() filters by agent and by account."""
    ledger.set_account_limits("u2", max_total_positions=3, max_gross_leverage=D(5))
    ledger.register_agent("b1", "u2", max_positions=2, capital=D(100))
    _hold(ledger, "a1", "BTCUSDT")
    _hold(ledger, "b1", "BTCUSDT")
    assert [p.agent_id for p in ledger.positions()] == ["a1", "b1"]
    assert [p.agent_id for p in ledger.positions(user="u2")] == ["b1"]
    assert [p.user for p in ledger.positions(agent_id="a1")] == ["u1"]
    assert ledger.positions(agent_id="a1", user="u2") == []


# ----------------------------------------------------------------- heartbeats, equity, audit


def test_heartbeat_records_pid_time_error_and_ticks(ledger: Ledger) -> None:
    """heartbeat stores pid, time and last error, counts ticks, and audits errors."""
    ledger.heartbeat("a1", 4242, tick=True)
    ledger.heartbeat("a1", 4242, error="timeout talking to exchange", tick=True)
    row = ledger.agent("a1")
    assert row is not None and row.heartbeat_pid == 4242 and row.ticks == 2
    assert row.heartbeat_error == "timeout talking to exchange"
    assert row.heartbeat_ms is not None and abs(row.heartbeat_ms - time.time() * 1000) < 60_000
    assert ledger.audit(1)[0].event == "error"
    with pytest.raises(LedgerError, match="ghost is not registered"):
        ledger.heartbeat("ghost", 1)


def test_equity_history_is_in_time_order(ledger: Ledger) -> None:
    """snapshot_equity appends points; equity_history returns them oldest first."""
    ledger.snapshot_equity("a1", D(101), 2000)
    ledger.snapshot_equity("a1", D(100), 1000)
    ledger.snapshot_equity("a2", D(5), 1500)
    assert [(p.time_ms, p.equity) for p in ledger.equity_history("a1")] == [
        (1000, D(100)),
        (2000, D(101)),
    ]


def _end_of_tick(
    ledger: Ledger, agent: str, user: str, *, one_call: bool
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The end of two ticks (marks, then none) in the two-call or the one-call form; the
    agent's equity rows and the account's marks rows, without their agent and user."""
    for t, marks in ((5_000, {"BTCUSDT": D("50000.5"), "ETHUSDT": D(3000)}), (6_000, {})):
        equity = D("101.12345678") + t
        if one_call:
            ledger.snapshot_with_marks(agent, equity, marks, user=user, time_ms=t)
        else:
            ledger.record_marks(user, marks, t)
            ledger.snapshot_equity(agent, equity, t)
    assert len(ledger.equity_history(agent)) == 2  # a read of equity: all written by now
    conn = ledger.store.conn
    equity_rows = conn.execute(
        "SELECT time_ms, equity, units, nav FROM equity WHERE agent_id = ? ORDER BY rowid",
        (agent,),
    ).fetchall()
    mark_rows = conn.execute(
        "SELECT symbol, mark, time_ms FROM marks WHERE user = ? ORDER BY symbol", (user,)
    ).fetchall()
    return [tuple(r) for r in equity_rows], [tuple(r) for r in mark_rows]


def _two_forms(ledger: Ledger) -> None:
    ledger.set_account_limits("u2", max_total_positions=3, max_gross_leverage=D(5))
    ledger.register_agent("b1", "u2", max_positions=2, capital=D(100))
    ledger.agent("a1"), ledger.agent("b1")  # a throwaway ledger takes the units from these
    two = _end_of_tick(ledger, "a1", "u1", one_call=False)
    one = _end_of_tick(ledger, "b1", "u2", one_call=True)
    assert two[0] and two[1] and len(two[0]) == 2
    assert one == two


def test_snapshot_with_marks_writes_the_rows_of_record_marks_and_snapshot_equity(
    ledger: Ledger,
) -> None:
    """The end of a tick in one transaction leaves the rows of its two-call form."""
    _two_forms(ledger)


def test_snapshot_with_marks_on_a_throwaway_ledger(tmp_path: Path) -> None:
    """The same on a throwaway ledger, whose units come from its kept agent row."""
    with Ledger(tmp_path, throwaway=True) as ledger:
        ledger.set_account_limits("u1", max_total_positions=3, max_gross_leverage=D(5))
        ledger.register_agent("a1", "u1", max_positions=2, capital=D(100))
        writes = ledger.store.writes  # type: ignore[attr-defined]
        _two_forms(ledger)
        # limits and b1; two-call: the marks of the first tick (the second has none) and the
        # snapshots, written before equity_history reads them; one-call: the snapshots so
        assert ledger.store.writes - writes == 2 + 2 + 1  # type: ignore[attr-defined]


def test_sleeve_states_are_the_account_s_agent_rows_in_brief(ledger: Ledger) -> None:
    """The account kill switch's per-tick read: state, reason and units of the account's
    agents, as ``agent_rows`` has them."""
    ledger.set_account_limits("u2", max_total_positions=3, max_gross_leverage=D(5))
    ledger.register_agent("b1", "u2", max_positions=2, capital=D(50))
    ledger.set_state("a2", "disabled", "kill switch")
    ledger.allocate("a1", D(120))
    for user in ("u1", "u2", "nobody"):
        rows = [r for r in ledger.agent_rows() if r.user == user]
        expected = [(r.agent_id, r.user, r.state, r.state_reason, r.units) for r in rows]
        assert [tuple(s) for s in ledger.sleeve_states(user)] == expected
    assert [s.state_reason for s in ledger.sleeve_states("u1")] == [None, "kill switch"]


def test_audit_lists_every_state_change_newest_first(ledger: Ledger) -> None:
    """Every state change leaves an audit row; audit() is newest first and limited."""
    intent = _open(ledger)
    ledger.confirm(intent.client_order_id)
    ledger.release(intent.client_order_id, "canceled")
    events = [e.event for e in ledger.audit(3)]
    assert events == ["released", "confirmed", "reserve"]
    assert json.loads(ledger.audit(1)[0].detail)["coid"] == intent.client_order_id
    assert "agent_registered" in {e.event for e in ledger.audit(100)}
    reserve = ledger.audit(3)[2].detail
    expected = {"coid": intent.client_order_id, "kind": "open", "pid": os.getpid()}
    assert reserve == json.dumps({**expected, "symbol": intent.symbol}, sort_keys=True)


def test_audit_details_are_the_json_dumps_text_with_one_encoder() -> None:
    """``audit.DETAIL_JSON`` (one encoder for every row) writes what ``json.dumps(detail,
    default=str, sort_keys=True)`` writes, for every kind of value an audit row holds."""
    details: list[dict[str, object]] = [
        {},
        {"coid": "a-000001-open", "kind": "open", "pid": 12, "symbol": "BTCUSDT"},
        {"qty": Decimal("-0.001"), "reason": None, "was": "confirmed", "trade_id": 2**40},
        {"z": 1.5, "a": float("nan"), "m": [Decimal(1), {"b": True, "a": 'é\n"x'}]},
        {"detail": {"moves": {"a": {"from": Decimal("1.10"), "to": Decimal(2)}}}, "t": (1, 2)},
    ]
    for detail in details:
        assert audit.DETAIL_JSON.encode(detail) == json.dumps(detail, default=str, sort_keys=True)


def test_agent_rows_carry_status_fields(ledger: Ledger) -> None:
    """agent_rows has capital, units, counts and nonce slot for status views."""
    _hold(ledger, "a1", "BTCUSDT")
    _open(ledger, "a1", "ETHUSDT")
    a1 = next(r for r in ledger.agent_rows() if r.agent_id == "a1")
    assert (a1.positions, a1.reserved, a1.nonce_slot, a1.capital) == (1, 1, 0, D(100))
    assert ledger.integrity_check() == "ok"


# ----------------------------------------------------------------- AgentLock


LOCK_CHILD = """
import sys
from pathlib import Path
from aster_agents.errors import AlreadyRunning
from aster_agents.ledger import AgentLock
try:
    with AgentLock(Path(sys.argv[1]), "a1"):
        print("got it")
except AlreadyRunning as exc:
    print(exc, file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def test_agent_lock_second_process_exits_3_naming_the_holder(state_dir: Path) -> None:
    """A second process taking the same agent lock exits 3 with a message naming our pid."""
    with AgentLock(state_dir, "a1") as lock:
        assert lock.held
        result = run_python(LOCK_CHILD, str(state_dir))
        assert result.returncode == 3
        assert f"agent a1 is already running (pid {os.getpid()}" in result.stderr
        with pytest.raises(AlreadyRunning):
            AgentLock(state_dir, "a1").acquire()
    assert not lock.held
    result = run_python(LOCK_CHILD, str(state_dir))
    assert (result.returncode, result.stdout.strip()) == (0, "got it")


def test_agent_lock_is_freed_when_the_holder_is_killed(state_dir: Path) -> None:
    """The kernel drops the flock of a SIGKILLed holder, so a restart gets the lock."""
    holder = spawn_python(
        "import sys, time\nfrom pathlib import Path\nfrom aster_agents.ledger import AgentLock\n"
        "lock = AgentLock(Path(sys.argv[1]), 'a1'); lock.acquire(); print('held')\n"
        "time.sleep(60)",
        str(state_dir),
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"):
        AgentLock(state_dir, "a1").acquire()
    kill_child(holder)
    with AgentLock(state_dir, "a1"):
        pass


# ----------------------------------------------------------------- SharedBudget


PAUSE_CHILD = """
import sys
from pathlib import Path
from aster_agents.errors import RateLimited
from aster_agents.ledger import SharedBudget
budget = SharedBudget(Path(sys.argv[1]), user="u1", max_pause_wait_s=1)
print(budget.paused_until())
try:
    budget.acquire(1)
except RateLimited as exc:
    print("rate limited until", int(exc.retry_at))
"""


def test_budget_pause_is_shared_across_processes(state_dir: Path) -> None:
    """A 429 pause set in one process stops acquire() in another process until that time."""
    budget = SharedBudget(state_dir, user="u1")
    until = time.time() + 120
    budget.pause(until, "HTTP 429")
    budget.pause(until - 60, "shorter pause never shortens")
    result = run_python(PAUSE_CHILD, str(state_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert float(lines[0]) == pytest.approx(until)
    assert lines[1] == f"rate limited until {int(until)}"
    assert budget.state()["pause_reason"] == "HTTP 429"
    budget.close()


def test_budget_tokens_are_spent_corrected_and_refilled(state_dir: Path) -> None:
    """acquire spends weight and orders, observe lowers buckets, and acquire waits for refill."""
    budget = SharedBudget(
        state_dir,
        user="u1",
        weight_per_minute=60,
        orders_per_10s=10,
        orders_per_minute=60,
        safety=1.0,
    )
    budget.acquire(50, orders=2)
    levels = budget.state()["buckets"]
    assert levels["weight:ip"] == pytest.approx(10, abs=0.5)
    assert levels["orders10s:u1"] == pytest.approx(8, abs=0.5)
    budget.observe(58, None, None)
    assert budget.state()["buckets"]["weight:ip"] == pytest.approx(2, abs=0.5)
    started = time.monotonic()
    budget.acquire(3)  # needs about one second of refill at 1 weight/s
    assert time.monotonic() - started >= 0.5
    with pytest.raises(ValueError, match="exceeds bucket"):
        budget.acquire(61)
    assert budget.paused_until() is None
    budget.close()


# ----------------------------------------------------------------- MarketDataCache


CACHE_CHILD = """
import os, sys, time
from pathlib import Path
from aster_agents.ledger import MarketDataCache
state, counter = Path(sys.argv[1]), sys.argv[2]
def fetch():
    fd = os.open(counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{os.getpid()}\\n".encode())
    os.close(fd)
    time.sleep(0.3)  # a slow exchange call; the others must wait for it, not fetch again
    return "klines-payload"
fresh_until = int(time.time() * 1000) + 60_000
print(MarketDataCache(state).get_or_fetch("BTCUSDT:1m", fresh_until, fetch))
"""


def test_cache_is_fetched_once_by_many_processes(state_dir: Path, tmp_path: Path) -> None:
    """Six processes asking for the same key at once cause exactly one fetch."""
    counter = tmp_path / "fetches"
    children = [spawn_python(CACHE_CHILD, str(state_dir), str(counter)) for _ in range(6)]
    outputs = [child.communicate(timeout=30)[0].strip() for child in children]
    assert all(child.returncode == 0 for child in children)
    assert outputs == ["klines-payload"] * 6
    assert len(counter.read_text().splitlines()) == 1


def test_cache_keeps_type_and_refetches_when_stale(state_dir: Path) -> None:
    """bytes stay bytes; a value past its fresh_until is fetched again."""
    cache = MarketDataCache(state_dir)
    calls: list[int] = []

    def fetch() -> bytes:
        calls.append(1)
        return b"\x00raw"

    assert cache.get_or_fetch("k/1", 2_000, fetch, now_ms=1_000) == b"\x00raw"
    assert cache.get_or_fetch("k/1", 2_000, fetch, now_ms=1_500) == b"\x00raw"
    assert len(calls) == 1 and cache.fetched_ms("k/1") is not None
    assert cache.get_or_fetch("k/1", 3_000, fetch, now_ms=2_000) == b"\x00raw"
    assert len(calls) == 2
    assert cache.get_or_fetch("other", 9_999, lambda: "text", now_ms=1) == "text"
    assert cache.fetched_ms("never") is None


def test_cache_klines_are_shared_as_json_and_parsed_once_per_stored_value(state_dir: Path) -> None:
    """``klines``: one fetch while fresh; another instance (process) reads the same candles
    from the file; an instance hands back its parsed list until the stored value changes."""
    one, two = MarketDataCache(state_dir), MarketDataCache(state_dir)
    candles = [
        Kline(
            0,
            Decimal("1.10"),
            Decimal("1.2"),
            Decimal("1"),
            Decimal("1.1"),
            Decimal("7E+2"),
            59_999,
        )
    ]
    calls: list[int] = []

    def fetch() -> list[Kline]:
        calls.append(1)
        return list(candles)

    first = one.klines("k", 2_000, fetch, now_ms=1_000)
    assert first == candles and one.klines("k", 2_000, fetch, now_ms=1_500) is first
    again = two.klines("k", 2_000, fetch, now_ms=1_500)
    assert again == candles and [str(k.volume) for k in again] == ["7E+2"] and len(calls) == 1
    assert two.klines("k", 2_000, fetch, now_ms=1_600) is again
    candles.append(Kline(60_000, *(Decimal(2),) * 5, 119_999))  # the stale value's refetch
    assert one.klines("k", 3_000, fetch, now_ms=2_000) == candles and len(calls) == 2
    assert two.klines("k", 3_000, fetch, now_ms=2_500) == candles  # stored anew: parsed anew


def test_sent_intent_of_dead_pid_is_never_reaped(tmp_path: Path) -> None:
    """A reservation whose order went on the wire keeps its slot until its owner resolves it."""
    import subprocess
    import sys

    from aster_agents.errors import ReservationDenied
    from aster_agents.models import Side

    ledger = Ledger(tmp_path)
    ledger.register_agent("a1", "0xU", max_positions=5, capital=Decimal(1000))
    ledger.set_account_limits("0xU", max_total_positions=1, max_gross_leverage=Decimal(10))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    sent = ledger.reserve(
        "a1", "BTCUSDT", Side.BUY, margin=Decimal(1), notional=Decimal(1), pid=pid
    )
    ledger.mark_sent(sent.client_order_id)
    with pytest.raises(ReservationDenied, match="max_total_positions"):
        ledger.reserve("a1", "ETHUSDT", Side.BUY, margin=Decimal(1), notional=Decimal(1))
    intent = ledger.intent(sent.client_order_id)
    assert intent is not None and intent.state == "reserved"
    ledger.close()


def test_mark_sent_refuses_an_intent_that_is_no_longer_reserved(ledger: Ledger) -> None:
    """An intent released (or reaped) before it was sent must not be sent: mark_sent is False."""
    intent = _open(ledger, "a1", "BTCUSDT")
    assert ledger.release(intent.client_order_id, "changed my mind")
    assert ledger.mark_sent(intent.client_order_id) is False
    current = ledger.intent(intent.client_order_id)
    assert current is not None and current.sent is False


def _exchange_close(ledger: Ledger, trade_id: int, side: Side, qty: str) -> str | None:
    return ledger.book_exchange_close(
        "u1",
        event="liquidation",
        order_id=777,
        client_order_id="autoclose-1-1",
        trade_id=trade_id,
        symbol="BTCUSDT",
        side=side,
        qty=D(qty),
        price=D("40"),
        realized_pnl=D("-10"),
        commission=D("1"),
        time_ms=5,
    )


def test_exchange_close_is_booked_once_to_the_holder_and_frees_the_symbol(ledger: Ledger) -> None:
    """A liquidation trade books to the agent it closes, once per trade; no holder: None."""
    _hold(ledger, "a1", "BTCUSDT")
    assert _exchange_close(ledger, 9001, Side.BUY, "1") is None  # would not reduce a long
    assert _exchange_close(ledger, 9001, Side.SELL, "0.4") == "a1"
    assert _exchange_close(ledger, 9001, Side.SELL, "0.4") == "a1"  # the same trade again
    assert [p.qty for p in ledger.positions(agent_id="a1")] == [D("0.6")]
    assert _exchange_close(ledger, 9002, Side.SELL, "0.6") == "a1"  # same order, next trade
    assert ledger.positions(user="u1") == []
    assert ledger.symbol_owner("u1", "BTCUSDT") is None
    row = ledger.agent("a1")
    assert row is not None and (row.realized_pnl, row.fees) == (D("-20"), D("2.1"))
    assert ledger.booked_trades("u1", "BTCUSDT")[9002] == (D("-10"), D("1"))
    events = [e.event for e in ledger.audit(agent_id="a1")]
    assert events.count("liquidation") == 2


def test_release_unsent_leaves_a_sent_reservation_alone(ledger: Ledger) -> None:
    """release_unsent frees a never-sent reservation, never one already marked sent."""
    first, second = _open(ledger, "a1", "BTCUSDT"), _open(ledger, "a1", "ETHUSDT")
    assert ledger.mark_sent(second.client_order_id)
    assert ledger.release_unsent(first.client_order_id, "test")
    assert not ledger.mark_sent(first.client_order_id)
    assert not ledger.release_unsent(second.client_order_id, "test")
    assert [i.client_order_id for i in ledger.unresolved_intents("a1")] == [second.client_order_id]


def test_margin_type_is_remembered_per_account_and_symbol(ledger: Ledger) -> None:
    """facts.margin_type: the last value noted for exactly this account and symbol."""
    assert facts.margin_type(ledger, "0xAb", "BTCUSDT") is None
    facts.note_margin_type(ledger, "0xAb", "BTCUSDT", "ISOLATED")
    facts.note_margin_type(ledger, "0xAb", "BTCUSDT", "CROSSED")
    facts.note_margin_type(ledger, "0x_b", "BTCUSDT", "ISOLATED")  # LIKE's wildcard in a user
    facts.note_margin_type(ledger, "0xAb", "ETH%", "ISOLATED")
    assert facts.margin_type(ledger, "0xAb", "BTCUSDT") == "CROSSED"
    assert facts.margin_type(ledger, "0x_b", "BTCUSDT") == "ISOLATED"
    assert facts.margin_type(ledger, "0xab", "BTCUSDT") is None  # case counts, as on the exchange
    assert facts.margin_type(ledger, "0xAb", "ETHUSDT") is None
