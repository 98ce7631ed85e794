"""Decimals as text (ground floor, stdlib only: ``status`` imports it)."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

_PLACES: Final = Decimal("1e-8")


def plain(value: Decimal) -> str:
    """A decimal as people and JSON read it: no exponent, at most 8 places, no trailing zeros.

    ``Decimal("0E-8")`` is ``"0"``, ``10000.00000000`` is ``"10000"``, ``1.31245779`` stays.
    """
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -8:
        value = value.quantize(_PLACES)
    text = format(value.normalize(), "f")
    return "0" if text == "-0" else text


def signed(value: Decimal) -> str:
    """``plain`` with a sign: ``+0``, ``-1.31``."""
    text = plain(value)
    return text if text.startswith("-") else f"+{text}"
