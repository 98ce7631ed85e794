"""Symbol filters as pure functions: round prices and quantities, check an order before sending.

The rules are the exchange's (``shared/aster-v3-api.md`` section 2.1): a price is valid when
``(price - minPrice) % tickSize == 0`` and it lies within ``[minPrice, maxPrice]``; a quantity
likewise against ``minQty``/``stepSize``/``maxQty`` (``MARKET_LOT_SIZE`` for market orders);
``price * qty >= notional`` unless reduce-only; and the ``PERCENT_PRICE`` band around the mark.
A zero in any limit disables that rule, as on the exchange.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from aster_agents.errors import OrderRejected
from aster_agents.models import ZERO, Side, SymbolFilters


@dataclass(frozen=True, slots=True)
class _Lot:
    step: Decimal
    min: Decimal
    max: Decimal


def _lot(filters: SymbolFilters, market: bool) -> _Lot:
    if market and filters.market_step_size > 0:
        return _Lot(filters.market_step_size, filters.market_min_qty, filters.market_max_qty)
    return _Lot(filters.step_size, filters.min_qty, filters.max_qty)


def _snap(value: Decimal, base: Decimal, step: Decimal, rounding: str) -> Decimal:
    """``base + n * step`` nearest to ``value`` in the ``rounding`` direction."""
    steps = ((value - base) / step).to_integral_value(rounding=rounding)
    return base + steps * step


def round_price(price: Decimal, filters: SymbolFilters, side: Side | None = None) -> Decimal:
    """``price`` on the tick grid: down for BUY (and when ``side`` is None), up for SELL.

    Rounding up never goes past ``maxPrice``; rounding down never goes below ``minPrice``
    unless ``price`` itself is below it.
    """
    tick = filters.tick_size
    if tick <= 0:
        return price
    base = filters.min_price if filters.min_price > 0 else ZERO
    if side is Side.SELL:
        up = _snap(price, base, tick, ROUND_CEILING)
        if filters.max_price <= 0 or up <= filters.max_price:
            return up
    return _snap(price, base, tick, ROUND_FLOOR)


def round_protective(price: Decimal, entry: Decimal, filters: SymbolFilters) -> Decimal:
    """A stop-loss or take-profit trigger ``price`` on the tick grid, rounded towards ``entry``.

    Rounding never widens the distance to the entry: a stop never risks more than configured and
    a take-profit is never placed beyond its target. Long: the stop (below the entry) rounds up,
    the take-profit (above) rounds down; short: the stop rounds down, the take-profit up. Only
    when ``price`` is less than a tick from the entry does it round away, so that the order stays
    on its side of the entry (it would trigger at once otherwise).
    """
    tick = filters.tick_size
    if tick <= 0 or price == entry:
        return price
    base = filters.min_price if filters.min_price > 0 else ZERO
    below = price < entry
    towards = _snap(price, base, tick, ROUND_CEILING if below else ROUND_FLOOR)
    if (towards < entry) == below and towards != entry:
        return towards
    return _snap(price, base, tick, ROUND_FLOOR if below else ROUND_CEILING)


def round_qty(qty: Decimal, filters: SymbolFilters, market: bool = False) -> Decimal:
    """``qty`` rounded down to the step grid, clamped to the maximum; 0 when below the minimum."""
    lot = _lot(filters, market)
    capped = min(qty, lot.max) if lot.max > 0 else qty
    if capped < lot.min or capped <= 0:
        return ZERO
    if lot.step <= 0:
        return capped
    return _snap(capped, lot.min, lot.step, ROUND_FLOOR)


def _on_grid(value: Decimal, base: Decimal, step: Decimal) -> bool:
    return step <= 0 or (value - base) % step == 0


def _qty_problems(filters: SymbolFilters, qty: Decimal, market: bool) -> list[str]:
    lot = _lot(filters, market)
    kind = "market quantity" if market else "quantity"
    problems: list[str] = []
    if qty <= 0:
        problems.append(f"{kind} {qty} must be positive")
    elif qty < lot.min:
        problems.append(f"{kind} {qty} is below the minimum {lot.min}")
    if lot.max > 0 and qty > lot.max:
        problems.append(f"{kind} {qty} is above the maximum {lot.max}")
    if qty >= lot.min and qty > 0 and not _on_grid(qty, lot.min, lot.step):
        problems.append(f"{kind} {qty} is not a multiple of the step {lot.step}")
    return problems


def _price_problems(filters: SymbolFilters, price: Decimal) -> list[str]:
    problems: list[str] = []
    if price <= 0:
        return [f"price {price} must be positive"]
    if filters.min_price > 0 and price < filters.min_price:
        problems.append(f"price {price} is below the minimum {filters.min_price}")
    if filters.max_price > 0 and price > filters.max_price:
        problems.append(f"price {price} is above the maximum {filters.max_price}")
    base = filters.min_price if filters.min_price > 0 else ZERO
    if not _on_grid(price, base, filters.tick_size):
        problems.append(f"price {price} is not a multiple of the tick {filters.tick_size}")
    return problems


def _band_problems(
    filters: SymbolFilters, price: Decimal, mark: Decimal, side: Side | None
) -> list[str]:
    problems: list[str] = []
    up = mark * filters.multiplier_up
    down = mark * filters.multiplier_down
    if filters.multiplier_up > 0 and side is not Side.SELL and price > up:
        problems.append(f"price {price} is above the percent-price band {up} (mark {mark})")
    if filters.multiplier_down > 0 and side is not Side.BUY and price < down:
        problems.append(f"price {price} is below the percent-price band {down} (mark {mark})")
    return problems


def check_order(
    filters: SymbolFilters,
    qty: Decimal,
    price: Decimal | None,
    mark: Decimal | None,
    market: bool,
    reduce_only: bool = False,
    side: Side | None = None,
) -> list[str]:
    """Every reason the exchange would refuse this order; empty when it passes the filters.

    ``price`` is the limit price (None for market orders); ``mark`` the mark price, used for the
    notional of market orders and for the percent-price band (skipped when None). With ``side``
    only the side's edge of the band is checked (BUY: upper, SELL: lower), as on the exchange.
    """
    problems = _qty_problems(filters, qty, market)
    if price is not None and not market:
        problems += _price_problems(filters, price)
        if mark is not None and mark > 0:
            problems += _band_problems(filters, price, mark, side)
    reference = mark if market or price is None else price
    if not reduce_only and reference is not None and filters.min_notional > 0:
        notional = qty * reference
        if notional < filters.min_notional:
            problems.append(f"notional {notional} is below the minimum {filters.min_notional}")
    return problems


def require_valid_order(
    filters: SymbolFilters,
    qty: Decimal,
    price: Decimal | None,
    mark: Decimal | None,
    market: bool,
    reduce_only: bool = False,
    side: Side | None = None,
) -> None:
    """Raise ``OrderRejected`` listing every problem ``check_order`` finds."""
    problems = check_order(filters, qty, price, mark, market, reduce_only, side)
    if problems:
        raise OrderRejected("order fails the symbol filters: " + "; ".join(problems))
