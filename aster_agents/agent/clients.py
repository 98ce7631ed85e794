"""Library functions behind CLI commands that talk to the exchange (thin CLI, callable API)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from aster_agents.config.keys import resolve_signer
from aster_agents.config.schema import AgentConfig, FleetConfig
from aster_agents.exchange.base import NullBudget, RequestBudget, RequestLog
from aster_agents.exchange.http import AsterClient
from aster_agents.signing import NonceSource, Signer

TOOL_NONCE_SLOT: Final = 63  # one-off CLI calls; running agents get slots 0..62 from the ledger


def make_client(
    fleet: FleetConfig,
    agent: AgentConfig,
    *,
    slot: int = TOOL_NONCE_SLOT,
    budget: RequestBudget | None = None,
    signer: Signer | None = None,
    keyless: bool = False,
    on_request: Callable[[RequestLog], None] | None = None,
    timeout: float = 10.0,
    max_retries: int = 3,
    backoff_base: float = 0.5,
) -> AsterClient:
    """The one client factory (run, reconcile, account, doctor): ``agent``'s API wallet signs.

    The key is resolved from the agent's config unless ``signer`` is given; ``keyless`` builds
    a client for the public endpoints only (doctor, when the key itself is the problem).
    """
    if signer is None and not keyless:
        signer = resolve_signer(fleet, agent)
    return AsterClient(
        agent.exchange.base_url,
        user=agent.exchange.user,
        signer=signer,
        nonces=NonceSource(slot),
        budget=budget if budget is not None else NullBudget(),
        agent_id=agent.id,
        on_request=on_request,
        timeout=timeout,
        max_retries=max_retries,
        backoff_base=backoff_base,
    )


def _budget(fleet: FleetConfig, state_dir: Path, user: str) -> RequestBudget:
    from aster_agents.ledger import SharedBudget

    return SharedBudget(
        state_dir, user=user, url=fleet.ledger_url, group=fleet.portfolio.rate_group
    )


def account_snapshot(
    fleet: FleetConfig, agent_id: str, state_dir: Path | None = None
) -> dict[str, Any]:
    """Balances, positions and open orders as the exchange reports them for ``agent_id``."""
    agent = fleet.agent(agent_id)
    budget = _budget(fleet, state_dir, agent.exchange.user) if state_dir is not None else None
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
