"""Performance metrics per sleeve and combined, from NAV-per-unit series (pure).

No clock, disk or network: values in, values out. Returns are measured on NAV per unit,
not on equity, because equity jumps when capital is reallocated and NAV does not.

Definitions (every ratio is a float; ``None`` when it cannot be computed):

- total return: last NAV / first NAV - 1 over the window;
- returns: the NAV series resampled on a regular grid (last value at or before each grid
  time) whose step is the median interval between snapshots, coarsened so the window holds
  at most ``MAX_PERIODS`` periods; period returns are NAV_t / NAV_t-1 - 1;
- annualised volatility: sample standard deviation of the period returns x
  sqrt(periods per year), with a 365-day year (crypto trades every day);
- Sharpe: mean / standard deviation of the period returns x sqrt(periods per year),
  risk-free rate 0; ``None`` with fewer than ``MIN_RETURNS`` returns, less than
  ``MIN_HISTORY_MS`` (a day) of history, or zero variance;
- max drawdown: the largest fall from a running NAV peak, in [0, 1]; drawdown: the current one;
- trades: closing fills (fills that reduce a position, replayed per symbol from all fills);
  win rate: closing fills with realized P&L > 0 / closing fills;
- exposure: the fraction of the window during which at least one position was open.

One clock: fill times are the local time the ledger booked each fill (``FillRecord``), the
clock of the equity snapshots, never the exchange's trade time (a simulator's market time
runs ``--speed`` times faster, which put every fill after the last snapshot: exposure 0).

Combined (portfolio) NAV: chained from 1.0 at every snapshot of any sleeve; a snapshot moves
it by that sleeve's NAV return times the sleeve's share of the sleeves' equity (each at its
previous snapshot). Money moved between sleeves or to the unallocated sleeve is a flow, not
a return, so it does not move the combined NAV (a time-weighted return). Its metrics are
then computed like a sleeve's, on the same regular grid.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, NamedTuple

MS_PER_DAY: Final = 86_400_000
MS_PER_YEAR: Final = 365 * MS_PER_DAY
MAX_PERIODS: Final = 1000
MIN_RETURNS: Final = 10
MIN_HISTORY_MS: Final = MS_PER_DAY  # less history than this is not annualised (n/a)

Number = Decimal | float | int


class NavPoint(NamedTuple):
    """One snapshot: time, sleeve equity and NAV per unit."""

    time_ms: int
    equity: float
    nav: float


class Fill(NamedTuple):
    """One booked fill: ``qty`` is signed (+ buy, - sell)."""

    time_ms: int
    symbol: str
    qty: Decimal
    realized_pnl: Decimal


class Metrics(NamedTuple):
    """The figures of one sleeve (or of the portfolio) over a window."""

    start_ms: int | None
    end_ms: int | None
    points: int
    total_return: float | None
    volatility: float | None
    sharpe: float | None
    max_drawdown: float
    drawdown: float
    trades: int
    win_rate: float | None
    exposure: float | None

    @property
    def days(self) -> float:
        """Length of the track record in days (0 with fewer than two snapshots)."""
        if self.start_ms is None or self.end_ms is None:
            return 0.0
        return (self.end_ms - self.start_ms) / MS_PER_DAY

    def to_json(self) -> dict[str, Any]:
        return {
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "days": round(self.days, 4),
            "points": self.points,
            "total_return": self.total_return,
            "volatility": self.volatility,
            "sharpe": self.sharpe,
            "max_drawdown": self.max_drawdown,
            "drawdown": self.drawdown,
            "trades": self.trades,
            "win_rate": self.win_rate,
            "exposure": self.exposure,
        }


def nav_points(rows: Sequence[tuple[int, Number, Number]]) -> list[NavPoint]:
    """(time_ms, equity, nav) rows -> NavPoints, oldest first, non-positive NAVs dropped."""
    points = [NavPoint(int(t), float(e), float(n)) for t, e, n in rows if float(n) > 0]
    return sorted(points, key=lambda p: p.time_ms)


def window(points: Sequence[NavPoint], since_ms: int | None) -> list[NavPoint]:
    """The points at or after ``since_ms`` (all of them when None)."""
    if since_ms is None:
        return list(points)
    return [p for p in points if p.time_ms >= since_ms]


# ---------------------------------------------------------------------- series maths


def drawdowns(values: Sequence[float]) -> list[float]:
    """Fall from the running peak at each point, in [0, 1]."""
    out: list[float] = []
    peak = 0.0
    for v in values:
        peak = max(peak, v)
        out.append(min(1.0, (peak - v) / peak) if peak > 0 else 0.0)
    return out


def grid_step(times: Sequence[int], max_periods: int = MAX_PERIODS) -> int:
    """Median gap between snapshots, coarsened to at most ``max_periods`` over the span."""
    if len(times) < 2:
        return 0
    gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
    if not gaps:
        return 0
    span = times[-1] - times[0]
    return max(int(statistics.median(gaps)), math.ceil(span / max_periods), 1)


def resample(times: Sequence[int], values: Sequence[float], grid: Sequence[int]) -> list[float]:
    """Last value at or before each grid time (the first value before the series starts)."""
    out = []
    for t in grid:
        i = bisect.bisect_right(times, t) - 1
        out.append(values[max(i, 0)])
    return out


def regular_grid(start: int, end: int, step: int) -> list[int]:
    if step <= 0 or end <= start:
        return [start]
    return list(range(start, end + 1, step))


def period_returns(values: Sequence[float]) -> list[float]:
    return [b / a - 1 for a, b in itertools.pairwise(values) if a > 0]


def volatility_and_sharpe(returns: Sequence[float], step_ms: int) -> tuple[float | None, ...]:
    """(annualised volatility, Sharpe); None where too few returns, less than a day of history
    (minutes of data times sqrt(periods per year) make headline nonsense) or zero variance."""
    if len(returns) < MIN_RETURNS or step_ms <= 0 or len(returns) * step_ms < MIN_HISTORY_MS:
        return None, None
    scale = math.sqrt(MS_PER_YEAR / step_ms)
    std = statistics.stdev(returns)
    if std <= 1e-15:
        return 0.0, None
    return std * scale, statistics.fmean(returns) / std * scale


# ---------------------------------------------------------------------- fills


def closing_fills(fills: Sequence[Fill]) -> list[Fill]:
    """Fills that reduce an open position, found by replaying every fill per symbol."""
    held: dict[str, Decimal] = {}
    out: list[Fill] = []
    for f in sorted(fills, key=lambda f: f.time_ms):
        qty = held.get(f.symbol, Decimal(0))
        if qty != 0 and (qty > 0) != (f.qty > 0):
            out.append(f)
        held[f.symbol] = qty + f.qty
    return out


def exposure(fills: Sequence[Fill], start_ms: int, end_ms: int) -> float | None:
    """Fraction of [start_ms, end_ms] with at least one open position."""
    if end_ms <= start_ms:
        return None
    held: dict[str, Decimal] = {}
    exposed_since: int | None = None
    total = 0
    for f in sorted(fills, key=lambda f: f.time_ms):
        held[f.symbol] = held.get(f.symbol, Decimal(0)) + f.qty
        is_open = any(q != 0 for q in held.values())
        if is_open and exposed_since is None:
            exposed_since = f.time_ms
        elif not is_open and exposed_since is not None:
            total += _overlap(exposed_since, f.time_ms, start_ms, end_ms)
            exposed_since = None
    if exposed_since is not None:
        total += _overlap(exposed_since, end_ms, start_ms, end_ms)
    return total / (end_ms - start_ms)


def _overlap(a: int, b: int, start: int, end: int) -> int:
    return max(0, min(b, end) - max(a, start))


def trade_figures(fills: Sequence[Fill], since_ms: int | None) -> tuple[int, float | None]:
    """(closing fills in the window, win rate among them)."""
    closing = [f for f in closing_fills(fills) if since_ms is None or f.time_ms >= since_ms]
    if not closing:
        return 0, None
    wins = sum(1 for f in closing if f.realized_pnl > 0)
    return len(closing), wins / len(closing)


# ---------------------------------------------------------------------- metrics


def compute(
    points: Sequence[NavPoint], fills: Sequence[Fill] = (), *, since_ms: int | None = None
) -> Metrics:
    """Metrics of one NAV series (and its fills) over the points at or after ``since_ms``."""
    pts = window(points, since_ms)
    times = [p.time_ms for p in pts]
    navs = [p.nav for p in pts]
    return series_metrics(times, navs, fills, since_ms=since_ms)


def series_metrics(
    times: Sequence[int],
    navs: Sequence[float],
    fills: Sequence[Fill] = (),
    *,
    since_ms: int | None = None,
) -> Metrics:
    """Metrics of a NAV curve given as parallel time and value lists (oldest first)."""
    if not navs:
        return Metrics(None, None, 0, None, None, None, 0.0, 0.0, 0, None, None)
    step = grid_step(times)
    grid = regular_grid(times[0], times[-1], step)
    vol, sharpe = volatility_and_sharpe(period_returns(resample(times, navs, grid)), step)
    dds = drawdowns(navs)
    trades, win_rate = trade_figures(fills, since_ms)
    return Metrics(
        start_ms=times[0],
        end_ms=times[-1],
        points=len(navs),
        total_return=navs[-1] / navs[0] - 1 if len(navs) > 1 else None,
        volatility=vol,
        sharpe=sharpe,
        max_drawdown=max(dds),
        drawdown=dds[-1],
        trades=trades,
        win_rate=win_rate,
        exposure=exposure(fills, times[0], times[-1]),
    )


class CombinedNav:
    """The portfolio NAV, chained at every sleeve snapshot, with flows removed.

    When a sleeve reports a new NAV, the portfolio moves by that sleeve's NAV return times
    its share of the sleeves' equity at their previous snapshots. Capital moved between
    sleeves changes equities but no NAV, so it is not a return. Starts at 1.0.
    """

    def __init__(self) -> None:
        self.last: dict[str, NavPoint] = {}
        self.total = 0.0  # sum of the sleeves' positive equities at their last snapshots
        self.value = 1.0
        self.peak = 1.0

    def add(self, agent_id: str, point: NavPoint) -> float:
        prev = self.last.get(agent_id)
        if prev is not None and prev.nav > 0 and prev.equity > 0 and self.total > 0:
            self.value *= 1 + prev.equity * (point.nav / prev.nav - 1) / self.total
        self.total += max(0.0, point.equity) - (max(0.0, prev.equity) if prev else 0.0)
        self.last[agent_id] = point
        if self.value > self.peak:
            self.peak = self.value
        return self.value

    @property
    def drawdown(self) -> float:
        return min(1.0, max(0.0, (self.peak - self.value) / self.peak))


def combined_curve(sleeves: Mapping[str, Sequence[NavPoint]]) -> tuple[list[int], list[float]]:
    """The combined NAV after every snapshot of any sleeve (one value per time), from 1.0."""
    events = sorted((p.time_ms, agent_id, p) for agent_id, s in sleeves.items() for p in s)
    nav = CombinedNav()
    times: list[int] = []
    values: list[float] = []
    for time_ms, agent_id, point in events:
        value = nav.add(agent_id, point)
        if times and times[-1] == time_ms:
            values[-1] = value
        else:
            times.append(time_ms)
            values.append(value)
    return times, values


def combined(
    sleeves: Mapping[str, Sequence[NavPoint]],
    fills: Mapping[str, Sequence[Fill]] | None = None,
    *,
    since_ms: int | None = None,
) -> Metrics:
    """Portfolio metrics: the combined NAV curve, plus every sleeve's fills pooled."""
    windowed = {k: window(v, since_ms) for k, v in sleeves.items()}
    grid, curve = combined_curve(windowed)
    pooled = [_tagged(k, f) for k, fs in (fills or {}).items() for f in fs]
    return series_metrics(grid, curve, pooled, since_ms=since_ms)


def _tagged(agent_id: str, fill: Fill) -> Fill:
    """A fill whose symbol names its agent too, so sleeves replay separately when pooled."""
    return fill._replace(symbol=f"{agent_id}/{fill.symbol}")


def drawdown_since(points: Sequence[NavPoint], since_ms: int | None) -> float:
    """Current fall of NAV from its peak over the points at or after ``since_ms``."""
    navs = [p.nav for p in window(points, since_ms)]
    return drawdowns(navs)[-1] if navs else 0.0


def combined_drawdown(sleeves: Mapping[str, Sequence[NavPoint]], since_ms: int | None) -> float:
    """Current drawdown of the combined (flows removed) NAV since ``since_ms``."""
    _, curve = combined_curve({k: window(v, since_ms) for k, v in sleeves.items()})
    return drawdowns(curve)[-1] if curve else 0.0
