"""The reservation check: every limit an ``open`` must pass, over named rows (design 5.2-5.3).

``reserve`` reads the agent joined with its account's limits (``AgentLimits``), then the
account's held and pending slots, all inside its write transaction; ``denial`` says why an
intent may not be written, or None. Values are the stored text; decimals are parsed here.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final, NamedTuple

from aster_agents.ledger.backend import Conn
from aster_agents.ledger.rows import dec

ZERO: Final = Decimal(0)

# The agent joined with its account's limits, and the next intent seq: ``reserve``'s first read.
AGENT_SQL: Final = (
    "SELECT a.agent_id, a.user, a.enabled, a.max_positions, a.capital, a.realized_pnl, a.fees, "
    "a.funding, c.max_total_positions, c.max_gross_leverage, c.equity, "
    "(SELECT COALESCE(MAX(seq), 0) + 1 FROM intents) "
    "FROM agents a LEFT JOIN accounts c ON c.user = a.user WHERE a.agent_id = ?"
)
_HELD_SQL: Final = "SELECT agent_id, symbol, qty, entry_price, margin FROM positions WHERE user = ?"
_PENDING_SQL: Final = (
    "SELECT agent_id, symbol, margin, notional, margin_booked FROM intents "
    "WHERE state IN ('reserved', 'confirmed') AND kind = 'open' AND user = ?"
)


class AgentLimits(NamedTuple):
    """One row of ``AGENT_SQL``; the account's columns are None when it has no limits."""

    agent_id: str
    user: str
    enabled: int
    max_positions: int
    capital: str
    realized_pnl: str
    fees: str
    funding: str
    max_total_positions: int | None
    max_gross_leverage: str | None
    equity: str | None
    next_seq: int

    @property
    def book_equity(self) -> Decimal:
        return dec(self.capital) + dec(self.realized_pnl) - dec(self.fees) + dec(self.funding)


# The account's open positions and active open intents, as read (stored text). They stay
# plain tuples, unpacked into names where they are used: a named row per position costs more
# than the whole limit check in a busy account.
Held = tuple[str, str, str, str, str]  # agent_id, symbol, qty, entry_price, margin
Pending = tuple[str, str, str, str, int]  # agent_id, symbol, margin, notional, margin_booked


def read_agent(conn: Conn, agent_id: str) -> AgentLimits | None:
    row = conn.execute(AGENT_SQL, (agent_id,)).fetchone()
    return None if row is None else AgentLimits._make(row)


def denial(
    conn: Conn,
    agent: AgentLimits | None,
    symbol: str,
    kind: str,
    margin: Decimal,
    notional: Decimal,
) -> str | None:
    """Why ``agent`` may not reserve ``kind`` on ``symbol`` now, or None if it may."""
    if agent is None:
        return "agent not registered"
    # Both statements are issued before either result is read: one round trip on a store
    # that pipelines (PostgreSQL), no difference on SQLite.
    held = conn.execute(_HELD_SQL, (agent.user,))
    pending = conn.execute(_PENDING_SQL, (agent.user,))
    book = Book(agent, held.fetchall(), pending.fetchall())
    if kind != "open":
        return (
            None if (symbol, agent.agent_id) in book.slots else "agent holds no position on symbol"
        )
    return book.open_denial(symbol, margin, notional)


class Book(NamedTuple):
    """What one reservation check reads, taken inside the write transaction."""

    agent: AgentLimits
    held: list[Held]
    pending: list[Pending]

    @property
    def slots(self) -> set[tuple[str, str]]:
        """(symbol, agent) pairs with a position or an active open intent."""
        return {(symbol, owner) for owner, symbol, _, _, _ in self.held} | {
            (symbol, owner) for owner, symbol, _, _, _ in self.pending
        }

    def open_denial(self, symbol: str, margin: Decimal, notional: Decimal) -> str | None:
        a = self.agent
        if not a.enabled:
            return "agent disabled"
        if a.max_total_positions is None:
            return f"account {a.user} has no limits: set_account_limits first"
        slots = self.slots
        others = sorted(owner for s, owner in slots if s == symbol and owner != a.agent_id)
        if others:
            return f"symbol owned by {others[0]}"
        if (symbol, a.agent_id) not in slots:
            reason = self._slot_denial(slots, a.max_total_positions)
            if reason is not None:
                return reason
        return self._leverage_denial(notional) or self._margin_denial(margin)

    def _slot_denial(self, slots: set[tuple[str, str]], account_max: int) -> str | None:
        a = self.agent
        mine = sum(1 for _, owner in slots if owner == a.agent_id)
        if mine >= a.max_positions:
            return f"agent at max_positions ({mine} open+reserved of {a.max_positions})"
        if len(slots) >= account_max:
            return f"account at max_total_positions ({len(slots)} of {account_max})"
        return None

    def _leverage_denial(self, notional: Decimal) -> str | None:
        a = self.agent
        if a.equity is None or a.max_gross_leverage is None:
            return None
        limit = dec(a.max_gross_leverage) * dec(a.equity)
        gross = sum((abs(dec(qty)) * dec(entry) for _, _, qty, entry, _ in self.held), ZERO)
        gross += sum(
            (dec(notional) for _, _, _, notional, booked in self.pending if not booked), ZERO
        )
        if gross + notional > limit:
            return (
                f"gross notional {gross + notional} would exceed {a.max_gross_leverage}x "
                f"equity ({limit})"
            )
        return None

    def _margin_denial(self, margin: Decimal) -> str | None:
        a = self.agent
        capital = a.book_equity
        me = a.agent_id
        used = sum((dec(m) for owner, _, _, _, m in self.held if owner == me), ZERO)
        used += sum(
            (
                dec(margin)
                for owner, _, margin, _, booked in self.pending
                if owner == me and not booked
            ),
            ZERO,
        )
        if margin > capital - used:
            return f"margin {margin} exceeds free capital {capital - used}"
        return None
