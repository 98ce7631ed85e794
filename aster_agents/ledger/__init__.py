"""The shared ledger: the only package that runs SQL (design.md sections 5 and 6)."""

from __future__ import annotations

from aster_agents.ledger.budget import SharedBudget
from aster_agents.ledger.cache import MarketDataCache
from aster_agents.ledger.core import Ledger, apply_fill, make_client_order_id
from aster_agents.ledger.liveness import pid_alive
from aster_agents.ledger.lock import AgentLock
from aster_agents.ledger.rows import AccountLimits, AgentRow, AuditEntry, Intent, LedgerPosition

__all__ = [
    "AccountLimits",
    "AgentLock",
    "AgentRow",
    "AuditEntry",
    "Intent",
    "Ledger",
    "LedgerPosition",
    "MarketDataCache",
    "SharedBudget",
    "apply_fill",
    "make_client_order_id",
    "pid_alive",
]
