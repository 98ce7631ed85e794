"""Hypothesis state machine: the single-process ledger lifecycle against an in-memory model."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aster_agents.errors import ReservationDenied
from aster_agents.ledger import Ledger
from aster_agents.models import Side

AGENTS = ("a1", "a2", "a3")
SYMBOLS = ("BTC", "ETH", "SOL", "XRP")
MAX_POSITIONS, MAX_TOTAL = 2, 3
CAPITAL, EQUITY, LEVERAGE = Decimal(100), Decimal(1000), Decimal(5)


@dataclass
class ModelIntent:
    agent: str
    symbol: str
    kind: str
    margin: Decimal
    notional: Decimal
    state: str = "reserved"
    margin_booked: bool = False


@dataclass
class ModelPosition:
    qty: int
    entry: Decimal
    margin: Decimal


class LedgerMachine(RuleBasedStateMachine):
    """Every rule runs on the real ledger and on the model; both must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-sm-"))
        self.ledger = Ledger(self.dir)
        self.ledger.set_account_limits(
            "u", max_total_positions=MAX_TOTAL, max_gross_leverage=LEVERAGE, equity=EQUITY
        )
        for agent in AGENTS:
            self.ledger.register_agent(agent, "u", max_positions=MAX_POSITIONS, capital=CAPITAL)
        self.intents: dict[str, ModelIntent] = {}
        self.positions: dict[tuple[str, str], ModelPosition] = {}
        self.enabled = dict.fromkeys(AGENTS, True)
        self.pnl = dict.fromkeys(AGENTS, Decimal(0))
        self.trade_id = 0

    def teardown(self) -> None:
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ----------------------------------------------------------------- the model

    def _active_open(self) -> list[ModelIntent]:
        return [i for i in self.intents.values() if i.kind == "open" and i.state in _ACTIVE]

    def _slots(self) -> set[tuple[str, str]]:
        return set(self.positions) | {(i.agent, i.symbol) for i in self._active_open()}

    def _expected_denial(
        self, agent: str, symbol: str, margin: Decimal, notional: Decimal
    ) -> str | None:
        slots = self._slots()
        if not self.enabled[agent]:
            return "agent disabled"
        if any(s == symbol and a != agent for a, s in slots):
            return "symbol owned"
        if (agent, symbol) not in slots:
            if sum(1 for a, _ in slots if a == agent) >= MAX_POSITIONS:
                return "agent at max_positions"
            if len(slots) >= MAX_TOTAL:
                return "account at max_total_positions"
        gross = sum((abs(p.qty) * p.entry for p in self.positions.values()), Decimal(0))
        gross += sum((i.notional for i in self._active_open() if not i.margin_booked), Decimal(0))
        if gross + notional > LEVERAGE * EQUITY:
            return "gross notional"
        used = sum((p.margin for (a, _), p in self.positions.items() if a == agent), Decimal(0))
        used += sum(
            (i.margin for i in self._active_open() if i.agent == agent and not i.margin_booked),
            Decimal(0),
        )
        if margin > CAPITAL + self.pnl[agent] - used:
            return "exceeds free capital"
        return None

    def _book(self, coid: str, side: Side, price: Decimal, pnl: Decimal) -> None:
        intent = self.intents[coid]
        self.trade_id += 1
        assert self.ledger.book_fill(
            coid,
            trade_id=self.trade_id,
            symbol=intent.symbol,
            side=side,
            qty=Decimal(1),
            price=price,
            realized_pnl=pnl,
            commission=Decimal(0),
            time_ms=self.trade_id,
        )
        assert not self.ledger.book_fill(
            coid,
            trade_id=self.trade_id,
            symbol=intent.symbol,
            side=side,
            qty=Decimal(1),
            price=price,
            realized_pnl=pnl,
            commission=Decimal(0),
            time_ms=self.trade_id,
        )
        key = (intent.agent, intent.symbol)
        pos = self.positions.get(key, ModelPosition(0, Decimal(0), Decimal(0)))
        extra = Decimal(0)
        if intent.kind == "open" and not intent.margin_booked:
            intent.margin_booked, extra = True, intent.margin
        signed = 1 if side is Side.BUY else -1
        new_qty = pos.qty + signed
        entry = pos.entry if pos.qty and abs(new_qty) < abs(pos.qty) else price
        if pos.qty and abs(new_qty) > abs(pos.qty):
            entry = (abs(pos.qty) * pos.entry + price) / abs(new_qty)
        if new_qty == 0:
            self.positions.pop(key, None)
        else:
            self.positions[key] = ModelPosition(new_qty, entry, pos.margin + extra)
        self.pnl[intent.agent] += pnl

    # ----------------------------------------------------------------- rules

    @rule(
        agent=st.sampled_from(AGENTS),
        symbol=st.sampled_from(SYMBOLS),
        margin=st.sampled_from([Decimal(10), Decimal(45)]),
        notional=st.sampled_from([Decimal(100), Decimal(2000)]),
    )
    def reserve_open(self, agent: str, symbol: str, margin: Decimal, notional: Decimal) -> None:
        expected = self._expected_denial(agent, symbol, margin, notional)
        try:
            intent = self.ledger.reserve(agent, symbol, Side.BUY, margin=margin, notional=notional)
        except ReservationDenied as exc:
            assert expected is not None and expected in exc.reason, (expected, exc.reason)
            return
        assert expected is None, f"granted but the model expected: {expected}"
        self.intents[intent.client_order_id] = ModelIntent(agent, symbol, "open", margin, notional)

    @rule(agent=st.sampled_from(AGENTS), symbol=st.sampled_from(SYMBOLS))
    def reserve_small(self, agent: str, symbol: str) -> None:
        """A second, cheap reservation rule so limits are reached within a few steps."""
        self.reserve_open(agent, symbol, Decimal(10), Decimal(100))

    @precondition(lambda self: bool(self.intents))
    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        coid = data.draw(st.sampled_from(sorted(self.intents)))
        intent = self.intents[coid]
        assert self.ledger.confirm(coid) == (intent.state == "reserved")
        if intent.state == "reserved":
            intent.state = "confirmed"

    @precondition(lambda self: bool(self.intents))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        coid = data.draw(st.sampled_from(sorted(self.intents)))
        intent = self.intents[coid]
        assert self.ledger.release(coid, "test") == (intent.state in _ACTIVE)
        if intent.state in _ACTIVE:
            intent.state = "released"

    @precondition(lambda self: any(i.state == "confirmed" for i in self.intents.values()))
    @rule(data=st.data(), price=st.sampled_from([Decimal(90), Decimal(110)]))
    def fill_and_finish(self, data: st.DataObject, price: Decimal) -> None:
        confirmed = sorted(c for c, i in self.intents.items() if i.state == "confirmed")
        coid = data.draw(st.sampled_from(confirmed))
        self._book(coid, Side.BUY, price, Decimal(0))
        self.ledger.finish_intent(coid, "filled")
        self.intents[coid].state = "filled"

    @precondition(lambda self: bool(self.positions))
    @rule(data=st.data(), pnl=st.sampled_from([Decimal(-30), Decimal(5)]))
    def close_position(self, data: st.DataObject, pnl: Decimal) -> None:
        agent, symbol = data.draw(st.sampled_from(sorted(self.positions)))
        qty = self.positions[(agent, symbol)].qty
        intent = self.ledger.reserve(
            agent, symbol, Side.SELL, margin=Decimal(0), notional=Decimal(1), kind="close"
        )
        self.intents[intent.client_order_id] = ModelIntent(
            agent, symbol, "close", Decimal(0), Decimal(1)
        )
        assert self.ledger.confirm(intent.client_order_id)
        for _ in range(qty):
            self._book(intent.client_order_id, Side.SELL, Decimal(100), pnl)
        self.ledger.finish_intent(intent.client_order_id, "filled")
        self.intents[intent.client_order_id].state = "filled"

    @rule(agent=st.sampled_from(AGENTS), enabled=st.booleans())
    def set_enabled(self, agent: str, enabled: bool) -> None:
        self.ledger.set_enabled(agent, enabled, "test")
        self.enabled[agent] = enabled

    # ----------------------------------------------------------------- invariants

    @invariant()
    def positions_match(self) -> None:
        booked = {
            (p.agent_id, p.symbol): (p.qty, p.entry_price, p.margin)
            for p in self.ledger.positions()
        }
        model = {k: (Decimal(p.qty), p.entry, p.margin) for k, p in self.positions.items()}
        assert booked == model

    @invariant()
    def counts_owners_and_pnl_match(self) -> None:
        held = set(self.positions)
        pending = {(i.agent, i.symbol) for i in self._active_open()} - held
        assert self.ledger.counts("u") == (len(held), len(pending))
        for symbol in SYMBOLS:
            owners: set[str | None] = {a for a, s in self._slots() if s == symbol}
            assert self.ledger.symbol_owner("u", symbol) in (owners or {None})
        for agent in AGENTS:
            row = self.ledger.agent(agent)
            assert row is not None and row.realized_pnl == self.pnl[agent]
            assert row.enabled == self.enabled[agent]

    @invariant()
    def limits_hold(self) -> None:
        slots = self._slots()
        assert len(slots) <= MAX_TOTAL
        assert all(sum(1 for a, _ in slots if a == agent) <= MAX_POSITIONS for agent in AGENTS)


_ACTIVE = ("reserved", "confirmed")

LedgerMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerLifecycle = LedgerMachine.TestCase
