"""What ``status`` and ``portfolio`` show, gathered without rendering (and without writing).

``collect_status`` and ``collect_portfolio`` read the config, the ledger (read-only: a
missing ledger means "never started", nothing is created) and, when its socket exists,
supervisord over XML-RPC. Process state comes from supervisord when it answers, otherwise from
the heartbeat and the liveness of its pid. Neither eth_account nor httpx is imported here.

Several hosts (a PostgreSQL ledger): every agent of the ledger is shown, with the host of its
last heartbeat. An agent is local when that host is this one (or it has not run yet and its
config is here); a pid means nothing on another host, so a remote agent is judged by the age
of its heartbeat alone (``remote_view``): RUNNING while fresh, STALE after, STOPPED when
its run ended normally (the agent says so in its heartbeat row as it exits).

JSON (``StatusReport.to_json``/``PortfolioReport.to_json``): money and quantities are decimal
strings, ratios (weights, returns, drawdowns, budget use) and durations in seconds are JSON
numbers, times are epoch milliseconds (integers), absent values are ``null``.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from aster_agents.config.view import natural_key

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from aster_agents.config.view import AgentView, FleetView
    from aster_agents.ledger.readonly import ReadOnlyLedger
    from aster_agents.ledger.rows import AccountBooks, AgentRow, RebalanceRow
    from aster_agents.portfolio import nav as pf

SUPERVISOR_SOCKET: Final = "supervisor.sock"
SUPERVISOR_GROUP: Final = "aster-agents"
SUPERVISOR_TIMEOUT_S: Final = 2.0
MIN_STALE_S: Final = 30.0
NEVER_STARTED: Final = "NEVER STARTED"
LIVE_PROGRAM_STATES: Final = frozenset({"RUNNING", "STARTING", "BACKOFF", "STOPPING"})
FLAGGED_STATES: Final = frozenset(
    {"DOWN", "STALE", "FATAL", "BACKOFF", "EXITED", "UNKNOWN", "RETRYING"}
)
STARTUP_ERROR: Final = "start-up"  # the runner's heartbeat error while it retries start-up


class ProcInfo(NamedTuple):
    """One supervisord program as reported by ``getAllProcessInfo``."""

    name: str
    state: str
    pid: int | None
    uptime_s: float | None
    exitstatus: int = 0


class ProcessView(NamedTuple):
    state: str
    source: str  # "supervisor", "heartbeat", "remote" (another host's heartbeat) or "none"
    pid: int | None
    uptime_s: float | None


class AgentStatus(NamedTuple):
    id: str
    name: str
    enabled: bool
    user: str
    process: ProcessView
    flagged: bool
    strategy: str
    interval: str
    symbols: tuple[str, ...]
    positions: int
    reserved: int
    max_positions: int
    capital_pct: float | None  # None: an agent of another host whose config is not here
    capital: Decimal | None
    equity: Decimal | None
    pnl: Decimal | None
    ledger_state: str | None
    ticks: int
    last_tick_ms: int | None
    last_tick_age_s: float | None
    last_error: str | None
    host: str | None = None  # where it runs (its last heartbeat's host); None: never ran
    local: bool = True  # on this host: pid, uptime and supervisord state are meaningful

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "enabled": self.enabled,
            "user": self.user,
            "host": self.host,
            "local": self.local,
            "state": self.process.state,
            "state_source": self.process.source,
            "flagged": self.flagged,
            "pid": self.process.pid,
            "uptime_s": _round(self.process.uptime_s),
            "strategy": self.strategy,
            "interval": self.interval,
            "symbols": list(self.symbols),
            "positions": self.positions,
            "reserved": self.reserved,
            "max_positions": self.max_positions,
            "capital_pct": self.capital_pct,
            "capital": _str(self.capital),
            "equity": _str(self.equity),
            "pnl": _str(self.pnl),
            "ledger_state": self.ledger_state,
            "ticks": self.ticks,
            "last_tick_ms": self.last_tick_ms,
            "last_tick_age_s": _round(self.last_tick_age_s),
            "last_error": self.last_error,
        }


class AccountStatus(NamedTuple):
    user: str
    balance: Decimal | None
    positions: int
    reserved: int
    max_total_positions: int
    orders_used: float | None
    orders_capacity: float | None
    weight_used: float | None
    weight_capacity: float | None
    paused_until_s: float | None
    pause_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "balance": _str(self.balance),
            "positions": self.positions,
            "reserved": self.reserved,
            "max_total_positions": self.max_total_positions,
            "orders_used_1m": self.orders_used,
            "orders_capacity_1m": self.orders_capacity,
            "weight_used_1m": self.weight_used,
            "weight_capacity_1m": self.weight_capacity,
            "paused_until_ms": None
            if self.paused_until_s is None
            else int(self.paused_until_s * 1000),
            "pause_reason": self.pause_reason,
        }


class StatusReport(NamedTuple):
    generated_ms: int
    state_dir: Path
    ledger_found: bool
    supervisor: bool
    agents: tuple[AgentStatus, ...]
    accounts: tuple[AccountStatus, ...]
    host: str = ""  # this host's name (``ASTER_AGENTS_HOST`` or the system's)
    ledger: str = ""  # where the ledger is: the file, or the URL with its password masked

    def to_json(self) -> dict[str, Any]:
        """The ``status --json`` document (without the ``version`` key ``emit_json`` adds)."""
        return {
            "generated_ms": self.generated_ms,
            "state_dir": str(self.state_dir),
            "host": self.host,
            "ledger": self.ledger,
            "ledger_found": self.ledger_found,
            "supervisor": self.supervisor,
            "agents": [a.to_json() for a in self.agents],
            "accounts": [a.to_json() for a in self.accounts],
        }


class SleeveView(NamedTuple):
    id: str
    name: str
    state: str
    flagged: bool
    ledger_state: str | None
    figures: pf.SleeveFigures
    sparkline: str
    state_reason: str | None = None
    host: str | None = None  # where the agent runs (its last heartbeat's host)

    def to_json(self) -> dict[str, Any]:
        f = self.figures
        return {
            "id": self.id,
            "name": self.name,
            "user": f.user,
            "host": self.host,
            "state": self.state,
            "flagged": self.flagged,
            "ledger_state": self.ledger_state,
            "ledger_state_reason": self.state_reason,
            "capital": str(f.capital),
            "equity": str(f.equity),
            "pnl": str(f.pnl),
            "return": f.ret,
            "weight": f.weight,
            "contribution": f.contribution,
            "sparkline": self.sparkline,
        }


class PortfolioReport(NamedTuple):
    generated_ms: int
    ledger_found: bool
    figures: pf.PortfolioFigures
    sleeves: tuple[SleeveView, ...]
    sparkline: str
    exchange_equity: Decimal | None = None  # last seen by an agent start or reconcile
    exchange_equity_ms: int | None = None
    last_rebalance: RebalanceRow | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``portfolio --json`` document (without the ``version`` key)."""
        f = self.figures
        rb = self.last_rebalance
        gap = None if self.exchange_equity is None else f.equity - self.exchange_equity
        return {
            "generated_ms": self.generated_ms,
            "ledger_found": self.ledger_found,
            "portfolio": {
                "equity": str(f.equity),
                "exchange_equity": _str(self.exchange_equity),
                "exchange_equity_ms": self.exchange_equity_ms,
                "equity_difference": _str(gap),
                "last_rebalance": None
                if rb is None
                else {"id": rb.id, "time_ms": rb.time_ms, "reason": rb.reason},
                "capital": str(f.capital),
                "sleeves_equity": str(f.sleeves_equity),
                "unallocated": _str(f.unallocated),
                "pnl": str(f.pnl),
                "return": f.ret,
                "drawdown": f.drawdown,
                "max_drawdown": f.max_drawdown,
                "sparkline": self.sparkline,
            },
            "agents": [s.to_json() for s in self.sleeves],
        }


def _str(value: Decimal | None) -> str | None:
    from aster_agents.decimals import plain

    return None if value is None else plain(value)


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ----------------------------------------------------------------- process state


def stale_after_s(scan_interval_seconds: float) -> float:
    """A heartbeat older than this means the agent is stuck."""
    return max(3 * scan_interval_seconds, MIN_STALE_S)


def classify(
    proc: ProcInfo | None,
    hb_pid: int | None,
    hb_age_s: float | None,
    stale_s: float,
    pid_alive: bool,
    *,
    stopped: bool = False,
) -> ProcessView:
    """Process state from supervisord if it knows the program, else from the heartbeat.

    ``stopped``: the agent's last run ended normally (Ctrl-C, SIGTERM, `down`): STOPPED, not
    the DOWN of a crash.
    """
    if proc is not None:
        state = proc.state
        if state == "RUNNING" and hb_age_s is not None and hb_age_s > stale_s:
            state = "STALE"
        return ProcessView(state, "supervisor", proc.pid, proc.uptime_s)
    if hb_pid is None or hb_age_s is None:
        return ProcessView(NEVER_STARTED, "none", None, None)
    if not pid_alive:
        if stopped:
            return ProcessView("STOPPED", "heartbeat", None, None)
        return ProcessView("DOWN", "heartbeat", hb_pid, None)
    state = "STALE" if hb_age_s > stale_s else "RUNNING"
    return ProcessView(state, "heartbeat", hb_pid, _proc_uptime_s(hb_pid))


def is_flagged(view: ProcessView, enabled: bool) -> bool:
    """Down or stale agents are flagged; a disabled agent that is down is as expected."""
    if view.state == "STALE":
        return True
    return enabled and view.state in FLAGGED_STATES


def _proc_uptime_s(pid: int) -> float | None:
    """Seconds since ``pid`` started, from /proc (None where /proc is not available)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        start_ticks = int(fields[19])
    except (IndexError, ValueError):
        return None
    return max(0.0, boot_uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def supervisor_processes(state_dir: Path) -> dict[str, ProcInfo] | None:
    """Programs of the ``aster-agents`` group by name, or None if supervisord does not answer."""
    sock = Path(state_dir) / SUPERVISOR_SOCKET
    if not sock.exists():
        return None
    infos = _rpc_process_info(sock)
    if infos is None:
        return None
    out = {}
    for info in infos:
        if info.get("group") != SUPERVISOR_GROUP:
            continue
        pid = int(info.get("pid") or 0) or None
        start, now = int(info.get("start") or 0), int(info.get("now") or 0)
        uptime = float(now - start) if pid and start and now >= start else None
        exitstatus = int(info.get("exitstatus") or 0)
        name, statename = str(info["name"]), str(info["statename"])
        out[name] = ProcInfo(name, statename, pid, uptime, exitstatus)
    return out


def _rpc_process_info(sock: Path) -> list[dict[str, Any]] | None:
    import http.client
    import xmlrpc.client

    from aster_agents.fleet.rpc import supervisor_rpc

    try:
        with supervisor_rpc(sock, SUPERVISOR_TIMEOUT_S) as proxy:
            result = proxy.supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error, http.client.HTTPException):
        return None  # supervisord is down or refuses: the caller falls back to heartbeats
    return list(result) if isinstance(result, list) else None


# ----------------------------------------------------------------- status


def collect_status(
    fleet: FleetView,
    state_dir: Path,
    *,
    now_ms: int | None = None,
    ledger: ReadOnlyLedger | Literal[False] | None = False,
) -> StatusReport:
    """One snapshot of every configured agent, every agent of the ledger and every account;
    writes nothing. ``ledger``: one the caller opened (None: there is none), left open;
    by default the ledger is opened and closed here."""
    from aster_agents.ledger.liveness import host_name

    # models.now_ms's twin: importing models (dataclasses, enums) here would slow ``status``
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    me = host_name()
    procs = supervisor_processes(state_dir)
    with _reading(fleet, state_dir, ledger) as ledger:
        rows = {r.agent_id: r for r in ledger.agent_rows()} if ledger else {}
        latest = ledger.latest_equities() if ledger else {}
        views = {a.id: a for a in fleet.agents}
        views.update({i: placeholder(r) for i, r in rows.items() if i not in views})
        agents = [
            _one_status(views[i], rows.get(i), procs, latest.get(i), state_dir, now, me)
            for i in sorted(views, key=natural_key)
        ]
        accounts = _accounts(fleet, ledger, now, rows.values())
        where = ledger.where if ledger else ""
    return StatusReport(
        now,
        Path(state_dir),
        ledger is not None,
        procs is not None,
        tuple(agents),
        accounts,
        me,
        where,
    )


@contextmanager
def _reading(
    fleet: FleetView, state_dir: Path, given: ReadOnlyLedger | Literal[False] | None
) -> Iterator[ReadOnlyLedger | None]:
    """The caller's ledger (left open), or one opened read-only for this block."""
    if given is not False:
        yield given
        return
    from aster_agents.ledger.readonly import open_readonly

    ledger = open_readonly(state_dir, fleet.ledger_url)
    try:
        yield ledger
    finally:
        if ledger is not None:
            ledger.close()


def placeholder(row: AgentRow) -> AgentView:
    """What is known of an agent whose config lives on another host: the ledger's row."""
    from aster_agents.config.view import (
        DEFAULT_SCAN_SECONDS,
        AgentView,
        AllocationView,
        ExchangeView,
        TradingView,
    )

    return AgentView(
        id=row.agent_id,
        name=row.agent_id,
        enabled=row.enabled,
        exchange=ExchangeView(user=row.user, signer=""),
        trading=TradingView("-", (), "-", DEFAULT_SCAN_SECONDS, row.max_positions),
        allocation=AllocationView(capital_pct=-1.0),  # unknown here (shown as -)
    )


def _one_status(
    agent: AgentView,
    row: AgentRow | None,
    procs: dict[str, ProcInfo] | None,
    latest: tuple[int, Decimal] | None,
    state_dir: Path,
    now: int,
    me: str,
) -> AgentStatus:
    from aster_agents.ledger.liveness import pid_alive
    from aster_agents.ledger.lock import stopped_cleanly

    proc = procs.get(agent.id) if procs is not None else None
    ran_on = row.heartbeat_host if row and row.heartbeat_ms is not None else None
    host = ran_on or agent.host  # where it ran, else where it is meant to
    local = host in (None, me) or (proc is not None and proc.state in LIVE_PROGRAM_STATES)
    hb_pid = row.heartbeat_pid if row else None
    alive = local and hb_pid is not None and proc is None and pid_alive(hb_pid)
    stopped = local and hb_pid is not None and not alive and stopped_cleanly(state_dir, agent.id)
    status = _agent_status(agent, row, proc if local else None, alive, latest, now, stopped=stopped)
    if not local:
        status = remote_status(status, agent, stopped=bool(row and row.heartbeat_stopped))
    reason = exit_reason(proc, state_dir) if local else None
    status = status._replace(host=host or (me if local and row else None), local=local)
    return status._replace(last_error=reason) if reason else status


def remote_status(status: AgentStatus, agent: AgentView, *, stopped: bool = False) -> AgentStatus:
    """An agent whose last heartbeat came from another host: no pid or uptime here, only
    the heartbeat's age (RUNNING while within the stale limit, STALE after), or STOPPED
    when that run ended normally."""
    stale_s = stale_after_s(agent.trading.scan_interval_seconds)
    view = remote_view(status.last_tick_age_s, stale_s, stopped=stopped)
    return status._replace(process=view, flagged=is_flagged(view, agent.enabled))


def remote_view(hb_age_s: float | None, stale_s: float, *, stopped: bool = False) -> ProcessView:
    """``stopped``: the run of the last heartbeat ended normally (it said so in its row)."""
    if hb_age_s is None:
        return ProcessView(NEVER_STARTED, "none", None, None)
    if stopped:
        return ProcessView("STOPPED", "remote", None, None)
    return ProcessView("STALE" if hb_age_s > stale_s else "RUNNING", "remote", None, None)


def exit_reason(proc: ProcInfo | None, state_dir: Path) -> str | None:
    """Why supervisord holds an agent stopped: its exit code 2, 3 or 4, in words."""
    from aster_agents.ledger.lock import lock_holder

    if proc is None or proc.state not in ("EXITED", "BACKOFF", "FATAL") or not proc.exitstatus:
        return None
    if proc.exitstatus == 3:
        holder = lock_holder(state_dir, proc.name)
        where = f" (pid {holder})" if holder else ""
        return f"exit 3: already running outside supervisord{where}; stop that copy, then restart"
    if proc.exitstatus == 2:
        return f"exit 2: bad config or key; see `aster-agent logs --id {proc.name}`"
    if proc.exitstatus == 4:
        return "exit 4: the exchange refused the credentials (API wallet not authorised?)"
    return None


def _agent_status(
    agent: AgentView,
    row: AgentRow | None,
    proc: ProcInfo | None,
    alive: bool,
    latest: tuple[int, Decimal] | None,
    now_ms: int,
    *,
    stopped: bool = False,
) -> AgentStatus:
    hb_ms = row.heartbeat_ms if row else None
    age = None if hb_ms is None else max(0.0, (now_ms - hb_ms) / 1000)
    view = classify(
        proc,
        row.heartbeat_pid if row else None,
        age,
        stale_after_s(agent.trading.scan_interval_seconds),
        alive,
        stopped=stopped,
    )
    error = row.heartbeat_error if row else None
    issue = getattr(agent, "issue", None)  # a validated FleetConfig has none
    if view.state == "RUNNING" and error and error.startswith(STARTUP_ERROR):
        view = view._replace(state="RETRYING")  # alive, but not trading: start-up keeps failing
    equity = latest[1] if latest else (row.book_equity if row else None)
    return AgentStatus(
        id=agent.id,
        name=agent.name,
        enabled=agent.enabled,
        user=agent.exchange.user,
        process=view,
        flagged=bool(issue) or is_flagged(view, agent.enabled),
        strategy=agent.trading.strategy,
        interval=agent.trading.interval,
        symbols=tuple(agent.trading.symbols),
        positions=row.positions if row else 0,
        reserved=row.reserved if row else 0,
        max_positions=agent.trading.max_positions,
        capital_pct=agent.allocation.capital_pct if agent.allocation.capital_pct >= 0 else None,
        capital=row.capital if row else None,
        equity=equity,
        pnl=None if row is None or equity is None else equity - row.capital,  # sleeve P&L
        ledger_state=row.state if row else None,
        ticks=row.ticks if row else 0,
        last_tick_ms=hb_ms,
        last_tick_age_s=age,
        last_error=issue or error,
    )


def _accounts(
    fleet: FleetView,
    ledger: ReadOnlyLedger | None,
    now_ms: int,
    rows: Iterable[AgentRow],
) -> tuple[AccountStatus, ...]:
    rows = list(rows)
    users = list(dict.fromkeys([*(a.exchange.user for a in fleet.agents), *(r.user for r in rows)]))
    limits = ledger.account_limits() if ledger else {}
    positions = ledger.positions() if ledger else []
    buckets = {b.key: b for b in ledger.buckets(now_ms / 1000)} if ledger else {}
    group = weight_group(fleet.portfolio.rate_group, ledger)
    pause = ledger.host_pause(now_ms / 1000, group) if ledger else None
    out = []
    for user in users:
        lim = limits.get(user)
        orders = buckets.get(f"orders1m:{user}")
        weight = buckets.get(f"weight:{group}")
        held = {(p.agent_id, p.symbol) for p in positions if p.user == user}
        out.append(
            AccountStatus(
                user=user,
                balance=lim.equity if lim else None,
                positions=len(held),
                reserved=sum(r.reserved for r in rows if r.user == user),
                max_total_positions=(
                    lim.max_total_positions if lim else fleet.portfolio.limits.max_total_positions
                ),
                orders_used=orders.used if orders else None,
                orders_capacity=orders.capacity if orders else None,
                weight_used=weight.used if weight else None,
                weight_capacity=weight.capacity if weight else None,
                paused_until_s=pause.until_s if pause else None,
                pause_reason=pause.reason if pause else None,
            )
        )
    return tuple(out)


def weight_group(configured: str | None, ledger: ReadOnlyLedger | None) -> str:
    """This host's rate group on ``ledger`` (``configured``: ``rate_group:``): whose weight
    bucket and pause it shares."""
    from aster_agents.ledger.liveness import rate_group

    shared = ledger is not None and ledger.backend != "sqlite"
    return rate_group(configured, shared=shared)


# ----------------------------------------------------------------- portfolio


def collect_portfolio(
    fleet: FleetView,
    state_dir: Path,
    *,
    now_ms: int | None = None,
    points: int = 200,
    status: StatusReport | None = None,
    history: bool = True,
    ledger: ReadOnlyLedger | Literal[False] | None = False,
) -> PortfolioReport:
    """The ETF view: combined and per-sleeve figures over the ledger's equity snapshots.

    ``status`` is a ``collect_status`` taken just before, when the caller has one. With
    ``history=False`` the snapshots are not read: the combined drawdowns are 0 and the
    sparklines empty, every other figure is the same (the exporter follows the snapshots
    itself, incrementally). ``ledger``: as for ``collect_status``.
    """
    from aster_agents.portfolio import nav as pf

    status = status or collect_status(fleet, state_dir, now_ms=now_ms, ledger=ledger)
    with _reading(fleet, state_dir, ledger) as ledger:
        books = _read_books(ledger) if ledger else _Books({}, {}, {}, None)
        rows = books.rows
        histories = (
            {a: ledger.equity_curve(a) for a in rows}
            if ledger and history
            else {a: [] for a in rows}
        )
    inputs = [  # every sleeve of the ledger, whichever host runs it
        pf.SleeveInput(
            a.id, rows[a.id].user, rows[a.id].capital, rows[a.id].units, books.sleeves[a.id]
        )
        for a in status.agents
        if a.id in rows
    ]
    balances: dict[str, Decimal | None] = {a.user: a.balance for a in status.accounts}
    balances.update(books.totals())  # the books: every sleeve at the marks + unallocated
    curves = {i.agent_id: histories[i.agent_id] for i in inputs if histories[i.agent_id]}
    flat = sum((i.equity for i in inputs if not histories[i.agent_id]), Decimal(0))
    combined = pf.combined_series(curves, points, offset=flat)
    figures = pf.aggregate(inputs, balances, combined)
    by_id = {a.id: a for a in status.agents}
    sleeves = tuple(
        SleeveView(
            id=f.agent_id,
            name=by_id[f.agent_id].name,
            state=by_id[f.agent_id].process.state,
            flagged=by_id[f.agent_id].flagged,
            ledger_state=by_id[f.agent_id].ledger_state,
            figures=f,
            sparkline=pf.sparkline([e for _, e in histories[f.agent_id]]),
            state_reason=rows[f.agent_id].state_reason,
            host=by_id[f.agent_id].host,
        )
        for f in figures.sleeves
    )
    users = {i.user for i in inputs}
    seen = [b for u, b in books.accounts.items() if u in users and b.exchange_equity is not None]
    exchange = sum((b.exchange_equity or Decimal(0) for b in seen), Decimal(0)) if seen else None
    return PortfolioReport(
        status.generated_ms,
        status.ledger_found,
        figures,
        sleeves,
        pf.sparkline(combined),
        exchange,
        max((b.exchange_equity_ms or 0 for b in seen), default=None),
        books.last_rebalance,
    )


class _Books(NamedTuple):
    """What the ledger says about every sleeve and account, valued at the recorded marks."""

    rows: dict[str, AgentRow]
    sleeves: dict[str, Decimal]
    accounts: dict[str, AccountBooks]
    last_rebalance: RebalanceRow | None

    def totals(self) -> dict[str, Decimal]:
        """Per account with an unallocated sleeve: sum of its sleeves + unallocated."""
        out: dict[str, Decimal] = {}
        for user, b in self.accounts.items():
            if b.unallocated is None:
                continue
            mine = (e for a, e in self.sleeves.items() if self.rows[a].user == user)
            out[user] = sum(mine, b.unallocated)
        return out


def _read_books(ledger: ReadOnlyLedger) -> _Books:
    from aster_agents.ledger.rows import sleeve_equity

    rows = {r.agent_id: r for r in ledger.agent_rows()}
    positions = ledger.positions()
    marks = ledger.marks()
    sleeves = {a: sleeve_equity(r, positions, marks.get(r.user, {})) for a, r in rows.items()}
    return _Books(rows, sleeves, ledger.account_books(), ledger.last_rebalance())
