"""Exchange JSON -> frozen models. Numbers go through ``Decimal(str(x))``; times stay ``int``.

Optional fields may be missing (the exchange adds and drops fields between releases); a missing
required field or a value of the wrong shape raises ``TransientExchangeError`` naming the payload
and the field, because a garbled reply is usually a proxy or a half-deployed server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, TypeVar

from aster_agents.errors import TransientExchangeError
from aster_agents.models import (
    ZERO,
    AccountInfo,
    Balance,
    BookTicker,
    CommissionRate,
    ExchangeInfo,
    FundingRate,
    Income,
    Kline,
    Order,
    OrderStatus,
    OrderType,
    Position,
    PositionSide,
    PremiumIndex,
    RateLimit,
    Side,
    StpMode,
    SymbolFilters,
    SymbolInfo,
    TickerPrice,
    Turn,
    UserTrade,
)

T = TypeVar("T")
E = TypeVar("E", bound=Enum)
_MISSING: Any = object()


class MalformedPayload(TransientExchangeError):
    """The exchange answered with JSON of an unexpected shape."""


def _fail(what: str, detail: str) -> MalformedPayload:
    return MalformedPayload(f"malformed {what} from the exchange: {detail}; retry later")


def _obj(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _fail(what, f"expected a JSON object, got {type(data).__name__}")
    return data


def mapping(data: object, what: str) -> Mapping[str, Any]:
    """``data`` as a JSON object, or ``MalformedPayload`` naming ``what``."""
    return _obj(data, what)


def _list(data: object, what: str) -> list[Any]:
    if not isinstance(data, list):
        raise _fail(what, f"expected a JSON list, got {type(data).__name__}")
    return data


def _get(d: Mapping[str, Any], key: str, what: str, default: Any) -> Any:
    value = d.get(key)
    if value is None:
        value = default
    if value is _MISSING:
        raise _fail(what, f"field '{key}' is missing")
    return value


def dec(d: Mapping[str, Any], key: str, what: str, default: Any = _MISSING) -> Decimal:
    """``d[key]`` as a finite Decimal (``default`` when missing or null; "" is zero).

    The exchange sends its numbers as non-empty strings: those go straight to ``Decimal``
    (what :func:`_dec` does with them, without its lookups and type checks: parsing is a
    large part of an order's answer); anything else takes :func:`_dec`."""
    value = d.get(key)
    if type(value) is str and value:
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise _fail(what, f"field '{key}' is not a number: {value!r}") from None
        if not number.is_finite():
            raise _fail(what, f"field '{key}' is not a finite number: {value!r}")
        return number
    return _dec(d, key, what, default)


def _dec(d: Mapping[str, Any], key: str, what: str, default: Any = _MISSING) -> Decimal:
    """:func:`dec` for any value: a Decimal, an int or float, "", null or missing."""
    value = _get(d, key, what, default)
    if isinstance(value, Decimal) and value.is_finite():
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _fail(what, f"field '{key}' is not a number: {value!r}")
    try:
        number = Decimal(str(value)) if value != "" else ZERO
    except InvalidOperation:
        raise _fail(what, f"field '{key}' is not a number: {value!r}") from None
    if not number.is_finite():
        raise _fail(what, f"field '{key}' is not a finite number: {value!r}")
    return number


def integer(d: Mapping[str, Any], key: str, what: str, default: Any = _MISSING) -> int:
    value = _get(d, key, what, default)
    if isinstance(value, bool):
        raise _fail(what, f"field '{key}' is not an integer: {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise _fail(what, f"field '{key}' is not an integer: {value!r}") from None


def text(d: Mapping[str, Any], key: str, what: str, default: Any = _MISSING) -> str:
    value = _get(d, key, what, default)
    return value if isinstance(value, str) else str(value)


def flag(d: Mapping[str, Any], key: str, what: str, default: Any = _MISSING) -> bool:
    value = _get(d, key, what, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _fail(what, f"field '{key}' is not a boolean: {value!r}")


def _enum(factory: type[E], d: Mapping[str, Any], key: str, what: str) -> E:
    """``factory(d[key])``: first from the enum's own value -> member map, which is where
    ``factory(value)`` finds a member too (the call itself costs ~1 us: four per order)."""
    raw = text(d, key, what)
    member = factory._value2member_map_.get(raw)
    if member is not None:
        return member  # type: ignore[return-value]  # a member of ``factory``
    try:
        return factory(raw)
    except ValueError:
        raise _fail(what, f"field '{key}' has an unknown value {raw!r}") from None


def _each(data: object, what: str, one: Callable[[object], T]) -> list[T]:
    return [one(item) for item in _list(data, what)]


# --- market data -------------------------------------------------------------------------


def server_time(data: object) -> int:
    return integer(_obj(data, "time"), "serverTime", "time")


def _filters(raw: object, symbol: str) -> SymbolFilters:
    what = f"exchangeInfo filters of {symbol}"
    by_type = {text(f, "filterType", what): f for f in (_obj(x, what) for x in _list(raw, what))}
    empty: Mapping[str, Any] = {}
    price = by_type.get("PRICE_FILTER", empty)
    lot = by_type.get("LOT_SIZE", empty)
    market = by_type.get("MARKET_LOT_SIZE", lot)
    notional = by_type.get("MIN_NOTIONAL", empty)
    band = by_type.get("PERCENT_PRICE", empty)
    return SymbolFilters(
        tick_size=dec(price, "tickSize", what, ZERO),
        min_price=dec(price, "minPrice", what, ZERO),
        max_price=dec(price, "maxPrice", what, ZERO),
        step_size=dec(lot, "stepSize", what, ZERO),
        min_qty=dec(lot, "minQty", what, ZERO),
        max_qty=dec(lot, "maxQty", what, ZERO),
        market_step_size=dec(market, "stepSize", what, ZERO),
        market_min_qty=dec(market, "minQty", what, ZERO),
        market_max_qty=dec(market, "maxQty", what, ZERO),
        min_notional=dec(notional, "notional", what, notional.get("minNotional", ZERO)),
        multiplier_up=dec(band, "multiplierUp", what, ZERO),
        multiplier_down=dec(band, "multiplierDown", what, ZERO),
        max_num_orders=integer(by_type.get("MAX_NUM_ORDERS", empty), "limit", what, 200),
        max_num_algo_orders=integer(by_type.get("MAX_NUM_ALGO_ORDERS", empty), "limit", what, 10),
    )


def _symbol_info(raw: object) -> SymbolInfo:
    what = "exchangeInfo symbol"
    d = _obj(raw, what)
    name = text(d, "symbol", what)
    return SymbolInfo(
        symbol=name,
        base_asset=text(d, "baseAsset", what, ""),
        quote_asset=text(d, "quoteAsset", what, ""),
        status=text(d, "status", what, "TRADING"),
        price_precision=integer(d, "pricePrecision", what, 8),
        quantity_precision=integer(d, "quantityPrecision", what, 8),
        filters=_filters(d.get("filters", []), name),
    )


def _rate_limit(raw: object) -> RateLimit:
    what = "exchangeInfo rateLimits"
    d = _obj(raw, what)
    return RateLimit(
        rate_limit_type=text(d, "rateLimitType", what),
        interval=text(d, "interval", what),
        interval_num=integer(d, "intervalNum", what, 1),
        limit=integer(d, "limit", what),
    )


def exchange_info(data: object) -> ExchangeInfo:
    d = _obj(data, "exchangeInfo")
    symbols = _each(d.get("symbols", []), "exchangeInfo symbols", _symbol_info)
    return ExchangeInfo(
        server_time=integer(d, "serverTime", "exchangeInfo", 0),
        rate_limits=tuple(_each(d.get("rateLimits", []), "exchangeInfo", _rate_limit)),
        symbols={s.symbol: s for s in symbols},
        nonce_window_ms=integer(d, "nonceWindowMs", "exchangeInfo", None)
        if d.get("nonceWindowMs") is not None
        else None,
        market_clock=text(d, "marketClock", "exchangeInfo", "") or None,
    )


def lockstep_turn(data: object) -> Turn | None:
    """A lockstep simulator's answer: our turn (number > 0) with its market time, else None."""
    d = _obj(data, "lockstep turn")
    number = integer(d, "turn", "lockstep turn")
    return Turn(number, integer(d, "time", "lockstep turn")) if number > 0 else None


def _kline(raw: object) -> Kline:
    # The usual row ([int, "decimal" x 5, int, ...]) takes the short way: a tick parses two
    # symbols' worth of rows; anything else goes through the checks below, which name the fault.
    if type(raw) is list and len(raw) >= 7:
        t0, o, h, lo, c, v, t1 = raw[:7]
        if type(t0) is int and type(t1) is int and all(type(x) is str and x for x in raw[1:6]):
            try:
                k = Kline(t0, Decimal(o), Decimal(h), Decimal(lo), Decimal(c), Decimal(v), t1)
            except InvalidOperation:
                k = None
            if k is not None and all(  # NaN or Infinity: the long way, which names the field
                p.is_finite() for p in (k.open, k.high, k.low, k.close, k.volume)
            ):
                return k
    row = _list(raw, "kline")
    if len(row) < 7:
        raise _fail("kline", f"expected at least 7 columns, got {len(row)}")
    keys = ("openTime", "open", "high", "low", "close", "volume", "closeTime")
    d = dict(zip(keys, row, strict=False))
    return Kline(
        open_time=integer(d, "openTime", "kline"),
        open=dec(d, "open", "kline"),
        high=dec(d, "high", "kline"),
        low=dec(d, "low", "kline"),
        close=dec(d, "close", "kline"),
        volume=dec(d, "volume", "kline"),
        close_time=integer(d, "closeTime", "kline"),
    )


def klines(data: object) -> list[Kline]:
    return _each(data, "klines", _kline)


def _funding_rate(raw: object) -> FundingRate:
    d = _obj(raw, "fundingRate")
    return FundingRate(
        symbol=text(d, "symbol", "fundingRate"),
        rate=dec(d, "fundingRate", "fundingRate"),
        time=integer(d, "fundingTime", "fundingRate"),
    )


def funding_rates(data: object) -> list[FundingRate]:
    return _each(data, "fundingRate", _funding_rate)


def premium_index(data: object) -> PremiumIndex:
    what = "premiumIndex"
    d = _obj(data, what)
    return PremiumIndex(
        symbol=text(d, "symbol", what),
        mark_price=dec(d, "markPrice", what),
        index_price=dec(d, "indexPrice", what, ZERO),
        last_funding_rate=dec(d, "lastFundingRate", what, ZERO),
        next_funding_time=integer(d, "nextFundingTime", what, 0),
        time=integer(d, "time", what, 0),
    )


def ticker_price(data: object) -> TickerPrice:
    what = "ticker price"
    d = _obj(data, what)
    return TickerPrice(
        symbol=text(d, "symbol", what),
        price=dec(d, "price", what),
        time=integer(d, "time", what, 0),
    )


def book_ticker(data: object) -> BookTicker:
    what = "bookTicker"
    d = _obj(data, what)
    return BookTicker(
        symbol=text(d, "symbol", what),
        bid_price=dec(d, "bidPrice", what),
        bid_qty=dec(d, "bidQty", what, ZERO),
        ask_price=dec(d, "askPrice", what),
        ask_qty=dec(d, "askQty", what, ZERO),
        time=integer(d, "time", what, 0),
    )


# --- account -----------------------------------------------------------------------------


def stp_mode(data: object) -> StpMode:
    return _enum(StpMode, _obj(data, "stpMode"), "stpMode", "stpMode")


def commission_rate(data: object) -> CommissionRate:
    d = _obj(data, "commissionRate")
    what = "commissionRate"
    return CommissionRate(
        text(d, "symbol", what),
        dec(d, "makerCommissionRate", what),
        dec(d, "takerCommissionRate", what),
    )


def listen_key(data: object) -> str:
    key = text(_obj(data, "listenKey"), "listenKey", "listenKey")
    if not key:
        raise _fail("listenKey", "field 'listenKey' is empty")
    return key


def _balance(raw: object) -> Balance:
    what = "balance"
    d = _obj(raw, what)
    wallet = dec(d, "balance", what, d.get("walletBalance", _MISSING))
    return Balance(
        asset=text(d, "asset", what),
        balance=wallet,
        cross_wallet_balance=dec(d, "crossWalletBalance", what, wallet),
        cross_un_pnl=dec(d, "crossUnPnl", what, d.get("unrealizedProfit", ZERO)),
        available_balance=dec(d, "availableBalance", what, ZERO),
        max_withdraw_amount=dec(d, "maxWithdrawAmount", what, ZERO),
        update_time=integer(d, "updateTime", what, 0),
    )


def balances(data: object) -> list[Balance]:
    return _each(data, "balance", _balance)


def _margin_type(d: Mapping[str, Any], what: str) -> str:
    if "marginType" in d:
        return text(d, "marginType", what).lower()
    return "isolated" if flag(d, "isolated", what, False) else "cross"


def _position(raw: object) -> Position:
    what = "position"
    d = _obj(raw, what)
    pnl = d.get("unRealizedProfit", d.get("unrealizedProfit", ZERO))
    return Position(
        symbol=text(d, "symbol", what),
        position_amt=dec(d, "positionAmt", what),
        entry_price=dec(d, "entryPrice", what, ZERO),
        mark_price=dec(d, "markPrice", what, ZERO),
        unrealized_profit=dec({"pnl": pnl}, "pnl", what, ZERO),
        leverage=integer(d, "leverage", what, 1),
        margin_type=_margin_type(d, what),
        position_side=_enum(PositionSide, {"p": d.get("positionSide", "BOTH")}, "p", what),
        liquidation_price=dec(d, "liquidationPrice", what, ZERO),
        update_time=integer(d, "updateTime", what, 0),
    )


def positions(data: object) -> list[Position]:
    return _each(data, "positionRisk", _position)


def account(data: object) -> AccountInfo:
    what = "account"
    d = _obj(data, what)
    return AccountInfo(
        total_wallet_balance=dec(d, "totalWalletBalance", what),
        total_unrealized_profit=dec(d, "totalUnrealizedProfit", what, ZERO),
        total_margin_balance=dec(d, "totalMarginBalance", what, ZERO),
        available_balance=dec(d, "availableBalance", what, ZERO),
        total_initial_margin=dec(d, "totalInitialMargin", what, ZERO),
        total_maint_margin=dec(d, "totalMaintMargin", what, ZERO),
        can_trade=flag(d, "canTrade", what, True),
        positions=tuple(positions(d.get("positions", []))),
        balances=tuple(balances(d.get("assets", []))),
    )


def position_mode(data: object) -> bool:
    return flag(_obj(data, "positionSide/dual"), "dualSidePosition", "positionSide/dual")


def leverage(data: object) -> int:
    return integer(_obj(data, "leverage"), "leverage", "leverage")


# --- orders and history --------------------------------------------------------------------


def order(data: object) -> Order:
    what = "order"
    d = _obj(data, what)
    return Order(
        order_id=integer(d, "orderId", what),
        symbol=text(d, "symbol", what),
        status=_enum(OrderStatus, d, "status", what),
        client_order_id=text(d, "clientOrderId", what, ""),
        price=dec(d, "price", what, ZERO),
        avg_price=dec(d, "avgPrice", what, ZERO),
        orig_qty=dec(d, "origQty", what, ZERO),
        executed_qty=dec(d, "executedQty", what, ZERO),
        cum_quote=dec(d, "cumQuote", what, ZERO),
        time_in_force=text(d, "timeInForce", what, "GTC"),
        type=_enum(OrderType, d, "type", what),
        side=_enum(Side, d, "side", what),
        position_side=_enum(PositionSide, {"p": d.get("positionSide", "BOTH")}, "p", what),
        reduce_only=flag(d, "reduceOnly", what, False),
        close_position=flag(d, "closePosition", what, False),
        stop_price=dec(d, "stopPrice", what, ZERO),
        update_time=integer(d, "updateTime", what, d.get("time", 0)),
    )


def orders(data: object) -> list[Order]:
    return _each(data, "openOrders", order)


def _user_trade(raw: object) -> UserTrade:
    what = "userTrade"
    d = _obj(raw, what)
    return UserTrade(
        id=integer(d, "id", what),
        order_id=integer(d, "orderId", what),
        symbol=text(d, "symbol", what),
        side=_enum(Side, d, "side", what),
        position_side=_enum(PositionSide, {"p": d.get("positionSide", "BOTH")}, "p", what),
        price=dec(d, "price", what),
        qty=dec(d, "qty", what),
        quote_qty=dec(d, "quoteQty", what, ZERO),
        realized_pnl=dec(d, "realizedPnl", what, ZERO),
        commission=dec(d, "commission", what, ZERO),
        commission_asset=text(d, "commissionAsset", what, ""),
        buyer=flag(d, "buyer", what, False),
        maker=flag(d, "maker", what, False),
        time=integer(d, "time", what),
    )


def user_trades(data: object) -> list[UserTrade]:
    return _each(data, "userTrades", _user_trade)


def _income(raw: object) -> Income:
    what = "income"
    d = _obj(raw, what)
    return Income(
        symbol=text(d, "symbol", what, ""),
        income_type=text(d, "incomeType", what),
        income=dec(d, "income", what),
        asset=text(d, "asset", what, ""),
        info=text(d, "info", what, ""),
        time=integer(d, "time", what),
        tran_id=integer(d, "tranId", what, 0),
        trade_id=text(d, "tradeId", what, ""),
    )


def incomes(data: object) -> list[Income]:
    return _each(data, "income", _income)
