"""Exporters on several hosts sharing one PostgreSQL ledger: each agent counted once.

Two "hosts" share one machine through ``ASTER_AGENTS_HOST`` (as in
``test_multihost_status.py``): each runs its own ``aster-agent metrics`` process with its own
agents.d, against one PostgreSQL schema. Summing a per-agent or host-wide series over both
scrapes gives the fleet's figure; a fleet-wide series is the same on both.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from aster_agents.exchange.base import RequestLog
from aster_agents.ledger import Ledger, SharedBudget
from aster_agents.ledger.liveness import HOST_ENV
from aster_agents.models import Side
from tests.kit.cli import run_cli
from tests.plugins.postgres import PgServer

USER = "0x" + "ab" * 20
FAR_PID = 4_000_000  # above pid_max: no process here has it
AGENT = 'id: {id}\nexchange:\n  user: "{user}"\n  signer: "0x{n:040x}"\n  signer_key_env: K{n}\n'


def write_config(root: Path, agents: dict[str, str | None]) -> Path:
    """An agents.d with one file per agent (``host:`` when given)."""
    config = root / "agents.d"
    config.mkdir(parents=True)
    (config / "_portfolio.yaml").write_text("state_dir: state\n")
    for n, (agent_id, host) in enumerate(agents.items(), 1):
        text = AGENT.format(id=agent_id, user=USER, n=n)
        (config / f"{agent_id}.yaml").write_text(text + (f"host: {host}\n" if host else ""))
    return config


def trade(ledger: Ledger, agent_id: str, n: int) -> None:
    """One filled buy: a position, a fill, audit rows, an equity snapshot."""
    intent = ledger.reserve(
        agent_id, f"C{n}USDT", Side.BUY, margin=Decimal(10), notional=Decimal(30)
    )
    ledger.mark_sent(intent.client_order_id)
    ledger.book_fill(
        intent.client_order_id,
        trade_id=n,
        symbol=f"C{n}USDT",
        side=Side.BUY,
        qty=Decimal("0.001"),
        price=Decimal(30_000),
        realized_pnl=Decimal(0),
        commission=Decimal("0.01"),
        time_ms=int(time.time() * 1000),
    )
    ledger.snapshot_equity(agent_id, Decimal(1000 + n))


def requests_from(host: str, state: Path, agent_id: str, statuses: list[int]) -> None:
    """Exchange requests an agent of ``host`` made, stored with a budget transaction."""
    budget = SharedBudget(state, user=USER, agent_id=agent_id)
    assert budget.group == host  # a shared ledger: one rate group per host
    for status in statuses:
        budget.record(RequestLog("GET", "/fapi/v3/klines", status, 1, 12.0, None))
    budget.acquire(1)
    budget.close()


@pytest.fixture
def hosts(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, tuple[Path, Path]]:
    """alpha runs a-1 (and will run a-2, configured there only); beta runs b-1, ran b-old
    (configured nowhere now) and will run both-3, whose file on both hosts says ``host: beta``.
    Returns host -> (config dir, state dir)."""
    out = {
        "alpha": write_config(tmp_path / "alpha", {"a-1": None, "a-2": None, "both-3": "beta"}),
        "beta": write_config(tmp_path / "beta", {"b-1": None, "both-3": "beta"}),
    }
    state = tmp_path / "state"
    monkeypatch.setenv("ASTER_AGENTS_LEDGER_URL", pg_url)
    for n, (host, agent_ids) in enumerate(
        (("alpha", ("a-1",)), ("beta", ("b-1", "b-old")), ("alpha", ("a-2", "both-3")))
    ):
        monkeypatch.setenv(HOST_ENV, host)
        with Ledger(state) as ledger:
            if n == 0:
                ledger.set_account_limits(
                    USER, max_total_positions=10, max_gross_leverage=Decimal(5)
                )
                ledger.ensure_account(USER, Decimal(100_000))
            for agent_id in agent_ids:
                ledger.register_agent(agent_id, USER, max_positions=2, capital=Decimal(1000))
                if n < 2:  # a-2 and both-3 have never run
                    ledger.heartbeat(agent_id, FAR_PID, tick=True)
                    trade(ledger, agent_id, len(agent_id) * 10 + n)
    monkeypatch.setenv(HOST_ENV, "alpha")
    requests_from("alpha", state, "a-1", [200, 200, 429])
    monkeypatch.setenv(HOST_ENV, "beta")
    requests_from("beta", state, "b-1", [200, 418])
    return {h: (config, state) for h, config in out.items()}


def start(config: Path, state: Path, host: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != HOST_ENV} | {HOST_ENV: host}
    cmd = [sys.executable, "-m", "aster_agents", "--config-dir", str(config)]
    cmd += ["--state-dir", str(state), "metrics", "--port", "0", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def scrapes(hosts: dict[str, tuple[Path, Path]]) -> Iterator[dict[str, dict[str, list[Sample]]]]:
    """One scrape of alpha's exporter, beta's, and alpha's with --all-hosts."""
    procs = {
        "alpha": start(*hosts["alpha"], "alpha"),
        "beta": start(*hosts["beta"], "beta"),
        "all": start(*hosts["alpha"], "alpha", "--all-hosts"),
    }
    try:
        out = {}
        for name, proc in procs.items():
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, f"exporter {name} printed no URL"
            reply = httpx.get(proc.stdout.readline().strip(), timeout=10)
            if reply.status_code != 200:
                proc.kill()
                pytest.fail(f"exporter {name}: {reply.status_code} {proc.communicate()[1]}")
            text = reply.text
            out[name] = {f.name: f.samples for f in text_string_to_metric_families(text)}
        yield out
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=10)


def by_label(samples: list[Sample], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in samples:
        if s.name == name:
            out[s.labels[label]] = out.get(s.labels[label], 0.0) + s.value
    return out


def total(scrape: dict[str, list[Sample]], family: str, name: str | None = None) -> float:
    return sum(s.value for s in scrape.get(family, []) if s.name == (name or family))


def test_two_exporters_on_one_ledger_count_each_agent_once(
    scrapes: dict[str, dict[str, list[Sample]]],
    hosts: dict[str, tuple[Path, Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Per-agent series: each agent on the one host that runs it, so sum() over both
    exporters is the fleet's (as --all-hosts shows it); fleet-wide series equal on both."""
    alpha, beta, every = scrapes["alpha"], scrapes["beta"], scrapes["all"]
    equity = "aster_agent_equity_usdt"
    assert set(by_label(alpha[equity], equity, "agent")) == {"a-1", "a-2"}
    assert set(by_label(beta[equity], equity, "agent")) == {"b-1", "b-old", "both-3"}
    assert set(by_label(every[equity], equity, "agent")) == {"a-1", "a-2", "b-1", "b-old", "both-3"}
    info = {s.labels["agent"]: s.labels["host"] for s in beta["aster_agent_info"]}
    assert info == {"b-1": "beta", "b-old": "beta", "both-3": "beta"}

    config, state = hosts["alpha"]
    code, out, err = run_cli(
        ["--config-dir", str(config), "--state-dir", str(state), "portfolio", "--json"], capsys
    )
    assert code == 0, err
    doc = json.loads(out)
    sleeves = {s["id"]: s for s in doc["agents"]}
    for family, key in (
        ("aster_agent_equity_usdt", "equity"),
        ("aster_agent_capital_usdt", "capital"),
        ("aster_agent_pnl_usdt", "pnl"),
    ):
        fleet = float(sum(Decimal(s[key]) for s in sleeves.values()))
        assert total(alpha, family) + total(beta, family) == pytest.approx(fleet), family
        assert total(every, family) == pytest.approx(fleet), family
    for family, name in (
        ("aster_fills", "aster_fills_total"),
        ("aster_orders", "aster_orders_total"),
        ("aster_exchange_requests", "aster_exchange_requests_total"),
        ("aster_agent_ticks", "aster_agent_ticks_total"),
        ("aster_position_notional_usdt", None),
        ("aster_agent_positions", None),
        ("aster_agent_state", None),
    ):
        both = total(alpha, family, name) + total(beta, family, name)
        assert both == total(every, family, name) > 0, family
    assert total(alpha, "aster_fills", "aster_fills_total") == 1  # a-1's only

    limited = "aster_exchange_rate_limited_total"
    assert by_label(alpha["aster_exchange_rate_limited"], limited, "host") == {"alpha": 1}
    assert by_label(beta["aster_exchange_rate_limited"], limited, "host") == {"beta": 1}
    assert by_label(every["aster_exchange_rate_limited"], limited, "host") == {
        "alpha": 1,
        "beta": 1,
    }
    latency = "aster_exchange_request_duration_seconds"
    counts = {k: by_label(v[latency], f"{latency}_count", "host") for k, v in scrapes.items()}
    assert counts == {"alpha": {"alpha": 3}, "beta": {"beta": 2}, "all": {"alpha": 3, "beta": 2}}

    for family, key in (
        ("aster_portfolio_equity_usdt", "equity"),
        ("aster_portfolio_capital_usdt", "capital"),
    ):
        fleet = float(doc["portfolio"][key])
        assert [total(v, family) for v in scrapes.values()] == pytest.approx([fleet] * 3)
    events = "aster_ledger_events_total"
    assert by_label(alpha["aster_ledger_events"], events, "event") == by_label(
        beta["aster_ledger_events"], events, "event"
    )


def test_a_connection_dropped_between_scrapes_costs_no_scrape(
    hosts: dict[str, tuple[Path, Path]], pg_server: PgServer
) -> None:
    """The exporter keeps its ledger connection between scrapes; when the server has dropped
    it meanwhile, the next scrape reconnects and answers (no 500, no gap)."""
    proc = start(*hosts["beta"], "beta")
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the exporter printed no URL"
        url = proc.stdout.readline().strip()
        assert httpx.get(url, timeout=10).status_code == 200
        dropped = pg_server.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        assert dropped  # the exporter's connection was among them
        reply = httpx.get(url, timeout=10)
        assert reply.status_code == 200, reply.text
        assert 'aster_agent_up{agent="b-1"}' in reply.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
