"""Governance: metrics, rebalancing and the kill switches, over the ledger (design.md 7).

The maths is pure (``metrics``, ``rebalance``); this module reads the ledger, feeds it and
carries out what it returns.

- Weights are allocations: an agent's capital / the account equity the ledger last saw (the
  sum of the sleeves' capital when it saw none). A rebalance moves capital between the
  sleeves of an account through ``Ledger.reallocate`` (units at NAV, one transaction, one
  ``rebalances`` row); the unallocated sleeve is unchanged.
- Scores are Sharpe ratios of NAV per unit over ``lookback_days``; the track record is the
  time from an agent's first snapshot to its last.
- Drawdowns for the kill switches are measured on NAV per unit from the peak since the
  agent's last enable by an operator (``agents enable``), or since its first snapshot; the
  portfolio's on the combined NAV (``metrics.CombinedNav``) since the latest operator enable
  of any agent of the account. So an explicit enable restarts both peaks, and the switch
  does not fire again at once.
- A disabled agent opens nothing (the ledger refuses, the runner does not even ask); its
  open positions keep their protective orders, and its strategy's close signals still close
  them (reducing risk is always allowed). It is never re-enabled automatically, not even by
  a restart of its process.
- Only one process applies a rebalance at a time: ``rebalance --apply`` and the automatic
  rebalance both hold the ledger's rebalance lock (``Ledger.rebalance_lock``), and re-read
  the last rebalance under it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from aster_agents.ledger.history import OPERATOR_ENABLE
from aster_agents.portfolio import metrics
from aster_agents.portfolio.metrics import MS_PER_DAY, CombinedNav, Metrics, NavPoint
from aster_agents.portfolio.rebalance import (
    Candidate,
    Line,
    Policy,
    Proposal,
    Transition,
    iso,
    next_state,
    portfolio_kill,
    propose,
)

if TYPE_CHECKING:
    from aster_agents.config.schema import FleetConfig
    from aster_agents.ledger import AgentRow, Ledger
    from aster_agents.ledger.history import FillRecord
    from aster_agents.ledger.rows import RebalanceRow

ZERO: Final = Decimal(0)
CENT: Final = Decimal("0.01")
# On the runner's clock (market time in a backtest or lockstep replay, wall time live):
PORTFOLIO_CHECK_MS: Final = 30_000  # between a runner's portfolio kill-switch checks
AUTO_CHECK_MS: Final = 60_000  # between a runner's looks at the automatic rebalance


def policy_of(fleet: FleetConfig) -> Policy:
    return Policy.from_config(fleet.portfolio.rebalance)


# ---------------------------------------------------------------------- reading


def nav_points(
    rows: Sequence[tuple[int, float, float | None]], units: Decimal, *, wiped: bool = False
) -> list[NavPoint]:
    """Snapshots as NAV points; a snapshot without NAV is priced at equity / current units.

    Points at or below zero are left out, unless ``wiped``: then a sleeve that lost all its
    capital (a liquidation) shows as NAV 0, which the kill switch must see.
    """
    per_unit = 1 / float(units) if units > 0 else 0.0
    out = []
    for time_ms, equity, nav in rows:
        value = nav if nav is not None else equity * per_unit
        if value > 0:
            out.append(NavPoint(time_ms, equity, value))
        elif wiped and units > 0:
            out.append(NavPoint(time_ms, equity, 0.0))
    return out


class History(Protocol):
    """The ledger's history reads (``Ledger``, or ``ReadOnlyLedger`` for the portfolio view)."""

    def nav_after(
        self, agent_id: str, after_ms: int | None = None
    ) -> list[tuple[int, float, float | None]]: ...

    def fill_records(self, agent_id: str) -> list[FillRecord]: ...


def sleeve_points(ledger: History, row: AgentRow) -> list[NavPoint]:
    return nav_points(ledger.nav_after(row.agent_id), row.units)


def sleeve_fills(ledger: History, agent_id: str) -> list[metrics.Fill]:
    return [metrics.Fill(*f) for f in ledger.fill_records(agent_id)]


def enable_reason(note: str | None, at_ms: int) -> str:
    """The reason recorded by ``agents enable``: its prefix restarts the drawdown peaks."""
    reason = f"{OPERATOR_ENABLE} at {iso(at_ms)}"
    return f"{reason}: {note}" if note else reason


class FleetMetrics(NamedTuple):
    """Per-agent metrics and, per account, the combined figures."""

    agents: Mapping[str, Metrics]
    accounts: Mapping[str, Metrics]

    def to_json(self) -> dict[str, Any]:
        return {
            "agents": {k: m.to_json() for k, m in self.agents.items()},
            "accounts": {k: m.to_json() for k, m in self.accounts.items()},
        }


def fleet_metrics(
    ledger: History, rows: Sequence[AgentRow], *, since_ms: int | None = None
) -> FleetMetrics:
    """Metrics of every sleeve in ``rows`` and of each account, over snapshots >= since_ms.

    ``ledger`` is a ``Ledger`` or a ``ReadOnlyLedger`` (the portfolio view).
    """
    points = {r.agent_id: sleeve_points(ledger, r) for r in rows}
    trades = {r.agent_id: sleeve_fills(ledger, r.agent_id) for r in rows}
    agents = {
        r.agent_id: metrics.compute(points[r.agent_id], trades[r.agent_id], since_ms=since_ms)
        for r in rows
    }
    accounts = {}
    for user in sorted({r.user for r in rows}):
        ids = [r.agent_id for r in rows if r.user == user]
        accounts[user] = metrics.combined(
            {a: points[a] for a in ids}, {a: trades[a] for a in ids}, since_ms=since_ms
        )
    return FleetMetrics(agents, accounts)


# ---------------------------------------------------------------------- review


class SleeveReview(NamedTuple):
    agent_id: str
    user: str
    state: str
    capital: Decimal
    used_margin: Decimal
    metrics: Metrics  # over the lookback
    track_days: float
    drawdown: float  # from the NAV peak since the last operator enable


class AccountReview(NamedTuple):
    user: str
    base: Decimal  # what weights are fractions of
    combined: Metrics  # over the lookback
    drawdown: float  # combined, since the account's last operator enable


class Review(NamedTuple):
    """Everything ``rebalance`` shows: per-sleeve figures, per-account figures, the proposal."""

    now_ms: int
    sleeves: tuple[SleeveReview, ...]
    accounts: tuple[AccountReview, ...]
    proposal: Proposal
    last_rebalance: RebalanceRow | None
    transitions: tuple[Transition, ...] = ()

    def line(self, agent_id: str) -> Line:
        return next(x for x in self.proposal.lines if x.agent_id == agent_id)

    def to_json(self) -> dict[str, Any]:
        sleeves = {s.agent_id: s for s in self.sleeves}
        return {
            "proposal": [_line_json(x, sleeves[x.agent_id]) for x in self.proposal.lines],
            "cooldown_until_ms": self.proposal.cooldown_until_ms,
            "last_rebalance": _rebalance_json(self.last_rebalance),
            "transitions": [t._asdict() for t in self.transitions],
            "metrics": {
                "agents": {
                    s.agent_id: {**s.metrics.to_json(), "drawdown_since_reset": s.drawdown}
                    for s in self.sleeves
                },
                "accounts": {
                    a.user: {**a.combined.to_json(), "drawdown_since_reset": a.drawdown}
                    for a in self.accounts
                },
            },
        }


def _line_json(line: Line, sleeve: SleeveReview) -> dict[str, Any]:
    return {
        "agent": line.agent_id,
        "user": sleeve.user,
        "state": line.state,
        "capital": sleeve.capital,
        "current_weight": line.current,
        "target_weight": line.target,
        "proposed_weight": line.proposed,
        "change": line.change,
        "score": line.score,
        "track_days": round(line.track_days, 4),
        "reason": line.reason,
    }


def _rebalance_json(row: RebalanceRow | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {"id": row.id, "time_ms": row.time_ms, "reason": row.reason}


def used_margin(ledger: Ledger, agent_id: str) -> Decimal:
    return sum((p.margin for p in ledger.positions(agent_id=agent_id)), ZERO)


def review(fleet: FleetConfig, ledger: Ledger, *, now_ms: int) -> Review:
    """Read the ledger and propose; changes nothing."""
    policy = policy_of(fleet)
    rows = ledger.agent_rows()
    since = now_ms - round(policy.lookback_days * MS_PER_DAY)
    resets = ledger.operator_enables([r.agent_id for r in rows])
    sleeves, candidates, accounts = [], [], []
    for user in sorted({r.user for r in rows}):
        group = [r for r in rows if r.user == user]
        base = account_base(ledger, user, group)
        points = {r.agent_id: sleeve_points(ledger, r) for r in group}
        for r in group:
            sleeve = _sleeve(ledger, r, points[r.agent_id], since, resets.get(r.agent_id))
            sleeves.append(sleeve)
            candidates.append(_candidate(fleet, sleeve, base))
        epoch = max((resets[r.agent_id] for r in group if r.agent_id in resets), default=None)
        combined = metrics.combined(points, since_ms=since)
        accounts.append(
            AccountReview(user, base, combined, metrics.combined_drawdown(points, epoch))
        )
    last = ledger.last_rebalance()
    proposal = propose(
        candidates, policy, now_ms=now_ms, last_rebalance_ms=None if last is None else last.time_ms
    )
    return Review(now_ms, tuple(sleeves), tuple(accounts), proposal, last)


def account_base(ledger: Ledger, user: str, group: Sequence[AgentRow]) -> Decimal:
    limits = ledger.account_limits(user)
    if limits is not None and limits.equity is not None and limits.equity > 0:
        return limits.equity
    return sum((r.capital for r in group), ZERO)


def _sleeve(
    ledger: Ledger, row: AgentRow, points: list[NavPoint], since: int, reset: int | None
) -> SleeveReview:
    m = metrics.compute(points, sleeve_fills(ledger, row.agent_id), since_ms=since)
    track = (points[-1].time_ms - points[0].time_ms) / MS_PER_DAY if points else 0.0
    return SleeveReview(
        row.agent_id,
        row.user,
        row.state,
        row.capital,
        used_margin(ledger, row.agent_id),
        m,
        track,
        metrics.drawdown_since(points, reset),
    )


def _candidate(fleet: FleetConfig, s: SleeveReview, base: Decimal) -> Candidate:
    configured = next((a.allocation.capital_pct for a in fleet.agents if a.id == s.agent_id), None)
    weight = float(s.capital / base) if base > 0 else 0.0
    return Candidate(
        agent_id=s.agent_id,
        state=s.state,
        weight=weight,
        configured=configured if configured is not None else weight,
        score=s.metrics.sharpe,
        track_days=s.track_days,
        min_weight=min(weight, float(s.used_margin / base)) if base > 0 else 0.0,
        fixed=None if configured is not None else f"not in {fleet.config_dir}",
    )


# ---------------------------------------------------------------------- kill switches


def kill_switch_transitions(fleet: FleetConfig, ledger: Ledger, *, now_ms: int) -> list[Transition]:
    """What every sleeve's and every account's drawdown calls for (changes nothing).

    A portfolio kill replaces the sleeve's own transition, so the reason names the account.
    """
    policy = policy_of(fleet)
    rv = review(fleet, ledger, now_ms=now_ms)
    found = {}
    for s in rv.sleeves:
        t = next_state(s.agent_id, s.state, s.drawdown, policy)
        if t is not None:
            found[s.agent_id] = t
    for account in rv.accounts:
        states = {s.agent_id: s.state for s in rv.sleeves if s.user == account.user}
        found.update((t.agent_id, t) for t in portfolio_kill(states, account.drawdown, policy))
    return [found[a] for a in sorted(found)]


def apply_transitions(ledger: Ledger, transitions: Sequence[Transition]) -> list[Transition]:
    """Set each new state unless the agent's state changed meanwhile; the applied ones."""
    from aster_agents.logs import logger

    done = []
    for t in transitions:
        if not ledger.set_state(t.agent_id, t.new, t.reason, expect=t.old):
            continue  # someone (an operator, another process) moved it first
        logger.warning("agent {}: {} -> {} ({})", t.agent_id, t.old, t.new, t.reason)
        done.append(t)
    return done


def check_kill_switches(fleet: FleetConfig, ledger: Ledger, *, now_ms: int) -> list[Transition]:
    """Apply what the drawdowns call for, for every agent and account in the ledger."""
    return apply_transitions(ledger, kill_switch_transitions(fleet, ledger, now_ms=now_ms))


# ---------------------------------------------------------------------- applying


def operator_set(
    ledger: Ledger, agent_id: str, *, enabled: bool, note: str | None, now_ms: int
) -> str:
    """``agents enable|disable``: the new state, with a reason naming the operator.

    Enabling sets ``active`` and restarts the drawdown peaks of the agent and its account.
    """
    if enabled:
        reason = enable_reason(note, now_ms)
    else:
        reason = f"disabled by operator at {iso(now_ms)}" + (f": {note}" if note else "")
    ledger.set_state(agent_id, "active" if enabled else "disabled", reason)
    return reason


class Applied(NamedTuple):
    review: Review
    rebalance_id: int | None
    moves: Mapping[str, Decimal]  # agent -> new capital
    message: str


def capital_moves(rv: Review) -> dict[str, Decimal]:
    """New absolute capital per changed agent; each account's moves add up to exactly 0.

    Changes are rounded to the cent, never taking a sleeve below its used margin.
    """
    out: dict[str, Decimal] = {}
    for account in rv.accounts:
        group = [s for s in rv.sleeves if s.user == account.user]
        deltas = _balanced({s.agent_id: _cents(rv, s, account.base) for s in group})
        out.update(
            (s.agent_id, s.capital + deltas[s.agent_id]) for s in group if deltas[s.agent_id]
        )
    return out


def _cents(rv: Review, s: SleeveReview, base: Decimal) -> Decimal:
    delta = (Decimal(repr(rv.line(s.agent_id).change)) * base).quantize(CENT)
    if delta < 0:
        delta = min(ZERO, max(delta, (s.used_margin - s.capital).quantize(CENT, ROUND_CEILING)))
    return delta


def _balanced(deltas: dict[str, Decimal]) -> dict[str, Decimal]:
    """Give the rounding residue to the largest gain, so that the deltas add up to 0."""
    residue = sum(deltas.values(), ZERO)
    gains = [a for a, d in deltas.items() if d > 0]
    if residue == 0 or not gains:
        return deltas if residue == 0 else dict.fromkeys(deltas, ZERO)
    top = max(gains, key=lambda a: (deltas[a], a))
    return {**deltas, top: deltas[top] - residue}


def rebalance_now(fleet: FleetConfig, ledger: Ledger, *, now_ms: int, reason: str) -> Applied:
    """Check the kill switches, then propose and apply in one ledger transaction.

    The caller holds ``Ledger.rebalance_lock``. Nothing is applied during a cooldown or when no
    weight changes.
    """
    transitions = check_kill_switches(fleet, ledger, now_ms=now_ms)
    rv = review(fleet, ledger, now_ms=now_ms)._replace(transitions=tuple(transitions))
    if rv.proposal.blocked:
        until = iso(rv.proposal.cooldown_until_ms or 0)
        return Applied(rv, None, {}, f"nothing applied: cooldown until {until}")
    moves = capital_moves(rv)
    if not moves:
        return Applied(rv, None, {}, "nothing to apply: every weight stays as it is")
    detail = {
        "moves": {a: {"from": _capital(rv, a), "to": c} for a, c in moves.items()},
        "weights": {x.agent_id: [x.current, x.proposed] for x in rv.proposal.changes},
    }
    rid = ledger.reallocate(moves, reason=reason, detail=detail, time_ms=now_ms)
    return Applied(rv, rid, moves, f"applied rebalance {rid}: {len(moves)} sleeve(s) moved")


def _capital(rv: Review, agent_id: str) -> Decimal:
    return next(s.capital for s in rv.sleeves if s.agent_id == agent_id)


def auto_rebalance(fleet: FleetConfig, ledger: Ledger, *, now_ms: int) -> Applied | None:
    """The automatic rebalance when it is due; None when not due or another process is on it.

    Due when ``rebalance.enabled``, ``interval_minutes`` is set and both the last applied
    rebalance and the last attempt on this host (the rebalance lock's stamp) are older than
    the interval.
    """
    config = fleet.portfolio.rebalance
    if not config.enabled or config.interval_minutes is None:
        return None
    interval = round(config.interval_minutes * 60_000)
    with ledger.rebalance_lock(wait=False) as held:
        if held is None or now_ms - held.stamp() < interval:
            return None
        last = ledger.last_rebalance()
        if last is not None and now_ms - last.time_ms < interval:
            return None
        held.set_stamp(now_ms)
        return rebalance_now(fleet, ledger, now_ms=now_ms, reason="automatic rebalance")


# ---------------------------------------------------------------------- the runner's hook


class _Peak:
    """An agent's NAV peak since its reset time, fed snapshot by snapshot."""

    def __init__(self, since_ms: int | None) -> None:
        self.since_ms = since_ms
        self.last_ms = -1 if since_ms is None else since_ms - 1
        self.peak = 0.0
        self.nav = 0.0

    def feed(self, points: Sequence[NavPoint]) -> float:
        for p in points:
            self.peak, self.nav, self.last_ms = max(self.peak, p.nav), p.nav, p.time_ms
        return min(1.0, (self.peak - self.nav) / self.peak) if self.peak > 0 else 0.0


class Sleeve(Protocol):
    """What the kill switches read of an agent: an ``AgentRow``, or the lighter
    ``SleeveState`` the account's check reads for every agent of the account each tick."""

    @property
    def agent_id(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def state_reason(self) -> str | None: ...

    @property
    def units(self) -> Decimal: ...


NavRows = list[tuple[int, float, float | None]]


class NavReads(Protocol):
    def nav_after(self, agent_id: str, after_ms: int | None = None) -> NavRows: ...


class _TickReads:
    """One tick's equity reads: the agent's own kill switch and the account's both read the
    agent's new snapshots, so the first read serves the second.

    ``nav_after`` is "snapshots with time > after_ms, by time then insertion": those after a
    later time are the tail of an earlier read's rows, as long as nothing was written to
    ``equity`` between the reads (a governor writes only states within a tick).
    """

    def __init__(self, ledger: NavReads) -> None:
        self.ledger = ledger
        self.read: tuple[str, int, NavRows] | None = None

    def nav_after(self, agent_id: str, after_ms: int | None = None) -> NavRows:
        after = -1 if after_ms is None else after_ms
        read = self.read
        if read is not None and read[0] == agent_id and read[1] <= after:
            return [r for r in read[2] if r[0] > after] if read[1] < after else read[2]
        rows = self.ledger.nav_after(agent_id, after)
        self.read = (agent_id, after, rows)
        return rows


class _Account:
    """The account's combined NAV since its reset time, fed snapshot by snapshot."""

    def __init__(self, since_ms: int | None) -> None:
        self.since_ms = since_ms
        self.nav = CombinedNav()
        self.last_ms: dict[str, int] = {}

    def feed(self, ledger: NavReads, rows: Sequence[Sleeve]) -> float:
        events = []
        for r in rows:
            after = self.last_ms.get(r.agent_id, -1 if self.since_ms is None else self.since_ms - 1)
            for p in nav_points(ledger.nav_after(r.agent_id, after), r.units):
                events.append((p.time_ms, r.agent_id, p))
        for time_ms, agent_id, p in sorted(events):
            self.nav.add(agent_id, p)
            self.last_ms[agent_id] = time_ms
        return self.nav.drawdown


class Governor:
    """One agent process's share of governance, called once per tick after the snapshot.

    Checks the agent's own kill switch every tick (one row and the new snapshots), the
    account's every ``PORTFOLIO_CHECK_MS`` and the automatic rebalance every
    ``AUTO_CHECK_MS``, on the time the runner gives each tick: its clock, so that a backtest
    and a lockstep replay (market time) check at the same market times whatever the speed
    of the machine, as a live agent (wall time) does. Peaks are kept in memory and
    restarted when an operator enables an agent.
    """

    def __init__(self, fleet: FleetConfig, agent_id: str, ledger: Ledger) -> None:
        self.fleet = fleet
        self.agent_id = agent_id
        self.ledger = ledger
        self.policy = policy_of(fleet)
        self._seen: dict[str, tuple[str, str | None]] = {}
        self._peak: _Peak | None = None
        self._account: _Account | None = None
        self._next_portfolio: int | None = None  # the first tick checks
        self._next_auto: int | None = None  # AUTO_CHECK_MS after the first tick

    def after_tick(self, now_ms: int) -> list[Transition]:
        """The transitions applied after the tick at ``now_ms`` (the runner's clock)."""
        row = self.ledger.agent(self.agent_id)
        if row is None:
            return []
        reads = _TickReads(self.ledger)
        done = self._own(row, reads)
        if self._next_portfolio is None or now_ms >= self._next_portfolio:
            self._next_portfolio = now_ms + PORTFOLIO_CHECK_MS
            done += self._portfolio(row.user, reads)
        if self._next_auto is None:
            self._next_auto = now_ms + AUTO_CHECK_MS
        elif now_ms >= self._next_auto:
            self._next_auto = now_ms + AUTO_CHECK_MS
            self._auto(now_ms)
        return done

    def _reset_at(self, agent_ids: Sequence[str]) -> int | None:
        resets = self.ledger.operator_enables(agent_ids)
        return max(resets.values(), default=None)

    def _enabled_now(self, row: Sleeve) -> bool:
        """True when an operator enabled the agent since we last looked."""
        key = (row.state, row.state_reason)
        before = self._seen.get(row.agent_id)
        self._seen[row.agent_id] = key
        reason = row.state_reason or ""
        return before is not None and before != key and reason.startswith(OPERATOR_ENABLE)

    def _own(self, row: AgentRow, reads: NavReads) -> list[Transition]:
        if self._peak is None and row.state == "disabled":
            from aster_agents.logs import logger

            logger.warning(
                "agent {} is disabled ({}): it opens nothing until `aster-agent agents enable "
                "--id {}`",
                row.agent_id,
                row.state_reason or "no reason recorded",
                row.agent_id,
            )
        if self._enabled_now(row) or self._peak is None:
            self._peak = _Peak(self._reset_at([row.agent_id]))
            self._account = None  # the account's peak restarts with it
        if row.state == "disabled":
            return []
        points = reads.nav_after(row.agent_id, self._peak.last_ms)
        drawdown = self._peak.feed(nav_points(points, row.units, wiped=True))
        t = next_state(row.agent_id, row.state, drawdown, self.policy)
        return apply_transitions(self.ledger, [t]) if t else []

    def _portfolio(self, user: str, reads: NavReads) -> list[Transition]:
        rows = self.ledger.sleeve_states(user)
        fresh = [self._enabled_now(r) for r in rows if r.agent_id != self.agent_id]
        if any(fresh) or self._account is None:
            self._account = _Account(self._reset_at([r.agent_id for r in rows]))
        drawdown = self._account.feed(reads, rows)
        states = {r.agent_id: r.state for r in rows}
        kills = portfolio_kill(states, drawdown, self.policy)
        return apply_transitions(self.ledger, kills) if kills else []

    def _auto(self, now_ms: int) -> None:
        applied = auto_rebalance(self.fleet, self.ledger, now_ms=now_ms)
        if applied is not None and applied.rebalance_id is not None:
            from aster_agents.logs import logger

            logger.info("{}", applied.message)
