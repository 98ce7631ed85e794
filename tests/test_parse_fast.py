"""The parser's fast paths against the plain ones: ``parse.dec`` for the exchange's number
strings against its general path, ``parse._enum`` against calling the enum."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aster_agents.exchange import parse
from aster_agents.models import OrderStatus, OrderType, PositionSide, Side, StpMode

SHAPES = (
    "0", "1", "-1", "0.00000001", "65000.10", "1e3", "1E-8", " 2.5 ", "1_000", "+7", "-0",
    "NaN", "-nan", "sNaN", "Infinity", "-inf", "", " ", "abc", "1.2.3", "0x10", "١٢",
)  # fmt: skip


def outcome(parser: Any, value: object) -> tuple[str, object]:
    """What ``parser`` makes of ``{"v": value}``: the Decimal (with its exponent) or the error."""
    try:
        number = parser({"v": value}, "v", "test", Decimal(7))
    except parse.MalformedPayload as exc:
        return "error", str(exc)
    return "value", (number, number.as_tuple())


@pytest.mark.parametrize("value", [*SHAPES, None, 3, 2.5, Decimal("1.50"), True, [1]])
def test_dec_is_the_general_parse_for_every_shape(value: object) -> None:
    assert outcome(parse.dec, value) == outcome(parse._dec, value)


@given(
    st.one_of(
        st.text(max_size=12),
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.floats().map(repr),
    )
)
def test_dec_is_the_general_parse_for_any_string(value: str) -> None:
    assert outcome(parse.dec, value) == outcome(parse._dec, value)


ENUMS = (OrderStatus, OrderType, Side, PositionSide, StpMode)


def called(factory: Any, raw: object) -> tuple[str, object]:
    """``factory(raw)`` as ``_enum`` says it: the member, or the error ``_enum`` raises."""
    try:
        return "member", factory(raw if isinstance(raw, str) else str(raw))
    except ValueError:
        return "error", f"field 'k' has an unknown value {str(raw)!r}"


@pytest.mark.parametrize("factory", ENUMS)
def test_enum_is_the_member_the_call_gives(factory: Any) -> None:
    raws: list[object] = [m.value for m in factory]
    raws += [m.name.lower() for m in factory] + ["", " BUY", "buy", "NONE", 1, None]
    for raw in raws:
        try:
            got: tuple[str, object] = ("member", parse._enum(factory, {"k": raw}, "k", "test"))
        except parse.MalformedPayload as exc:
            got = ("error", str(exc))
        want = called(factory, raw)
        if raw is None:  # a required field: missing
            assert got[0] == "error" and "'k' is missing" in str(got[1])
            continue
        assert got[0] == want[0], raw
        if want[0] == "member":
            assert got[1] is want[1]
        else:
            assert str(want[1]) in str(got[1])
