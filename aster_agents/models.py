"""Frozen value objects that travel between modules.

Prices, quantities and money are ``Decimal``; times are epoch milliseconds (``int``).
JSON from the exchange is parsed into these in ``exchange/``; nothing else sees raw dicts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Final

ZERO = Decimal(0)
_MINUTE_MS: Final = 60_000
_DAY_MS: Final = 1440 * _MINUTE_MS
# Kline interval -> its length. "1M" candles follow the calendar (the simulator buckets them
# by month); 30 days is its nominal length, for cache lifetimes and the like.
INTERVAL_MS: Final[dict[str, int]] = {
    "1m": _MINUTE_MS,
    "3m": 3 * _MINUTE_MS,
    "5m": 5 * _MINUTE_MS,
    "15m": 15 * _MINUTE_MS,
    "30m": 30 * _MINUTE_MS,
    "1h": 60 * _MINUTE_MS,
    "2h": 120 * _MINUTE_MS,
    "4h": 240 * _MINUTE_MS,
    "6h": 360 * _MINUTE_MS,
    "8h": 480 * _MINUTE_MS,
    "12h": 720 * _MINUTE_MS,
    "1d": _DAY_MS,
    "3d": 3 * _DAY_MS,
    "1w": 7 * _DAY_MS,
    "1M": 30 * _DAY_MS,
}


def now_ms() -> int:
    """The wall clock in epoch milliseconds, the unit of every time in the project."""
    return time.time_ns() // 1_000_000


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class PositionSide(StrEnum):
    BOTH = "BOTH"
    LONG = "LONG"
    SHORT = "SHORT"


class OrderType(StrEnum):
    LIMIT = "LIMIT"
    MARKET = "MARKET"
    STOP = "STOP"
    STOP_MARKET = "STOP_MARKET"
    TAKE_PROFIT = "TAKE_PROFIT"
    TAKE_PROFIT_MARKET = "TAKE_PROFIT_MARKET"
    TRAILING_STOP_MARKET = "TRAILING_STOP_MARKET"


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    GTX = "GTX"


class OrderStatus(StrEnum):
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_open(self) -> bool:
        return self in (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)


class MarginType(StrEnum):
    ISOLATED = "ISOLATED"
    CROSSED = "CROSSED"


class StpMode(StrEnum):
    """Self-trade prevention: which side expires when two orders of one account would cross."""

    EXPIRE_TAKER = "EXPIRE_TAKER"
    EXPIRE_MAKER = "EXPIRE_MAKER"
    EXPIRE_BOTH = "EXPIRE_BOTH"


@dataclass(frozen=True, slots=True)
class SymbolFilters:
    """The exchangeInfo filters that decide whether an order is valid."""

    tick_size: Decimal
    min_price: Decimal
    max_price: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_step_size: Decimal
    market_min_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal
    multiplier_up: Decimal
    multiplier_down: Decimal
    max_num_orders: int = 200
    max_num_algo_orders: int = 10


@dataclass(frozen=True, slots=True)
class SymbolInfo:
    symbol: str
    base_asset: str
    quote_asset: str
    status: str
    price_precision: int
    quantity_precision: int
    filters: SymbolFilters


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate_limit_type: str  # REQUEST_WEIGHT | ORDERS
    interval: str  # SECOND | MINUTE | DAY
    interval_num: int
    limit: int


@dataclass(frozen=True, slots=True)
class ExchangeInfo:
    server_time: int
    rate_limits: tuple[RateLimit, ...]
    symbols: dict[str, SymbolInfo] = field(hash=False)
    nonce_window_ms: int | None = None  # only a simulator states it (``nonceWindowMs``)
    # only a simulator states it (``marketClock``): "lockstep" when agents take turns
    market_clock: str | None = None

    def symbol(self, name: str) -> SymbolInfo:
        return self.symbols[name]


@dataclass(frozen=True, slots=True)
class Turn:
    """An agent's turn on a lockstep simulator: its number (to say it is done) and market time."""

    number: int
    time_ms: int


@dataclass(frozen=True, slots=True)
class Kline:
    open_time: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    close_time: int


@dataclass(frozen=True, slots=True)
class FundingRate:
    """One settled funding rate (``GET fundingRate``)."""

    symbol: str
    rate: Decimal
    time: int


@dataclass(frozen=True, slots=True)
class PremiumIndex:
    symbol: str
    mark_price: Decimal
    index_price: Decimal
    last_funding_rate: Decimal
    next_funding_time: int
    time: int


@dataclass(frozen=True, slots=True)
class CommissionRate:
    symbol: str
    maker: Decimal  # fraction of notional, e.g. 0.0001
    taker: Decimal


@dataclass(frozen=True, slots=True)
class TickerPrice:
    symbol: str
    price: Decimal
    time: int


@dataclass(frozen=True, slots=True)
class BookTicker:
    symbol: str
    bid_price: Decimal
    bid_qty: Decimal
    ask_price: Decimal
    ask_qty: Decimal
    time: int


@dataclass(frozen=True, slots=True)
class Balance:
    asset: str
    balance: Decimal
    cross_wallet_balance: Decimal
    cross_un_pnl: Decimal
    available_balance: Decimal
    max_withdraw_amount: Decimal
    update_time: int


@dataclass(frozen=True, slots=True)
class Position:
    symbol: str
    position_amt: Decimal  # signed: > 0 long, < 0 short (one-way mode)
    entry_price: Decimal
    mark_price: Decimal
    unrealized_profit: Decimal
    leverage: int
    margin_type: str
    position_side: PositionSide
    liquidation_price: Decimal = ZERO
    update_time: int = 0


@dataclass(frozen=True, slots=True)
class AccountInfo:
    total_wallet_balance: Decimal
    total_unrealized_profit: Decimal
    total_margin_balance: Decimal
    available_balance: Decimal
    total_initial_margin: Decimal
    total_maint_margin: Decimal
    can_trade: bool
    positions: tuple[Position, ...]
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class Order:
    order_id: int
    symbol: str
    status: OrderStatus
    client_order_id: str
    price: Decimal
    avg_price: Decimal
    orig_qty: Decimal
    executed_qty: Decimal
    cum_quote: Decimal
    time_in_force: str
    type: OrderType
    side: Side
    position_side: PositionSide
    reduce_only: bool
    close_position: bool
    stop_price: Decimal
    update_time: int


@dataclass(frozen=True, slots=True)
class UserTrade:
    id: int
    order_id: int
    symbol: str
    side: Side
    position_side: PositionSide
    price: Decimal
    qty: Decimal
    quote_qty: Decimal
    realized_pnl: Decimal
    commission: Decimal
    commission_asset: str
    buyer: bool
    maker: bool
    time: int


@dataclass(frozen=True, slots=True)
class Income:
    symbol: str
    income_type: str
    income: Decimal
    asset: str
    info: str
    time: int
    tran_id: int
    trade_id: str


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """A new order as the runner wants it; the client turns it into parameters."""

    symbol: str
    side: Side
    type: OrderType
    client_order_id: str
    quantity: Decimal | None = None
    price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: TimeInForce | None = None
    reduce_only: bool = False
    close_position: bool = False
    position_side: PositionSide = PositionSide.BOTH
    working_type: str | None = None
    stp_mode: StpMode | None = None  # None: the account's mode
