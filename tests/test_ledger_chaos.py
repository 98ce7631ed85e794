"""Chaos test: 12 real worker processes hammer one ledger while this process SIGKILLs them.

The limits are checked from the workers' own ``O_APPEND`` journal and the kill times recorded
here (see ``tests/kit/ledger_worker.py``), never from the ledger's view of itself; afterwards the
ledger must pass its integrity check and its positions must match the booked fills. It runs
on both backends (the SQLite file, and PostgreSQL via ``ASTER_AGENTS_LEDGER_URL``).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.errors import ReservationDenied
from aster_agents.ledger import Ledger, pid_alive
from aster_agents.models import Side
from tests.kit.ledger_worker import Limits, check_journal
from tests.plugins.ledger import ROOT

ACCOUNTS = 3
AGENTS_PER_ACCOUNT = 4
LIMITS = Limits(max_positions=2, max_total_positions=3)
SYMBOLS = "S0,S1,S2,S3"
# The killer goes on until the workers have done this much (however slow the machine is),
# within a generous deadline: the test counts work done, never throughput.
MIN_RESERVATIONS = 300
MIN_KILLS = 30
DEADLINE_SECONDS = 300.0


def _setup(state: Path, accounts: int) -> list[tuple[str, str]]:
    with Ledger(state) as ledger:
        agents = []
        for a in range(accounts):
            user = f"u{a}"
            ledger.set_account_limits(
                user,
                max_total_positions=LIMITS.max_total_positions,
                max_gross_leverage=Decimal(100),
                equity=Decimal(10_000),
            )
            for i in range(AGENTS_PER_ACCOUNT):
                agent = f"w{a}-{i}"
                ledger.register_agent(
                    agent, user, max_positions=LIMITS.max_positions, capital=Decimal(1000)
                )
                agents.append((agent, user))
        ledger.register_agent("probe", "u0", max_positions=1, capital=Decimal(1000))
    return agents


def _start(state: Path, journal: Path, agent: str, user: str, seed: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tests.kit.ledger_worker", "chaos", str(state), str(journal)]
    cmd += [
        agent,
        user,
        SYMBOLS,
        "--seed",
        str(seed),
        "--seconds",
        str(DEADLINE_SECONDS * 2),
        "--ttl",
        "2",
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)


def _kill(proc: subprocess.Popen[bytes], kills: list[tuple[int, int]]) -> None:
    kills.append((time.time_ns(), proc.pid))
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _enough(journal: Path, kills: list[tuple[int, int]]) -> bool:
    """Enough reservations, kills and at least one denial so far, and the account limit was
    reached: some account held ``max_total_positions`` at once (the limits were tight).

    The journal check is a lower bound of the final one: a hold seen open now ends at the
    final kill or later, so an overlap found now is still there at the end.
    """
    with contextlib.suppress(FileNotFoundError):
        data = journal.read_bytes()
        if (
            len(kills) < MIN_KILLS
            or data.count(b" A ") < MIN_RESERVATIONS
            or data.count(b" N ") == 0
        ):
            return False
        reached = check_journal(journal, kills, LIMITS).max_account.values()
        return max(reached, default=0) >= LIMITS.max_total_positions
    return False


def _working(journal: Path) -> set[int]:
    """Pids of the workers that have logged their start (``S``) in the journal."""
    with contextlib.suppress(FileNotFoundError):
        fields = (line.split(b" ") for line in journal.read_bytes().splitlines())
        return {int(f[1]) for f in fields if len(f) > 2 and f[2] == b"S"}
    return set()


def _hammer(
    state: Path, journal: Path, *, accounts: int, started_only: bool
) -> list[tuple[int, int]]:
    """Run the workers, killing and restarting random ones (``started_only``: among those
    that have started) until they have done enough work; return (time_ns, pid) kills."""
    agents = _setup(state, accounts)
    rng = random.Random(1234)
    procs = {
        agent: _start(state, journal, agent, user, i) for i, (agent, user) in enumerate(agents)
    }
    users = dict(agents)
    kills: list[tuple[int, int]] = []
    deadline = time.monotonic() + DEADLINE_SECONDS
    seed = 1000
    # The same kill rate per worker whatever their number: with fewer workers (PostgreSQL)
    # each one gets as long to work between kills as with ACCOUNTS * AGENTS_PER_ACCOUNT.
    pace = ACCOUNTS * AGENTS_PER_ACCOUNT / len(procs)
    while not _enough(journal, kills):
        if time.monotonic() > deadline:
            for proc in procs.values():
                _kill(proc, kills)
            raise AssertionError(
                f"{DEADLINE_SECONDS:.0f} s and not yet {MIN_RESERVATIONS} reservations, "
                f"{MIN_KILLS} kills and a denial ({len(kills)} kills so far)"
            )
        time.sleep(pace * rng.uniform(0.05, 0.3))  # the killer's pacing, not a wait
        ready = sorted(procs)
        if started_only:  # a PostgreSQL worker takes longer to start (psycopg, a connection)
            working = _working(journal)
            ready = [name for name in ready if procs[name].pid in working]
            if not ready:
                continue
        agent = rng.choice(ready)
        proc = procs[agent]
        if proc.poll() is not None:
            raise AssertionError(f"worker {agent} died by itself with code {proc.returncode}")
        _kill(proc, kills)
        seed += 1
        procs[agent] = _start(state, journal, agent, users[agent], seed)
    for proc in procs.values():
        _kill(proc, kills)
    return kills


def _fills_by_position(ledger: Ledger) -> dict[tuple[str, str], Decimal]:
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    rows = ledger.store.conn.execute("SELECT agent_id, symbol, side, qty FROM fills").fetchall()
    for agent, symbol, side, qty in rows:
        totals[(agent, symbol)] += Decimal(qty) if side == "BUY" else -Decimal(qty)
    return {k: v for k, v in totals.items() if v != 0}


def _journal_lines(journal: Path) -> list[list[str]]:
    return [line.split(" ") for line in journal.read_text().splitlines()]


def _assert_no_lost_updates(ledger: Ledger, lines: list[list[str]]) -> None:
    """Every acknowledged reservation and fill is in the ledger; no fill beyond the attempts."""
    conn = ledger.store.conn
    coids = {r[0] for r in conn.execute("SELECT client_order_id FROM intents").fetchall()}
    fills = Counter(r[0] for r in conn.execute("SELECT client_order_id FROM fills").fetchall())
    granted = {p[6].split("@")[0] for p in lines if p[2] == "A"}
    assert granted <= coids, f"acknowledged reservations missing: {sorted(granted - coids)[:5]}"
    done = Counter(p[6] for p in lines if p[2] == "D")
    tried = Counter(p[6] for p in lines if p[2] == "P")
    for coid, n in done.items():
        assert fills[coid] >= n, f"fill of {coid} acknowledged but lost"
    for coid, n in fills.items():
        assert n <= tried[coid], f"{coid} has {n} fills but only {tried[coid]} attempts"


@pytest.mark.slow
def test_killed_workers_never_break_limits_or_the_file(tmp_path: Path, backend: str) -> None:
    """Workers SIGKILLed at random, on each backend: no limit exceeded, nothing lost."""
    state, journal = tmp_path / "state", tmp_path / "journal"
    # PostgreSQL: one account of 4 workers (each step is a dozen round trips to the server;
    # 12 workers on a loaded 2-core machine mostly wait for each other), killed once they
    # have started; the same limits are hammered and the same amount of work is checked.
    pg = backend == "postgresql"
    accounts = 1 if pg else ACCOUNTS
    kills = _hammer(state, journal, accounts=accounts, started_only=pg)
    lines = _journal_lines(journal)

    result = check_journal(journal, kills, LIMITS)
    assert result.violations == [], result.violations[:10]
    assert result.holds >= MIN_RESERVATIONS, f"only {result.holds} reservations"
    assert max(result.max_account.values()) == LIMITS.max_total_positions
    assert sum(1 for p in lines if p[2] == "N") > 0, "no denial: the limits were never tight"
    assert len(kills) >= MIN_KILLS

    # reap_min_age_s=0: the periodic sweep skips reservations younger than 1 s, and the last
    # kills are younger than that; a sweep of every age is what the probe below checks.
    with Ledger(state, reap_min_age_s=0) as ledger:
        assert ledger.integrity_check() == "ok"
        booked = {(p.agent_id, p.symbol): p.qty for p in ledger.positions()}
        assert booked == _fills_by_position(ledger)
        for user in (f"u{a}" for a in range(accounts)):
            held = {(p.agent_id, p.symbol) for p in ledger.positions(user=user)}
            owners = Counter(symbol for _, symbol in held)
            assert all(n == 1 for n in owners.values()), f"{user}: two owners {owners}"
        _assert_no_lost_updates(ledger, lines)
        _assert_dead_reservations_are_reaped(ledger)


def _assert_dead_reservations_are_reaped(ledger: Ledger) -> None:
    """After the next reserve, no reservation of a dead process survives."""
    with contextlib.suppress(ReservationDenied):  # a denial is fine: reaping comes first
        ledger.reserve("probe", "PROBE", Side.BUY, margin=Decimal(1), notional=Decimal(1))
    reserved = ledger.store.conn.execute(
        "SELECT client_order_id, pid FROM intents WHERE state = 'reserved'"
    ).fetchall()
    survivors = [(coid, pid) for coid, pid in reserved if pid != os.getpid() and not pid_alive(pid)]
    assert survivors == []


def test_journal_checker_catches_overlaps(tmp_path: Path) -> None:
    """The independent checker flags slot, account and owner overlaps and honours kills/expiry."""
    journal = tmp_path / "journal"
    far = 10**13
    journal.write_text(
        "\n".join(
            [
                f"100 1 A w1 u0 S0 c1@{far}",
                "101 1 C w1 u0 S0 c1",
                f"110 2 A w2 u0 S0 c2@{far}",  # S0 owned by w1 and w2
                f"120 1 A w1 u0 S1 c3@{far}",
                f"130 1 A w1 u0 S2 c4@{far}",  # w1 holds 3 > 2; account holds 4 > 3
                "140 1 B w1 u0 S2 -",
                f"150 3 A w3 u0 S3 c5@{far}",
                "200 2 B w2 u0 S0 -",
                "1 9 A w9 u1 S0 c9@0",  # expired at once: never overlaps
                "300 9 A w8 u1 S0 c8@99999999",
            ]
        )
        + "\n"
    )
    result = check_journal(journal, [(145, 1)], LIMITS)
    text = "\n".join(result.violations)
    assert "owned by ['w1', 'w2']" in text
    assert "w1 holds 3 > 2" in text
    assert "u0 holds 4 > 3" in text
    assert not any("u1" in v for v in result.violations)
    assert result.max_account["u0"] == 4


def test_journal_checker_ends_a_hold_logged_while_its_writer_was_being_killed(
    tmp_path: Path,
) -> None:
    """A hold logged after the kill time (the signal not yet delivered) ends at the kill; one
    of a later process that reused the pid (after its ``S``) does not."""
    journal = tmp_path / "journal"
    far = 10**13
    journal.write_text(
        "\n".join(
            [
                f"100 1 A w1 u0 S0 c1@{far}",
                f"110 2 A w2 u0 S1 c2@{far}",
                f"131 4 A w4 u0 S3 c4@{far}",  # logged by pid 4 after its kill at 130
                f"140 3 A w3 u0 S2 c3@{far}",  # the kill of pid 4 freed a slot: no excess
                "150 4 S w4 u0 - -",  # a new process with pid 4
                f"160 4 A w4 u0 S4 c6@{far}",  # w4 again: now the account holds 4 > 3
            ]
        )
        + "\n"
    )
    result = check_journal(journal, [(130, 4)], LIMITS)
    assert result.violations == ["160: u0 holds 4 > 3"], result.violations
