"""Metrics from NAV series and fills (pure maths)."""

from __future__ import annotations

import math
import statistics
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aster_agents.portfolio import metrics
from aster_agents.portfolio.metrics import MS_PER_DAY, MS_PER_YEAR, Fill, NavPoint

HOUR = 3_600_000


def curve(navs: list[float], step: int = HOUR, equity: float = 1000.0) -> list[NavPoint]:
    return [NavPoint(i * step, equity * n, n) for i, n in enumerate(navs)]


def test_total_return_and_drawdowns() -> None:
    """Total return is last/first NAV - 1; max and current drawdown from the running peak."""
    m = metrics.compute(curve([1.0, 1.2, 0.9, 1.1]))
    assert m.total_return == pytest.approx(0.1)
    assert m.max_drawdown == pytest.approx(0.25)
    assert m.drawdown == pytest.approx(1 - 1.1 / 1.2)
    assert m.days == pytest.approx(3 / 24)


def test_sharpe_and_volatility_annualised_from_the_grid() -> None:
    """Volatility and Sharpe: per-period figures x sqrt(periods per year) on the grid."""
    navs = [1.0]
    for i in range(40):
        navs.append(navs[-1] * (1.02 if i % 2 else 0.99))
    m = metrics.compute(curve(navs))
    returns = metrics.period_returns(navs)
    scale = math.sqrt(MS_PER_YEAR / HOUR)
    assert m.volatility == pytest.approx(statistics.stdev(returns) * scale)
    assert m.sharpe == pytest.approx(statistics.fmean(returns) / statistics.stdev(returns) * scale)


def test_sharpe_is_none_with_too_few_points_or_no_variance() -> None:
    """No Sharpe from a handful of snapshots or from a flat curve."""
    assert metrics.compute(curve([1.0, 1.1, 1.0])).sharpe is None
    flat = metrics.compute(curve([1.0] * 50))
    assert flat.sharpe is None and flat.volatility == 0.0
    assert metrics.compute([]).total_return is None


def test_irregular_snapshots_are_resampled_on_a_regular_grid() -> None:
    """A burst of snapshots does not count as many periods: the grid step is the median gap."""
    points = curve([1.0 + 0.001 * (i % 3) for i in range(30)])
    burst = [NavPoint(points[5].time_ms + k, 1000.0, 1.5) for k in range(1, 50)]
    grid_times = sorted(p.time_ms for p in points + burst)
    assert metrics.grid_step(grid_times) <= HOUR
    long_span = [NavPoint(i * MS_PER_DAY, 1.0, 1.0) for i in range(5000)]
    step = metrics.grid_step([p.time_ms for p in long_span])
    assert (long_span[-1].time_ms - long_span[0].time_ms) / step <= metrics.MAX_PERIODS


def test_trades_win_rate_and_exposure_from_fills() -> None:
    """Closing fills count as trades; wins have realized P&L > 0; exposure is time held."""
    fills = [
        Fill(0, "BTCUSDT", Decimal(1), Decimal(0)),
        Fill(2 * HOUR, "BTCUSDT", Decimal(-1), Decimal(5)),
        Fill(4 * HOUR, "ETHUSDT", Decimal(-2), Decimal(0)),
        Fill(5 * HOUR, "ETHUSDT", Decimal(1), Decimal(-3)),
        Fill(6 * HOUR, "ETHUSDT", Decimal(1), Decimal(1)),
    ]
    m = metrics.compute(curve([1.0] * 9), fills)
    assert m.trades == 3
    assert m.win_rate == pytest.approx(2 / 3)
    assert m.exposure == pytest.approx(4 / 8)


def test_a_position_open_before_the_window_counts_as_exposure() -> None:
    """Fills before the window are replayed, so a position held into it is exposure."""
    fills = [Fill(0, "BTCUSDT", Decimal(1), Decimal(0))]
    assert metrics.exposure(fills, 10 * HOUR, 20 * HOUR) == 1.0
    assert metrics.exposure([], 0, 10) == 0.0
    assert metrics.exposure([], 5, 5) is None


def test_combined_nav_ignores_flows_between_sleeves() -> None:
    """Moving capital from one sleeve to another changes equities, not the combined NAV."""
    a = [NavPoint(0, 500.0, 1.0), NavPoint(HOUR, 400.0, 1.0), NavPoint(2 * HOUR, 440.0, 1.1)]
    b = [NavPoint(0, 500.0, 1.0), NavPoint(HOUR, 600.0, 1.0), NavPoint(2 * HOUR, 600.0, 1.0)]
    _, combined = metrics.combined_curve({"a": a, "b": b})
    assert combined[1] == pytest.approx(1.0)
    assert combined[-1] == pytest.approx(1 + 0.1 * 400 / 1000)


def test_combined_metrics_pool_fills_per_agent() -> None:
    """Two agents on the same symbol replay separately when their fills are pooled."""
    a = curve([1.0, 1.1, 1.2])
    fills = {
        "a": [Fill(0, "BTCUSDT", Decimal(1), Decimal(0))],
        "b": [Fill(HOUR, "BTCUSDT", Decimal(-1), Decimal(0))],
    }
    m = metrics.combined({"a": a, "b": a}, fills)
    assert m.trades == 0
    assert m.total_return == pytest.approx(0.2)


@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=60))
def test_drawdown_is_within_zero_and_one(navs: list[float]) -> None:
    """Drawdowns are fractions of the peak: 0 <= current <= max <= 1."""
    m = metrics.compute(curve(navs))
    assert 0.0 <= m.drawdown <= m.max_drawdown <= 1.0


def test_drawdown_since_restarts_the_peak() -> None:
    """A later start (re-enable) forgets the old peak."""
    points = curve([1.0, 2.0, 1.0, 1.2, 1.1])
    assert metrics.drawdown_since(points, None) == pytest.approx(0.45)
    assert metrics.drawdown_since(points, 2 * HOUR) == pytest.approx(1 - 1.1 / 1.2)
    assert metrics.drawdown_since(points, 99 * HOUR) == 0.0
