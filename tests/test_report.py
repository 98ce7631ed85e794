"""``aster-agent report``: the HTML file in a real browser, its numbers, PNG and CSV exports;
``portfolio --csv`` and ``portfolio --watch``."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import struct
import subprocess
import sys
import time
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from aster_agents.fleet.report import series_on_grid
from aster_agents.portfolio.metrics import NavPoint
from tests.kit.books import AGENTS, build_books, copy_config
from tests.kit.browser import Browser, chromium_binary
from tests.kit.cli import run_cli
from tests.kit.terminal import interrupt_reading, shell_like

CHARTS = ("equity", "nav", "weights")
PNG_SIZE = (1000, 450)  # charts.WIDTH_IN x HEIGHT_IN at DPI
SVG_CSS_SIZE = (960, 432)  # 720 x 324 pt


@pytest.fixture
def books(tmp_path: Path) -> list[str]:
    """The kit's ledger (trips, funding, a rebalance, a kill switch); the global options."""
    config = copy_config(tmp_path)
    build_books(tmp_path / "state")
    return ["--config-dir", str(config), "--state-dir", str(tmp_path / "state")]


class Cells(HTMLParser):
    """``data-key``/``data-value`` of each row of the agents table, and the summary's."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.summary: dict[str, str] = {}
        self.urls: list[str] = []
        self._row: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [v for k, v in a.items() if k in ("src", "href") or "url(" in v]
        if tag == "tr":
            self._row = a.get("data-agent") or a.get("data-account")
            if self._row:
                self.rows[self._row] = {}
        elif "data-key" in a and tag == "dd":
            self.summary[a["data-key"]] = a["data-value"]
        elif "data-key" in a and self._row:
            self.rows[self._row][a["data-key"]] = a["data-value"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def read_report(out: Path) -> Cells:
    cells = Cells()
    cells.feed(out.read_text())
    return cells


def test_report_numbers_equal_portfolio_and_rebalance_json(
    books: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every figure in the report's table is the one `portfolio --json` and `rebalance --json`
    print for the same ledger; fees and funding are the ledger's."""
    out = tmp_path / "report.html"
    code, _, err = run_cli([*books, "report", "--out", str(out)], capsys)
    assert code == 0, err
    cells = read_report(out)
    _, text, _ = run_cli([*books, "portfolio", "--json"], capsys)
    portfolio = json.loads(text)
    _, text, _ = run_cli([*books, "rebalance", "--json"], capsys)
    rebalance = json.loads(text)
    assert set(cells.rows) >= {*AGENTS, "unallocated"}
    for agent in portfolio["agents"]:
        row = cells.rows[agent["id"]]
        for key in ("capital", "equity", "pnl"):
            assert Decimal(row[key]) == Decimal(agent[key]), (agent["id"], key)
        assert float(row["weight"]) == agent["weight"]
        assert float(row["return"]) == agent["return"]
        metrics = rebalance["metrics"]["agents"][agent["id"]]
        for key in ("volatility", "sharpe", "max_drawdown", "win_rate", "exposure"):
            value = None if row[key] == "" else float(row[key])
            assert value == metrics[key], (agent["id"], key)
        assert int(row["trades"]) == metrics["trades"]
    for user, combined in rebalance["metrics"]["accounts"].items():
        row = cells.rows[user]
        assert (None if row["sharpe"] == "" else float(row["sharpe"])) == combined["sharpe"]
        assert float(row["total_return"]) == combined["total_return"]
    total = portfolio["portfolio"]
    for key in ("equity", "sleeves_equity", "unallocated", "capital", "pnl"):
        assert Decimal(cells.summary[key]) == Decimal(total[key]), key
    assert Decimal(cells.rows["unallocated"]["equity"]) == Decimal(total["unallocated"])
    assert float(cells.summary["max_drawdown"]) == total["max_drawdown"]
    assert Decimal(cells.rows["agent-2"]["funding"]) == Decimal("-0.75")
    html = out.read_text()
    assert f'data-difference="{Decimal(total["equity_difference"]):f}"' in html
    assert "kill switch: drawdown 21.0%" in html and "rebalance #1: manual rebalance" in html


def test_report_opens_offline_in_a_headless_browser(books: list[str], tmp_path: Path) -> None:
    """Chromium renders every chart at its size with no console error and no request beyond
    the file itself; a screenshot is written."""
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    out = tmp_path / "report.html"
    assert (
        subprocess.run([*_cli(), *books, "report", "--out", str(out)], check=False).returncode == 0
    )
    assert not [u for u in read_report(out).urls if "//" in u]
    shot = tmp_path / "screenshot.png"
    with Browser(binary, tmp_path / "profile") as browser:
        browser.open(out)
        charts = browser.evaluate(
            "[...document.querySelectorAll('figure.chart')].map(f => {"
            "const s = f.querySelector('svg'); const r = s.getBoundingClientRect();"
            "return {id: f.id, w: r.width, h: r.height, paths: s.querySelectorAll('path').length,"
            "drawn: [...s.querySelectorAll('path')].filter(p => p.getTotalLength() > 500).length};"
            "})"
        )
        browser.screenshot(shot)
        assert browser.errors() == []
        assert browser.requests() == [out.resolve().as_uri()]
    assert [c["id"] for c in charts] == [f"chart-{n}" for n in CHARTS]
    for chart in charts:
        assert (round(chart["w"]), round(chart["h"])) == SVG_CSS_SIZE, chart
        assert chart["drawn"] >= 1 and chart["paths"] >= 10, chart
    width, height = png_size(shot)
    assert width >= 1200 and height > 1500 and shot.stat().st_size > 50_000


def _cli() -> list[str]:
    return [sys.executable, "-m", "aster_agents"]


def test_report_png_and_csv_exports(
    books: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--png writes valid images of the stated size; --csv writes the equity series, the trips
    (as `trades --csv`) and the portfolio (as `portfolio --csv`) with decimal strings."""
    pngs, csvs = tmp_path / "png", tmp_path / "csv"
    code, _, err = run_cli(
        [
            *books,
            "report",
            "--out",
            str(tmp_path / "r.html"),
            "--png",
            str(pngs),
            "--csv",
            str(csvs),
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in pngs.iterdir()) == sorted(f"{n}.png" for n in CHARTS)
    for name in CHARTS:
        assert png_size(pngs / f"{name}.png") == PNG_SIZE
    equity = list(csv.DictReader(io.StringIO((csvs / "equity.csv").read_text())))
    assert len(equity) == 3 * 120 and {r["agent"] for r in equity} == set(AGENTS)
    assert all(r["time"].endswith("Z") and Decimal(r["equity"]) > 0 for r in equity)
    _, trades, _ = run_cli([*books, "trades", "--csv"], capsys)
    assert (csvs / "trades.csv").read_text() == trades
    _, current, _ = run_cli([*books, "portfolio", "--csv"], capsys)
    strip = [r[1:] for r in csv.reader(io.StringIO(current))]
    assert [r[1:] for r in csv.reader(io.StringIO((csvs / "portfolio.csv").read_text()))] == strip
    assert [r[0] for r in strip] == ["agent", *AGENTS, "unallocated"]
    assert not list(tmp_path.glob("**/.*.tmp"))


def test_report_since_and_without_a_ledger(
    books: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--since in the future leaves empty charts but a valid file; no ledger writes a report
    and creates no state dir; a bad date exits 2 with one line."""
    out = tmp_path / "later.html"
    code, _, err = run_cli([*books, "report", "--out", str(out), "--since", "2999-01-01"], capsys)
    assert code == 0, err
    assert "since 2999-01-01 00:00:00Z" in out.read_text()
    config, state = copy_config(tmp_path / "other"), tmp_path / "none"
    empty = tmp_path / "empty.html"
    argv = ["--config-dir", str(config), "--state-dir", str(state), "report", "--out", str(empty)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert empty.exists() and not state.exists()
    code, _, err = run_cli([*books, "report", "--since", "noon"], capsys)
    assert code == 2 and "not a date" in err and "Traceback" not in err


def test_long_series_are_downsampled_to_the_grid() -> None:
    """A month of one-minute marks becomes GRID points per line; the combined curve sums the
    sleeves, weights are shares of sleeves + unallocated."""
    minute = 60_000
    history = {
        a: [NavPoint(i * minute, 100.0 + k, 1.0) for i in range(43_200)]
        for k, a in enumerate(("x", "y"))
    }
    series = series_on_grid(history, {"x": "u", "y": "u"}, {"u": Decimal(799)}, points=500)
    assert len(series.grid) == len(series.combined) == 500
    assert series.combined[-1] == 201.0 and series.drawdown[-1] == 0.0
    assert series.weights["x"][0] == 100 / 1000 and series.nav["y"][0] == 1.0


# ---------------------------------------------------------------------- portfolio


def test_portfolio_csv_and_bad_combinations(
    books: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--csv: one row per sleeve plus unallocated, decimal strings; --csv with --json exits 2."""
    code, out, _ = run_cli([*books, "portfolio", "--csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["agent"] for r in rows] == [*AGENTS, "unallocated"]
    assert rows[0]["capital"] == "1200" and rows[1]["state"] == "disabled"
    assert sum(Decimal(r["equity"]) for r in rows) == Decimal(
        json.loads(run_cli([*books, "portfolio", "--json"], capsys)[1])["portfolio"]["equity"]
    )
    code, _, err = run_cli([*books, "portfolio", "--csv", "--json"], capsys)
    assert code == 2 and "choose one of" in err


def test_portfolio_watch_refreshes_and_exits_0_on_ctrl_c(books: list[str]) -> None:
    """--watch redraws the portfolio on a terminal; Ctrl-C ends it with exit code 0."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*_cli(), *books, "portfolio", "--watch", "--interval", "0.1"],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "160"},
        preexec_fn=shell_like,
    )
    os.close(slave)
    seen = b""
    try:
        end = time.monotonic() + 30
        while seen.count(b"unallocated") < 2 and time.monotonic() < end:
            if select.select([master], [], [], 0.1)[0]:
                seen += os.read(master, 65536)
        assert seen.count(b"unallocated") >= 2, seen[-2000:]
        assert interrupt_reading(proc, master) == 0  # a terminal keeps reading
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_import_equity_writes_what_snapshot_equity_writes(tmp_path: Path) -> None:
    """The bulk loader stores the same equity, units and NAV per unit as snapshot_equity."""
    from aster_agents.errors import LedgerError
    from aster_agents.ledger import Ledger

    with Ledger(tmp_path / "state") as ledger:
        ledger.register_agent("agent-1", "0xabc", max_positions=1, capital=Decimal(400))
        ledger.snapshot_equity("agent-1", Decimal("410.5"), 1_000)
        assert ledger.import_equity("agent-1", [(2_000, Decimal("410.5"))]) == 1
        one, two = ledger.equity_history("agent-1")
        assert (
            (one.equity, one.nav) == (two.equity, two.nav) == (Decimal("410.5"), Decimal("1.02625"))
        )
        with pytest.raises(LedgerError, match="not registered"):
            ledger.import_equity("nobody", [(1, Decimal(1))])
