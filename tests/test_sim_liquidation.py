"""The simulator's margin: brackets, liquidation price, liquidation, ADL, -2023, shocks."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from aster_agents.sim.brackets import maint_margin
from aster_agents.sim.server import Shock, SimConfig, SimServer
from tests.plugins.sim import SignedClient, SimKeys, new_keys

D = Decimal
BTC = "BTCUSDT"


@pytest.fixture
def pair() -> Iterator[tuple[SimServer, SignedClient, SignedClient]]:
    """A sim with no insurance fund; A has 1,000 USDT, B has 100,000, both trading BTC."""
    a, b = new_keys(), new_keys()
    server = SimServer(
        SimConfig(seed=3, accounts=(a.account(D(1000)), b.account(D(100_000))), insurance_fund=D(0))
    )
    server.start()
    server.market.pin(BTC, D("95000.0"))
    clients = [SignedClient(server.base_url, k.agents[0], k.user) for k in (a, b)]
    try:
        yield server, clients[0], clients[1]
    finally:
        for c in clients:
            c.close()
        server.stop()


def _open(client: SignedClient, side: str, qty: str, leverage: int = 20) -> None:
    client.ok("POST", "/fapi/v3/leverage", {"symbol": BTC, "leverage": leverage})
    client.ok(
        "POST", "/fapi/v3/order", {"symbol": BTC, "side": side, "type": "MARKET", "quantity": qty}
    )


def _risk(client: SignedClient) -> dict[str, Any]:
    rows = client.ok("GET", "/fapi/v3/positionRisk", {"symbol": BTC})
    return dict(rows[0])


def _trades(client: SignedClient) -> list[dict[str, Any]]:
    return list(client.ok("GET", "/fapi/v3/userTrades", {"symbol": BTC}))


def _coid(client: SignedClient, order_id: int) -> str:
    doc = client.ok("GET", "/fapi/v3/order", {"symbol": BTC, "orderId": order_id})
    return str(doc["clientOrderId"])


def test_leverage_bracket_has_the_documented_shape(sim_client: SignedClient) -> None:
    """leverageBracket: one object per symbol with tiers whose cum keeps margin continuous."""
    doc = sim_client.ok("GET", "/fapi/v3/leverageBracket", {"symbol": BTC})
    assert doc["symbol"] == BTC
    tiers = doc["brackets"]
    assert set(tiers[0]) == {
        "bracket",
        "initialLeverage",
        "notionalCap",
        "notionalFloor",
        "maintMarginRatio",
        "cum",
    }
    for low, high in itertools.pairwise(tiers):
        edge = D(high["notionalFloor"])
        assert edge * D(str(low["maintMarginRatio"])) - D(str(low["cum"])) == edge * D(
            str(high["maintMarginRatio"])
        ) - D(str(high["cum"]))
    every = sim_client.ok("GET", "/fapi/v3/leverageBracket")
    assert isinstance(every, list) and len(every) > 1


def test_liquidation_price_is_where_margin_meets_maintenance(
    pair: tuple[SimServer, SignedClient, SignedClient],
) -> None:
    """positionRisk's liquidationPrice: the account is safe a tick above it, liquidated below."""
    server, a, _b = pair
    _open(a, "BUY", "0.200")
    risk = _risk(a)
    liq = D(risk["liquidationPrice"])
    entry = D(risk["entryPrice"])
    wallet = server.engine.balance(a.user or "")
    # margin balance at liq equals the maintenance margin there (to a tick of rounding)
    at_liq = wallet + (liq - entry) * D("0.2")
    assert abs(at_liq - maint_margin(BTC, liq * D("0.2"))) < D("0.05")
    server.market.pin(BTC, liq + D("0.5"))
    assert server.engine.position(a.user or "", BTC) == D("0.2")
    server.market.pin(BTC, liq - D("1.0"))
    server.engine.tick()
    assert server.engine.position(a.user or "", BTC) == 0


def test_liquidation_closes_with_autoclose_and_fee_and_refuses_orders(
    pair: tuple[SimServer, SignedClient, SignedClient],
) -> None:
    """A crash below the liquidation price: autoclose- order, fee charged, -2023 meanwhile."""
    server, a, _b = pair
    _open(a, "BUY", "0.200")
    stop = {"symbol": BTC, "side": "SELL", "type": "STOP_MARKET", "stopPrice": "80000"}
    a.ok("POST", "/fapi/v3/order", {**stop, "closePosition": "true"})
    liq = D(_risk(a)["liquidationPrice"])
    server.market.pin(BTC, liq - D("2.0"))
    refused = a.send(
        "POST", "/fapi/v3/order", {"symbol": BTC, "side": "BUY", "type": "MARKET", "quantity": "1"}
    )
    assert refused.status_code == 400 and refused.json()["code"] == -2023
    assert a.ok("GET", "/fapi/v3/openOrders", {"symbol": BTC}) == []  # the stop was cancelled
    last = _trades(a)[-1]
    assert _coid(a, int(last["orderId"])).startswith("autoclose-")
    assert D(last["price"]) == liq - D("2.0") and D(last["commission"]) > 0
    forced = a.ok("GET", "/fapi/v3/forceOrders", {"autoCloseType": "LIQUIDATION"})
    assert [o["orderId"] for o in forced] == [last["orderId"]]
    income = a.ok("GET", "/fapi/v3/income", {"symbol": BTC})
    kinds = {(i["incomeType"], str(i["tradeId"])) for i in income}
    assert {("REALIZED_PNL", str(last["id"])), ("COMMISSION", str(last["id"]))} <= kinds
    assert server.engine.balance(a.user or "") >= 0


def test_a_gap_past_bankruptcy_deleverages_the_other_side(
    pair: tuple[SimServer, SignedClient, SignedClient],
) -> None:
    """No insurance fund and a 10% gap: A closes at bankruptcy, B's short goes by ADL."""
    server, a, b = pair
    _open(a, "BUY", "0.200")
    _open(b, "SELL", "0.100", leverage=5)
    server.market.pin(BTC, D("85500.0"))  # a 10% gap
    server.engine.tick()
    assert server.engine.position(a.user or "", BTC) == 0
    assert server.engine.position(b.user or "", BTC) == 0
    assert D(0) <= server.engine.balance(a.user or "") < D("0.01")
    b_last = _trades(b)[-1]
    assert _coid(b, int(b_last["orderId"])) == "adl_autoclose"
    assert D(b_last["commission"]) == 0
    assert D(b_last["price"]) == D(_trades(a)[-1]["price"])  # both at A's bankruptcy price
    assert b.ok("GET", "/fapi/v3/forceOrders", {"autoCloseType": "ADL"})


def test_adl_quantile_ranks_the_position(
    pair: tuple[SimServer, SignedClient, SignedClient],
) -> None:
    """adlQuantile: 0 with no position, 1-4 with one."""
    _server, a, _b = pair
    assert a.ok("GET", "/fapi/v3/adlQuantile") == []
    _open(a, "BUY", "0.010")
    rows = a.ok("GET", "/fapi/v3/adlQuantile")
    assert rows[0]["symbol"] == BTC and 1 <= rows[0]["adlQuantile"]["BOTH"] <= 4


def test_shock_moves_the_mark_from_its_time(sim_keys: SimKeys) -> None:
    """A configured shock leaves prices alone before its time and moves the mark after it."""
    server = SimServer(
        SimConfig(seed=2, start_time_ms=1_780_000_000_000, shocks=(Shock.parse("ETHUSDT:-30@60"),))
    )
    start = server.market.freeze()
    before = server.market.mark("ETHUSDT", start + 59_000)
    path = server.market.raw_price("ETHUSDT", start + 61_000)
    after = server.market.mark("ETHUSDT", start + 61_000)
    assert abs(before - D(str(server.market.raw_price("ETHUSDT", start + 59_000)))) < 1
    assert abs(after - D(str(path)) * D("0.7")) < 1


@pytest.mark.parametrize("bad", ["BTCUSDT", "NOPE:-5@1", "BTCUSDT:-100@1", "BTCUSDT:x@1"])
def test_sim_cli_rejects_a_bad_shock(bad: str) -> None:
    """--shock with a bad value: exit 2 and a message naming the option, no traceback."""
    cmd = [sys.executable, "-m", "aster_agents", "sim", "--port", "0", "--shock", bad]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert "--shock" in done.stderr and "Traceback" not in done.stderr
