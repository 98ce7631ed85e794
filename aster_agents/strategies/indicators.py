"""Small, pure technical indicators over float series (oldest value first).

Prices arrive as ``Decimal``; strategies convert them to ``float`` once (see
:class:`~aster_agents.strategies.base.Series`) because indicator outputs are signals, not
money. Every function returns the value for the *last* element unless its name ends in
``_series``. Callers make sure the series is at least ``period`` long; the functions still
never divide by zero (a flat or zero series gives the neutral value).

The runner asks for every indicator on every tick over the whole window (EMA and RSI are
seeded at the window's start, so they cannot be carried on exactly), so the loops are written
for speed: pairwise differences with ``map`` (C, no Python frame per element), one local
variable per recursion, int factors turned into (the same) floats beforehand (float-by-float
arithmetic is the interpreter's fast path), no ``max`` call per element. Each keeps the exact
float operations, in the same order, of the plain formula in its docstring: for finite values
the results are bit for bit those of the textbook loop (tests/test_strategies_fast.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import sub
from typing import NamedTuple


class Band(NamedTuple):
    """A lower/middle/upper envelope (Bollinger bands, Donchian channels)."""

    lower: float
    middle: float
    upper: float


def sma(values: Sequence[float], period: int) -> float:
    """Simple moving average of the last ``period`` values."""
    window = values[-period:]
    return math.fsum(window) / len(window) if window else 0.0


def ema_series(values: Sequence[float], period: int) -> list[float]:
    """Exponential moving average (alpha = 2 / (period + 1)), seeded with the first value:
    ``out[i] = out[i - 1] + alpha * (values[i] - out[i - 1])``."""
    if not values:
        return []
    alpha = 2.0 / (period + 1)
    last = values[0]
    out = [last]
    append = out.append
    for value in values[1:]:
        last = last + alpha * (value - last)
        append(last)
    return out


def ema(values: Sequence[float], period: int) -> float:
    """The last value of :func:`ema_series` (without building the list)."""
    if not values:
        return 0.0
    alpha = 2.0 / (period + 1)
    last = values[0]
    for value in values[1:]:
        last = last + alpha * (value - last)
    return last


def ema_pair(values: Sequence[float], fast: int, slow: int) -> tuple[float, float]:
    """``(ema(values, fast), ema(values, slow))`` in one pass over the values."""
    if not values:
        return 0.0, 0.0
    a, b = 2.0 / (fast + 1), 2.0 / (slow + 1)
    f = s = values[0]
    for value in values[1:]:
        f = f + a * (value - f)
        s = s + b * (value - s)
    return f, s


def rsi(values: Sequence[float], period: int) -> float:
    """Wilder's relative strength index in [0, 100]; 50 when the series does not move.

    Over the changes ``c`` (``values[i] - values[i - 1]``): gain and loss start as the
    fsum of the first ``period`` positive changes (of the negated negative ones) / period,
    then ``gain = (gain * (period - 1) + max(c, 0.0)) / period`` and likewise for loss
    with ``max(-c, 0.0)``. Adding a zero to the non-negative products changes nothing,
    so each branch below skips it.
    """
    if len(values) < 2:
        return 50.0
    changes = list(map(sub, values[1:], values))
    seed = changes[:period]
    gain = math.fsum([c for c in seed if c > 0]) / period
    loss = math.fsum([-c for c in seed if c < 0]) / period
    keep, div = float(period - 1), float(period)  # exact; float-only ops run faster
    for change in changes[period:]:
        if change > 0.0:
            gain = (gain * keep + change) / div
            loss = loss * keep / div
        else:
            gain = gain * keep / div
            loss = (loss * keep - change) / div
    if loss <= 0.0:
        return 100.0 if gain > 0.0 else 50.0
    return 100.0 - 100.0 / (1.0 + gain / loss)


def atr(
    highs: Sequence[float], lows: Sequence[float], closes: Sequence[float], period: int
) -> float:
    """Wilder's average true range over the series (an absolute price distance).

    True ranges: ``highs[0] - lows[0]``, then ``max(high - low, abs(high - prev close),
    abs(low - prev close))``; the first ``period`` averaged with fsum, then
    ``value = (value * (period - 1) + r) / period`` for each later one.
    """
    n = len(closes)
    if not n:
        return 0.0
    ranges = [highs[0] - lows[0]]
    append = ranges.append
    # each candle with the previous close: zip stops at the shortest (closes[:-1])
    for high, low, prev in zip(highs[1:n], lows[1:n], closes, strict=False):
        r = high - low  # max(r, x, y) as max() does it (a later value wins only if greater)
        x = abs(high - prev)
        if x > r:
            r = x
        x = abs(low - prev)
        if x > r:
            r = x
        append(r)
    first = ranges[:period]
    value = math.fsum(first) / len(first)
    keep, div = float(period - 1), float(period)  # exact; float-only ops run faster
    for r in ranges[period:]:
        value = (value * keep + r) / div
    return value


def stdev(values: Sequence[float], period: int) -> float:
    """Population standard deviation of the last ``period`` values."""
    window = values[-period:]
    if not window:
        return 0.0
    mean = math.fsum(window) / len(window)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in window) / len(window))


def bollinger(values: Sequence[float], period: int, width: float) -> Band:
    """Bollinger bands: SMA(period) plus and minus ``width`` standard deviations."""
    mid = sma(values, period)
    dev = width * stdev(values, period)
    return Band(mid - dev, mid, mid + dev)


def donchian(highs: Sequence[float], lows: Sequence[float], period: int) -> Band:
    """Donchian channel: lowest low and highest high of the last ``period`` candles."""
    low, high = min(lows[-period:]), max(highs[-period:])
    return Band(low, (low + high) / 2.0, high)


def roc(values: Sequence[float], period: int) -> float:
    """Rate of change over ``period`` steps as a fraction (0.01 = +1%); 0 if the base is 0."""
    base = values[-1 - period]
    return values[-1] / base - 1.0 if base > 0.0 else 0.0


def efficiency_ratio(values: Sequence[float], period: int) -> float:
    """Kaufman's efficiency ratio in [0, 1]: net move / path length over ``period`` steps.

    1 means a straight line, values near 0 a range; a random walk sits around 0.1-0.3.
    """
    window = values[-period - 1 :]
    path = math.fsum(map(abs, map(sub, window[1:], window)))  # |b - a| for each pair
    return abs(window[-1] - window[0]) / path if path > 0.0 else 0.0


def ramp(value: float, low: float, high: float) -> float:
    """Map ``value`` linearly onto [0, 1]: 0 at or below ``low``, 1 at or above ``high``."""
    if high <= low:
        return 1.0 if value >= high else 0.0
    return min(1.0, max(0.0, (value - low) / (high - low)))
