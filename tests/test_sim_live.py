"""``sim --market live``: a second simulator on loopback plays the real exchange upstream."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.wait import wait_for
from tests.plugins.sim import SignedClient, new_keys, start_sim_process

D = Decimal


@pytest.fixture
def upstream() -> Iterator[SimServer]:
    server = SimServer(SimConfig(seed=3))  # no accounts: a signed request could not succeed
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_live_market_mirrors_upstream_prices_and_matches_orders_locally(
    upstream: SimServer, tmp_path: Path
) -> None:
    """Klines and marks come from --upstream; a MARKET order fills here at its best ask."""
    keys = new_keys()
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(f"- user: '{keys.user}'\n  signers: ['{keys.signers[0]}']\n")
    upstream.market.pin("BTCUSDT", D("50000.0"))
    proc = start_sim_process(
        "--market", "live", "--upstream", upstream.base_url, "--accounts", str(accounts)
    )
    client = SignedClient(proc.base_url, keys.agents[0], keys.user)
    try:
        live = client.public("/fapi/v3/klines", symbol="ETHUSDT", interval="1h", limit=5).json()
        real = upstream.market.klines("ETHUSDT", "1h", limit=5)
        assert [r[:7] for r in live[:-1]] == [r[:7] for r in real[:-1]]  # closed candles
        upstream.market.pin("ETHUSDT", D("1234.56"))

        def mirrored() -> bool:
            doc = client.public("/fapi/v3/premiumIndex", symbol="ETHUSDT").json()
            return D(doc["markPrice"]) == D("1234.56")

        wait_for(mirrored, timeout=15, what="the pinned upstream mark on the live simulator")
        order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002"}
        client.ok("POST", "/fapi/v3/order", order)
        trade = client.ok("GET", "/fapi/v3/userTrades", {"symbol": "BTCUSDT"})[0]
        assert D(trade["price"]) == upstream.market.book("BTCUSDT")[1]
        assert upstream.engine.accounts == {}  # nothing but public data was asked upstream
    finally:
        client.close()
        assert proc.stop() == 0


def test_live_market_with_an_unreachable_upstream_exits_1_with_one_line() -> None:
    """--upstream nobody answers: one stderr line naming the URL, exit 1, no traceback."""
    cmd = [sys.executable, "-m", "aster_agents", "sim", "--market", "live"]
    args = ["--upstream", "http://127.0.0.1:9"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--upstream http://127.0.0.1:9" in lines[0]
    assert "Traceback" not in done.stderr
