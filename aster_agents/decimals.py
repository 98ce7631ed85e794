"""Decimals as text (ground floor, stdlib only: ``status`` imports it)."""

from __future__ import annotations

from decimal import Decimal
from typing import Final

_PLACES: Final = Decimal("1e-8")


def plain(value: Decimal) -> str:
    """A decimal as people and JSON read it: no exponent, at most 8 places, zero as ``"0"``.

    ``Decimal("0E-8")`` is ``"0"``, ``Decimal("1E+3")`` is ``"1000"``; otherwise the value's
    own places are kept (``"350.00"`` stays), rounded to 8 when there are more.
    """
    if value.is_zero():
        return "0"
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -8:
        value = value.quantize(_PLACES)
    return format(value, "f")


def signed(value: Decimal) -> str:
    """``plain`` with a sign: ``+0``, ``-1.31``."""
    text = plain(value)
    return text if text.startswith("-") else f"+{text}"
