"""The in-process client (backtest): the same answers as parsing the simulator's documents."""

from __future__ import annotations

from decimal import Decimal

import pytest

from aster_agents.errors import AsterAgentsError
from aster_agents.exchange import parse
from aster_agents.exchange.http import AsterClient
from aster_agents.models import Order, OrderRequest, OrderType, Side, TimeInForce, UserTrade
from aster_agents.sim.accounts import accounts_from_pairs
from aster_agents.sim.inprocess import InProcessClient
from aster_agents.sim.server import SimApp, SimConfig
from aster_agents.sim.symbols import SYMBOLS

USER = "0x" + "ab" * 20


def test_open_orders_are_the_parsed_documents_and_follow_every_change() -> None:
    """A resting order asked for again is the same Order (parsed once); a changed or
    cancelled one is seen at once, and every answer equals parsing the simulator's JSON."""
    app = SimApp(SimConfig())
    for account in accounts_from_pairs([(USER, USER)]):
        app.add_account(account)
    client = InProcessClient(app, USER)
    route = app.routes[("GET", "/fapi/v3/openOrders")]

    def documents() -> list[Order]:
        return parse.orders(route.handler(USER, {"symbol": "BTCUSDT"}))

    mark = app.market.mark("BTCUSDT")
    for n, stop in enumerate((mark / 2, mark / 3), 1):
        client.new_order(
            OrderRequest(
                "BTCUSDT",
                Side.SELL,
                OrderType.STOP_MARKET,
                f"stop-{n}",
                quantity=Decimal("0.01"),
                stop_price=stop.quantize(Decimal("0.1")),
            )
        )
        first = client.open_orders("BTCUSDT")
        again = client.open_orders("BTCUSDT")
        assert first == again == documents() and len(first) == n
        assert all(a is b for a, b in zip(first, again, strict=True))  # parsed once
    client.cancel_order("BTCUSDT", client_order_id="stop-1")
    assert [o.client_order_id for o in client.open_orders("BTCUSDT")] == ["stop-2"]
    assert client.open_orders("BTCUSDT") == documents()


def test_user_trades_are_the_parsed_documents_parsed_once() -> None:
    """Trades asked for again are the same UserTrades (parsed once); each answer equals
    parsing the simulator's JSON, new fills included, from any startTime."""
    app = SimApp(SimConfig())
    for account in accounts_from_pairs([(USER, USER)]):
        app.add_account(account)
    client = InProcessClient(app, USER)
    route = app.routes[("GET", "/fapi/v3/userTrades")]

    def documents(start: int | None = None) -> list[UserTrade]:
        args = {"symbol": "BTCUSDT", "limit": "500"}
        if start is not None:
            args["startTime"] = str(start)
        return parse.user_trades(route.handler(USER, args))

    for n, side in enumerate((Side.BUY, Side.SELL, Side.BUY), 1):
        client.new_order(
            OrderRequest("BTCUSDT", side, OrderType.MARKET, f"market-{n}", quantity=Decimal("0.01"))
        )
        first = client.user_trades("BTCUSDT")
        again = client.user_trades("BTCUSDT")
        assert first == again == documents() and len(first) == n
        assert all(a is b for a, b in zip(first, again, strict=True))  # parsed once
        since = client.user_trades("BTCUSDT", start_time=first[-1].time)
        assert since == documents(first[-1].time) and since[-1] is first[-1]


def _on_grid(price: Decimal, tick: Decimal) -> Decimal:
    return (price / tick).to_integral_value() * tick


def test_typed_open_orders_equal_the_parsed_route_through_an_orders_life() -> None:
    """The engine's own orders, parsed by state: digit for digit (``repr``) what parsing the
    route's documents gives, with and without a symbol, while orders rest, are modified,
    fill and are cancelled as the market moves; a bad symbol fails as the route does."""
    app = SimApp(SimConfig(seed=3))
    app.market.freeze()
    for account in accounts_from_pairs([(USER, USER)]):
        app.add_account(account)
    client = InProcessClient(app, USER)
    route = app.routes[("GET", "/fapi/v3/openOrders")]

    def same(symbol: str | None) -> int:
        params = {"symbol": symbol} if symbol else {}
        typed = client.open_orders(symbol)
        assert repr(typed) == repr(parse.orders(route.handler(USER, params)))
        return len(typed)

    marks = {s: app.market.mark(s) for s in ("BTCUSDT", "ETHUSDT")}
    for symbol, mark in marks.items():
        tick = SYMBOLS[symbol].tick_size
        qty = SYMBOLS[symbol].min_qty * 10
        for n, price in enumerate((mark * Decimal("0.999"), mark * Decimal("0.9")), 1):
            client.new_order(
                OrderRequest(
                    symbol,
                    Side.BUY,
                    OrderType.LIMIT,
                    f"{symbol}-{n}",
                    quantity=qty,
                    price=_on_grid(price, tick),
                    time_in_force=TimeInForce.GTC,
                )
            )
        client.new_order(
            OrderRequest(
                symbol,
                Side.SELL,
                OrderType.STOP_MARKET,
                f"{symbol}-stop",
                quantity=qty,
                stop_price=_on_grid(mark / 2, tick),
            )
        )
    assert same(None) == 6 and same("BTCUSDT") == 3
    eth_tick = SYMBOLS["ETHUSDT"].tick_size
    app.engine.modify_order(
        USER,
        {
            "symbol": "ETHUSDT",
            "origClientOrderId": "ETHUSDT-2",
            "side": "BUY",
            "quantity": f"{SYMBOLS['ETHUSDT'].min_qty * 20}",
            "price": f"{_on_grid(marks['ETHUSDT'] * Decimal('0.95'), eth_tick)}",
        },
    )
    client.cancel_order("ETHUSDT", client_order_id="ETHUSDT-stop")
    assert same("ETHUSDT") == 2
    filled = 0
    for _ in range(240):  # an hour of quarter-minute steps: the near limits fill
        app.market.advance(15_000)
        app.engine.tick()
        filled = 6 - 1 - same(None)
        same("BTCUSDT")
        if filled >= 2:
            break
    assert filled >= 1
    with pytest.raises(AsterAgentsError) as typed:
        client.open_orders("NOPEUSDT")
    with pytest.raises(AsterAgentsError) as plain:
        AsterClient.open_orders(client, "NOPEUSDT")  # the route's document path
    assert type(typed.value) is type(plain.value) and str(typed.value) == str(plain.value)
    assert "Invalid symbol" in str(typed.value)


def test_premium_index_is_the_parsed_document_at_every_moment() -> None:
    """The typed premium index equals parsing the route's document (``repr``: the same
    digits) across settlements, with a pinned mark, with funding off; errors alike."""
    for funding_s in (8 * 3600.0, 0.0):
        app = SimApp(SimConfig(funding_interval_s=funding_s))
        client = InProcessClient(app, USER)
        market = app.market
        start = market.freeze()
        for k in range(0, 40):
            market.freeze(start + k * 3_600_000 // 3 + k)
            if k == 20:
                market.pin("ETHUSDT", Decimal("1234.50"))
            for symbol in ("BTCUSDT", "ETHUSDT"):
                typed = client.premium_index(symbol)
                assert repr(typed) == repr(AsterClient.premium_index(client, symbol))
        for bad in ("NOPEUSDT", ""):
            with pytest.raises(AsterAgentsError) as typed_err:
                client.premium_index(bad)
            with pytest.raises(AsterAgentsError) as plain_err:
                AsterClient.premium_index(client, bad)
            assert repr(typed_err.value) == repr(plain_err.value)
