"""Quick crash soak and exchange-fault runs (issue 9): the long ones are bench/chaos.py."""

from __future__ import annotations

import pytest

from tests.kit.chaos import ChaosOptions, ChaosResult, ChaosRun

QUICK_SECONDS = 15.0  # of kills at least: the run goes on until every agent has worked
MIN_TICKS = 3  # per agent, counted from the ledger, before the killing may stop


def _run(*, faults: bool) -> ChaosResult:
    options = ChaosOptions(
        agents=6, duration=QUICK_SECONDS, min_ticks=MIN_TICKS, faults=faults, seed=7
    )
    return ChaosRun(options).run()


def _assert_clean(result: ChaosResult) -> None:
    doc = result.to_json()
    assert result.agent_kills > 0, doc
    assert result.supervisord_kills == 1, doc
    assert result.orders_sent > 0, doc
    assert result.failures() == dict.fromkeys(result.failures(), 0), doc


@pytest.mark.slow
def test_crash_soak_leaves_no_duplicate_leak_mismatch_or_excess_position() -> None:
    """SIGKILLed agents and supervisord: no duplicate order, leak, mismatch or limit breach."""
    _assert_clean(_run(faults=False))


@pytest.mark.slow
def test_exchange_faults_with_kills_leave_no_failure_and_earn_no_ban() -> None:
    """5xx, 503-after-accept, latency, drops and real 429s on top of the kills: all zero."""
    result = _run(faults=True)
    _assert_clean(result)
    assert result.bans_418 == 0
    assert result.ticks > 0
