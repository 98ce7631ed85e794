"""Library functions behind CLI commands that talk to the exchange (thin CLI, callable API)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from aster_agents.config.keys import resolve_signer
from aster_agents.config.schema import AgentConfig, FleetConfig
from aster_agents.exchange.base import NullBudget, RequestBudget
from aster_agents.exchange.http import AsterClient, RequestLog
from aster_agents.signing import NonceSource, Signer

TOOL_NONCE_SLOT: Final = 63  # one-off CLI calls; running agents get slots 0..62 from the ledger


def make_client(
    fleet: FleetConfig,
    agent: AgentConfig,
    *,
    slot: int = TOOL_NONCE_SLOT,
    budget: RequestBudget | None = None,
    signer: Signer | None = None,
    on_request: Callable[[RequestLog], None] | None = None,
    timeout: float = 10.0,
) -> AsterClient:
    """A signed client for ``agent``'s API wallet (the key is resolved unless given)."""
    return AsterClient(
        agent.exchange.base_url,
        user=agent.exchange.user,
        signer=signer if signer is not None else resolve_signer(fleet, agent),
        nonces=NonceSource(slot),
        budget=budget if budget is not None else NullBudget(),
        agent_id=agent.id,
        on_request=on_request,
        timeout=timeout,
    )


def _budget(state_dir: Path, user: str) -> RequestBudget:
    from aster_agents.ledger import SharedBudget

    return SharedBudget(state_dir, user=user)


def account_snapshot(
    fleet: FleetConfig, agent_id: str, state_dir: Path | None = None
) -> dict[str, Any]:
    """Balances, positions and open orders as the exchange reports them for ``agent_id``."""
    agent = fleet.agent(agent_id)
    budget = _budget(state_dir, agent.exchange.user) if state_dir is not None else None
    with make_client(fleet, agent, budget=budget) as client:
        balances = [asdict(b) for b in client.balances()]
        positions = [asdict(p) for p in client.position_risk() if p.position_amt != 0]
        orders = [asdict(o) for o in client.open_orders()]
    return {
        "agent": agent.id,
        "user": agent.exchange.user,
        "signer": agent.exchange.signer,
        "base_url": agent.exchange.base_url,
        "balances": balances,
        "positions": positions,
        "open_orders": orders,
    }
