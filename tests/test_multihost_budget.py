"""Rate budgets on several hosts sharing a PostgreSQL ledger: orders per account, weight per
rate group (a host, or the hosts behind one NAT), a 429/418 pause per rate group."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from aster_agents.ledger import SharedBudget
from aster_agents.ledger.liveness import HOST_ENV

USER = "0x" + "ab" * 20


@pytest.fixture
def hosts() -> Iterator[ExitStack]:
    """The budgets a test opens, closed at its end."""
    with ExitStack() as stack:
        yield stack


def budget_on(
    stack: ExitStack,
    monkeypatch: pytest.MonkeyPatch,
    host: str,
    url: str,
    state: Path,
    group: str | None = None,
) -> SharedBudget:
    """A budget as an agent on ``host`` opens it (its own state dir, the shared URL)."""
    monkeypatch.setenv(HOST_ENV, host)
    budget = SharedBudget(
        state / host,
        user=USER,
        weight_per_minute=600,
        orders_per_10s=10,
        orders_per_minute=60,
        safety=1.0,
        url=url,
        group=group,
    )
    stack.callback(budget.close)
    return budget


def test_orders_are_one_budget_per_account_weight_one_per_host(
    hosts: ExitStack, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orders placed on one host are spent from the other's budget too; request weight is not."""
    alpha = budget_on(hosts, monkeypatch, "alpha", pg_url, tmp_path)
    beta = budget_on(hosts, monkeypatch, "beta", pg_url, tmp_path)
    alpha.acquire(300, orders=8)
    seen = beta.state()["buckets"]
    assert seen[f"orders10s:{USER}"] == pytest.approx(2, abs=0.5)
    assert seen["weight:beta"] == pytest.approx(600, abs=1)
    assert alpha.state()["buckets"]["weight:alpha"] == pytest.approx(300, abs=10)
    beta.acquire(1, orders=2)
    assert alpha.state()["buckets"][f"orders10s:{USER}"] < 1
    assert not (tmp_path / "beta" / "ledger.sqlite3").exists()  # nothing host-local


def test_hosts_behind_one_nat_share_weight_and_pause(
    hosts: ExitStack, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rate_group: hosts naming one group spend one weight bucket and stop together on a 429."""
    alpha = budget_on(hosts, monkeypatch, "alpha", pg_url, tmp_path, group="office")
    beta = budget_on(hosts, monkeypatch, "beta", pg_url, tmp_path, group="office")
    gamma = budget_on(hosts, monkeypatch, "gamma", pg_url, tmp_path)
    alpha.acquire(500)
    assert beta.state()["buckets"]["weight:office"] == pytest.approx(100, abs=10)
    until = time.time() + 120
    beta.pause(until, "HTTP 429")
    assert alpha.paused_until() == pytest.approx(until)
    assert gamma.paused_until() is None
    gamma.acquire(10, orders=1)  # another IP: not paused


def test_status_shows_this_hosts_weight_and_pause(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """status reads the weight bucket and the pause of its own rate group on the database."""
    from aster_agents.config.view import load_view
    from aster_agents.fleet.view import collect_status

    monkeypatch.setenv("ASTER_AGENTS_LEDGER_URL", pg_url)
    config = tmp_path / "agents.d"
    config.mkdir()
    (config / "agent-1.yaml").write_text(f"id: agent-1\nexchange: {{user: '{USER}'}}\n")
    with ExitStack() as stack:
        beta = budget_on(stack, monkeypatch, "beta", pg_url, tmp_path)
        beta.pause(time.time() + 120, "HTTP 429 on beta")
        alpha = budget_on(stack, monkeypatch, "alpha", pg_url, tmp_path)
        alpha.acquire(60, orders=1)
    report = collect_status(load_view(config), tmp_path / "state")
    account = report.accounts[0]
    assert account.weight_used == pytest.approx(60, abs=5)
    assert account.orders_used == pytest.approx(1, abs=0.5)
    assert account.paused_until_s is None  # beta's pause is not alpha's
    monkeypatch.setenv(HOST_ENV, "beta")
    assert collect_status(load_view(config), tmp_path / "state").accounts[0].paused_until_s
