"""The Aster HTTP client via httpx.MockTransport: request shapes, parsing, every error family."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from aster_agents.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    ExchangeError,
    InsufficientMargin,
    IpBanned,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    TransientExchangeError,
    UnknownOutcome,
)
from aster_agents.exchange.http import AsterClient, RequestLog, as_exchange, klines_weight
from aster_agents.models import (
    MarginType,
    OrderRequest,
    OrderStatus,
    OrderType,
    PositionSide,
    Side,
    TimeInForce,
)
from aster_agents.signing import NonceSource, Signer, recover_address

D = Decimal
KEY = "0x4fd0a42218f3eae43a6ce26d22544e986139a01e5b34a62db53757ffca81bae1"
USER = "0x63DD5aCC6b1aa0f563956C0e534DD30B6dcF7C4e"
SIGNER = Signer(KEY, 1666)
NOW = 1_800_000_000.0
BASE = "https://fapi.asterdex.com"

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def ok(data: object, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, json=data, headers=headers)


def err(status: int, code: int, msg: str = "refused") -> httpx.Response:
    return httpx.Response(status, json={"code": code, "msg": msg})


def html(status: int, title: str = "502 Bad Gateway") -> httpx.Response:
    body = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
    return httpx.Response(status, text=body, headers={"Content-Type": "text/html"})


def order_json(
    status: str = "NEW", coid: str = "a01-000001-open", **extra: object
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "orderId": 22542179,
        "symbol": "BTCUSDT",
        "status": status,
        "clientOrderId": coid,
        "price": "64250.1",
        "avgPrice": "0.00000",
        "origQty": "0.012",
        "executedQty": "0",
        "cumQty": "0",
        "cumQuote": "0",
        "timeInForce": "GTC",
        "type": "LIMIT",
        "reduceOnly": False,
        "closePosition": False,
        "side": "BUY",
        "positionSide": "BOTH",
        "stopPrice": "0",
        "workingType": "CONTRACT_PRICE",
        "origType": "LIMIT",
        "updateTime": 1566818724722,
    }
    data.update(extra)
    return data


@dataclass
class FakeExchange:
    """Scripted replies per (method, path); the last reply of a script repeats."""

    routes: dict[tuple[str, str], list[Reply]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *replies: Reply) -> FakeExchange:
        self.routes[(method, path)] = list(replies)
        return self

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        script = self.routes.get((request.method, request.url.path))
        if not script:
            return err(404, -5000, f"path {request.url.path} not found")
        reply = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply) and not isinstance(reply, httpx.Response):
            return reply(request)
        return reply

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path == path)


@dataclass
class RecordingBudget:
    acquired: list[tuple[int, int]] = field(default_factory=list)
    observed: list[tuple[int | None, int | None, int | None]] = field(default_factory=list)
    paused: list[tuple[float, str]] = field(default_factory=list)

    def acquire(self, weight: int, orders: int = 0) -> None:
        self.acquired.append((weight, orders))

    def observe(self, w1m: int | None, o10s: int | None, o1m: int | None) -> None:
        self.observed.append((w1m, o10s, o1m))

    def pause(self, until: float, reason: str) -> None:
        self.paused.append((until, reason))


@dataclass
class Rig:
    exchange: FakeExchange
    budget: RecordingBudget
    logs: list[RequestLog]
    sleeps: list[float]
    client: AsterClient


@pytest.fixture
def rig() -> Iterator[Rig]:
    rig = make_rig()
    yield rig
    rig.client.close()


def make_rig(user: str | None = USER, signer: Signer | None = SIGNER, **kw: Any) -> Rig:
    exchange, budget = FakeExchange(), RecordingBudget()
    logs: list[RequestLog] = []
    sleeps: list[float] = []
    options: dict[str, Any] = {"max_retries": 2, "backoff_base": 0.0, **kw}
    client = AsterClient(
        BASE,
        user=user,
        signer=signer,
        nonces=NonceSource(3),
        budget=budget,
        transport=httpx.MockTransport(exchange),
        on_request=logs.append,
        sleep=sleeps.append,
        clock=lambda: NOW,
        agent_id="agent-1",
        **options,
    )
    return Rig(exchange, budget, logs, sleeps, client)


def sent(request: httpx.Request) -> str:
    """The exact parameter string on the wire (query for GET, body otherwise)."""
    return request.url.query.decode() if request.method == "GET" else request.content.decode()


def pairs(request: httpx.Request) -> list[tuple[str, str]]:
    return parse_qsl(sent(request), keep_blank_values=True)


def assert_signed(request: httpx.Request, user: str | None = USER) -> list[tuple[str, str]]:
    """Signature last, over exactly the sent prefix; auth params after business params."""
    wire = sent(request)
    msg, _, signature = wire.rpartition("&signature=")
    assert msg and "signature=" not in msg
    assert recover_address(msg, signature, 1666) == SIGNER.address
    keys = [k for k, _ in parse_qsl(msg)]
    tail = ["nonce", "user", "signer"] if user else ["nonce", "signer"]
    assert keys[-len(tail) :] == tail
    if request.method == "GET":
        assert request.content == b""
    else:
        assert request.url.query == b""
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    return parse_qsl(msg)[: -len(tail)]


# --- request shapes and parsing ----------------------------------------------------------


def test_public_endpoints_unsigned_and_parsed(rig: Rig) -> None:
    """Market-data calls are unsigned GETs with the documented params, parsed into Decimals."""
    rig.exchange.on("GET", "/fapi/v3/time", ok({"serverTime": 1499827319559}))
    rig.exchange.on(
        "GET",
        "/fapi/v3/premiumIndex",
        ok({"symbol": "BTCUSDT", "markPrice": "64000.5", "indexPrice": "64001", "time": 5}),
    )
    rig.exchange.on(
        "GET", "/fapi/v3/ticker/price", ok({"symbol": "BTCUSDT", "price": "64000.1", "time": 7})
    )
    book = {"symbol": "BTCUSDT", "bidPrice": "1.1", "bidQty": "2", "askPrice": "1.2", "askQty": "3"}
    rig.exchange.on("GET", "/fapi/v3/ticker/bookTicker", ok(book))
    c = rig.client
    assert c.server_time() == 1499827319559
    mark = c.premium_index("BTCUSDT")
    assert mark.mark_price == D("64000.5") and mark.last_funding_rate == 0
    assert c.ticker_price("BTCUSDT").price == D("64000.1")
    assert c.book_ticker("BTCUSDT").ask_qty == D("3")
    for request in rig.exchange.requests:
        assert request.method == "GET" and "signature" not in sent(request)
    assert [sent(r) for r in rig.exchange.requests[1:]] == ["symbol=BTCUSDT"] * 3
    assert rig.budget.acquired == [(1, 0)] * 4


def test_klines_params_weight_and_parse(rig: Rig) -> None:
    """klines sends symbol, interval, times, limit in order; weight follows the limit."""
    row = [1, "1.0", "2.0", "0.5", "1.5", "100", 2, "150", 10, "50", "75", "0"]
    rig.exchange.on("GET", "/fapi/v3/klines", ok([row, row]))
    out = rig.client.klines("BTCUSDT", "3m", limit=1000, start_time=10, end_time=20)
    assert sent(rig.exchange.requests[0]) == (
        "symbol=BTCUSDT&interval=3m&startTime=10&endTime=20&limit=1000"
    )
    assert out[0].close == D("1.5") and out[1].close_time == 2
    assert rig.budget.acquired == [(5, 0)]
    assert [klines_weight(n) for n in (99, 100, 499, 500, 1000, 1500)] == [1, 2, 2, 5, 5, 10]


EXCHANGE_INFO = {
    "serverTime": 1,
    "rateLimits": [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400}
    ],
    "symbols": [
        {
            "symbol": "BTCUSDT",
            "status": "TRADING",
            "baseAsset": "BTC",
            "quoteAsset": "USDT",
            "pricePrecision": 1,
            "quantityPrecision": 3,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": "1",
                    "maxPrice": "1000000",
                    "tickSize": "0.1",
                },
                {
                    "filterType": "LOT_SIZE",
                    "stepSize": "0.001",
                    "minQty": "0.001",
                    "maxQty": "1000",
                },
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "stepSize": "0.001",
                    "minQty": "0.001",
                    "maxQty": "120",
                },
                {"filterType": "MAX_NUM_ORDERS", "limit": 200},
                {"filterType": "MIN_NOTIONAL", "notional": "5"},
                {
                    "filterType": "PERCENT_PRICE",
                    "multiplierUp": "1.0500",
                    "multiplierDown": "0.9500",
                    "multiplierDecimal": "4",
                },
            ],
        }
    ],
}


def test_exchange_info_filters(rig: Rig) -> None:
    """exchangeInfo filters parse into SymbolFilters (MIN_NOTIONAL uses 'notional')."""
    rig.exchange.on("GET", "/fapi/v3/exchangeInfo", ok(EXCHANGE_INFO))
    info = rig.client.exchange_info()
    f = info.symbol("BTCUSDT").filters
    assert (f.tick_size, f.step_size, f.market_max_qty) == (D("0.1"), D("0.001"), D("120"))
    assert (f.min_notional, f.multiplier_up, f.max_num_orders) == (D("5"), D("1.0500"), 200)
    assert info.rate_limits[0].limit == 2400


def test_signed_gets(rig: Rig) -> None:
    """Signed reads put params + nonce/user/signer + signature in the query, and parse."""
    bal = {
        "asset": "USDT",
        "balance": "100.5",
        "crossWalletBalance": "100.5",
        "crossUnPnl": "0",
        "availableBalance": "90",
        "maxWithdrawAmount": "90",
        "updateTime": 3,
    }
    pos = {
        "symbol": "BTCUSDT",
        "positionAmt": "-0.010",
        "entryPrice": "64000",
        "markPrice": "63000",
        "unRealizedProfit": "10",
        "liquidationPrice": "70000",
        "leverage": "3",
        "marginType": "cross",
        "positionSide": "BOTH",
        "updateTime": 9,
    }
    trade = {
        "id": 1,
        "orderId": 2,
        "symbol": "BTCUSDT",
        "side": "SELL",
        "positionSide": "BOTH",
        "price": "64000",
        "qty": "0.01",
        "quoteQty": "640",
        "realizedPnl": "1.5",
        "commission": "0.2",
        "commissionAsset": "USDT",
        "buyer": False,
        "maker": True,
        "time": 5,
    }
    income = {
        "symbol": "BTCUSDT",
        "incomeType": "FUNDING_FEE",
        "income": "-0.01",
        "asset": "USDT",
        "info": "",
        "time": 6,
        "tranId": 77,
        "tradeId": "",
    }
    ex = rig.exchange
    ex.on("GET", "/fapi/v3/balance", ok([bal]))
    ex.on("GET", "/fapi/v3/positionRisk", ok([pos]))
    ex.on("GET", "/fapi/v3/positionSide/dual", ok({"dualSidePosition": True}))
    ex.on("GET", "/fapi/v3/openOrders", ok([order_json()]))
    ex.on("GET", "/fapi/v3/order", ok(order_json(status="FILLED")))
    ex.on("GET", "/fapi/v3/userTrades", ok([trade]))
    ex.on("GET", "/fapi/v3/income", ok([income]))
    c = rig.client
    assert c.balances()[0].available_balance == D("90")
    p = c.position_risk("BTCUSDT")[0]
    assert (p.position_amt, p.leverage, p.position_side) == (D("-0.010"), 3, PositionSide.BOTH)
    assert c.get_position_mode() is True
    assert c.open_orders("BTCUSDT")[0].status is OrderStatus.NEW
    c.open_orders()
    assert c.query_order("BTCUSDT", client_order_id="a01-000001-open").status.value == "FILLED"
    assert c.user_trades("BTCUSDT", from_id=7, limit=100)[0].realized_pnl == D("1.5")
    assert c.income("BTCUSDT", "FUNDING_FEE", start_time=4)[0].income == D("-0.01")
    business = [assert_signed(r) for r in ex.requests]
    assert business == [
        [],
        [("symbol", "BTCUSDT")],
        [],
        [("symbol", "BTCUSDT")],
        [],
        [("symbol", "BTCUSDT"), ("origClientOrderId", "a01-000001-open")],
        [("symbol", "BTCUSDT"), ("fromId", "7"), ("limit", "100")],
        [
            ("symbol", "BTCUSDT"),
            ("incomeType", "FUNDING_FEE"),
            ("startTime", "4"),
            ("limit", "100"),
        ],
    ]
    assert [w for w, _ in rig.budget.acquired] == [5, 5, 30, 1, 40, 1, 5, 30]


ACCOUNT = {
    "canTrade": True,
    "totalWalletBalance": "1000",
    "totalUnrealizedProfit": "5",
    "totalMarginBalance": "1005",
    "availableBalance": "800",
    "totalInitialMargin": "200",
    "totalMaintMargin": "10",
    "assets": [{"asset": "USDT", "walletBalance": "1000", "availableBalance": "800"}],
    "positions": [
        {
            "symbol": "BTCUSDT",
            "positionAmt": "0.01",
            "entryPrice": "64000",
            "leverage": "3",
            "isolated": False,
            "positionSide": "BOTH",
            "unrealizedProfit": "5",
        }
    ],
}


def test_account_parses(rig: Rig) -> None:
    """accountWithJoinMargin parses totals, assets and positions."""
    rig.exchange.on("GET", "/fapi/v3/accountWithJoinMargin", ok(ACCOUNT))
    acct = rig.client.account()
    assert acct.total_margin_balance == D("1005") and acct.balances[0].balance == D("1000")
    assert acct.positions[0].margin_type == "cross"
    assert_signed(rig.exchange.requests[0])


def test_account_falls_back_to_legacy_path(rig: Rig) -> None:
    """A 404 on accountWithJoinMargin falls back to /fapi/v3/account, and remembers it."""
    rig.exchange.on("GET", "/fapi/v3/accountWithJoinMargin", html(404, "404 Not Found"))
    rig.exchange.on("GET", "/fapi/v3/account", ok(ACCOUNT))
    assert rig.client.account().available_balance == D("800")
    assert rig.client.account().available_balance == D("800")
    assert rig.exchange.count("GET", "/fapi/v3/accountWithJoinMargin") == 1
    assert rig.exchange.count("GET", "/fapi/v3/account") == 2


def test_signed_posts_use_form_body(rig: Rig) -> None:
    """Settings changes are signed POSTs with a form body; no-change codes count as success."""
    ex = rig.exchange
    ex.on("POST", "/fapi/v3/positionSide/dual", err(400, -4059, "No need to change position side."))
    ex.on("POST", "/fapi/v3/leverage", ok({"leverage": 5, "symbol": "BTCUSDT"}))
    ex.on("POST", "/fapi/v3/marginType", err(400, -4046, "No need to change margin type."))
    c = rig.client
    c.set_position_mode(False)
    assert c.set_leverage("BTCUSDT", 5) == 5
    c.set_margin_type("BTCUSDT", MarginType.CROSSED)
    assert [assert_signed(r) for r in ex.requests] == [
        [("dualSidePosition", "false")],
        [("symbol", "BTCUSDT"), ("leverage", "5")],
        [("symbol", "BTCUSDT"), ("marginType", "CROSSED")],
    ]


def test_margin_type_other_error_raises(rig: Rig) -> None:
    """Only -4046 is swallowed by set_margin_type; other order codes still raise."""
    rig.exchange.on("POST", "/fapi/v3/marginType", err(400, -4047, "open orders exist"))
    with pytest.raises(OrderRejected) as info:
        rig.client.set_margin_type("BTCUSDT", MarginType.ISOLATED)
    assert info.value.code == -4047


LIMIT = OrderRequest(
    symbol="BTCUSDT",
    side=Side.BUY,
    type=OrderType.LIMIT,
    client_order_id="a01-000001-open",
    quantity=D("0.012"),
    price=D("64250.1"),
    time_in_force=TimeInForce.GTC,
)


def test_new_order_shape(rig: Rig) -> None:
    """new_order posts the documented params in order, signed, and counts as one order."""
    rig.exchange.on("POST", "/fapi/v3/order", ok(order_json(), **{"x-mbx-order-count-10s": "3"}))
    order = rig.client.new_order(LIMIT)
    assert order.order_id == 22542179 and order.price == D("64250.1")
    assert assert_signed(rig.exchange.requests[0]) == [
        ("symbol", "BTCUSDT"),
        ("side", "BUY"),
        ("type", "LIMIT"),
        ("timeInForce", "GTC"),
        ("quantity", "0.012"),
        ("price", "64250.1"),
        ("newClientOrderId", "a01-000001-open"),
        ("newOrderRespType", "RESULT"),
    ]
    assert rig.budget.acquired == [(1, 1)]
    assert rig.budget.observed == [(None, 3, None)]


def test_new_order_stop_market_close_position(rig: Rig) -> None:
    """Protective orders send stopPrice, closePosition, reduceOnly, positionSide, workingType."""
    rig.exchange.on("POST", "/fapi/v3/order", ok(order_json(type="STOP_MARKET")))
    request = OrderRequest(
        symbol="BTCUSDT",
        side=Side.SELL,
        type=OrderType.STOP_MARKET,
        client_order_id="a01-000001-sl",
        stop_price=D("6.2E+4"),
        close_position=True,
        reduce_only=True,
        position_side=PositionSide.LONG,
        working_type="MARK_PRICE",
    )
    rig.client.new_order(request)
    assert dict(assert_signed(rig.exchange.requests[0])) == {
        "symbol": "BTCUSDT",
        "side": "SELL",
        "type": "STOP_MARKET",
        "positionSide": "LONG",
        "stopPrice": "62000",
        "reduceOnly": "true",
        "closePosition": "true",
        "workingType": "MARK_PRICE",
        "newClientOrderId": "a01-000001-sl",
        "newOrderRespType": "RESULT",
    }


def test_cancels_use_delete_body(rig: Rig) -> None:
    """cancel_order and cancel_all_open_orders are signed DELETEs with a form body."""
    rig.exchange.on("DELETE", "/fapi/v3/order", ok(order_json(status="CANCELED")))
    rig.exchange.on(
        "DELETE",
        "/fapi/v3/allOpenOrders",
        ok({"code": "200", "msg": "The operation of cancel all open order is done."}),
    )
    assert rig.client.cancel_order("BTCUSDT", order_id=22542179).status is OrderStatus.CANCELED
    rig.client.cancel_all_open_orders("BTCUSDT")
    assert [assert_signed(r) for r in rig.exchange.requests] == [
        [("symbol", "BTCUSDT"), ("orderId", "22542179")],
        [("symbol", "BTCUSDT")],
    ]


def test_order_reference_required(rig: Rig) -> None:
    """Naming an order needs an order id or a client order id."""
    with pytest.raises(BadRequest, match="order_id or client_order_id"):
        rig.client.query_order("BTCUSDT")
    assert rig.exchange.requests == []


def test_bad_client_order_id_refused_before_sending(rig: Rig) -> None:
    """A client order id outside the exchange's pattern is refused locally."""
    bad = OrderRequest("BTCUSDT", Side.BUY, OrderType.MARKET, "has space", quantity=D(1))
    with pytest.raises(BadRequest, match="client order id"):
        rig.client.new_order(bad)
    assert rig.exchange.requests == []


def test_without_user_no_user_param() -> None:
    """A client without user sends nonce and signer only (user is optional since 2026-04)."""
    rig = make_rig(user=None)
    rig.exchange.on("GET", "/fapi/v3/balance", ok([]))
    assert rig.client.balances() == []
    assert_signed(rig.exchange.requests[0], user=None)
    rig.client.close()


def test_signed_call_without_signer_is_config_error() -> None:
    """Signed endpoints without a signer raise ConfigError and send nothing."""
    rig = make_rig(signer=None)
    with pytest.raises(ConfigError, match="no signer"):
        rig.client.balances()
    assert rig.exchange.requests == []
    rig.client.close()


def test_percent_encoding_signed_equals_sent(rig: Rig) -> None:
    """Values outside the plain set are percent-encoded once, identically signed and sent."""
    rig.exchange.on("GET", "/fapi/v3/order", ok(order_json(coid="a:b/c")))
    rig.client.query_order("BTCUSDT", client_order_id="a:b/c")
    request = rig.exchange.requests[0]
    assert "origClientOrderId=a%3Ab%2Fc&" in sent(request)
    assert assert_signed(request)[-1] == ("origClientOrderId", "a:b/c")


# --- retries, nonces, logs ------------------------------------------------------------


def test_every_attempt_fresh_nonce_and_signature(rig: Rig) -> None:
    """A retried request is re-signed with a new nonce."""
    rig.exchange.on("GET", "/fapi/v3/balance", html(502), ok([]))
    assert rig.client.balances() == []
    first, second = (dict(pairs(r)) for r in rig.exchange.requests)
    assert first["nonce"] != second["nonce"] and first["signature"] != second["signature"]
    for r in rig.exchange.requests:
        assert_signed(r)


@pytest.mark.parametrize(
    "failure",
    [
        html(502),
        httpx.Response(500, text="oops"),
        err(500, -1000, "An unknown error occurred"),
        err(400, -1007, "Timeout waiting for response from backend server"),
        httpx.Response(200, text="{not json"),
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
    ids=[
        "html-502",
        "text-500",
        "code-1000",
        "code-1007",
        "bad-json",
        "timeout",
        "connect",
        "drop",
    ],
)
def test_transient_failures_retry_then_succeed(rig: Rig, failure: Reply) -> None:
    """5xx, unknown-server codes, malformed JSON, timeouts and dropped connections are retried."""
    rig.exchange.on("GET", "/fapi/v3/time", failure, ok({"serverTime": 5}))
    assert rig.client.server_time() == 5
    assert len(rig.exchange.requests) == 2


def test_retries_bounded_with_backoff() -> None:
    """After max_retries the TransientExchangeError surfaces; sleeps grow and stay capped."""
    rig = make_rig(max_retries=4, backoff_base=0.1, backoff_max=0.3)
    rig.exchange.on("GET", "/fapi/v3/time", html(503, "503 Service Unavailable"))
    with pytest.raises(TransientExchangeError) as info:
        rig.client.server_time()
    assert len(rig.exchange.requests) == 5
    assert len(rig.sleeps) == 4
    assert all(0.05 <= s <= 0.3 for s in rig.sleeps)
    assert rig.sleeps[0] <= 0.1 and rig.sleeps[-1] >= 0.15
    assert info.value.status == 503 and "503 Service Unavailable" in str(info.value)
    rig.client.close()


def test_nonce_refused_retried_once(rig: Rig) -> None:
    """-4225 is retried once with a fresh nonce, then becomes an AuthError."""
    rig.exchange.on("GET", "/fapi/v3/balance", err(400, -4225, "Nonce Expired"), ok([]))
    assert rig.client.balances() == []
    rig.exchange.on("GET", "/fapi/v3/balance", err(400, -4225, "Nonce Expired"))
    with pytest.raises(AuthError, match="clock") as info:
        rig.client.balances()
    assert info.value.code == -4225
    assert len(rig.exchange.requests) == 4


def test_request_log(rig: Rig) -> None:
    """on_request gets one frozen entry per attempt, with status, weight and error code."""
    rig.exchange.on("GET", "/fapi/v3/balance", err(503, -1001, "disconnected"), ok([]))
    rig.client.balances()
    assert [(e.method, e.path, e.status, e.weight, e.error_code) for e in rig.logs] == [
        ("GET", "/fapi/v3/balance", 503, 5, -1001),
        ("GET", "/fapi/v3/balance", 200, 5, None),
    ]
    assert all(e.elapsed_ms >= 0 for e in rig.logs)
    with pytest.raises(AttributeError):
        rig.logs[0].status = 1  # type: ignore[misc]


def test_headers_observed_case_insensitively(rig: Rig) -> None:
    """X-MBX-USED-WEIGHT-1M and ORDER-COUNT headers reach budget.observe in any case."""
    headers = {
        "x-mbx-used-weight-1m": "17",
        "X-Mbx-Order-Count-10s": "2",
        "X-MBX-ORDER-COUNT-1M": "9",
    }
    rig.exchange.on("GET", "/fapi/v3/time", ok({"serverTime": 1}, **headers))
    rig.client.server_time()
    rig.exchange.on("GET", "/fapi/v3/time", ok({"serverTime": 1}))
    rig.client.server_time()
    assert rig.budget.observed == [(17, 2, 9), (None, None, None)]


# --- error families ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "cls", "code"),
    [
        (err(400, -1022, "Signature for this request is not valid."), AuthError, -1022),
        (err(401, -2015, "Invalid API-key, IP, or permissions"), AuthError, -2015),
        (err(400, -2014, "API-key format invalid."), AuthError, -2014),
        (httpx.Response(401, text="Unauthorized"), AuthError, None),
        (html(403, "403 Forbidden"), AuthError, None),
        (err(400, -2019, "Margin is insufficient."), InsufficientMargin, -2019),
        (err(400, -2018, "Balance is insufficient"), InsufficientMargin, -2018),
        (err(400, -2013, "Order does not exist."), OrderNotFound, -2013),
        (err(400, -1111, "Precision is over the maximum"), OrderRejected, -1111),
        (err(400, -1121, "Invalid symbol."), OrderRejected, -1121),
        (err(400, -2010, "New order rejected"), OrderRejected, -2010),
        (err(400, -2021, "Order would immediately trigger."), OrderRejected, -2021),
        (err(400, -2022, "ReduceOnly Order is rejected."), OrderRejected, -2022),
        (err(400, -4003, "Quantity less than zero."), OrderRejected, -4003),
        (err(400, -4014, "Price not increased by tick size."), OrderRejected, -4014),
        (err(400, -4023, "Qty not increased by step size."), OrderRejected, -4023),
        (err(400, -4024, "Price is below the percent-price band"), OrderRejected, -4024),
        (err(400, -4164, "Order's notional must be no smaller than 5"), OrderRejected, -4164),
        (err(400, -5060, "percent price"), OrderRejected, -5060),
        (err(400, -5076, "Total order value should be more than 5 USDT"), OrderRejected, -5076),
        (err(400, -1102, "Mandatory parameter 'symbol' was not sent"), BadRequest, -1102),
        (err(400, -1100, "Illegal characters found in parameter"), BadRequest, -1100),
        (html(400, "400 Bad Request"), BadRequest, None),
        (httpx.Response(422, text="{broken"), BadRequest, None),
    ],
)
def test_error_families(
    rig: Rig, reply: httpx.Response, cls: type[ExchangeError], code: int | None
) -> None:
    """Each exchange code / status maps to its reaction class, carrying code, msg and status."""
    rig.exchange.on("GET", "/fapi/v3/order", reply)
    with pytest.raises(ExchangeError) as info:
        rig.client.query_order("BTCUSDT", order_id=1)
    exc = info.value
    assert type(exc) is cls or (cls is AuthError and isinstance(exc, AuthError))
    assert (exc.code, exc.status) == (code, reply.status_code)
    assert exc.msg and "GET /fapi/v3/order" in exc.msg
    assert "signature" not in str(exc) and "?" not in str(exc)
    assert len(rig.exchange.requests) == 1, "non-transient errors are not retried"


def test_html_4xx_message_has_status_and_snippet(rig: Rig) -> None:
    """An HTML 4xx page becomes BadRequest naming the status and a short text snippet."""
    rig.exchange.on("GET", "/fapi/v3/order", html(405, "405 Method Not Allowed"))
    with pytest.raises(BadRequest, match="HTTP 405: 405 Method Not Allowed") as info:
        rig.client.query_order("BTCUSDT", order_id=1)
    assert "<" not in str(info.value)


def test_malformed_payload_is_transient(rig: Rig) -> None:
    """Valid JSON of the wrong shape raises TransientExchangeError naming the missing field."""
    rig.exchange.on("GET", "/fapi/v3/premiumIndex", ok({"symbol": "BTCUSDT"}))
    with pytest.raises(TransientExchangeError, match="'markPrice' is missing"):
        rig.client.premium_index("BTCUSDT")
    rig.exchange.on("GET", "/fapi/v3/ticker/price", ok({"symbol": "X", "price": "abc"}))
    with pytest.raises(TransientExchangeError, match="not a number"):
        rig.client.ticker_price("X")
    rig.exchange.on("GET", "/fapi/v3/klines", ok({"not": "a list"}))
    with pytest.raises(TransientExchangeError, match="expected a JSON list"):
        rig.client.klines("X", "1m")


@pytest.mark.parametrize(
    ("row", "fault"),
    [
        ([1, "x", "2", "0.5", "1.5", "100", 2], "field 'open' is not a number: 'x'"),
        ([1, True, "2", "0.5", "1.5", "100", 2], "field 'open' is not a number: True"),
        ([1, "1", "2", "0.5", "1.5", "100", None], "field 'closeTime' is missing"),
        ([1, "1", "2", "0.5", "1.5", "100"], "expected at least 7 columns, got 6"),
    ],
)
def test_a_malformed_kline_row_is_named_despite_the_short_way(
    rig: Rig, row: list[object], fault: str
) -> None:
    """Kline rows of the usual shape parse the short way; any other row still names its fault."""
    good = [1, "1.0", "2.0", "0.5", "1.5", "100", 2]
    odd = [1, 1.5, "2", "", "1.5", 100, "2"]  # numbers and strings where the exchange sends others
    rig.exchange.on("GET", "/fapi/v3/klines", ok([good, odd]))
    first, second = rig.client.klines("X", "1m")
    assert (first.open, first.close, first.close_time) == (D("1.0"), D("1.5"), 2)
    assert (second.open, second.low, second.volume, second.close_time) == (D("1.5"), 0, 100, 2)
    rig.exchange.on("GET", "/fapi/v3/klines", ok([good, row]))
    with pytest.raises(TransientExchangeError, match=re.escape(fault)):
        rig.client.klines("X", "1m")


def test_429_retry_after_pauses_budget(rig: Rig) -> None:
    """HTTP 429 with Retry-After pauses the host budget until then and raises at once."""
    reply = httpx.Response(
        429,
        json={
            "code": -1003,
            "msg": "Too many requests; current limit is 2400 requests per minute.",
        },
        headers={"Retry-After": "7"},
    )
    rig.exchange.on("GET", "/fapi/v3/time", reply)
    with pytest.raises(RateLimited) as info:
        rig.client.server_time()
    assert type(info.value) is RateLimited
    assert info.value.retry_at == NOW + 7 and info.value.status == 429
    assert [u for u, _ in rig.budget.paused] == [NOW + 7]
    assert "429" in rig.budget.paused[0][1]
    assert len(rig.exchange.requests) == 1 and rig.sleeps == []


def test_429_without_retry_after_uses_default(rig: Rig) -> None:
    """A bare 429 still pauses, for a default minute."""
    rig.exchange.on("GET", "/fapi/v3/time", httpx.Response(429, text="slow down"))
    with pytest.raises(RateLimited) as info:
        rig.client.server_time()
    assert info.value.retry_at == NOW + 60


def test_418_ban_time_parsed(rig: Rig) -> None:
    """HTTP 418 reads the ban end from the -1003 message and raises IpBanned."""
    until_ms = 1_800_000_500_123
    msg = f"Way too many requests; IP banned until {until_ms}. Please use websocket."
    rig.exchange.on("GET", "/fapi/v3/time", err(418, -1003, msg))
    with pytest.raises(IpBanned) as info:
        rig.client.server_time()
    assert info.value.retry_at == until_ms / 1000
    assert rig.budget.paused[0][0] == until_ms / 1000
    assert info.value.code == -1003


def test_418_retry_after_wins(rig: Rig) -> None:
    """A Retry-After header on a 418 is honoured."""
    rig.exchange.on(
        "GET", "/fapi/v3/time", httpx.Response(418, text="", headers={"Retry-After": "120"})
    )
    with pytest.raises(IpBanned) as info:
        rig.client.server_time()
    assert info.value.retry_at == NOW + 120


def test_rate_limit_on_new_order_not_resolved(rig: Rig) -> None:
    """A 429 on order placement means not placed: RateLimited, no query, no resend."""
    rig.exchange.on("POST", "/fapi/v3/order", err(429, -1015, "Too many new orders"))
    with pytest.raises(RateLimited):
        rig.client.new_order(LIMIT)
    assert len(rig.exchange.requests) == 1


# --- unknown outcomes of new orders -----------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        html(503, "503 Service Unavailable"),
        httpx.Response(500, text="Internal Server Error"),
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        err(503, -1007, "Timeout waiting for response from backend server. Send status unknown"),
        httpx.Response(200, text="{truncated"),
        ok({"orderId": 1}),
    ],
    ids=[
        "503",
        "500",
        "read-timeout",
        "write-timeout",
        "dropped",
        "1007",
        "bad-json",
        "short-json",
    ],
)
def test_new_order_unknown_outcome_found_by_query(rig: Rig, failure: Reply) -> None:
    """After an ambiguous failure, the order is found by client order id and returned."""
    rig.exchange.on("POST", "/fapi/v3/order", failure)
    rig.exchange.on(
        "GET", "/fapi/v3/order", err(400, -2013, "Order does not exist."), ok(order_json())
    )
    order = rig.client.new_order(LIMIT)
    assert order.client_order_id == LIMIT.client_order_id
    assert rig.exchange.count("POST", "/fapi/v3/order") == 1
    queries = [r for r in rig.exchange.requests if r.method == "GET"]
    assert len(queries) == 2
    assert assert_signed(queries[0]) == [
        ("symbol", "BTCUSDT"),
        ("origClientOrderId", LIMIT.client_order_id),
    ]


def test_new_order_not_placed_is_transient(rig: Rig) -> None:
    """Every query says -2013: TransientExchangeError (may still land: resolve by id), one POST."""
    rig.exchange.on("POST", "/fapi/v3/order", html(503, "503 Service Unavailable"))
    rig.exchange.on("GET", "/fapi/v3/order", err(400, -2013, "Order does not exist."))
    with pytest.raises(TransientExchangeError) as info:
        rig.client.new_order(LIMIT)
    assert type(info.value) is TransientExchangeError
    assert info.value.code == -2013 and "can still land" in str(info.value)
    assert rig.exchange.count("POST", "/fapi/v3/order") == 1
    assert rig.exchange.count("GET", "/fapi/v3/order") == 3


def test_new_order_query_keeps_failing_is_unknown_outcome(rig: Rig) -> None:
    """If the query itself keeps failing, UnknownOutcome carries the client order id; one POST."""
    rig.exchange.on("POST", "/fapi/v3/order", httpx.ReadTimeout("read timed out"))
    rig.exchange.on("GET", "/fapi/v3/order", html(502), httpx.ConnectError("refused"), html(504))
    with pytest.raises(UnknownOutcome) as info:
        rig.client.new_order(LIMIT)
    assert info.value.client_order_id == LIMIT.client_order_id
    assert rig.exchange.count("POST", "/fapi/v3/order") == 1
    assert rig.exchange.count("GET", "/fapi/v3/order") == 3


def test_new_order_connect_error_is_resent(rig: Rig) -> None:
    """A connect failure never reached the exchange, so the order is simply sent again."""
    rig.exchange.on(
        "POST",
        "/fapi/v3/order",
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        ok(order_json()),
    )
    assert rig.client.new_order(LIMIT).status is OrderStatus.NEW
    assert rig.exchange.count("POST", "/fapi/v3/order") == 3
    assert rig.exchange.count("GET", "/fapi/v3/order") == 0


def test_new_order_rejection_is_not_resolved(rig: Rig) -> None:
    """A definite rejection raises at once, with no query and no resend."""
    rig.exchange.on("POST", "/fapi/v3/order", err(400, -2019, "Margin is insufficient."))
    with pytest.raises(InsufficientMargin):
        rig.client.new_order(LIMIT)
    assert len(rig.exchange.requests) == 1


def test_new_order_nonce_refused_is_resent_once(rig: Rig) -> None:
    """-4225 on an order means not accepted: resent once with a fresh nonce."""
    rig.exchange.on("POST", "/fapi/v3/order", err(400, -4225, "Nonce Expired"), ok(order_json()))
    rig.client.new_order(LIMIT)
    nonces = [dict(pairs(r))["nonce"] for r in rig.exchange.requests]
    assert len(nonces) == 2 and nonces[0] != nonces[1]


def test_cancel_retry_finds_order_already_canceled(rig: Rig) -> None:
    """If a cancel's retry says the order is gone because the first try worked, return it."""
    rig.exchange.on(
        "DELETE",
        "/fapi/v3/order",
        httpx.ReadTimeout("read timed out"),
        err(400, -2011, "Unknown order sent."),
    )
    rig.exchange.on("GET", "/fapi/v3/order", ok(order_json(status="CANCELED")))
    assert rig.client.cancel_order("BTCUSDT", order_id=1).status is OrderStatus.CANCELED


def test_cancel_rejection_without_retry_raises(rig: Rig) -> None:
    """A cancel refused on the first try raises as usual."""
    rig.exchange.on("DELETE", "/fapi/v3/order", err(400, -2011, "Unknown order sent."))
    with pytest.raises(OrderRejected):
        rig.client.cancel_order("BTCUSDT", order_id=1)
    assert len(rig.exchange.requests) == 1


# --- hygiene ---------------------------------------------------------------------------


def test_no_secrets_in_reprs_errors_or_logs(rig: Rig) -> None:
    """Neither the key nor a signature appears in the client repr, errors or request logs."""
    rig.exchange.on(
        "GET", "/fapi/v3/balance", err(400, -1022, "Signature for this request is not valid.")
    )
    with pytest.raises(AuthError) as info:
        rig.client.balances()
    signature = dict(pairs(rig.exchange.requests[0]))["signature"]
    for text in (repr(rig.client), str(info.value), repr(rig.logs)):
        assert KEY[2:] not in text and signature[2:] not in text and "nonce=" not in text


def test_context_manager_and_protocol() -> None:
    """The client is a context manager and satisfies the Exchange protocol."""
    rig = make_rig()
    rig.exchange.on("GET", "/fapi/v3/time", ok({"serverTime": 1}))
    with rig.client as client:
        assert as_exchange(client).server_time() == 1
    with pytest.raises(RuntimeError):
        client.server_time()


def test_default_budget_and_real_clock() -> None:
    """Defaults (NullBudget, real clock) work without injection."""
    exchange = FakeExchange().on("GET", "/fapi/v3/time", ok({"serverTime": 2}))
    with AsterClient(
        BASE, user=None, signer=None, nonces=NonceSource(0), transport=httpx.MockTransport(exchange)
    ) as client:
        assert client.server_time() == 2


def test_json_error_body_on_http_200(rig: Rig) -> None:
    """An error object delivered with HTTP 200 is still an error."""
    rig.exchange.on("GET", "/fapi/v3/order", ok({"code": -2013, "msg": "Order does not exist."}))
    with pytest.raises(OrderNotFound):
        rig.client.query_order("BTCUSDT", order_id=1)


def test_weights_in_budget(rig: Rig) -> None:
    """Budget acquire sees the documented weights for each call."""
    ex = rig.exchange
    ex.on("GET", "/fapi/v3/openOrders", ok([]))
    ex.on("POST", "/fapi/v3/positionSide/dual", ok({"code": 200, "msg": "success"}))
    rig.client.open_orders()
    rig.client.open_orders("BTCUSDT")
    rig.client.set_position_mode(True)
    assert rig.budget.acquired == [(40, 0), (1, 0), (1, 0)]
    assert json.loads(json.dumps([e.weight for e in rig.logs])) == [40, 1, 1]


# --- real loopback HTTP ------------------------------------------------------------------


class _SlowOrderHandler(BaseHTTPRequestHandler):
    """POST /fapi/v3/order hangs until released; GET /fapi/v3/order finds the order."""

    release: threading.Event
    posts: list[str]

    def do_POST(self) -> None:
        self.posts.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.release.wait(10)

    def do_GET(self) -> None:
        body = json.dumps(order_json()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_loopback_timeout_on_new_order_resolved_without_resend() -> None:
    """Over real HTTP, a read timeout on POST /order is resolved by one query, never a resend."""
    release = threading.Event()
    posts: list[str] = []
    handler = type("H", (_SlowOrderHandler,), {"release": release, "posts": posts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with AsterClient(
            url, user=USER, signer=SIGNER, nonces=NonceSource(0), timeout=0.2, backoff_base=0.0
        ) as client:
            order = client.new_order(LIMIT)
        assert order.client_order_id == LIMIT.client_order_id
        assert len(posts) == 1 and "newClientOrderId=a01-000001-open" in posts[0]
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
