"""AsterClient against the simulator over real loopback HTTP: every endpoint, parsed values."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from aster_agents.errors import (
    AuthError,
    InsufficientMargin,
    OrderNotFound,
    OrderRejected,
    TransientExchangeError,
    UnknownOutcome,
)
from aster_agents.exchange.http import AsterClient, RequestLog
from aster_agents.models import (
    INTERVAL_MS,
    MarginType,
    OrderRequest,
    OrderStatus,
    OrderType,
    PositionSide,
    Side,
    TimeInForce,
)
from aster_agents.signing import TESTNET_CHAIN_ID, NonceSource, Signer, generate_private_key
from aster_agents.sim.faults import FaultConfig
from aster_agents.sim.server import SimConfig, SimServer
from aster_agents.sim.symbols import SYMBOLS
from tests.plugins.sim import SIM_BALANCE, SimKeys

BTC = "BTCUSDT"
ZERO = Decimal(0)


@pytest.fixture
def client(sim_server: SimServer, sim_keys: SimKeys) -> Iterator[AsterClient]:
    with AsterClient(
        sim_server.base_url, user=sim_keys.user, signer=sim_keys.agents[0], nonces=NonceSource(0)
    ) as c:
        yield c


def _market(
    symbol: str,
    side: Side,
    qty: str,
    coid: str,
    *,
    reduce_only: bool = False,
    position_side: PositionSide = PositionSide.BOTH,
) -> OrderRequest:
    return OrderRequest(
        symbol,
        side,
        OrderType.MARKET,
        coid,
        quantity=Decimal(qty),
        reduce_only=reduce_only,
        position_side=position_side,
    )


def _limit(symbol: str, side: Side, qty: str, price: Decimal, coid: str) -> OrderRequest:
    return OrderRequest(
        symbol,
        side,
        OrderType.LIMIT,
        coid,
        quantity=Decimal(qty),
        price=price,
        time_in_force=TimeInForce.GTC,
    )


def _book(sim: SimServer, symbol: str) -> tuple[Decimal, Decimal]:
    return sim.market.book(symbol)


# --- public market data --------------------------------------------------------------------


def test_server_time_is_market_time(client: AsterClient) -> None:
    """server_time is an int in epoch ms close to the wall clock (speed 1)."""
    now_ms = int(time.time() * 1000)
    server = client.server_time()
    assert isinstance(server, int)
    assert abs(server - now_ms) < 5_000


def test_exchange_info_has_the_symbols_with_filters(client: AsterClient) -> None:
    """exchangeInfo parses into the sim's symbols with Decimal filters equal to its table."""
    info = client.exchange_info()
    assert set(info.symbols) == set(SYMBOLS) and len(info.symbols) == len(SYMBOLS) == 21
    assert info.rate_limits and {r.rate_limit_type for r in info.rate_limits} >= {
        "REQUEST_WEIGHT",
        "ORDERS",
    }
    for name, sym in SYMBOLS.items():
        got = info.symbol(name)
        f = got.filters
        assert (got.base_asset, got.quote_asset, got.status) == (sym.base_asset, "USDT", "TRADING")
        assert (got.price_precision, got.quantity_precision) == (
            sym.price_precision,
            sym.quantity_precision,
        )
        assert isinstance(f.tick_size, Decimal)
        assert (f.tick_size, f.min_price, f.max_price) == (
            sym.tick_size,
            sym.min_price,
            sym.max_price,
        )
        assert (f.step_size, f.min_qty, f.max_qty) == (sym.step_size, sym.min_qty, sym.max_qty)
        assert (f.market_step_size, f.market_max_qty) == (sym.step_size, sym.market_max_qty)
        assert f.min_notional == sym.min_notional
        assert (f.multiplier_up, f.multiplier_down) == (sym.multiplier_up, sym.multiplier_down)
        assert (f.max_num_orders, f.max_num_algo_orders) == (200, 10)


@pytest.mark.parametrize("interval", ["1m", "5m", "1h"])
def test_klines_intervals_ordered_and_limited(client: AsterClient, interval: str) -> None:
    """Klines come oldest first, one interval apart, limit respected, OHLC consistent."""
    size = INTERVAL_MS[interval]
    before = client.server_time()
    rows = client.klines(BTC, interval, limit=30)
    after = client.server_time()
    assert len(rows) == 30
    opens = [k.open_time for k in rows]
    assert all(b - a == size for a, b in itertools.pairwise(opens))
    assert before - size < opens[-1] <= after  # the last candle is the current one
    for k in rows:
        assert k.close_time == k.open_time + size - 1
        assert isinstance(k.close, Decimal) and k.volume >= 0
        assert k.low <= min(k.open, k.close) <= max(k.open, k.close) <= k.high
    assert len(client.klines(BTC, interval, limit=1)) == 1


def test_klines_start_time_window(client: AsterClient) -> None:
    """start_time/end_time select the candles inside the window, from the first one on."""
    latest = client.klines(BTC, "1m", limit=20)
    start, end = latest[5].open_time, latest[14].open_time
    rows = client.klines(BTC, "1m", limit=100, start_time=start, end_time=end)
    assert [k.open_time for k in rows] == [k.open_time for k in latest[5:15]]
    assert [k.close for k in rows[:-1]] == [k.close for k in latest[5:14]]


def test_price_views_consistent_unpinned(client: AsterClient) -> None:
    """Mark, last price, book and the current 1m close agree within a tight band."""
    mark = client.premium_index(BTC).mark_price
    last = client.ticker_price(BTC).price
    book = client.book_ticker(BTC)
    close = client.klines(BTC, "1m", limit=1)[-1].close
    assert book.bid_price < book.ask_price
    for price in (last, book.bid_price, book.ask_price, close):
        assert abs(price - mark) / mark < Decimal("0.005")


def test_price_views_exact_when_pinned(client: AsterClient, sim_server: SimServer) -> None:
    """With a pinned mark: premium index, ticker and book ticker show exactly the engine's view."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    prem = client.premium_index(BTC)
    assert prem.symbol == BTC
    assert prem.mark_price == prem.index_price == Decimal("100000.0")
    settled = sim_server.engine.last_funding_time(prem.time)
    rate = sim_server.market.funding_rate(BTC, settled).quantize(Decimal("1e-8"))
    assert prem.last_funding_rate == rate and abs(rate) <= Decimal("0.0001")
    assert prem.next_funding_time > prem.time > 0
    assert prem.next_funding_time % (8 * 3_600_000) == 0
    assert client.ticker_price(BTC).price == Decimal("100000.0")
    book = client.book_ticker(BTC)
    assert (book.bid_price, book.ask_price) == _book(sim_server, BTC)
    assert book.bid_price < prem.mark_price < book.ask_price
    assert book.bid_qty > 0 and book.ask_qty > 0


# --- account ---------------------------------------------------------------------------------


def test_balances_and_account_before_and_after_a_trade(
    client: AsterClient, sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """Balances and accountWithJoinMargin match the engine before and after a MARKET fill."""
    engine, user = sim_server.engine, sim_keys.user
    (usdt,) = client.balances()
    assert usdt.asset == "USDT" and usdt.balance == SIM_BALANCE == usdt.available_balance
    acct = client.account()
    assert acct.total_wallet_balance == SIM_BALANCE and acct.positions == ()
    assert acct.can_trade

    sim_server.market.pin(BTC, Decimal("100000.0"))
    order = client.new_order(_market(BTC, Side.BUY, "0.010", "acct-open-1"))
    fee = (order.avg_price * Decimal("0.010") * Decimal("0.00035")).quantize(Decimal("1e-8"))
    (usdt,) = client.balances()
    assert usdt.balance == engine.balance(user) == SIM_BALANCE - fee
    acct = client.account()
    assert acct.total_wallet_balance == usdt.balance
    (pos,) = acct.positions
    assert (pos.symbol, pos.position_amt, pos.entry_price) == (
        BTC,
        Decimal("0.01"),
        order.avg_price,
    )
    assert pos.position_side is PositionSide.BOTH and pos.margin_type == "cross"
    upnl = (Decimal("100000.0") - order.avg_price) * Decimal("0.010")
    assert acct.total_unrealized_profit == pos.unrealized_profit == upnl
    margin = Decimal("0.010") * Decimal("100000.0") / 20
    assert acct.total_initial_margin == margin
    assert acct.available_balance == usdt.balance + upnl - margin == usdt.available_balance
    assert acct.balances[0].asset == "USDT" and acct.balances[0].balance == usdt.balance


def test_account_falls_back_when_join_margin_path_is_missing(
    sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """An exchange without accountWithJoinMargin (404, even with code -1000): one try, then
    /fapi/v3/account, remembered; a 404 is not retried as transient."""
    del sim_server.app.routes[("GET", "/fapi/v3/accountWithJoinMargin")]  # the pre-rename API
    log: list[RequestLog] = []
    with AsterClient(
        sim_server.base_url,
        user=sim_keys.user,
        signer=sim_keys.agents[0],
        nonces=NonceSource(0),
        on_request=log.append,
    ) as c:
        assert c.account().total_wallet_balance == SIM_BALANCE
        assert c.account().available_balance == SIM_BALANCE
    assert [(e.path, e.status) for e in log] == [
        ("/fapi/v3/accountWithJoinMargin", 404),
        ("/fapi/v3/account", 200),
        ("/fapi/v3/account", 200),
    ]


def test_position_risk_matches_engine(
    client: AsterClient, sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """positionRisk shows the signed amount, entry, mark, P&L and leverage of the engine."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    assert client.position_risk() == []
    order = client.new_order(_market(BTC, Side.SELL, "0.020", "risk-short-1"))
    sim_server.market.pin(BTC, Decimal("99000.0"))
    (pos,) = client.position_risk(BTC)
    assert pos.position_amt == Decimal("-0.020") == sim_server.engine.position(sim_keys.user, BTC)
    assert pos.entry_price == order.avg_price and pos.mark_price == Decimal("99000.0")
    assert pos.unrealized_profit == (Decimal("99000.0") - order.avg_price) * Decimal("-0.020")
    assert pos.unrealized_profit > 0 and pos.leverage == 20
    assert client.position_risk("ETHUSDT") == []


def test_position_mode_round_trip(
    client: AsterClient, sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """One-way -> hedge -> one-way; setting the current mode again (-4059) is a success."""
    acct = sim_server.engine.account(sim_keys.user)
    assert client.get_position_mode() is False
    client.set_position_mode(False)  # -4059 "No need to change position side."
    client.set_position_mode(True)
    assert client.get_position_mode() is True and acct.dual_side is True
    client.set_position_mode(True)
    sim_server.market.pin(BTC, Decimal("100000.0"))
    order = client.new_order(
        _market(BTC, Side.BUY, "0.010", "hedge-long-1", position_side=PositionSide.LONG)
    )
    assert order.position_side is PositionSide.LONG and order.status is OrderStatus.FILLED
    sides = {p.position_side: p.position_amt for p in client.position_risk(BTC)}
    assert sides == {PositionSide.LONG: Decimal("0.01"), PositionSide.SHORT: ZERO}
    with pytest.raises(OrderRejected) as info:
        client.set_position_mode(False)
    assert info.value.code == -4068
    client.new_order(
        _market(BTC, Side.SELL, "0.010", "hedge-long-2", position_side=PositionSide.LONG)
    )
    client.set_position_mode(False)
    assert client.get_position_mode() is False and acct.dual_side is False


def test_leverage_and_margin_type(
    client: AsterClient, sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """Leverage is set and echoed; margin type changes, -4046 (unchanged) is a success."""
    acct = sim_server.engine.account(sim_keys.user)
    assert client.set_leverage(BTC, 7) == 7
    assert acct.lev(BTC) == 7
    (row,) = client.position_risk(BTC)
    assert (row.leverage, row.margin_type, row.position_amt) == (7, "cross", ZERO)
    with pytest.raises(OrderRejected) as info:
        client.set_leverage(BTC, 500)
    assert info.value.code == -4028 and acct.lev(BTC) == 7

    client.set_margin_type(BTC, MarginType.CROSSED)  # -4046 "No need to change margin type."
    client.set_margin_type(BTC, MarginType.ISOLATED)
    client.set_margin_type(BTC, MarginType.ISOLATED)
    assert acct.isolated[BTC] is True
    assert client.position_risk(BTC)[0].margin_type == "isolated"
    sim_server.market.pin(BTC, Decimal("100000.0"))
    client.new_order(_market(BTC, Side.BUY, "0.010", "margin-open-1"))
    with pytest.raises(OrderRejected) as info:
        client.set_margin_type(BTC, MarginType.CROSSED)
    assert info.value.code == -4048
    assert client.account().positions[0].margin_type == "isolated"


# --- orders ----------------------------------------------------------------------------------


def test_market_order_result_filled(
    client: AsterClient, sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """A MARKET order answers with RESULT: FILLED at the ask, typed fields as sent."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    _, ask = _book(sim_server, BTC)
    order = client.new_order(_market(BTC, Side.BUY, "0.005", "mkt-result-1"))
    assert order.status is OrderStatus.FILLED and order.type is OrderType.MARKET
    assert order.side is Side.BUY and order.position_side is PositionSide.BOTH
    assert order.client_order_id == "mkt-result-1" and order.symbol == BTC
    assert (order.orig_qty, order.executed_qty) == (Decimal("0.005"), Decimal("0.005"))
    assert order.avg_price == ask and order.cum_quote == ask * Decimal("0.005")
    (trade,) = sim_server.engine.trades(sim_keys.user)
    assert (trade.order_id, trade.price, trade.qty) == (order.order_id, ask, Decimal("0.005"))
    assert client.query_order(BTC, order_id=order.order_id) == order


def test_limit_gtc_rests_queried_and_canceled_by_client_id(
    client: AsterClient, sim_server: SimServer
) -> None:
    """A LIMIT GTC below the bid rests; query by both ids; cancel by client order id."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    price = Decimal("99000.0")
    placed = client.new_order(_limit(BTC, Side.BUY, "0.010", price, "lim-gtc-1"))
    assert placed.status is OrderStatus.NEW and placed.executed_qty == ZERO
    assert (placed.price, placed.time_in_force, placed.type) == (price, "GTC", OrderType.LIMIT)
    by_coid = client.query_order(BTC, client_order_id="lim-gtc-1")
    by_id = client.query_order(BTC, order_id=placed.order_id)
    assert by_coid == by_id and by_id.order_id == placed.order_id
    assert by_id.status is OrderStatus.NEW and by_id.orig_qty == Decimal("0.010")
    (listed,) = client.open_orders(BTC)
    assert (
        listed == by_id and client.open_orders() == [by_id] and client.open_orders("ETHUSDT") == []
    )
    acct = client.account()
    assert acct.total_initial_margin == Decimal("0.010") * price / 20

    canceled = client.cancel_order(BTC, client_order_id="lim-gtc-1")
    assert canceled.status is OrderStatus.CANCELED and canceled.order_id == placed.order_id
    assert client.open_orders() == []
    assert client.query_order(BTC, client_order_id="lim-gtc-1").status is OrderStatus.CANCELED
    with pytest.raises(OrderRejected) as info:
        client.cancel_order(BTC, client_order_id="lim-gtc-1")
    assert info.value.code == -2011


def test_resting_limit_fills_when_book_crosses(
    client: AsterClient, sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """A resting LIMIT fills as maker at its own price once the pinned mark moves through it."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    placed = client.new_order(_limit(BTC, Side.BUY, "0.010", Decimal("99500.0"), "lim-fill-1"))
    sim_server.market.pin(BTC, Decimal("99000.0"))
    filled = client.query_order(BTC, order_id=placed.order_id)
    assert filled.status is OrderStatus.FILLED and filled.avg_price == Decimal("99500.0")
    (trade,) = client.user_trades(BTC)
    assert trade.maker and trade.price == Decimal("99500.0")
    assert trade.commission == Decimal("99500.0") * Decimal("0.010") * Decimal("0.0001")
    assert client.open_orders() == []
    assert sim_server.engine.position(sim_keys.user, BTC) == Decimal("0.010")


def test_cancel_all_open_orders(client: AsterClient, sim_server: SimServer) -> None:
    """cancel_all_open_orders cancels every open order of the symbol and no other."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    sim_server.market.pin("ETHUSDT", Decimal("3000.00"))
    a = client.new_order(_limit(BTC, Side.BUY, "0.010", Decimal("99000.0"), "all-1"))
    b = client.new_order(_limit(BTC, Side.SELL, "0.010", Decimal("101000.0"), "all-2"))
    c = client.new_order(_limit("ETHUSDT", Side.BUY, "0.100", Decimal("2950.00"), "all-3"))
    assert {o.order_id for o in client.open_orders()} == {a.order_id, b.order_id, c.order_id}
    client.cancel_all_open_orders(BTC)
    assert [o.order_id for o in client.open_orders()] == [c.order_id]
    for order in (a, b):
        assert client.query_order(BTC, order_id=order.order_id).status is OrderStatus.CANCELED
    client.cancel_all_open_orders(BTC)  # nothing left: still a success
    assert client.open_orders(BTC) == []


def test_stop_market_close_position_placed_then_canceled(
    client: AsterClient, sim_server: SimServer
) -> None:
    """A STOP_MARKET closePosition rests with its stop price and is canceled by order id."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    client.new_order(_market(BTC, Side.BUY, "0.010", "stop-open-1"))
    request = OrderRequest(
        BTC,
        Side.SELL,
        OrderType.STOP_MARKET,
        "stop-close-1",
        stop_price=Decimal("98000.0"),
        close_position=True,
        working_type="MARK_PRICE",
    )
    stop = client.new_order(request)
    assert stop.status is OrderStatus.NEW and stop.type is OrderType.STOP_MARKET
    assert stop.close_position and stop.stop_price == Decimal("98000.0")
    assert stop.orig_qty == ZERO and stop.side is Side.SELL
    (listed,) = client.open_orders(BTC)
    assert listed.client_order_id == "stop-close-1" and listed.close_position
    canceled = client.cancel_order(BTC, order_id=stop.order_id)
    assert canceled.status is OrderStatus.CANCELED
    assert client.open_orders(BTC) == []
    assert client.position_risk(BTC)[0].position_amt == Decimal("0.010")


def test_stop_market_close_position_triggers(client: AsterClient, sim_server: SimServer) -> None:
    """A STOP_MARKET closePosition closes the whole position when the mark crosses the stop."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    client.new_order(_market(BTC, Side.BUY, "0.010", "trig-open-1"))
    stop = client.new_order(
        OrderRequest(
            BTC,
            Side.SELL,
            OrderType.STOP_MARKET,
            "trig-close-1",
            stop_price=Decimal("98000.0"),
            close_position=True,
        )
    )
    sim_server.market.pin(BTC, Decimal("97900.0"))
    done = client.query_order(BTC, order_id=stop.order_id)
    assert done.status is OrderStatus.FILLED and done.executed_qty == Decimal("0.010")
    assert [p.position_amt for p in client.position_risk(BTC)] in ([], [ZERO])


def test_immediately_triggering_stop_is_rejected(
    client: AsterClient, sim_server: SimServer
) -> None:
    """A stop that would trigger at once (-2021) is OrderRejected."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    request = OrderRequest(
        BTC,
        Side.SELL,
        OrderType.STOP_MARKET,
        "trig-now-1",
        quantity=Decimal("0.010"),
        stop_price=Decimal("100500.0"),
        reduce_only=True,
    )
    with pytest.raises(OrderRejected) as info:
        client.new_order(request)
    assert info.value.code == -2021


def test_reduce_only_without_position_is_rejected(
    client: AsterClient, sim_server: SimServer
) -> None:
    """reduceOnly with nothing to reduce (-2022) maps to OrderRejected, nothing placed."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    with pytest.raises(OrderRejected) as info:
        client.new_order(_market(BTC, Side.SELL, "0.010", "ro-1", reduce_only=True))
    assert info.value.code == -2022 and "ReduceOnly" in str(info.value)
    assert not isinstance(info.value, InsufficientMargin)
    with pytest.raises(OrderNotFound):
        client.query_order(BTC, client_order_id="ro-1")


def test_unknown_order_is_order_not_found(client: AsterClient) -> None:
    """-2013 maps to OrderNotFound for query and cancel, by order id and by client order id."""
    with pytest.raises(OrderNotFound) as info:
        client.query_order(BTC, client_order_id="never-placed")
    assert info.value.code == -2013
    with pytest.raises(OrderNotFound):
        client.query_order(BTC, order_id=123)
    with pytest.raises(OrderNotFound):
        client.cancel_order(BTC, client_order_id="never-placed")


def test_insufficient_margin(client: AsterClient, sim_server: SimServer, sim_keys: SimKeys) -> None:
    """An order whose margin exceeds the available balance (-2019) is InsufficientMargin."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    with pytest.raises(InsufficientMargin) as info:
        client.new_order(_market(BTC, Side.BUY, "100", "too-big-1"))
    assert info.value.code == -2019
    with pytest.raises(InsufficientMargin):
        client.new_order(_limit(BTC, Side.BUY, "100", Decimal("99000.0"), "too-big-2"))
    assert sim_server.engine.all_orders_ever() == []
    assert sim_server.engine.balance(sim_keys.user) == SIM_BALANCE


@pytest.mark.parametrize(
    ("qty", "price", "code"),
    [("0.0001", None, -1111), ("0.010", Decimal("99000.05"), -1111), ("0.000", None, -4003)],
)
def test_precision_and_filter_errors_are_rejections(
    client: AsterClient, sim_server: SimServer, qty: str, price: Decimal | None, code: int
) -> None:
    """Too many decimals (-1111) and filter violations map to OrderRejected with the code."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    if price is None:
        request = _market(BTC, Side.BUY, qty, "prec-1")
    else:
        request = _limit(BTC, Side.BUY, qty, price, "prec-1")
    with pytest.raises(OrderRejected) as info:
        client.new_order(request)
    assert info.value.code == code
    assert client.open_orders() == []


# --- history: trades and income ------------------------------------------------------------

_SCRIPT: tuple[tuple[str, Side, str], ...] = (
    ("100000.0", Side.BUY, "0.010"),  # open long
    ("101000.0", Side.BUY, "0.010"),  # add
    ("102000.0", Side.SELL, "0.005"),  # reduce
    ("99000.0", Side.SELL, "0.015"),  # close
)


def _expected_pnl(fills: list[tuple[Side, Decimal, Decimal]]) -> list[Decimal]:
    """Realized P&L per fill of a one-way position with average-cost entry (independent model)."""
    amount, entry, out = ZERO, ZERO, []
    for side, price, qty in fills:
        if side is Side.BUY:
            entry = (amount * entry + qty * price) / (amount + qty)
            amount += qty
            out.append(ZERO)
        else:
            out.append((price - entry) * qty)
            amount -= qty
    return out


def test_trades_and_income_add_up_to_balance_change(
    client: AsterClient, sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """Open/add/reduce/close at pinned prices: sum(realized P&L - commission) = balance change."""
    before = client.balances()[0].balance
    orders = []
    for i, (mark, side, qty) in enumerate(_SCRIPT):
        sim_server.market.pin(BTC, Decimal(mark))
        bid, ask = _book(sim_server, BTC)
        order = client.new_order(_market(BTC, side, qty, f"script-{i}"))
        assert order.avg_price == (ask if side is Side.BUY else bid)
        orders.append(order)
    assert [p.position_amt for p in client.position_risk(BTC)] in ([], [ZERO])
    after = client.balances()[0].balance
    assert after == sim_server.engine.balance(sim_keys.user)

    trades = client.user_trades(BTC)
    assert [t.order_id for t in trades] == [o.order_id for o in orders]
    assert [(t.side, t.qty) for t in trades] == [(s, Decimal(q)) for _, s, q in _SCRIPT]
    assert all(t.commission_asset == "USDT" and not t.maker for t in trades)
    assert [t.buyer for t in trades] == [s is Side.BUY for _, s, _ in _SCRIPT]
    fills = [(t.side, t.price, t.qty) for t in trades]
    assert [t.realized_pnl for t in trades] == _expected_pnl(fills)
    for t in trades:
        assert t.quote_qty == t.price * t.qty
        assert t.commission == (t.quote_qty * Decimal("0.00035")).quantize(Decimal("1e-8"))
    net = sum((t.realized_pnl - t.commission for t in trades), ZERO)
    assert net == after - before and net != 0

    income = client.income(symbol=BTC)
    by_type: dict[str, Decimal] = {}
    for row in income:
        by_type[row.income_type] = by_type.get(row.income_type, ZERO) + row.income
        assert row.asset == "USDT" and row.symbol == BTC
    assert by_type["REALIZED_PNL"] == sum((t.realized_pnl for t in trades), ZERO)
    assert by_type["COMMISSION"] == -sum((t.commission for t in trades), ZERO)
    assert {r.trade_id for r in income} == {str(t.id) for t in trades}
    assert sum((r.income for r in client.income()), ZERO) == after  # TRANSFER + P&L + fees
    commissions = client.income(income_type="COMMISSION")
    assert len(commissions) == 4 and all(r.income < 0 for r in commissions)
    assert len(client.income(limit=2)) == 2


def test_user_trades_paging(client: AsterClient, sim_server: SimServer) -> None:
    """user_trades honours from_id, start_time and limit."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    for i in range(3):
        client.new_order(_market(BTC, Side.BUY, "0.001", f"page-{i}"))
    trades = client.user_trades(BTC)
    assert len(trades) == 3 and trades == sorted(trades, key=lambda t: t.id)
    assert client.user_trades(BTC, from_id=trades[1].id) == trades[1:]
    assert client.user_trades(BTC, limit=1) == trades[-1:]
    assert client.user_trades(BTC, start_time=trades[0].time) == trades
    assert client.user_trades("ETHUSDT") == []


# --- signers and authentication ------------------------------------------------------------


@pytest.mark.parametrize("with_user", [True, False])
def test_main_account_signs_for_itself(
    sim_server: SimServer, sim_keys: SimKeys, with_user: bool
) -> None:
    """The main key as signer (signer == user, or no user sent) reads and trades its account."""
    user = sim_keys.user if with_user else None
    with AsterClient(
        sim_server.base_url, user=user, signer=sim_keys.main, nonces=NonceSource(1)
    ) as main:
        assert main.balances()[0].balance == SIM_BALANCE
        sim_server.market.pin(BTC, Decimal("100000.0"))
        order = main.new_order(_market(BTC, Side.BUY, "0.001", "main-1"))
        assert order.status is OrderStatus.FILLED
        assert main.position_risk(BTC)[0].position_amt == Decimal("0.001")
    assert sim_server.engine.position(sim_keys.user, BTC) == Decimal("0.001")


def test_second_agent_sees_the_same_account(
    client: AsterClient, sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """Two API wallets of one main account see one balance, one position, one order book."""
    sim_server.market.pin(BTC, Decimal("100000.0"))
    client.new_order(_limit(BTC, Side.BUY, "0.010", Decimal("99000.0"), "shared-1"))
    with AsterClient(
        sim_server.base_url, user=sim_keys.user, signer=sim_keys.agents[1], nonces=NonceSource(2)
    ) as other:
        assert [o.client_order_id for o in other.open_orders()] == ["shared-1"]
        other.cancel_order(BTC, client_order_id="shared-1")
    assert client.open_orders() == []


def _auth_failure(base_url: str, user: str | None, signer: Signer) -> AuthError:
    with AsterClient(base_url, user=user, signer=signer, nonces=NonceSource(3)) as c:
        assert c.server_time() > 0  # public endpoints need no credentials
        with pytest.raises(AuthError) as info:
            c.balances()
        return info.value


def test_unregistered_signer_is_auth_error(sim_server: SimServer, sim_keys: SimKeys) -> None:
    """A signer that is no API wallet of any account gets AuthError (-2015, HTTP 401)."""
    key = generate_private_key()
    exc = _auth_failure(sim_server.base_url, sim_keys.user, Signer(key))
    assert (exc.code, exc.status) == (-2015, 401)
    assert key[2:] not in str(exc) and key[2:] not in repr(exc)


def test_signer_acting_for_another_user_is_auth_error(
    sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """A registered API wallet naming a user it does not act for gets AuthError (-2015)."""
    stranger = Signer(generate_private_key()).address
    exc = _auth_failure(sim_server.base_url, stranger, sim_keys.agents[0])
    assert exc.code == -2015


def test_wrong_chain_id_is_auth_error(sim_server: SimServer, sim_keys: SimKeys) -> None:
    """Signing for the testnet chain id against a mainnet exchange gets AuthError (-1022)."""
    testnet = Signer(sim_keys.agent_keys[0], chain_id=TESTNET_CHAIN_ID)
    assert testnet.address == sim_keys.agents[0].address
    exc = _auth_failure(sim_server.base_url, sim_keys.user, testnet)
    assert (exc.code, exc.status) == (-1022, 401)
    with (
        AsterClient(
            sim_server.base_url, user=sim_keys.user, signer=testnet, nonces=NonceSource(4)
        ) as c,
        pytest.raises(AuthError),
    ):
        c.new_order(_market(BTC, Side.BUY, "0.001", "wrong-chain-1"))
    assert sim_server.engine.all_orders_ever() == []


# --- unknown outcomes over real HTTP ---------------------------------------------------------


def _faulty(keys: SimKeys, faults: FaultConfig) -> SimServer:
    return SimServer(SimConfig(seed=7, accounts=(keys.account(),), faults=faults))


def test_accepted_then_503_resolved_by_client_order_id(sim_keys: SimKeys) -> None:
    """A new order answered 503 'execution status unknown' after acceptance is found by its
    client order id and returned; it is never sent twice."""
    with _faulty(sim_keys, FaultConfig(accepted_503_rate=1.0)) as sim:
        sim.market.pin(BTC, Decimal("100000.0"))
        with AsterClient(
            sim.base_url,
            user=sim_keys.user,
            signer=sim_keys.agents[0],
            nonces=NonceSource(0),
            backoff_base=0.001,
        ) as c:
            order = c.new_order(_market(BTC, Side.BUY, "0.010", "unknown-1"))
        assert order.status is OrderStatus.FILLED and order.client_order_id == "unknown-1"
        assert [o.client_order_id for o in sim.engine.all_orders_ever()] == ["unknown-1"]
        assert sim.engine.position(sim_keys.user, BTC) == Decimal("0.010")


def test_exchange_down_new_order_is_unknown_outcome(sim_keys: SimKeys) -> None:
    """When every request is answered 503, a new order ends as UnknownOutcome naming its id."""
    with _faulty(sim_keys, FaultConfig(error_rates={503: 1.0})) as sim:
        with AsterClient(
            sim.base_url,
            user=sim_keys.user,
            signer=sim_keys.agents[0],
            nonces=NonceSource(0),
            backoff_base=0.001,
            max_retries=2,
        ) as c:
            with pytest.raises(TransientExchangeError):
                c.balances()
            with pytest.raises(UnknownOutcome) as info:
                c.new_order(_market(BTC, Side.BUY, "0.010", "down-1"))
        assert info.value.client_order_id == "down-1"
        assert sim.engine.all_orders_ever() == []
