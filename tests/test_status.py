"""``aster-agent status``: never-started fleets, a populated ledger, flags, JSON, watch, imports."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from aster_agents.cli.status import render_status
from aster_agents.config.schema import FleetConfig, load_fleet
from aster_agents.fleet.view import (
    NEVER_STARTED,
    ProcInfo,
    classify,
    collect_status,
    stale_after_s,
    supervisor_processes,
)
from aster_agents.ledger import Ledger
from aster_agents.models import Side
from tests.kit.cli import run_cli
from tests.kit.terminal import interrupt_reading, shell_like

REPO = Path(__file__).resolve().parent.parent
EQUITY = Decimal(10000)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def fleet(tmp_path: Path) -> FleetConfig:
    config = tmp_path / "agents.d"
    shutil.copytree(REPO / "agents.d", config)
    return load_fleet(config, check_strategies=False)


def populate(fleet: FleetConfig, state: Path, *, dead: int) -> None:
    """agent-1 alive with a position, agent-2 down (dead pid), the others never started."""
    user = fleet.agents[0].exchange.user
    with Ledger(state) as ledger:
        ledger.set_account_limits(
            user, max_total_positions=10, max_gross_leverage=Decimal(3), equity=EQUITY
        )
        for agent_id in ("agent-1", "agent-2", "agent-10"):
            ledger.register_agent(agent_id, user, max_positions=2, capital=Decimal(1000))
        intent = ledger.reserve(
            "agent-1", "BTCUSDT", Side.BUY, margin=Decimal(50), notional=Decimal(150)
        )
        ledger.confirm(intent.client_order_id)
        ledger.book_fill(
            intent.client_order_id,
            trade_id=1,
            symbol="BTCUSDT",
            side=Side.BUY,
            qty=Decimal("0.01"),
            price=Decimal(15000),
            realized_pnl=Decimal(0),
            commission=Decimal("0.06"),
            time_ms=1,
        )
        ledger.snapshot_equity("agent-1", Decimal("1012.5"))
        ledger.heartbeat("agent-1", os.getpid(), tick=True)
        ledger.heartbeat("agent-2", dead, error="ExchangeError: 503 from /fapi/v3/order")


def args(fleet: FleetConfig, state: Path, *rest: str) -> list[str]:
    return ["--config-dir", str(fleet.config_dir), "--state-dir", str(state), *rest]


def test_no_state_dir_shows_never_started_and_writes_nothing(
    fleet: FleetConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a ledger every agent is 'never started' and no state dir is created."""
    state = tmp_path / "state"
    code, out, err = run_cli(args(fleet, state, "status"), capsys)
    assert code == 0, err
    assert out.count(NEVER_STARTED) == 10
    assert "no ledger yet" in out
    assert not state.exists()


def test_json_envelope_without_ledger(
    fleet: FleetConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints one versioned document with ten agents and one account, no secrets."""
    code, out, _ = run_cli(args(fleet, tmp_path / "state", "status", "--json"), capsys)
    doc = json.loads(out)
    assert code == 0
    assert doc["version"] == 1
    assert [a["id"] for a in doc["agents"]] == [a.id for a in fleet.agents]
    assert {a["state"] for a in doc["agents"]} == {NEVER_STARTED}
    assert len(doc["accounts"]) == 1 and doc["accounts"][0]["balance"] is None
    assert "key" not in out.lower()
    assert not (tmp_path / "state").exists()


def test_populated_ledger_rows_and_flags(
    fleet: FleetConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A live heartbeat is RUNNING, a dead pid is flagged DOWN; money comes from the ledger."""
    state = tmp_path / "state"
    populate(fleet, state, dead=dead_pid())
    code, out, _ = run_cli(args(fleet, state, "status", "--json"), capsys)
    agents = {a["id"]: a for a in json.loads(out)["agents"]}
    assert code == 0
    one, two, three = agents["agent-1"], agents["agent-2"], agents["agent-10"]
    assert (one["state"], one["flagged"], one["pid"]) == ("RUNNING", False, os.getpid())
    assert (one["positions"], one["equity"], one["pnl"]) == (1, "1012.5", "12.5")
    assert one["uptime_s"] is not None and one["ticks"] == 1
    assert (two["state"], two["flagged"]) == ("DOWN", True)
    assert two["last_error"].startswith("ExchangeError: 503")
    assert (three["state"], three["equity"], three["pnl"]) == (NEVER_STARTED, "1000", "0")
    account = json.loads(out)["accounts"][0]
    assert (account["balance"], account["positions"]) == ("10000", 1)


def test_table_marks_flagged_rows_without_colour(
    fleet: FleetConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With NO_COLOR the DOWN row still carries a text marker; the footer shows the account."""
    state = tmp_path / "state"
    populate(fleet, state, dead=dead_pid())
    code, out, _ = run_cli(args(fleet, state, "status"), capsys)
    assert code == 0
    down = next(line for line in out.splitlines() if "agent-2 " in line)
    assert "! DOWN" in down
    assert "! " not in next(line for line in out.splitlines() if "agent-1 " in line)
    assert "balance 10,000.00" in out and "positions 1/10" in out


def test_stale_heartbeat_is_flagged(fleet: FleetConfig, tmp_path: Path) -> None:
    """A live pid whose heartbeat is older than max(3 x scan interval, 30 s) is STALE."""
    state = tmp_path / "state"
    populate(fleet, state, dead=dead_pid())
    later = time.time_ns() // 1_000_000 + 3600_000
    report = collect_status(fleet, state, now_ms=later)
    one = next(a for a in report.agents if a.id == "agent-1")
    assert (one.process.state, one.flagged) == ("STALE", True)
    text = _render_plain(report)
    assert "! STALE" in text


def test_classify_rules() -> None:
    """supervisord wins over heartbeats; a running program with a stale heartbeat is STALE."""
    assert stale_after_s(1) == 30 and stale_after_s(60) == 180
    fatal = classify(ProcInfo("agent-1", "FATAL", None, None), 5, 1.0, 30, True)
    assert (fatal.state, fatal.source) == ("FATAL", "supervisor")
    running = ProcInfo("agent-1", "RUNNING", 42, 10.0)
    assert classify(running, 42, 100.0, 30, True).state == "STALE"
    assert classify(running, 42, 1.0, 30, False).state == "RUNNING"
    assert classify(None, None, None, 30, False).state == NEVER_STARTED
    assert classify(None, 7, 1.0, 30, False).state == "DOWN"


def test_refusing_supervisor_socket_falls_back_to_heartbeats(
    fleet: FleetConfig, tmp_path: Path
) -> None:
    """A socket file nobody listens on means 'no supervisord': heartbeats decide."""
    state = tmp_path / "state"
    populate(fleet, state, dead=dead_pid())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(state / "supervisor.sock"))
    sock.close()
    assert supervisor_processes(state) is None
    report = collect_status(fleet, state)
    assert not report.supervisor
    assert next(a for a in report.agents if a.id == "agent-1").process.state == "RUNNING"


def test_real_supervisord_states(fleet: FleetConfig, tmp_path: Path) -> None:
    """With supervisord answering on its socket, program states and pids come from it."""
    state = tmp_path / "state"
    state.mkdir()
    sock = state / "supervisor.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(
        f"[unix_http_server]\nfile={sock}\n\n"
        f"[supervisord]\nlogfile={tmp_path}/sd.log\npidfile={tmp_path}/sd.pid\nnodaemon=true\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f'[program:agent-1]\ncommand={sys.executable} -c "import time; time.sleep(60)"\n'
        "autostart=true\nstartsecs=0\n\n"
        f'[program:agent-2]\ncommand={sys.executable} -c "import time; time.sleep(60)"\n'
        "autostart=false\n\n[group:aster-agents]\nprograms=agent-1,agent-2\n"
    )
    supervisord = Path(sys.executable).with_name("supervisord")
    proc = subprocess.Popen(
        [str(supervisord), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        procs = _poll(lambda: _running(state), deadline_s=20)
        report = collect_status(fleet, state)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert procs["agent-2"].state == "STOPPED"
    one, two = report.agents[0], report.agents[1]  # natural order: agent-1, agent-2, ...
    assert (one.id, one.process.state, one.process.source) == ("agent-1", "RUNNING", "supervisor")
    assert one.process.pid == procs["agent-1"].pid and one.process.pid is not None
    assert (two.id, two.process.state, two.flagged) == ("agent-2", "STOPPED", False)


def _running(state: Path) -> dict[str, ProcInfo] | None:
    procs = supervisor_processes(state)
    if procs and "agent-1" in procs and procs["agent-1"].state == "RUNNING":
        return procs
    return None


def _poll(check: object, deadline_s: float) -> dict[str, ProcInfo]:
    assert callable(check)
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        result = check()
        if result:
            return dict(result)
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {deadline_s} s")


def test_watch_with_json_is_a_usage_error(
    fleet: FleetConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--watch and --json together exit 2."""
    code, _, err = run_cli(args(fleet, tmp_path / "state", "status", "--json", "--watch"), capsys)
    assert code == 2 and "--watch" in err


def test_watch_refreshes_and_exits_0_on_ctrl_c(fleet: FleetConfig, tmp_path: Path) -> None:
    """--watch draws the table on a terminal and Ctrl-C ends it with exit code 0."""
    master, slave = pty.openpty()
    cmd = [
        sys.executable,
        "-m",
        "aster_agents",
        *args(fleet, tmp_path / "state", "status", "--watch", "--interval", "0.1"),
    ]
    proc = subprocess.Popen(
        cmd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, preexec_fn=shell_like
    )
    os.close(slave)
    seen = b""
    try:
        end = time.monotonic() + 30
        while seen.count(b"agent-10") < 2 and time.monotonic() < end:
            if select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 65536)
        assert seen.count(b"agent-10") >= 2, seen[-2000:]
        assert interrupt_reading(proc, master) == 0  # a terminal keeps reading
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_status_imports_neither_eth_account_nor_httpx(fleet: FleetConfig, tmp_path: Path) -> None:
    """`status` (table and JSON) on SQLite never imports eth_account, httpx or psycopg."""
    state = tmp_path / "state"
    populate(fleet, state, dead=dead_pid())
    probe = (
        "import sys\nfrom aster_agents.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('eth_account', 'httpx', 'psycopg'))\n"
        "print('IMPORTED', bad, file=sys.stderr)\n"
    )
    for extra in ([], ["--json"]):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args(fleet, state, "status", *extra)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "IMPORTED []" in done.stderr, done.stderr


def _render_plain(report: object) -> str:
    console = Console(width=200, no_color=True, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    from aster_agents.fleet.view import StatusReport

    assert isinstance(report, StatusReport)
    console.print(render_status(report))
    console.file.close()
    return console.export_text()
