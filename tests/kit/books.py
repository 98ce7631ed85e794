"""Test kit: a ledger with a known trading history, written through the public Ledger API.

Three sleeves on one account over two hours of one-minute snapshots: round trips closed by
a signal, a stop, a take profit, a kill switch and reconcile (foreign), a flip, funding
while a trip is open, a trip still open at the end, a rebalance and a kill switch.
"""

from __future__ import annotations

import shutil
import time
from decimal import Decimal
from pathlib import Path
from typing import Final

from aster_agents.ledger import Ledger
from aster_agents.models import Side

REPO: Final = Path(__file__).resolve().parents[2]
USER: Final = "0xD07531b644C108a916D454E029bE3C61B4A0de72"
AGENTS: Final = ("agent-1", "agent-2", "agent-3")
MINUTE: Final = 60_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def copy_config(root: Path, agents: tuple[str, ...] = AGENTS) -> Path:
    """The shipped _portfolio.yaml and ``agents`` in ``root/agents.d``."""
    config = root / "agents.d"
    config.mkdir(parents=True)
    for name in ("_portfolio", *agents):
        shutil.copy(REPO / "agents.d" / f"{name}.yaml", config / f"{name}.yaml")
    return config


class Trader:
    """Books orders for one agent the way the runner does: reserve, send, confirm, fill."""

    def __init__(self, ledger: Ledger, agent_id: str, start_ms: int) -> None:
        self.ledger, self.agent_id, self.start_ms, self.trade_id = ledger, agent_id, start_ms, 0

    def order(
        self,
        symbol: str,
        side: Side,
        qty: str,
        price: str,
        *,
        kind: str,
        at_min: int | None,
        note: str | None = None,
        pnl: str = "0",
        fee: str = "0.02",
    ) -> None:
        margin = Decimal(qty) * Decimal(price) / 4 if kind == "open" else Decimal(0)
        intent = self.ledger.reserve(
            self.agent_id, symbol, side, margin=margin, notional=margin * 2, kind=kind, note=note
        )
        self.ledger.mark_sent(intent.client_order_id)
        self.ledger.confirm(intent.client_order_id)
        self.trade_id += 1
        self.ledger.book_fill(
            intent.client_order_id,
            trade_id=hash((self.agent_id, self.trade_id)) & 0x7FFFFFFF,
            symbol=symbol,
            side=side,
            qty=Decimal(qty),
            price=Decimal(price),
            realized_pnl=Decimal(pnl),
            commission=Decimal(fee),
            time_ms=now_ms() if at_min is None else self.start_ms + at_min * MINUTE,
        )
        self.ledger.finish_intent(intent.client_order_id, "filled")


def build_books(state_dir: Path) -> int:
    """Write the history described in the module docstring into ``state_dir``; returns the
    time of its first snapshot (two hours ago: the ledger's own events are stamped now)."""
    start = now_ms() // MINUTE * MINUTE - 120 * MINUTE
    with Ledger(state_dir) as ledger:
        ledger.set_account_limits(
            USER, max_total_positions=10, max_gross_leverage=Decimal(5), equity=Decimal(10_000)
        )
        for agent in AGENTS:
            ledger.register_agent(agent, USER, max_positions=3, capital=Decimal(1000))
        ledger.ensure_account(USER, Decimal(10_000), start)
        _trade(ledger, start)
        _snapshots(ledger, start, 0, 60)
        ledger.reallocate(
            {"agent-1": Decimal(1200), "agent-3": Decimal(800)},
            reason="manual rebalance",
            detail={"test": True},
        )
        _snapshots(ledger, start, 60, 120)
        ledger.record_marks(USER, {"ASTERUSDT": Decimal("1.5")}, start + 119 * MINUTE)
    return start


def _trade(ledger: Ledger, start: int) -> None:
    one, two, three = (Trader(ledger, a, start) for a in AGENTS)
    btc, eth, sol, aster = "BTCUSDT", "ETHUSDT", "SOLUSDT", "ASTERUSDT"
    # agent-1: a signal close (+10), a stop (-6), a take profit (+8), a flip (long -> short)
    one.order(btc, Side.BUY, "0.01", "50000", kind="open", at_min=1, note="trend up")
    one.order(btc, Side.SELL, "0.01", "51000", kind="close", at_min=9, note="trend faded", pnl="10")
    one.order(btc, Side.BUY, "0.01", "51000", kind="open", at_min=12, note="breakout")
    one.order(
        btc, Side.SELL, "0.01", "50400", kind="protect", at_min=20, note="stop loss", pnl="-6"
    )
    one.order(eth, Side.SELL, "0.5", "3000", kind="open", at_min=25, note="overbought")
    one.order(eth, Side.BUY, "0.5", "2984", kind="protect", at_min=40, note="take profit", pnl="8")
    one.order(btc, Side.BUY, "0.02", "50000", kind="open", at_min=70, note="dip")
    one.order(btc, Side.SELL, "0.03", "50500", kind="close", at_min=80, note="reverse", pnl="10")
    one.order(btc, Side.BUY, "0.01", "50300", kind="close", at_min=95, note="flat", pnl="2")
    # agent-2: funding while open; the kill switch fires, then its close is a kill-switch close
    two.order(eth, Side.BUY, "1", "3000", kind="open", at_min=5, note="momentum")
    ledger.book_funding("agent-2", eth, Decimal("-0.75"), 1, start + 30 * MINUTE)
    ledger.set_state("agent-2", "disabled", "kill switch: drawdown 21.0% >= kill_drawdown 20.0%")
    two.order(eth, Side.SELL, "1", "2950", kind="close", at_min=None, note="exit", pnl="-50")
    # agent-3: one still open with a partial close; reconcile drops another (web UI close)
    three.order(aster, Side.BUY, "300", "1.4", kind="open", at_min=100, note="range low")
    three.order(aster, Side.SELL, "100", "1.45", kind="close", at_min=110, note="trim", pnl="5")
    three.order(sol, Side.BUY, "5", "100", kind="open", at_min=15, note="range low")
    ledger.close_position("agent-3", sol, "flat on the exchange, no working order")


def _snapshots(ledger: Ledger, start_ms: int, start: int, end: int) -> None:
    """One snapshot a minute per sleeve: a gentle wave, so Sharpe has returns to work on."""
    for agent_index, agent in enumerate(AGENTS):
        row = ledger.agent(agent)
        assert row is not None
        points = []
        for minute in range(start, end):
            wiggle = Decimal((minute * (agent_index + 3)) % 7 - 3) / 2
            drift = Decimal(minute * (1 - agent_index)) / 10
            points.append((start_ms + minute * MINUTE, row.book_equity + wiggle + drift))
        ledger.import_equity(agent, points)  # as snapshot_equity would, in one transaction
