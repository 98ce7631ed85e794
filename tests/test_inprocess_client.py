"""The in-process client (backtest): the same answers as parsing the simulator's documents."""

from __future__ import annotations

from decimal import Decimal

from aster_agents.exchange import parse
from aster_agents.models import Order, OrderRequest, OrderType, Side, UserTrade
from aster_agents.sim.accounts import accounts_from_pairs
from aster_agents.sim.inprocess import InProcessClient
from aster_agents.sim.server import SimApp, SimConfig

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
