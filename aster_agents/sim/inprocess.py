"""The project's exchange client wired straight to a simulator in the same process.

``InProcessClient`` is ``AsterClient`` with its request pipeline replaced by a call of the
simulator's route handler: the same parameters, the same JSON documents, the same parsing
into models and the same mapping of error codes, without HTTP, signatures or rate limits.
``backtest`` drives the agents' real runner through it.

History queries (``userTrades``, ``income``) carry a ``startTime`` the runner takes from the
ledger, which keeps its own times on the wall clock. ``wall_to_market`` (set by the driver)
turns such a wall-clock time into the market time the simulator had then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aster_agents.errors import BadRequest
from aster_agents.exchange.http import AsterClient, Params, _Call, _error_for, _fmt
from aster_agents.signing import NonceSource
from aster_agents.sim.engine import ApiError
from aster_agents.sim.server import SimApp

_HISTORY = frozenset({"/fapi/v3/userTrades", "/fapi/v3/income"})


class InProcessClient(AsterClient):
    """An :class:`AsterClient` answering from ``app`` for ``user`` (no network, no keys)."""

    def __init__(
        self,
        app: SimApp,
        user: str,
        *,
        agent_id: str | None = None,
        wall_to_market: Callable[[int], int] | None = None,
    ) -> None:
        super().__init__(
            "http://in-process.invalid",
            user=user,
            signer=None,
            nonces=NonceSource(0),
            agent_id=agent_id,
            max_retries=0,
        )
        self._app = app
        self._wall_to_market = wall_to_market

    def _attempt(self, call: _Call, params: Params, nonce: int | None = None) -> Any:
        route = self._app.routes.get((call.method, call.path))
        where = f"{self._prefix}{call.method} {call.path}"
        if route is None:
            raise BadRequest(f"{where}: the in-process simulator has no such endpoint", None, 404)
        args = {k: _fmt(v) for k, v in params}
        if call.path in _HISTORY and "startTime" in args and self._wall_to_market is not None:
            args["startTime"] = str(self._wall_to_market(int(args["startTime"])))
        try:
            return route.handler((self._user or "") if call.signed else "", args)
        except ApiError as exc:
            raise _error_for(exc.status, exc.code, exc.msg, where) from None
