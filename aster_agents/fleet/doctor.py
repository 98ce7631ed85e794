"""``aster-agent doctor``: one PASS/WARN/FAIL/SKIP line per thing that must work.

Order: the config (nothing else runs when it is invalid), then per agent the key, the
exchange (reachable, clock, account, position mode, leverage and margin type), then the host
(key file permissions, ledger, supervisord, rate budget). A failed prerequisite turns the
checks that depend on it into SKIP. Nothing here places an order: the only writes to the
exchange are the idempotent leverage and margin-type settings every agent makes at start, and
only on symbols without an open position. Signed requests use the tool nonce slot.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final

from aster_agents.config.schema import is_loopback_url
from aster_agents.errors import (
    AsterAgentsError,
    AuthError,
    ConfigError,
    DepositRequired,
    ExchangeError,
)

if TYPE_CHECKING:
    from aster_agents.config.schema import AgentConfig, FleetConfig
    from aster_agents.exchange.base import Exchange, RequestBudget
    from aster_agents.exchange.http import AsterClient
    from aster_agents.ledger.budget import SharedBudget
    from aster_agents.models import Position
    from aster_agents.signing import Signer

# The V3 nonce window is 60 s (since 2026-07-16), but the older timestamp rule refused
# requests more than 1000 ms ahead of the server (-1021, still seen live in 2026:
# shared/aster-v3-api.md 3.2) and which one the live server applies is an open point; a clock
# off by a second also means NTP is not keeping it and it will drift further. So: FAIL beyond
# 1000 ms, WARN beyond 500 ms.
SKEW_WARN_MS: Final = 500.0
SKEW_FAIL_MS: Final = 1000.0
BUCKET_WARN_USED: Final = 0.9
EXCHANGE_TIMEOUT_S: Final = 5.0
FREE_FAIL_BYTES: Final = 16 << 20  # below this the ledger may fill it within a day
FREE_WARN_BYTES: Final = 256 << 20
MAX_STATE_ENTRIES: Final = 10_000  # a mode check, not a full walk of a huge cache


class Status(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report; ``agent`` is None for fleet- and host-wide checks."""

    agent: str | None
    name: str
    status: Status
    detail: str

    def to_json(self) -> dict[str, object]:
        return {
            "agent": self.agent,
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
        }


Report = Callable[[Check], None]


def classify_skew(skew_ms: float, rtt_ms: float) -> tuple[Status, str]:
    """Status of the local clock's offset from the server (``skew_ms`` > 0: local is ahead).

    The offset is only known to within half the round trip, so the smallest offset consistent
    with the measurement is what is judged: a slow network alone never fails the check.
    """
    margin = rtt_ms / 2
    least = max(0.0, abs(skew_ms) - margin)
    side = "ahead of" if skew_ms > 0 else "behind"
    detail = f"local clock {abs(skew_ms):.0f} ms {side} the server (+/- {margin:.0f} ms)"
    if least > SKEW_FAIL_MS:
        return Status.FAIL, f"{detail}; over {SKEW_FAIL_MS:.0f} ms: fix the clock (enable NTP)"
    if least > SKEW_WARN_MS:
        return Status.WARN, f"{detail}; over {SKEW_WARN_MS:.0f} ms: check NTP"
    return Status.PASS, detail


# ------------------------------------------------------------------------------ entry point


def run_doctor(
    config_dir: str | Path | None,
    *,
    state_dir: str | Path | None = None,
    agent_id: str | None = None,
    env: Mapping[str, str] | None = None,
    report: Report | None = None,
) -> list[Check]:
    """Every check, in order; ``report`` sees each one as soon as it is known.

    ConfigError (exit 2) only for an unknown ``agent_id`` in a valid config.
    """
    checks: list[Check] = []

    def add(check: Check) -> None:
        checks.append(check)
        if report is not None:
            report(check)

    fleet = _config_check(config_dir, add)
    if fleet is None:
        for name in ("agents", "state dir", "ledger", "supervisord", "rate budget"):
            add(Check(None, name, Status.SKIP, "config invalid"))
        return checks
    agents = [fleet.agent(agent_id)] if agent_id is not None else list(fleet.enabled_agents)
    full_env = _environment(fleet, env)
    root_state = fleet.state_dir(state_dir)
    accounts: dict[str, tuple[bool, list[Position]]] = {}
    with _budgets(root_state) as budget_for:
        for agent in agents:
            budget = budget_for(agent.exchange.user)
            AgentChecks(fleet, agent, full_env, budget, add, accounts).run()
    if not agents:
        add(Check(None, "agents", Status.WARN, "no enabled agent to check"))
    _host_checks(fleet, agents, root_state, add)
    return checks


def _config_check(config_dir: str | Path | None, add: Report) -> FleetConfig | None:
    from aster_agents.config.schema import load_fleet

    try:
        fleet = load_fleet(config_dir)
    except ConfigError as exc:
        add(Check(None, "config", Status.FAIL, "\n".join(exc.problems)))
        return None
    enabled = len(fleet.enabled_agents)
    detail = f"{fleet.config_dir}: {len(fleet.agents)} agent(s), {enabled} enabled, valid"
    add(Check(None, "config", Status.PASS, detail))
    return fleet


def _environment(fleet: FleetConfig, env: Mapping[str, str] | None) -> dict[str, str]:
    """The process environment plus ``.env`` next to agents.d, as ``up`` would see it."""
    from aster_agents.fleet.supervisor import load_env_file

    merged = dict(os.environ if env is None else env)
    dotenv = fleet.root / ".env"
    if dotenv.is_file():
        with suppress(ConfigError):  # an unreadable .env shows up as the keys it lacks
            merged.update(load_env_file(dotenv).values)  # as in `up`: the file wins
    return merged


@contextmanager
def _budgets(state_dir: Path) -> Iterator[Callable[[str], RequestBudget]]:
    """The shared budget when a ledger exists (agents may be running), else none at all.

    Doctor never creates a ledger just to spend a few request weights.
    """
    from aster_agents.exchange.base import NullBudget
    from aster_agents.ledger.rows import DB_NAME

    opened: list[SharedBudget] = []

    def budget_for(user: str) -> RequestBudget:
        if not (state_dir / DB_NAME).is_file() or not os.access(state_dir, os.W_OK):
            return NullBudget()
        from aster_agents.ledger import SharedBudget

        try:
            budget = SharedBudget(state_dir, user=user)
        except AsterAgentsError:
            return NullBudget()
        opened.append(budget)
        return budget

    try:
        yield budget_for
    finally:
        for budget in opened:
            budget.close()


# ------------------------------------------------------------------------------ per agent


class AgentChecks:
    """The checks of one agent, each skipped when what it needs has already failed."""

    def __init__(
        self,
        fleet: FleetConfig,
        agent: AgentConfig,
        env: Mapping[str, str],
        budget: RequestBudget,
        add: Report,
        accounts: dict[str, tuple[bool, list[Position]]] | None = None,
    ) -> None:
        self.fleet = fleet
        self.agent = agent
        self.env = env
        self.budget = budget
        self.add = add
        self.accounts = {} if accounts is None else accounts  # shared by a main account's agents

    def check(self, name: str, status: Status, detail: str) -> None:
        self.add(Check(self.agent.id, name, status, detail))

    def run(self) -> None:
        signer = self.key()
        self.model_key()
        with self._client(signer) as client:
            if not self.reachable(client):
                for name in ("clock", "account", "position mode", "leverage and margin"):
                    self.check(name, Status.SKIP, "exchange not reachable")
                return
            if signer is None:
                for name in ("account", "position mode", "leverage and margin"):
                    self.check(name, Status.SKIP, "no usable key")
                return
            if not self.account(client):
                for name in ("position mode", "leverage and margin"):
                    self.check(name, Status.SKIP, "the account cannot be read")
                return
            state = self.account_state(client)
            if state is not None:
                self.position_mode(*state)
                self.leverage_and_margin(client, state[1])

    def account_state(self, client: Exchange) -> tuple[bool, list[Position]] | None:
        """(hedge mode, open positions) of the main account, read once per account per run."""
        user = self.agent.exchange.user.lower()
        if user not in self.accounts:
            try:
                hedge = client.get_position_mode()
                held = [p for p in client.position_risk() if p.position_amt != 0]
            except ExchangeError as exc:
                for name in ("position mode", "leverage and margin"):
                    self.check(name, Status.FAIL, f"cannot read mode and positions: {exc}")
                return None
            self.accounts[user] = (hedge, held)
        return self.accounts[user]

    def _client(self, signer: Signer | None) -> AsterClient:
        from aster_agents.agent.clients import make_client

        return make_client(
            self.fleet,
            self.agent,
            budget=self.budget,
            signer=signer,
            keyless=signer is None,
            timeout=EXCHANGE_TIMEOUT_S,
            max_retries=1,
            backoff_base=0.2,
        )

    def key(self) -> Signer | None:
        from aster_agents.config.keys import resolve_signer

        exchange = self.agent.exchange
        try:
            signer = resolve_signer(self.fleet, self.agent, self.env)
        except ConfigError as exc:
            self.check("key", Status.FAIL, "; ".join(exc.problems))
            return None
        source = (
            f"environment variable {exchange.signer_key_env}"
            if exchange.signer_key_env is not None
            else f"keystore {exchange.signer_keystore}"
        )
        self.check("key", Status.PASS, f"{source} holds the key of signer {signer.address}")
        return signer

    def model_key(self) -> None:
        """llm agents only: the model API key's env var is set (the endpoint is not called)."""
        from aster_agents.config.keys import check_model_key, model_key_env

        name = model_key_env(self.agent)
        if name is None:
            return
        try:
            check_model_key(self.fleet, self.agent, self.env)
        except ConfigError as exc:
            self.check("model key", Status.FAIL, "; ".join(exc.problems))
            return
        self.check("model key", Status.PASS, f"environment variable {name} is set")

    def reachable(self, client: Exchange) -> bool:
        url = self.agent.exchange.base_url
        try:
            before = time.time()
            server_ms = client.server_time()
            after = time.time()
        except ExchangeError as exc:
            self.check("exchange", Status.FAIL, f"{url} did not answer GET /fapi/v3/time: {exc}")
            return False
        rtt_ms = (after - before) * 1000
        self.check("exchange", Status.PASS, f"{url} answered in {rtt_ms:.0f} ms")
        skew_ms = (before + after) / 2 * 1000 - server_ms
        status, detail = classify_skew(skew_ms, rtt_ms)
        if status is not Status.PASS and is_loopback_url(url):
            market = self._market_clock(client, server_ms, (before + after) / 2)
            if market is not None:
                status, detail = Status.SKIP, market
        self.check("clock", status, detail)
        return True

    def _market_clock(self, client: Exchange, server_ms: int, local_s: float) -> str | None:
        """A local simulator's market clock (``--speed``, ``--start-time-ms``), or None.

        Two readings 0.3 s apart: a server clock that runs faster or slower than the wall
        clock, or is hours away from it, is simulated market time, not a wrong local clock.
        """
        time.sleep(0.3)
        try:
            before = time.time()
            later_ms = client.server_time()
            after = time.time()
        except ExchangeError:
            return None
        rate = (later_ms - server_ms) / 1000 / max((before + after) / 2 - local_s, 1e-3)
        hours = abs(later_ms / 1000 - (before + after) / 2) / 3600
        if 0.8 <= rate <= 1.2 and hours < 1:
            return None
        return (
            f"a simulator's market clock (running at about {rate:.0f}x wall time, "
            f"{hours:.1f} h from it): the clock check does not apply; nonces use the wall clock"
        )

    def account(self, client: Exchange) -> bool:
        exchange = self.agent.exchange
        try:
            info = client.account()
        except DepositRequired:
            self.check(
                "account",
                Status.FAIL,
                f"the main wallet has not deposited yet: account {exchange.user} answers -5050 "
                "DEPOSIT_REQUIRED to every signed request; deposit to it first, then run "
                "doctor again",
            )
            return False
        except AuthError as exc:
            self.check(
                "account",
                Status.FAIL,
                f"the exchange refused API wallet {exchange.signer} for account {exchange.user} "
                f"({exc.msg}); authorise it for the main account (see `aster-agent wallet new` "
                "output), or fix exchange.user/signer",
            )
            return False
        except ExchangeError as exc:
            self.check("account", Status.FAIL, f"GET account failed: {exc}")
            return False
        detail = (
            f"{exchange.user} readable by {exchange.signer}: margin balance "
            f"{info.total_margin_balance} USDT, available {info.available_balance}"
        )
        self.check("account", Status.PASS, detail)
        return True

    def position_mode(self, hedge: bool, open_positions: list[Position]) -> None:
        if not hedge:
            self.check("position mode", Status.PASS, "one-way")
        elif open_positions:
            symbols = ", ".join(sorted({p.symbol for p in open_positions}))
            self.check(
                "position mode",
                Status.FAIL,
                f"hedge mode with open positions ({symbols}): agents cannot switch it to "
                "one-way; close them or switch the mode in the web UI",
            )
        else:
            self.check(
                "position mode",
                Status.WARN,
                "hedge mode, no open position: the agent switches it to one-way at start",
            )

    def leverage_and_margin(self, client: Exchange, open_positions: list[Position]) -> None:
        from aster_agents.models import MarginType

        trading = self.agent.trading
        positions = {p.symbol: p for p in open_positions}
        done, capped = [], False
        try:
            for symbol in trading.symbols:
                held = positions.get(symbol)
                if held is not None:  # changing it would move another position's margin
                    done.append(f"{symbol} open at {held.leverage}x, left as is")
                    continue
                got = client.set_leverage(symbol, trading.leverage)
                client.set_margin_type(symbol, MarginType.CROSSED)
                capped = capped or got != trading.leverage
                done.append(f"{symbol} {got}x CROSSED")
        except ExchangeError as exc:
            self.check("leverage and margin", Status.FAIL, f"{symbol}: {exc}")
            return
        detail = ", ".join(done)
        if capped:
            detail += f" (configured {trading.leverage}x: the exchange capped it)"
        self.check("leverage and margin", Status.WARN if capped else Status.PASS, detail)


# ------------------------------------------------------------------------------ host


def _host_checks(
    fleet: FleetConfig, agents: list[AgentConfig], state_dir: Path, add: Report
) -> None:
    add(_key_files(fleet, agents))
    add(_state_dir(state_dir))
    add(_ledger(state_dir, fleet.ledger_url))
    add(_supervisord(state_dir, [a.id for a in agents]))
    add(_rate_budget(state_dir, fleet))


def _key_files(fleet: FleetConfig, agents: list[AgentConfig]) -> Check:
    """Keystores of the checked agents and ``.env`` next to agents.d: 0600 or a warning."""
    from aster_agents.config.keys import loose_permissions

    files = [
        fleet.resolve_path(a.exchange.signer_keystore)
        for a in agents
        if a.exchange.signer_keystore is not None
    ]
    dotenv = fleet.root / ".env"
    files += [dotenv] if dotenv.is_file() else []
    present = [f for f in files if f.is_file()]
    loose = [f for f in present if loose_permissions(f)]
    if loose:
        names = ", ".join(str(f) for f in loose)
        detail = f"readable by group or others: {names}; chmod 600 them"
        return Check(None, "key files", Status.WARN, detail)
    dirs = _key_dir_problems(fleet.root, present)
    if dirs:
        return Check(None, "key files", Status.WARN, "; ".join(dirs))
    if not present:
        return Check(None, "key files", Status.PASS, "no keystore or .env file (keys from env)")
    return Check(None, "key files", Status.PASS, f"{len(present)} file(s), owner-only")


def _key_dir_problems(root: Path, files: list[Path]) -> list[str]:
    """Keystore directories reached through a symlink, or open to group or others."""
    problems: list[str] = []
    for directory in sorted({f.parent for f in files if f.name != ".env"}):
        for part in (directory, *directory.parents):
            if part == root or part in root.parents:
                break
            if part.is_symlink():
                problems.append(f"{part} is a symlink to {part.resolve()}; keep keys in a real dir")
        real = directory.resolve()
        mode = real.stat().st_mode & 0o777
        if mode & 0o077:
            problems.append(f"{real} is mode {mode:o}, open to group or others; chmod 700 it")
    return problems


def _state_dir(state_dir: Path) -> Check:
    """Free space on the state dir's filesystem, and owner-only modes (dirs 0700, files 0600)."""
    from aster_agents.fsutil import free_bytes, free_space

    free = free_bytes(state_dir)
    detail = f"{state_dir}: {free_space(state_dir)}"
    if free is not None and free < FREE_FAIL_BYTES:
        detail += "; agents stop opening positions when it is full: make room"
        return Check(None, "state dir", Status.FAIL, detail)
    loose = _loose_state(state_dir)
    if loose:
        shown = ", ".join(loose[:5]) + (f" and {len(loose) - 5} more" if len(loose) > 5 else "")
        detail += f"; readable by group or others: {shown}; chmod -R go-rwx {state_dir}"
        return Check(None, "state dir", Status.WARN, detail)
    if free is not None and free < FREE_WARN_BYTES:
        return Check(None, "state dir", Status.WARN, detail + "; running low")
    return Check(
        None, "state dir", Status.PASS, detail + ("; owner-only" if state_dir.is_dir() else "")
    )


def _loose_state(state_dir: Path) -> list[str]:
    """Entries of the state dir (itself included) with any group or other permission bit."""
    if not state_dir.is_dir():
        return []
    found: list[str] = []
    for index, path in enumerate([state_dir, *state_dir.rglob("*")]):
        if index > MAX_STATE_ENTRIES:
            break
        with suppress(OSError):
            st = path.lstat()
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                found.append(f"{path.name} {stat.S_IMODE(st.st_mode):o}")
    return found


def _ledger(state_dir: Path, url: str | None) -> Check:
    """A write transaction that changes nothing; never creates the state dir."""
    from aster_agents.ledger.backend import ledger_url
    from aster_agents.ledger.rows import DB_NAME

    if ledger_url(url) is not None:  # the shared PostgreSQL ledger, not the state dir's file
        return _ledger_write(state_dir, url)

    if state_dir.exists() and not state_dir.is_dir():
        detail = f"{state_dir} exists but is not a directory; move it or pass --state-dir"
        return Check(None, "ledger", Status.FAIL, detail)
    if not state_dir.is_dir():
        parent = next((p for p in state_dir.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK | os.X_OK):
            detail = (
                f"{state_dir} missing and {parent} is not writable; create it or pass --state-dir"
            )
            return Check(None, "ledger", Status.FAIL, detail)
        detail = f"{state_dir} does not exist yet (created by the first agent; {parent} writable)"
        return Check(None, "ledger", Status.PASS, detail)
    if not (state_dir / DB_NAME).is_file():
        return _dir_writable(state_dir)
    return _ledger_write(state_dir, None)


def _dir_writable(state_dir: Path) -> Check:
    try:
        with tempfile.TemporaryFile(dir=state_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(None, "ledger", Status.FAIL, f"{state_dir} is not writable: {exc.strerror}")
    return Check(None, "ledger", Status.PASS, f"{state_dir} writable; no ledger yet")


def _ledger_write(state_dir: Path, url: str | None) -> Check:
    from aster_agents.config.view import mask_url
    from aster_agents.errors import LedgerError
    from aster_agents.ledger import Ledger
    from aster_agents.ledger.backend import ledger_url
    from aster_agents.ledger.rows import DB_NAME

    chosen = ledger_url(url)
    path = mask_url(chosen) if chosen is not None else str(state_dir / DB_NAME)
    try:
        ledger = Ledger(state_dir, url=url)
    except (LedgerError, OSError) as exc:
        return Check(None, "ledger", Status.FAIL, f"{path}: {exc}")
    try:
        wait_ms = ledger.check_writable()  # a real write of an unchanged value, committed
    except (LedgerError, OSError) as exc:
        return Check(None, "ledger", Status.FAIL, str(exc))
    finally:
        ledger.close()
    return Check(None, "ledger", Status.PASS, f"{path} writable (lock wait {wait_ms:.1f} ms)")


def _supervisord(state_dir: Path, agent_ids: list[str]) -> Check:
    from aster_agents.fleet.supervisor import Supervisor, SupervisorNotRunning

    supervisor = Supervisor(state_dir)
    if not supervisor.socket.exists():
        detail = f"not running, no socket at {supervisor.socket} (fine for `aster-agent run`)"
        return Check(None, "supervisord", Status.WARN, detail)
    try:
        pid = supervisor.pid()
        states = {p.name: p.state for p in supervisor.processes()}
    except (SupervisorNotRunning, AsterAgentsError) as exc:
        detail = f"{supervisor.socket} exists but supervisord does not answer ({exc}); stale?"
        return Check(None, "supervisord", Status.FAIL, detail)
    shown = ", ".join(f"{a} {states.get(a, 'not configured')}" for a in agent_ids)
    return Check(None, "supervisord", Status.PASS, f"running (pid {pid}); {shown}".rstrip("; "))


def _rate_budget(state_dir: Path, fleet: FleetConfig) -> Check:
    from aster_agents.fleet.view import weight_group
    from aster_agents.ledger.readonly import open_readonly

    try:
        ledger = open_readonly(state_dir, fleet.ledger_url)
    except AsterAgentsError as exc:
        return Check(None, "rate budget", Status.FAIL, str(exc))
    if ledger is None:
        return Check(None, "rate budget", Status.PASS, "no ledger yet: every budget is full")
    with ledger:
        buckets = ledger.buckets()
        pause = ledger.host_pause(group=weight_group(fleet.portfolio.rate_group, ledger))
    levels = ", ".join(f"{b.key} {b.used:.0f}/{b.capacity:.0f} used" for b in buckets)
    levels = levels or "no request made yet"
    if pause is not None:
        until = time.strftime("%H:%M:%S", time.localtime(pause.until_s))
        banned = "418" in pause.reason or "banned" in pause.reason.lower()
        status = Status.FAIL if banned else Status.WARN
        what = "IP banned (418)" if banned else "rate limited (429)"
        detail = f"{what}: every agent paused until {until} ({pause.reason}); {levels}"
        return Check(None, "rate budget", status, detail)
    busy = any(b.used > BUCKET_WARN_USED * b.capacity for b in buckets)
    return Check(None, "rate budget", Status.WARN if busy else Status.PASS, levels)
