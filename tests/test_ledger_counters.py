"""The exporter's ledger counters on SQLite: audit rows counted in batches yet exact at any
moment (across folds, a SIGKILLed writer and the migration from the trigger), lock waits
kept in the writing process until one of its writes, or its close, adds them, and the
audit index by event that leaves the order path out."""

from __future__ import annotations

import sqlite3
from collections import Counter as Tally
from contextlib import closing
from decimal import Decimal
from pathlib import Path

from aster_agents.ledger import Ledger, facts
from aster_agents.ledger.counters import AUDIT_MARK, Counter
from aster_agents.ledger.migrations import MIGRATIONS
from aster_agents.ledger.notify import NotifyStore
from aster_agents.ledger.readonly import open_readonly
from aster_agents.ledger.rows import DB_NAME, INDEXED_EVENTS
from aster_agents.ledger.sqlite import SqliteStore
from aster_agents.ledger.transfer import copy_to_postgres
from aster_agents.models import Side
from tests.kit.wait import wait_for
from tests.plugins.ledger import kill_child, spawn_python

WRITER = """
import sys
from decimal import Decimal
from pathlib import Path
from aster_agents.ledger import Ledger
from aster_agents.models import Side
ledger = Ledger(Path(sys.argv[1]))
print("ready", flush=True)
k = 0
while True:
    k += 1
    intent = ledger.reserve(sys.argv[2], f"S{k % 3}USDT", Side.BUY, margin=Decimal(1),
                            notional=Decimal(5))
    ledger.release(intent.client_order_id, "test")
"""


def _setup(state_dir: Path) -> None:
    with Ledger(state_dir) as ledger:
        ledger.set_account_limits(
            "u1", max_total_positions=6, max_gross_leverage=Decimal(5), equity=Decimal(1000)
        )
        for agent in ("a1", "a2"):
            ledger.register_agent(agent, "u1", max_positions=3, capital=Decimal(100))


def _counters(state_dir: Path) -> list[Counter]:
    ro = open_readonly(state_dir)
    assert ro is not None
    with ro:
        return ro.counters()


def _audit_counts(state_dir: Path) -> dict[tuple[str, str], float]:
    got: dict[tuple[str, str], float] = {}
    for c in _counters(state_dir):
        if c.name == "audit":
            key = (c.agent_id, c.labels["event"])
            assert key not in got, f"{key} published twice"
            got[key] = c.value
    return got


def _audit_rows(state_dir: Path) -> dict[tuple[str, str], float]:
    with Ledger(state_dir) as ledger:
        rows = ledger.audit(limit=10**7)
    return {k: float(v) for k, v in Tally((e.agent_id or "", e.event) for e in rows).items()}


D1 = Decimal(1)


def _newest_audit_id(state_dir: Path) -> int:
    with closing(sqlite3.connect(state_dir / DB_NAME)) as conn:
        return int(conn.execute("SELECT MAX(id) FROM audit").fetchone()[0])


def _mark(state_dir: Path) -> float:
    with closing(sqlite3.connect(state_dir / DB_NAME)) as conn:
        row = conn.execute("SELECT value FROM counters WHERE name = ?", (AUDIT_MARK,)).fetchone()
    return float(row[0])


def _lock_waits(state_dir: Path) -> tuple[float, float]:
    """(count, sum of the bucket counts) of the lock-wait histogram."""
    found: dict[str, float] = {}
    for c in _counters(state_dir):
        found[c.name] = found.get(c.name, 0.0) + c.value
    count = found.get("ledger_lock_wait_seconds_count", 0.0)
    return count, found.get("ledger_lock_wait_seconds_bucket", 0.0)


def test_audit_counts_are_exact_across_folds_and_a_sigkilled_writer(tmp_path: Path) -> None:
    """One writer of the host folds audit rows into counters about once a second; what a
    reader sees equals the audit rows by agent and event, after folds, after a SIGKILL and
    after the next writer's fold."""
    state_dir = tmp_path / "state"
    _setup(state_dir)
    setup = _mark(state_dir)
    child = spawn_python(WRITER, str(state_dir), "a1")
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        first = wait_for(lambda: _mark(state_dir) > setup and _mark(state_dir), what="a fold")
        wait_for(lambda: _mark(state_dir) > first, what="a second fold")
    finally:
        kill_child(child)
    rows = _audit_rows(state_dir)
    assert rows[("a1", "reserve")] > 0 and rows[("a1", "released")] > 0
    with Ledger(state_dir) as ledger:
        assert _mark(state_dir) < ledger.audit(1)[0].id  # rows written since the last fold
    assert _audit_counts(state_dir) == rows
    with Ledger(state_dir) as ledger:  # another writer folds the tail at the host's next turn

        def folded() -> bool:
            intent = ledger.reserve(
                "a2", "S9USDT", Side.BUY, margin=Decimal(1), notional=Decimal(5)
            )
            ledger.release(intent.client_order_id, "test")
            return _mark(state_dir) >= ledger.audit(1)[0].id - 1

        wait_for(folded, what="a fold by the next writer")
        assert _audit_counts(state_dir) == _audit_rows(state_dir)
    assert _audit_counts(state_dir) == _audit_rows(state_dir)


def test_a_ledger_counted_by_the_trigger_keeps_its_counts_after_the_migration(
    tmp_path: Path,
) -> None:
    """A file from before the batch counting (counted by the audit trigger) migrates to the
    mark at its newest row: no audit row counted twice or lost."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    version = next(i for i, (name, _) in enumerate(MIGRATIONS) if name == "audit-counts-folded")
    with closing(sqlite3.connect(state_dir / DB_NAME, isolation_level=None)) as conn:
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "applied_ms INTEGER NOT NULL)"
        )
        for number, (name, sql) in enumerate(MIGRATIONS[:version], start=1):
            SqliteStore._apply(conn, number, name, sql)
        for event in ("reserve", "released", "reserve", "fill"):
            conn.execute(
                "INSERT INTO audit (time_ms, agent_id, event, detail) VALUES (0, 'a1', ?, '{}')",
                (event,),
            )
        counted = conn.execute("SELECT COUNT(*) FROM counters WHERE name = 'audit'").fetchone()
        assert counted[0] == 3  # the trigger counted them
    _setup(state_dir)
    assert _mark(state_dir) >= 4
    counts = _audit_counts(state_dir)
    assert counts[("a1", "reserve")] == 2 and counts[("a1", "fill")] == 1
    assert counts == _audit_rows(state_dir)


def test_lock_waits_are_kept_in_the_process_and_added_by_close(tmp_path: Path) -> None:
    """Every write's lock wait reaches the histogram by the time its ledger is closed (the
    close adds what is still in memory, in a write of its own that counts too)."""
    state_dir = tmp_path / "state"
    _setup(state_dir)
    before, _ = _lock_waits(state_dir)
    writes = 30
    with Ledger(state_dir) as ledger:
        for _ in range(writes):
            ledger.check_writable()
    count, buckets = _lock_waits(state_dir)
    assert writes <= count - before <= writes + 1
    assert buckets == count


def test_queries_by_event_use_the_index_that_leaves_the_order_path_out(tmp_path: Path) -> None:
    """The event index holds no row of an order's path, and every query the ledger makes by
    another event (reconcile, state changes, facts, the notifier, the exporter) uses it."""
    state_dir = tmp_path / "state"
    _setup(state_dir)
    with closing(sqlite3.connect(state_dir / DB_NAME)) as conn:
        (sql,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'audit_by_event'"
        ).fetchone()
    assert " ".join(sql.split()).endswith(f"WHERE {INDEXED_EVENTS}")
    seen: list[str] = []
    with Ledger(state_dir) as ledger, NotifyStore(state_dir) as notes:
        ledger.store.conn.set_trace_callback(seen.append)  # type: ignore[attr-defined]
        notes.store.conn.set_trace_callback(seen.append)  # type: ignore[attr-defined]
        ledger.last_reconcile_ms("u1")
        ledger.operator_enables(["a1", "a2"])
        ledger.state_changes()
        ledger.forced_closes()
        facts.margin_type(ledger, "u1", "BTCUSDT")
        facts.distrusted_count(ledger, "a1")
        notes.last_event("process_state")
        ro = open_readonly(state_dir)
        assert ro is not None
        with ro:
            ro.conn.set_trace_callback(seen.append)
            ro.last_reconciles()
            ro.operator_enables(["a1"])
            ro.state_changes()
            plans = {
                q: " ".join(str(r[-1]) for r in ro.conn.execute(f"EXPLAIN QUERY PLAN {q}"))
                for q in seen
                if q.startswith("SELECT") and "FROM audit WHERE event" in q
            }
    assert len(plans) >= 9
    assert all("INDEX audit_by_event" in plan for plan in plans.values()), plans


def test_a_migrated_file_keeps_exact_counts_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    """``ledger migrate`` carries the counts as a reader sees them (rows not folded yet
    included, no fold mark), and PostgreSQL's trigger counts on from there: no row twice."""
    state_dir = tmp_path / "state"
    _setup(state_dir)
    with Ledger(state_dir, url=None) as ledger:
        intent = ledger.reserve("a1", "S1USDT", Side.BUY, margin=D1, notional=D1)
        ledger.release(intent.client_order_id, "test")
    with closing(sqlite3.connect(state_dir / DB_NAME)) as conn:  # rows no writer folded yet
        for event in ("reserve", "released", "note"):
            conn.execute(
                "INSERT INTO audit (time_ms, agent_id, event, detail) VALUES (0, 'a1', ?, '{}')",
                (event,),
            )
        conn.commit()
    assert _mark(state_dir) < _newest_audit_id(state_dir)
    copy_to_postgres(state_dir, pg_url)
    with Ledger(state_dir, url=pg_url) as shared:
        intent = shared.reserve("a2", "S9USDT", Side.BUY, margin=D1, notional=D1)
        shared.release(intent.client_order_id, "test")
        rows = Tally((e.agent_id or "", e.event) for e in shared.audit(limit=10**6))
    ro = open_readonly(state_dir, pg_url)
    assert ro is not None
    with ro:
        counts = {
            (c.agent_id, c.labels["event"]): c.value for c in ro.counters() if c.name == "audit"
        }
        assert AUDIT_MARK not in {c.name for c in ro.counters()}
    assert counts == {k: float(v) for k, v in rows.items()}
