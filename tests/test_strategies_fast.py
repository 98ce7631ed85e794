"""The strategies' fast paths give bit for bit what the plain code gives.

``decide`` runs on every agent-tick of a backtest, so the indicators are tight loops (``map``
over pairs, float-only recursions, two EMAs in one pass) and a strategy carries its float
columns on from the last window in place. Each is compared here with the plain path: the
indicators with the textbook loops they replaced (kept below), ``decide`` on a moving window
with a fresh strategy on each window (which converts the whole window), on real klines (the
replay fixture) and a seeded walk with flat stretches, gaps and bad candles, flat, long and
short. The pinned digest is of those decisions as the code before the fast paths made them.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import math
import random
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aster_agents.models import Kline
from aster_agents.strategies import (
    FLAT,
    STRATEGY_NAMES,
    MarketSnapshot,
    PositionView,
    Signal,
    get_strategy,
)
from aster_agents.strategies import indicators as ind
from aster_agents.strategies.base import Series
from tests.test_bench_ledger import _bench

RULE_STRATEGIES = tuple(n for n in STRATEGY_NAMES if n not in ("llm", "random"))
FIXTURE = Path(__file__).parent / "data" / "replay" / "xrp" / "XRPUSDT-5m-klines.csv"
FIVE_MINUTES = 300_000
KLINE_FLOOR, KLINE_LIMIT_MAX = 60, 499  # the runner's window: see agent/runner.py

# sha256 of every decision of decisions() below, as made by the code before the fast paths
# (main at 19cdd06); a change meant to alter a strategy's decisions updates it.
PINNED_DIGEST = "0262f819400f739bf0f6fcadad0a5aeeb7decf77464c05c78913f91d392608dd"


# --- the plain indicators the fast ones replaced ----------------------------------------------


def plain_ema_series(values: Sequence[float], period: int) -> list[float]:
    if not values:
        return []
    alpha = 2.0 / (period + 1)
    out = [values[0]]
    for value in values[1:]:
        out.append(out[-1] + alpha * (value - out[-1]))
    return out


def plain_ema(values: Sequence[float], period: int) -> float:
    series = plain_ema_series(values, period)
    return series[-1] if series else 0.0


def plain_rsi(values: Sequence[float], period: int) -> float:
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


def plain_atr(
    highs: Sequence[float], lows: Sequence[float], closes: Sequence[float], period: int
) -> float:
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


def plain_efficiency_ratio(values: Sequence[float], period: int) -> float:
    window = values[-period - 1 :]
    path = math.fsum(abs(b - a) for a, b in itertools.pairwise(window))
    return abs(window[-1] - window[0]) / path if path > 0.0 else 0.0


def bits(*values: float) -> list[str]:
    """Exact float identity (hex keeps the sign of zero and every bit of the mantissa)."""
    return [v.hex() for v in values]


def assert_indicators_match(closes: list[float], highs: list[float], lows: list[float]) -> None:
    """Every fast indicator equals its plain loop on these columns, for several periods."""
    for period in (2, 5, 9, 13, 14, 21, 50, len(closes) + 3):
        assert bits(ind.ema(closes, period)) == bits(plain_ema(closes, period))
        assert bits(*ind.ema_series(closes, period)) == bits(*plain_ema_series(closes, period))
        pair = ind.ema_pair(closes, period, period * 2 + 1)
        assert bits(*pair) == bits(plain_ema(closes, period), plain_ema(closes, period * 2 + 1))
        assert bits(ind.rsi(closes, period)) == bits(plain_rsi(closes, period))
        atr = ind.atr(highs, lows, closes, period)
        assert bits(atr) == bits(plain_atr(highs, lows, closes, period))
        if len(closes) > period:
            eff = ind.efficiency_ratio(closes, period)
            assert bits(eff) == bits(plain_efficiency_ratio(closes, period))


# --- kline sequences --------------------------------------------------------------------------


def fixture_klines() -> list[Kline]:
    """The replay fixture's real XRP 5m klines."""
    with FIXTURE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        Kline(
            open_time=int(r["open_time"]),
            open=Decimal(r["open"]),
            high=Decimal(r["high"]),
            low=Decimal(r["low"]),
            close=Decimal(r["close"]),
            volume=Decimal(r["volume"]),
            close_time=int(r["open_time"]) + FIVE_MINUTES - 1,
        )
        for r in rows
    ]


def walk_klines(n: int = 900, seed: int = 5) -> list[Kline]:
    """A seeded walk with flat stretches (one price, no volume), gaps (x2, x0.5), a zero
    price and a non-finite volume, so every path of the conversion and the rules runs."""
    rng = random.Random(seed)
    price, out = 2.5, []
    for i in range(n):
        phase = (i // 100) % 4
        before = price
        if phase == 1 and i % 100 < 40:
            pass  # flat: the same price, no volume
        elif rng.random() < 0.01:
            price *= rng.choice((0.5, 2.0))
        else:
            price *= 1.0 + rng.gauss(0.0004 if phase == 2 else -0.0002, 0.004)
        hi = max(before, price) * (1.0 + abs(rng.gauss(0, 0.001)))
        lo = min(before, price) * (1.0 - abs(rng.gauss(0, 0.001)))
        flat = before == price
        out.append(
            Kline(
                open_time=i * FIVE_MINUTES,
                open=Decimal(f"{before:.5f}"),
                high=Decimal(f"{before if flat else hi:.5f}"),
                low=Decimal(f"{before if flat else lo:.5f}"),
                close=Decimal(f"{price:.5f}"),
                volume=Decimal(0) if flat else Decimal(f"{rng.uniform(0, 5000):.1f}"),
                close_time=i * FIVE_MINUTES + FIVE_MINUTES - 1,
            )
        )
    out[333] = dataclasses.replace(out[333], low=Decimal(0))  # no Series while in the window
    out[611] = dataclasses.replace(out[611], volume=Decimal("Infinity"))  # volumes zeroed
    return out


def windows(klines: list[Kline], width: int) -> Iterator[tuple[Kline, ...]]:
    """The runner's windows: growing from two candles to ``width``, then moving by one."""
    for end in range(2, len(klines) + 1):
        yield tuple(klines[max(0, end - width) : end])


def positions(window: tuple[Kline, ...]) -> dict[str, PositionView]:
    """Flat, and long and short entered a few candles back (so targets and stops hit)."""
    entry = window[-min(len(window), 6)].close
    return {
        "flat": FLAT,
        "long": PositionView(Decimal(1), entry, 0),
        "short": PositionView(Decimal(-1), entry, 0),
    }


def width(name: str) -> int:
    """The runner's kline limit for the strategy."""
    need = get_strategy(name, {}).min_klines
    return min(KLINE_LIMIT_MAX, max(KLINE_FLOOR, need + 2))


def decisions(name: str, klines: list[Kline]) -> Iterator[tuple[str, Signal, Signal]]:
    """(position, kept strategy's signal, fresh strategy's signal) for every window: one
    kept strategy per position (so each carries its series on), a fresh one converting the
    whole window."""
    kept = {side: get_strategy(name, {}) for side in ("flat", "long", "short")}
    for window in windows(klines, width(name)):
        market = MarketSnapshot("XRPUSDT", "5m", window, window[-1].close, 0)
        for side, position in positions(window).items():
            signal = kept[side].decide(market, position)
            yield side, signal, get_strategy(name, {}).decide(market, position)


# --- tests ------------------------------------------------------------------------------------


def test_indicators_match_the_plain_loops_on_real_and_walked_klines() -> None:
    """On the fixture and the walk (flat stretches, gaps), whole and in slices."""
    for klines in (fixture_klines(), walk_klines()[:330]):
        series = Series.from_klines(tuple(klines))
        assert series is not None
        for start, end in ((0, len(klines)), (0, 2), (7, 70), (40, 141), (100, 202)):
            cols = (series.closes[start:end], series.highs[start:end], series.lows[start:end])
            assert_indicators_match(*cols)


@settings(max_examples=200, deadline=None)
@given(
    returns=st.lists(
        st.one_of(st.just(0.0), st.floats(min_value=-0.5, max_value=1.0)), min_size=1, max_size=150
    ),
    wick=st.floats(min_value=0.0, max_value=0.05),
)
def test_indicators_match_the_plain_loops_on_any_walk(returns: list[float], wick: float) -> None:
    """Any finite positive walk, with repeated prices and jumps: the same bits."""
    closes = [100.0]
    for r in returns:
        closes.append(closes[-1] * (1.0 + r))
    highs = [c * (1.0 + wick) for c in closes]
    lows = [c * (1.0 - wick) for c in closes]
    assert_indicators_match(closes, highs, lows)


@pytest.mark.parametrize("name", RULE_STRATEGIES)
@pytest.mark.parametrize("source", ["fixture", "walk"])
def test_a_kept_strategy_decides_as_a_fresh_one_every_tick(name: str, source: str) -> None:
    """The same Signal (action, confidence, reason, sizes) on every window, in every position."""
    klines = fixture_klines() if source == "fixture" else walk_klines()
    seen = set()
    for side, kept, fresh in decisions(name, klines):
        assert kept == fresh, side
        seen.add(kept.action)
    assert len(seen) >= 3  # the data exercises the rules (HOLD, CLOSE and an entry at least)


def test_a_strategy_trading_two_symbols_in_turn_decides_as_a_fresh_one() -> None:
    """An agent ticks its symbols one after the other with one strategy object: each
    symbol's window is carried on (not converted afresh) and decides as a fresh strategy."""
    real, walk = fixture_klines(), walk_klines()
    for name in RULE_STRATEGIES:
        kept = get_strategy(name, {})
        key, first = ("XRPUSDT", "5m"), None
        pairs = zip(windows(real, width(name)), windows(walk, width(name)), strict=False)
        for a, b in pairs:
            for symbol, window in (("XRPUSDT", a), ("BTCUSDT", b)):
                market = MarketSnapshot(symbol, "5m", window, window[-1].close, 0)
                assert kept.decide(market, FLAT) == get_strategy(name, {}).decide(market, FLAT)
            held = kept._windows or {}  # type: ignore[attr-defined]  # None before min_klines
            first = first or (held[key].series if key in held else None)
        carried = kept._windows[key]  # type: ignore[attr-defined]
        assert first is not None
        assert carried.klines[-1] is real[-1]
        assert carried.series is first  # moved along in place from its first window on


def test_a_kept_series_is_the_converted_window() -> None:
    """The columns carried on in place equal a fresh conversion of each window."""
    kept = get_strategy("trend", {})
    for window in windows(walk_klines(), 70):
        assert kept._series(window) == Series.from_klines(window)  # type: ignore[attr-defined]


def digest() -> str:
    """sha256 over the repr of every decision of every rule strategy on both sequences."""
    h = hashlib.sha256()
    for klines in (fixture_klines(), walk_klines()):
        for name in RULE_STRATEGIES:
            for side, kept, _ in decisions(name, klines):
                h.update(f"{name} {side} {kept!r}\n".encode())
    return h.hexdigest()


def test_decisions_are_those_of_the_code_before_the_fast_paths() -> None:
    """Pinned: the floats, actions and reason texts of the plain code, every tick."""
    assert digest() == PINNED_DIGEST


def test_the_strategies_bench_reports_every_fleet_strategy() -> None:
    """bench/strategies.py runs as a user would and reports a figure per strategy and
    position (no timing is asserted)."""
    done = _bench("strategies.py", "--ticks", "20", "--rounds", "1", "--json")
    result = json.loads(done.stdout)
    assert set(result["us_per_decide"]) == set(RULE_STRATEGIES)
    for row in result["us_per_decide"].values():
        assert set(row) == {"flat", "long", "short"}
        assert all(us > 0 for us in row.values())
    assert result["fleet_mean_flat_us"] > 0
