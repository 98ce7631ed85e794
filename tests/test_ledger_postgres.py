"""The PostgreSQL ledger's own edges: bad URLs and servers, hosts and leases, migrate and info.

The shared contract (limits, intents, fills, books, kill -9) runs on both backends through the
``backend`` fixture in ``test_ledger.py``, ``test_ledger_chaos.py`` and friends; this file
covers what only a server has: authentication, a schema that is not ours or is newer, the
server going away mid-transaction, agents on other hosts, and the SQLite -> PostgreSQL copy.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from threading import Thread
from typing import Any
from urllib.parse import quote, unquote

import pytest

from aster_agents.errors import LedgerError
from aster_agents.ledger import Ledger, intents, limits
from aster_agents.ledger.backend import Conn
from aster_agents.ledger.counters import denial_reason
from aster_agents.ledger.migrations import MIGRATIONS
from aster_agents.ledger.postgres import PostgresStore
from aster_agents.ledger.rows import Intent
from aster_agents.models import Side
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.sockproxy import SocketProxy
from tests.kit.wait import wait_for
from tests.plugins.ledger import ROOT, run_python
from tests.plugins.postgres import PgServer

D = Decimal


def _setup(ledger: Ledger) -> None:
    ledger.set_account_limits("u1", max_total_positions=3, max_gross_leverage=D(5), equity=D(1000))
    ledger.register_agent("a1", "u1", max_positions=2, capital=D(100))
    ledger.register_agent("a2", "u1", max_positions=2, capital=D(100))


AGENT_YAML = (
    Path(__file__).parent / "data" / "bad_configs" / "portfolio-unknown-key" / "agent-1.yaml"
)


def _config_env(tmp_path: Path, ledger_url: str | None = None) -> dict[str, str]:
    """An agents.d with one valid agent (and ``ledger.url`` if given); the env to use it."""
    config = tmp_path / "agents.d"
    config.mkdir(exist_ok=True)
    (config / "agent-1.yaml").write_text(AGENT_YAML.read_text())
    portfolio = "" if ledger_url is None else f"ledger:\n  url: '{ledger_url}'\n"
    (config / "_portfolio.yaml").write_text(portfolio or "{}\n")
    env = {k: v for k, v in os.environ.items() if k != "ASTER_AGENTS_LEDGER_URL"}
    env["ASTER_AGENTS_CONFIG"] = str(config)
    return env


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aster_agents", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


# ----------------------------------------------------------------- bad input


def test_url_of_another_kind_is_refused_in_one_line(state_dir: Path) -> None:
    """A non-PostgreSQL ledger URL raises LedgerError naming what is expected."""
    with pytest.raises(LedgerError, match=r"expected postgresql://") as info:
        Ledger(state_dir, url="mysql://root:s3cret@db/ledger")
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)


def test_unreachable_server_is_one_line_with_the_password_masked(state_dir: Path) -> None:
    """No server behind the socket: one line, 'unreachable', the password never shown."""
    url = f"postgresql://bob:t0psecret@/ledger?host={quote(str(state_dir))}"
    with pytest.raises(LedgerError, match=r"unreachable") as info:
        Ledger(state_dir, url=url)
    text = str(info.value)
    assert "t0psecret" not in text and "bob:***@" in text and "\n" not in text


def test_refused_password_is_one_line_with_the_password_masked(
    pg_server: PgServer, state_dir: Path
) -> None:
    """A wrong password: LedgerError naming the failed authentication, password masked."""
    hba = pg_server.data / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("local all alice scram-sha-256\n" + original)
    pg_server.execute("SELECT pg_reload_conf()")
    try:
        pg_server.execute("DROP ROLE IF EXISTS alice")
        pg_server.execute("CREATE ROLE alice LOGIN PASSWORD 'right-one'")
        base = pg_server.uri.replace("postgres:@", "alice:wrong-one@")
        with pytest.raises(LedgerError, match=r"password authentication failed") as info:
            Ledger(state_dir, url=base)
        assert "wrong-one" not in str(info.value) and "alice:***@" in str(info.value)
    finally:
        hba.write_text(original)
        pg_server.execute("SELECT pg_reload_conf()")


def test_database_with_foreign_tables_is_refused_and_left_alone(
    pg_url: str, pg_server: PgServer, state_dir: Path
) -> None:
    """A schema that has tables but not ours: refused, nothing created in it."""
    schema = pg_url.rsplit("%3D", 1)[1]
    pg_server.execute(f"CREATE TABLE {schema}.customers (id int)")
    with pytest.raises(LedgerError, match=r"tables but no aster-agents schema"):
        Ledger(state_dir, url=pg_url)
    tables = pg_server.execute(
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'"
    )
    assert tables == [("customers",)]


def test_newer_schema_is_refused_naming_both_versions(pg_url: str, state_dir: Path) -> None:
    """A ledger migrated by a newer aster-agents: refused with both versions, untouched."""
    with Ledger(state_dir, url=pg_url) as ledger:
        ledger.store.conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    with pytest.raises(LedgerError, match=rf"schema version 99, newer .*\({len(MIGRATIONS)}\)"):
        Ledger(state_dir, url=pg_url)


def test_server_gone_mid_transaction_writes_nothing_and_the_next_call_reconnects(
    pg_url: str, pg_server: PgServer, state_dir: Path
) -> None:
    """The backend killed inside a write: one-line LedgerError, rolled back; then it works."""
    ledger = Ledger(state_dir, url=pg_url)
    _setup(ledger)
    before = len(ledger.audit(1000))
    with pytest.raises(LedgerError, match=r"unreachable or gone"), ledger.store.write() as conn:
        conn.execute("UPDATE agents SET capital = '999' WHERE agent_id = 'a1'")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        pg_server.execute(f"SELECT pg_terminate_backend({pid})")
        conn.execute("INSERT INTO audit (time_ms, event, detail) VALUES (0, 'half', '')")
    row = ledger.agent("a1")  # a new connection
    assert row is not None and row.capital == D(100)
    assert len(ledger.audit(1000)) == before
    intent = ledger.reserve("a1", "BTCUSDT", Side.BUY, margin=D(1), notional=D(1))
    assert ledger.release(intent.client_order_id, "test")
    ledger.close()


# ----------------------------------------------------------------- one round trip

AMOUNTS = ("0", "0.1", "0.2", "0.3", "1", "2.5", "4", "10", "1E+1")


class _Undo(Exception):
    """Raised to roll a probe's transaction back."""


def _random_book(ledger: Ledger, rng: random.Random) -> None:
    """Positions and intents of two accounts, amounts chosen to land on the limits exactly."""
    conn = ledger.store.conn
    conn.execute("DELETE FROM positions")
    conn.execute("DELETE FROM intents")
    for agent, user in (("a1", "u1"), ("a2", "u1"), ("a3", "u1"), ("b1", "u2")):
        conn.execute(
            "UPDATE agents SET enabled = ?, max_positions = ?, capital = ?, realized_pnl = ?, "
            "fees = ?, funding = ? WHERE agent_id = ?",
            (
                int(rng.random() > 0.1),
                rng.randint(1, 4),
                rng.choice(AMOUNTS[4:]),
                rng.choice(("0", "-0.3", "0.2")),
                rng.choice(("0", "0.1")),
                rng.choice(("0", "-0.1", "0.3")),
                agent,
            ),
        )
        for symbol in rng.sample(("S1", "S2", "S3", "S4"), rng.randint(0, 1)):
            conn.execute(
                "INSERT INTO positions (agent_id, symbol, user, qty, entry_price, margin, "
                "opened_ms, updated_ms) VALUES (?, ?, ?, ?, ?, ?, 0, 0)",
                (
                    agent,
                    symbol,
                    user,
                    rng.choice(("1", "-1", "0.5")),
                    rng.choice(AMOUNTS[1:]),
                    rng.choice(AMOUNTS),
                ),
            )
        for _ in range(rng.randint(0, 2)):
            seq = int(conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM intents").fetchone()[0])
            conn.execute(
                "INSERT INTO intents (seq, client_order_id, agent_id, user, symbol, side, kind, "
                "margin, notional, state, pid, created_ms, expires_ms, updated_ms, "
                "margin_booked) VALUES (?, ?, ?, ?, ?, 'BUY', ?, ?, ?, ?, 1, 0, 0, 0, ?)",
                (
                    seq,
                    f"x-{seq}",
                    agent,
                    user,
                    rng.choice(("S1", "S2", "S3", "S4", "S5")),
                    rng.choice(("open", "open", "close")),
                    rng.choice(AMOUNTS),
                    rng.choice(AMOUNTS),
                    rng.choice(("reserved", "confirmed", "released")),
                    int(rng.random() > 0.7),
                ),
            )
    conn.execute(
        "UPDATE accounts SET max_total_positions = ?, max_gross_leverage = ?, equity = ? "
        "WHERE user = 'u1'",
        (rng.randint(2, 8), rng.choice(("1", "2", "0.5")), rng.choice((None, "10", "20", "40"))),
    )


def _in_transaction(ledger: Ledger, conn: Conn) -> intents.Call:
    """``PostgresStore.call`` run inside the open transaction ``conn`` (so that it is undone)."""
    store = ledger.store
    assert isinstance(store, PostgresStore)

    def call(sql: str, args: Sequence[Any], /, *, durable: bool = False) -> list[Any]:
        values = (store.lock_key, store.account_space, *args)
        return conn.execute(re.sub(r"\$\d+", "?", sql), values).fetchall()

    return call


def test_one_trip_reservation_grants_exactly_what_the_python_check_grants(
    pg_url: str, state_dir: Path
) -> None:
    """ledger_reserve_open grants an open iff limits.denial finds no reason (random books)."""
    rng = random.Random(18)
    with Ledger(state_dir, url=pg_url) as ledger:
        _setup(ledger)
        ledger.register_agent("a3", "u1", max_positions=2, capital=D(100))
        ledger.set_account_limits("u2", max_total_positions=3, max_gross_leverage=D(5))
        ledger.register_agent("b1", "u2", max_positions=2, capital=D(100))
        reasons: Counter[str] = Counter()
        for _ in range(40):
            _random_book(ledger, rng)
            for _ in range(12):
                agent = rng.choice(("a1", "a2", "a3", "b1", "nobody"))
                symbol = rng.choice(("S1", "S2", "S3", "S4", "S5", "S6"))
                margin, notional = D(rng.choice(AMOUNTS)), D(rng.choice(AMOUNTS))
                with pytest.raises(_Undo), ledger.store.write() as conn:
                    row = limits.read_agent(conn, agent)
                    why = limits.denial(conn, row, symbol, "open", margin, notional)
                    fast = intents.reserve_call(
                        _in_transaction(ledger, conn),
                        agent,
                        symbol,
                        Side.BUY,
                        margin=margin,
                        notional=notional,
                        now=1,
                        ttl_ms=1000,
                        pid=1,
                        note=None,
                        host=None,
                    )
                    assert (fast is not None) == (why is None), (agent, symbol, margin, why)
                    if fast is not None:
                        assert row is not None
                        assert fast.user == row.user and fast.seq > row.next_seq
                        assert fast.client_order_id == intents.make_client_order_id(
                            agent, fast.seq, "open"
                        )
                    reasons[denial_reason(why) if why else "granted"] += 1
                    raise _Undo
        assert sum(reasons.values()) == 480
        assert reasons["granted"] > 100 and len(reasons) == 8, reasons  # all outcomes seen


# ----------------------------------------------------------------- the account's lock


def _waiting_for_a_lock(pg_server: PgServer, pid: int) -> bool:
    rows = pg_server.execute(
        f"SELECT 1 FROM pg_locks WHERE pid = {pid} AND locktype = 'advisory' AND NOT granted"
    )
    return bool(rows)


def _reserve_in_thread(ledger: Ledger, agent: str, symbol: str) -> tuple[Thread, list[object]]:
    got: list[object] = []

    def run() -> None:
        try:
            got.append(ledger.reserve(agent, symbol, Side.BUY, margin=D(1), notional=D(1)))
        except Exception as exc:  # the test reads it from ``got``
            got.append(exc)

    thread = Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def test_writers_of_two_accounts_go_on_together_and_one_account_waits(
    pg_url: str, pg_server: PgServer, state_dir: Path
) -> None:
    """A transaction holding account u1's lock: u2 reserves meanwhile, u1's agent waits for it."""
    with Ledger(state_dir, url=pg_url) as setup:
        _setup(setup)
        setup.set_account_limits("u2", max_total_positions=3, max_gross_leverage=D(5))
        setup.register_agent("b1", "u2", max_positions=2, capital=D(100))
    # a call blocked by mistake fails after 5 s instead of hanging the test
    patient = pg_url + quote(" -clock_timeout=5000")
    holder, other = Ledger(state_dir, url=pg_url), Ledger(state_dir, url=patient)
    try:
        other_pid = int(other.store.conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        with holder.store.write(account="u1") as conn:
            conn.execute("SELECT 1").fetchone()  # BEGIN and u1's lock are on the server now
            assert other.reserve("b1", "ETHUSDT", Side.BUY, margin=D(1), notional=D(1))
            thread, got = _reserve_in_thread(other, "a1", "BTCUSDT")
            wait_for(lambda: _waiting_for_a_lock(pg_server, other_pid), 4, "u1's writer waiting")
            assert not got  # still waiting while u1's lock is held
        thread.join(5)
        assert len(got) == 1 and isinstance(got[0], Intent), got
    finally:
        holder.close()
        other.close()


def test_a_ledger_wide_write_holds_back_every_account(
    pg_url: str, pg_server: PgServer, state_dir: Path
) -> None:
    """A write under the ledger's own lock (the reaper's, a fill's) stops every account's
    writers until it commits, as the one lock per ledger did."""
    with Ledger(state_dir, url=pg_url) as setup:
        _setup(setup)
    holder, other = Ledger(state_dir, url=pg_url), Ledger(state_dir, url=pg_url)
    try:
        other_pid = int(other.store.conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        with holder.store.write() as conn:
            conn.execute("SELECT 1").fetchone()
            thread, got = _reserve_in_thread(other, "a1", "BTCUSDT")
            wait_for(lambda: _waiting_for_a_lock(pg_server, other_pid), 4, "the writer waiting")
            assert not got
        thread.join(5)
        assert len(got) == 1 and isinstance(got[0], Intent), got
    finally:
        holder.close()
        other.close()


# ----------------------------------------------------------------- hosts


REMOTE_AGENT = """
import os, sys
from decimal import Decimal
from pathlib import Path
from aster_agents.ledger import Ledger
from aster_agents.models import Side
ledger = Ledger(Path(sys.argv[1]))
ledger.heartbeat("a1", os.getpid())
intent = ledger.reserve("a1", "BTCUSDT", Side.BUY, margin=Decimal(1), notional=Decimal(1))
print(intent.client_order_id)
"""


def test_pid_of_another_host_is_judged_by_its_heartbeat_lease(
    backend: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead pid on host h1 is not reaped from h2 by pid, only once its heartbeat is stale."""
    with Ledger(state_dir) as ledger:
        _setup(ledger)
    monkeypatch.setenv("ASTER_AGENTS_HOST", "h1")
    done = run_python(REMOTE_AGENT, str(state_dir))
    assert done.returncode == 0, done.stderr
    coid = done.stdout.strip()
    monkeypatch.setenv("ASTER_AGENTS_HOST", "h2")
    with Ledger(state_dir, reap_interval_s=0, reap_min_age_s=0) as fresh:
        fresh.reserve("a2", "ETHUSDT", Side.BUY, margin=D(1), notional=D(1))
        held = fresh.intent(coid)
        assert held is not None and held.state == "reserved"  # the dead pid is not ours to read
        assert fresh.agent("a1") is not None
    with Ledger(state_dir, reap_interval_s=0, reap_min_age_s=0, stale_heartbeat_s=0) as lapsed:
        lapsed.reserve("a2", "SOLUSDT", Side.BUY, margin=D(1), notional=D(1))
        gone = lapsed.intent(coid)
        assert gone is not None and gone.state == "expired" and gone.reason == "heartbeat stale"


# ----------------------------------------------------------------- migrate and info


def _sqlite_ledger_with_history(state_dir: Path) -> dict[str, object]:
    with Ledger(state_dir, url=None) as ledger:
        _setup(ledger)
        intent = ledger.reserve("a1", "BTCUSDT", Side.BUY, margin=D(10), notional=D(50))
        assert ledger.mark_sent(intent.client_order_id)
        assert ledger.confirm(intent.client_order_id)
        ledger.book_fill(
            intent.client_order_id,
            trade_id=7,
            symbol="BTCUSDT",
            side=Side.BUY,
            qty=D(1),
            price=D(50),
            realized_pnl=D(0),
            commission=D("0.1"),
            time_ms=1,
        )
        ledger.finish_intent(intent.client_order_id, "filled")
        ledger.record_marks("u1", {"BTCUSDT": D(55)})
        ledger.snapshot_equity("a1", D(104))
        ledger.book_funding("a1", "BTCUSDT", D("-0.2"), 11, 2)
        return {
            "positions": [(p.agent_id, p.symbol, p.qty) for p in ledger.positions()],
            "books": ledger.books_equity("u1"),
            "audit": len(ledger.audit(10_000)),
            "equity": [(p[0], p[1]) for p in ledger.equity_history("a1")],
        }


def test_migrate_copies_history_verifies_and_refuses_a_second_time(
    pg_url: str, state_dir: Path, tmp_path: Path
) -> None:
    """ledger migrate --to: every row and the books arrive; a non-empty target is refused."""
    expected = _sqlite_ledger_with_history(state_dir)
    env = _config_env(tmp_path)
    done = _cli(
        "--state-dir", str(state_dir), "ledger", "migrate", "--to", pg_url, "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["version"] == 1 and doc["rows"]["fills"] == 1 and doc["rows"]["audit"] > 5
    assert doc["books"] == {"u1": str(expected["books"])}
    with Ledger(state_dir, url=pg_url) as copied:
        assert [(p.agent_id, p.symbol, p.qty) for p in copied.positions()] == expected["positions"]
        assert copied.books_equity("u1") == expected["books"]
        assert len(copied.audit(10_000)) == expected["audit"]
        assert [(p[0], p[1]) for p in copied.equity_history("a1")] == expected["equity"]
        # the copied sequences continue: new rows get fresh ids
        intent = copied.reserve("a2", "ETHUSDT", Side.BUY, margin=D(1), notional=D(1))
        assert intent.seq == 2 and copied.audit(1)[0].id == expected["audit"] + 1
    again = _cli("--state-dir", str(state_dir), "ledger", "migrate", "--to", pg_url, env=env)
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0 and "is not empty" in again.stderr


def test_ledger_info_names_backend_place_and_version(
    pg_url: str, state_dir: Path, tmp_path: Path
) -> None:
    """ledger info --json: sqlite file or masked postgresql URL (from the environment or from
    _portfolio.yaml), with its schema version."""
    env = _config_env(tmp_path)
    fresh = _cli("--state-dir", str(state_dir), "ledger", "info", "--json", env=env)
    assert fresh.returncode == 0, fresh.stderr
    doc = json.loads(fresh.stdout)
    assert doc["backend"] == "sqlite" and doc["schema_version"] == 0
    assert not state_dir.exists()  # info writes nothing
    Ledger(state_dir, url=pg_url).close()
    secret_url = pg_url.replace("postgres:@", "postgres:hunter2@")
    env["ASTER_AGENTS_LEDGER_URL"] = secret_url
    pg = _cli("--state-dir", str(state_dir), "ledger", "info", "--json", env=env)
    assert pg.returncode == 0, pg.stderr
    doc = json.loads(pg.stdout)
    assert doc["backend"] == "postgresql" and doc["schema_version"] == len(MIGRATIONS)
    assert "hunter2" not in pg.stdout and "postgres:***@" in doc["where"]
    from_yaml = _cli(
        "--state-dir", str(state_dir), "ledger", "info", env=_config_env(tmp_path, pg_url)
    )
    assert from_yaml.returncode == 0, from_yaml.stderr
    assert "postgresql" in from_yaml.stdout and f" {len(MIGRATIONS)}" in from_yaml.stdout


# ----------------------------------------------------------------- the database going away


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(port=0, seed=7, speed=60.0))
    server.start()
    yield server
    server.stop()


def _open_orders(fleet: Fleet) -> list[str]:
    acct = fleet.sim.engine.account(fleet.user)
    with fleet.sim.engine.lock:
        return sorted(o.client_order_id for o in acct.open_orders.values())


def _ticks(url: str, state_dir: Path) -> int:
    with Ledger(state_dir, url=url) as ledger:
        row = ledger.agent("agent-1")
    return 0 if row is None else row.ticks


@pytest.mark.slow
def test_database_gone_agent_keeps_its_protective_orders_and_resumes(
    sim: SimServer,
    pg_server: PgServer,
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database cut under an agent holding a protected position: it stays up, opens
    nothing, keeps its protective orders, says so in one masked line per retry; when the
    database is back it ticks again and the ledger agrees with the exchange."""
    monkeypatch.setenv("ASTER_AGENTS_LEDGER_URL", pg_url)  # this process reads it directly
    upstream = Path(unquote(pg_url.split("host=")[1].split("&")[0])) / ".s.PGSQL.5432"
    fleet = make_fleet(
        tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"], params="{p_enter: 1.0, p_exit: 0.0}"
    )
    with SocketProxy(upstream, tmp_path / "net") as proxy:
        url = proxy.url(pg_url).replace("postgres:@", "postgres:s3cret@")  # trust: not checked
        try:
            fleet.start("agent-1", {"ASTER_AGENTS_LEDGER_URL": url})
            wait_for(lambda: len(_open_orders(fleet)) == 2, timeout=60, what="a protected position")
            protected, sent = _open_orders(fleet), len(fleet.coids())
            proxy.cut()
            gone = lambda: fleet.stderr("agent-1").count("unreachable or gone")  # noqa: E731
            wait_for(lambda: gone() >= 2, timeout=60, what="two 'database gone' lines")
            assert fleet.procs["agent-1"].poll() is None, "the agent must wait, not exit"
            assert _open_orders(fleet) == protected and len(fleet.coids()) == sent
            proxy.resume()
            before = _ticks(pg_url, fleet.state_dir)
            wait_for(
                lambda: _ticks(pg_url, fleet.state_dir) > before + 2,
                timeout=90,
                what="ticks after the database came back",
            )
            wait_for(lambda: fleet.ledger_positions() == fleet.exchange_positions(), timeout=30)
        finally:
            codes = fleet.stop_all()
    assert codes == {"agent-1": 0}
    err = fleet.stderr("agent-1")
    assert "Traceback" not in err and "s3cret" not in err, err[-3000:]
    assert "postgres:***@" in err


def _break(case: str, pg_server: PgServer, pg_url: str, tmp_path: Path) -> tuple[str, str]:
    """A ledger URL that is wrong in the way ``case`` names; the error it must give."""
    schema = pg_url.rsplit("%3D", 1)[1]
    if case == "unreachable":
        nowhere = quote(str(tmp_path / "nowhere"), safe="")
        return f"postgresql://bob:s3cret@/ledger?host={nowhere}", r"unreachable or gone"
    if case == "password":
        pg_server.execute("DROP ROLE IF EXISTS carol")
        pg_server.execute("CREATE ROLE carol LOGIN PASSWORD 'right-one'")
        url = pg_url.replace("postgres:@", "carol:s3cret@")
        return url, r"password authentication failed for user \"carol\""
    if case == "foreign":
        pg_server.execute(f"CREATE TABLE {schema}.customers (id int)")
        return pg_url.replace("postgres:@", "postgres:s3cret@"), r"tables but no aster-agents"
    Ledger(tmp_path / "other", url=pg_url).close()
    pg_server.execute(f"INSERT INTO {schema}.schema_migrations VALUES (99, 'future', 0)")
    return pg_url.replace("postgres:@", "postgres:s3cret@"), r"schema version 99, newer"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unreachable", "password", "foreign", "newer"])
def test_agent_on_a_bad_ledger_url_exits_1_in_one_masked_line(
    case: str, sim: SimServer, pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    """An agent started on an unusable database: exit 1, one line naming the problem with
    the password masked, no order sent and nothing written to the database."""
    hba = pg_server.data / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("local all carol scram-sha-256\n" + original)
    pg_server.execute("SELECT pg_reload_conf()")
    try:
        url, expected = _break(case, pg_server, pg_url, tmp_path)
        schema = pg_url.rsplit("%3D", 1)[1]
        before = pg_server.execute(
            f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'"
        )
        fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"])
        proc = fleet.start("agent-1", {"ASTER_AGENTS_LEDGER_URL": url})
        assert proc.wait(60) == 1
    finally:
        hba.write_text(original)
        pg_server.execute("SELECT pg_reload_conf()")
    err = fleet.stderr("agent-1").strip()
    assert len(err.splitlines()) == 1 and re.search(expected, err), err
    assert "s3cret" not in err and ":***@" in err
    assert fleet.coids() == []
    after = pg_server.execute(
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'"
    )
    assert after == before
    if case == "newer":
        versions = pg_server.execute(f"SELECT MAX(version) FROM {schema}.schema_migrations")
        assert versions == [(99,)]
