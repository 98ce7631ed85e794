"""The simulated exchange's trading engine, driven over real loopback HTTP."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from aster_agents.sim.server import SimAccount, SimServer
from tests.kit.wait import wait_for
from tests.plugins.sim import SIM_BALANCE, SignedClient, SimKeys

D = Decimal
ORDER = "/fapi/v3/order"


def _order(client: SignedClient, **params: str) -> httpx.Response:
    return client.send("POST", ORDER, {"symbol": "BTCUSDT", **params})


def _ok(client: SignedClient, method: str, path: str, **params: str) -> Any:
    return client.ok(method, path, params)


def _code(response: httpx.Response) -> int:
    assert response.status_code >= 400, response.text
    return int(response.json()["code"])


def _market(client: SignedClient, side: str, qty: str, **extra: str) -> Any:
    response = _order(
        client, side=side, type="MARKET", quantity=qty, newOrderRespType="RESULT", **extra
    )
    assert response.status_code == 200, response.text
    return response.json()


def _position(client: SignedClient, symbol: str = "BTCUSDT", side: str = "BOTH") -> Decimal:
    rows = _ok(client, "GET", "/fapi/v3/positionRisk", symbol=symbol)
    return sum((D(r["positionAmt"]) for r in rows if r["positionSide"] == side), D(0))


def test_market_order_fills_at_the_book_and_books_a_trade(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """A MARKET BUY fills at the ask, opens a position and appears in userTrades and income."""
    sim_server.market.pin("BTCUSDT", D("50000.0"))
    _, ask = sim_server.market.book("BTCUSDT")
    order = _market(sim_client, "BUY", "0.010")
    assert (order["status"], D(order["avgPrice"]), order["executedQty"]) == ("FILLED", ask, "0.01")
    assert _position(sim_client) == D("0.01")
    trades = _ok(sim_client, "GET", "/fapi/v3/userTrades", symbol="BTCUSDT")
    assert [(t["orderId"], D(t["commission"])) for t in trades] == [
        (order["orderId"], (ask * D("0.01") * D("0.00035")).quantize(D("1e-8")))
    ]
    income = _ok(sim_client, "GET", "/fapi/v3/income", incomeType="COMMISSION")
    assert D(income[0]["income"]) == -D(trades[0]["commission"])


def test_fills_fees_and_realized_pnl_reconcile(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """Balance change equals sum(realizedPnl) - sum(commission) over a scripted sequence."""
    pin = sim_server.market.pin
    script = [
        ("50000.0", "BUY", "0.010"),
        ("50500.0", "BUY", "0.020"),
        ("51000.0", "SELL", "0.015"),
        ("49000.0", "SELL", "0.030"),
        ("48000.0", "BUY", "0.015"),
    ]
    for price, side, qty in script:
        pin("BTCUSDT", D(price))
        _market(sim_client, side, qty)
    pin("BTCUSDT", D("47000.0"))
    limit = _order(
        sim_client, side="SELL", type="LIMIT", timeInForce="GTC", quantity="0.005", price="47500.0"
    ).json()
    pin("BTCUSDT", D("47600.0"))
    wait_for(
        lambda: (
            _ok(sim_client, "GET", ORDER, symbol="BTCUSDT", orderId=str(limit["orderId"]))["status"]
            == "FILLED"
        )
    )
    pin("BTCUSDT", D("47000.0"))
    _market(sim_client, "BUY", "0.005")
    assert _position(sim_client) == 0
    trades = _ok(sim_client, "GET", "/fapi/v3/userTrades", symbol="BTCUSDT")
    balance = D(_ok(sim_client, "GET", "/fapi/v3/balance")[0]["balance"])
    pnl = sum(D(t["realizedPnl"]) for t in trades)
    fees = sum(D(t["commission"]) for t in trades)
    assert len(trades) == 7 and any(t["maker"] for t in trades)
    assert pnl != 0 and balance - SIM_BALANCE == pnl - fees
    income = _ok(sim_client, "GET", "/fapi/v3/income", symbol="BTCUSDT", limit="1000")
    assert sum(D(i["income"]) for i in income) == pnl - fees


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"quantity": "0.0015"}, -1111),
        ({"quantity": "0.0001"}, -1111),
        ({"quantity": "0"}, -4003),
        ({"quantity": "1001"}, -4005),
        ({"price": "50000.05"}, -1111),
        ({"price": "0.5"}, -4013),
        ({"quantity": "0.001", "price": "1000.0"}, -4164),
        ({"symbol": "NOPEUSDT"}, -1121),
        ({"timeInForce": "XYZ"}, -1102),
        ({"newClientOrderId": "bad id!"}, -4015),
    ],
)
def test_filter_violations_are_rejected_with_documented_codes(
    sim_server: SimServer, sim_client: SignedClient, params: dict[str, str], code: int
) -> None:
    """Precision, tick, step, quantity bounds, min notional and symbol errors use real codes."""
    sim_server.market.pin("BTCUSDT", D("50000.0"))
    base = {
        "side": "BUY",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "quantity": "0.010",
        "price": "49000.0",
    }
    assert _code(_order(sim_client, **{**base, **params})) == code


def test_step_and_tick_multiples(sim_server: SimServer, sim_client: SignedClient) -> None:
    """ETHUSDT has tick 0.10 with 2 price decimals and SOLUSDT step 0.01: off-grid values fail."""
    sim_server.market.pin("ETHUSDT", D("3000.00"))
    eth = {"symbol": "ETHUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
    assert (
        _code(sim_client.send("POST", ORDER, {**eth, "quantity": "0.1", "price": "2990.05"}))
        == -4014
    )
    sim_server.market.pin("XRPUSDT", D("2.0000"))
    xrp = {"symbol": "XRPUSDT", "side": "BUY", "type": "MARKET", "quantity": "10.05"}
    assert _code(sim_client.send("POST", ORDER, xrp)) == -1111


def test_margin_insufficient(sim_server: SimServer, sim_keys: SimKeys) -> None:
    """An order whose margin exceeds the available balance is refused with -2019."""
    sim_server.engine.accounts[sim_keys.user.lower()].balance = D("10")
    client = SignedClient(sim_server.base_url, sim_keys.agents[0], sim_keys.user)
    try:
        sim_server.market.pin("BTCUSDT", D("50000.0"))
        assert _code(_order(client, side="BUY", type="MARKET", quantity="0.01")) == -2019
        assert _order(client, side="BUY", type="MARKET", quantity="0.002").status_code == 200
    finally:
        client.close()


def test_limit_order_time_in_force(sim_server: SimServer, sim_client: SignedClient) -> None:
    """GTX that would take is rejected; IOC/FOK that cannot fill expire; GTC rests."""
    sim_server.market.pin("BTCUSDT", D("50000.0"))
    common = {"side": "BUY", "type": "LIMIT", "quantity": "0.010"}
    assert _code(_order(sim_client, **common, timeInForce="GTX", price="50100.0")) == -5022
    for tif in ("IOC", "FOK"):
        order = _order(
            sim_client, **common, timeInForce=tif, price="49000.0", newOrderRespType="RESULT"
        ).json()
        assert order["status"] == "EXPIRED"
    resting = _order(sim_client, **common, timeInForce="GTC", price="49000.0").json()
    assert resting["status"] == "NEW"
    opened = _ok(sim_client, "GET", "/fapi/v3/openOrders", symbol="BTCUSDT")
    assert [o["orderId"] for o in opened] == [resting["orderId"]]


def test_stop_market_close_position_triggers_on_mark(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """STOP_MARKET closePosition refuses an immediate trigger and closes when the mark crosses."""
    pin = sim_server.market.pin
    pin("BTCUSDT", D("50000.0"))
    _market(sim_client, "BUY", "0.020")
    stop = {"side": "SELL", "type": "STOP_MARKET", "closePosition": "true"}
    assert _code(_order(sim_client, **stop, stopPrice="50100.0")) == -2021
    order = _order(sim_client, **stop, stopPrice="49500.0").json()
    assert (order["status"], order["origQty"]) == ("NEW", "0")
    pin("BTCUSDT", D("49400.0"))
    wait_for(lambda: _position(sim_client) == 0)
    done = _ok(sim_client, "GET", ORDER, symbol="BTCUSDT", orderId=str(order["orderId"]))
    assert (done["status"], done["executedQty"]) == ("FILLED", "0.02")


def test_take_profit_reduce_only_and_reduce_only_rejection(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """TAKE_PROFIT_MARKET reduceOnly closes at most the position; reduceOnly with none is -2022."""
    pin = sim_server.market.pin
    pin("BTCUSDT", D("50000.0"))
    reduce = {"side": "SELL", "type": "MARKET", "quantity": "0.010", "reduceOnly": "true"}
    assert _code(_order(sim_client, **reduce)) == -2022
    _market(sim_client, "BUY", "0.010")
    tp = _order(
        sim_client,
        side="SELL",
        type="TAKE_PROFIT_MARKET",
        stopPrice="51000.0",
        quantity="0.050",
        reduceOnly="true",
    ).json()
    pin("BTCUSDT", D("51200.0"))
    wait_for(lambda: _position(sim_client) == 0)
    done = _ok(sim_client, "GET", ORDER, symbol="BTCUSDT", orderId=str(tp["orderId"]))
    assert done["executedQty"] == "0.01"
    pnl = _ok(sim_client, "GET", "/fapi/v3/userTrades", symbol="BTCUSDT")[-1]["realizedPnl"]
    assert D(pnl) > 0


def test_client_order_ids_unique_among_open_orders(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """A duplicate open newClientOrderId is refused; after a cancel the id is free again."""
    sim_server.market.pin("BTCUSDT", D("50000.0"))
    params = {
        "side": "BUY",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "quantity": "0.010",
        "price": "49000.0",
        "newClientOrderId": "a01-000001-open",
    }
    first = _order(sim_client, **params).json()
    assert _code(_order(sim_client, **params)) == -4116
    by_id = _ok(
        sim_client,
        "GET",
        "/fapi/v3/openOrder",
        symbol="BTCUSDT",
        origClientOrderId="a01-000001-open",
    )
    assert by_id["orderId"] == first["orderId"]
    _ok(sim_client, "DELETE", ORDER, symbol="BTCUSDT", origClientOrderId="a01-000001-open")
    assert _order(sim_client, **params).status_code == 200
    ids = [o.client_order_id for o in sim_server.engine.all_orders_ever()]
    assert ids.count("a01-000001-open") == 2


def test_cancel_query_and_cancel_all(sim_server: SimServer, sim_client: SignedClient) -> None:
    """Unknown orders give -2013; cancel-all answers code "200" and empties the book."""
    sim_server.market.pin("BTCUSDT", D("50000.0"))
    assert _code(sim_client.send("GET", ORDER, {"symbol": "BTCUSDT", "orderId": "42"})) == -2013
    assert _code(sim_client.send("DELETE", ORDER, {"symbol": "BTCUSDT", "orderId": "42"})) == -2013
    for price in ("49000.0", "48000.0"):
        _order(
            sim_client, side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.010", price=price
        )
    done = _ok(sim_client, "DELETE", "/fapi/v3/allOpenOrders", symbol="BTCUSDT")
    assert done == {"code": "200", "msg": "The operation of cancel all open order is done."}
    assert _ok(sim_client, "GET", "/fapi/v3/openOrders") == []
    everything = _ok(sim_client, "GET", "/fapi/v3/allOrders", symbol="BTCUSDT")
    assert [o["status"] for o in everything] == ["CANCELED", "CANCELED"]


def test_modify_order(sim_server: SimServer, sim_client: SignedClient) -> None:
    """PUT /order changes price and quantity of an open LIMIT order."""
    sim_server.market.pin("BTCUSDT", D("50000.0"))
    order = _order(
        sim_client, side="BUY", type="LIMIT", timeInForce="GTC", quantity="0.010", price="49000.0"
    ).json()
    changed = sim_client.ok(
        "PUT",
        ORDER,
        {"symbol": "BTCUSDT", "orderId": order["orderId"], "quantity": "0.020", "price": "49100.0"},
    )
    assert isinstance(changed, dict)
    assert (changed["origQty"], changed["price"]) == ("0.02", "49100")


def test_hedge_mode_positions(sim_server: SimServer, sim_client: SignedClient) -> None:
    """In hedge mode LONG and SHORT coexist; BOTH is refused; switching back needs no positions."""
    sim_server.market.pin("BTCUSDT", D("50000.0"))
    _ok(sim_client, "POST", "/fapi/v3/positionSide/dual", dualSidePosition="true")
    assert _ok(sim_client, "GET", "/fapi/v3/positionSide/dual") == {"dualSidePosition": True}
    assert _code(_order(sim_client, side="BUY", type="MARKET", quantity="0.010")) == -4061
    _market(sim_client, "BUY", "0.010", positionSide="LONG")
    _market(sim_client, "SELL", "0.020", positionSide="SHORT")
    assert (_position(sim_client, side="LONG"), _position(sim_client, side="SHORT")) == (
        D("0.01"),
        D("-0.02"),
    )
    assert (
        _code(sim_client.send("POST", "/fapi/v3/positionSide/dual", {"dualSidePosition": "false"}))
        == -4068
    )
    _market(sim_client, "SELL", "0.010", positionSide="LONG")
    assert _position(sim_client, side="LONG") == 0


def test_leverage_and_margin_type(sim_client: SignedClient) -> None:
    """Leverage and margin type are stored per symbol and shown by positionRisk."""
    lev = _ok(sim_client, "POST", "/fapi/v3/leverage", symbol="ETHUSDT", leverage="5")
    assert (lev["leverage"], lev["symbol"]) == (5, "ETHUSDT")
    assert _ok(
        sim_client, "POST", "/fapi/v3/marginType", symbol="ETHUSDT", marginType="ISOLATED"
    ) == {"code": 200, "msg": "success"}
    again = sim_client.send(
        "POST", "/fapi/v3/marginType", {"symbol": "ETHUSDT", "marginType": "ISOLATED"}
    )
    assert _code(again) == -4046
    row = _ok(sim_client, "GET", "/fapi/v3/positionRisk")[0]
    assert (row["symbol"], row["leverage"], row["marginType"]) == ("ETHUSDT", "5", "isolated")
    assert (
        _code(
            sim_client.send("POST", "/fapi/v3/leverage", {"symbol": "ETHUSDT", "leverage": "500"})
        )
        == -4028
    )


ACCOUNT_KEYS = {
    "feeTier",
    "canTrade",
    "totalWalletBalance",
    "totalUnrealizedProfit",
    "totalMarginBalance",
    "availableBalance",
    "totalInitialMargin",
    "totalMaintMargin",
    "assets",
    "positions",
}
POSITION_KEYS = {
    "symbol",
    "positionAmt",
    "entryPrice",
    "markPrice",
    "unRealizedProfit",
    "liquidationPrice",
    "leverage",
    "maxNotionalValue",
    "marginType",
    "isolatedMargin",
    "isAutoAddMargin",
    "positionSide",
    "updateTime",
}


def test_account_endpoints_have_the_documented_shape(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """balance, accountWithJoinMargin and positionRisk carry the section 2.2 fields."""
    sim_server.market.pin("BTCUSDT", D("50000.0"))
    _market(sim_client, "BUY", "0.010")
    balance = _ok(sim_client, "GET", "/fapi/v3/balance")[0]
    assert {
        "accountAlias",
        "asset",
        "balance",
        "crossWalletBalance",
        "crossUnPnl",
        "availableBalance",
        "maxWithdrawAmount",
        "updateTime",
    } <= set(balance)
    account = _ok(sim_client, "GET", "/fapi/v3/accountWithJoinMargin")
    assert set(account) >= ACCOUNT_KEYS
    assert account["positions"][0]["positionAmt"] == "0.01"
    assert set(_ok(sim_client, "GET", "/fapi/v3/account")) == set(account)
    risk = _ok(sim_client, "GET", "/fapi/v3/positionRisk")
    assert set(risk[0]) >= POSITION_KEYS and isinstance(risk[0]["updateTime"], int)
    rate = _ok(sim_client, "GET", "/fapi/v3/commissionRate", symbol="BTCUSDT")
    assert rate["takerCommissionRate"] == "0.00035"
    assert _ok(sim_client, "POST", "/fapi/v3/noop") == {"code": 200, "msg": "success"}


def test_accounts_added_at_runtime_are_separate(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """add_account registers a new main account with its own balance while running."""
    from tests.plugins.sim import new_keys

    keys = new_keys()
    sim_server.add_account(SimAccount(keys.user, keys.signers, D("123.45")))
    other = SignedClient(sim_server.base_url, keys.agents[1], keys.user)
    try:
        assert other.ok("GET", "/fapi/v3/balance")[0]["balance"] == "123.45000000"
    finally:
        other.close()


def test_batch_orders_place_and_cancel(sim_server: SimServer, sim_client: SignedClient) -> None:
    """POST batchOrders places each entry or reports its error; DELETE batchOrders cancels."""
    import json
    from urllib.parse import quote

    sim_server.market.pin("BTCUSDT", D("50000.0"))
    entry = {
        "symbol": "BTCUSDT",
        "side": "BUY",
        "type": "LIMIT",
        "timeInForce": "GTC",
        "quantity": "0.010",
        "price": "49000.0",
    }
    batch = json.dumps([entry, {**entry, "price": "49000.05"}], separators=(",", ":"))
    placed = sim_client.ok("POST", "/fapi/v3/batchOrders", [("batchOrders", quote(batch))])
    assert placed[0]["status"] == "NEW" and placed[1]["code"] == -1111
    ids = json.dumps([placed[0]["orderId"], 42])
    canceled = sim_client.ok(
        "DELETE", "/fapi/v3/batchOrders", [("symbol", "BTCUSDT"), ("orderIdList", quote(ids))]
    )
    assert canceled[0]["status"] == "CANCELED" and canceled[1]["code"] == -2013
