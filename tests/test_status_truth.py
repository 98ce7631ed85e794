"""Status figures that must tell the truth: reserved slots, and the keys the fast view knows."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel

from aster_agents.config.schema import AgentConfig
from aster_agents.config.view import KNOWN_KEYS
from aster_agents.ledger import Ledger
from aster_agents.models import Side

D = Decimal


def _reserved(ledger: Ledger, agent_id: str) -> int:
    return next(r.reserved for r in ledger.agent_rows() if r.agent_id == agent_id)


def test_protective_orders_are_not_reserved_slots(ledger: Ledger) -> None:
    """A held position's stop and take-profit are not counted as reserved; a pending open is."""
    opened = ledger.reserve("a1", "BTCUSDT", Side.BUY, margin=D(10), notional=D(50))
    assert _reserved(ledger, "a1") == 1
    assert ledger.confirm(opened.client_order_id)
    assert ledger.book_fill(
        opened.client_order_id,
        trade_id=1,
        symbol="BTCUSDT",
        side=Side.BUY,
        qty=D(1),
        price=D(50),
        realized_pnl=D(0),
        commission=D("0.1"),
        time_ms=1,
    )
    for _ in ("stop", "take profit"):
        ledger.reserve("a1", "BTCUSDT", Side.SELL, margin=D(0), notional=D(0), kind="protect")
    assert _reserved(ledger, "a1") == 0
    ledger.reserve("a1", "ETHUSDT", Side.BUY, margin=D(10), notional=D(50))
    assert _reserved(ledger, "a1") == 1


def test_fast_view_knows_every_schema_key() -> None:
    """The status view's list of agent keys matches the validated schema's."""

    def fields(model: type[BaseModel]) -> frozenset[str]:
        return frozenset(model.model_fields)

    nested = {
        name: info.annotation
        for name, info in AgentConfig.model_fields.items()
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
    }
    assert KNOWN_KEYS[""] == fields(AgentConfig)
    assert {k: v for k, v in KNOWN_KEYS.items() if k} == {k: fields(m) for k, m in nested.items()}


def test_minutes_of_history_are_not_annualised() -> None:
    """Six minutes of NAV give no Sharpe or volatility (n/a); two days of the same shape do."""
    from aster_agents.portfolio.metrics import MS_PER_DAY, series_metrics

    navs = [1.0 + 0.001 * (i % 3) + 0.0005 * i for i in range(13)]
    minutes = [i * 30_000 for i in range(13)]
    short = series_metrics(minutes, navs)
    assert (short.sharpe, short.volatility) == (None, None)
    days = [i * MS_PER_DAY // 6 for i in range(13)]
    assert series_metrics(days, navs).sharpe is not None


def test_portfolio_before_the_books_open_shows_no_zero_equity(tmp_path: Path) -> None:
    """Agents registered but no exchange reading yet (a demo's first frame): "-", not 0.00."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    with Ledger(tmp_path / "state") as ledger:
        ledger.register_agent("agent-1", "0x" + "1" * 40, max_positions=1)
    env = {**os.environ, "ASTER_AGENTS_CONFIG": str(repo / "agents.d")}
    env["ASTER_AGENTS_STATE"] = str(tmp_path / "state")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "aster-agent"), "portfolio"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("equity - (the books open once an agent has read")
    assert "equity 0.00" not in done.stdout
