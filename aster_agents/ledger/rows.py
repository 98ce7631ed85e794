"""Frozen rows the ledger hands out: no sqlite3.Row or dict leaves the package."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from aster_agents.models import Side

INTENT_KINDS: Final = ("open", "close", "protect")
ACTIVE_STATES: Final = ("reserved", "confirmed")
FINAL_STATES: Final = ("released", "expired", "filled", "canceled", "rejected")
AGENT_STATES: Final = ("active", "probation", "disabled")


@dataclass(frozen=True, slots=True)
class Intent:
    """A write-ahead order intent; ``client_order_id`` is sent as ``newClientOrderId``."""

    client_order_id: str
    seq: int
    agent_id: str
    user: str
    symbol: str
    side: Side
    kind: str
    margin: Decimal
    notional: Decimal
    state: str
    pid: int
    created_ms: int
    expires_ms: int
    updated_ms: int
    sent: bool
    reason: str | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True, slots=True)
class LedgerPosition:
    """One agent's signed position on one symbol, as booked from fills."""

    agent_id: str
    user: str
    symbol: str
    qty: Decimal
    entry_price: Decimal
    margin: Decimal
    opened_ms: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class AgentRow:
    """Everything status and portfolio views need about one agent."""

    agent_id: str
    user: str
    nonce_slot: int
    max_positions: int
    enabled: bool
    state: str
    state_reason: str | None
    capital: Decimal
    units: Decimal
    realized_pnl: Decimal
    fees: Decimal
    funding: Decimal
    heartbeat_pid: int | None
    heartbeat_ms: int | None
    heartbeat_error: str | None
    ticks: int
    positions: int
    reserved: int

    @property
    def book_equity(self) -> Decimal:
        """Capital plus realized P&L, minus fees, plus funding (no unrealized P&L)."""
        return self.capital + self.realized_pnl - self.fees + self.funding

    @property
    def nav_per_unit(self) -> Decimal:
        return self.book_equity / self.units if self.units > 0 else Decimal(1)


@dataclass(frozen=True, slots=True)
class AccountLimits:
    """Per-account (``user``) limits shared by all of its agents."""

    user: str
    max_total_positions: int
    max_gross_leverage: Decimal
    equity: Decimal | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One state change, newest first in ``Ledger.audit``."""

    id: int
    time_ms: int
    agent_id: str | None
    event: str
    detail: str
