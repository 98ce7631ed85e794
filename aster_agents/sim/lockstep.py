"""One schedule for a replay driven event by event: ``backtest`` in-process, ``sim --lockstep``.

A replay's market time moves in *events*: every ``step_ms`` (a quarter of the recording's
candle: the held price path's steps, so stops trigger where they would at any speed) and
every agent's scan interval, counted in market time from the start. At each event the
market clock moves to its time, the engine settles funding and works resting orders, then
the agents due at that time tick one after another, by agent id (natural order: agent-2
before agent-10). ``replay_events`` is that schedule; ``backtest`` runs it in one process,
and ``Lockstep`` runs it for agent processes over HTTP, so both produce the same trades
(symbol, side, qty, price, market time).

``Lockstep`` is the simulator's side (``sim --market replay --lockstep``). The market clock
stands still between events. Every expected agent asks for its turn
(``POST /sim/lockstep/turn`` with ``agent=ID&scanMs=MS&done=N``), saying which turn it has
finished (``done``: the number of the last turn it was given, 0 for none). Nothing happens
until every expected agent has asked once; then each gets a turn for its start-up, in id
order at the start time (as ``backtest`` starts its runners before the first event), then
the events run. A call returns ``{"turn": N, "time": MS}`` when the turn is the caller's, or
after ``wait_s`` with ``turn: 0`` so the caller can look at its stop signal and ask again.
An agent asking without having finished the turn it holds (it missed the answer, or it
restarted) is given that turn again.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Final

from aster_agents.config.view import natural_key
from aster_agents.sim.engine import ApiError, Engine
from aster_agents.sim.sources import ReplayMarket

TURN_WAIT_S: Final = 2.0  # the longest a turn call is held before it answers "not yet"


def replay_events(
    start: int, end: int, step_ms: int, scans: Sequence[int]
) -> Iterator[tuple[int, tuple[int, ...]]]:
    """``(market time, indexes of the agents due then)`` for every event in ``[start, end]``.

    Agent ``i`` is due at ``start + k * scans[i]``; price steps fall on multiples of
    ``step_ms`` after ``start``. The indexes of one event are in ascending order.
    """
    due = [(start, i) for i in range(len(scans))]
    heapq.heapify(due)
    next_step = (start // step_ms + 1) * step_ms
    while True:
        t = min(due[0][0], next_step) if due else next_step
        if t > end:
            return
        if t == next_step:
            next_step += step_ms
        now: list[int] = []
        while due and due[0][0] == t:
            _, i = heapq.heappop(due)
            now.append(i)
            heapq.heappush(due, (t + scans[i], i))
        yield t, tuple(now)


def step_of(market: ReplayMarket) -> int:
    """A quarter of the recording's finest candle: the held path's price step."""
    return min(s.klines.step_ms for s in market.recording.symbols.values()) // 4


class Lockstep:
    """Hands the market's turns to agent processes, one at a time, in ``replay_events`` order."""

    def __init__(
        self,
        market: ReplayMarket,
        engine: Engine,
        agents: Sequence[str],
        *,
        wait_s: float = TURN_WAIT_S,
    ) -> None:
        if not agents:
            raise ValueError("Lockstep: no agents to wait for")
        self.market = market
        self.engine = engine
        self.agents = tuple(sorted(set(agents), key=natural_key))  # backtest's order
        self.wait_s = wait_s
        self.start_ms = market.start_ms
        self.end_ms = market.end_ms
        self.holder: str | None = None
        self.turns = 0  # turns given so far; the holder's turn is number ``turns``
        self.finished = False
        self._scans: dict[str, int] = {}
        self._queue: deque[str] = deque()
        self._events: Iterator[tuple[int, tuple[int, ...]]] | None = None
        self._cond = threading.Condition()
        market.freeze(self.start_ms)

    # ---- the endpoint -------------------------------------------------------------------

    def turn(self, agent: str, scan_ms: int, done: int = 0) -> dict[str, object]:
        """The caller has finished turn ``done`` (0: none); wait for its next one."""
        if agent not in self.agents:
            raise ApiError(
                -1102,
                f"agent {agent!r} is not in this lockstep replay (it runs "
                f"{', '.join(self.agents)}); start the simulator with that agents.d",
            )
        if scan_ms <= 0:
            raise ApiError(-1102, f"scanMs must be a positive number of ms, got {scan_ms}")
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            if self.holder == agent and done == self.turns:
                self._next_turn()
            elif agent not in self._scans:
                self._scans[agent] = scan_ms
                if len(self._scans) == len(self.agents):
                    self._begin()
            while self.holder != agent:
                left = deadline - time.monotonic()
                if left <= 0:
                    return self._answer(False)
                self._cond.wait(left)
            return self._answer(True)

    def status(self, _user: str = "", _params: object = None) -> dict[str, object]:
        """Where the replay is: market time, whose turn it is, who has not asked yet."""
        with self._cond:
            return {
                **self._answer(False),
                "start": self.start_ms,
                "end": self.end_ms,
                "offsetMs": self.market.offset_ms,
                "holder": self.holder,
                "turns": self.turns,
                "waitingFor": [a for a in self.agents if a not in self._scans],
            }

    def _answer(self, turn: bool) -> dict[str, Any]:
        number = self.turns if turn else 0
        return {"turn": number, "time": self.market.now_ms(), "finished": self.finished}

    # ---- the schedule -------------------------------------------------------------------

    def _begin(self) -> None:
        scans = [self._scans[a] for a in self.agents]
        self._events = replay_events(self.start_ms, self.end_ms, step_of(self.market), scans)
        self._queue.extend(self.agents)  # start-up turns, at the start time, by id
        self._next_turn()

    def _next_turn(self) -> None:
        """Give the turn to the next agent due, running the events in between."""
        assert self._events is not None
        self.holder = None
        while not self._queue:
            event = next(self._events, None)
            if event is None:
                self.finished = True
                self._cond.notify_all()
                return
            t, due = event
            with self.engine.lock:
                self.market.freeze(t)
                self.engine.settle_funding()
                self.engine.tick()
            self._queue.extend(self.agents[i] for i in due)
        self.holder = self._queue.popleft()
        self.turns += 1
        self._cond.notify_all()
