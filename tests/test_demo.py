"""``aster-agent demo``: trades happen, and nothing is left running or on disk afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aster_agents.config.schema import load_fleet
from aster_agents.fleet.demo import (
    DemoKeys,
    demo_agent_docs,
    demo_overrides,
    pick_agents,
    why_no_trade,
    write_config_dir,
)
from aster_agents.ledger.liveness import pid_alive
from tests.kit.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).parent / "aster-agent")


def _demo(*args: str) -> list[str]:
    return [BIN, "--config-dir", str(REPO / "agents.d"), "demo", *args]


def _assert_gone(doc: dict[str, object]) -> None:
    pids = [doc["supervisord_pid"], *doc["agent_pids"]]  # type: ignore[misc]
    assert all(isinstance(p, int) for p in pids) and len(pids) > 1
    assert not [p for p in pids if pid_alive(int(p))]  # type: ignore[call-overload]
    directory = Path(str(doc["directory"]))
    assert not directory.exists(), f"{directory} left behind"


def test_demo_agents_keep_strategies_and_scale_intervals() -> None:
    """Demo agents keep the shipped strategies, use generated wallets and the sim URL."""
    shipped = load_fleet(REPO / "agents.d")
    agents = pick_agents(shipped, 3)
    keys = DemoKeys.generate(3)
    docs = demo_agent_docs(agents, keys, "http://127.0.0.1:1", 60.0)
    assert list(docs) == [a.id for a in agents]
    for agent, doc in zip(agents, docs.values(), strict=True):
        assert doc["trading"]["strategy"] == agent.trading.strategy
        assert doc["trading"]["scan_interval_seconds"] == max(
            1.0, agent.trading.scan_interval_seconds / 60
        )
        assert doc["exchange"]["user"] == keys.user
        assert doc["exchange"]["base_url"] == "http://127.0.0.1:1"
    assert all(k not in repr(keys) for k in (keys.main, *keys.agents))


def test_demo_picks_agents_in_natural_order_and_says_what_it_overrides(tmp_path: Path) -> None:
    """--agents 3 is agent-1..3 (not agent-1, agent-10, agent-2); a raised limit is named."""
    shipped = load_fleet(REPO / "agents.d")
    agents = pick_agents(shipped, 3)
    assert [a.id for a in agents] == ["agent-1", "agent-2", "agent-3"]
    docs = demo_agent_docs(pick_agents(shipped, None), DemoKeys.generate(10), "http://x:1", 60.0)
    demo = load_fleet(write_config_dir(tmp_path, docs, shipped))
    notes = demo_overrides(shipped, demo, 60.0)
    assert notes[1].startswith("limits.max_total_positions 10 -> ")


def test_why_no_trade_reads_the_agents_log(tmp_path: Path) -> None:
    """The summary's reason is the agent's last "no trade:" line, else its confidence bar."""
    agent = load_fleet(REPO / "agents.d").agent("agent-8")
    assert why_no_trade(tmp_path, agent) == "no signal reached min_confidence 0.5"
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "agent-8.log").write_text(
        "2026-12-06 10:00:00.000 | INFO    | agent-8 | no trade: SOLUSDT: symbol owned by a\n"
        "2026-12-06 10:00:01.000 | INFO    | agent-8 | no trade: XRPUSDT: symbol owned by b\n"
    )
    assert why_no_trade(tmp_path, agent) == "XRPUSDT: symbol owned by b"


@pytest.mark.slow
def test_demo_trades_and_leaves_nothing_behind() -> None:
    """demo --agents 3 --duration 20 --json exits 0 with trades; no process or file remains."""
    result = subprocess.run(
        _demo("--agents", "3", "--duration", "20", "--json"),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert doc["version"] == 1
    demo = doc["demo"]
    assert demo["trades"] > 0
    assert len(demo["agents"]) == 3
    assert sum(a["trades"] for a in demo["agents"]) == demo["trades"]
    assert demo["account"]["pnl"] == demo["pnl"]  # ledger P&L equals the exchange's
    assert [a["id"] for a in demo["agents"]] == ["agent-1", "agent-2", "agent-3"]  # natural
    assert all(a["why_no_trade"] for a in demo["agents"] if not a["trades"])
    assert "scan intervals divided by 60 (the market runs 60x)" in demo["overrides"]
    _assert_gone(demo)


@pytest.mark.slow
def test_demo_sigint_tears_everything_down() -> None:
    """Ctrl-C (SIGINT) in the middle still stops supervisord and the agents and removes the dir."""
    proc = subprocess.Popen(
        _demo("--agents", "2", "--duration", "120", "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:  # progress lines go to stderr in --json mode
        if "agents running 2/2" in line or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    demo = json.loads(out)["demo"]
    assert demo["interrupted"] is True
    _assert_gone(demo)


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["demo", "--agents", "0"], "--agents: must be between 1 and"),
        (["--state-dir", "{tmp}", "demo"], "not empty; the demo needs a new or empty directory"),
    ],
)
def test_demo_refuses_bad_options(
    extra: list[str], expect: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad --agents or a non-empty --state-dir exit 2 before anything starts."""
    (tmp_path / "old-file").write_text("x")
    args = ["--config-dir", str(REPO / "agents.d"), *(a.format(tmp=tmp_path) for a in extra)]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert expect in err


@pytest.mark.slow
def test_demo_live_view_on_a_terminal() -> None:
    """On a terminal the demo redraws the status and portfolio views, then prints a summary."""
    env = dict(os.environ, FORCE_COLOR="1", TTY_COMPATIBLE="1")
    result = subprocess.run(
        _demo("--agents", "1", "--duration", "3"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "sleeves" in result.stdout  # the portfolio view
    assert "demo summary" in result.stdout
