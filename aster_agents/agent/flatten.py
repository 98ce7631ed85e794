"""The panic button (``aster-agent flatten``): disable, cancel, close, verify.

For each chosen agent, in this order:

1. the agent is disabled with the reason ``flattened by operator``, so it opens nothing; a
   running agent sees that reason at its next tick and stands down (it resolves no intent and
   places no protective order) until ``agents enable``;
2. every unresolved intent of the agent is settled against the exchange by its client order
   id: a reservation never sent is released (a running agent's ``mark_sent`` then fails, so
   it is never sent), a working order (the stop and take-profit) is cancelled, and the fills
   of whatever executed are booked;
3. each ledger position left is closed by a reduce-only MARKET order whose client order id
   is a ``close`` intent written (and marked sent, durably) before the order goes out. A
   crash or a rerun finds that intent in step 2 and books it instead of sending another
   close (an intent whose order the exchange does not know is written off only once that
   order can no longer land: a noop spent its recorded nonce, or the nonce window passed;
   see ``agent/inflight.py``); and reduce-only means a close can never open the other side;
4. the agent's own orders still open on the exchange (client ids ``<agent>-<seq>-...``,
   never another agent's) are cancelled, and steps 2-4 repeat until nothing is left or
   ``timeout_s`` passes.

``verify`` then reads ``positionRisk`` and the open orders of every account involved: any
position on a symbol the agents held, or any order of theirs, is reported as left.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from aster_agents.agent import inflight
from aster_agents.agent.runner import FLATTENED, failpoint
from aster_agents.errors import (
    BadRequest,
    OrderNotFound,
    OrderRejected,
    ReservationDenied,
    TransientExchangeError,
    UnknownOutcome,
)
from aster_agents.models import (
    ZERO,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    now_ms,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from aster_agents.config.schema import AgentConfig, FleetConfig
    from aster_agents.exchange.base import Exchange
    from aster_agents.ledger import Intent, Ledger, LedgerPosition

TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.2
_FINAL: Final = {
    OrderStatus.FILLED: "filled",
    OrderStatus.CANCELED: "canceled",
    OrderStatus.EXPIRED: "canceled",
    OrderStatus.REJECTED: "rejected",
}


@dataclass(frozen=True, slots=True)
class Close:
    """One position close flatten booked: what it closed and what it realized."""

    agent_id: str
    symbol: str
    qty: Decimal  # signed fill quantity (a long is closed by a negative one)
    price: Decimal  # average fill price
    realized_pnl: Decimal
    commission: Decimal
    client_order_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "agent": self.agent_id,
            "symbol": self.symbol,
            "qty": str(self.qty),
            "price": str(self.price),
            "realized_pnl": str(self.realized_pnl),
            "commission": str(self.commission),
            "client_order_id": self.client_order_id,
        }


@dataclass
class AgentFlatten:
    agent_id: str
    user: str
    closes: list[Close] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    symbols: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    left: dict[str, Decimal] = field(default_factory=dict)  # ledger positions still open


@dataclass
class FlattenReport:
    agents: list[AgentFlatten]
    left_positions: dict[str, Decimal] = field(default_factory=dict)  # "user symbol" -> amount
    left_orders: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            not self.left_positions
            and not self.left_orders
            and not any(a.left for a in self.agents)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "agents": [
                {
                    "id": a.agent_id,
                    "state": "disabled",
                    "reason": FLATTENED,
                    "closes": [c.to_json() for c in a.closes],
                    "cancelled": a.cancelled,
                    "left": {s: str(q) for s, q in a.left.items()},
                    "notes": a.notes,
                }
                for a in self.agents
            ],
            "realized_pnl": str(sum((c.realized_pnl for a in self.agents for c in a.closes), ZERO)),
            "commission": str(sum((c.commission for a in self.agents for c in a.closes), ZERO)),
            "left_positions": {k: str(v) for k, v in self.left_positions.items()},
            "left_orders": self.left_orders,
        }


def own_order(agent_id: str, client_order_id: str) -> bool:
    """True for a client order id this agent's ledger made (``<agent>-<seq>-<kind>``)."""
    return re.fullmatch(rf"{re.escape(agent_id)}-\d{{6,}}-[a-z]+", client_order_id) is not None


class Flattener:
    """Flattens one agent through one client signed for its account."""

    def __init__(self, ledger: Ledger, client: Exchange, agent: AgentConfig) -> None:
        self.ledger = ledger
        self.client = client
        self.agent = agent
        self.out = AgentFlatten(agent.id, agent.exchange.user)
        self.write_off_ms = inflight.write_off_ms(agent.exchange.base_url, None, os.environ)
        self.noop_resolve = inflight.noop_resolve(os.environ)

    def run(self, timeout_s: float = TIMEOUT_S) -> AgentFlatten:
        stated = self.client.exchange_info().nonce_window_ms
        self.write_off_ms = inflight.write_off_ms(self.agent.exchange.base_url, stated, os.environ)
        self._disable()
        deadline = time.monotonic() + timeout_s
        while True:
            pending = self._settle_intents()
            positions = self.ledger.positions(agent_id=self.agent.id)
            self.out.symbols |= {p.symbol for p in positions}
            for position in positions:
                if position.symbol not in pending:
                    self._close(position)
            if not pending and not positions:
                self._cancel_strays()
                if not self.ledger.unresolved_intents(self.agent.id):
                    break
            if time.monotonic() > deadline:
                self.out.notes.append(f"gave up after {timeout_s:.0f}s; run flatten again")
                break
            time.sleep(POLL_S)
        self.out.left = {p.symbol: p.qty for p in self.ledger.positions(agent_id=self.agent.id)}
        return self.out

    def _disable(self) -> None:
        if self.ledger.agent(self.agent.id) is None:
            self.ledger.register_agent(
                self.agent.id,
                self.agent.exchange.user,
                max_positions=self.agent.trading.max_positions,
                enabled=False,
            )
        row = self.ledger.agent(self.agent.id)
        if row is None or row.state_reason != FLATTENED or row.state != "disabled":
            self.ledger.set_state(self.agent.id, "disabled", FLATTENED)

    # ---------------------------------------------------------------- step 2

    def _settle_intents(self) -> set[str]:
        """Settle every unresolved intent; returns the symbols with one still undecided."""
        pending: set[str] = set()
        for intent in self.ledger.unresolved_intents(self.agent.id):
            self.out.symbols.add(intent.symbol)
            if not intent.sent and self.ledger.release_unsent(intent.client_order_id, FLATTENED):
                continue
            if not self._settle(intent):
                pending.add(intent.symbol)
        return pending

    def _settle(self, intent: Intent, nonce_spent: bool = False) -> bool:
        """Cancel the intent's order if it works, book its fills; False while undecided."""
        coid = intent.client_order_id
        try:
            order = self.client.cancel_order(intent.symbol, client_order_id=coid)
            self.out.cancelled.append(coid)
        except OrderRejected:  # already final, or not on the exchange
            try:
                order = self.client.query_order(intent.symbol, client_order_id=coid)
            except OrderNotFound:
                return self._not_on_exchange(intent, nonce_spent)
        except (TransientExchangeError, UnknownOutcome):
            return False
        return self._finish(intent, order)

    def _not_on_exchange(self, intent: Intent, nonce_spent: bool) -> bool:
        """Write the intent off once its order can never land; False while it still can."""
        left_ms = inflight.sent_ms(intent) + self.write_off_ms - now_ms()
        if intent.sent and not nonce_spent and left_ms > 0:
            return self._spend_nonce(intent) and self._settle(intent, nonce_spent=True)
        if not self.ledger.release(intent.client_order_id, "flatten: not on the exchange"):
            self.ledger.finish_intent(intent.client_order_id, "rejected")
        return True

    def _spend_nonce(self, intent: Intent) -> bool:
        """True once a noop with the intent's nonce was accepted: its order can never land."""
        if not self.noop_resolve or intent.nonce is None:
            return False
        try:
            return self.client.noop(intent.nonce)
        except (OrderRejected, TransientExchangeError, BadRequest):
            return False

    def _finish(self, intent: Intent, order: Order) -> bool:
        if order.status.is_open:
            return False
        if intent.state == "reserved":
            self.ledger.confirm(intent.client_order_id)
        booked = self._book(intent, order)
        if booked != order.executed_qty:
            return False  # a trade not visible yet: look again
        self.ledger.finish_intent(intent.client_order_id, _FINAL.get(order.status, "canceled"))
        return True

    def _book(self, intent: Intent, order: Order) -> Decimal:
        """Book the order's trades; records a Close for a ``close`` intent. Returns the qty."""
        if not order.executed_qty:
            return ZERO
        since = max(0, intent.created_ms - 1000)
        trades = [
            t
            for t in self.client.user_trades(intent.symbol, start_time=since, limit=1000)
            if t.order_id == order.order_id
        ]
        for t in trades:
            self.ledger.book_fill(
                intent.client_order_id,
                trade_id=t.id,
                symbol=t.symbol,
                side=t.side,
                qty=t.qty,
                price=t.price,
                realized_pnl=t.realized_pnl,
                commission=t.commission,
                time_ms=t.time,
            )
        qty = sum((t.qty for t in trades), ZERO)
        listed = any(c.client_order_id == intent.client_order_id for c in self.out.closes)
        if intent.kind == "close" and qty and not listed:
            sign = 1 if intent.side is Side.BUY else -1
            self.out.closes.append(
                Close(
                    self.agent.id,
                    intent.symbol,
                    sign * qty,
                    sum((t.price * t.qty for t in trades), ZERO) / qty,
                    sum((t.realized_pnl for t in trades), ZERO),
                    sum((t.commission for t in trades), ZERO),
                    intent.client_order_id,
                )
            )
        return qty

    # ---------------------------------------------------------------- step 3

    def _close(self, position: LedgerPosition) -> None:
        side = Side.SELL if position.qty > 0 else Side.BUY
        try:
            intent = self.ledger.reserve(
                self.agent.id, position.symbol, side, margin=ZERO, notional=ZERO, kind="close"
            )
        except ReservationDenied:  # the position went meanwhile
            return
        failpoint("flatten_after_reserve")
        nonce = self.client.next_nonce()
        if not self.ledger.mark_sent(intent.client_order_id, nonce=nonce):
            return
        failpoint("flatten_after_mark_sent")
        request = OrderRequest(
            position.symbol,
            side,
            OrderType.MARKET,
            intent.client_order_id,
            quantity=abs(position.qty),
            reduce_only=True,
        )
        try:
            order = self.client.new_order(request, nonce=nonce)
        except OrderRejected as exc:
            self.ledger.release(intent.client_order_id, f"flatten: rejected: {exc.msg}"[:200])
            self.out.notes.append(f"close of {position.symbol} refused: {exc}")
            return
        except (TransientExchangeError, UnknownOutcome):
            return  # the next round resolves it by client order id
        failpoint("flatten_after_send")
        self.ledger.confirm(intent.client_order_id)
        self._finish(intent._replace(state="confirmed"), order)

    # ---------------------------------------------------------------- step 4

    def _cancel_strays(self) -> None:
        """Cancel this agent's orders the exchange still has open (its ids only)."""
        for order in self.client.open_orders():
            if own_order(self.agent.id, order.client_order_id):
                try:
                    self.client.cancel_order(order.symbol, order_id=order.order_id)
                    self.out.cancelled.append(order.client_order_id)
                except OrderRejected:
                    continue


# ---------------------------------------------------------------------- fleet level


def verify(
    client: Exchange,
    user: str,
    agent_ids: Sequence[str],
    symbols: set[str],
    report: FlattenReport,
) -> None:
    """Record any position on ``symbols`` and any order of ``agent_ids`` the exchange still has."""
    for p in client.position_risk():
        if p.symbol in symbols and p.position_amt != 0:
            report.left_positions[f"{user} {p.symbol}"] = p.position_amt
    for o in client.open_orders():
        if any(own_order(a, o.client_order_id) for a in agent_ids):
            report.left_orders.append(o.client_order_id)


def flatten_fleet(
    fleet: FleetConfig,
    state_dir: Path,
    agent_ids: Sequence[str],
    *,
    timeout_s: float = TIMEOUT_S,
) -> FlattenReport:
    """Flatten ``agent_ids`` (all their accounts), then verify each account on the exchange."""
    from aster_agents.agent.clients import make_client
    from aster_agents.ledger import Ledger, SharedBudget

    chosen = [fleet.agent(a) for a in agent_ids]
    report = FlattenReport([])
    with Ledger(state_dir, url=fleet.ledger_url) as ledger:
        for user in sorted({a.exchange.user for a in chosen}):
            mine = [a for a in chosen if a.exchange.user == user]
            budget = SharedBudget(
                state_dir, user=user, url=fleet.ledger_url, group=fleet.portfolio.rate_group
            )
            with make_client(fleet, mine[0], budget=budget) as client:
                done = [Flattener(ledger, client, a).run(timeout_s) for a in mine]
                report.agents += done
                symbols = set().union(*(d.symbols for d in done))
                verify(client, user, [a.id for a in mine], symbols, report)
    return report
