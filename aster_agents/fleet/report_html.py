"""The report as one self-contained HTML file: inline CSS, inline SVG charts, no script.

Nothing in it points outside the file (no CDN, font or image URL), so it opens offline and
can be mailed as it is. Every number in the per-agent table carries its raw value in
``data-value`` (decimal strings for money, plain floats for ratios), so a test or a script
can read the table back exactly.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import TYPE_CHECKING, Final

from aster_agents.fleet.charts import CHARTS, TITLES
from aster_agents.portfolio.metrics import MIN_RETURNS
from aster_agents.portfolio.rebalance import iso

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aster_agents.fleet.report import ReportData
    from aster_agents.fleet.view import SleeveView
    from aster_agents.portfolio.metrics import Metrics

CENT: Final = Decimal("0.01")
RECENT_TRIPS: Final = 20
CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666}.bad{color:#b00020;font-weight:600}.ok{color:#137333}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{padding:3px 7px;border-bottom:1px solid #e3e3e3;text-align:right;white-space:nowrap}
th:first-child,td:first-child,td.l,th.l{text-align:left}
thead th{background:#f4f4f4}tr.dim td{color:#777}
figure.chart{margin:10px 0 20px}figure.chart svg{max-width:100%;height:auto}
figcaption{font-weight:600;margin-bottom:4px}
dl.summary{display:grid;grid-template-columns:max-content max-content;gap:2px 16px}
dl.summary dt{color:#555}dl.summary dd{margin:0;text-align:right}
"""


def _pct(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * 100:.{digits}f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _money(value: Decimal | None) -> str:
    return "-" if value is None else f"{value.quantize(CENT):,}"


def _raw(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return f"{value:f}"
    return repr(value) if isinstance(value, float) else str(value)


def _cell(key: str, value: object, text: str, title: str | None = None) -> str:
    tip = f' title="{escape(title)}"' if title else ""
    return f'<td data-key="{key}" data-value="{escape(_raw(value))}"{tip}>{escape(text)}</td>'


def _sharpe_cell(m: Metrics, track_days: float, min_days: float) -> str:
    rule = (
        f"Sharpe needs at least {MIN_RETURNS} returns with some variance; rebalancing also "
        f"needs {min_days:g} days of track record (this sleeve: {track_days:.2f} d)"
    )
    text = _num(m.sharpe)
    if m.sharpe is not None and track_days < min_days:
        text += " (young)"
    return _cell("sharpe", m.sharpe, text, rule)


def render_html(data: ReportData, svgs: Mapping[str, str]) -> str:
    """The whole document."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>aster-agents report</title>",
        f"<style>{CSS}</style></head><body>",
        _header(data),
        _summary(data),
        *(_figure(name, svgs[name]) for name in CHARTS if name in svgs),
        _agents_table(data),
        _events(data),
        _trips(data),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _iso(ms: int | None) -> str:
    return "-" if ms is None else iso(ms).replace("T", " ")


def _header(data: ReportData) -> str:
    window = "all history" if data.since_ms is None else f"since {_iso(data.since_ms)}"
    return (
        "<h1>aster-agents: portfolio report</h1>"
        f'<p class="muted">generated {_iso(data.generated_ms)}; {window}; '
        f"{len(data.agents)} agent(s), {len(data.trips)} round trip(s)</p>"
    )


def _summary(data: ReportData) -> str:
    p = data.portfolio
    f = p.figures
    rows = [
        ("equity (books)", _money(f.equity), "equity", f.equity),
        ("sleeves' equity", _money(f.sleeves_equity), "sleeves_equity", f.sleeves_equity),
        ("unallocated", _money(f.unallocated), "unallocated", f.unallocated),
        ("capital", _money(f.capital), "capital", f.capital),
        ("P&L", _money(f.pnl), "pnl", f.pnl),
        ("return", _pct(f.ret), "return", f.ret),
        ("drawdown", _pct(f.drawdown), "drawdown", f.drawdown),
        ("max drawdown", _pct(f.max_drawdown), "max_drawdown", f.max_drawdown),
    ]
    items = "".join(
        f'<dt>{escape(label)}</dt><dd data-key="{key}" data-value="{escape(_raw(value))}">'
        f"{escape(text)}</dd>"
        for label, text, key, value in rows
    )
    return f'<h2>Portfolio</h2><dl class="summary" id="summary">{items}</dl>{_check(data)}'


def _check(data: ReportData) -> str:
    """The exchange-equity check: the books against what the exchange last reported."""
    p = data.portfolio
    if p.exchange_equity is None:
        return '<p class="muted" id="equity-check">no exchange equity recorded yet</p>'
    gap = p.figures.equity - p.exchange_equity
    verdict = (
        '<span class="ok">books agree</span>'
        if abs(gap) < CENT
        else f'<span class="bad">books differ by {_money(gap)}: run aster-agent reconcile</span>'
    )
    return (
        f'<p id="equity-check" data-difference="{_raw(gap)}">exchange equity last seen '
        f"{_money(p.exchange_equity)} at {_iso(p.exchange_equity_ms)}: {verdict}</p>"
    )


def _figure(name: str, svg: str) -> str:
    return (
        f'<figure class="chart" id="chart-{name}"><figcaption>{escape(TITLES[name])}'
        f"</figcaption>{svg}</figure>"
    )


COLUMNS: Final = (
    "agent",
    "name",
    "state",
    "weight",
    "capital",
    "equity",
    "P&L",
    "return",
    "volatility",
    "Sharpe",
    "max DD",
    "win rate",
    "trades",
    "exposure",
    "fees",
    "funding",
    "track",
)


def _agents_table(data: ReportData) -> str:
    head = "".join(
        f'<th class="l">{escape(c)}</th>' if c in ("name", "state") else f"<th>{escape(c)}</th>"
        for c in COLUMNS
    )
    body = [_agent_row(data, s) for s in data.portfolio.sleeves]
    f = data.portfolio.figures
    if f.unallocated is not None:
        weight = float(f.unallocated / f.equity) if f.equity > 0 else 0.0
        body.append(
            '<tr class="dim" data-agent="unallocated"><td>unallocated</td><td class="l"></td>'
            f'<td class="l"></td>{_cell("weight", weight, _pct(weight, 1))}<td></td>'
            f"{_cell('equity', f.unallocated, _money(f.unallocated))}"
            + "<td></td>" * (len(COLUMNS) - 6)
            + "</tr>"
        )
    for user, m in data.metrics.accounts.items():
        body.append(_account_row(user, m))
    return (
        f'<h2>Agents</h2><table id="agents"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        f'<p class="muted">Return: NAV per unit - 1. Volatility and Sharpe: annualised, from '
        f"NAV returns on a regular grid; Sharpe is n/a with fewer than {MIN_RETURNS} returns "
        f"or no variance, and a sleeve younger than {data.min_track_days:g} days keeps its "
        "weight in a rebalance. Trades: fills that reduce a position; win rate among them. "
        "* hover for the reason of the state (kill switch, probation, operator).</p>"
    )


def _agent_row(data: ReportData, s: SleeveView) -> str:
    g = s.figures
    m = data.metrics.agents.get(s.id)
    row = data.rows.get(s.id)
    state = s.ledger_state or "-"
    why = s.state_reason if s.ledger_state not in (None, "active") else None
    mark = " *" if why else ""
    cells = [
        f'<td class="l">{escape(s.id)}</td><td class="l">{escape(s.name)}</td>',
        f'<td class="l" title="{escape(why or "")}">{escape(state)}{mark}</td>',
        _cell("weight", g.weight, _pct(g.weight, 1)),
        _cell("capital", g.capital, _money(g.capital)),
        _cell("equity", g.equity, _money(g.equity)),
        _cell("pnl", g.pnl, _money(g.pnl)),
        _cell("return", g.ret, _pct(g.ret)),
    ]
    if m is not None:
        cells += [
            _cell("volatility", m.volatility, _pct(m.volatility, 1)),
            _sharpe_cell(m, m.days, data.min_track_days),
            _cell("max_drawdown", m.max_drawdown, _pct(m.max_drawdown)),
            _cell("win_rate", m.win_rate, _pct(m.win_rate, 0)),
            _cell("trades", m.trades, str(m.trades)),
            _cell("exposure", m.exposure, _pct(m.exposure, 0)),
        ]
    else:
        cells.append("<td>n/a</td>" * 6)
    fees = None if row is None else row.fees
    funding = None if row is None else row.funding
    cells += [
        _cell("fees", fees, _money(fees)),
        _cell("funding", funding, _money(funding)),
        _cell("track_days", None if m is None else m.days, "" if m is None else f"{m.days:.2f} d"),
    ]
    return f'<tr data-agent="{escape(s.id)}">{"".join(cells)}</tr>'


def _account_row(user: str, m: Metrics) -> str:
    short = f"{user[:6]}…{user[-4:]}" if len(user) > 12 else user
    cells = [
        f'<td class="l" title="{escape(user)}">account {escape(short)}</td>',
        '<td class="l">combined</td><td></td><td></td><td></td><td></td><td></td>',
        _cell("total_return", m.total_return, _pct(m.total_return)),
        _cell("volatility", m.volatility, _pct(m.volatility, 1)),
        _cell("sharpe", m.sharpe, _num(m.sharpe)),
        _cell("max_drawdown", m.max_drawdown, _pct(m.max_drawdown)),
        _cell("win_rate", m.win_rate, _pct(m.win_rate, 0)),
        _cell("trades", m.trades, str(m.trades)),
        _cell("exposure", m.exposure, _pct(m.exposure, 0)),
        "<td></td><td></td>",
        _cell("track_days", m.days, f"{m.days:.2f} d"),
    ]
    return f'<tr class="dim" data-account="{escape(user)}">{"".join(cells)}</tr>'


def _events(data: ReportData) -> str:
    items = [(r.time_ms, f"rebalance #{r.id}: {r.reason}") for r in data.rebalances] + [
        (e.time_ms, f"{e.agent_id} -> {e.state}: {e.reason}") for e in data.events
    ]
    if not items:
        return '<h2>Rebalances and state changes</h2><p class="muted">none</p>'
    lines = "".join(
        f"<li><span class='muted'>{_iso(t)}</span> {escape(text)}</li>" for t, text in sorted(items)
    )
    return f'<h2>Rebalances and state changes</h2><ul id="events">{lines}</ul>'


def _trips(data: ReportData) -> str:
    if not data.trips:
        return '<h2>Recent round trips</h2><p class="muted">none</p>'
    head = "".join(
        f"<th>{c}</th>"
        for c in (
            "agent",
            "symbol",
            "side",
            "qty",
            "entry",
            "exit",
            "opened",
            "P&amp;L",
            "closed by",
            "reason",
        )
    )
    rows = []
    for t in data.trips[:RECENT_TRIPS]:
        rows.append(
            f'<tr><td>{escape(t.agent_id)}</td><td class="l">{escape(t.symbol)}</td>'
            f'<td class="l">{t.side}</td><td>{t.qty:f}</td><td>{t.entry_price:f}</td>'
            f"<td>{'-' if t.exit_price is None else f'{t.exit_price:f}'}</td>"
            f"<td>{_iso(t.entry_ms)}</td><td>{t.pnl:+.4f}</td>"
            f'<td class="l">{t.closed_by}</td><td class="l">{escape(t.reason)}</td></tr>'
        )
    return (
        f"<h2>Recent round trips</h2><p class='muted'>newest {min(RECENT_TRIPS, len(data.trips))}"
        f" of {len(data.trips)}; all of them: aster-agent trades</p>"
        f'<table id="trips"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )
