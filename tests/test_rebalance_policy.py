"""The rebalancing policy's guard-rails and the kill switches, on synthetic NAV histories."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aster_agents.portfolio import metrics
from aster_agents.portfolio.metrics import MS_PER_DAY, NavPoint
from aster_agents.portfolio.rebalance import Candidate, Policy, next_state, portfolio_kill, propose

HOUR = 3_600_000
NOW = 100 * MS_PER_DAY
POLICY = Policy(
    lookback_days=30,
    min_track_record_days=7,
    cooldown_hours=24,
    hysteresis=0.02,
    max_step=0.05,
    floor=0.02,
    cap=0.40,
    probation_drawdown=0.10,
    kill_drawdown=0.20,
    portfolio_kill_drawdown=0.25,
)


def history(days: float, drift: float, noise: float = 0.002, end_ms: int = NOW) -> list[NavPoint]:
    """An hourly NAV curve ending at ``end_ms``: a drift per hour plus a fixed zig-zag."""
    hours = int(days * 24)
    nav, out = 1.0, []
    for i in range(hours + 1):
        out.append(NavPoint(end_ms - (hours - i) * HOUR, 1000 * nav, nav))
        nav *= 1 + drift + (noise if i % 2 else -noise)
    return out


def candidate(agent_id: str, points: list[NavPoint], weight: float, **kw: object) -> Candidate:
    """A candidate scored the way governance scores it: Sharpe over the lookback."""
    m = metrics.compute(points, since_ms=NOW - int(POLICY.lookback_days * MS_PER_DAY))
    fields: dict[str, object] = {
        "agent_id": agent_id,
        "state": "active",
        "weight": weight,
        "configured": weight,
        "score": m.sharpe,
        "track_days": m.days,
    }
    fields.update(kw)
    return Candidate(**fields)  # type: ignore[arg-type]


def by_id(proposal_lines: object) -> dict[str, object]:
    return {line.agent_id: line for line in proposal_lines}  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- the Done-when


def test_no_change_before_the_minimum_track_record() -> None:
    """A young sleeve keeps its weight, however good, and says why."""
    young = candidate("young", history(3, 0.002), 0.3)
    old = candidate("old", history(20, -0.0005), 0.3)
    lines = by_id(propose([young, old], POLICY, now_ms=NOW).lines)
    assert lines["young"].proposed == 0.3  # type: ignore[attr-defined]
    assert lines["young"].reason.startswith("track record 3.0 d < 7 d")  # type: ignore[attr-defined]
    assert lines["old"].proposed == 0.3  # type: ignore[attr-defined]


def test_a_young_sleeve_moves_once_its_track_record_is_long_enough() -> None:
    """The same two sleeves rebalance once both have more than the minimum record."""
    good = candidate("good", history(10, 0.002), 0.3)
    bad = candidate("bad", history(10, -0.002), 0.3)
    lines = by_id(propose([good, bad], POLICY, now_ms=NOW).lines)
    assert lines["good"].proposed == pytest.approx(0.35)  # type: ignore[attr-defined]
    assert lines["bad"].proposed == pytest.approx(0.25)  # type: ignore[attr-defined]


def test_small_alternating_changes_inside_the_hysteresis_band_never_flip_weights() -> None:
    """Scores wobbling around each other move targets less than the band: nothing changes."""
    weights = {"a": 0.3, "b": 0.3}
    for step in range(20):
        wobble = 0.04 if step % 2 else -0.04
        cands = [
            Candidate("a", "active", weights["a"], 0.3, 0.5 + wobble, 20),
            Candidate("b", "active", weights["b"], 0.3, 0.5 - wobble, 20),
        ]
        proposal = propose(cands, POLICY, now_ms=NOW + step * MS_PER_DAY)
        assert not proposal.changes
        assert all("hysteresis" in line.reason for line in proposal.lines)
        weights = {line.agent_id: line.proposed for line in proposal.lines}


def test_synthetic_histories_with_similar_sharpe_stay_put() -> None:
    """Two sleeves with close Sharpe ratios on real NAV curves stay inside the band."""
    a = candidate("a", history(20, 0.00050), 0.3)
    b = candidate("b", history(20, 0.00052), 0.3)
    assert not propose([a, b], POLICY, now_ms=NOW).changes


def test_step_is_limited_to_max_step() -> None:
    """A large target gap moves by max_step at most, and says so."""
    cands = [
        Candidate("a", "active", 0.05, 0.2, 1.0, 20),
        Candidate("b", "active", 0.35, 0.2, -1.0, 20),
    ]
    lines = by_id(propose(cands, POLICY, now_ms=NOW).lines)
    assert lines["a"].change == pytest.approx(0.05)  # type: ignore[attr-defined]
    assert lines["b"].change == pytest.approx(-0.05)  # type: ignore[attr-defined]
    assert "step limited to 5.0%" in lines["a"].reason  # type: ignore[attr-defined]


def test_cooldown_blocks_every_change_but_shows_targets() -> None:
    """Within cooldown_hours of the last rebalance nothing moves; the line says until when."""
    good = candidate("good", history(10, 0.002), 0.3)
    bad = candidate("bad", history(10, -0.002), 0.3)
    last = NOW - 23 * HOUR
    proposal = propose([good, bad], POLICY, now_ms=NOW, last_rebalance_ms=last)
    assert proposal.blocked and not proposal.changes
    assert proposal.cooldown_until_ms == last + 24 * HOUR
    assert all(line.reason.startswith("cooldown until ") for line in proposal.lines)
    assert by_id(proposal.lines)["good"].target > 0.3  # type: ignore[attr-defined]
    later = propose([good, bad], POLICY, now_ms=NOW, last_rebalance_ms=NOW - 25 * HOUR)
    assert not later.blocked and later.changes


def test_probation_cannot_gain_weight() -> None:
    """A sleeve on probation keeps or loses weight, whatever its score."""
    cands = [
        Candidate("p", "probation", 0.2, 0.3, 1.0, 20),
        Candidate("q", "active", 0.3, 0.3, -1.0, 20),
    ]
    lines = by_id(propose(cands, POLICY, now_ms=NOW).lines)
    assert lines["p"].proposed <= 0.2  # type: ignore[attr-defined]
    assert "probation" in lines["p"].reason  # type: ignore[attr-defined]


def test_disabled_agent_releases_weight_down_to_its_used_margin() -> None:
    """A disabled sleeve gives its weight to the others, never below its used margin."""
    cands = [
        Candidate("off", "disabled", 0.06, 0.1, None, 20, min_weight=0.03),
        Candidate("on", "active", 0.2, 0.2, 0.1, 20),
    ]
    lines = by_id(propose(cands, POLICY, now_ms=NOW).lines)
    assert lines["off"].proposed == pytest.approx(0.03)  # type: ignore[attr-defined]
    assert lines["on"].proposed == pytest.approx(0.23)  # type: ignore[attr-defined]
    assert "used margin" in lines["off"].reason  # type: ignore[attr-defined]


def test_disabled_weight_stays_when_nobody_can_take_it() -> None:
    """With every other sleeve fixed, the disabled sleeve keeps its weight (sum preserved)."""
    cands = [
        Candidate("off", "disabled", 0.1, 0.1, None, 20),
        Candidate("young", "active", 0.2, 0.2, 2.0, 1),
    ]
    lines = by_id(propose(cands, POLICY, now_ms=NOW).lines)
    assert lines["off"].proposed == 0.1  # type: ignore[attr-defined]
    assert "no agent can take the weight" in lines["off"].reason  # type: ignore[attr-defined]


def test_proposals_are_deterministic_and_every_line_has_a_reason() -> None:
    """Same inputs, same proposal, whatever the input order; no empty reason."""
    cands = [
        Candidate("a", "active", 0.2, 0.2, 0.9, 20),
        Candidate("b", "active", 0.3, 0.3, -0.4, 20),
        Candidate("c", "probation", 0.1, 0.1, 0.2, 20),
        Candidate("d", "active", 0.1, 0.1, None, 20),
    ]
    one = propose(cands, POLICY, now_ms=NOW)
    two = propose(list(reversed(cands)), POLICY, now_ms=NOW)
    assert one == two
    assert all(line.reason for line in one.lines)


# ---------------------------------------------------------------------- properties


@st.composite
def candidates(draw: st.DrawFn) -> list[Candidate]:
    n = draw(st.integers(1, 8))
    out = []
    for i in range(n):
        state = draw(st.sampled_from(["active", "active", "probation", "disabled"]))
        weight = draw(st.floats(0.0, 0.5))
        out.append(
            Candidate(
                agent_id=f"a{i}",
                state=state,
                weight=weight,
                configured=draw(st.floats(0.01, 0.3)),
                score=draw(st.none() | st.floats(-5, 5)),
                track_days=draw(st.floats(0, 30)),
                min_weight=draw(st.floats(0.0, 1.0)) * weight,
            )
        )
    return out


policies = st.builds(
    Policy,
    min_track_record_days=st.floats(0, 10),
    hysteresis=st.floats(0, 0.05),
    max_step=st.floats(0.005, 0.3),
    floor=st.floats(0, 0.1),
    cap=st.floats(0.1, 0.6),
)


@settings(max_examples=300)
@given(candidates(), policies)
def test_no_change_exceeds_max_step(cands: list[Candidate], policy: Policy) -> None:
    """Whatever the inputs, no weight moves by more than max_step."""
    for line in propose(cands, policy, now_ms=NOW).lines:
        assert abs(line.change) <= policy.max_step + 1e-12


@settings(max_examples=300)
@given(candidates(), policies)
def test_weights_sum_is_preserved(cands: list[Candidate], policy: Policy) -> None:
    """Money only moves between sleeves: proposed weights add up to the current ones."""
    lines = propose(cands, policy, now_ms=NOW).lines
    assert math.fsum(x.proposed for x in lines) == pytest.approx(
        math.fsum(x.current for x in lines), abs=1e-9
    )


@settings(max_examples=300)
@given(candidates(), policies)
def test_floor_and_cap_are_respected(cands: list[Candidate], policy: Policy) -> None:
    """A non-disabled weight inside [floor, cap] stays inside; one outside only moves toward it."""
    for line, c in zip(
        propose(cands, policy, now_ms=NOW).lines,
        sorted(cands, key=lambda c: c.agent_id),
        strict=True,
    ):
        assert line.proposed >= c.min_weight - 1e-12
        if c.state == "disabled":
            assert line.proposed <= c.weight + 1e-12
            continue
        if c.state == "probation":
            assert line.proposed <= c.weight + 1e-12
        low, high = policy.floor, max(policy.cap, c.min_weight)
        if low <= c.weight <= high:
            assert low - 1e-12 <= line.proposed <= high + 1e-12
        elif c.weight > high:
            assert line.proposed <= c.weight + 1e-12
        else:
            assert line.proposed >= c.weight - 1e-12


@settings(max_examples=200)
@given(st.floats(-3, 3), st.floats(-3, 3))
def test_a_higher_score_never_gets_a_lower_target(low: float, high: float) -> None:
    """The tilt is monotone: of two equal sleeves, the better score targets at least as much."""
    low, high = sorted((low, high))
    cands = [
        Candidate("a", "active", 0.3, 0.3, low, 20),
        Candidate("b", "active", 0.3, 0.3, high, 20),
    ]
    lines = by_id(propose(cands, POLICY, now_ms=NOW).lines)
    assert lines["b"].target >= lines["a"].target - 1e-12  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- states


@pytest.mark.parametrize(
    ("state", "drawdown", "new"),
    [
        ("active", 0.099, None),
        ("active", 0.10, "probation"),
        ("active", 0.199, "probation"),
        ("active", 0.20, "disabled"),
        ("probation", 0.199, None),
        ("probation", 0.20, "disabled"),
        ("probation", 0.051, None),
        ("probation", 0.049, "active"),
        ("disabled", 0.0, None),
        ("disabled", 0.5, None),
    ],
)
def test_state_thresholds(state: str, drawdown: float, new: str | None) -> None:
    """Probation at probation_drawdown, kill at kill_drawdown, recovery under half."""
    transition = next_state("a", state, drawdown, POLICY)
    assert (transition.new if transition else None) == new


def test_kill_switch_fires_on_a_synthetic_history_at_kill_drawdown_and_only_then() -> None:
    """Walking a falling NAV curve: probation at -10%, disabled at -20%, with the figures."""
    navs = [1.0, 1.05, 1.0, 0.96, 0.946, 0.94, 0.9, 0.85, 0.841, 0.839, 0.8, 0.9]
    points = [NavPoint(i * HOUR, 1000 * n, n) for i, n in enumerate(navs)]
    state, seen = "active", []
    for i in range(len(points)):
        dd = metrics.drawdown_since(points[: i + 1], None)
        t = next_state("a", state, dd, POLICY)
        if t is not None:
            state = t.new
            seen.append((i, t.new, t.reason))
    assert [(i, s) for i, s, _ in seen] == [(5, "probation"), (9, "disabled")]
    assert "kill switch: drawdown 20.1% >= kill_drawdown 20.0%" in seen[-1][2]


def test_portfolio_kill_switch_disables_every_agent() -> None:
    """At portfolio_kill_drawdown every agent not yet disabled is disabled, with the reason."""
    states = {"a": "active", "b": "probation", "c": "disabled"}
    assert portfolio_kill(states, 0.249, POLICY) == []
    moves = portfolio_kill(states, 0.25, POLICY)
    assert [(t.agent_id, t.new) for t in moves] == [("a", "disabled"), ("b", "disabled")]
    assert "combined drawdown 25.0%" in moves[0].reason
