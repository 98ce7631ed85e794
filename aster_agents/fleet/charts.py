"""The report's charts, drawn with matplotlib (the only matplotlib import in the package).

Each chart is a ``Figure`` built without pyplot (no global state, no display needed) and
written as inline SVG for the HTML file or as a PNG of a known size (``WIDTH_IN`` x
``HEIGHT_IN`` inches at ``DPI``). Text stays text in the SVG (``svg.fonttype: none``), so a
chart of a few thousand points is tens of kilobytes, and nothing is fetched at view time.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import matplotlib
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from aster_agents.fleet.report import ReportData

MS_PER_DAY: Final = 86_400_000
WIDTH_IN: Final = 10.0
HEIGHT_IN: Final = 4.5
DPI: Final = 100
WEIGHT_POINTS: Final = 400
CHARTS: Final = ("equity", "nav", "weights")
TITLES: Final = {
    "equity": "Combined equity and drawdown",
    "nav": "NAV per unit by agent",
    "weights": "Weights over time",
}


def _days(times: Sequence[int]) -> list[float]:
    """Epoch ms as matplotlib date numbers (days since 1970-01-01)."""
    return [t / MS_PER_DAY for t in times]


def _figure() -> Figure:
    # Fixed margins: a constrained layout costs an extra draw of every chart.
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    fig.subplots_adjust(left=0.075, right=0.86, top=0.97, bottom=0.1, hspace=0.08)
    return fig


def _dates(ax: Axes) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()  # type: ignore[no-untyped-call]  # matplotlib leaves it untyped
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def _markers(ax: Axes, data: ReportData, *, labels: bool) -> None:
    """Rebalances as dashed blue lines, kill switches as red ones, probation as orange."""
    first = {"rebalance": True, "kill switch": True, "probation": True}
    for r in data.rebalances:
        label = "rebalance" if labels and first.pop("rebalance", False) else None
        ax.axvline(r.time_ms / MS_PER_DAY, color="tab:blue", ls="--", lw=0.8, label=label)
    for e in data.events:
        kind = "kill switch" if "kill switch" in e.reason else e.state
        color = {"kill switch": "tab:red", "probation": "tab:orange"}.get(kind)
        if color is None:
            continue
        label = f"{kind}" if labels and first.pop(kind, False) else None
        ax.axvline(e.time_ms / MS_PER_DAY, color=color, ls=":", lw=1.2, label=label)


def _legend(ax: Axes) -> None:
    """Outside the plot on the right, so it never hides a line."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def equity_chart(data: ReportData) -> Figure:
    """Combined sleeve equity over time, and its drawdown from the running peak below."""
    s = data.series
    fig = _figure()
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    x = _days(s.grid)
    top.plot(x, s.combined, color="tab:green", lw=1.2, label="sleeves' equity")
    top.set_ylabel("USDT")
    _markers(top, data, labels=True)
    _legend(top)
    bottom.fill_between(x, [-100 * d for d in s.drawdown], 0, color="tab:red", alpha=0.4, lw=0)
    bottom.set_ylabel("drawdown %")
    _markers(bottom, data, labels=False)
    _dates(bottom)
    return fig


def nav_chart(data: ReportData) -> Figure:
    """NAV per unit of every sleeve: sleeves of different size on one scale."""
    s = data.series
    fig = _figure()
    ax = fig.subplots()
    x = _days(s.grid)
    for agent_id, values in s.nav.items():
        ax.plot(x, values, lw=1.0, label=agent_id)
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_ylabel("NAV per unit")
    _markers(ax, data, labels=False)
    _legend(ax)
    _dates(ax)
    return fig


def weights_chart(data: ReportData) -> Figure:
    """Each sleeve's share of the books, stacked; the rest is unallocated cash."""
    s = data.series
    fig = _figure()
    ax = fig.subplots()
    every = max(1, len(s.grid) // WEIGHT_POINTS)  # weights move slowly; areas cost 2 x points
    x = _days(s.grid[::every])
    if s.weights:
        stacked = [[100 * w for w in values[::every]] for values in s.weights.values()]
        ax.stackplot(x, *stacked, labels=list(s.weights), alpha=0.85, lw=0)
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of the books (rest: unallocated)")
    _markers(ax, data, labels=True)
    _legend(ax)
    _dates(ax)
    return fig


BUILDERS: Final[dict[str, Callable[[ReportData], Figure]]] = {
    "equity": equity_chart,
    "nav": nav_chart,
    "weights": weights_chart,
}


def render(data: ReportData, fmt: str) -> dict[str, bytes]:
    """Every chart as ``fmt`` ("svg" or "png") bytes, by name."""
    out = {}
    style: dict[Any, Any] = {  # matplotlib types the keys as a Literal of every rc name
        "svg.fonttype": "none",
        "svg.hashsalt": "aster-agents",  # stable ids: the same data gives the same file
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
    with matplotlib.rc_context(style):
        for name in CHARTS:
            fig = BUILDERS[name](data)
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=DPI, metadata=_metadata(fmt))
            out[name] = buf.getvalue()
    return out


def _metadata(fmt: str) -> dict[str, str | None]:
    return {"Date": None} if fmt == "svg" else {"Software": "aster-agents"}


def svg_markup(raw: bytes) -> str:
    """An SVG document as markup to inline in HTML (no XML prolog or DOCTYPE)."""
    text = raw.decode("utf-8")
    return text[text.index("<svg") :]


def write_pngs(data: ReportData, directory: Path) -> list[Path]:
    """``<name>.png`` for every chart in ``directory``, each written atomically (0600)."""
    from aster_agents.fsutil import write_private_file

    paths = []
    for name, raw in render(data, "png").items():
        path = directory / f"{name}.png"
        write_private_file(path, raw, replace=True)
        paths.append(path)
    return paths
