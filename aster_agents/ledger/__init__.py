"""The shared ledger: the only package that runs SQL (design.md sections 5 and 6).

``Ledger`` (``core``) is the public face over the use-case modules (``agents``, ``intents``
and ``limits``, ``fills``, ``books``, ``income``, ``audit``, ``history``), which are
functions over a connection; the database itself sits behind the store seam (``backend``:
the protocol, ``sqlite``: the SQLite file, its flock and migrations).

Names are imported on first use (PEP 562) so that the read-only view used by ``status``
does not pay for the read-write ledger, the budgets and the cache.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aster_agents.ledger.budget import SharedBudget
    from aster_agents.ledger.cache import MarketDataCache
    from aster_agents.ledger.core import Ledger
    from aster_agents.ledger.fills import apply_fill
    from aster_agents.ledger.intents import make_client_order_id
    from aster_agents.ledger.liveness import pid_alive
    from aster_agents.ledger.lock import AgentLock
    from aster_agents.ledger.rows import (
        AccountLimits,
        AgentRow,
        AuditEntry,
        Intent,
        LedgerPosition,
    )

_WHERE = {
    "SharedBudget": "budget",
    "MarketDataCache": "cache",
    "Ledger": "core",
    "apply_fill": "fills",
    "make_client_order_id": "intents",
    "pid_alive": "liveness",
    "AgentLock": "lock",
    "AccountLimits": "rows",
    "AgentRow": "rows",
    "AuditEntry": "rows",
    "Intent": "rows",
    "LedgerPosition": "rows",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'aster_agents.ledger' has no attribute {name!r}")
    value = getattr(import_module(f"aster_agents.ledger.{module}"), name)
    globals()[name] = value
    return value
