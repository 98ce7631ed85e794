"""`aster-agent conformance` against the simulator: passes, cleans up, catches a bad one."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aster_agents.agent.conformance import is_mainnet
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import Fleet, make_fleet

EXPECTED = {
    "one-way position mode",
    "signature with user",
    "signature without user",
    "nonce 30 s old accepted",
    "nonce 90 s old refused",
    "duplicate nonce refused",
    "unknown client order id gives -2013",
    "leverage",
    "margin type",
    "symbol is flat before trading",
    "noop spends an order's nonce",
    "MARKET entry, 36-char newClientOrderId",
    "X-MBX-USED-WEIGHT-1m and order-count headers",
    "userTrades by order id",
    "STOP_MARKET closePosition",
    "TAKE_PROFIT_MARKET closePosition",
    "reduce-only close",
    "listenKey",
}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(port=0, seed=11)) as server:
        yield server


def _run(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleet.command("conformance", "--id", "agent-1", *args),
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _open_orders(fleet: Fleet) -> list[str]:
    return [
        o.client_order_id
        for o in fleet.sim.engine.all_orders_ever()
        if o.user.lower() == fleet.user.lower() and o.is_open
    ]


def test_conformance_passes_against_the_simulator_and_cleans_up(
    sim: SimServer, tmp_path: Path
) -> None:
    """Every check PASSes (listenKey may SKIP on 404), JSON envelope, nothing left open."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=("BTCUSDT",))
    done = _run(fleet, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["version"] == 1 and doc["ok"] is True and doc["left_on_exchange"] == []
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    assert set(statuses) == EXPECTED
    bad = {
        n: s for n, s in statuses.items() if s != "PASS" and not (n == "listenKey" and s == "SKIP")
    }
    assert bad == {}, doc["checks"]
    if statuses["listenKey"] == "SKIP":
        assert "404" in next(c["detail"] for c in doc["checks"] if c["name"] == "listenKey")
    assert fleet.exchange_positions() == {} and _open_orders(fleet) == []
    entry = next(c for c in doc["checks"] if c["name"].startswith("MARKET entry"))
    assert "FILLED" in entry["detail"]


def test_conformance_fails_against_the_old_nonce_rule(tmp_path: Path) -> None:
    """A simulator with a 10 s nonce window: the 30 s check FAILs, exit 1, one line per check."""
    with SimServer(SimConfig(port=0, seed=11, nonce_window_s=10.0)) as sim:
        fleet = make_fleet(tmp_path, sim, ["agent-1"], symbols=("ETHUSDT",))
        done = _run(fleet)
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert any(
            line.startswith("FAIL  nonce 30 s old accepted: noop with a 30 s old nonce was refused")
            for line in lines
        ), done.stdout
        assert any(line.startswith("PASS  nonce 90 s old refused") for line in lines)
        assert fleet.exchange_positions() == {} and _open_orders(fleet) == []


def test_conformance_refuses_mainnet_without_the_flag(sim: SimServer, tmp_path: Path) -> None:
    """A mainnet base URL is refused with exit 2 and a one-line reason unless --allow-mainnet."""
    fleet = make_fleet(tmp_path, sim, ["agent-1"])
    path = fleet.config_dir / "agent-1.yaml"
    path.write_text(path.read_text().replace(sim.base_url, "https://fapi.asterdex.com"))
    done = _run(fleet)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--allow-mainnet" in done.stderr and "Traceback" not in done.stderr
    assert is_mainnet("https://fapi.asterdex.com")
    assert not is_mainnet("https://fapi.asterdex-testnet.com")
    assert not is_mainnet(sim.base_url)
