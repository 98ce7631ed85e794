"""What ``aster-agent report`` shows, gathered from the ledger without writing to it.

``collect_report`` reads the portfolio view (the same figures ``portfolio --json`` prints),
the metrics ``rebalance`` scores on (``governance.fleet_metrics``, over ``--since`` or all the
history), every sleeve's equity snapshots, rebalances, state changes and round trips.
``series_on_grid`` puts the snapshots on one regular time grid of at most ``points`` times
(the last snapshot at or before each), which is how long histories are downsampled for the
charts: a month of one-minute marks per sleeve becomes ``points`` values per line.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from aster_agents.config.view import FleetView
    from aster_agents.fleet.view import PortfolioReport
    from aster_agents.ledger.readonly import ReadOnlyLedger
    from aster_agents.ledger.reports import StateChange
    from aster_agents.ledger.rows import AgentRow, EquityPoint, RebalanceRow
    from aster_agents.portfolio.governance import FleetMetrics
    from aster_agents.portfolio.metrics import NavPoint
    from aster_agents.portfolio.trades import RoundTrip

GRID_POINTS: Final = 1000
NAN: Final = float("nan")


class Series(NamedTuple):
    """Sleeve curves on one time grid (floats, for charts)."""

    grid: list[int]
    combined: list[float]  # the sleeves' equity summed
    drawdown: list[float]  # of ``combined`` from its running peak
    nav: dict[str, list[float]]  # NAV per unit, NaN before a sleeve's first snapshot
    weights: dict[str, list[float]]  # sleeve equity / books equity (sleeves + unallocated)


class ReportData(NamedTuple):
    generated_ms: int
    since_ms: int | None
    state_dir: Path
    portfolio: PortfolioReport
    metrics: FleetMetrics
    rows: dict[str, AgentRow]
    series: Series
    rebalances: list[RebalanceRow]
    events: list[StateChange]
    trips: list[RoundTrip]
    min_track_days: float
    ledger_url: str | None = None  # ``ledger.url``: the PostgreSQL ledger read, if any

    @property
    def agents(self) -> list[str]:
        return [s.id for s in self.portfolio.sleeves]


def collect_report(
    fleet: FleetView,
    state_dir: Path,
    *,
    since_ms: int | None = None,
    points: int = GRID_POINTS,
    now_ms: int | None = None,
) -> ReportData:
    """Everything the report shows; a missing ledger gives an empty report.

    Each sleeve's snapshots are read once, as the NAV points the metrics use
    (``governance.sleeve_points``); the metrics are ``governance.fleet_metrics``'s, computed
    from those points.
    """
    from aster_agents import models
    from aster_agents.fleet.view import collect_portfolio
    from aster_agents.ledger.readonly import open_readonly
    from aster_agents.portfolio.governance import FleetMetrics

    now = models.now_ms() if now_ms is None else now_ms
    portfolio = collect_portfolio(fleet, state_dir, now_ms=now)
    min_days = fleet.portfolio.min_track_record_days
    ledger = open_readonly(state_dir, fleet.ledger_url)
    if ledger is None:
        empty = series_on_grid({}, {}, {}, points)
        return ReportData(
            now,
            since_ms,
            state_dir,
            portfolio,
            FleetMetrics({}, {}),
            {},
            empty,
            [],
            [],
            [],
            min_days,
            fleet.ledger_url,
        )
    with ledger:
        found = _read(ledger, [s.id for s in portfolio.sleeves], since_ms)
        unallocated = {
            user: book.unallocated
            for user, book in ledger.account_books().items()
            if book.unallocated is not None
        }
    rows, fleet_metrics, history, rebalances, events, trips = found
    users = {a: r.user for a, r in rows.items()}
    return ReportData(
        now,
        since_ms,
        state_dir,
        portfolio,
        fleet_metrics,
        rows,
        series_on_grid(history, users, unallocated, points),
        rebalances,
        events,
        trips,
        min_days,
        fleet.ledger_url,
    )


def _read(
    ledger: ReadOnlyLedger, ids: Sequence[str], since: int | None
) -> tuple[
    dict[str, AgentRow],
    FleetMetrics,
    dict[str, list[NavPoint]],
    list[RebalanceRow],
    list[StateChange],
    list[RoundTrip],
]:
    from aster_agents.portfolio import metrics
    from aster_agents.portfolio.governance import FleetMetrics, sleeve_fills, sleeve_points
    from aster_agents.portfolio.trades import read_trips, select

    rows = {r.agent_id: r for r in ledger.agent_rows() if r.agent_id in ids}
    points = {a: sleeve_points(ledger, r) for a, r in rows.items()}
    fills = {a: sleeve_fills(ledger, a) for a in rows}
    agents = {a: metrics.compute(points[a], fills[a], since_ms=since) for a in rows}
    accounts = {}
    for user in sorted({r.user for r in rows.values()}):
        mine = [a for a, r in rows.items() if r.user == user]
        accounts[user] = metrics.combined(
            {a: points[a] for a in mine}, {a: fills[a] for a in mine}, since_ms=since
        )
    history = {a: metrics.window(p, since) for a, p in points.items()}
    rebalances = [r for r in ledger.rebalance_rows() if since is None or r.time_ms >= since]
    events = [e for e in ledger.state_changes() if since is None or e.time_ms >= since]
    trips = select([t for t in read_trips(ledger) if t.agent_id in rows], since_ms=since)
    return rows, FleetMetrics(agents, accounts), history, rebalances, events, trips


def equity_history(data: ReportData) -> dict[str, list[EquityPoint]]:
    """Every snapshot in the report's window, as decimals (for CSV), by agent."""
    from aster_agents.ledger.readonly import open_readonly

    ledger = open_readonly(data.state_dir, data.ledger_url)
    if ledger is None:
        return {}
    with ledger:
        return {a: ledger.equity_points(a, data.since_ms) for a in data.rows}


def regular_grid(start: int, end: int, points: int) -> list[int]:
    """``points`` evenly spaced times from ``start`` to ``end`` (one when they are equal)."""
    if end <= start or points < 2:
        return [end]
    step = (end - start) / (points - 1)
    return [start + round(i * step) for i in range(points - 1)] + [end]


def _at(times: Sequence[int], values: Sequence[float], grid: Sequence[int]) -> list[float]:
    """The last value at or before each grid time; NaN before the first."""
    out = []
    for t in grid:
        i = bisect.bisect_right(times, t) - 1
        out.append(values[i] if i >= 0 else NAN)
    return out


def series_on_grid(
    history: Mapping[str, Sequence[NavPoint]],
    users: Mapping[str, str],
    unallocated: Mapping[str, Decimal],
    points: int = GRID_POINTS,
) -> Series:
    """Every sleeve on one grid; combined equity, drawdown, NAV per unit and weights."""
    from aster_agents.portfolio.metrics import drawdowns

    times = [t for h in history.values() if h for t in (h[0].time_ms, h[-1].time_ms)]
    if not times:
        return Series([], [], [], {}, {})
    grid = regular_grid(min(times), max(times), points)
    equity: dict[str, list[float]] = {}
    nav: dict[str, list[float]] = {}
    for agent_id, h in history.items():
        if not h:
            continue
        ts = [p.time_ms for p in h]
        first = h[0].equity  # a sleeve's capital sat idle before its first snapshot
        values = _at(ts, [p.equity for p in h], grid)
        equity[agent_id] = [first if math.isnan(v) else v for v in values]
        nav[agent_id] = _at(ts, [p.nav for p in h], grid)
    combined = [sum(col) for col in zip(*equity.values(), strict=True)]
    cash = float(sum((unallocated.get(u, Decimal(0)) for u in set(users.values())), Decimal(0)))
    books = [c + cash for c in combined]
    weights = {
        a: [e / b if b > 0 else 0.0 for e, b in zip(values, books, strict=True)]
        for a, values in equity.items()
    }
    return Series(grid, combined, drawdowns(combined), nav, weights)
