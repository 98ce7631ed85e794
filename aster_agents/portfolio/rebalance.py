"""The rebalancing policy and the agent state machine (pure: values in, values out).

Weights are allocations: an agent's capital / the account's equity base. Money only moves
between sleeves: the proposed weights add up to the current ones, so the unallocated sleeve
is unchanged. The rule, applied in this order:

1. **Score**: the Sharpe ratio over ``lookback_days`` (``metrics``). Agents with less than
   ``min_track_record_days`` of snapshots, or without a score (too few points, zero
   variance), keep their weight.
2. **Target**: the weight of the scored agents (plus what disabled agents release) is shared
   in proportion to ``capital_pct x (1 + clip(score, -1, 1))`` (monotone in the score,
   bounded: between 0 and 2x the configured weight), each clamped to ``[floor, cap]`` with
   the excess handed to the others (water-filling). Probation agents cannot gain weight.
   Disabled agents target 0, but never below their used margin (the ledger refuses that).
3. **Hysteresis**: no change when |target - current| < ``hysteresis`` (disabled agents
   excepted: they always release what they can).
4. **Max step**: |change| <= ``max_step`` per rebalance.
5. **Balance**: the side that moves more (gains or losses) is scaled down so gains equal
   losses; every move stays between the current weight and the target, so a weight inside
   [floor, cap] stays inside. Weight released by a disabled agent only moves as far as
   other agents can take it.
6. **Cooldown**: nothing applies within ``cooldown_hours`` of the last applied rebalance;
   targets are still shown.

States: active -> probation when the sleeve's drawdown from its NAV peak reaches
``probation_drawdown``; -> disabled (the kill switch) at ``kill_drawdown``, from active or
probation; probation -> active when the drawdown is back under half of
``probation_drawdown``. A disabled agent is only re-enabled by an operator. When the
combined drawdown reaches ``portfolio_kill_drawdown`` every agent of the account is disabled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from aster_agents.config.schema import RebalanceConfig

RECOVERY_FRACTION: Final = 0.5  # probation ends below this fraction of probation_drawdown
EPSILON: Final = 1e-12
MS_PER_HOUR: Final = 3_600_000
MS_PER_DAY: Final = 86_400_000


class Policy(NamedTuple):
    """The ``rebalance:`` settings of ``_portfolio.yaml`` that the maths uses."""

    lookback_days: float = 30
    min_track_record_days: float = 7
    cooldown_hours: float = 24
    hysteresis: float = 0.02
    max_step: float = 0.05
    floor: float = 0.02
    cap: float = 0.25
    probation_drawdown: float = 0.10
    kill_drawdown: float = 0.20
    portfolio_kill_drawdown: float = 0.25

    @classmethod
    def from_config(cls, config: RebalanceConfig) -> Policy:
        return cls(**{name: getattr(config, name) for name in cls._fields})


class Candidate(NamedTuple):
    """One agent as the policy sees it."""

    agent_id: str
    state: str  # active, probation or disabled
    weight: float  # current allocation weight
    configured: float  # allocation.capital_pct
    score: float | None  # Sharpe over the lookback; None when it cannot be computed
    track_days: float
    min_weight: float = 0.0  # used margin as a weight: the allocation cannot go below it
    fixed: str | None = None  # a reason to keep the weight as it is (e.g. not in agents.d)


class Line(NamedTuple):
    """One agent's line of a proposal; every line says why."""

    agent_id: str
    state: str
    current: float
    target: float
    proposed: float
    score: float | None
    track_days: float
    reason: str

    @property
    def change(self) -> float:
        return self.proposed - self.current


class Proposal(NamedTuple):
    lines: tuple[Line, ...]
    cooldown_until_ms: int | None  # set when a cooldown blocks every change

    @property
    def changes(self) -> tuple[Line, ...]:
        return tuple(line for line in self.lines if line.change != 0)

    @property
    def blocked(self) -> bool:
        return self.cooldown_until_ms is not None


class Transition(NamedTuple):
    """A state change the kill switches ask for."""

    agent_id: str
    old: str
    new: str
    reason: str


# ---------------------------------------------------------------------- proposal


def propose(
    candidates: Sequence[Candidate],
    policy: Policy,
    *,
    now_ms: int,
    last_rebalance_ms: int | None = None,
) -> Proposal:
    """Proposed weights with a reason per agent; deterministic for the same inputs."""
    ordered = sorted(candidates, key=lambda c: c.agent_id)
    targets, notes = _targets(ordered, policy)
    deltas = [
        _bounded_delta(c, t, policy, notes[c.agent_id])
        for c, t in zip(ordered, targets, strict=True)
    ]
    deltas = _balance(ordered, deltas, notes)
    until = _cooldown_until(policy, now_ms, last_rebalance_ms)
    lines = []
    for c, target, delta in zip(ordered, targets, deltas, strict=True):
        reason = "; ".join(notes[c.agent_id])
        if until is not None:
            delta, reason = 0.0, f"cooldown until {iso(until)}; {reason}"
        proposed = c.weight + delta
        lines.append(
            Line(c.agent_id, c.state, c.weight, target, proposed, c.score, c.track_days, reason)
        )
    return Proposal(tuple(lines), until)


def _cooldown_until(policy: Policy, now_ms: int, last_ms: int | None) -> int | None:
    if last_ms is None:
        return None
    until = last_ms + round(policy.cooldown_hours * MS_PER_HOUR)
    return until if now_ms < until else None


def _kind(c: Candidate, policy: Policy) -> str | None:
    """Why the agent's weight is fixed, or None when the policy may move it."""
    if c.state == "disabled":
        return None
    if c.fixed is not None:
        return c.fixed
    if c.track_days < policy.min_track_record_days:
        return f"track record {c.track_days:.1f} d < {policy.min_track_record_days:g} d"
    if c.score is None:
        return "no score yet (too few snapshots or no variance)"
    return None


def _targets(
    candidates: Sequence[Candidate], policy: Policy
) -> tuple[list[float], dict[str, list[str]]]:
    notes: dict[str, list[str]] = {c.agent_id: [] for c in candidates}
    targets = [c.weight for c in candidates]
    scored: list[int] = []
    pool = 0.0
    for i, c in enumerate(candidates):
        fixed = _kind(c, policy)
        if c.state == "disabled":
            targets[i] = min(c.weight, max(0.0, c.min_weight))
            pool += c.weight - targets[i]
            notes[c.agent_id].append(_disabled_note(c, targets[i]))
        elif fixed is not None:
            notes[c.agent_id].append(fixed)
        else:
            scored.append(i)
            pool += c.weight
    if scored:
        chosen = [candidates[i] for i in scored]
        for i, t in zip(scored, _water_fill(chosen, pool, policy), strict=True):
            targets[i] = t
            notes[candidates[i].agent_id].append(_score_note(candidates[i], t))
    return targets, notes


def _disabled_note(c: Candidate, target: float) -> str:
    if target > 0:
        return f"disabled: releases its weight down to its used margin ({target:.1%})"
    return "disabled: releases its weight"


def _score_note(c: Candidate, target: float) -> str:
    note = f"Sharpe {c.score:+.2f} -> target {target:.1%}"
    if c.state == "probation":
        note += " (probation: cannot gain weight)"
    return note


def _bounds(c: Candidate, policy: Policy) -> tuple[float, float]:
    high = min(policy.cap, c.weight) if c.state == "probation" else policy.cap
    high = max(high, c.min_weight)
    low = min(max(policy.floor, c.min_weight), high)
    return low, high


def _water_fill(chosen: Sequence[Candidate], pool: float, policy: Policy) -> list[float]:
    """Share ``pool`` in proportion to the tilted weights, each clamped to its bounds."""
    raw = [max(c.configured * (1 + _clip(c.score or 0.0, -1.0, 1.0)), EPSILON) for c in chosen]
    bounds = [_bounds(c, policy) for c in chosen]
    if pool <= sum(lo for lo, _ in bounds):
        return [lo for lo, _ in bounds]
    if pool >= sum(hi for _, hi in bounds):
        return [hi for _, hi in bounds]
    low, high = 0.0, max(hi / r for r, (_, hi) in zip(raw, bounds, strict=True))
    for _ in range(200):
        mid = (low + high) / 2
        if _filled(raw, bounds, mid) < pool:
            low = mid
        else:
            high = mid
    return [_clip(high * r, lo, hi) for r, (lo, hi) in zip(raw, bounds, strict=True)]


def _filled(raw: Sequence[float], bounds: Sequence[tuple[float, float]], scale: float) -> float:
    return sum(_clip(scale * r, lo, hi) for r, (lo, hi) in zip(raw, bounds, strict=True))


def _bounded_delta(c: Candidate, target: float, policy: Policy, notes: list[str]) -> float:
    delta = target - c.weight
    if delta == 0:
        return 0.0
    if c.state != "disabled" and abs(delta) < policy.hysteresis:
        notes.append(f"inside the hysteresis band (|{delta:+.1%}| < {policy.hysteresis:.1%})")
        return 0.0
    if abs(delta) > policy.max_step:
        notes.append(f"step limited to {policy.max_step:.1%}")
        return _clip(delta, -policy.max_step, policy.max_step)
    return delta


def _balance(
    candidates: Sequence[Candidate], deltas: Sequence[float], notes: Mapping[str, list[str]]
) -> list[float]:
    """Scale down the larger side so that gains equal losses (money only changes sleeve)."""
    gains = sum(d for d in deltas if d > 0)
    losses = -sum(d for d in deltas if d < 0)
    if abs(gains - losses) <= EPSILON:
        return list(deltas)
    shrink_gains = gains > losses
    factor = (losses / gains) if shrink_gains else (gains / losses)
    out = []
    for c, d in zip(candidates, deltas, strict=True):
        if d != 0 and (d > 0) == shrink_gains:
            d *= factor
            notes[c.agent_id].append(_balance_note(factor, shrink_gains))
        out.append(d if abs(d) > EPSILON else 0.0)
    return out


def _balance_note(factor: float, shrink_gains: bool) -> str:
    if factor == 0:
        return "no agent gives up weight" if shrink_gains else "no agent can take the weight"
    return f"scaled to {factor:.0%} so that gains equal releases"


def _clip(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def pct(value: float) -> str:
    """A ratio as a percentage: one decimal, or two significant digits below 1%."""
    return f"{value:.1%}" if abs(value) >= 0.01 or value == 0 else f"{value * 100:.2g}%"


def iso(time_ms: int) -> str:
    """UTC time as ``2026-11-22T10:00:00Z``."""
    moment = datetime.fromtimestamp(time_ms / 1000, tz=UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------- states


def next_state(agent_id: str, state: str, drawdown: float, policy: Policy) -> Transition | None:
    """The transition one sleeve's drawdown calls for, or None."""
    if state == "disabled":
        return None
    figures = f"drawdown {pct(drawdown)}"
    if drawdown >= policy.kill_drawdown:
        reason = f"kill switch: {figures} >= kill_drawdown {pct(policy.kill_drawdown)}"
        return Transition(agent_id, state, "disabled", reason)
    if state == "active" and drawdown >= policy.probation_drawdown:
        reason = f"{figures} >= probation_drawdown {pct(policy.probation_drawdown)}"
        return Transition(agent_id, state, "probation", reason)
    recovered = policy.probation_drawdown * RECOVERY_FRACTION
    if state == "probation" and drawdown < recovered:
        return Transition(agent_id, state, "active", f"recovered: {figures} < {pct(recovered)}")
    return None


def portfolio_kill(states: Mapping[str, str], drawdown: float, policy: Policy) -> list[Transition]:
    """Disable every agent not yet disabled when the combined drawdown reaches the limit."""
    if drawdown < policy.portfolio_kill_drawdown:
        return []
    reason = (
        f"portfolio kill switch: combined drawdown {pct(drawdown)} >= "
        f"portfolio_kill_drawdown {pct(policy.portfolio_kill_drawdown)}"
    )
    return [
        Transition(agent_id, state, "disabled", reason)
        for agent_id, state in sorted(states.items())
        if state != "disabled"
    ]
