"""Small, pure technical indicators over float series (oldest value first).

Prices arrive as ``Decimal``; strategies convert them to ``float`` once (see
:class:`~aster_agents.strategies.base.Series`) because indicator outputs are signals, not
money. Every function returns the value for the *last* element unless its name ends in
``_series``. Callers make sure the series is at least ``period`` long; the functions still
never divide by zero (a flat or zero series gives the neutral value).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
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
    """Exponential moving average (alpha = 2 / (period + 1)), seeded with the first value."""
    if not values:
        return []
    alpha = 2.0 / (period + 1)
    out = [values[0]]
    for value in values[1:]:
        out.append(out[-1] + alpha * (value - out[-1]))
    return out


def ema(values: Sequence[float], period: int) -> float:
    """The last value of :func:`ema_series`."""
    series = ema_series(values, period)
    return series[-1] if series else 0.0


def rsi(values: Sequence[float], period: int) -> float:
    """Wilder's relative strength index in [0, 100]; 50 when the series does not move."""
    if len(values) < 2:
        return 50.0
    changes = [b - a for a, b in itertools.pairwise(values)]
    seed = changes[:period]
    gain = math.fsum(c for c in seed if c > 0) / period
    loss = math.fsum(-c for c in seed if c < 0) / period
    for change in changes[period:]:
        gain = (gain * (period - 1) + max(change, 0.0)) / period
        loss = (loss * (period - 1) + max(-change, 0.0)) / period
    if loss <= 0.0:
        return 100.0 if gain > 0.0 else 50.0
    return 100.0 - 100.0 / (1.0 + gain / loss)


def atr(
    highs: Sequence[float], lows: Sequence[float], closes: Sequence[float], period: int
) -> float:
    """Wilder's average true range over the series (an absolute price distance)."""
    ranges = [highs[0] - lows[0]] if closes else []
    for i in range(1, len(closes)):
        prev = closes[i - 1]
        ranges.append(max(highs[i] - lows[i], abs(highs[i] - prev), abs(lows[i] - prev)))
    if not ranges:
        return 0.0
    value = math.fsum(ranges[:period]) / len(ranges[:period])
    for r in ranges[period:]:
        value = (value * (period - 1) + r) / period
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
    path = math.fsum(abs(b - a) for a, b in itertools.pairwise(window))
    return abs(window[-1] - window[0]) / path if path > 0.0 else 0.0


def ramp(value: float, low: float, high: float) -> float:
    """Map ``value`` linearly onto [0, 1]: 0 at or below ``low``, 1 at or above ``high``."""
    if high <= low:
        return 1.0 if value >= high else 0.0
    return min(1.0, max(0.0, (value - low) / (high - low)))
