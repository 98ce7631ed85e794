"""Symbol filters: rounding to tick/step and the pre-send order checks."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aster_agents.agent.filters import (
    check_order,
    require_valid_order,
    round_price,
    round_protective,
    round_qty,
)
from aster_agents.agent.sizing import entry_size, protective_prices
from aster_agents.errors import OrderRejected
from aster_agents.models import Side, SymbolFilters

D = Decimal
BTC = SymbolFilters(
    tick_size=D("0.1"),
    min_price=D("1"),
    max_price=D("1000000"),
    step_size=D("0.001"),
    min_qty=D("0.001"),
    max_qty=D("1000"),
    market_step_size=D("0.001"),
    market_min_qty=D("0.001"),
    market_max_qty=D("120"),
    min_notional=D("5"),
    multiplier_up=D("1.05"),
    multiplier_down=D("0.95"),
)


@st.composite
def filters(draw: st.DrawFn) -> SymbolFilters:
    tick = draw(st.sampled_from([D("0.0001"), D("0.01"), D("0.1"), D("0.5"), D("1"), D("25")]))
    step = draw(st.sampled_from([D("0.001"), D("0.01"), D("1"), D("0.3"), D("5")]))
    min_price = tick * draw(st.integers(0, 50)) + draw(st.sampled_from([D(0), D("0.00003")]))
    min_qty = step * draw(st.integers(0, 5)) + draw(st.sampled_from([D(0), D("0.0007")]))
    max_price = min_price + tick * draw(st.integers(10, 10**7))
    max_qty = min_qty + step * draw(st.integers(1, 10**6))
    return SymbolFilters(
        tick_size=tick,
        min_price=min_price,
        max_price=max_price,
        step_size=step,
        min_qty=min_qty,
        max_qty=max_qty,
        market_step_size=step,
        market_min_qty=min_qty,
        market_max_qty=max_qty,
        min_notional=D("5"),
        multiplier_up=D("1.1"),
        multiplier_down=D("0.9"),
    )


amounts = st.decimals(min_value=D("0.00001"), max_value=D("10000000"), places=6)
sides = st.sampled_from([None, Side.BUY, Side.SELL])


def _on_grid(value: Decimal, base: Decimal, step: Decimal) -> bool:
    return (value - base) % step == 0


@given(f=filters(), price=amounts, side=sides)
def test_price_on_tick_grid(f: SymbolFilters, price: Decimal, side: Side | None) -> None:
    """A rounded price is min_price plus a whole number of ticks."""
    base = f.min_price
    assert _on_grid(round_price(price, f, side), base, f.tick_size)


@given(f=filters(), price=amounts, side=sides)
def test_price_rounding_direction(f: SymbolFilters, price: Decimal, side: Side | None) -> None:
    """BUY (and no side) rounds down; SELL rounds up, never past max_price; within one tick."""
    rounded = round_price(price, f, side)
    assert abs(rounded - price) < f.tick_size
    if side is Side.SELL and rounded <= f.max_price and price <= f.max_price:
        assert rounded >= price
    else:
        assert rounded <= price


@given(f=filters(), price=amounts, side=sides)
def test_price_rounding_idempotent(f: SymbolFilters, price: Decimal, side: Side | None) -> None:
    """Rounding a rounded price changes nothing."""
    once = round_price(price, f, side)
    assert round_price(once, f, side) == once


@given(f=filters(), qty=amounts, market=st.booleans())
def test_qty_on_step_grid_and_bounded(f: SymbolFilters, qty: Decimal, market: bool) -> None:
    """A rounded quantity is 0 or min_qty plus whole steps, never above the input or the max."""
    rounded = round_qty(qty, f, market)
    assert rounded <= qty
    assert rounded <= f.max_qty
    if rounded != 0:
        assert rounded >= f.min_qty
        assert _on_grid(rounded, f.min_qty, f.step_size)


@given(f=filters(), qty=amounts, market=st.booleans())
def test_qty_rounding_idempotent(f: SymbolFilters, qty: Decimal, market: bool) -> None:
    """Rounding a rounded quantity changes nothing."""
    once = round_qty(qty, f, market)
    assert round_qty(once, f, market) == once


@given(f=filters(), qty=amounts)
def test_qty_rounding_loses_less_than_a_step(f: SymbolFilters, qty: Decimal) -> None:
    """Between min and max, rounding down loses less than one step."""
    assume(f.min_qty <= qty <= f.max_qty)
    assert qty - round_qty(qty, f) < f.step_size


@given(f=filters(), data=st.data(), side=st.sampled_from([Side.BUY, Side.SELL]))
def test_rounded_orders_pass_grid_checks(f: SymbolFilters, data: st.DataObject, side: Side) -> None:
    """After rounding, a quantity and price inside the limits pass every grid and range check."""
    qty = data.draw(st.decimals(min_value=f.min_qty, max_value=f.max_qty, places=6))
    price = data.draw(st.decimals(min_value=f.min_price, max_value=f.max_price, places=6))
    q, p = round_qty(qty, f), round_price(price, f, side)
    assume(q > 0 and p > 0)
    assert check_order(f, q, p, None, market=False, reduce_only=True, side=side) == []


def test_examples_btcusdt() -> None:
    """BTCUSDT-like filters: concrete rounding cases."""
    assert round_price(D("64250.17"), BTC) == D("64250.1")
    assert round_price(D("64250.17"), BTC, Side.BUY) == D("64250.1")
    assert round_price(D("64250.11"), BTC, Side.SELL) == D("64250.2")
    assert round_price(D("64250.1"), BTC, Side.SELL) == D("64250.1")
    assert round_price(D("1000000.05"), BTC, Side.SELL) == D("1000000.0")
    assert round_qty(D("0.0129"), BTC) == D("0.012")
    assert round_qty(D("0.0005"), BTC) == D("0")
    assert round_qty(D("5000"), BTC) == D("1000")
    assert round_qty(D("5000"), BTC, market=True) == D("120")


def test_long_protection_rounds_towards_the_entry() -> None:
    """Long: the stop rounds UP and the take-profit DOWN, so neither is wider than configured."""
    stop, take = protective_prices(Side.BUY, D("100.05"), 0.02, 0.04, BTC)
    assert (stop, take) == (D("98.1"), D("104.0"))  # exact 98.049 and 104.052
    assert D("100.05") - stop <= D("100.05") * D("0.02")
    assert take - D("100.05") <= D("100.05") * D("0.04")


def test_short_protection_rounds_towards_the_entry() -> None:
    """Short: the stop rounds DOWN and the take-profit UP, so neither is wider than configured."""
    stop, take = protective_prices(Side.SELL, D("100.05"), 0.02, 0.04, BTC)
    assert (stop, take) == (D("102.0"), D("96.1"))  # exact 102.051 and 96.048
    assert stop - D("100.05") <= D("100.05") * D("0.02")
    assert D("100.05") - take <= D("100.05") * D("0.04")


pcts = st.floats(min_value=0.001, max_value=0.5)


@given(f=filters(), data=st.data(), side=st.sampled_from([Side.BUY, Side.SELL]), sl=pcts, tp=pcts)
def test_protective_prices_never_wider_than_configured(
    f: SymbolFilters, data: st.DataObject, side: Side, sl: float, tp: float
) -> None:
    """Both sides: on the grid, within a tick, never wider than exact (unless under a tick)."""
    entry = data.draw(st.decimals(min_value=f.min_price, max_value=f.max_price, places=6))
    assume(entry > 0)
    stop, take = protective_prices(side, entry, sl, tp, f)
    sign = 1 if side is Side.BUY else -1
    exact_stop = entry * (1 - sign * D(str(sl)))
    exact_take = entry * (1 + sign * D(str(tp)))
    for rounded, exact in ((stop, exact_stop), (take, exact_take)):
        assert _on_grid(rounded, f.min_price, f.tick_size)
        assert abs(rounded - exact) < f.tick_size
        assert (rounded < entry) == (exact < entry) and rounded != entry, "crossed the entry"
        if abs(exact - entry) >= f.tick_size:
            assert abs(rounded - entry) <= abs(exact - entry), "rounded away from the entry"


def test_round_protective_keeps_grid_prices_and_its_side_of_the_entry() -> None:
    """On-grid prices stay; under a tick from the entry it rounds away rather than cross it."""
    assert round_protective(D("98.1"), D("100"), BTC) == D("98.1")
    assert round_protective(D("100.05"), D("100.05"), BTC) == D("100.05")
    assert round_protective(D("100.02"), D("100.05"), BTC) == D("100.0")  # not 100.1 (above)
    assert round_protective(D("100.08"), D("100.05"), BTC) == D("100.1")  # not 100.0 (below)
    assert round_protective(D("99.95"), D("100.0"), BTC) == D("99.9")  # not the entry itself


@given(f=filters(), capital=amounts, price=amounts, leverage=st.integers(1, 20))
def test_entry_size_rounds_with_the_filters(
    f: SymbolFilters, capital: Decimal, price: Decimal, leverage: int
) -> None:
    """An entry size is the filters' market rounding of the target, and passes check_order."""
    size = entry_size(capital, 0.1, leverage, price, f)
    if size.skip_reason is None:
        assert size.qty == round_qty(capital * D("0.1") * leverage / price, f, market=True)
        assert check_order(f, size.qty, None, price, market=True) == []
    else:
        assert size.qty == 0


def test_zero_tick_and_step_disable_rounding() -> None:
    """A zero tick or step (rule disabled) leaves values as they are."""
    f = SymbolFilters(*(D(0),) * 12)
    assert round_price(D("1.23456"), f, Side.SELL) == D("1.23456")
    assert round_qty(D("1.23456"), f) == D("1.23456")
    assert check_order(f, D("1.23456"), D("9.87"), D("10"), market=False) == []


def test_check_passes_valid_limit_order() -> None:
    """A limit order on the grid, inside the band and above min notional has no problems."""
    assert check_order(BTC, D("0.001"), D("64250.1"), D("64000"), market=False) == []


@pytest.mark.parametrize(
    ("qty", "price", "market", "needle"),
    [
        (D("0"), D("64250.1"), False, "must be positive"),
        (D("0.0001"), D("64250.1"), False, "below the minimum 0.001"),
        (D("1001"), D("64250.1"), False, "above the maximum 1000"),
        (D("121"), None, True, "above the maximum 120"),
        (D("0.0015"), D("64250.1"), False, "multiple of the step"),
        (D("0.01"), D("64250.15"), False, "multiple of the tick"),
        (D("0.01"), D("0.5"), False, "price 0.5 is below the minimum 1"),
        (D("0.01"), D("2000000"), False, "above the maximum 1000000"),
        (D("0.001"), D("3000"), False, "notional 3.000 is below the minimum 5"),
        (D("0.001"), None, True, "notional 4.000 is below the minimum 5"),
        (D("0.01"), D("70000"), False, "above the percent-price band"),
        (D("0.01"), D("60000"), False, "below the percent-price band"),
    ],
)
def test_check_reports_each_problem(
    qty: Decimal, price: Decimal | None, market: bool, needle: str
) -> None:
    """Each filter violation is reported with the offending value and the limit."""
    mark = D("4000") if market and qty == D("0.001") else D("64000")
    problems = check_order(BTC, qty, price, mark, market=market)
    assert any(needle in p for p in problems), problems


def test_reduce_only_exempt_from_min_notional() -> None:
    """Reduce-only orders skip the min-notional rule, as the exchange says (-4164)."""
    assert check_order(BTC, D("0.001"), D("3000"), None, market=False, reduce_only=True) == []


def test_percent_band_checks_only_the_side_edge() -> None:
    """With a side, BUY checks only the upper edge and SELL only the lower edge."""
    mark = D("64000")
    assert check_order(BTC, D("0.01"), D("60000"), mark, market=False, side=Side.BUY) == []
    assert check_order(BTC, D("0.01"), D("70000"), mark, market=False, side=Side.SELL) == []
    assert check_order(BTC, D("0.01"), D("70000"), mark, market=False, side=Side.BUY)


def test_require_valid_order_raises_order_rejected() -> None:
    """require_valid_order raises OrderRejected listing every problem."""
    with pytest.raises(OrderRejected, match=r"below the minimum 0\.001; .* multiple of the tick"):
        require_valid_order(BTC, D("0.0001"), D("64250.15"), None, market=False)
    require_valid_order(BTC, D("0.001"), D("64250.1"), None, market=False)
