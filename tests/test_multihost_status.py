"""``status`` and ``portfolio`` across hosts: every agent of the ledger, with its host."""

from __future__ import annotations

import json
import os
import shutil
import time
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.config.schema import FleetConfig, load_fleet
from aster_agents.fleet.view import NEVER_STARTED, collect_status
from aster_agents.ledger import Ledger
from aster_agents.ledger.liveness import HOST_ENV
from tests.kit.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
FAR_PID = 4_000_000  # above pid_max: no process here has it


@pytest.fixture
def fleet(tmp_path: Path) -> FleetConfig:
    config = tmp_path / "agents.d"
    shutil.copytree(REPO / "agents.d", config)
    return load_fleet(config, check_strategies=False)


def populate(fleet: FleetConfig, state: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """agent-1 runs here (host alpha); beta-1 and beta-2 (configured on beta only) ran on beta,
    beta-2 long ago. Returns the account."""
    user = fleet.agents[0].exchange.user
    monkeypatch.setenv(HOST_ENV, "beta")
    with Ledger(state) as ledger:
        ledger.set_account_limits(
            user, max_total_positions=10, max_gross_leverage=Decimal(3), equity=Decimal(10000)
        )
        for agent_id in ("agent-1", "beta-1", "beta-2"):
            ledger.register_agent(agent_id, user, max_positions=2, capital=Decimal(1000))
        ledger.heartbeat("beta-1", FAR_PID, tick=True)
        ledger.heartbeat("beta-2", FAR_PID + 1, tick=True)
        ledger.snapshot_equity("beta-1", Decimal(1010))
    monkeypatch.setenv(HOST_ENV, "alpha")
    with Ledger(state) as ledger:
        ledger.heartbeat("agent-1", os.getpid(), tick=True)
    return user


def args(fleet: FleetConfig, state: Path, *rest: str) -> list[str]:
    return ["--config-dir", str(fleet.config_dir), "--state-dir", str(state), *rest]


def test_status_shows_every_agent_of_the_ledger_with_its_host(
    backend: str,
    fleet: FleetConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Agents configured elsewhere appear with their host; a remote one has no pid, only the
    heartbeat's age; a local one keeps its pid and uptime."""
    state = tmp_path / "state"
    populate(fleet, state, monkeypatch)
    code, out, err = run_cli(args(fleet, state, "status", "--json"), capsys)
    assert code == 0, err
    doc = json.loads(out)
    agents = {a["id"]: a for a in doc["agents"]}
    assert doc["host"] == "alpha" and doc["ledger_found"]
    assert set(agents) == {a.id for a in fleet.agents} | {"beta-1", "beta-2"}
    one, beta = agents["agent-1"], agents["beta-1"]
    assert (one["host"], one["local"], one["state"], one["pid"]) == (
        "alpha",
        True,
        "RUNNING",
        os.getpid(),
    )
    assert one["uptime_s"] is not None
    assert (beta["host"], beta["local"], beta["state"], beta["state_source"]) == (
        "beta",
        False,
        "RUNNING",
        "remote",
    )
    assert beta["pid"] is None and beta["uptime_s"] is None and beta["capital_pct"] is None
    assert beta["last_tick_age_s"] is not None and beta["equity"] == "1010"
    assert (agents["agent-2"]["host"], agents["agent-2"]["state"]) == (None, NEVER_STARTED)
    code, out, _ = run_cli(args(fleet, state, "status"), capsys)
    line = next(row for row in out.splitlines() if row.lstrip().startswith("beta-1 "))
    assert code == 0 and " beta " in line and "RUNNING" in line
    assert "on host alpha" in out


def test_a_remote_agent_is_stale_by_its_heartbeat_age_alone(
    backend: str, fleet: FleetConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote heartbeat older than the stale limit is STALE and flagged, whatever its pid
    would mean here; a live local pid is never read for a remote agent."""
    state = tmp_path / "state"
    populate(fleet, state, monkeypatch)
    monkeypatch.setenv(HOST_ENV, "beta")
    with Ledger(state) as ledger:  # a remote agent whose pid happens to be alive here
        ledger.heartbeat("beta-2", os.getpid())
    monkeypatch.setenv(HOST_ENV, "alpha")
    later = time.time_ns() // 1_000_000 + 3600_000
    report = collect_status(fleet, state, now_ms=later)
    two = next(a for a in report.agents if a.id == "beta-2")
    assert (two.process.state, two.flagged, two.process.pid, two.local) == (
        "STALE",
        True,
        None,
        False,
    )
    fresh = collect_status(fleet, state)
    assert next(a for a in fresh.agents if a.id == "beta-2").process.state == "RUNNING"


def test_a_remote_agent_stopped_cleanly_is_stopped_and_a_killed_one_goes_stale(
    backend: str, fleet: FleetConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that recorded its clean stop is STOPPED (not flagged) on another host, before
    and after the lease; one that did not (SIGKILLed) is STALE after it; a new run's
    heartbeat makes it RUNNING again, and an older run's late stop does not touch it."""
    state = tmp_path / "state"
    populate(fleet, state, monkeypatch)
    monkeypatch.setenv(HOST_ENV, "beta")
    with Ledger(state) as ledger:
        assert ledger.heartbeat_stopped("beta-1", FAR_PID)
        assert not ledger.heartbeat_stopped("beta-2", FAR_PID)  # not the pid of its last beat
    monkeypatch.setenv(HOST_ENV, "alpha")
    later = time.time_ns() // 1_000_000 + 3600_000

    def states(now_ms: int | None = None) -> dict[str, tuple[str, bool]]:
        report = collect_status(fleet, state, now_ms=now_ms)
        return {a.id: (a.process.state, a.flagged) for a in report.agents if not a.local}

    assert states() == {"beta-1": ("STOPPED", False), "beta-2": ("RUNNING", False)}
    assert states(later) == {"beta-1": ("STOPPED", False), "beta-2": ("STALE", True)}
    monkeypatch.setenv(HOST_ENV, "beta")
    with Ledger(state) as ledger:
        ledger.heartbeat("beta-1", FAR_PID + 2, tick=True)  # started again
        assert not ledger.heartbeat_stopped("beta-1", FAR_PID)  # the old run's stop, late
    monkeypatch.setenv(HOST_ENV, "alpha")
    assert states()["beta-1"] == ("RUNNING", False)


def test_portfolio_counts_sleeves_of_every_host(
    backend: str,
    fleet: FleetConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """portfolio adds the sleeves run on other hosts and names their host."""
    state = tmp_path / "state"
    populate(fleet, state, monkeypatch)
    code, out, err = run_cli(args(fleet, state, "portfolio", "--json"), capsys)
    assert code == 0, err
    sleeves = {s["id"]: s for s in json.loads(out)["agents"]}
    assert {"agent-1", "beta-1", "beta-2"} <= set(sleeves)
    assert (sleeves["beta-1"]["host"], sleeves["beta-1"]["capital"]) == ("beta", "1000")
    assert sleeves["agent-1"]["host"] == "alpha"


def test_status_names_an_unreachable_ledger_in_one_line(
    fleet: FleetConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A PostgreSQL ledger nobody answers for: one line, exit 1, the password masked."""
    monkeypatch.setenv(
        "ASTER_AGENTS_LEDGER_URL", "postgresql://ops:s3cret@127.0.0.1:1/ledger?connect_timeout=2"
    )
    code, out, err = run_cli(args(fleet, tmp_path / "state", "status"), capsys)
    assert code == 1 and out == ""
    assert "s3cret" not in err and "ops:***@127.0.0.1:1" in err
    assert len(err.strip().splitlines()) == 1


def test_every_reading_command_follows_ledger_url_of_the_portfolio_file(
    pg_url: str, fleet: FleetConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``ledger.url`` in _portfolio.yaml (no environment variable), `agents list`,
    `trades`, `report` and doctor's ledger check read the PostgreSQL ledger, not a local file."""
    assert "ASTER_AGENTS_LEDGER_URL" not in os.environ
    portfolio = fleet.config_dir / "_portfolio.yaml"
    portfolio.write_text(portfolio.read_text() + f"\nledger:\n  url: {json.dumps(pg_url)}\n")
    state = tmp_path / "state"
    user = fleet.agents[0].exchange.user
    with Ledger(state, url=pg_url) as ledger:
        ledger.register_agent("agent-1", user, max_positions=2, capital=Decimal(1000))
        ledger.set_enabled("agent-1", False, "operator: maintenance window")
    assert not (state / "ledger.sqlite").exists()  # the shared database holds the books

    code, out, err = run_cli(args(fleet, state, "agents", "list"), capsys)
    assert code == 0, err
    assert "maintenance window" in out

    code, out, err = run_cli(args(fleet, state, "trades", "--id", "agent-1", "--json"), capsys)
    assert code == 0, err  # agent-1 is known to the PostgreSQL ledger: no 'unknown agent'

    code, out, err = run_cli(args(fleet, state, "doctor", "--id", "agent-1", "--json"), capsys)
    checks = [c for c in json.loads(out)["checks"] if c["name"] == "ledger"]
    assert len(checks) == 1 and checks[0]["status"] == "PASS", checks
    assert "postgresql://" in checks[0]["detail"], checks
    assert not (state / "ledger.sqlite").exists()  # doctor made no local file on the way

    report = tmp_path / "report.html"
    code, out, err = run_cli(args(fleet, state, "report", "--out", str(report)), capsys)
    assert code == 0, err
    assert "agent-1" in report.read_text()
