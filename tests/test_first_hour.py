"""The README's "First hour" path as real processes: init, sim, up, status, account, reconcile."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.plugins.sim import SimProcess, start_sim_process

T = TypeVar("T")
BIN = str(Path(sys.executable).parent / "aster-agent")


def wait_for(what: str, check: Callable[[], T | None], timeout: float) -> T:
    """Poll ``check`` until it returns something truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def cli(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``aster-agent ARGS`` run from ``root`` the way a user types it (no global options)."""
    return subprocess.run(
        [BIN, *args], cwd=root, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def template() -> Iterator[Path]:
    """One ``aster-agent init`` per module (its scrypt keystores cost seconds), copied per test."""
    root = Path(tempfile.mkdtemp(prefix="fh-tpl-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
    done = subprocess.run(
        [BIN, "init"], cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def project(template: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh copy of the init project in a short directory (supervisord's socket path)."""
    monkeypatch.delenv("ASTER_AGENTS_CONFIG")
    monkeypatch.delenv("ASTER_AGENTS_STATE")
    root = Path(tempfile.mkdtemp(prefix="fh-", dir="/tmp"))
    shutil.copytree(template, root, dirs_exist_ok=True)  # modes kept: keys 0600, .env 0600
    try:
        yield root
    finally:
        if (root / "state" / "supervisor.sock").exists():
            cli(root, "down", "--timeout", "30")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def sim(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimProcess]:
    """The simulator with init's accounts file; every agent pointed at it by one variable."""
    process = start_sim_process("--speed", "60", "--accounts", str(project / "sim-accounts.yaml"))
    monkeypatch.setenv("ASTER_AGENTS_BASE_URL", process.base_url)
    monkeypatch.setenv("ASTER_AGENTS_MARKET_SPEED", "60")
    for path in (project / "agents.d").glob("agent-*.yaml"):  # tick every second, not minute
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("scan_interval_seconds: 60", "scan_interval_seconds: 1"))
    try:
        yield process
    finally:
        process.stop()


def status(root: Path) -> dict[str, Any]:
    done = cli(root, "status", "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_init_writes_a_valid_project_with_private_keys(project: Path) -> None:
    """init: two valid agents on distinct symbols, 0600 keystores and .env, no key in YAML."""
    assert cli(project, "agents", "validate").returncode == 0
    for private in (project / ".env", project / "keys" / "agent-1.json"):
        assert private.stat().st_mode & 0o077 == 0
    texts = [p.read_text() for p in (project / "agents.d").glob("agent-*.yaml")]
    assert len(texts) == 2 and all("base_url: http://127.0.0.1:8765" in t for t in texts)
    accounts = (project / "sim-accounts.yaml").read_text()
    assert accounts.count('    - "0x') == 2


def test_init_refuses_an_existing_project(project: Path) -> None:
    """A second init in the same directory exits 2, names the file and changes nothing."""
    before = (project / ".env").read_bytes()
    done = cli(project, "init")
    assert done.returncode == 2
    assert "agents.d: already exists" in done.stderr and "Traceback" not in done.stderr
    assert (project / ".env").read_bytes() == before
    assert not [p for p in project.iterdir() if p.name.startswith(".aster-init-")]


def test_first_hour_two_agents_trade_on_the_simulator(project: Path, sim: SimProcess) -> None:
    """init -> sim -> up: both agents tick, one trades; account and reconcile read .env."""
    done = cli(project, "up")
    assert done.returncode == 0, done.stderr

    def both_ticking_and_a_trade() -> dict[str, Any] | None:
        doc = status(project)
        agents = doc["agents"]
        ticking = all(a["ticks"] and a["state"] == "RUNNING" for a in agents)
        traded = any(a["positions"] or Decimal(a["pnl"] or 0) for a in agents)
        return doc if ticking and traded else None

    doc = wait_for("both agents ticking and a trade", both_ticking_and_a_trade, 60)
    assert [a["last_error"] for a in doc["agents"]] == [None, None]
    names = sorted(p.name for p in (project / "state" / "logs").iterdir())
    assert names == ["agent-1.log", "agent-2.log", "supervisord.log"]  # one log per agent
    shown = cli(project, "logs", "--id", "agent-2", "-n", "5")
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 5
    assert "| agent-2 |" in shown.stdout
    account = cli(project, "account", "--id", "agent-1", "--json")
    assert account.returncode == 0, account.stderr
    assert json.loads(account.stdout)["base_url"] == sim.base_url
    assert cli(project, "down").returncode == 0
    reconciled = cli(project, "reconcile", "--json")
    assert reconciled.returncode in (0, 1), reconciled.stderr
    assert "KEYSTORE_PASSWORD is not set" not in reconciled.stderr
    assert (
        "E-" not in reconciled.stdout
        and "E-" not in cli(project, "account", "--id", "agent-2").stdout
    )


def test_run_reads_the_env_file_next_to_agents_d(project: Path, sim: SimProcess) -> None:
    """`run` resolves its keystore password from .env (no exit 2); `logs` finds its log."""
    assert "AGENT_1_KEYSTORE_PASSWORD" not in os.environ
    proc = subprocess.Popen(
        [BIN, "run", "--id", "agent-1"], cwd=project, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for("agent-1's first tick", lambda: status(project)["agents"][0]["ticks"], 30)
        shown = cli(project, "logs", "--id", "agent-1")  # found though supervisord never ran
        assert shown.returncode == 0 and "| agent-1 | " in shown.stdout
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_base_url_override_refuses_a_remote_url(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ASTER_AGENTS_BASE_URL is for a loopback simulator: a remote URL exits 2 with one line."""
    monkeypatch.setenv("ASTER_AGENTS_BASE_URL", "https://fapi.asterdex.com")
    done = cli(project, "agents", "validate")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ASTER_AGENTS_BASE_URL: 'https://fapi.asterdex.com'")
    assert len(done.stderr.splitlines()) == 1


def _terminal_agent(root: Path) -> subprocess.Popen[str]:
    """``aster-agent run --id agent-1`` as a user starts it in a terminal, once it has ticked."""
    proc = subprocess.Popen(
        [BIN, "run", "--id", "agent-1"], cwd=root, stderr=subprocess.DEVNULL, text=True
    )

    def ticking() -> bool:
        agent = status(root)["agents"][0]
        return bool(agent["ticks"]) and agent["pid"] == proc.pid and agent["state"] == "RUNNING"

    wait_for("agent-1 ticking in the terminal", ticking, 30)
    return proc


def test_up_refuses_while_an_agent_runs_in_a_terminal(project: Path, sim: SimProcess) -> None:
    """`up` exits 3 naming the agent and its pid, and starts nothing."""
    proc = _terminal_agent(project)
    try:
        done = cli(project, "up")
        assert done.returncode == 3, done.stderr
        assert f"agent-1 (pid {proc.pid})" in done.stderr and "nothing started" in done.stderr
        assert not (project / "state" / "supervisor.sock").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_supervised_copy_exits_3_once_and_status_says_why(project: Path, sim: SimProcess) -> None:
    """A supervised agent refused by the lock stays EXITED 3 (one spawn), status names the pid."""
    from aster_agents.fleet.supervisor import supervisord_bin

    proc = _terminal_agent(project)
    conf = project / "supervisord.conf"
    try:
        rendered = cli(project, "supervisor", "render", "-o", str(conf), "--bin", BIN)
        assert rendered.returncode == 0, rendered.stderr
        subprocess.run([supervisord_bin(), "-c", str(conf)], cwd=project, check=True)

        def exited() -> dict[str, Any] | None:
            agent = status(project)["agents"][0]
            return agent if agent["state"] == "EXITED" else None

        agent = wait_for("the supervised agent-1 to exit", exited, 30)
        assert agent["last_error"].startswith(
            f"exit 3: already running outside supervisord (pid {proc.pid})"
        )
        log = (project / "state" / "logs" / "supervisord.log").read_text()
        assert log.count("spawned: 'agent-1'") == 1
        assert "exit status 3; expected" in log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_status_tells_a_clean_stop_from_a_crash(project: Path, sim: SimProcess) -> None:
    """Ctrl-C leaves STOPPED (no pid, not flagged); SIGKILL leaves DOWN with its pid, flagged."""
    stopped = _terminal_agent(project)
    stopped.send_signal(signal.SIGINT)
    assert stopped.wait(timeout=30) == 0
    agent = status(project)["agents"][0]
    assert (agent["state"], agent["pid"], agent["flagged"]) == ("STOPPED", None, False)
    killed = _terminal_agent(project)
    killed.kill()
    killed.wait(timeout=30)
    agent = status(project)["agents"][0]
    assert (agent["state"], agent["pid"], agent["flagged"]) == ("DOWN", killed.pid, True)


def test_another_host_sees_a_clean_stop_as_stopped(
    project: Path, sim: SimProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C records the clean stop in the ledger: another host shows STOPPED; after a
    SIGKILL it shows the last heartbeat (RUNNING until the lease ends, then STALE)."""
    stopped = _terminal_agent(project)
    stopped.send_signal(signal.SIGINT)
    assert stopped.wait(timeout=30) == 0
    monkeypatch.setenv("ASTER_AGENTS_HOST", "elsewhere")
    agent = status(project)["agents"][0]
    assert (agent["state"], agent["local"], agent["flagged"]) == ("STOPPED", False, False)
    monkeypatch.delenv("ASTER_AGENTS_HOST")
    killed = _terminal_agent(project)
    killed.kill()
    killed.wait(timeout=30)
    monkeypatch.setenv("ASTER_AGENTS_HOST", "elsewhere")
    agent = status(project)["agents"][0]
    assert (agent["state"], agent["local"], agent["state_source"]) == ("RUNNING", False, "remote")


def test_wrong_base_url_is_retrying_and_named(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable exchange: RETRYING (not RUNNING) with the URL; later "unreachable"."""
    url = "http://127.0.0.1:9"  # the discard port: nothing listens
    monkeypatch.setenv("ASTER_AGENTS_BASE_URL", url)
    proc = subprocess.Popen(
        [BIN, "run", "--id", "agent-1"], cwd=project, stderr=subprocess.DEVNULL, text=True
    )
    try:

        def error() -> str | None:
            agent = status(project)["agents"][0]
            return agent["last_error"] if agent["state"] == "RETRYING" else None

        assert f"start-up against {url} failed" in wait_for("RETRYING", error, 30)
        unreachable = f"start-up: the exchange at {url} is unreachable"
        wait_for("unreachable", lambda: unreachable in (error() or ""), 60)
        assert status(project)["agents"][0]["flagged"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_agents_list_shows_an_operator_disable(project: Path) -> None:
    """`agents list` says no for a disabled agent; disabling twice keeps the first reason."""
    assert cli(project, "agents", "disable", "--id", "agent-2", "--reason", "first").returncode == 0
    again = cli(project, "agents", "disable", "--id", "agent-2", "--reason", "second")
    assert again.returncode == 0 and "already disabled (disabled by operator" in again.stdout
    assert ": first); nothing changed" in again.stdout
    listed = cli(project, "agents", "list")
    assert "no (disabled by operator" in listed.stdout and ": first)" in listed.stdout
    rows = json.loads(cli(project, "agents", "list", "--json").stdout)["agents"]
    assert [(r["id"], r["state"]) for r in rows] == [("agent-1", None), ("agent-2", "disabled")]


def test_status_flags_a_yaml_typo(project: Path) -> None:
    """A misspelt key is flagged in status (not silently shown as defaults)."""
    path = project / "agents.d" / "agent-1.yaml"
    path.write_text(path.read_text().replace("max_positions:", "max_positons:"))
    agent = status(project)["agents"][0]
    assert agent["flagged"] is True
    assert agent["last_error"].startswith("agent-1.yaml: unknown key trading.max_positons")
    validated = cli(project, "agents", "validate", "--json")
    assert validated.returncode == 2
    assert json.loads(validated.stdout)["ok"] is False


def test_down_when_nothing_runs_is_already_stopped(project: Path) -> None:
    """`down` with no supervisord (e.g. run twice) exits 0 and says so."""
    done = cli(project, "down")
    assert done.returncode == 0, done.stderr
    assert "already stopped" in done.stdout


@pytest.mark.parametrize(
    ("command", "text"),
    [
        (("restart",), "Only this agent [default: all]."),
        (("run",), "[env AGENT_ID]"),
        (("supervisor", "render"), "[default: the one holding agents.d]"),
    ],
)
def test_option_help_keeps_its_brackets(command: tuple[str, ...], text: str) -> None:
    """Help texts keep "[default: ...]" instead of a stray " ." (it is not markup)."""
    done = subprocess.run(
        [BIN, *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert text in " ".join(done.stdout.split())
    assert " ." not in done.stdout


def test_reconcile_against_a_restarted_simulator_refuses_to_mix_books(
    project: Path, sim: SimProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the simulator restarts, reconcile repairs nothing and says how to start fresh."""
    proc = subprocess.Popen(
        [BIN, "run", "--id", "agent-2"], cwd=project, stderr=subprocess.DEVNULL, text=True
    )
    try:
        wait_for("agent-2's first trade", lambda: status(project)["agents"][1]["positions"], 60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    sim.stop()
    fresh = start_sim_process("--accounts", str(project / "sim-accounts.yaml"))
    try:
        monkeypatch.setenv("ASTER_AGENTS_BASE_URL", fresh.base_url)
        done = cli(project, "reconcile")
    finally:
        fresh.stop()
    assert done.returncode == 1, done.stderr
    assert "it is not the exchange they were kept against" in done.stdout
    assert "mv state state.old" in done.stdout and "repaired:" not in done.stdout


def test_doctor_recognises_a_simulator_market_clock(project: Path, sim: SimProcess) -> None:
    """Against `sim --speed 60` the clock check says "market clock", not FAIL (enable NTP)."""
    doc = json.loads(cli(project, "doctor", "--id", "agent-1", "--json").stdout)
    clock = next(c for c in doc["checks"] if c["name"] == "clock")
    # the market has run 60x the wall clock since the sim started (seconds ago): far ahead
    assert clock["status"] == "SKIP", clock
    rate = re.search(r"a simulator's market clock \(running at about (\d+)x", clock["detail"])
    assert rate is not None and 20 <= int(rate[1]) <= 100, clock  # about 60, on a busy host
    assert not [c for c in doc["checks"] if c["status"] == "FAIL"], doc["checks"]
