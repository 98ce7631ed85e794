"""``aster-agent metrics``: a real exporter process scraped over HTTP after a fleet traded."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from aster_agents.ledger import Ledger
from aster_agents.ledger.rows import EquityPoint
from aster_agents.sim.server import SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.wait import wait_for

NAME_RE = re.compile(r"aster_[a-z0-9_]+")
COID_RE = re.compile(r"-\d{6}-")  # client order ids look like a01-000123-open
BOUNDED_LABELS = {
    "agent",
    "symbol",
    "state",
    "outcome",
    "reason",
    "code",
    "endpoint",
    "status",
    "event",
    "bucket",
    "user",
    "host",
    "strategy",
    "signer",
    "version",
    "le",
}


def start_exporter(fleet: Fleet, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Run ``metrics --port 0`` and read the URL it prints first."""
    proc = subprocess.Popen(
        fleet.command("metrics", "--port", "0", *args),
        env=fleet.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    assert ready, "the exporter printed no URL"
    return proc, proc.stdout.readline().strip()


def stop(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, wait, close the pipes; the exit code."""
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    return proc.returncode


def scrape(url: str) -> dict[str, list[Sample]]:
    """Family name -> samples; ``__types__`` holds one sample per family naming its type."""
    families = list(text_string_to_metric_families(httpx.get(url, timeout=10).text))
    out = {f.name: f.samples for f in families}
    out["__types__"] = [Sample(f.name, {"type": f.type}, 0) for f in families]
    return out


def check_naming(metrics: dict[str, list[Sample]]) -> None:
    """aster_ prefix, _total only on counters, base units, ratios in [0, 1], bounded labels."""
    types = {s.name: s.labels["type"] for s in metrics["__types__"]}
    assert len(types) > 30
    for family, kind in types.items():
        assert NAME_RE.fullmatch(family), family
        assert not family.endswith(("_ms", "_milliseconds", "_percent", "_count", "_sum")), family
        for s in metrics[family]:
            assert set(s.labels) <= BOUNDED_LABELS, (family, s.labels)
            assert s.name.endswith("_total") == (kind == "counter"), s.name
            if family.endswith("_ratio"):
                assert 0 <= s.value <= 1, (family, s.value)
            if kind == "histogram":
                assert family.endswith("_seconds"), family
            assert not any(COID_RE.search(v) for v in s.labels.values()), s  # no order ids


def combined_drawdowns(histories: dict[str, list[EquityPoint]]) -> tuple[float, float]:
    """Sum of the sleeves' latest equity after each snapshot (in time order): (now, max) fall."""
    points = sorted(
        (p.time_ms, n, a, float(p.equity)) for a, h in histories.items() for n, p in enumerate(h)
    )
    latest: dict[str, float] = {}
    peak = worst = dd = 0.0
    for _, _, agent, equity in points:
        latest[agent] = equity
        total = sum(latest.values())
        peak = max(peak, total)
        dd = (peak - total) / peak if peak > 0 else 0.0
        worst = max(worst, dd)
    return dd, worst


def value(samples: list[Sample], name: str, **labels: str) -> float:
    hits = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


@pytest.fixture
def traded(tmp_path: Path, sim_server: SimServer) -> Iterator[Fleet]:
    """Two agents that opened positions on the simulator, then stopped (stable books)."""
    fleet = make_fleet(tmp_path, sim_server, ["agent-1", "agent-2"])
    for agent in ("agent-1", "agent-2"):
        fleet.start(agent)

    def both_filled() -> bool:
        with Ledger(fleet.state_dir) as ledger:
            return all(r.fees > 0 for r in ledger.agent_rows()) and len(ledger.agent_rows()) == 2

    try:
        wait_for(both_filled, 60, "both agents to book a fill")
    finally:
        assert set(fleet.stop_all().values()) == {0}
    yield fleet


def test_scrape_matches_ledger_and_portfolio_json(traded: Fleet) -> None:
    """Scraped over HTTP and parsed: equal to the ledger and portfolio --json; names by rule."""
    proc, url = start_exporter(traded)
    try:
        metrics = scrape(url)
    finally:
        assert stop(proc) == 0
    check_naming(metrics)
    out = subprocess.run(
        traded.command("portfolio", "--json"), env=traded.env(), capture_output=True, text=True
    )
    doc = json.loads(out.stdout)
    assert float(doc["portfolio"]["equity"]) == value(
        metrics["aster_portfolio_equity_usdt"], "aster_portfolio_equity_usdt"
    )
    with Ledger(traded.state_dir) as ledger:
        rows = {r.agent_id: r for r in ledger.agent_rows()}
        positions = ledger.positions()
        audit = ledger.audit(limit=100_000)
        marks = ledger.marks(traded.user)
        histories = {a: ledger.equity_history(a) for a in rows}
    drawdown, max_drawdown = combined_drawdowns(histories)
    assert drawdown == pytest.approx(
        value(metrics["aster_portfolio_drawdown_ratio"], "aster_portfolio_drawdown_ratio"),
        rel=1e-9,
        abs=1e-12,
    )
    assert max_drawdown == pytest.approx(
        value(metrics["aster_portfolio_max_drawdown_ratio"], "aster_portfolio_max_drawdown_ratio"),
        rel=1e-9,
        abs=1e-12,
    )
    for sleeve in doc["agents"]:
        agent = sleeve["id"]
        assert float(sleeve["equity"]) == value(
            metrics["aster_agent_equity_usdt"], "aster_agent_equity_usdt", agent=agent
        )
        assert sleeve["weight"] == value(
            metrics["aster_agent_allocation_ratio"], "aster_agent_allocation_ratio", agent=agent
        )
        row = rows[agent]
        assert float(row.fees) == value(
            metrics["aster_agent_fees_usdt"], "aster_agent_fees_usdt", agent=agent
        )
        assert float(row.nav_per_unit) == value(
            metrics["aster_agent_nav_per_unit"], "aster_agent_nav_per_unit", agent=agent
        )
        navs = [float(p.nav) for p in histories[agent] if p.nav]
        assert max(navs) > 0
        assert (max(navs) - navs[-1]) / max(navs) == pytest.approx(
            value(metrics["aster_agent_drawdown_ratio"], "aster_agent_drawdown_ratio", agent=agent),
            abs=1e-12,
        )
        fills = sum(1 for e in audit if e.agent_id == agent and e.event == "fill")
        assert fills > 0
        assert fills == value(metrics["aster_fills"], "aster_fills_total", agent=agent)
        sent = sum(1 for e in audit if e.agent_id == agent and e.event == "sent")
        assert sent == value(
            metrics["aster_orders"], "aster_orders_total", agent=agent, outcome="sent"
        )
        state = value(
            metrics["aster_agent_state"], "aster_agent_state", agent=agent, state="active"
        )
        assert state == 1
    for p in positions:
        want = float(p.qty * marks.get(p.symbol, p.entry_price))
        got = value(
            metrics["aster_position_notional_usdt"],
            "aster_position_notional_usdt",
            agent=p.agent_id,
            symbol=p.symbol,
        )
        assert got == pytest.approx(want, rel=1e-9)
    requests = metrics["aster_exchange_requests"]
    assert sum(s.value for s in requests if s.labels["status"] == "200") > 0
    latency = metrics["aster_exchange_request_duration_seconds"]
    counts = [s for s in latency if s.name.endswith("_count")]
    assert counts and all(
        s.labels["endpoint"].startswith(("GET /", "POST /", "DELETE /")) for s in counts
    )
    waits = [s for s in metrics["aster_ledger_lock_wait_seconds"] if s.name.endswith("_count")]
    assert waits and waits[0].value > 0


def test_textfile_and_bind_rules(traded: Fleet, tmp_path: Path) -> None:
    """--textfile writes once for node_exporter; a non-loopback bind needs --allow-remote."""
    target = tmp_path / "aster.prom"
    done = subprocess.run(
        traded.command("metrics", "--textfile", str(target)),
        env=traded.env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    names = {f.name for f in text_string_to_metric_families(target.read_text())}
    assert {"aster_agent_equity_usdt", "aster_fills"} <= names
    assert not list(tmp_path.glob("aster.prom.*"))  # written through a temp file and renamed
    refused = subprocess.run(
        traded.command("metrics", "--bind", "0.0.0.0", "--port", "0"),
        env=traded.env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "--allow-remote" in refused.stderr


def test_first_scrape_without_ledger_reports_never_started(
    tmp_path: Path, sim_server: SimServer
) -> None:
    """No ledger yet: the exporter answers, says so, and creates nothing."""
    fleet = make_fleet(tmp_path, sim_server, ["agent-1"])
    proc, url = start_exporter(fleet)
    try:
        metrics = scrape(url)
    finally:
        stop(proc)
    assert value(metrics["aster_ledger_found"], "aster_ledger_found") == 0
    assert value(metrics["aster_agent_up"], "aster_agent_up", agent="agent-1") == 0
    assert not fleet.state_dir.exists()


def test_each_scrape_sees_config_and_ledger_changes(tmp_path: Path, sim_server: SimServer) -> None:
    """The parsed config and the ledger connection outlive a scrape, never its values: a
    ledger created, an agent file edited or added, the ledger file replaced all show at once."""
    fleet = make_fleet(tmp_path, sim_server, ["agent-1"])
    proc, url = start_exporter(fleet)
    try:
        assert value(scrape(url)["aster_ledger_found"], "aster_ledger_found") == 0
        with Ledger(fleet.state_dir) as ledger:
            ledger.register_agent("agent-1", fleet.user, max_positions=1, capital=Decimal(500))
        one = fleet.config_dir / "agent-1.yaml"
        one.write_text(one.read_text().replace("strategy: random", "strategy: trend"))
        two = fleet.config_dir / "agent-2.yaml"
        two.write_text(one.read_text().replace("agent-1", "agent-2"))
        metrics = scrape(url)
        assert value(metrics["aster_ledger_found"], "aster_ledger_found") == 1
        info = {s.labels["agent"]: s.labels["strategy"] for s in metrics["aster_agent_info"]}
        assert info == {"agent-1": "trend", "agent-2": "trend"}
        capital = "aster_agent_capital_usdt"
        assert value(metrics[capital], capital, agent="agent-1") == 500

        other = tmp_path / "other"  # a restored backup: another file renamed over the ledger
        with Ledger(other) as ledger:
            ledger.register_agent("agent-1", fleet.user, max_positions=1, capital=Decimal(700))
        (other / "ledger.sqlite3").rename(fleet.state_dir / "ledger.sqlite3")
        assert value(scrape(url)[capital], capital, agent="agent-1") == 700
    finally:
        assert stop(proc) == 0
