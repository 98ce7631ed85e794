"""Portfolio maths for the ETF view (design.md section 7): pure functions over values.

No clock, disk or network. Money is ``Decimal``; ratios (return, drawdown, weight,
contribution) are ``float``, as they are only shown and compared.

- sleeve equity: capital + realized - fees + funding + unrealized P&L of its positions at
  the latest exchange marks recorded in the ledger (the caller values it);
- sleeve P&L: sleeve equity - capital (allocations move capital and equity together);
- agent return: NAV per unit - 1 (units are issued at NAV, so reallocations do not move it);
- portfolio return: total P&L / total capital;
- contribution: sleeve P&L / total capital (contributions add up to the portfolio return);
- weight: sleeve equity / the account's equity (or the sum of sleeves when that is larger or
  the account equity is unknown); negative sleeves weigh 0, so weights add up to at most 1;
- unallocated: ``account_equity`` - sum of sleeves; the caller passes the books' total (every
  sleeve + the ledger's unallocated cash), so this is the unallocated sleeve itself;
- drawdown: over the sleeves' combined equity curve (the unallocated cash is left out, as
  the return is measured on the sleeves' capital too).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Final, NamedTuple

ZERO: Final = Decimal(0)
SPARK_BARS: Final = "▁▂▃▄▅▆▇█"
SPARK_WIDTH: Final = 24

Series = Sequence[tuple[int, Decimal]]


class SleeveInput(NamedTuple):
    """What the maths needs about one agent."""

    agent_id: str
    user: str
    capital: Decimal
    units: Decimal
    equity: Decimal


class SleeveFigures(NamedTuple):
    agent_id: str
    user: str
    capital: Decimal
    equity: Decimal
    pnl: Decimal
    ret: float
    weight: float
    contribution: float


class PortfolioFigures(NamedTuple):
    """Combined figures; ``unallocated`` and ``account_equity`` are summed over accounts."""

    capital: Decimal
    sleeves_equity: Decimal
    unallocated: Decimal | None
    equity: Decimal
    pnl: Decimal
    ret: float
    drawdown: float
    max_drawdown: float
    sleeves: tuple[SleeveFigures, ...]


def sleeve_pnl(capital: Decimal, equity: Decimal) -> Decimal:
    return equity - capital


def nav_return(equity: Decimal, units: Decimal) -> float:
    """NAV per unit - 1; 0 for a sleeve without units."""
    return float(equity / units - 1) if units > 0 else 0.0


def ratio(part: Decimal, whole: Decimal) -> float:
    return float(part / whole) if whole > 0 else 0.0


def unallocated(account_equity: Decimal, sleeves: Sequence[Decimal]) -> Decimal:
    """The account's equity not held by any sleeve; books add up by construction."""
    return account_equity - sum(sleeves, ZERO)


def weights(sleeves: Sequence[Decimal], account_equity: Decimal | None) -> list[float]:
    """Each sleeve's share of the account; in [0, 1] and adding up to at most 1."""
    positive = [max(ZERO, s) for s in sleeves]
    total = sum(positive, ZERO)
    if account_equity is not None and account_equity > total:
        total = account_equity
    return [ratio(s, total) for s in positive]


def drawdown_series(values: Sequence[Decimal]) -> list[float]:
    """Drawdown from the running peak at each point, in [0, 1] (0 while the peak is <= 0)."""
    out: list[float] = []
    peak: Decimal | None = None
    for v in values:
        peak = v if peak is None or v > peak else peak
        out.append(min(1.0, float((peak - v) / peak)) if peak > 0 else 0.0)
    return out


def max_drawdown(values: Sequence[Decimal]) -> float:
    return max(drawdown_series(values), default=0.0)


def current_drawdown(values: Sequence[Decimal]) -> float:
    series = drawdown_series(values)
    return series[-1] if series else 0.0


def resample(series: Series, grid: Sequence[int]) -> list[Decimal]:
    """Last value at or before each grid time; the first value before the series starts."""
    if not series:
        return [ZERO for _ in grid]
    times = [t for t, _ in series]
    out = []
    for t in grid:
        i = bisect.bisect_right(times, t) - 1
        out.append(series[max(i, 0)][1])
    return out


def time_grid(series: Sequence[Series], points: int = 200) -> list[int]:
    """``points`` evenly spaced times from the earliest to the latest snapshot."""
    times = [t for s in series for t, _ in s]
    if not times:
        return []
    start, end = min(times), max(times)
    if start == end or points < 2:
        return [end]
    step = (end - start) / (points - 1)
    return [start + round(i * step) for i in range(points - 1)] + [end]


def combined_series(
    series: Mapping[str, Series], points: int = 200, offset: Decimal = ZERO
) -> list[Decimal]:
    """The sum of every sleeve's equity on a common time grid, plus ``offset`` (sleeves
    without snapshots). A curve is flat at its first snapshot before it starts, as its
    capital sat idle."""
    grid = time_grid(list(series.values()), points)
    total = [offset] * len(grid)
    for s in series.values():
        total = [a + b for a, b in zip(total, resample(s, grid), strict=True)]
    return total


def sparkline(values: Sequence[Decimal], width: int = SPARK_WIDTH) -> str:
    """A ``▁▂▃▄▅▆▇█`` line of at most ``width`` characters (last value of each bucket)."""
    if not values or width <= 0:
        return ""
    if len(values) > width:
        values = [values[((i + 1) * len(values)) // width - 1] for i in range(width)]
    low, high = min(values), max(values)
    if high == low:
        return SPARK_BARS[len(SPARK_BARS) // 2 - 1] * len(values)
    top = len(SPARK_BARS) - 1
    return "".join(SPARK_BARS[int((v - low) / (high - low) * top)] for v in values)


def aggregate(
    sleeves: Sequence[SleeveInput],
    account_equity: Mapping[str, Decimal | None],
    history: Sequence[Decimal] = (),
) -> PortfolioFigures:
    """Combined and per-sleeve figures; ``history`` is the combined equity curve (oldest first)."""
    capital = sum((s.capital for s in sleeves), ZERO)
    by_user: dict[str, list[SleeveInput]] = {}
    for s in sleeves:
        by_user.setdefault(s.user, []).append(s)
    figures: list[SleeveFigures] = []
    free: Decimal | None = ZERO
    for user, group in by_user.items():
        acct = account_equity.get(user)
        free = (
            None
            if acct is None or free is None
            else free + unallocated(acct, [g.equity for g in group])
        )
        w = weights([g.equity for g in group], acct)
        figures += [_figures(g, wi, capital) for g, wi in zip(group, w, strict=True)]
    sleeves_equity = sum((s.equity for s in sleeves), ZERO)
    pnl = sleeves_equity - capital
    return PortfolioFigures(
        capital=capital,
        sleeves_equity=sleeves_equity,
        unallocated=free if by_user else None,
        equity=sleeves_equity + (free or ZERO),
        pnl=pnl,
        ret=ratio(pnl, capital),
        drawdown=current_drawdown(history),
        max_drawdown=max_drawdown(history),
        sleeves=tuple(figures),
    )


def _figures(s: SleeveInput, weight: float, total_capital: Decimal) -> SleeveFigures:
    pnl = sleeve_pnl(s.capital, s.equity)
    return SleeveFigures(
        agent_id=s.agent_id,
        user=s.user,
        capital=s.capital,
        equity=s.equity,
        pnl=pnl,
        ret=nav_return(s.equity, s.units),
        weight=weight,
        contribution=ratio(pnl, total_capital),
    )
