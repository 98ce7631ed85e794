"""The demo's final check: after a run, ``portfolio`` equity equals the simulator's to the cent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.config.schema import load_fleet
from aster_agents.fleet.demo import (
    Demo,
    DemoOptions,
    _with_deadline,
    demo_agent_docs,
    write_config_dir,
)
from aster_agents.ledger.liveness import pid_alive
from aster_agents.sim.server import SimConfig, SimServer

REPO = Path(__file__).resolve().parent.parent
BIN = str(Path(sys.executable).parent / "aster-agent")
QUICK = ("agent-1", "agent-4", "agent-8")  # scalper, mean reversion, aggressive: 1m candles
CENT = Decimal("0.01")


def quick_fleet(root: Path) -> Path:
    """A copy of the shipped agents that trade within seconds at x60."""
    config = root / "shipped"
    config.mkdir()
    for name in ("_portfolio", *QUICK):
        shutil.copy(REPO / "agents.d" / f"{name}.yaml", config / f"{name}.yaml")
    return config


def aster(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.slow
def test_portfolio_equity_equals_the_simulator_after_a_demo(tmp_path: Path) -> None:
    """demo, then `portfolio --json` in another process: equity == sim equity (< 0.01), funded."""
    run = tmp_path / "run"
    result = aster(
        "--config-dir",
        str(quick_fleet(tmp_path)),
        "--state-dir",
        str(run),
        "demo",
        "--duration",
        "30",
        "--json",
        timeout=150,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    demo = json.loads(result.stdout)["demo"]
    books = demo["books"]
    assert demo["trades"] > 0 and demo["kept"] is True
    assert books["errors"] == [] and books["agree"] is True, books
    assert books["reconcile"] == {
        "ok": True,
        "repairs": books["reconcile"]["repairs"],
        "differences": [],
    }
    assert books["funding"]["events"] >= 1, books  # settled while positions were open
    assert not [p for p in [demo["supervisord_pid"], *demo["agent_pids"]] if pid_alive(p)]
    shown = aster(
        "--config-dir",
        str(run / "agents.d"),
        "--state-dir",
        str(run / "state"),
        "portfolio",
        "--json",
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    portfolio = json.loads(shown.stdout)["portfolio"]
    assert abs(Decimal(portfolio["equity"]) - Decimal(books["exchange_equity"])) < CENT
    assert Decimal(portfolio["equity"]) == Decimal(books["equity"])


def test_a_failing_final_reconcile_is_reported_not_raised(tmp_path: Path) -> None:
    """A simulator that refuses the demo's keys: check_books returns errors, raises nothing."""
    shipped = load_fleet(quick_fleet(tmp_path))
    demo = Demo(shipped, DemoOptions(agents=1, directory=tmp_path / "run"))
    sim = SimServer(SimConfig(speed=60.0))  # the demo's account is not registered there
    url = sim.start()
    try:
        docs = demo_agent_docs(demo.agents, demo.keys, url, 60.0)
        demo.sim, demo.agent_ids = sim, list(docs)
        demo.fleet = load_fleet(write_config_dir(demo.directory, docs, shipped))
        demo.state_dir.mkdir(parents=True)
        books = demo.check_books()
    finally:
        sim.stop()
    assert books.reconcile_ok is None and books.agree is False
    assert [e.split(":")[0] for e in books.errors][:1] == ["reconcile"], books.errors
    text = json.dumps(books.to_json())
    assert all(k not in text for k in (demo.keys.main, *demo.keys.agents))


def test_with_deadline_gives_up_on_a_hang_and_passes_errors_on() -> None:
    """The final reconcile runs under a deadline: a hang is a TimeoutError, an error re-raised."""
    release = threading.Event()
    try:
        with pytest.raises(TimeoutError, match="final reconcile did not finish within 0 s"):
            _with_deadline(lambda: release.wait(30), 0.05, "final reconcile")
    finally:
        release.set()
    with pytest.raises(ZeroDivisionError):
        _with_deadline(lambda: 1 // 0, 5.0, "sum")
    assert _with_deadline(lambda: 42, 5.0, "answer") == 42
