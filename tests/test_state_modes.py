"""The state dir is owner-only: directories 0700, files 0600 (issue 23)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from aster_agents.ledger import Ledger, MarketDataCache
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import make_fleet
from tests.kit.wait import wait_for


@pytest.fixture
def sim() -> Iterator[SimServer]:
    server = SimServer(SimConfig(port=0, seed=7, speed=60.0))
    server.start()
    yield server
    server.stop()


def loose(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) that group or others can use."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode & ~want:
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


def test_a_ledger_created_by_any_command_is_owner_only(tmp_path: Path) -> None:
    """Opening a ledger (reconcile, rebalance, ...) under the default umask creates 0700/0600."""
    state = tmp_path / "state"
    with Ledger(state) as ledger:
        ledger.register_agent("agent-1", "0xabc", max_positions=1)
        MarketDataCache(state).get_or_fetch("k", 2**62, lambda: "v")
        names = {p.name for p in state.rglob("*")}
        assert {"ledger.sqlite3", "ledger.sqlite3-wal", "ledger.sqlite3-shm"} <= names
        assert loose(state) == []


@pytest.mark.slow
def test_an_agent_writes_nothing_group_or_others_can_read(sim: SimServer, tmp_path: Path) -> None:
    """After an agent traded: state, agents, cache and logs 0700; ledger, logs and caches 0600."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=["BTCUSDT"])
    fleet.start("agent-1")
    try:
        wait_for(lambda: fleet.exchange_positions(), timeout=60, what="a position")
    finally:
        assert fleet.stop_all() == {"agent-1": 0}, fleet.stderr("agent-1")[-2000:]
    for sub in ("agents", "cache", "logs"):
        assert (fleet.state_dir / sub).is_dir()
    assert (fleet.state_dir / "logs" / "agent-1.log").stat().st_size > 0
    assert loose(fleet.state_dir) == []
