"""The simulated exchange's symbol table and exchangeInfo document.

Filter values are those of the real Aster futures exchangeInfo (January 2026); the start
prices and volatilities are the simulator's own choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

D = Decimal


@dataclass(frozen=True, slots=True)
class SimSymbol:
    """Everything the simulator needs to know about one perpetual contract."""

    symbol: str
    base_asset: str
    price_precision: int
    quantity_precision: int
    tick_size: Decimal
    min_price: Decimal
    max_price: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal
    multiplier_up: Decimal
    multiplier_down: Decimal
    maint_margin_pct: Decimal
    trigger_protect: Decimal
    market_take_bound: Decimal
    start_price: float
    minute_vol: float  # standard deviation of one-minute log returns
    max_leverage: int = 125


SYMBOLS: Final[dict[str, SimSymbol]] = {
    s.symbol: s
    for s in (
        SimSymbol(
            "BTCUSDT",
            "BTC",
            1,
            3,
            D("0.1"),
            D("1"),
            D("1000000"),
            D("0.001"),
            D("0.001"),
            D("1000"),
            D("120"),
            D("5"),
            D("1.0200"),
            D("0.9800"),
            D("2.5000"),
            D("0.0200"),
            D("0.02"),
            95000.0,
            0.0009,
        ),
        SimSymbol(
            "ETHUSDT",
            "ETH",
            2,
            3,
            D("0.10"),
            D("39.90"),
            D("1000000"),
            D("0.001"),
            D("0.001"),
            D("10000"),
            D("2000"),
            D("5"),
            D("1.0200"),
            D("0.9800"),
            D("2.5000"),
            D("0.0200"),
            D("0.02"),
            3300.0,
            0.0011,
        ),
        SimSymbol(
            "SOLUSDT",
            "SOL",
            4,
            2,
            D("0.0100"),
            D("0.4200"),
            D("100000"),
            D("0.01"),
            D("0.01"),
            D("1000000"),
            D("5000"),
            D("5"),
            D("1.0300"),
            D("0.9700"),
            D("2.5000"),
            D("0.0300"),
            D("0.03"),
            185.0,
            0.0014,
        ),
        SimSymbol(
            "BNBUSDT",
            "BNB",
            3,
            2,
            D("0.100"),
            D("6.600"),
            D("100000"),
            D("0.01"),
            D("0.01"),
            D("100000"),
            D("2000"),
            D("5"),
            D("1.0200"),
            D("0.9800"),
            D("2.5000"),
            D("0.0200"),
            D("0.02"),
            690.0,
            0.0010,
        ),
        SimSymbol(
            "XRPUSDT",
            "XRP",
            4,
            1,
            D("0.0001"),
            D("0.0143"),
            D("100000"),
            D("0.1"),
            D("0.1"),
            D("1000000"),
            D("200000"),
            D("5"),
            D("1.0300"),
            D("0.9700"),
            D("2.5000"),
            D("0.0300"),
            D("0.03"),
            2.35,
            0.0013,
        ),
        SimSymbol(
            "ASTERUSDT",
            "ASTER",
            5,
            2,
            D("0.00010"),
            D("0.00010"),
            D("200"),
            D("0.01"),
            D("0.01"),
            D("2000000"),
            D("200000"),
            D("5"),
            D("1.0500"),
            D("0.9500"),
            D("12.5000"),
            D("0.1500"),
            D("0.05"),
            1.45,
            0.0020,
            50,
        ),
    )
}

RATE_LIMITS_DOC: Final = "REQUEST_WEIGHT, ORDERS"
MAX_NUM_ORDERS: Final = 200  # open orders per account and symbol (-2025 beyond)
MAX_NUM_ALGO_ORDERS: Final = 10  # open stop/take-profit orders per account and symbol (-4045)
ORDER_TYPES: Final = (
    "LIMIT",
    "MARKET",
    "STOP",
    "STOP_MARKET",
    "TAKE_PROFIT",
    "TAKE_PROFIT_MARKET",
    "TRAILING_STOP_MARKET",
)
TIME_IN_FORCE: Final = ("GTC", "IOC", "FOK", "GTX")


def _filters(s: SimSymbol) -> list[dict[str, object]]:
    return [
        {
            "minPrice": str(s.min_price),
            "maxPrice": str(s.max_price),
            "filterType": "PRICE_FILTER",
            "tickSize": str(s.tick_size),
        },
        {
            "stepSize": str(s.step_size),
            "filterType": "LOT_SIZE",
            "maxQty": str(s.max_qty),
            "minQty": str(s.min_qty),
        },
        {
            "stepSize": str(s.step_size),
            "filterType": "MARKET_LOT_SIZE",
            "maxQty": str(s.market_max_qty),
            "minQty": str(s.min_qty),
        },
        {"limit": MAX_NUM_ORDERS, "filterType": "MAX_NUM_ORDERS"},
        {"limit": MAX_NUM_ALGO_ORDERS, "filterType": "MAX_NUM_ALGO_ORDERS"},
        {"notional": str(s.min_notional), "filterType": "MIN_NOTIONAL"},
        {
            "multiplierDown": str(s.multiplier_down),
            "multiplierUp": str(s.multiplier_up),
            "multiplierDecimal": "4",
            "filterType": "PERCENT_PRICE",
        },
    ]


def symbol_info(s: SimSymbol) -> dict[str, object]:
    """One entry of exchangeInfo ``symbols[]`` in the real field names."""
    return {
        "symbol": s.symbol,
        "pair": s.symbol,
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": 1630998000000,
        "status": "TRADING",
        "maintMarginPercent": str(s.maint_margin_pct),
        "requiredMarginPercent": str(s.maint_margin_pct * 2),
        "baseAsset": s.base_asset,
        "quoteAsset": "USDT",
        "marginAsset": "USDT",
        "pricePrecision": s.price_precision,
        "quantityPrecision": s.quantity_precision,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "underlyingType": "COIN",
        "underlyingSubType": [],
        "triggerProtect": str(s.trigger_protect),
        "liquidationFee": "0.025000",
        "marketTakeBound": str(s.market_take_bound),
        "filters": _filters(s),
        "orderTypes": list(ORDER_TYPES),
        "timeInForce": list(TIME_IN_FORCE),
    }


def exchange_info(server_time: int, rate_limits: list[dict[str, object]]) -> dict[str, object]:
    """The whole ``GET /fapi/v3/exchangeInfo`` document."""
    return {
        "timezone": "UTC",
        "serverTime": server_time,
        "futuresType": "U_MARGINED",
        "rateLimits": rate_limits,
        "exchangeFilters": [],
        "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
        "symbols": [symbol_info(s) for s in SYMBOLS.values()],
    }
