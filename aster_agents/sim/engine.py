"""The simulated exchange's trading engine: accounts, orders, positions, fills.

Pure logic over a :class:`~aster_agents.sim.market.Market`; every public method takes the one
engine lock, so the HTTP front may call it from many threads. Prices, quantities and money
are ``Decimal``. Requests arrive as the raw string parameters of the V3 API and leave as the
JSON-ready dicts the real exchange returns (numbers as strings, ids and times as ints).

Fill model: infinite liquidity at the top of a simulated book around the mark price. Takers
fill at the ask (BUY) or bid (SELL); resting LIMIT orders fill at their own price (maker) as
soon as the book crosses it; STOP_MARKET and TAKE_PROFIT_MARKET trigger on the mark price and
then execute as takers.

Margin: maintenance margin from the leverage brackets (``sim/brackets.py``); cross-margin
liquidation and auto-deleveraging as described in ``sim/liquidation.py``.

Funding: every ``funding_interval_ms`` of market time (8 h by default, 0 disables) each open
position pays (or receives) qty x mark x rate at the settlement time, with the rate of
:meth:`Market.funding_rate`; written to the wallet and to the income history as
``FUNDING_FEE``. Applied lazily, under the engine lock, by the first request (or tick) that
sees market time past a settlement.
"""

from __future__ import annotations

import bisect
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Final, Generic, Protocol, TypeVar

from aster_agents.sim import liquidation
from aster_agents.sim.brackets import bracket_for, brackets_json, maint_margin
from aster_agents.sim.market import Market
from aster_agents.sim.symbols import MAX_NUM_ALGO_ORDERS, MAX_NUM_ORDERS, SYMBOLS, SimSymbol

ZERO: Final = Decimal(0)
MONEY: Final = Decimal("0.00000001")
DEFAULT_LEVERAGE: Final = 20
TAKER_FEE: Final = Decimal("0.00035")
MAKER_FEE: Final = Decimal("0.0001")
FUNDING_INTERVAL_MS: Final = 8 * 3_600_000
_CLIENT_ID_RE: Final = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
_CONDITIONAL: Final = ("STOP_MARKET", "TAKE_PROFIT_MARKET")
_SUPPORTED_TYPES: Final = ("LIMIT", "MARKET", *_CONDITIONAL)
STP_MODES: Final = ("EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH")
# Aster documents no "NONE" mode and no default; EXPIRE_MAKER is Binance futures' default.
DEFAULT_STP_MODE: Final = "EXPIRE_MAKER"


class ApiError(Exception):
    """An error the exchange reports as ``{"code": ..., "msg": ...}`` with an HTTP status."""

    def __init__(
        self, code: int, msg: str, status: int = 400, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.status = status
        self.retry_after = retry_after


def missing(name: str) -> ApiError:
    return ApiError(
        -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def fmt(value: Decimal) -> str:
    """Plain decimal text without exponent or trailing zeros (``"0"`` for zero)."""
    if value == 0:
        return "0"
    return f"{value.normalize():f}"


def money(value: Decimal) -> str:
    return f"{value.quantize(MONEY):f}"


def _places(step: Decimal) -> int:
    return max(0, -int(step.normalize().as_tuple().exponent))


@dataclass(slots=True)
class SimOrder:
    order_id: int
    user: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    quantity: Decimal
    price: Decimal
    stop_price: Decimal
    reduce_only: bool
    close_position: bool
    position_side: str
    client_order_id: str
    time: int
    working_type: str = "CONTRACT_PRICE"
    price_protect: bool = False
    status: str = "NEW"
    executed_qty: Decimal = ZERO
    cum_quote: Decimal = ZERO
    update_time: int = 0
    stp_mode: str | None = None  # the order's own self-trade prevention mode, else the account's

    @property
    def is_open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")

    def state(self) -> tuple[object, ...]:
        """Every field ``to_json`` reads: equal states give equal documents (a Decimal is
        written normalised, so equal values are one text). The in-process client keys the
        ``Order`` parsed from an open order's document by it."""
        return (
            self.order_id,
            self.symbol,
            self.status,
            self.client_order_id,
            self.price,
            self.quantity,
            self.executed_qty,
            self.cum_quote,
            self.time_in_force,
            self.type,
            self.reduce_only,
            self.close_position,
            self.side,
            self.position_side,
            self.stop_price,
            self.working_type,
            self.price_protect,
            self.update_time,
            self.time,
        )

    def to_json(self, with_time: bool = True) -> dict[str, object]:
        avg = self.cum_quote / self.executed_qty if self.executed_qty else ZERO
        out: dict[str, object] = {
            "orderId": self.order_id,
            "symbol": self.symbol,
            "status": self.status,
            "clientOrderId": self.client_order_id,
            "price": fmt(self.price),
            "avgPrice": fmt(avg.quantize(Decimal("0.00001")) if avg else ZERO),
            "origQty": fmt(self.quantity),
            "executedQty": fmt(self.executed_qty),
            "cumQty": fmt(self.executed_qty),
            "cumQuote": fmt(self.cum_quote),
            "timeInForce": self.time_in_force,
            "type": self.type,
            "origType": self.type,
            "reduceOnly": self.reduce_only,
            "closePosition": self.close_position,
            "side": self.side,
            "positionSide": self.position_side,
            "stopPrice": fmt(self.stop_price),
            "workingType": self.working_type,
            "priceProtect": self.price_protect,
            "updateTime": self.update_time,
        }
        if with_time:
            out["time"] = self.time
        return out


@dataclass(slots=True)
class SimPosition:
    amount: Decimal = ZERO  # signed; SHORT positions in hedge mode are negative
    entry_price: Decimal = ZERO
    update_time: int = 0
    added_margin: Decimal = ZERO  # isolated margin added by POST positionMargin (may be < 0)


@dataclass(frozen=True, slots=True)
class SimTrade:
    id: int
    order_id: int
    user: str
    symbol: str
    side: str
    position_side: str
    price: Decimal
    qty: Decimal
    realized_pnl: Decimal
    commission: Decimal
    maker: bool
    time: int

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "orderId": self.order_id,
            "symbol": self.symbol,
            "side": self.side,
            "positionSide": self.position_side,
            "price": fmt(self.price),
            "qty": fmt(self.qty),
            "quoteQty": fmt(self.price * self.qty),
            "realizedPnl": money(self.realized_pnl),
            "marginAsset": "USDT",
            "commission": money(self.commission),
            "commissionAsset": "USDT",
            "buyer": self.side == "BUY",
            "maker": self.maker,
            "time": self.time,
        }


@dataclass(frozen=True, slots=True)
class SimIncome:
    tran_id: int
    symbol: str
    income_type: str
    income: Decimal
    trade_id: str
    time: int

    def to_json(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "incomeType": self.income_type,
            "income": money(self.income),
            "asset": "USDT",
            "info": "",
            "time": self.time,
            "tranId": self.tran_id,
            "tradeId": self.trade_id,
        }


class _Timed(Protocol):
    @property
    def time(self) -> int: ...


_T = TypeVar("_T", bound=_Timed)


class Timeline(Generic[_T]):
    """An account's history rows grouped by a key (a trade's symbol, an income's type), each
    group oldest first, found from a time by bisection: a month's backtest asks for its
    trades after every fill and for its funding every few ticks, and a scan of the account's
    whole history grew with the run. Callers still filter: ``since`` only skips a prefix."""

    __slots__ = ("groups", "ordered")

    def __init__(self) -> None:
        self.groups: dict[str, list[_T]] = {}
        self.ordered = True  # no row older than the one before it in its group

    def add(self, key: str, row: _T) -> None:
        group = self.groups.setdefault(key, [])
        if group and row.time < group[-1].time:  # a clock gone back: scan, not bisect
            self.ordered = False
        group.append(row)

    def since(self, key: str, start: int | None) -> list[_T]:
        """The group's rows, from the first at or after ``start`` (all with None)."""
        rows = self.groups.get(key, [])
        if start is None or not self.ordered:
            return rows
        return rows[bisect.bisect_left(rows, start, key=lambda r: r.time) :]


@dataclass(slots=True)
class SimAccountState:
    user: str
    balance: Decimal
    dual_side: bool = False
    leverage: dict[str, int] = field(default_factory=dict)
    isolated: dict[str, bool] = field(default_factory=dict)
    positions: dict[tuple[str, str], SimPosition] = field(default_factory=dict)
    open_orders: dict[int, SimOrder] = field(default_factory=dict)
    orders: list[SimOrder] = field(default_factory=list)
    trades: list[SimTrade] = field(default_factory=list)
    trades_by_symbol: Timeline[SimTrade] = field(default_factory=lambda: Timeline[SimTrade]())
    income: list[SimIncome] = field(default_factory=list)
    income_by_kind: Timeline[SimIncome] = field(default_factory=lambda: Timeline[SimIncome]())
    stp_mode: str = DEFAULT_STP_MODE
    multi_assets: bool = False
    countdowns: dict[str, float] = field(default_factory=dict)  # symbol -> wall-clock deadline
    margin_changes: list[dict[str, object]] = field(default_factory=list)
    liquidating_until: int = 0  # market ms: new orders answer -2023 until then
    # the open orders' ids when ``triggers`` was found, and it (``Engine._none_fire``)
    triggers: tuple[tuple[int, ...], Triggers | None] | None = None

    def lev(self, symbol: str) -> int:
        return self.leverage.get(symbol, DEFAULT_LEVERAGE)

    def add_trade(self, trade: SimTrade) -> None:
        self.trades.append(trade)
        self.trades_by_symbol.add(trade.symbol, trade)

    def add_income(self, row: SimIncome) -> None:
        self.income.append(row)
        self.income_by_kind.add(row.income_type, row)


# per symbol: the lowest stop a rising mark fires at, the highest a falling one fires at
Triggers = tuple[tuple[str, Decimal | None, Decimal | None], ...]


def fires_rising(o: SimOrder) -> bool:
    """A stop order fires when the mark rises to its stop (else when it falls to it)."""
    return (o.type == "STOP_MARKET") == (o.side == "BUY")


def triggers(orders: Iterable[SimOrder]) -> Triggers | None:
    """Where ``orders`` fire, per symbol; None when one is not a stop order (a LIMIT order
    is worked against the book, not a trigger). An order fires at mark ``m`` exactly when
    ``m >= stop`` (rising) or ``m <= stop`` (falling), so one of them fires exactly when
    ``m`` reaches the lowest rising stop or the highest falling one."""
    rising: dict[str, Decimal] = {}
    falling: dict[str, Decimal] = {}
    for o in orders:
        if o.type not in _CONDITIONAL:
            return None
        stop, symbol = o.stop_price, o.symbol
        if fires_rising(o):
            if symbol not in rising or stop < rising[symbol]:
                rising[symbol] = stop
        elif symbol not in falling or stop > falling[symbol]:
            falling[symbol] = stop
    names = sorted(rising.keys() | falling.keys())
    return tuple((s, rising.get(s), falling.get(s)) for s in names)


def _dec(params: Mapping[str, str], name: str, required: bool = False) -> Decimal | None:
    text = params.get(name)
    if text is None or text == "":
        if required:
            raise missing(name)
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise missing(name) from None
    if not value.is_finite():
        raise missing(name)
    return value


def _int(params: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise missing(name) from None


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_list(text: str) -> object:
    """A JSON list as clients send it: standard JSON, or with single quotes (DEMO-JS, DOCS)."""
    try:
        return json.loads(text)
    except ValueError:
        return json.loads(text.replace("'", '"'))


def _json_list(params: Mapping[str, str], name: str, most: int) -> list[object]:
    text = params.get(name)
    if not text:
        raise missing(name)
    try:
        value = parse_list(text)
    except ValueError:
        raise ApiError(-1102, f"Parameter '{name}' must be a JSON list.") from None
    if not isinstance(value, list) or not value:
        raise ApiError(-1102, f"Parameter '{name}' must be a non-empty JSON list.")
    if len(value) > most:
        raise ApiError(-4035 if most == 5 else -1102, f"'{name}' takes at most {most} entries.")
    return value


def _bool(params: Mapping[str, str], name: str) -> bool:
    text = params.get(name, "false").lower()
    if text not in ("true", "false"):
        raise ApiError(-1102, f"Parameter '{name}' must be 'true' or 'false'.")
    return text == "true"


def _choice(params: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = params.get(name) or default
    if value not in allowed:
        raise ApiError(-1102, f"Parameter '{name}' was malformed: '{value}' not in {allowed}.")
    return value


def _symbol(params: Mapping[str, str], required: bool = True) -> SimSymbol | None:
    name = params.get("symbol")
    if not name:
        if required:
            raise missing("symbol")
        return None
    sym = SYMBOLS.get(name)
    if sym is None:
        raise ApiError(-1121, "Invalid symbol.")
    return sym


def _check_price(sym: SimSymbol, price: Decimal, name: str) -> None:
    if len(fmt(price).partition(".")[2]) > sym.price_precision:
        raise ApiError(-1111, "Precision is over the maximum defined for this asset.")
    if price <= 0 or price < sym.min_price:
        raise ApiError(-4013, f"Price less than min price {fmt(sym.min_price)} ({name}).")
    if price > sym.max_price:
        raise ApiError(-4016, f"Limit price can't be higher than {fmt(sym.max_price)}.")
    if (price - sym.min_price) % sym.tick_size != 0:
        raise ApiError(-4014, "Price not increased by tick size.")


def _check_qty(sym: SimSymbol, qty: Decimal, market: bool) -> None:
    if len(fmt(qty).partition(".")[2]) > sym.quantity_precision:
        raise ApiError(-1111, "Precision is over the maximum defined for this asset.")
    if qty <= 0:
        raise ApiError(-4003, "Quantity less than or equal to zero.")
    if qty < sym.min_qty:
        raise ApiError(-4004, f"Quantity less than min quantity {fmt(sym.min_qty)}.")
    if qty > (sym.market_max_qty if market else sym.max_qty):
        raise ApiError(-4005, "Quantity greater than max quantity.")
    if (qty - sym.min_qty) % sym.step_size != 0:
        raise ApiError(-4023, "Qty not increased by step size.")


_Row = TypeVar("_Row", "SimOrder", "SimTrade")


def _page(
    rows: list[_Row], params: Mapping[str, str], id_param: str, id_of: Callable[[_Row], int]
) -> list[_Row]:
    """History paging as the exchange does it: from an id or a time window, at most ``limit``.

    From an id or a start time: the oldest ``limit`` rows after it; otherwise the newest.
    """
    start, end = _int(params, "startTime"), _int(params, "endTime")
    from_id = _int(params, id_param)
    limit = min(_int(params, "limit", 500) or 500, 1000)
    kept = [
        r
        for r in rows
        if (from_id is None or id_of(r) >= from_id)
        and (start is None or r.time >= start)
        and (end is None or r.time <= end)
    ]
    return kept[:limit] if from_id is not None or start is not None else kept[-limit:]


@dataclass(frozen=True, slots=True)
class _NewOrder:
    sym: SimSymbol
    side: str
    type: str
    tif: str
    qty: Decimal
    price: Decimal
    stop: Decimal
    reduce_only: bool
    close_position: bool
    position_side: str
    client_id: str | None
    working_type: str
    price_protect: bool
    result: bool
    stp_mode: str | None


def _parse_new_order(p: Mapping[str, str]) -> _NewOrder:
    sym = _symbol(p)
    assert sym is not None
    side = _choice(p, "side", ("BUY", "SELL"), "")
    otype = p.get("type") or ""
    if not otype:
        raise missing("type")
    if otype not in _SUPPORTED_TYPES:
        raise ApiError(-1116, "Invalid orderType.")
    close_position = _bool(p, "closePosition")
    reduce_only = _bool(p, "reduceOnly")
    qty = _dec(p, "quantity", required=not close_position)
    if close_position and (otype not in _CONDITIONAL or qty is not None or reduce_only):
        raise ApiError(
            -1106,
            "Parameter 'closePosition' sent with 'quantity' or 'reduceOnly', "
            "or with an order type other than STOP_MARKET/TAKE_PROFIT_MARKET.",
        )
    if qty is not None:
        _check_qty(sym, qty, market=otype != "LIMIT")
    price = _dec(p, "price", required=otype == "LIMIT") or ZERO
    if otype == "LIMIT":
        _check_price(sym, price, "price")
    stop = _dec(p, "stopPrice", required=otype in _CONDITIONAL) or ZERO
    if otype in _CONDITIONAL:
        _check_price(sym, stop, "stopPrice")
    tif = _choice(p, "timeInForce", ("GTC", "IOC", "FOK", "GTX"), "GTC")
    if otype == "LIMIT" and not p.get("timeInForce"):
        raise missing("timeInForce")
    client_id = p.get("newClientOrderId") or None
    if client_id is not None and not _CLIENT_ID_RE.match(client_id):
        raise ApiError(-4015, "Client order id is not valid.")
    stp_mode = p.get("stpMode") or None
    if stp_mode is not None and stp_mode not in STP_MODES:
        raise ApiError(
            -1102, f"Parameter 'stpMode' was malformed: '{stp_mode}' not in {STP_MODES}."
        )
    return _NewOrder(
        sym,
        side,
        otype,
        tif,
        qty or ZERO,
        price,
        stop,
        reduce_only,
        close_position,
        _choice(p, "positionSide", ("BOTH", "LONG", "SHORT"), "BOTH"),
        client_id,
        _choice(p, "workingType", ("MARK_PRICE", "CONTRACT_PRICE"), "CONTRACT_PRICE"),
        _bool(p, "priceProtect"),
        (p.get("newOrderRespType") or "ACK") == "RESULT",
        stp_mode,
    )


class Engine:
    """All accounts of the simulated exchange. Thread-safe under one lock."""

    def __init__(
        self,
        market: Market,
        taker_fee: Decimal = TAKER_FEE,
        maker_fee: Decimal = MAKER_FEE,
        funding_interval_ms: int = FUNDING_INTERVAL_MS,
        wall: Callable[[], float] = time.monotonic,
        insurance_fund: Decimal = liquidation.INSURANCE_FUND,
    ) -> None:
        self.market = market
        self.wall = wall  # countdownCancelAll deadlines run on the wall clock, like the real one
        self.insurance_start = insurance_fund
        self.insurance: dict[str, Decimal] = {}  # per symbol, from insurance_start
        self.funding_interval_ms = max(0, funding_interval_ms)
        self._funded_until = self.last_funding_time()
        self.taker_fee = taker_fee
        self.maker_fee = maker_fee
        self.lock = threading.RLock()
        self.accounts: dict[str, SimAccountState] = {}
        self.orders: dict[int, SimOrder] = {}
        self._next_order_id = 1_000_001
        self._next_trade_id = 5_000_001
        self._next_tran_id = 9_000_001

    # ---- accounts -----------------------------------------------------------------------

    def add_account(self, user: str, balance: Decimal) -> SimAccountState:
        """Register (or top up) the main account ``user`` with a USDT balance."""
        key = user.lower()
        with self.lock:
            acct = self.accounts.get(key)
            if acct is None:
                acct = SimAccountState(user=user, balance=balance)
                self.accounts[key] = acct
                if balance:
                    self._income(acct, "", "TRANSFER", balance, "")
            return acct

    def account(self, user: str) -> SimAccountState:
        self.settle_funding()
        acct = self.accounts.get(user.lower())
        if acct is None:
            raise ApiError(-2015, f"No account for user {user}.", 401)
        return acct

    def balance(self, user: str) -> Decimal:
        """The wallet balance (USDT) of ``user`` (for test assertions)."""
        with self.lock:
            return self.account(user).balance

    def position(self, user: str, symbol: str, side: str = "BOTH") -> Decimal:
        """The signed position amount of ``user`` in ``symbol`` (for test assertions)."""
        with self.lock:
            pos = self.account(user).positions.get((symbol, side))
            return pos.amount if pos else ZERO

    def trades(self, user: str) -> list[SimTrade]:
        """Every fill of ``user``, oldest first."""
        with self.lock:
            return list(self.account(user).trades)

    def open_orders_of(self, user: str) -> list[SimOrder]:
        with self.lock:
            return list(self.account(user).open_orders.values())

    def open_interest(self, symbol: str) -> Decimal:
        """The simulated accounts' long positions in ``symbol`` (each long has a short)."""
        with self.lock:
            return sum(
                (
                    p.amount
                    for acct in self.accounts.values()
                    for (s, _), p in acct.positions.items()
                    if s == symbol and p.amount > 0
                ),
                ZERO,
            )

    def all_orders_ever(self) -> list[SimOrder]:
        """Every order ever accepted, in placement order (for chaos-test assertions)."""
        with self.lock:
            return list(self.orders.values())

    # ---- prices and margin --------------------------------------------------------------

    def _unrealized(self, symbol: str, pos: SimPosition) -> Decimal:
        if not pos.amount:
            return ZERO
        return (self.market.mark(symbol) - pos.entry_price) * pos.amount

    def _position_margin(self, acct: SimAccountState) -> Decimal:
        total = ZERO
        for (symbol, _), pos in acct.positions.items():
            if pos.amount:
                total += abs(pos.amount) * self.market.mark(symbol) / acct.lev(symbol)
                total += pos.added_margin
        return total

    def _order_margin(self, acct: SimAccountState) -> Decimal:
        return sum(
            (
                o.quantity * o.price / acct.lev(o.symbol)
                for o in acct.open_orders.values()
                if o.type == "LIMIT" and not o.reduce_only
            ),
            ZERO,
        )

    def _total_unrealized(self, acct: SimAccountState) -> Decimal:
        return sum((self._unrealized(s, p) for (s, _), p in acct.positions.items()), ZERO)

    def margin_balance(self, acct: SimAccountState) -> Decimal:
        """Wallet + unrealized P&L at the mark prices."""
        return acct.balance + self._total_unrealized(acct)

    def position_maint(self, symbol: str, pos: SimPosition) -> Decimal:
        if not pos.amount:
            return ZERO
        return maint_margin(symbol, pos.amount * self.market.mark(symbol))

    def liquidation_price(self, acct: SimAccountState, symbol: str, pos: SimPosition) -> Decimal:
        """The mark at which the account's margin balance meets its maintenance margin,
        every other position and price held still (cross margin); 0 when there is none."""
        q = pos.amount
        if not q:
            return ZERO
        b = bracket_for(symbol, q * self.market.mark(symbol))
        rest = (
            self.margin_balance(acct)
            - self._unrealized(symbol, pos)
            - (self._maint_margin(acct) - self.position_maint(symbol, pos))
        )
        price = (q * pos.entry_price - rest - b.cum) / (q - abs(q) * b.maint_margin_ratio)
        tick = SYMBOLS[symbol].tick_size
        return max(ZERO, price).quantize(tick)

    def available(self, acct: SimAccountState) -> Decimal:
        """Wallet + unrealized P&L - position margin - open-order margin."""
        return (
            acct.balance
            + self._total_unrealized(acct)
            - self._position_margin(acct)
            - self._order_margin(acct)
        )

    # ---- helpers ------------------------------------------------------------------------

    def _pos_key(self, acct: SimAccountState, symbol: str, side: str, pside: str) -> str:
        if acct.dual_side:
            if pside == "BOTH":
                raise ApiError(-4061, "Order's position side does not match user's setting.")
            return pside
        if pside != "BOTH":
            raise ApiError(-4061, "Order's position side does not match user's setting.")
        return "BOTH"

    def _position(self, acct: SimAccountState, symbol: str, pside: str) -> SimPosition:
        return acct.positions.setdefault((symbol, pside), SimPosition())

    def _closable(self, acct: SimAccountState, o: SimOrder) -> Decimal:
        """How much of the order's quantity would reduce an existing position."""
        pos = acct.positions.get((o.symbol, o.position_side))
        amt = pos.amount if pos else ZERO
        if o.position_side == "LONG":
            return amt if o.side == "SELL" else ZERO
        if o.position_side == "SHORT":
            return -amt if o.side == "BUY" else ZERO
        if (o.side == "SELL" and amt > 0) or (o.side == "BUY" and amt < 0):
            return abs(amt)
        return ZERO

    def _income(
        self,
        acct: SimAccountState,
        symbol: str,
        kind: str,
        amount: Decimal,
        trade_id: str,
        time_ms: int | None = None,
    ) -> None:
        when = self.market.now_ms() if time_ms is None else time_ms
        acct.add_income(SimIncome(self._next_tran_id, symbol, kind, amount, trade_id, when))
        self._next_tran_id += 1

    # ---- funding ------------------------------------------------------------------------

    def last_funding_time(self, now_ms: int | None = None) -> int:
        """The latest settlement time at or before ``now_ms`` (0 when funding is off)."""
        if not self.funding_interval_ms:
            return 0
        now = self.market.now_ms() if now_ms is None else now_ms
        return now // self.funding_interval_ms * self.funding_interval_ms

    def next_funding_time(self) -> int:
        last = self.last_funding_time()
        return last + self.funding_interval_ms if self.funding_interval_ms else 0

    def settle_funding(self) -> int:
        """Apply every settlement passed since the last one; returns how many were applied.

        Nothing is due before the next settlement time: every request and every engine step
        asks, so that answer takes no lock (``_funded_until`` only grows, and a stale read of
        it only sends the caller on to the locked check)."""
        interval = self.funding_interval_ms
        if not interval or self.market.now_ms() < self._funded_until + interval:
            return 0
        with self.lock:
            due = self.last_funding_time()
            count = 0
            while self._funded_until < due:
                self._funded_until += self.funding_interval_ms
                self._settle_at(self._funded_until)
                count += 1
            return count

    def _settle_at(self, when: int) -> None:
        for acct in self.accounts.values():
            for (symbol, _), pos in sorted(acct.positions.items()):
                if not pos.amount:
                    continue
                rate = self.market.funding_rate(symbol, when)
                fee = (-pos.amount * self.market.mark(symbol, when) * rate).quantize(MONEY)
                if fee:
                    acct.balance += fee
                    self._income(acct, symbol, "FUNDING_FEE", fee, "", when)

    # ---- orders -------------------------------------------------------------------------

    def new_order(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        """POST /fapi/v3/order."""
        req = _parse_new_order(params)
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            if acct.liquidating_until > self.market.now_ms():
                raise ApiError(-2023, "User in liquidation mode now.")
            order = self._build_order(acct, req)
            ack = order.to_json(with_time=False)
            self._accept(acct, order, req)
            return order.to_json(with_time=False) if req.result else ack

    def test_order(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        """POST /fapi/v3/order/test: every check of a new order, nothing placed."""
        req = _parse_new_order(params)
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            self._build_order(acct, req)
            return {}

    @staticmethod
    def _check_caps(acct: SimAccountState, req: _NewOrder) -> None:
        if req.type == "MARKET":  # never rests
            return
        resting = [o for o in acct.open_orders.values() if o.symbol == req.sym.symbol]
        if len(resting) >= MAX_NUM_ORDERS:
            raise ApiError(-2025, "Reach max open order limit.")
        stops = sum(1 for o in resting if o.type in _CONDITIONAL)
        if req.type in _CONDITIONAL and stops >= MAX_NUM_ALGO_ORDERS:
            raise ApiError(-4045, "Reach max stop order limit.")

    def _build_order(self, acct: SimAccountState, req: _NewOrder) -> SimOrder:
        pside = self._pos_key(acct, req.sym.symbol, req.side, req.position_side)
        if req.reduce_only and acct.dual_side:
            raise ApiError(-1106, "Parameter 'reduceOnly' sent when not required.")
        if req.client_id and any(
            o.client_order_id == req.client_id for o in acct.open_orders.values()
        ):
            raise ApiError(-4116, "ClientOrderId is duplicated.")
        self._check_caps(acct, req)
        now = self.market.now_ms()
        order = SimOrder(
            self._next_order_id,
            acct.user,
            req.sym.symbol,
            req.side,
            req.type,
            req.tif,
            req.qty,
            req.price,
            req.stop,
            req.reduce_only,
            req.close_position,
            pside,
            req.client_id or f"sim_{self._next_order_id}",
            now,
            req.working_type,
            req.price_protect,
            update_time=now,
            stp_mode=req.stp_mode,
        )
        self._validate(acct, order, req.sym)
        return order

    def _validate(self, acct: SimAccountState, o: SimOrder, sym: SimSymbol) -> None:
        mark = self.market.mark(o.symbol)
        if o.type == "LIMIT":
            self._check_band(o, mark, sym)
        if o.type in _CONDITIONAL and self._triggered(o, mark):
            raise ApiError(-2021, "Order would immediately trigger.")
        closable = self._closable(acct, o)
        reducing = o.reduce_only or o.close_position or (o.position_side != "BOTH" and closable > 0)
        if o.reduce_only and closable == 0:
            raise ApiError(-2022, "ReduceOnly Order is rejected.")
        if o.position_side != "BOTH" and closable == 0 and self._is_closing_side(o):
            raise ApiError(-2022, "ReduceOnly Order is rejected.")
        if o.position_side != "BOTH" and closable and o.quantity > closable:
            raise ApiError(-2022, "ReduceOnly Order is rejected.")
        ref = o.price if o.type == "LIMIT" else mark
        if not reducing and o.quantity * ref < sym.min_notional:
            raise ApiError(
                -4164,
                f"Order's notional must be no smaller than {fmt(sym.min_notional)} "
                "(unless you choose reduce only).",
            )
        if o.type in _CONDITIONAL or o.reduce_only:
            return
        increase = max(ZERO, o.quantity - closable)
        if increase and increase * ref / acct.lev(o.symbol) > self.available(acct):
            raise ApiError(-2019, "Margin is insufficient.")

    @staticmethod
    def _check_band(o: SimOrder, mark: Decimal, sym: SimSymbol) -> None:
        places = sym.price_precision
        if o.side == "BUY" and o.price > mark * sym.multiplier_up:
            limit = f"{mark * sym.multiplier_up:.{places}f}"
            raise ApiError(-4016, f"Limit price can't be higher than {limit}.")
        if o.side == "SELL" and o.price < mark * sym.multiplier_down:
            limit = f"{mark * sym.multiplier_down:.{places}f}"
            raise ApiError(-4024, f"Limit price can't be lower than {limit}.")

    @staticmethod
    def _is_closing_side(o: SimOrder) -> bool:
        return (o.position_side, o.side) in (("LONG", "SELL"), ("SHORT", "BUY"))

    @staticmethod
    def _triggered(o: SimOrder, mark: Decimal) -> bool:
        return mark >= o.stop_price if fires_rising(o) else mark <= o.stop_price

    def _accept(self, acct: SimAccountState, order: SimOrder, req: _NewOrder) -> None:
        self._next_order_id += 1
        self.orders[order.order_id] = order
        acct.orders.append(order)
        bid, ask = self.market.book(order.symbol)
        if order.type == "MARKET":
            if self._prevent_self_trade(acct, order, bid, ask):
                self._execute(acct, order, ask if order.side == "BUY" else bid, maker=False)
            return
        if order.type == "LIMIT":
            crosses = order.price >= ask if order.side == "BUY" else order.price <= bid
            crosses_own = bool(self._own_crossed(acct, order, bid, ask))
            if (crosses or crosses_own) and order.time_in_force == "GTX":
                del self.orders[order.order_id]
                acct.orders.pop()
                raise ApiError(
                    -5022,
                    "Due to the order could not be executed as maker, the "
                    "Post Only order will be rejected.",
                )
            if not self._prevent_self_trade(acct, order, bid, ask):
                return
            if crosses:
                self._execute(acct, order, ask if order.side == "BUY" else bid, maker=False)
                return
            if order.time_in_force in ("IOC", "FOK"):
                order.status = "EXPIRED"
                return
        acct.open_orders[order.order_id] = order

    @staticmethod
    def _own_crossed(
        acct: SimAccountState, o: SimOrder, bid: Decimal, ask: Decimal
    ) -> list[SimOrder]:
        """The account's resting LIMIT orders a taker ``o`` would meet before the book's.

        A resting order at or inside the touch is the best price on its side, so an incoming
        order of the same account that reaches its price would trade with it.
        """
        priced = o.type == "LIMIT"
        met: list[SimOrder] = []
        for r in acct.open_orders.values():
            if r.symbol != o.symbol or r.type != "LIMIT" or r.side == o.side or r is o:
                continue
            if o.side == "BUY":
                reached = r.price <= ask and (not priced or r.price <= o.price)
            else:
                reached = r.price >= bid and (not priced or r.price >= o.price)
            if reached:
                met.append(r)
        return met

    def _prevent_self_trade(
        self, acct: SimAccountState, o: SimOrder, bid: Decimal, ask: Decimal
    ) -> bool:
        """Self-trade prevention; False when the taker ``o`` was expired by it."""
        makers = self._own_crossed(acct, o, bid, ask)
        if not makers:
            return True
        mode, now = o.stp_mode or acct.stp_mode, self.market.now_ms()
        if mode in ("EXPIRE_MAKER", "EXPIRE_BOTH"):
            for m in makers:
                m.status, m.update_time = "EXPIRED", now
                del acct.open_orders[m.order_id]
        if mode in ("EXPIRE_TAKER", "EXPIRE_BOTH"):
            o.status, o.update_time = "EXPIRED", now
            acct.open_orders.pop(o.order_id, None)
            return False
        return True

    def _execute(self, acct: SimAccountState, o: SimOrder, price: Decimal, maker: bool) -> None:
        qty = o.quantity
        if o.reduce_only or o.close_position:
            closable = self._closable(acct, o)
            qty = closable if o.close_position else min(qty, closable)
        acct.open_orders.pop(o.order_id, None)
        o.update_time = self.market.now_ms()
        if qty <= 0:
            o.status = "EXPIRED"
            return
        self._fill(acct, o, price, qty, maker)
        o.status = "FILLED"

    def _fill(
        self,
        acct: SimAccountState,
        o: SimOrder,
        price: Decimal,
        qty: Decimal,
        maker: bool,
        fee: Decimal | None = None,
    ) -> None:
        pos = self._position(acct, o.symbol, o.position_side)
        delta = qty if o.side == "BUY" else -qty
        pnl = self._apply(pos, delta, price)
        pos.update_time = self.market.now_ms()
        if fee is None:
            fee = (price * qty * (self.maker_fee if maker else self.taker_fee)).quantize(MONEY)
        pnl = pnl.quantize(MONEY)
        acct.balance += pnl - fee
        o.executed_qty += qty
        o.cum_quote += price * qty
        trade = SimTrade(
            self._next_trade_id,
            o.order_id,
            acct.user,
            o.symbol,
            o.side,
            o.position_side,
            price,
            qty,
            pnl,
            fee,
            maker,
            self.market.now_ms(),
        )
        self._next_trade_id += 1
        acct.add_trade(trade)
        if pnl:
            self._income(acct, o.symbol, "REALIZED_PNL", pnl, str(trade.id))
        self._income(acct, o.symbol, "COMMISSION", -fee, str(trade.id))

    def forced_fill(
        self,
        acct: SimAccountState,
        key: tuple[str, str],
        qty: Decimal,
        price: Decimal,
        fee: Decimal,
        client_order_id: str,
    ) -> SimOrder:
        """An order the exchange places itself (liquidation, ADL): reduce-only, filled at once."""
        pos = acct.positions[key]
        side = "SELL" if pos.amount > 0 else "BUY"
        now = self.market.now_ms()
        order = SimOrder(
            self._next_order_id,
            acct.user,
            key[0],
            side,
            "MARKET",
            "GTC",
            qty,
            ZERO,
            ZERO,
            True,
            False,
            key[1],
            client_order_id,
            now,
            update_time=now,
        )
        self._next_order_id += 1
        self.orders[order.order_id] = order
        acct.orders.append(order)
        self._fill(acct, order, price, qty, maker=False, fee=fee)
        order.status = "FILLED"
        return order

    @staticmethod
    def _apply(pos: SimPosition, delta: Decimal, price: Decimal) -> Decimal:
        """Net ``delta`` into the position; returns the realized P&L."""
        amt = pos.amount
        if amt == 0 or (amt > 0) == (delta > 0):
            new = amt + delta
            pos.entry_price = (abs(amt) * pos.entry_price + abs(delta) * price) / abs(new)
            pos.amount = new
            return ZERO
        closing = min(abs(amt), abs(delta))
        pnl = (price - pos.entry_price) * closing * (1 if amt > 0 else -1)
        new = amt + delta
        if new == 0:
            pos.entry_price = ZERO
            pos.added_margin = ZERO
        elif (new > 0) != (amt > 0):
            pos.entry_price = price
        pos.amount = new
        return pnl

    # ---- triggers -----------------------------------------------------------------------

    def tick(self) -> None:
        """Settle funding, fill crossed LIMIT orders and fire triggered stop orders."""
        with self.lock:
            self.settle_funding()
            for acct in self.accounts.values():  # ``tick_user``'s steps, inline: every step
                if acct.countdowns:  # of a backtest ticks every account
                    self._fire_countdowns(acct)
                if acct.open_orders:
                    self._work_orders(acct)
                if acct.positions:
                    liquidation.liquidate_if_due(self, acct)

    def _fire_countdowns(self, acct: SimAccountState) -> None:
        """countdownCancelAll: a symbol whose countdown ran out loses its open orders."""
        if not acct.countdowns:
            return
        wall, now = self.wall(), self.market.now_ms()
        for symbol in [s for s, due in acct.countdowns.items() if due <= wall]:
            del acct.countdowns[symbol]
            for o in [o for o in acct.open_orders.values() if o.symbol == symbol]:
                o.status, o.update_time = "CANCELED", now
                del acct.open_orders[o.order_id]

    def tick_user(self, user: str) -> None:
        with self.lock:
            self.settle_funding()
            acct = self.accounts.get(user.lower())
            if acct is not None:
                self._fire_countdowns(acct)
                self._tick_account(acct)

    def _tick_account(self, acct: SimAccountState) -> None:
        if acct.open_orders:
            self._work_orders(acct)
        if acct.positions:
            liquidation.liquidate_if_due(self, acct)

    def _none_fire(self, acct: SimAccountState) -> bool:
        """True when the account's open orders are all stop orders and none fires at the
        marks now: ``_work_orders`` would only have read the marks. The triggers are found
        again when the open orders are not the same ones (their ids, in their order: an id is
        one order, whose symbol, side, type and stop never change)."""
        ids = tuple(acct.open_orders)
        kept = acct.triggers
        if kept is None or kept[0] != ids:
            kept = acct.triggers = (ids, triggers(acct.open_orders.values()))
        found = kept[1]
        if found is None:
            return False
        for symbol, rise, fall in found:
            mark = self.market.mark(symbol)
            if (rise is not None and mark >= rise) or (fall is not None and mark <= fall):
                return False
        return True

    def _work_orders(self, acct: SimAccountState) -> None:
        """Fill crossed LIMIT orders and fire triggered ones, oldest first.

        The book is read only where an order needs it (a LIMIT order, or a triggered one):
        a resting stop needs the mark alone, and the book is a pure function of the moment.
        An account whose stops cannot fire at these marks is done at once (``_none_fire``):
        an agent's protective stops rest for hours, asked at every step.
        """
        if self._none_fire(acct):
            return
        marks: dict[str, Decimal] = {}
        books: dict[str, tuple[Decimal, Decimal]] = {}
        for oid in sorted(acct.open_orders):  # the ids: the orders' order, without a key
            o = acct.open_orders.get(oid)
            if o is None:  # expired by self-trade prevention
                continue
            symbol = o.symbol
            mark = marks.get(symbol)
            if mark is None:
                mark = marks[symbol] = self.market.mark(symbol)
            if o.type != "LIMIT" and not self._triggered(o, mark):
                continue
            quote = books.get(symbol)
            if quote is None:
                quote = books[symbol] = self.market.book(symbol)
            bid, ask = quote
            if o.type == "LIMIT":
                if (o.price >= ask) if o.side == "BUY" else (o.price <= bid):
                    self._execute(acct, o, o.price, maker=True)
            elif self._prevent_self_trade(acct, o, bid, ask):
                self._execute(acct, o, ask if o.side == "BUY" else bid, maker=False)

    # ---- queries and cancels ------------------------------------------------------------

    def _find(self, acct: SimAccountState, p: Mapping[str, str]) -> SimOrder:
        sym = _symbol(p)
        assert sym is not None
        oid = _int(p, "orderId")
        cid = p.get("origClientOrderId")
        if oid is None and not cid:
            raise ApiError(-1102, "Either orderId or origClientOrderId must be sent.")
        for o in reversed(acct.orders):
            if o.symbol == sym.symbol and (
                o.order_id == oid if oid is not None else o.client_order_id == cid
            ):
                return o
        raise ApiError(-2013, "Order does not exist.")

    def query_order(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            return self._find(acct, params).to_json()

    def open_order(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            order = self._find(acct, params)
            if not order.is_open:
                raise ApiError(-2013, "Order does not exist.")
            return order.to_json()

    def open_orders(self, user: str, params: Mapping[str, str]) -> list[dict[str, object]]:
        return [o.to_json() for o in self.open_order_objects(user, params)]

    def open_order_objects(self, user: str, params: Mapping[str, str]) -> list[SimOrder]:
        """The orders ``open_orders`` answers with, as the engine's own objects (the
        in-process client's typed path: it reads them, never changes them)."""
        sym = _symbol(params, required=False)
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            return [o for o in acct.open_orders.values() if sym is None or o.symbol == sym.symbol]

    def all_orders(self, user: str, params: Mapping[str, str]) -> list[dict[str, object]]:
        sym = _symbol(params)
        assert sym is not None
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            orders = [o for o in acct.orders if o.symbol == sym.symbol]
            return [o.to_json() for o in _page(orders, params, "orderId", lambda o: o.order_id)]

    def cancel_order(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            order = self._find(acct, params)
            if not order.is_open:
                raise ApiError(-2011, "Unknown order sent.")
            order.status = "CANCELED"
            order.update_time = self.market.now_ms()
            del acct.open_orders[order.order_id]
            return order.to_json(with_time=False)

    def batch_new(self, user: str, params: Mapping[str, str]) -> list[dict[str, object]]:
        """POST /fapi/v3/batchOrders: up to 5 orders; each answers an order or an error."""
        out: list[dict[str, object]] = []
        for item in _json_list(params, "batchOrders", 5):
            try:
                if not isinstance(item, dict):
                    raise ApiError(-1102, "Each entry of 'batchOrders' must be an object.")
                out.append(self.new_order(user, {str(k): _text(v) for k, v in item.items()}))
            except ApiError as exc:
                out.append({"code": exc.code, "msg": exc.msg})
        return out

    def batch_cancel(self, user: str, params: Mapping[str, str]) -> list[dict[str, object]]:
        """DELETE /fapi/v3/batchOrders: orderIdList or origClientOrderIdList (max 10)."""
        if params.get("orderIdList"):
            key, values = "orderId", _json_list(params, "orderIdList", 10)
        else:
            key, values = "origClientOrderId", _json_list(params, "origClientOrderIdList", 10)
        out: list[dict[str, object]] = []
        for value in values:
            try:
                out.append(self.cancel_order(user, {**params, key: _text(value)}))
            except ApiError as exc:
                out.append({"code": exc.code, "msg": exc.msg})
        return out

    def cancel_all(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        sym = _symbol(params)
        assert sym is not None
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            now = self.market.now_ms()
            for o in [o for o in acct.open_orders.values() if o.symbol == sym.symbol]:
                o.status, o.update_time = "CANCELED", now
                del acct.open_orders[o.order_id]
            return {"code": "200", "msg": "The operation of cancel all open order is done."}

    def modify_order(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        """PUT /fapi/v3/order: new quantity and price for an open LIMIT order."""
        qty, price = _dec(params, "quantity", True), _dec(params, "price", True)
        assert qty is not None and price is not None
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            order = self._find(acct, params)
            if not order.is_open or order.type != "LIMIT":
                raise ApiError(-2013, "Order does not exist.")
            sym = SYMBOLS[order.symbol]
            _check_qty(sym, qty, market=False)
            _check_price(sym, price, "price")
            old = (order.quantity, order.price)
            order.quantity, order.price = qty, price
            del acct.open_orders[order.order_id]
            try:
                self._validate(acct, order, sym)
            except ApiError:
                order.quantity, order.price = old
                acct.open_orders[order.order_id] = order
                raise
            acct.open_orders[order.order_id] = order
            order.update_time = self.market.now_ms()
            self._prevent_self_trade(acct, order, *self.market.book(order.symbol))
            self._tick_account(acct)
            return order.to_json(with_time=False)

    # ---- account settings ---------------------------------------------------------------

    def set_leverage(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        sym = _symbol(params)
        assert sym is not None
        lev = _int(params, "leverage")
        if lev is None:
            raise missing("leverage")
        if not 1 <= lev <= sym.max_leverage:
            raise ApiError(-4028, f"Leverage {lev} is not valid.")
        with self.lock:
            acct = self.account(user)
            acct.leverage[sym.symbol] = lev
            return {
                "leverage": lev,
                "maxNotionalValue": self._max_notional(lev),
                "symbol": sym.symbol,
            }

    @staticmethod
    def _max_notional(lev: int) -> str:
        return str(max(50_000, 50_000_000 // lev))

    def set_margin_type(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        sym = _symbol(params)
        assert sym is not None
        kind = _choice(params, "marginType", ("ISOLATED", "CROSSED"), "")
        with self.lock:
            acct = self.account(user)
            if acct.isolated.get(sym.symbol, False) == (kind == "ISOLATED"):
                raise ApiError(-4046, "No need to change margin type.")
            if any(p.amount for (s, _), p in acct.positions.items() if s == sym.symbol):
                raise ApiError(-4048, "Margin type cannot be changed if there exists position.")
            acct.isolated[sym.symbol] = kind == "ISOLATED"
            acct.leverage.setdefault(sym.symbol, DEFAULT_LEVERAGE)
            return {"code": 200, "msg": "success"}

    def set_dual_side(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        dual = _bool(params, "dualSidePosition")
        if "dualSidePosition" not in params:
            raise missing("dualSidePosition")
        with self.lock:
            acct = self.account(user)
            if acct.dual_side == dual:
                raise ApiError(-4059, "No need to change position side.")
            if acct.open_orders or any(p.amount for p in acct.positions.values()):
                raise ApiError(-4068, "Position side cannot be changed if there exists position.")
            acct.dual_side = dual
            return {"code": 200, "msg": "success"}

    def get_dual_side(self, user: str) -> dict[str, object]:
        with self.lock:
            return {"dualSidePosition": self.account(user).dual_side}

    # ---- account views ------------------------------------------------------------------

    def balance_json(self, user: str) -> list[dict[str, object]]:
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            upnl, avail = self._total_unrealized(acct), self.available(acct)
            return [
                {
                    "accountAlias": "SgsR",
                    "asset": "USDT",
                    "balance": money(acct.balance),
                    "crossWalletBalance": money(acct.balance),
                    "crossUnPnl": money(upnl),
                    "availableBalance": money(avail),
                    "maxWithdrawAmount": money(max(avail, ZERO)),
                    "marginAvailable": True,
                    "updateTime": self.market.now_ms(),
                }
            ]

    def account_json(self, user: str) -> dict[str, object]:
        """GET /fapi/v3/accountWithJoinMargin (also served as /fapi/v3/account)."""
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            upnl, pos_m, ord_m = (
                self._total_unrealized(acct),
                self._position_margin(acct),
                self._order_margin(acct),
            )
            avail = acct.balance + upnl - pos_m - ord_m
            maint = self._maint_margin(acct)
            now = self.market.now_ms()
            asset = {
                "asset": "USDT",
                "walletBalance": money(acct.balance),
                "unrealizedProfit": money(upnl),
                "marginBalance": money(acct.balance + upnl),
                "maintMargin": money(maint),
                "initialMargin": money(pos_m + ord_m),
                "positionInitialMargin": money(pos_m),
                "openOrderInitialMargin": money(ord_m),
                "crossWalletBalance": money(acct.balance),
                "crossUnPnl": money(upnl),
                "availableBalance": money(avail),
                "maxWithdrawAmount": money(max(avail, ZERO)),
                "marginAvailable": True,
                "updateTime": now,
            }
            return {
                "feeTier": 0,
                "canTrade": True,
                "canDeposit": True,
                "canWithdraw": True,
                "updateTime": 0,
                "totalInitialMargin": money(pos_m + ord_m),
                "totalMaintMargin": money(maint),
                "totalWalletBalance": money(acct.balance),
                "totalUnrealizedProfit": money(upnl),
                "totalMarginBalance": money(acct.balance + upnl),
                "totalPositionInitialMargin": money(pos_m),
                "totalOpenOrderInitialMargin": money(ord_m),
                "totalCrossWalletBalance": money(acct.balance),
                "totalCrossUnPnl": money(upnl),
                "availableBalance": money(avail),
                "maxWithdrawAmount": money(max(avail, ZERO)),
                "assets": [asset],
                "positions": self._account_positions(acct),
            }

    def _maint_margin(self, acct: SimAccountState) -> Decimal:
        return sum((self.position_maint(s, p) for (s, _), p in acct.positions.items()), ZERO)

    def _account_positions(self, acct: SimAccountState) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for (symbol, pside), pos in self._position_rows(acct):
            lev = acct.lev(symbol)
            margin = abs(pos.amount) * self.market.mark(symbol) / lev
            rows.append(
                {
                    "symbol": symbol,
                    "initialMargin": money(margin),
                    "maintMargin": money(self.position_maint(symbol, pos)),
                    "unrealizedProfit": money(self._unrealized(symbol, pos)),
                    "positionInitialMargin": money(margin),
                    "openOrderInitialMargin": "0",
                    "leverage": str(lev),
                    "isolated": acct.isolated.get(symbol, False),
                    "entryPrice": fmt(pos.entry_price),
                    "maxNotional": self._max_notional(lev),
                    "positionSide": pside,
                    "positionAmt": fmt(pos.amount),
                    "updateTime": pos.update_time,
                }
            )
        return rows

    def _position_rows(
        self, acct: SimAccountState, symbol: str | None = None
    ) -> list[tuple[tuple[str, str], SimPosition]]:
        names = {s for (s, _), p in acct.positions.items() if p.amount} | set(acct.leverage)
        sides = ("LONG", "SHORT") if acct.dual_side else ("BOTH",)
        return [
            ((s, side), acct.positions.get((s, side)) or SimPosition())
            for s in sorted(names)
            if symbol is None or s == symbol
            for side in sides
        ]

    def position_risk_json(self, user: str, params: Mapping[str, str]) -> list[dict[str, object]]:
        sym = _symbol(params, required=False)
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            rows: list[dict[str, object]] = []
            for (symbol, pside), pos in self._position_rows(acct, sym.symbol if sym else None):
                lev, mark = acct.lev(symbol), self.market.mark(symbol)
                isolated = acct.isolated.get(symbol, False)
                margin = abs(pos.amount) * mark / lev + pos.added_margin
                rows.append(
                    {
                        "symbol": symbol,
                        "positionAmt": fmt(pos.amount),
                        "entryPrice": fmt(pos.entry_price),
                        "markPrice": fmt(mark),
                        "unRealizedProfit": money(self._unrealized(symbol, pos)),
                        "liquidationPrice": fmt(self.liquidation_price(acct, symbol, pos)),
                        "leverage": str(lev),
                        "maxNotionalValue": self._max_notional(lev),
                        "marginType": "isolated" if isolated else "cross",
                        "isolatedMargin": money(margin if isolated else ZERO),
                        "isAutoAddMargin": "false",
                        "positionSide": pside,
                        "notional": money(pos.amount * mark),
                        "isolatedWallet": money(margin if isolated else ZERO),
                        "updateTime": pos.update_time,
                    }
                )
            return rows

    def user_trades(self, user: str, params: Mapping[str, str]) -> list[dict[str, object]]:
        sym = _symbol(params)
        assert sym is not None
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            start = None if "fromId" in params else _int(params, "startTime")
            trades = acct.trades_by_symbol.since(sym.symbol, start)
            return [t.to_json() for t in _page(trades, params, "fromId", lambda t: t.id)]

    def income_json(self, user: str, params: Mapping[str, str]) -> list[dict[str, object]]:
        sym = _symbol(params, required=False)
        kind = params.get("incomeType")
        start, end = _int(params, "startTime"), _int(params, "endTime")
        limit = min(_int(params, "limit", 100) or 100, 1000)
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            history = acct.income if not kind else acct.income_by_kind.since(kind, start)
            rows = [
                i
                for i in history
                if (sym is None or i.symbol == sym.symbol)
                and (not kind or i.income_type == kind)
                and (start is None or i.time >= start)
                and (end is None or i.time <= end)
            ]
            rows = rows[:limit] if start is not None else rows[-limit:]
            return [i.to_json() for i in rows]

    def leverage_brackets(self, params: Mapping[str, str]) -> object:
        """GET /fapi/v3/leverageBracket: one symbol's object, or every symbol's list."""
        sym = _symbol(params, required=False)
        if sym is not None:
            return brackets_json(sym.symbol)
        return [brackets_json(s) for s in SYMBOLS]

    def adl_quantile(self, user: str, params: Mapping[str, str]) -> list[dict[str, object]]:
        """GET /fapi/v3/adlQuantile: 0 (last in the ADL queue) to 4 (first) per position."""
        sym = _symbol(params, required=False)
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            rows: list[dict[str, object]] = []
            for (symbol, pside), pos in self._position_rows(acct, sym.symbol if sym else None):
                q = liquidation.adl_quantile(self, acct, symbol, pos)
                rows.append({"symbol": symbol, "adlQuantile": {pside: q, "HEDGE": 0}})
            return rows

    def force_orders(self, user: str, params: Mapping[str, str]) -> list[dict[str, object]]:
        """GET /fapi/v3/forceOrders: the account's liquidation and ADL orders, newest last."""
        sym = _symbol(params, required=False)
        kind = _choice(params, "autoCloseType", ("LIQUIDATION", "ADL", ""), "")
        start, end = _int(params, "startTime"), _int(params, "endTime")
        limit = min(_int(params, "limit", 50) or 50, 100)
        with self.lock:
            acct = self.account(user)
            self._tick_account(acct)
            rows = [
                o
                for o in acct.orders
                if liquidation.forced_kind(o.client_order_id) is not None
                and (not kind or liquidation.forced_kind(o.client_order_id) == kind)
                and (sym is None or o.symbol == sym.symbol)
                and (start is None or o.time >= start)
                and (end is None or o.time <= end)
            ]
            return [o.to_json() for o in rows[-limit:]]

    def commission_rate(self, params: Mapping[str, str]) -> dict[str, object]:
        sym = _symbol(params)
        assert sym is not None
        return {
            "symbol": sym.symbol,
            "makerCommissionRate": fmt(self.maker_fee),
            "takerCommissionRate": fmt(self.taker_fee),
        }
