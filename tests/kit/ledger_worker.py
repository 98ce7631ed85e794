"""A ledger worker process for the chaos test and the benchmark, and the independent checker.

Run as ``python -m tests.kit.ledger_worker STATE_DIR JOURNAL AGENT USER SYMBOLS ...``. The worker
hammers reserve/confirm/release/book_fill/close for its agent and appends one line per step to
an ``O_APPEND`` journal *outside* the ledger: ``A`` right after a granted ``open`` reservation
returns, ``B`` right before the call that gives the slot back (release or the closing fill).
``[A, B]`` is therefore inside the real holding interval, so overlaps found in the journal
are real limit violations, whatever the ledger itself believes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from aster_agents.errors import ReservationDenied
from aster_agents.ledger import AgentLock, Ledger
from aster_agents.models import Side

MARGIN = Decimal(10)
NOTIONAL = Decimal(50)
PRICE = Decimal(50)


class Journal:
    """One ``O_APPEND`` file shared by all workers; each line is written with one write()."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.pid = os.getpid()

    def log(self, event: str, agent: str, user: str, symbol: str, extra: str = "-") -> None:
        line = f"{time.time_ns()} {self.pid} {event} {agent} {user} {symbol} {extra}\n"
        os.write(self.fd, line.encode())


@dataclass
class Worker:
    """One agent's trading loop against the ledger."""

    ledger: Ledger
    journal: Journal
    agent: str
    user: str
    symbols: list[str]
    rng: random.Random
    trade_id: int = field(default=0)

    def next_trade_id(self) -> int:
        self.trade_id += 1
        return os.getpid() * 1_000_000 + self.trade_id

    def recover(self) -> None:
        """Start-up recovery: give back every unresolved intent of this agent."""
        for intent in self.ledger.unresolved_intents(self.agent):
            if intent.kind == "open" and intent.active:
                self.journal.log("B", self.agent, self.user, intent.symbol, "recover")
            self.ledger.release(intent.client_order_id, "recovered at start")

    def fill(self, coid: str, symbol: str, side: Side) -> None:
        self.journal.log("P", self.agent, self.user, symbol, coid)
        self.ledger.book_fill(
            coid,
            trade_id=self.next_trade_id(),
            symbol=symbol,
            side=side,
            qty=Decimal(1),
            price=PRICE,
            realized_pnl=Decimal("0.5"),
            commission=Decimal("0.01"),
            time_ms=int(time.time() * 1000),
        )
        self.journal.log("D", self.agent, self.user, symbol, coid)
        self.ledger.finish_intent(coid, "filled")

    def close_one(self, symbol: str, qty: Decimal) -> None:
        side = Side.SELL if qty > 0 else Side.BUY
        intent = self.ledger.reserve(
            self.agent, symbol, side, margin=Decimal(0), notional=NOTIONAL, kind="close"
        )
        self.ledger.confirm(intent.client_order_id)
        self.journal.log("B", self.agent, self.user, symbol, "close")
        for _ in range(int(abs(qty))):
            self.fill(intent.client_order_id, symbol, side)

    def open_one(self, symbol: str, ttl: float) -> None:
        try:
            intent = self.ledger.reserve(
                self.agent, symbol, Side.BUY, margin=MARGIN, notional=NOTIONAL, ttl_seconds=ttl
            )
        except ReservationDenied:
            self.journal.log("N", self.agent, self.user, symbol)
            return
        self.journal.log(
            "A", self.agent, self.user, symbol, f"{intent.client_order_id}@{intent.expires_ms}"
        )
        if self.rng.random() < 0.5:
            self.journal.log("B", self.agent, self.user, symbol, "release")
            self.ledger.release(intent.client_order_id, "not sent")
        elif self.ledger.confirm(intent.client_order_id):
            self.journal.log("C", self.agent, self.user, symbol, intent.client_order_id)
            self.fill(intent.client_order_id, symbol, Side.BUY)
        else:
            self.journal.log("B", self.agent, self.user, symbol, "reaped")
            self.ledger.release(intent.client_order_id, "expired before confirm")

    def step(self, ttl: float) -> None:
        held = {p.symbol: p.qty for p in self.ledger.positions(agent_id=self.agent)}
        if held and self.rng.random() < 0.5:
            symbol = self.rng.choice(sorted(held))
            self.close_one(symbol, held[symbol])
            return
        free = [s for s in self.symbols if s not in held]
        if free:
            self.open_one(self.rng.choice(free), ttl)


def run_chaos(args: argparse.Namespace) -> None:
    state = Path(args.state_dir)
    with AgentLock(state, args.agent):
        ledger = Ledger(state)
        worker = Worker(
            ledger,
            Journal(Path(args.journal)),
            args.agent,
            args.user,
            args.symbols.split(","),
            random.Random(args.seed),
        )
        worker.recover()
        worker.journal.log("S", args.agent, args.user, "-")
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            worker.step(args.ttl)


def run_bench(args: argparse.Namespace) -> None:
    """Reserve (then mark sent) then release as fast as allowed; write latencies as JSON."""
    ledger = Ledger(Path(args.state_dir))
    journal = Journal(Path(args.journal))
    rng = random.Random(args.seed)
    symbols = args.symbols.split(",")
    latencies: list[int] = []
    holds: list[int] = []
    denied = sent = 0
    # One reservation before the clock starts: a process's first write warms its connection
    # up (on PostgreSQL it compiles the ledger's functions and plans their statements: tens
    # of ms on a loaded machine, once per process), which is not a running agent's latency.
    warm = ledger.reserve(args.agent, symbols[0], Side.BUY, margin=MARGIN, notional=NOTIONAL)
    journal.log("A", args.agent, args.user, symbols[0], f"{warm.client_order_id}@{warm.expires_ms}")
    journal.log("B", args.agent, args.user, symbols[0], "warm-up")
    ledger.release(warm.client_order_id, "warm-up")
    print("ready", flush=True)
    go = Path(args.go_file)
    while not go.exists():  # the benchmark starts every worker at once, after all imports
        time.sleep(0.002)
    start_at = float(go.read_text())
    start_at += rng.uniform(0, args.think_ms / 1000)  # agents tick at random phases
    while time.time() < start_at:
        time.sleep(0.001)
    server = _ServerCpu(getattr(ledger.store, "backend_pid", None))
    cpu_start = time.process_time_ns()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        symbol = rng.choice(symbols)
        t0 = time.perf_counter_ns()
        try:
            intent = ledger.reserve(args.agent, symbol, Side.BUY, margin=MARGIN, notional=NOTIONAL)
        except ReservationDenied:
            denied += 1
            latencies.append(time.perf_counter_ns() - t0)
            continue
        latencies.append(time.perf_counter_ns() - t0)
        holds.append(ledger.store.last_hold_ns)
        journal.log(
            "A", args.agent, args.user, symbol, f"{intent.client_order_id}@{intent.expires_ms}"
        )
        if args.mark_sent and ledger.mark_sent(intent.client_order_id):
            sent += 1  # what an agent does next: the durable write before sending
        if args.think_ms:
            time.sleep(args.think_ms / 1000 * rng.uniform(0.5, 1.5))
        journal.log("B", args.agent, args.user, symbol, "release")
        ledger.release(intent.client_order_id, "bench")
    cpu_ns = time.process_time_ns() - cpu_start
    out: dict[str, object] = {"server_cpu_ns": server.spent_ns()} if server.pid else {}
    out |= {
        "latencies_ns": latencies,
        "holds_ns": holds,
        "denied": denied,
        "sent": sent,
        "cpu_ns": cpu_ns,
    }
    Path(args.out).write_text(json.dumps(out))


class _ServerCpu:
    """CPU time of the PostgreSQL server process serving this worker, read from /proc (the
    server on this machine); ``pid`` is None for SQLite or a server out of reach."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.start = self._now()
        if self.start is None:
            self.pid = None

    def _now(self) -> int | None:
        if self.pid is None:
            return None
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) * 10**9 // os.sysconf("SC_CLK_TCK")

    def spent_ns(self) -> int:
        end = self._now()
        return 0 if end is None or self.start is None else end - self.start


@dataclass(frozen=True)
class Limits:
    max_positions: int
    max_total_positions: int


@dataclass
class CheckResult:
    violations: list[str]
    max_agent: dict[str, int]
    max_account: dict[str, int]
    holds: int


@dataclass
class _Hold:
    start: int
    pid: int
    agent: str
    user: str
    symbol: str
    coid: str
    expires_ns: int
    end: int = 2**63


def _holds(path: Path, kills: list[tuple[int, int]]) -> list[_Hold]:
    """Turn the journal into holding intervals, each ending at the earliest sure end."""
    lines = [line.split(" ") for line in path.read_text().splitlines()]
    confirmed = {parts[6] for parts in lines if parts[2] == "C"}
    open_by_key: dict[tuple[str, str], _Hold] = {}
    holds: list[_Hold] = []
    for t, pid, event, agent, user, symbol, extra in sorted(lines, key=lambda p: int(p[0])):
        key = (agent, symbol)
        if event == "A":
            coid, expires_ms = extra.split("@")
            hold = _Hold(int(t), int(pid), agent, user, symbol, coid, int(expires_ms) * 10**6)
            if coid not in confirmed:
                hold.end = hold.expires_ns
            holds.append(hold)
            open_by_key[key] = hold
        elif event == "B" and key in open_by_key:
            hold = open_by_key.pop(key)
            hold.end = min(hold.end, int(t))
    # A kill's time is read just before the signal is sent, so the dying process may still
    # log a hold after it: every hold of that pid until its next start (``S``: a new process
    # that reused the pid) ends at the kill, and one logged after it has no length at all. Its
    # reservation is in the ledger, but the reaper may free it at any moment (its pid is
    # dead), as for any killed worker's hold.
    starts: dict[int, list[int]] = defaultdict(list)
    for parts in lines:
        if parts[2] == "S":
            starts[int(parts[1])].append(int(parts[0]))
    for kill_ns, kill_pid in kills:
        restart = min((t for t in starts[kill_pid] if t > kill_ns), default=2**63)
        for hold in holds:
            if hold.pid == kill_pid and hold.start < restart:
                hold.end = min(hold.end, max(kill_ns, hold.start))
    return holds


def check_journal(path: Path, kills: list[tuple[int, int]], limits: Limits) -> CheckResult:
    """Replay the journal plus kill times; report every instant a limit was exceeded.

    ``kills`` holds (``time.time_ns()`` just before SIGKILL, pid): that pid's holds end there.
    Reservations never confirmed end at their expiry at the latest (the reaper may free them).
    """
    holds = _holds(path, kills)
    edges = sorted(
        [(h.start, 1, i) for i, h in enumerate(holds)]
        + [(h.end, 0, i) for i, h in enumerate(holds)]
    )
    active: dict[int, _Hold] = {}
    result = CheckResult([], defaultdict(int), defaultdict(int), len(holds))
    for t, is_start, i in edges:
        if not is_start:
            active.pop(i, None)
            continue
        hold = holds[i]
        if hold.end <= hold.start:
            continue
        active[i] = hold
        _check_instant(t, hold, list(active.values()), limits, result)
    return result


def _check_instant(
    t: int, new: _Hold, active: list[_Hold], limits: Limits, result: CheckResult
) -> None:
    mine = {h.symbol for h in active if h.agent == new.agent}
    if sum(1 for h in active if h.agent == new.agent and h.symbol == new.symbol) > 1:
        result.violations.append(f"{t}: {new.agent} holds {new.symbol} twice")
    account = {(h.agent, h.symbol) for h in active if h.user == new.user}
    owners = {h.agent for h in active if h.user == new.user and h.symbol == new.symbol}
    result.max_agent[new.agent] = max(result.max_agent[new.agent], len(mine))
    result.max_account[new.user] = max(result.max_account[new.user], len(account))
    if len(mine) > limits.max_positions:
        result.violations.append(f"{t}: {new.agent} holds {len(mine)} > {limits.max_positions}")
    if len(account) > limits.max_total_positions:
        result.violations.append(
            f"{t}: {new.user} holds {len(account)} > {limits.max_total_positions}"
        )
    if len(owners) > 1:
        result.violations.append(f"{t}: {new.user} {new.symbol} owned by {sorted(owners)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["chaos", "bench"])
    parser.add_argument("state_dir")
    parser.add_argument("journal")
    parser.add_argument("agent")
    parser.add_argument("user")
    parser.add_argument("symbols")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--ttl", type=float, default=2.0)
    parser.add_argument("--think-ms", type=float, default=0.0)
    parser.add_argument("--go-file", default=os.devnull)
    parser.add_argument("--out", default=os.devnull)
    parser.add_argument("--mark-sent", action="store_true")
    args = parser.parse_args(argv)
    (run_chaos if args.mode == "chaos" else run_bench)(args)


if __name__ == "__main__":
    main(sys.argv[1:])
