"""The ledger's seams: no SQL outside ``aster_agents/ledger``, and the use cases see only a
``backend.Conn`` (the SQLite store is the one module of the package that knows SQLite)."""

from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aster_agents.errors import LedgerError, ReservationDenied
from aster_agents.ledger import Ledger, agents, history
from aster_agents.ledger.core import KeptKey
from aster_agents.ledger.rows import AGENT_COLS
from aster_agents.models import Side

D0, D1, D900 = Decimal(0), Decimal(1), Decimal(900)

PACKAGE = Path(__file__).resolve().parent.parent / "aster_agents"
LEDGER = PACKAGE / "ledger"
# The use-case modules and the face: functions over ``backend.Conn``, never sqlite3 itself.
USE_CASES = ("core", "agents", "intents", "limits", "fills", "books", "income", "audit", "history")
SQL_WORDS = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "PRAGMA ", "BEGIN")


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _sql_smells(tree: ast.AST) -> list[str]:
    """``.conn`` / ``.execute`` / ``.store`` attributes and SQL-looking string constants."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in {"conn", "execute", "store"}:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.lstrip().startswith(SQL_WORDS)  # upper case, as the ledger writes SQL
        ):
            found.append(f"line {node.lineno}: {node.value[:40]!r}")
    return found


def _outside_ledger() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if LEDGER not in p.parents]


def test_no_sql_or_connection_outside_the_ledger_package() -> None:
    """No module outside aster_agents/ledger imports sqlite3, touches a connection or store,
    or holds SQL text."""
    problems = []
    for path in _outside_ledger():
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(PACKAGE.parent)
        problems += [f"{rel}: imports {m}" for m in _imports(tree) if m.split(".")[0] == "sqlite3"]
        problems += [f"{rel}: imports {m}" for m in _imports(tree) if m.endswith(".sqlite")]
        problems += [f"{rel}: {s}" for s in _sql_smells(tree)]
    assert problems == []


@pytest.mark.parametrize("module", USE_CASES)
def test_use_case_modules_see_only_the_store_seam(module: str) -> None:
    """The face and the use-case modules import neither sqlite3 nor the SQLite store."""
    tree = ast.parse((LEDGER / f"{module}.py").read_text())
    assert not {m for m in _imports(tree) if m == "sqlite3" or m.endswith(".sqlite")}


def test_the_check_sees_sql_and_connections() -> None:
    """The scan above flags an import of sqlite3, ``.store``/``.conn``/``.execute`` and SQL text,
    but not prose that merely starts with an SQL word."""
    tree = ast.parse(
        "import sqlite3\nrows = ledger.store.conn.execute('SELECT 1')\n"
        "q = 'UPDATE agents SET x = 1'\nhelp = 'Update the books.'\n"
    )
    assert _imports(tree) == {"sqlite3"}
    assert sorted(_sql_smells(tree)) == [
        "line 2: 'SELECT 1'",
        "line 2: .conn",
        "line 2: .execute",
        "line 2: .store",
        "line 3: 'UPDATE agents SET x = 1'",
    ]


def test_rebalance_lock_is_exclusive_and_keeps_its_stamp(tmp_path: Path) -> None:
    """A second holder of the ledger's rebalance lock gets None without waiting; the stamp
    written under the lock is read back by the next holder."""
    with Ledger(tmp_path) as first, Ledger(tmp_path) as second:
        with first.rebalance_lock(wait=False) as held:
            assert held is not None and held.stamp() == 0
            held.set_stamp(1234)
            with second.rebalance_lock(wait=False) as busy:
                assert busy is None
        with second.rebalance_lock(wait=False) as again:
            assert again is not None and again.stamp() == 1234


def test_last_reconcile_is_per_account_and_newest_first(tmp_path: Path) -> None:
    """``last_reconcile_ms`` returns the newest note of that account only, None for others."""
    with Ledger(tmp_path) as ledger:
        ledger.note_reconcile("0xaa", 100, 0)
        ledger.note_reconcile("0xbb", 150, 1)
        ledger.note_reconcile("0xaa", 200, 2)
        ledger.note_reconcile("0xa_", 300, 0)  # a LIKE wildcard in a user matches nothing else
        assert ledger.last_reconcile_ms("0xaa") == 200
        assert ledger.last_reconcile_ms("0xbb") == 150
        assert ledger.last_reconcile_ms("0xa_") == 300
        assert ledger.last_reconcile_ms("0xcc") is None


def test_check_writable_commits_a_no_op_write(tmp_path: Path) -> None:
    """``check_writable`` commits (the audit and books are unchanged) and reports a lock wait."""
    with Ledger(tmp_path) as ledger:
        ledger.set_account_limits("0xaa", max_total_positions=1, max_gross_leverage=Decimal(1))
        before = ledger.audit(100)
        assert ledger.check_writable() >= 0.0
        assert ledger.audit(100) == before


def test_a_throwaway_ledger_lives_in_memory_and_never_uses_the_configured_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """throwaway=True: the same ledger (limits, reservations, fills, audit) with no file in the
    state dir (no database, flock or sync file), $ASTER_AGENTS_LEDGER_URL ignored, and the
    per-tick reads kept only until the next write."""
    monkeypatch.setenv("ASTER_AGENTS_LEDGER_URL", "postgresql://nobody@127.0.0.1:1/none")
    state = tmp_path / "state"
    with Ledger(state, throwaway=True) as ledger:
        ledger.set_account_limits("0xaa", max_total_positions=1, max_gross_leverage=Decimal(3))
        ledger.register_agent("a-1", "0xaa", max_positions=1, capital=Decimal(100))
        ledger.register_agent("a-2", "0xaa", max_positions=1, capital=Decimal(100))
        before = ledger.agent("a-1")
        assert before is not None and ledger.agent("a-1") is before  # kept while nothing moves
        ledger.heartbeat("a-1", 1, tick=True)
        assert (ledger.agent("a-1") or before).ticks == before.ticks + 1  # a write: read again
        assert ledger.unresolved_intents("a-1") == []
        intent = ledger.reserve("a-1", "BTCUSDT", Side.BUY, margin=Decimal(1), notional=Decimal(3))
        assert [i.client_order_id for i in ledger.unresolved_intents("a-1")] == [
            intent.client_order_id
        ]
        with pytest.raises(ReservationDenied, match="max_total_positions"):
            ledger.reserve("a-2", "ETHUSDT", Side.BUY, margin=Decimal(1), notional=Decimal(3))
        assert ledger.mark_sent(intent.client_order_id) and ledger.confirm(intent.client_order_id)
        assert [e.event for e in ledger.audit(10, "a-1")][:2] == ["confirmed", "sent"]
        assert ledger.positions(agent_id="a-1") == []
        ledger.book_fill(
            intent.client_order_id,
            trade_id=1,
            symbol="BTCUSDT",
            side=Side.BUY,
            qty=Decimal("0.001"),
            price=Decimal(3000),
            realized_pnl=Decimal(0),
            commission=Decimal(0),
            time_ms=1,
        )
        assert [p.qty for p in ledger.positions(agent_id="a-1")] == [Decimal("0.001")]
    assert not state.exists()


def test_a_throwaway_ledger_keeps_a_read_across_writes_to_other_tables_only(
    tmp_path: Path,
) -> None:
    """A heartbeat, an equity snapshot or marks leave the kept positions, intents and sleeve
    states (their tables or columns unchanged), a heartbeat re-reads the agent's row; any
    other write re-reads all, and every answer equals a file ledger's given the same writes."""
    with Ledger(tmp_path / "mem", throwaway=True) as mem, Ledger(tmp_path / "file") as disk:
        both = (mem, disk)
        for ledger in both:
            ledger.set_account_limits(
                "0xaa", max_total_positions=2, max_gross_leverage=Decimal(3), equity=Decimal(900)
            )
            ledger.register_agent("a-1", "0xaa", max_positions=1, capital=Decimal(100))

        def timeless(row: Any) -> Any:  # the two ledgers write at different wall times
            return row._replace(**{f: 0 for f in row._fields if f.endswith("_ms")})

        def same() -> None:
            row = mem.agent("a-1")
            mem._kept.clear()  # type: ignore[attr-defined]  # read again: kept = stored
            assert mem.agent("a-1") == row
            for read in (
                lambda ledger: [ledger.agent("a-1")],
                lambda ledger: ledger.positions(agent_id="a-1"),
                lambda ledger: ledger.unresolved_intents("a-1"),
                lambda ledger: ledger.equity_history("a-1"),  # its units from the kept row
                lambda ledger: ledger.sleeve_states("0xaa"),
            ):
                assert [timeless(r) for r in read(mem)] == [timeless(r) for r in read(disk)]

        positions, intents = mem.positions(agent_id="a-1"), mem.unresolved_intents("a-1")
        sleeves = mem.sleeve_states("0xaa")
        row = mem.agent("a-1")
        kept = mem._kept  # type: ignore[attr-defined]
        first = dict(kept)
        for ledger in both:
            ledger.heartbeat("a-1", 7, tick=True)
            ledger.snapshot_equity("a-1", Decimal(101))
            ledger.record_marks("0xaa", {"BTCUSDT": Decimal(3000)})
        assert mem.positions(agent_id="a-1") == positions == []
        assert mem.unresolved_intents("a-1") == intents == []
        assert mem.sleeve_states("0xaa") == sleeves
        for key in (
            ("positions", "a-1", None),
            ("unresolved", "a-1", None),
            ("sleeves", "0xaa", None),
        ):
            assert kept[key] is first[key]  # not read again
        again = mem.agent("a-1")
        assert row is not None and again is not None and again.ticks == row.ticks + 1
        same()
        for ledger in both:
            ledger.heartbeat("a-1", 7, error="boom")
        assert (mem.agent("a-1") or row).heartbeat_error == "boom"
        same()
        reserved = [
            ledger.reserve("a-1", "BTCUSDT", Side.BUY, margin=Decimal(1), notional=Decimal(3))
            for ledger in both
        ]
        assert [i.client_order_id for i in mem.unresolved_intents("a-1")] == [
            reserved[0].client_order_id
        ]
        for ledger, intent in zip(both, reserved, strict=True):
            assert ledger.mark_sent(intent.client_order_id) and ledger.confirm(
                intent.client_order_id
            )
            ledger.heartbeat("a-1", 7, tick=True)
            ledger.book_fill(
                intent.client_order_id,
                trade_id=1,
                symbol="BTCUSDT",
                side=Side.BUY,
                qty=Decimal("0.001"),
                price=Decimal(3000),
                realized_pnl=Decimal(0),
                commission=Decimal(0),
                time_ms=1,
            )
            ledger.snapshot_equity("a-1", Decimal(100))
        assert [p.qty for p in mem.positions(agent_id="a-1")] == [Decimal("0.001")]
        assert (mem.agent("a-1") or row).positions == 1
        same()
        for ledger in both:
            ledger.set_state("a-1", "probation", "drawdown")
        assert [s.state for s in mem.sleeve_states("0xaa")] == ["probation"]
        same()


def test_a_throwaway_ledger_writes_a_heartbeat_with_the_next_write_that_may_read_it(
    tmp_path: Path,
) -> None:
    """A heartbeat without an error of a known agent writes nothing on a throwaway ledger;
    every read of agent rows shows it (kept or read again) and the next write that may read
    or change an agent row (the reaper reads heartbeats) writes it first, in its own
    transaction, ticks summed: the answers, and the rows then stored, are a file ledger's
    given the same calls. A write that fails gives the heartbeats back."""
    ids = ("a-1", "a-2")
    with Ledger(tmp_path / "mem", throwaway=True) as mem, Ledger(tmp_path / "file") as disk:
        both = (mem, disk)
        for ledger in both:
            ledger.set_account_limits("0xaa", max_total_positions=2, max_gross_leverage=Decimal(3))
            for agent_id in ids:
                ledger.register_agent(agent_id, "0xaa", max_positions=1, capital=Decimal(100))
        mem.agent("a-1")  # kept: a-1's beats change the kept row, a-2's are read with its row

        def timeless(row: Any) -> Any:  # the two ledgers beat at different wall times
            return row._replace(heartbeat_ms=0)

        def answers(ledger: Ledger) -> list[Any]:
            return [timeless(ledger.agent(a)) for a in ids] + [
                timeless(r) for r in ledger.agent_rows()
            ]

        def stored(ledger: Ledger) -> list[tuple[Any, ...]]:
            return ledger.store.conn.execute(  # type: ignore[no-any-return]
                "SELECT agent_id, hb_pid, hb_error, ticks, hb_host, hb_stopped FROM agents "
                "ORDER BY agent_id"
            ).fetchall()

        writes = mem.store.writes  # type: ignore[attr-defined]
        for ledger in both:
            ledger.heartbeat("a-1", 7, tick=True)
            ledger.heartbeat("a-1", 8, tick=True)
            ledger.heartbeat("a-2", 9, tick=True)
            ledger.heartbeat("a-2", 9)
            ledger.snapshot_equity("a-1", Decimal(101))  # written with the next write too
            ledger.record_marks("0xaa", {"BTCUSDT": D1})  # marks only: carries no heartbeat
        assert mem.store.writes == writes + 1  # type: ignore[attr-defined]  # the marks
        assert stored(mem) != stored(disk)
        assert answers(mem) == answers(disk)
        assert [(r.heartbeat_pid, r.ticks) for r in mem.agent_rows()] == [(8, 2), (9, 1)]
        mem._kept.clear()  # type: ignore[attr-defined]  # read again: stored + not written
        assert answers(mem) == answers(disk)
        with pytest.raises(ZeroDivisionError), mem._write() as conn:  # type: ignore[attr-defined]
            seen = conn.execute("SELECT ticks FROM agents ORDER BY agent_id").fetchall()
            assert [r[0] for r in seen] == [2, 1]  # written before the write's own statements
            _ = 1 / 0
        assert stored(mem) != stored(disk)  # rolled back, and given back:
        assert answers(mem) == answers(disk)
        for ledger in both:
            ledger.reserve("a-1", "BTCUSDT", Side.BUY, margin=Decimal(1), notional=Decimal(3))
        assert stored(mem) == stored(disk)
        beaten = mem.agent("a-1")
        assert beaten is not None
        assert (
            mem.store.conn.execute(  # type: ignore[attr-defined]
                "SELECT hb_ms FROM agents WHERE agent_id = 'a-1'"
            ).fetchone()[0]
            == beaten.heartbeat_ms
        )
        for ledger in both:
            ledger.heartbeat("a-2", 9, tick=True)
            ledger.heartbeat("a-2", 9, error="boom")  # written now, with the one before
            ledger.heartbeat("a-1", 7, tick=True)
        assert answers(mem) == answers(disk)
        assert [r[1:4] for r in stored(mem)] == [(8, None, 2), (9, "boom", 2)]
        assert mem.heartbeat_stopped("a-1", 7) and disk.heartbeat_stopped("a-1", 7)
        assert stored(mem) == stored(disk) and answers(mem) == answers(disk)
        with pytest.raises(LedgerError, match="ghost is not registered"):
            mem.heartbeat("ghost", 1)  # an agent it does not know: written (and refused) now


def test_a_throwaway_ledger_keeps_the_reads_of_other_agents_across_an_orders_writes(
    tmp_path: Path,
) -> None:
    """An order's writes (reserve, mark_sent, confirm, fills, finish, release) drop the kept
    reads of its agent and account only: another account's stay (not read again), and every
    answer equals a file ledger's given the same calls. A reservation whose sweep expired
    someone's intent drops all, and so does everything once an agent moved to another
    account."""
    users = {"a-1": "0xaa", "a-2": "0xaa", "b-1": "0xbb"}
    with Ledger(tmp_path / "mem", throwaway=True) as mem, Ledger(tmp_path / "file") as disk:
        both = (mem, disk)
        for ledger in both:
            for user in ("0xaa", "0xbb"):
                ledger.set_account_limits(
                    user, max_total_positions=3, max_gross_leverage=Decimal(3), equity=D900
                )
            for agent_id, user in users.items():
                ledger.register_agent(agent_id, user, max_positions=2, capital=Decimal(100))

        def timeless(row: Any) -> Any:  # the two ledgers write at different wall times
            return row._replace(**{f: 0 for f in row._fields if f.endswith("_ms")})

        reads: dict[str, Any] = {
            "agent": lambda ledger, a, u: [ledger.agent(a)],
            "positions": lambda ledger, a, u: ledger.positions(agent_id=a),
            "account positions": lambda ledger, a, u: ledger.positions(user=u),
            "unresolved": lambda ledger, a, u: ledger.unresolved_intents(a),
            "sleeves": lambda ledger, a, u: ledger.sleeve_states(u),
        }

        def same() -> dict[KeptKey, object]:
            for agent_id, user in users.items():
                for read in reads.values():
                    got = [timeless(r) for r in read(mem, agent_id, user)]
                    assert got == [timeless(r) for r in read(disk, agent_id, user)]
            return dict(mem._kept)  # type: ignore[attr-defined]

        def fill(ledger: Ledger, coid: str, trade_id: int, side: Side) -> None:
            ledger.book_fill(
                coid,
                trade_id=trade_id,
                symbol="BTCUSDT",
                side=side,
                qty=Decimal("0.001"),
                price=Decimal(3000),
                realized_pnl=Decimal(0),
                commission=Decimal("0.01"),
                time_ms=trade_id,
            )

        def kept_of_b(before: dict[KeptKey, object]) -> None:  # 0xbb's reads, not read again
            kept = mem._kept  # type: ignore[attr-defined]
            for key in [k for k in before if "b-1" in k or "0xbb" in k]:
                assert kept[key] is before[key], key

        steps: list[Any] = [
            lambda ledger: (
                ledger.reserve(
                    "a-1", "BTCUSDT", Side.BUY, margin=Decimal(1), notional=Decimal(3)
                ).client_order_id
            ),
            lambda ledger, coid: ledger.mark_sent(coid),
            lambda ledger, coid: ledger.confirm(coid),
            lambda ledger, coid: fill(ledger, coid, 1, Side.BUY),
            lambda ledger, coid: ledger.finish_intent(coid, "filled"),
        ]
        coids = [steps[0](ledger) for ledger in both]
        kept_of_b(same())
        for step in steps[1:]:
            before = same()
            for ledger, coid in zip(both, coids, strict=True):
                step(ledger, coid)
            kept_of_b(before)
            assert mem._kept != before  # type: ignore[attr-defined]  # a-1's: dropped
        closing = [
            ledger.reserve("a-1", "BTCUSDT", Side.SELL, kind="close", margin=D0, notional=D0)
            for ledger in both
        ]
        before = same()
        for ledger, intent in zip(both, closing, strict=True):
            fill(ledger, intent.client_order_id, 2, Side.SELL)
            ledger.release(intent.client_order_id, "done")
        kept_of_b(before)
        assert mem.positions(user="0xaa") == disk.positions(user="0xaa") == []
        same()
        # a sweep that expires an intent (here: b-1's, its TTL gone) drops every kept read
        stale = [
            ledger.reserve("b-1", "ETHUSDT", Side.BUY, margin=D1, notional=D1, ttl_seconds=0)
            for ledger in both
        ]
        before = same()
        for ledger in both:
            with pytest.raises(ReservationDenied):  # a close sweeps first, whatever its answer
                ledger.reserve("a-2", "BTCUSDT", Side.SELL, kind="close", margin=D0, notional=D0)
        assert [i.state for i in (mem.intent(x.client_order_id) for x in stale)] == ["expired"] * 2
        assert before and mem._kept_reads() == {}  # type: ignore[attr-defined]
        same()
        # an agent moved to another account: its older rows are that one's no more
        for ledger in both:
            ledger.register_agent("a-2", "0xbb", max_positions=2)
        again = [
            ledger.reserve("a-2", "BTCUSDT", Side.BUY, margin=D1, notional=D1) for ledger in both
        ]
        assert same()
        for ledger, intent in zip(both, again, strict=True):
            ledger.mark_sent(intent.client_order_id)
        assert mem._kept_reads() == {}  # type: ignore[attr-defined]
        same()


def test_a_throwaway_ledger_keeps_the_newest_snapshots_and_extends_them_as_it_writes(
    tmp_path: Path,
) -> None:
    """``nav_after`` on a throwaway ledger answers from the rows newer than its last ask,
    extended by each snapshot of the agent (as SQLite converts the stored text, ordered by
    time then insertion, also for a snapshot older than the last): every answer is the
    query's on the same database, another agent's snapshots leave it kept, and an ask
    further back than kept reads again."""
    with Ledger(tmp_path, throwaway=True) as ledger:
        ledger.set_account_limits("0xaa", max_total_positions=2, max_gross_leverage=D1)
        for agent_id in ("a-1", "a-2"):
            ledger.register_agent(agent_id, "0xaa", max_positions=1, capital=Decimal(300))
        ledger.agent("a-1")  # its units kept: a snapshot's NAV from them
        conn = ledger.store.conn
        trace: list[str] = []
        conn.set_trace_callback(trace.append)  # type: ignore[attr-defined]

        def asks(after: int | None) -> list[tuple[int, float, float | None]]:
            got = ledger.nav_after("a-1", after)
            ledger.marks("0xaa")  # a read of marks: the snapshots that wait are written
            assert got == history.nav_after(conn, "a-1", after)  # the plain query's rows
            return got

        assert asks(None) == []
        equities = ["300.1", "299.87654321", "301.33333333", "0.00000001", "298", "302.5"]
        for i, (t, equity) in enumerate(zip((10, 20, 20, 15, 30, 5), equities, strict=True)):
            ledger.snapshot_with_marks(
                "a-1", Decimal(equity), {"BTCUSDT": D1}, user="0xaa", time_ms=t
            )
            ledger.snapshot_equity("a-2", Decimal(equity), t)  # another agent's
            assert len(asks(i * 3)) > 0
        kept = [q for q in trace if "CAST(equity AS REAL)" in q and "a-1" in q]
        assert len(kept) == 7 + 1  # the plain query of each ask, and the first ask's read
        assert [r[0] for r in asks(5)] == [10, 15, 20, 20, 30]  # by time, then insertion
        trace.clear()
        assert asks(12) == ledger.nav_after("a-1", 12) and asks(3)  # further back: read again
        assert len([q for q in trace if "CAST(equity AS REAL)" in q]) == 3
        trace.clear()
        for t in (40, 50):  # a flat sleeve: the same equity again, converted once
            ledger.snapshot_with_marks("a-1", Decimal("303.25"), {}, user="0xaa", time_ms=t)
            assert [r[0] for r in asks(20)][-1] == t
        assert len([q for q in trace if q.startswith("SELECT CAST(")]) == 1
        conn.set_trace_callback(None)  # type: ignore[attr-defined]


def test_a_throwaway_ledger_writes_its_snapshots_with_the_next_write_or_read_of_them(
    tmp_path: Path,
) -> None:
    """The end of a tick (``snapshot_with_marks``) of an agent whose row a throwaway ledger
    keeps writes nothing; the next write (any) or read of equity or marks writes the
    snapshots and marks first, in order: every answer and the rows stored then are a file
    ledger's given the same calls. A write that fails gives them back."""
    with Ledger(tmp_path / "mem", throwaway=True) as mem, Ledger(tmp_path / "file") as disk:
        both = (mem, disk)
        for ledger in both:
            ledger.set_account_limits(
                "0xaa", max_total_positions=3, max_gross_leverage=D1, equity=D900
            )
            for agent_id in ("a-1", "a-2"):
                ledger.register_agent(agent_id, "0xaa", max_positions=1, capital=Decimal(300))
            ledger.agent("a-1"), ledger.agent("a-2")

        def stored(ledger: Ledger) -> list[Any]:
            conn = ledger.store.conn
            return [
                conn.execute("SELECT * FROM equity ORDER BY rowid").fetchall(),
                conn.execute("SELECT rowid, * FROM marks ORDER BY rowid").fetchall(),
            ]

        def ticks(t: int) -> None:
            for ledger in both:
                for agent_id, marks in (
                    ("a-1", {"BTCUSDT": Decimal(t), "ETHUSDT": Decimal("0.5") + t}),
                    ("a-2", {"SOLUSDT": Decimal(7) / 3, "BTCUSDT": Decimal(t + 1)}),
                    ("a-1", {}),
                ):
                    equity = Decimal(300) + Decimal(t) / 7
                    ledger.snapshot_with_marks(agent_id, equity, marks, user="0xaa", time_ms=t)

        reads: list[Any] = [
            lambda ledger: ledger.marks("0xaa"),
            lambda ledger: ledger.sleeve_equities("0xaa"),
            lambda ledger: ledger.books_equity("0xaa"),
            lambda ledger: ledger.equity_history("a-2"),
            lambda ledger: ledger.nav_after("a-1", 2),
            lambda ledger: (
                ledger.reserve("a-1", "BTCUSDT", Side.BUY, margin=D1, notional=D1).client_order_id
            ),
        ]
        writes = mem.store.writes  # type: ignore[attr-defined]
        for t, read in enumerate(reads, start=1):
            ticks(t)
            assert mem.store.writes == writes  # type: ignore[attr-defined]
            assert stored(mem) != stored(disk)
            assert read(mem) == read(disk)
            assert stored(mem) == stored(disk)
            writes = mem.store.writes  # type: ignore[attr-defined]
        ticks(10)
        with pytest.raises(ZeroDivisionError), mem._write() as conn:  # type: ignore[attr-defined]
            assert conn.execute("SELECT MAX(time_ms) FROM equity").fetchone()[0] == 10
            _ = 1 / 0
        ticks(11)
        assert mem.marks("0xaa") == disk.marks("0xaa")
        assert stored(mem) == stored(disk)


@pytest.mark.parametrize("throwaway", [False, True])
def test_a_failed_write_rolls_back_and_drops_the_kept_reads(
    tmp_path: Path, throwaway: bool
) -> None:
    """A write whose block raises leaves nothing (the in-memory store's plain-class write as
    the file store's generator), lets the next write in, and a throwaway ledger reads again
    what it kept rather than trusting it."""
    with Ledger(tmp_path, throwaway=throwaway) as ledger:
        ledger.set_account_limits(
            "0xaa", max_total_positions=2, max_gross_leverage=Decimal(3), equity=Decimal(900)
        )
        ledger.register_agent("a-1", "0xaa", max_positions=1, capital=Decimal(100))
        before = ledger.agent("a-1")
        with pytest.raises(ZeroDivisionError), ledger._write_to(("equity",)) as conn:  # type: ignore[attr-defined]
            conn.execute("UPDATE agents SET capital = '7' WHERE agent_id = 'a-1'")
            conn.execute("INSERT INTO equity (agent_id, time_ms, equity) VALUES ('a-1', 1, '7')")
            _ = 1 / 0
        assert ledger.equity_history("a-1") == []
        assert ledger.agent("a-1") == before == agents.get(ledger.store.conn, "a-1")
        with pytest.raises(LedgerError, match="ghost is not registered"):
            ledger.heartbeat("ghost", 1)  # raised inside the write: rolled back too
        ledger.snapshot_equity("a-1", Decimal(101), 5)
        assert [(p.time_ms, p.equity) for p in ledger.equity_history("a-1")] == [(5, Decimal(101))]
        assert not ledger.store.conn.in_transaction  # type: ignore[attr-defined]


@pytest.mark.parametrize("throwaway", [False, True])
def test_an_agents_open_intents_are_found_without_scanning_its_history(
    tmp_path: Path, throwaway: bool
) -> None:
    """The per-tick reads (an agent's row, its unresolved intents) and a reallocation's
    margin in use go through the partial index of unresolved intents (migration
    intents-unresolved-by-agent), so their cost does not grow with every intent the agent had."""
    with Ledger(tmp_path, throwaway=throwaway) as ledger:
        conn = ledger.store.conn
        row = conn.execute(
            f"EXPLAIN QUERY PLAN SELECT {AGENT_COLS} FROM agents a WHERE a.agent_id = ?", ("a",)
        )
        assert "intents_unresolved_by_agent" in str(row.fetchall())
        ledger.set_account_limits(
            "0xaa", max_total_positions=2, max_gross_leverage=Decimal(3), equity=Decimal(5000)
        )
        ledger.register_agent("a", "0xaa", max_positions=1, capital=Decimal(1000))
        trace: list[str] = []
        conn.set_trace_callback(trace.append)
        ledger.unresolved_intents("a")
        ledger.reallocate({"a": Decimal(900)}, reason="test", detail={})
        conn.set_trace_callback(None)
        plans = {
            q: str(conn.execute(f"EXPLAIN QUERY PLAN {q}").fetchall())
            for q in trace
            if q.startswith("SELECT") and "FROM intents WHERE agent_id" in q
        }
        assert len(plans) == 2, trace
        assert all("intents_unresolved_by_agent" in p for p in plans.values()), plans
