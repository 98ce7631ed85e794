"""Portfolio maths (pure, property-tested) and ``aster-agent portfolio [--json]``."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aster_agents.config.schema import FleetConfig, load_fleet
from aster_agents.fleet.view import collect_portfolio
from aster_agents.ledger import Ledger
from aster_agents.portfolio import nav as pf
from tests.kit.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
USER = "0xD07531b644C108a916D454E029bE3C61B4A0de72"

money = st.decimals(min_value=-10_000, max_value=1_000_000, places=4, allow_nan=False)
positive = st.decimals(min_value=Decimal("0.01"), max_value=1_000_000, places=4)


@st.composite
def sleeves(draw: st.DrawFn) -> list[pf.SleeveInput]:
    n = draw(st.integers(min_value=1, max_value=12))
    return [
        pf.SleeveInput(f"a{i}", USER, draw(positive), draw(positive), draw(money)) for i in range(n)
    ]


@given(sleeves(), positive)
def test_sleeves_plus_unallocated_equal_account_equity(
    inputs: list[pf.SleeveInput], account: Decimal
) -> None:
    """Sum of sleeves + unallocated is exactly the account's equity."""
    figures = pf.aggregate(inputs, {USER: account})
    assert figures.unallocated is not None
    assert sum((s.equity for s in figures.sleeves), Decimal(0)) + figures.unallocated == account
    assert figures.equity == account


@given(sleeves(), st.one_of(st.none(), positive))
def test_weights_in_unit_interval_and_sum_at_most_one(
    inputs: list[pf.SleeveInput], account: Decimal | None
) -> None:
    """Weights are in [0, 1] and add up to at most 1, whatever the account equity."""
    figures = pf.aggregate(inputs, {USER: account})
    weights = [s.weight for s in figures.sleeves]
    assert all(0 <= w <= 1 for w in weights)
    assert sum(weights) <= 1 + 1e-9


@given(sleeves())
def test_contributions_add_up_to_the_portfolio_return(inputs: list[pf.SleeveInput]) -> None:
    """Each sleeve's contribution is its P&L over total capital; they sum to the return."""
    figures = pf.aggregate(inputs, {USER: None})
    assert figures.unallocated is None
    total = sum(s.contribution for s in figures.sleeves)
    assert total == pytest.approx(figures.ret, rel=1e-9, abs=1e-9)


@given(st.lists(money, max_size=60))
def test_drawdown_in_unit_interval(values: list[Decimal]) -> None:
    """Drawdowns (each point and the maximum) stay in [0, 1]."""
    series = pf.drawdown_series(values)
    assert all(0 <= d <= 1 for d in series)
    assert 0 <= pf.max_drawdown(values) <= 1
    assert pf.current_drawdown(values) <= pf.max_drawdown(values)


def test_drawdown_examples() -> None:
    """Peak 120 then 90 is a 25% drawdown; a rising series has none."""
    values = [Decimal(v) for v in (100, 120, 90, 110)]
    assert pf.max_drawdown(values) == pytest.approx(0.25)
    assert pf.current_drawdown(values) == pytest.approx(1 / 12)
    assert pf.max_drawdown([Decimal(1), Decimal(2)]) == 0


@given(st.lists(money, max_size=200), st.integers(min_value=1, max_value=40))
def test_sparkline_shape(values: list[Decimal], width: int) -> None:
    """A sparkline has one bar per value up to ``width`` and uses only the eight bars."""
    line = pf.sparkline(values, width)
    assert len(line) == min(len(values), width)
    assert set(line) <= set(pf.SPARK_BARS)


def test_sparkline_follows_the_series() -> None:
    """A rising series gives rising bars from the lowest to the highest."""
    line = pf.sparkline([Decimal(i) for i in range(8)])
    assert line == pf.SPARK_BARS
    assert pf.sparkline([Decimal(5)] * 3) == "▄▄▄"


def test_combined_series_carries_values_forward() -> None:
    """Sleeves are summed on a common grid, flat before their first and after last snapshot."""
    a = [(0, Decimal(100)), (10, Decimal(110))]
    b = [(5, Decimal(50)), (10, Decimal(40))]
    assert pf.combined_series({"a": a, "b": b}, points=3) == [
        Decimal(150),
        Decimal(150),
        Decimal(150),
    ]
    assert pf.resample(a, [-1, 0, 9, 10, 99]) == [Decimal(v) for v in (100, 100, 100, 110, 110)]


def test_nav_return_ignores_reallocation() -> None:
    """Return is NAV per unit - 1: equity 1100 on 1000 units is +10%, whatever the capital."""
    assert pf.nav_return(Decimal(1100), Decimal(1000)) == pytest.approx(0.10)
    assert pf.nav_return(Decimal(5), Decimal(0)) == 0


@pytest.fixture
def fleet(tmp_path: Path) -> FleetConfig:
    config = tmp_path / "agents.d"
    shutil.copytree(REPO / "agents.d", config)
    return load_fleet(config, check_strategies=False)


def populate(fleet: FleetConfig, state: Path) -> None:
    """Three sleeves of 1000 in a 10,000 account; agent-1 gains 100, agent-2 loses 50
    (booked as funding, so the books say so too, not only the snapshots)."""
    with Ledger(state) as ledger:
        ledger.set_account_limits(
            USER, max_total_positions=10, max_gross_leverage=Decimal(3), equity=Decimal(10000)
        )
        for agent in ("agent-1", "agent-2", "agent-3"):
            ledger.register_agent(agent, USER, max_positions=2, capital=Decimal(1000))
        for tran, (agent, amount) in enumerate((("agent-1", 100), ("agent-2", -50))):
            ledger.book_income(
                USER,
                tran,
                kind="FUNDING_FEE",
                symbol="BTCUSDT",
                amount=Decimal(amount),
                time_ms=1,
                agent_id=agent,
            )
        for t, (one, two) in enumerate(((1000, 1000), (1200, 990), (1100, 950))):
            ledger.snapshot_equity("agent-1", Decimal(one), 1_000 + t * 60_000)
            ledger.snapshot_equity("agent-2", Decimal(two), 1_000 + t * 60_000)


def test_portfolio_json(
    fleet: FleetConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: equity is the books (sleeves + unallocated); drawdown from the snapshots."""
    state = tmp_path / "state"
    populate(fleet, state)
    argv = ["--config-dir", str(fleet.config_dir), "--state-dir", str(state), "portfolio", "--json"]
    code, out, _ = run_cli(argv, capsys)
    doc = json.loads(out)
    assert code == 0 and doc["version"] == 1
    total = doc["portfolio"]
    assert (total["equity"], total["capital"], total["pnl"]) == ("10050", "3000", "50")
    assert (total["sleeves_equity"], total["unallocated"]) == ("3050", "7000")
    assert (total["exchange_equity"], total["equity_difference"]) == ("10000", "50")
    assert total["return"] == pytest.approx(50 / 3000)
    assert total["max_drawdown"] == pytest.approx((3190 - 3050) / 3190)
    agents = {a["id"]: a for a in doc["agents"]}
    assert set(agents) == {"agent-1", "agent-2", "agent-3"}
    assert agents["agent-1"]["pnl"] == "100"
    assert agents["agent-1"]["weight"] == pytest.approx(1100 / 10050)
    assert agents["agent-2"]["contribution"] == pytest.approx(-50 / 3000)
    assert (
        agents["agent-3"]["state"] == "NEVER STARTED" and len(agents["agent-1"]["sparkline"]) == 3
    )


def test_portfolio_table_and_no_ledger(
    fleet: FleetConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table shows sleeves and the unallocated row; without a ledger nothing is written."""
    empty = tmp_path / "empty"
    base = ["--config-dir", str(fleet.config_dir), "--state-dir"]
    code, out, _ = run_cli([*base, str(empty), "portfolio"], capsys)
    assert code == 0 and "no ledger yet" in out and not empty.exists()
    state = tmp_path / "state"
    populate(fleet, state)
    code, out, _ = run_cli([*base, str(state), "portfolio"], capsys)
    assert code == 0
    assert "unallocated" in out and "7,000.00" in out and "+100.00" in out


def test_collect_portfolio_is_importable_for_demo(fleet: FleetConfig, tmp_path: Path) -> None:
    """collect_portfolio works as a plain function and gives one sleeve per registered agent."""
    state = tmp_path / "state"
    populate(fleet, state)
    report = collect_portfolio(fleet, state)
    assert [s.id for s in report.sleeves] == ["agent-1", "agent-2", "agent-3"]
    assert report.figures.unallocated == Decimal(7000)


def test_combined_series_offset_for_sleeves_without_snapshots() -> None:
    """Sleeves that never wrote a snapshot add a constant, not a point at time zero."""
    a = [(1_000_000, Decimal(100)), (2_000_000, Decimal(90))]
    assert pf.combined_series({"a": a}, points=2, offset=Decimal(1000)) == [
        Decimal(1100),
        Decimal(1090),
    ]
