"""Ledger durability: SIGKILL during a migration and during heavy writes, then reopen and check.

The migration kill is exact: the child attaches a SQLite trace callback to the ledger's
connection at its first call (public ``sys.setprofile`` and ``Connection.set_trace_callback``;
no project function is replaced) and stops inside the migration transaction at a chosen
statement until this process SIGKILLs it. The other tests
kill at random moments of real initialisation and of reserve/confirm/book_fill loops.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.ledger import Ledger
from aster_agents.ledger.sqlite import MIGRATIONS
from tests.plugins.ledger import kill_child, spawn_python

TABLES = {
    "accounts",
    "agents",
    "intents",
    "positions",
    "fills",
    "funding",
    "equity",
    "audit",
    "budgets",
    "host_pause",
    "schema_migrations",
}

STOP_IN_MIGRATION = """
import sqlite3, sys, time
from pathlib import Path
STOP_AT = sys.argv[2]

def trace(sql):
    if sql.strip().upper().startswith(STOP_AT):
        print("stopped", sql.split("(")[0].strip(), flush=True)
        time.sleep(120)

def attach(frame, event, arg):
    owner = getattr(arg, "__self__", None)
    if event == "c_call" and isinstance(owner, sqlite3.Connection):
        owner.set_trace_callback(trace)
        sys.setprofile(None)

sys.setprofile(attach)
from aster_agents.ledger import Ledger
Ledger(Path(sys.argv[1]))
print("finished", flush=True)
"""

CREATE_IN_A_LOOP = """
import sys
from pathlib import Path
from aster_agents.ledger import Ledger
print("ready", flush=True)
base = Path(sys.argv[1])
for i in range(100_000):
    print(i, flush=True)
    Ledger(base / str(i)).close()
"""

HEAVY_WRITER = """
import os, sys
from decimal import Decimal as D
from pathlib import Path
from aster_agents.errors import ReservationDenied
from aster_agents.ledger import Ledger
from aster_agents.models import Side
ledger = Ledger(Path(sys.argv[1]))
agent, seed = sys.argv[2], int(sys.argv[3])
symbols = ["S0", "S1", "S2"]
for intent in ledger.unresolved_intents(agent):
    ledger.release(intent.client_order_id, "recovered at start")
print("ready", flush=True)
n = 0
def fill(coid, symbol, side):
    global n
    n += 1
    ledger.book_fill(coid, trade_id=os.getpid() * 1_000_000 + n, symbol=symbol, side=side,
                     qty=D(1), price=D(50), realized_pnl=D("0.25"), commission=D("0.01"),
                     time_ms=n)
while True:
    held = {p.symbol: p.qty for p in ledger.positions(agent_id=agent)}
    n += 1
    if held and n % 2:
        symbol, qty = sorted(held.items())[n % len(held)]
        side = Side.SELL if qty > 0 else Side.BUY
        intent = ledger.reserve(agent, symbol, side, margin=D(0), notional=D(50), kind="close")
        ledger.confirm(intent.client_order_id)
        for _ in range(int(abs(qty))):
            fill(intent.client_order_id, symbol, side)
        ledger.finish_intent(intent.client_order_id, "filled")
        continue
    symbol = symbols[(n + seed) % len(symbols)]
    try:
        intent = ledger.reserve(agent, symbol, Side.BUY, margin=D(5), notional=D(50))
    except ReservationDenied:
        continue
    if n % 5 == 0:
        ledger.release(intent.client_order_id, "not sent")
    elif ledger.confirm(intent.client_order_id):
        fill(intent.client_order_id, symbol, Side.BUY)
        ledger.heartbeat(agent, pid=os.getpid(), error=None)
        ledger.finish_intent(intent.client_order_id, "filled")
"""


def _tables(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def _assert_opens_cleanly(state: Path) -> None:
    with Ledger(state) as ledger:
        assert ledger.integrity_check() == "ok"
        assert ledger.schema_version() == len(MIGRATIONS)
        rows = ledger.store.conn.execute("SELECT version FROM schema_migrations").fetchall()
        assert sorted(r[0] for r in rows) == list(range(1, len(MIGRATIONS) + 1))
    assert _tables(state / "ledger.sqlite3") >= TABLES


@pytest.mark.parametrize(
    "stop_at", ["CREATE TABLE ACCOUNTS", "CREATE TABLE POSITIONS", "INSERT INTO SCHEMA", "COMMIT"]
)
def test_kill_inside_the_migration_transaction_rolls_it_back(stop_at: str, tmp_path: Path) -> None:
    """SIGKILL at a statement inside the first migration: none of it persists, reopen is clean."""
    state = tmp_path / "state"
    child = spawn_python(STOP_IN_MIGRATION, str(state), stop_at)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line.upper().startswith("STOPPED " + stop_at.split(" ")[0]), line
    kill_child(child)
    db = state / "ledger.sqlite3"
    assert db.exists()
    assert _tables(db) == set(), "a half-applied migration survived the kill"
    _assert_opens_cleanly(state)
    _assert_opens_cleanly(state)  # and opening again applies nothing twice


def test_kill_at_random_moments_of_first_creation(tmp_path: Path) -> None:
    """Ledgers created in a loop and SIGKILLed at random: every one of them reopens cleanly."""
    rng = random.Random(7)
    victims = 0
    for round_ in range(8):
        base = tmp_path / f"r{round_}"
        child = spawn_python(CREATE_IN_A_LOOP, str(base))
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))  # the kill's random moment, not a wait
        kill_child(child)
        dirs = sorted(base.iterdir()) if base.exists() else []
        victims += bool(dirs)
        for state in dirs:
            _assert_opens_cleanly(state)
    assert victims >= 6, "the kills did not land while ledgers were being created"


def _spawn_writer(state: Path, agent: str, seed: int) -> subprocess.Popen[str]:
    child = spawn_python(HEAVY_WRITER, str(state), agent, str(seed))
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def _fills(conn: sqlite3.Connection) -> tuple[dict[tuple[str, str], Decimal], dict[str, Decimal]]:
    positions: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    pnl: dict[str, Decimal] = defaultdict(Decimal)
    rows = conn.execute("SELECT agent_id, symbol, side, qty, realized_pnl, commission FROM fills")
    for agent, symbol, side, qty, realized, commission in rows:
        positions[(agent, symbol)] += Decimal(qty) if side == "BUY" else -Decimal(qty)
        pnl[agent] += Decimal(realized) - Decimal(commission)
    return {k: v for k, v in positions.items() if v}, dict(pnl)


def _assert_books_agree(state: Path) -> int:
    """Integrity ok; positions, P&L, fees and audit rows all agree with the booked fills."""
    with Ledger(state) as ledger:
        assert ledger.integrity_check() == "ok"
        conn = ledger.store.conn
        positions, pnl = _fills(conn)
        assert {(p.agent_id, p.symbol): p.qty for p in ledger.positions()} == positions
        for row in ledger.agent_rows():
            assert row.realized_pnl - row.fees == pnl.get(row.agent_id, Decimal(0))
        n_fills = int(conn.execute("SELECT COUNT(*) FROM fills").fetchone()[0])
        audited = conn.execute("SELECT COUNT(*) FROM audit WHERE event = 'fill'").fetchone()[0]
        assert audited == n_fills
        return n_fills


@pytest.mark.slow
def test_writers_killed_during_heavy_writes_leave_a_consistent_ledger(tmp_path: Path) -> None:
    """Two writers SIGKILLed at random 24 times: the file is intact and the books agree."""
    state = tmp_path / "state"
    with Ledger(state) as ledger:
        ledger.set_account_limits("u1", max_total_positions=4, max_gross_leverage=Decimal(100))
        for agent in ("w1", "w2"):
            ledger.register_agent(agent, "u1", max_positions=2, capital=Decimal(10_000))
    rng = random.Random(11)
    fills_seen = []
    for i in range(12):
        writers = [_spawn_writer(state, a, i) for a in ("w1", "w2")]
        for child in writers:
            time.sleep(rng.uniform(0.0, 0.25))  # the kill's random moment, not a wait
            assert child.poll() is None, child.communicate()[1]
            kill_child(child)
        fills_seen.append(_assert_books_agree(state))
    assert fills_seen[-1] > fills_seen[0] > 0, "the writers booked nothing between kills"
