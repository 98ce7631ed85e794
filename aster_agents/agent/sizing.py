"""Pure position sizing and protective-order prices."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Final

from aster_agents.models import Side, SymbolFilters


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

    Rounded down to the market step size and clamped to the market max quantity; a result below
    the minimum quantity or notional comes back with ``qty == 0`` and a ``skip_reason``.
    """
    margin = capital * Decimal(str(position_size_pct))
    target = margin * leverage
    if price <= 0 or target <= 0:
        return Sizing(Decimal(0), Decimal(0), Decimal(0), "no capital or no price")
    step = filters.market_step_size or filters.step_size
    raw = min(target / price, filters.market_max_qty or target / price)
    qty = (raw / step).to_integral_value(rounding=ROUND_DOWN) * step if step > 0 else raw
    notional = qty * price
    min_qty = filters.market_min_qty or filters.min_qty
    if qty <= 0 or qty < min_qty:
        return Sizing(Decimal(0), margin, notional, f"size {raw:.8f} below min qty {min_qty}")
    if notional < filters.min_notional:
        return Sizing(
            Decimal(0),
            margin,
            notional,
            f"notional {notional:.2f} below min notional {filters.min_notional}",
        )
    return Sizing(qty, notional / leverage, notional)


def protective_prices(
    side: Side, entry: Decimal, stop_loss_pct: float, take_profit_pct: float, tick: Decimal
) -> tuple[Decimal, Decimal]:
    """(stop price, take-profit price) for a position opened on ``side`` at ``entry``.

    The stop is rounded away from the entry's loss side conservatively (towards the entry),
    and both are multiples of the tick size.
    """
    sl, tp = Decimal(str(stop_loss_pct)), Decimal(str(take_profit_pct))
    if side is Side.BUY:
        stop, take = entry * (1 - sl), entry * (1 + tp)
    else:
        stop, take = entry * (1 + sl), entry * (1 - tp)
    return _to_tick(stop, tick), _to_tick(take, tick)


def _to_tick(price: Decimal, tick: Decimal) -> Decimal:
    if tick <= 0:
        return price
    return (price / tick).to_integral_value(rounding=ROUND_DOWN) * tick


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
