"""``backtest``: the agents' real runner driven in-process over a replayed recording.

Each agent gets an ``AgentRunner`` (strategy, sizing, reservations, protective orders, kill
switches, rebalancing: the code ``aster-agent run`` uses) holding an ``InProcessClient`` on
one simulator engine whose market replays the recording on a simulated clock. The runners
share a throwaway ledger. Time moves in events: every quarter of the recording's candle (the
replay's price steps, so stops trigger where a process run triggers them) and every agent's
scan interval (in market seconds). Strategies see closed klines only: the runner drops the
forming candle and the market never serves a candle after the simulated now.

Agents of different main accounts share nothing but the market (balance, positions, limits
and kill switches are the account's; the in-process client has no rate limit), so with
``jobs`` > 1 groups of them run in forked processes, each part on its own engine and
throwaway ledger, on the schedule of the whole fleet; their books are merged into the result
one process would give. There are more parts than ``jobs`` and they take turns, ``jobs`` at
a time, each turn a slice of market time: agents cost very different CPU (a scalper trades
far more than a swing agent), and parts run whole on ``jobs`` processes would leave a core
idle while the costliest part finished. The automatic rebalance, which moves capital between
accounts, keeps the whole fleet in one process.

The recording keeps its own dates (no shift); the ledger keeps its bookkeeping times on the
wall clock, which the in-process client translates back into market time for the two
history queries that use them.
"""

from __future__ import annotations

import bisect
import gc
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aster_agents.agent.runner import AgentRunner, risk_limits
from aster_agents.config.schema import AgentConfig, FleetConfig
from aster_agents.config.view import natural_key
from aster_agents.errors import AsterAgentsError, ConfigError
from aster_agents.ledger import Ledger, MarketDataCache
from aster_agents.ledger.rows import STATE_DIR_FILE
from aster_agents.logs import logger
from aster_agents.models import Kline
from aster_agents.portfolio.trades import read_trips, totals
from aster_agents.sim.accounts import accounts_from_pairs
from aster_agents.sim.inprocess import InProcessClient
from aster_agents.sim.lockstep import replay_events, step_of
from aster_agents.sim.recording import Recording, load_recording
from aster_agents.sim.server import SimApp, SimConfig
from aster_agents.sim.sources import ReplayMarket
from aster_agents.sim.symbols import SYMBOLS
from aster_agents.strategies import Strategy, attached, get_strategy

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

DEFAULT_BALANCE = Decimal("10000")
PARTS_PER_JOB: Final = 2  # parts per process at once: a costly part is half a process's share
TURNS: Final = 64  # turns per part: the idle tail of a run is one turn of one part
_PASS: Final = b"p"  # a worker's message: my turn is over (+ its CPU s); else its pickled part
_GO: Final = b"g"  # the parent's message: your turn


class MemoryCache(MarketDataCache):
    """The kline cache in a dict, on the simulated clock (one process, no files): candles
    are kept as the parsed objects, with no JSON between the agents that share them."""

    def __init__(self) -> None:  # no directory: nothing to share with other processes
        self._values: dict[str, tuple[int, bytes | str]] = {}
        self._klines: dict[str, tuple[int, list[Kline]]] = {}

    def klines(
        self,
        key: str,
        fresh_until_ms: int,
        fetch: Callable[[], list[Kline]],
        *,
        now_ms: int | None = None,
    ) -> list[Kline]:
        hit = self._klines.get(key)
        if hit is not None and now_ms is not None and now_ms < hit[0]:
            return hit[1]
        value = fetch()
        self._klines[key] = (fresh_until_ms, value)
        return value

    def get_or_fetch(
        self,
        key: str,
        fresh_until_ms: int,
        fetch: Callable[[], bytes | str],
        *,
        now_ms: int | None = None,
    ) -> bytes | str:
        hit = self._values.get(key)
        if hit is not None and now_ms is not None and now_ms < hit[0]:
            return hit[1]
        value = fetch()
        self._values[key] = (fresh_until_ms, value)
        return value


@dataclass(slots=True)
class SimClock:
    """Market time, and what market time it was when the wall clock read a given ms."""

    market: ReplayMarket
    walls: list[int] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)

    def now(self) -> int:
        return self.market.now_ms()

    def move_to(self, t: int) -> None:
        self.market.freeze(t)
        wall = time.time_ns() // 1_000_000
        if self.walls and self.walls[-1] == wall:
            self.marks[-1] = t
        else:
            self.walls.append(wall)
            self.marks.append(t)

    def wall_to_market(self, ms: int) -> int:
        """A ledger time (wall clock) as market time; market times pass unchanged."""
        if ms <= self.now() or not self.walls:
            return ms
        i = bisect.bisect_right(self.walls, ms) - 1
        return self.marks[max(0, i - 1)]  # a step early: never miss a fill of that moment


@dataclass(frozen=True, slots=True)
class BacktestFill:
    time_ms: int
    agent_id: str
    symbol: str
    qty: Decimal  # signed: + buy, - sell
    price: Decimal
    commission: Decimal
    realized_pnl: Decimal
    kind: str | None
    note: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time_ms,
            "agent": self.agent_id,
            "symbol": self.symbol,
            "qty": str(self.qty),
            "price": str(self.price),
            "commission": str(self.commission),
            "realized_pnl": str(self.realized_pnl),
            "kind": self.kind,
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class AgentSummary:
    agent_id: str
    strategy: str
    capital: Decimal
    equity: Decimal
    trips: int
    pnl: Decimal
    fees: Decimal
    funding: Decimal

    def to_json(self) -> dict[str, Any]:
        ret = (self.equity / self.capital - 1) if self.capital else Decimal(0)
        return {
            "agent": self.agent_id,
            "strategy": self.strategy,
            "capital": str(self.capital),
            "equity": str(self.equity),
            "return": f"{ret:.6f}",
            "trips": self.trips,
            "pnl": str(self.pnl),
            "fees": str(self.fees),
            "funding": str(self.funding),
        }


@dataclass(frozen=True, slots=True)
class BacktestResult:
    data_dir: Path
    start_ms: int
    end_ms: int
    agent_ticks: int
    elapsed_s: float
    cpu_s: float  # the CPU time of the processes that ran it (a shared machine's honest figure)
    agents: tuple[AgentSummary, ...]
    fills: tuple[BacktestFill, ...]
    workers: int = 1  # processes that ran it at once (``jobs``)

    def to_json(self) -> dict[str, Any]:
        return {
            "data": str(self.data_dir),
            "from": self.start_ms,
            "to": self.end_ms,
            "agent_ticks": self.agent_ticks,
            "elapsed_s": round(self.elapsed_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "workers": self.workers,
            "agent_ticks_per_s": round(self.agent_ticks / max(self.elapsed_s, 1e-9), 1),
            "agents": [a.to_json() for a in self.agents],
            "fills": [f.to_json() for f in self.fills],
        }


def select_agents(
    fleet: FleetConfig, ids: Sequence[str], recording: Recording
) -> list[AgentConfig]:
    """The enabled agents (or ``ids``) by id, each trading only symbols the recording holds.

    By id (naturally: agent-2 before agent-10): the agents due at one moment tick in this
    order, as under ``sim --lockstep``.
    """
    agents = [fleet.agent(i) for i in ids] if ids else list(fleet.enabled_agents)
    agents.sort(key=lambda a: natural_key(a.id))
    if not agents:
        raise ConfigError(f"{fleet.config_dir}: no enabled agent to backtest")
    for agent in agents:
        missing = [s for s in agent.trading.symbols if s not in recording.symbols]
        if missing:
            raise ConfigError(
                f"{fleet.files.get(agent.id, fleet.config_dir)}: trading.symbols: "
                f"{', '.join(missing)} not in the recording {recording.path} "
                f"(it holds {', '.join(sorted(recording.symbols))})"
            )
    return agents


def run_backtest(
    fleet: FleetConfig,
    data_dir: Path,
    *,
    agent_ids: Sequence[str] = (),
    from_ms: int | None = None,
    to_ms: int | None = None,
    strategies: Mapping[str, Strategy] | None = None,
    balance: Decimal = DEFAULT_BALANCE,
    state_dir: Path | None = None,
    jobs: int = 1,
) -> BacktestResult:
    """Run the agents over the recording in ``data_dir``; ``strategies`` overrides by agent id.

    ``jobs`` > 1 runs independent groups of agents (``independent_groups``) in that many
    processes at once, each on its own engine and throwaway ledger, and merges their books:
    the same fills and summaries as one process gives. A kept ledger (``state_dir``) needs
    one process.
    """
    recording = load_recording(data_dir, frozenset(SYMBOLS))
    agents = select_agents(fleet, agent_ids, recording)
    market = ReplayMarket(recording, reference_ms=recording.start_ms)
    start = market.start_ms if from_ms is None else max(market.genesis_ms, from_ms)
    end = market.end_ms if to_ms is None else min(market.end_ms, to_ms)
    if end <= start:
        raise ConfigError(f"backtest: --from/--to leave nothing of the recording {data_dir}")
    workers = jobs if state_dir is None and _can_fork() else 1
    parts_wanted = workers * PARTS_PER_JOB if workers > 1 else 1
    buckets = share_out(independent_groups(fleet, agents), parts_wanted)
    started = time.perf_counter()
    logger.disable("aster_agents")
    try:
        with _gc_frozen() as freezing:
            plan = _Plan(
                fleet, data_dir, tuple(agents), start, end, strategies or {}, balance, freezing
            )
            if len(buckets) == 1:
                parts = [_run_part(plan, market, buckets[0], state_dir)]
            else:
                parts = _run_forked(plan, market, buckets, min(workers, len(buckets)))
    finally:
        logger.enable("aster_agents")
    elapsed = time.perf_counter() - started
    return _merge(plan, parts, elapsed, min(workers, len(buckets)))


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every part of one backtest shares."""

    fleet: FleetConfig
    data_dir: Path
    agents: tuple[AgentConfig, ...]  # all of them, in tick order
    start: int
    end: int
    strategies: Mapping[str, Strategy]
    balance: Decimal
    freeze_gc: bool  # each part freezes its objects at its start and at every turn


@contextmanager
def _gc_frozen() -> Iterator[bool]:
    """The objects alive now moved out of the cyclic GC's passes (``gc.freeze``), and back
    at the end (the run's objects must then be collectable); yields whether it froze.

    A run keeps what it builds to its end (candles, orders, trades, its books' rows) and
    makes almost no cyclic garbage, yet the GC's full passes walk all of it over and over:
    ~3% of a 2-day run's CPU. Frozen at the start and at every turn of a part, a pass sees
    only the newest objects. A caller that has frozen objects of its own (which the final
    unfreeze would release) gets the plain GC.
    """
    if gc.get_freeze_count():
        yield False
        return
    gc.freeze()  # before any fork, too: the workers' passes leave the parent's pages shared
    try:
        yield True
    finally:
        gc.unfreeze()


@dataclass(frozen=True, slots=True)
class _Part:
    """What one process's share of a backtest booked."""

    ticks: int
    cpu_s: float
    agents: tuple[AgentSummary, ...]
    fills: tuple[tuple[int, BacktestFill], ...]  # (the engine's trade id, the fill)


def independent_groups(fleet: FleetConfig, agents: Sequence[AgentConfig]) -> list[list[str]]:
    """Agent ids that must run on one engine and ledger, in groups that never affect each
    other: one per main account (its agents share balance, positions, limits and kill
    switch), or one for all when the automatic rebalance moves capital between accounts."""
    if fleet.portfolio.rebalance.enabled:
        return [[a.id for a in agents]]
    groups: dict[str, list[str]] = {}
    for agent in agents:
        groups.setdefault(agent.exchange.user.lower(), []).append(agent.id)
    return list(groups.values())


def share_out(groups: Sequence[Sequence[str]], workers: int) -> list[list[str]]:
    """``groups`` dealt to at most ``workers`` buckets, the largest first to the emptiest."""
    buckets: list[list[str]] = [[] for _ in range(max(1, min(workers, len(groups))))]
    for group in sorted(groups, key=len, reverse=True):
        min(buckets, key=len).extend(group)
    return buckets


def usable_cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _can_fork() -> bool:
    """Workers are forked (they inherit the loaded recording and the strategies as they are):
    Linux only, where fork is the safe default."""
    import multiprocessing
    import sys

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _run_part(
    plan: _Plan,
    market: ReplayMarket,
    ids: Sequence[str],
    state_dir: Path | None,
    between: Callable[[], None] | None = None,
) -> _Part:
    """The agents ``ids`` on their own engine and ledger, on the whole plan's schedule;
    ``between`` is called between turns (``TURNS`` slices of market time), if given."""

    def turn() -> None:
        if plan.freeze_gc:
            gc.freeze()
        if between is not None:
            between()

    cpu = time.process_time()
    clock = SimClock(market)
    clock.move_to(plan.start)
    app = SimApp(SimConfig(market="replay", data_dir=plan.data_dir), market=market)
    mine = [a for a in plan.agents if a.id in set(ids)]
    for account in accounts_from_pairs(
        ((a.exchange.user, a.exchange.signer) for a in mine), plan.balance
    ):
        app.add_account(account)
    with tempfile.TemporaryDirectory(prefix="aster-backtest-", dir=scratch_dir()) as tmp:
        books = Path(tmp) if state_dir is None else state_dir
        # kept books are a SQLite file of their own, never the fleet's PostgreSQL ledger
        with Ledger(books, throwaway=state_dir is None, url=STATE_DIR_FILE) as ledger:
            runners = _runners(plan.fleet, mine, app, ledger, clock, plan.strategies)
            if plan.freeze_gc:
                gc.freeze()
            ticks = _drive(app, clock, plan.agents, runners, plan.start, plan.end, turn)
            for runner in {r.agent.exchange.user: r for r in runners}.values():
                runner.note_exchange_equity()  # the books' check of a report: at the end
            summaries, fills = _books(mine, ledger)
    return _Part(ticks, time.process_time() - cpu, summaries, fills)


def _run_forked(
    plan: _Plan, market: ReplayMarket, buckets: Sequence[Sequence[str]], at_once: int
) -> list[_Part]:
    """Each bucket in a forked worker, ``at_once`` of them running at a time (``Turns``);
    this process hands out the turns and collects the parts."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    children: list[tuple[BaseProcess, Connection]] = []
    try:
        for ids in buckets:
            here, there = ctx.Pipe()
            worker = ctx.Process(
                target=_child, args=(there, plan, market, ids, os.getpid()), daemon=True
            )
            worker.start()
            there.close()
            children.append((worker, here))
        return _hand_out_turns(children, at_once)
    finally:
        for child, here in children:
            if child.is_alive():  # it failed here, or it is still at work on a failed run
                child.kill()
            child.join()
            here.close()


def _hand_out_turns(
    children: Sequence[tuple[BaseProcess, Connection]], at_once: int
) -> list[_Part]:
    """Give the workers their turns until each has sent its part (in ``children``'s order);
    a worker's error is raised here, a worker's death is an error naming its exit code."""
    import pickle
    from multiprocessing.connection import wait

    turns = Turns(len(children), at_once)
    for i in turns.begin():
        children[i][1].send_bytes(_GO)
    index = {id(conn): i for i, (_, conn) in enumerate(children)}
    parts: dict[int, _Part] = {}
    while len(parts) < len(children):
        for ready in wait([c for i, (_, c) in enumerate(children) if i not in parts]):
            i = index[id(ready)]
            child, conn = children[i]
            try:
                said = conn.recv_bytes()
            except EOFError:
                child.join()
                raise AsterAgentsError(
                    f"backtest: a worker process died (exit {child.exitcode})"
                ) from None
            after: int | None
            if said[:1] == _PASS:
                after = turns.passed(i, float(said[1:]))
            else:
                status, payload = pickle.loads(said)
                if status != "ok":
                    raise payload
                parts[i] = payload
                after = turns.finished()
            if after is not None:
                children[after][1].send_bytes(_GO)
    return [parts[i] for i in range(len(children))]


class Turns:
    """Which parts run: at most ``at_once`` at a time, the one with the most work left next.

    A part gives up its turn after each of its ``turns`` slices of market time, saying the
    CPU time it has used so far; its work left is that CPU per turn times the turns left (a
    part yet to run comes first: its cost is unknown). Costly parts thus run most of the
    time and cheap ones fill in, so no process idles until the last turns (the costliest
    part first would otherwise finish alone, long after the others).
    """

    def __init__(self, parts: int, at_once: int, turns: int = TURNS) -> None:
        self._turns = turns
        self._done = [0] * parts
        self._cpu = [0.0] * parts
        self._waiting = list(range(parts))
        self._at_once = max(1, at_once)

    def begin(self) -> list[int]:
        """The parts that run first."""
        first = self._waiting[: self._at_once]
        del self._waiting[: self._at_once]
        return first

    def passed(self, part: int, cpu_s: float) -> int:
        """``part`` ended a turn, having used ``cpu_s`` so far: the part to run now."""
        self._done[part] += 1
        self._cpu[part] = cpu_s
        self._waiting.append(part)
        return self._take()

    def finished(self) -> int | None:
        """A part has finished: the part to run in its place, if any waits."""
        return self._take() if self._waiting else None

    def left(self, part: int) -> float:
        """The CPU seconds ``part`` is expected to need still (infinite before it ran)."""
        done = self._done[part]
        if not done:
            return math.inf
        return self._cpu[part] / done * max(self._turns - done, 0)

    def _take(self) -> int:
        part = max(self._waiting, key=self.left)
        self._waiting.remove(part)
        return part


def _child(conn: Any, plan: _Plan, market: ReplayMarket, ids: Sequence[str], parent: int) -> None:
    """A worker: waits for its first turn, runs its part taking turns, sends the part."""
    import pickle

    _die_with_parent(parent)

    def between() -> None:
        conn.send_bytes(_PASS + repr(time.process_time() - cpu).encode())
        conn.recv_bytes()

    try:
        conn.recv_bytes()
        cpu = time.process_time()
        doc: tuple[str, object] = ("ok", _run_part(plan, market, ids, None, between))
    except BaseException as exc:  # handed to the parent, which raises it
        said = exc if _picklable(exc) else AsterAgentsError(f"{type(exc).__name__}: {exc}")
        doc = ("error", said)
    conn.send_bytes(pickle.dumps(doc))
    conn.close()


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux ``PR_SET_PDEATHSIG``):
    a backtest killed by SIGTERM or SIGKILL leaves no worker running on alone."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not glibc/musl Linux: the parent's cleanup only
        return
    if os.getppid() != parent:  # it died before the call: nothing would signal us
        os._exit(1)


def _picklable(exc: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True


def _runners(
    fleet: FleetConfig,
    agents: Sequence[AgentConfig],
    app: SimApp,
    ledger: Ledger,
    clock: SimClock,
    strategies: Mapping[str, Strategy],
) -> list[AgentRunner]:
    cache = MemoryCache()
    runners = []
    for agent in agents:
        ledger.register_agent(
            agent.id, agent.exchange.user, max_positions=agent.trading.max_positions
        )
        strategy = strategies.get(agent.id) or get_strategy(
            agent.trading.strategy, agent.trading.params, seed=_seed(agent.id)
        )
        client = InProcessClient(
            app,
            agent.exchange.user,
            agent_id=agent.id,
            wall_to_market=clock.wall_to_market,
        )
        runner = AgentRunner(
            fleet,
            agent,
            client=client,
            ledger=ledger,
            cache=cache,
            strategy=strategy,
            clock=clock.now,
            market_speed=0.25,  # a kline TTL of one interval: klines are kept until the
        )  # forming candle closes (the runner caps freshness there), one fetch per candle
        with attached(strategy, runner.stop, risk_limits(agent)):
            runner.start()
        runners.append(runner)
    return runners


def scratch_dir() -> str | None:
    """/dev/shm when there is one: a backtest's books need no fsync to reach a disk."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _seed(agent_id: str) -> int:
    import zlib

    return zlib.crc32(agent_id.encode())


def _drive(
    app: SimApp,
    clock: SimClock,
    agents: Sequence[AgentConfig],
    runners: Sequence[AgentRunner],
    start: int,
    end: int,
    between: Callable[[], None],
) -> int:
    """Step market time through the replay's events (``sim/lockstep.py``, the schedule
    ``sim --lockstep`` gives agent processes); returns the agent-ticks run.

    The events are those of all ``agents`` (the whole backtest), also when ``runners`` are
    only some of them: the engine then works resting orders at the same moments as in a
    run of them all. ``between`` is called before the first event of each of ``TURNS``
    slices of market time after the first (a part's turns).
    """
    scans = [int(a.trading.scan_interval_seconds * 1000) for a in agents]
    by_id = {r.agent.id: r for r in runners}
    mine = [by_id.get(a.id) for a in agents]
    every = -(-(end - start + 1) // TURNS)  # ceil: TURNS slices cover [start, end]
    turn_ends = start + every
    ticks = 0
    for t, due in replay_events(start, end, step_of(clock.market), scans):
        if t >= turn_ends:
            between()
            turn_ends = t + every - (t - start) % every
        clock.move_to(t)
        app.engine.settle_funding()
        app.engine.tick()
        for i in due:
            runner = mine[i]
            if runner is not None:
                runner.safe_tick()
                ticks += 1
    return ticks


def _books(
    agents: Sequence[AgentConfig], ledger: Ledger
) -> tuple[tuple[AgentSummary, ...], tuple[tuple[int, BacktestFill], ...]]:
    """Each agent's summary and every fill (with its trade id), from the ledger."""
    sums = totals(read_trips(ledger))
    summaries = []
    for agent in agents:
        row = ledger.agent(agent.id)
        history = ledger.equity_history(agent.id)
        capital = row.capital if row is not None else Decimal(0)
        t = sums.get(agent.id)
        summaries.append(
            AgentSummary(
                agent.id,
                agent.trading.strategy,
                capital,
                history[-1].equity if history else capital,
                t.trips if t is not None else 0,
                t.pnl if t is not None else Decimal(0),
                t.fees if t is not None else Decimal(0),
                t.funding if t is not None else Decimal(0),
            )
        )
    fills = tuple(
        (
            f.trade_id,
            BacktestFill(
                f.time_ms,
                f.agent_id,
                f.symbol,
                f.qty,
                f.price,
                f.commission,
                f.realized_pnl,
                f.kind,
                f.note,
            ),
        )
        for f in ledger.trade_fills()
    )
    return tuple(summaries), fills


def _merge(plan: _Plan, parts: Sequence[_Part], elapsed: float, workers: int) -> BacktestResult:
    """One result from the parts: agents in tick order; fills by time, then agent, then
    trade id (the order one engine gives an agent's fills), so any split gives one order."""
    rank = {a.id: i for i, a in enumerate(plan.agents)}
    summaries = sorted((s for p in parts for s in p.agents), key=lambda s: rank[s.agent_id])
    fills = sorted(
        (f for p in parts for f in p.fills),
        key=lambda f: (f[1].time_ms, rank.get(f[1].agent_id, len(rank)), f[0]),
    )
    return BacktestResult(
        plan.data_dir,
        plan.start,
        plan.end,
        sum(p.ticks for p in parts),
        elapsed,
        sum(p.cpu_s for p in parts),
        tuple(summaries),
        tuple(f for _, f in fills),
        workers,
    )
