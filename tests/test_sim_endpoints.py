"""The endpoints independent Aster clients call, on the simulator over real loopback HTTP.

Raw signed requests (``SignedClient``) pin the wire shapes and error codes; the project's
``AsterClient`` is driven against the same server for the calls it makes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from aster_agents.errors import ListenKeyInvalid, OrderRejected
from aster_agents.exchange.http import AsterClient
from aster_agents.models import OrderRequest, OrderStatus, OrderType, Side, StpMode, TimeInForce
from aster_agents.signing import NonceSource
from aster_agents.sim.server import SimConfig, SimServer
from aster_agents.sim.symbols import MAX_NUM_ALGO_ORDERS, MAX_NUM_ORDERS
from tests.kit.wait import wait_for
from tests.plugins.sim import SignedClient, SimKeys

D = Decimal
BTC = "BTCUSDT"
ORDER = "/fapi/v3/order"


def _code(response: httpx.Response) -> int:
    assert response.status_code >= 400, response.text
    return int(response.json()["code"])


@pytest.fixture
def agent2(sim_server: SimServer, sim_keys: SimKeys) -> Iterator[SignedClient]:
    client = SignedClient(sim_server.base_url, sim_keys.agents[1], sim_keys.user)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def client(sim_server: SimServer, sim_keys: SimKeys) -> Iterator[AsterClient]:
    with AsterClient(
        sim_server.base_url, user=sim_keys.user, signer=sim_keys.agents[0], nonces=NonceSource(3)
    ) as c:
        yield c


def _limit(client: SignedClient, side: str, price: str, qty: str = "0.010", **extra: str) -> Any:
    params = {"symbol": BTC, "side": side, "type": "LIMIT", "timeInForce": "GTC"}
    params |= {"quantity": qty, "price": price, "newOrderRespType": "RESULT", **extra}
    return client.ok("POST", ORDER, params)


# --- public market data ------------------------------------------------------------------


def test_trade_tape_endpoints_have_the_documented_shapes(sim_client: SignedClient) -> None:
    """trades, historicalTrades and aggTrades answer ascending, consistent, documented rows."""
    recent = sim_client.public("/fapi/v3/trades", symbol=BTC, limit=20).json()
    assert len(recent) == 20
    assert set(recent[0]) == {"id", "price", "qty", "quoteQty", "time", "isBuyerMaker"}
    ids = [t["id"] for t in recent]
    assert ids == sorted(ids) and ids[-1] - ids[0] == 19
    assert D(recent[0]["quoteQty"]) == D(recent[0]["price"]) * D(recent[0]["qty"])
    old = sim_client.public("/fapi/v3/historicalTrades", symbol=BTC, fromId=ids[0], limit=5)
    assert old.json() == recent[:5]
    agg = sim_client.public(
        "/fapi/v3/aggTrades", symbol=BTC, startTime=recent[2]["time"], endTime=recent[4]["time"]
    ).json()
    assert [(a["a"], a["f"], a["l"], a["p"], a["T"]) for a in agg] == [
        (t["id"], t["id"], t["id"], t["price"], t["time"]) for t in recent[2:5]
    ]
    hour = sim_client.public("/fapi/v3/aggTrades", symbol=BTC, startTime=0, endTime=3_600_000)
    assert _code(hour) == -1127
    assert _code(sim_client.public("/fapi/v3/trades", symbol=BTC, limit=1001)) == -1130


def test_funding_info_open_interest_and_index_references(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """fundingInfo lists every symbol; openInterest counts longs; indexreferences weighs venues."""
    info = sim_client.public("/fapi/v3/fundingInfo").json()
    assert {row["symbol"] for row in info} >= {BTC, "ETHUSDT"}
    one = sim_client.public("/fapi/v3/fundingInfo", symbol=BTC).json()
    assert len(one) == 1 and one[0]["fundingIntervalHours"] == 8
    assert one[0]["fundingFeeFloor"] == -one[0]["fundingFeeCap"]
    sim_server.market.freeze()
    before = D(sim_client.public("/fapi/v3/openInterest", symbol=BTC).json()["openInterest"])
    sim_client.ok(
        "POST", ORDER, {"symbol": BTC, "side": "BUY", "type": "MARKET", "quantity": "0.5"}
    )
    after = sim_client.public("/fapi/v3/openInterest", symbol=BTC).json()
    assert D(after["openInterest"]) - before == D("0.5") and after["symbol"] == BTC
    refs = sim_client.public("/fapi/v3/indexreferences", symbol=BTC).json()
    assert refs["symbol"] == BTC and sum(D(r["weight"]) for r in refs["references"]) == 1
    assert _code(sim_client.public("/fapi/v3/indexreferences", symbol="NOPEUSDT")) == -1000
    assert sim_client.public("/fapi/v1/fundingInfo").status_code == 200


_PUBLIC = ("trades", "historicalTrades", "aggTrades", "fundingInfo", "openInterest")
_SIGNED = (
    ("GET", "multiAssetsMargin"),
    ("POST", "multiAssetsMargin"),
    ("POST", "positionMargin"),
    ("GET", "positionMargin/history"),
    ("POST", "listenKey"),
    ("PUT", "listenKey"),
    ("DELETE", "listenKey"),
    ("POST", "countdownCancelAll"),
    ("POST", "batchOrders"),
    ("DELETE", "batchOrders"),
    ("GET", "stpMode"),
    ("POST", "stpMode"),
    ("GET", "commissionRate"),
    ("POST", "order/test"),
)


def test_no_endpoint_real_clients_call_answers_404(sim_client: SignedClient) -> None:
    """Each listed endpoint answers 200 or a documented JSON error, even without parameters."""
    answers = [sim_client.public(f"/fapi/v3/{path}") for path in (*_PUBLIC, "indexreferences")]
    answers += [sim_client.send(method, f"/fapi/v3/{path}") for method, path in _SIGNED]
    for response in answers:
        assert response.status_code in (200, 400), (response.request.url, response.text)
        assert response.status_code == 200 or int(response.json()["code"]) < 0


# --- user-data stream key ----------------------------------------------------------------


def test_listen_key_is_shared_by_the_account_and_closed_for_all(
    sim_client: SignedClient, agent2: SignedClient
) -> None:
    """POST returns the account's active key to every agent; DELETE from one ends it for all."""
    key = sim_client.ok("POST", "/fapi/v3/listenKey")["listenKey"]
    assert len(key) == 64
    assert agent2.ok("POST", "/fapi/v3/listenKey") == {"listenKey": key}
    assert agent2.ok("PUT", "/fapi/v3/listenKey") == {}
    assert sim_client.ok("DELETE", "/fapi/v3/listenKey") == {}
    assert _code(agent2.send("PUT", "/fapi/v3/listenKey")) == -1125
    assert _code(agent2.send("DELETE", "/fapi/v3/listenKey")) == -1125
    fresh = agent2.ok("POST", "/fapi/v3/listenKey")["listenKey"]
    assert fresh != key
    assert _code(sim_client.send("PUT", "/fapi/v3/listenKey", {"listenKey": key})) == -1125


def test_listen_key_expires_without_keepalive(sim_keys: SimKeys) -> None:
    """A key not kept alive within its life is gone (-1125, ListenKeyInvalid in the client)."""
    config = SimConfig(seed=3, accounts=(sim_keys.account(),), listen_key_life_s=0.5)
    with (
        SimServer(config) as sim,
        AsterClient(
            sim.base_url, user=sim_keys.user, signer=sim_keys.agents[0], nonces=NonceSource(4)
        ) as c,
    ):
        key = c.start_listen_key()
        c.keepalive_listen_key()
        assert sim.app.listen_keys.active(sim_keys.user) == key
        wait_for(lambda: sim.app.listen_keys.active(sim_keys.user) is None)
        with pytest.raises(ListenKeyInvalid) as gone:
            c.keepalive_listen_key()
        assert gone.value.code == -1125
        assert c.start_listen_key() != key


# --- self-trade prevention ---------------------------------------------------------------


def _spread(sim: SimServer) -> tuple[Decimal, Decimal]:
    sim.market.pin(BTC, D("50000.0"))
    bid, ask = sim.market.book(BTC)
    assert ask - bid >= D("2.0"), "the test needs room inside the spread"
    return bid, ask


@pytest.mark.parametrize(
    ("mode", "maker_after", "taker_after"),
    [
        ("EXPIRE_TAKER", "NEW", "EXPIRED"),
        ("EXPIRE_MAKER", "EXPIRED", "NEW"),
        ("EXPIRE_BOTH", "EXPIRED", "EXPIRED"),
    ],
)
def test_two_agents_of_one_account_crossing_never_trade(
    sim_server: SimServer,
    sim_client: SignedClient,
    agent2: SignedClient,
    sim_keys: SimKeys,
    mode: str,
    maker_after: str,
    taker_after: str,
) -> None:
    """Agent 2's SELL crossing agent 1's resting BUY expires by the account's stpMode: no trade."""
    bid, ask = _spread(sim_server)
    assert sim_client.ok("POST", "/fapi/v3/stpMode", {"stpMode": mode})["code"] == 200
    assert agent2.ok("GET", "/fapi/v3/stpMode") == {"stpMode": mode}
    maker = _limit(sim_client, "BUY", str(ask - D("1.0")))
    taker = _limit(agent2, "SELL", str(bid + D("1.0")))
    assert maker["status"] == "NEW" and taker["status"] == taker_after
    query = {"symbol": BTC, "orderId": maker["orderId"]}
    assert sim_client.ok("GET", ORDER, query)["status"] == maker_after
    assert sim_server.engine.trades(sim_keys.user) == []
    assert sim_client.ok("GET", "/fapi/v3/userTrades", {"symbol": BTC}) == []
    assert sim_server.engine.position(sim_keys.user, BTC) == 0


def test_an_orders_own_stp_mode_overrides_the_account_and_market_orders_are_covered(
    sim_server: SimServer, sim_client: SignedClient, agent2: SignedClient, sim_keys: SimKeys
) -> None:
    """A MARKET taker meeting its account's resting order is expired under EXPIRE_TAKER."""
    bid, _ = _spread(sim_server)
    sim_client.ok("POST", "/fapi/v3/stpMode", {"stpMode": "EXPIRE_MAKER"})
    maker = _limit(sim_client, "SELL", str(bid + D("1.0")))
    params = {"symbol": BTC, "side": "BUY", "type": "MARKET", "quantity": "0.010"}
    params |= {"newOrderRespType": "RESULT", "stpMode": "EXPIRE_TAKER"}
    taker = agent2.ok("POST", ORDER, params)
    assert (taker["status"], taker["executedQty"]) == ("EXPIRED", "0")
    query = {"symbol": BTC, "orderId": maker["orderId"]}
    assert sim_client.ok("GET", ORDER, query)["status"] == "NEW"
    assert sim_server.engine.trades(sim_keys.user) == []
    bad = agent2.send("POST", "/fapi/v3/stpMode", {"stpMode": "NONE"})
    assert _code(bad) == -1102


def test_a_modified_order_that_crosses_its_account_is_the_taker(
    sim_server: SimServer, sim_client: SignedClient, agent2: SignedClient
) -> None:
    """PUT order moving a resting LIMIT across the account's other order applies STP too."""
    bid, ask = _spread(sim_server)
    sim_client.ok("POST", "/fapi/v3/stpMode", {"stpMode": "EXPIRE_TAKER"})
    buy = _limit(sim_client, "BUY", str(ask - D("1.0")))
    sell = _limit(agent2, "SELL", str(ask - D("0.5")))
    assert (buy["status"], sell["status"]) == ("NEW", "NEW")
    moved = {"symbol": BTC, "orderId": sell["orderId"], "quantity": "0.010"}
    modified = agent2.ok("PUT", ORDER, moved | {"price": str(bid + D("1.0"))})
    assert modified["status"] == "EXPIRED"
    query = {"symbol": BTC, "orderId": buy["orderId"]}
    assert sim_client.ok("GET", ORDER, query)["status"] == "NEW"


def test_two_project_clients_of_one_account_expire_the_taker(
    sim_server: SimServer, sim_keys: SimKeys, client: AsterClient
) -> None:
    """With EXPIRE_TAKER, agent 2's crossing LIMIT comes back EXPIRED and agent 1's still rests."""
    bid, ask = _spread(sim_server)
    client.set_stp_mode(StpMode.EXPIRE_TAKER)

    def limit(side: Side, price: Decimal, coid: str) -> OrderRequest:
        return OrderRequest(
            BTC, side, OrderType.LIMIT, coid, D("0.010"), price, time_in_force=TimeInForce.GTC
        )

    with AsterClient(
        sim_server.base_url, user=sim_keys.user, signer=sim_keys.agents[1], nonces=NonceSource(5)
    ) as other:
        resting = client.new_order(limit(Side.BUY, ask - D("1.0"), "a1-rest"))
        crossing = other.new_order(limit(Side.SELL, bid + D("1.0"), "a2-cross"))
        assert resting.status is OrderStatus.NEW and crossing.status is OrderStatus.EXPIRED
        assert [o.client_order_id for o in other.open_orders(BTC)] == ["a1-rest"]
        assert other.user_trades(BTC) == [] and client.user_trades(BTC) == []


def test_stp_mode_through_the_project_client(client: AsterClient, sim_server: SimServer) -> None:
    """AsterClient reads and sets the account's STP mode; the default is EXPIRE_MAKER."""
    assert client.stp_mode() is StpMode.EXPIRE_MAKER
    client.set_stp_mode(StpMode.EXPIRE_BOTH)
    assert client.stp_mode() is StpMode.EXPIRE_BOTH


# --- caps, order/test, batches, countdown --------------------------------------------------


def _stop(coid: str) -> OrderRequest:
    return OrderRequest(
        BTC, Side.SELL, OrderType.STOP_MARKET, coid, quantity=D("0.001"), stop_price=D("40000.0")
    )


def test_open_and_stop_order_caps_answer_2025_and_4045(
    sim_server: SimServer, client: AsterClient, sim_client: SignedClient
) -> None:
    """The MAX_NUM_ALGO_ORDERS-th+1 stop gives -4045, the MAX_NUM_ORDERS-th+1 order -2025."""
    sim_server.market.pin(BTC, D("50000.0"))
    for i in range(MAX_NUM_ALGO_ORDERS):
        client.new_order(_stop(f"stop-{i}"))
    with pytest.raises(OrderRejected) as stop_cap:
        client.new_order(_stop("stop-x"))
    assert stop_cap.value.code == -4045
    entry = {"symbol": BTC, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
    entry |= {"quantity": "0.001", "price": "40000.0"}
    for n in range((MAX_NUM_ORDERS - MAX_NUM_ALGO_ORDERS) // 5):
        batch = json.dumps([entry] * 5).replace('"', "'") if n % 2 else json.dumps([entry] * 5)
        placed = sim_client.ok("POST", "/fapi/v3/batchOrders", [("batchOrders", quote(batch))])
        assert all(p["status"] == "NEW" for p in placed), placed
    assert len(sim_client.ok("GET", "/fapi/v3/openOrders", {"symbol": BTC})) == MAX_NUM_ORDERS
    limit = OrderRequest(
        BTC,
        Side.BUY,
        OrderType.LIMIT,
        "one-too-many",
        quantity=D("0.001"),
        price=D("40000.0"),
        time_in_force=TimeInForce.GTC,
    )
    with pytest.raises(OrderRejected) as open_cap:
        client.new_order(limit)
    assert open_cap.value.code == -2025
    market = sim_client.ok(
        "POST", ORDER, {"symbol": BTC, "side": "BUY", "type": "MARKET", "quantity": "0.001"}
    )
    assert market["orderId"] > 0  # a MARKET order never rests: no cap


def test_order_test_validates_without_placing(
    sim_server: SimServer, client: AsterClient, sim_client: SignedClient, sim_keys: SimKeys
) -> None:
    """order/test answers {} for a good order and the real code for a bad one; nothing is placed."""
    sim_server.market.pin(BTC, D("50000.0"))
    market = {"symbol": BTC, "side": "BUY", "type": "MARKET", "quantity": "0.010"}
    assert sim_client.ok("POST", "/fapi/v3/order/test", market) == {}
    client.test_order(OrderRequest(BTC, Side.BUY, OrderType.MARKET, "t-1", quantity=D("0.010")))
    with pytest.raises(OrderRejected) as bad:
        client.test_order(
            OrderRequest(BTC, Side.BUY, OrderType.MARKET, "t-2", quantity=D("0.0001"))
        )
    assert bad.value.code == -1111
    huge = sim_client.send("POST", "/fapi/v3/order/test", {**market, "quantity": "100"})
    assert _code(huge) == -2019
    assert (
        sim_server.engine.all_orders_ever() == [] and sim_server.engine.trades(sim_keys.user) == []
    )


def test_batch_orders_accept_single_quotes_and_standard_json(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """batchOrders with single quotes (as the official demos send it) and with JSON both place."""
    sim_server.market.pin(BTC, D("50000.0"))
    single = "[{'symbol':'BTCUSDT','side':'BUY','type':'LIMIT','timeInForce':'GTC',"
    single += "'quantity':'0.010','price':'49000.0'}]"
    placed = sim_client.ok("POST", "/fapi/v3/batchOrders", [("batchOrders", quote(single))])
    assert placed[0]["status"] == "NEW" and placed[0]["price"] == "49000"
    standard = json.dumps([json.loads(single.replace("'", '"'))[0] | {"price": "48000.0"}])
    placed = sim_client.ok("POST", "/fapi/v3/batchOrders", [("batchOrders", quote(standard))])
    assert placed[0]["status"] == "NEW"
    ids = quote("['" + placed[0]["clientOrderId"] + "']")
    canceled = sim_client.ok(
        "DELETE", "/fapi/v3/batchOrders", [("symbol", BTC), ("origClientOrderIdList", ids)]
    )
    assert canceled[0]["status"] == "CANCELED"


def test_countdown_cancel_all_cancels_when_not_renewed(
    sim_server: SimServer, client: AsterClient, sim_client: SignedClient, sim_keys: SimKeys
) -> None:
    """countdownCancelAll cancels the symbol's orders when it runs out; 0 switches it off."""
    sim_server.market.pin(BTC, D("50000.0"))
    first = _limit(sim_client, "BUY", "49000.0")
    assert client.countdown_cancel_all(BTC, 60_000) == 60_000
    assert client.countdown_cancel_all(BTC, 0) == 0
    assert sim_server.engine.account(sim_keys.user).countdowns == {}
    assert client.countdown_cancel_all(BTC, 200) == 200
    query = {"symbol": BTC, "orderId": first["orderId"]}
    wait_for(lambda: sim_client.ok("GET", ORDER, query)["status"] == "CANCELED")
    assert sim_client.ok("GET", "/fapi/v3/openOrders", {"symbol": BTC}) == []


# --- account modes and isolated margin ---------------------------------------------------


def test_multi_assets_margin_get_and_post(sim_client: SignedClient) -> None:
    """multiAssetsMargin starts false, can be set, and refuses a value that is not a boolean."""
    assert sim_client.ok("GET", "/fapi/v3/multiAssetsMargin") == {"multiAssetsMargin": False}
    done = sim_client.ok("POST", "/fapi/v3/multiAssetsMargin", {"multiAssetsMargin": "true"})
    assert done == {"code": 200, "msg": "success"}
    assert sim_client.ok("GET", "/fapi/v3/multiAssetsMargin") == {"multiAssetsMargin": True}
    bad = sim_client.send("POST", "/fapi/v3/multiAssetsMargin", {"multiAssetsMargin": "yes"})
    assert _code(bad) == -1102


def test_position_margin_adds_reduces_and_keeps_history(
    sim_server: SimServer, sim_client: SignedClient
) -> None:
    """Isolated margin moves with positionMargin and is listed by positionMargin/history."""
    sim_server.market.pin(BTC, D("50000.0"))
    add = {"symbol": BTC, "amount": "100", "type": "1"}
    assert _code(sim_client.send("POST", "/fapi/v3/positionMargin", add)) == -4049
    sim_client.ok("POST", "/fapi/v3/marginType", {"symbol": BTC, "marginType": "ISOLATED"})
    assert _code(sim_client.send("POST", "/fapi/v3/positionMargin", add)) == -4054
    sim_client.ok(
        "POST", ORDER, {"symbol": BTC, "side": "BUY", "type": "MARKET", "quantity": "0.1"}
    )

    def isolated() -> Decimal:
        rows = sim_client.ok("GET", "/fapi/v3/positionRisk", {"symbol": BTC})
        return D(rows[0]["isolatedMargin"])

    def available() -> Decimal:
        return D(sim_client.ok("GET", "/fapi/v3/balance")[0]["availableBalance"])

    margin0, free0 = isolated(), available()
    done = sim_client.ok("POST", "/fapi/v3/positionMargin", add)
    assert done == {"amount": 100.0, "code": 200, "msg": "Successfully modify position margin."} | {
        "type": 1
    }
    assert (isolated() - margin0, free0 - available()) == (D(100), D(100))
    sim_client.ok("POST", "/fapi/v3/positionMargin", {**add, "amount": "40", "type": "2"})
    too_much = sim_client.send("POST", "/fapi/v3/positionMargin", {**add, "type": "2"})
    assert _code(too_much) == -4051
    history = sim_client.ok("GET", "/fapi/v3/positionMargin/history", {"symbol": BTC})
    assert [(h["type"], h["amount"], h["asset"]) for h in history] == [
        (1, "100", "USDT"),
        (2, "40", "USDT"),
    ]
    assert sim_client.ok("GET", "/fapi/v3/positionMargin/history", {"symbol": BTC, "type": 2}) == [
        history[1]
    ]


def test_commission_rate_through_the_project_client(client: AsterClient) -> None:
    """commissionRate parses into Decimal maker/taker rates equal to the simulator's fees."""
    rate = client.commission_rate(BTC)
    assert (rate.symbol, rate.maker, rate.taker) == (BTC, D("0.0001"), D("0.00035"))
