"""Leverage brackets: the maintenance margin of a position, by symbol and notional.

The shape is that of ``GET /fapi/v3/leverageBracket`` (Binance's, which Aster copies): per
symbol a list of notional tiers, each with the highest initial leverage allowed in it, a
maintenance margin ratio and ``cum``, the maintenance amount that makes the margin
continuous across tiers. Maintenance margin = notional x ratio - cum of the notional's tier.

The tiers are the simulator's own (the usual large-cap table for BTC and ETH, caps a fifth
as large for the others); initial leverage is capped by the symbol's maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Final

from aster_agents.sim.symbols import SYMBOLS

D = Decimal
# (notional cap, initial leverage, maintenance margin ratio) of the large-cap table
_TIERS: Final = (
    (D(50_000), 125, D("0.004")),
    (D(250_000), 100, D("0.005")),
    (D(1_000_000), 50, D("0.01")),
    (D(10_000_000), 20, D("0.025")),
    (D(20_000_000), 10, D("0.05")),
    (D(50_000_000), 5, D("0.1")),
    (D(100_000_000), 4, D("0.125")),
    (D(200_000_000), 2, D("0.25")),
)
_LARGE_CAPS: Final = ("BTCUSDT", "ETHUSDT")


@dataclass(frozen=True, slots=True)
class Bracket:
    bracket: int
    initial_leverage: int
    notional_floor: Decimal
    notional_cap: Decimal
    maint_margin_ratio: Decimal
    cum: Decimal

    def to_json(self) -> dict[str, object]:
        return {
            "bracket": self.bracket,
            "initialLeverage": self.initial_leverage,
            "notionalCap": int(self.notional_cap),
            "notionalFloor": int(self.notional_floor),
            "maintMarginRatio": float(self.maint_margin_ratio),
            "cum": float(self.cum),
        }


@cache
def brackets(symbol: str) -> tuple[Bracket, ...]:
    """The symbol's tiers, lowest notional first."""
    scale = D(1) if symbol in _LARGE_CAPS else D("0.2")
    top = SYMBOLS[symbol].max_leverage
    out: list[Bracket] = []
    floor, cum, last_ratio = D(0), D(0), D(0)
    for i, (cap, lev, ratio) in enumerate(_TIERS, start=1):
        cum += floor * (ratio - last_ratio)
        out.append(Bracket(i, min(lev, top), floor, cap * scale, ratio, cum))
        floor, last_ratio = cap * scale, ratio
    return tuple(out)


def bracket_for(symbol: str, notional: Decimal) -> Bracket:
    return _bracket_of(brackets(symbol), abs(notional))


def _bracket_of(tiers: tuple[Bracket, ...], size: Decimal) -> Bracket:
    """The tier of an absolute notional ``size``."""
    for b in tiers:
        if size < b.notional_cap:
            return b
    return tiers[-1]


_ZERO: Final = D(0)


def maint_margin(symbol: str, notional: Decimal) -> Decimal:
    """Maintenance margin of a position of ``notional`` (absolute value) on ``symbol``.

    The liquidation check asks it of every held position at every step: the absolute value
    is taken once, and the floor is one Decimal zero, not a new one per call."""
    size = abs(notional)
    b = _bracket_of(brackets(symbol), size)
    return max(_ZERO, size * b.maint_margin_ratio - b.cum)


def brackets_json(symbol: str) -> dict[str, object]:
    return {
        "symbol": symbol,
        "notionalCoef": 1.0,
        "brackets": [b.to_json() for b in brackets(symbol)],
    }
