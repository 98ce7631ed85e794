"""Whether the exchange answers: the ``exchange_unreachable`` and ``exchange_reachable`` events.

The agent's request hook feeds every attempt to ``Reachability``. An attempt that got no
HTTP answer at all (connection refused, dropped, timed out) starts or extends an outage; any
answer, an error status included, ends it. Once an outage has lasted ``after_s`` the agent
asks the ledger to record ``exchange_unreachable`` for its base URL, and on the first answer
after that ``exchange_reachable``; the ledger writes one row per change however many agents
of the fleet see it (``Ledger.note_exchange_reachability``). Between changes the hook costs
a comparison: nothing is written while requests succeed or while an outage goes on.

The agents record this, not the notifier: they are the ones talking to the exchange, through
whatever network and proxies they use, so the event says what trading saw. An outage is
only seen while an agent sends requests (at least once per tick or start-up retry), so the
event comes within one scan interval after ``after_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aster_agents.errors import AsterAgentsError
from aster_agents.exchange.base import RequestLog
from aster_agents.ledger import Ledger
from aster_agents.logs import logger


class Reachability:
    """Follows request outcomes for one agent and base URL; see the module docstring."""

    def __init__(
        self,
        ledger: Ledger,
        agent_id: str,
        url: str,
        after_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.agent_id = agent_id
        self.url = url
        self.after_s = after_s
        self.clock = clock
        self.down_since: float | None = None
        self.reported = False

    def __call__(self, entry: RequestLog) -> None:
        now = self.clock()
        if entry.status is not None:
            since = self.down_since
            if self.reported and since is not None and not self._note(True, since, now):
                return  # tried again with the next answer
            self.down_since, self.reported = None, False
            return
        if self.down_since is None:
            self.down_since = now
        if not self.reported and now - self.down_since >= self.after_s:
            self.reported = self._note(False, self.down_since, now)

    def _note(self, reachable: bool, since: float, now: float) -> bool:
        """Ask the ledger to record the change; False when the ledger could not be written."""
        try:
            self.ledger.note_exchange_reachability(
                self.agent_id,
                self.url,
                reachable=reachable,
                since_ms=int(since * 1000),
                down_s=now - since,
            )
        except AsterAgentsError as exc:  # the ledger down too: try again with the next request
            logger.warning("could not record that the exchange is {}: {}", _word(reachable), exc)
            return False
        logger.warning(
            "the exchange at {} is {} ({:.0f} s without an answer)",
            self.url,
            _word(reachable),
            now - since,
        )
        return True


def _word(reachable: bool) -> str:
    return "reachable again" if reachable else "unreachable"
