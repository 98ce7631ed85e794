"""Pure position sizing and protective-order prices."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from aster_agents.agent.filters import check_order, round_protective, round_qty
from aster_agents.models import ZERO, Side, SymbolFilters


@dataclass(frozen=True, slots=True)
class Sizing:
    qty: Decimal
    margin: Decimal
    notional: Decimal
    skip_reason: str | None = None


def entry_size(
    capital: Decimal,
    position_size_pct: float,
    leverage: int,
    price: Decimal,
    filters: SymbolFilters,
) -> Sizing:
    """Quantity for a new position: ``position_size_pct`` of capital as margin, times leverage.

    Rounded down to the market lot (``filters.round_qty``: step grid, clamped to the maximum); a
    size that fails the symbol's filters (``filters.check_order``: minimum quantity or notional)
    comes back with ``qty == 0`` and a ``skip_reason``.
    """
    if not (price.is_finite() and capital.is_finite() and math.isfinite(position_size_pct)):
        return Sizing(Decimal(0), Decimal(0), Decimal(0), "price or capital is not a number")
    margin = capital * Decimal(str(position_size_pct))
    target = margin * leverage
    if price <= 0 or target <= 0:
        return Sizing(ZERO, ZERO, ZERO, "no capital or no price")
    raw = target / price
    qty = round_qty(raw, filters, market=True)
    notional = qty * price
    if qty <= 0:
        return Sizing(ZERO, margin, notional, f"size {raw:.8f} is below the minimum quantity")
    problems = check_order(filters, qty, None, price, market=True)
    if problems:  # in practice the minimum notional
        return Sizing(ZERO, margin, notional, "; ".join(problems))
    return Sizing(qty, notional / leverage, notional)


def protective_prices(
    side: Side,
    entry: Decimal,
    stop_loss_pct: float,
    take_profit_pct: float,
    filters: SymbolFilters,
) -> tuple[Decimal, Decimal]:
    """(stop price, take-profit price) for a position opened on ``side`` at ``entry``.

    Both are on the tick grid, rounded towards the entry (``filters.round_protective``): the
    loss at the stop is never larger than ``stop_loss_pct`` and the take-profit never further
    than ``take_profit_pct``, for longs and shorts alike.
    """
    sl, tp = Decimal(str(stop_loss_pct)), Decimal(str(take_profit_pct))
    if side is Side.BUY:
        stop, take = entry * (1 - sl), entry * (1 + tp)
    else:
        stop, take = entry * (1 + sl), entry * (1 - tp)
    return round_protective(stop, entry, filters), round_protective(take, entry, filters)


MIN_PROTECTIVE_PCT: Final = 0.001  # a suggested stop closer than 0.1% would fire on noise


def scaled_size_pct(position_size_pct: float, fraction: float | None) -> float:
    """``position_size_pct`` times a suggested fraction clamped into (0, 1]: never larger."""
    if fraction is None or not math.isfinite(fraction) or fraction <= 0:
        return position_size_pct
    return position_size_pct * min(1.0, fraction)


def clamp_distance(configured: float, suggested: float | None) -> float:
    """A suggested stop/take-profit distance clamped into [0.1%, ``configured``].

    The strategy proposes, the config disposes: a suggestion can only tighten the distance.
    """
    if suggested is None or not math.isfinite(suggested) or suggested <= 0:
        return configured
    return min(configured, max(MIN_PROTECTIVE_PCT, suggested))
