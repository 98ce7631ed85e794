"""The PostgreSQL ledger for several hosts: what `ledger migrate` carries over (the exporter's
counters, the notifier's state) and the rebalance lock held across hosts."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.errors import ReservationDenied
from aster_agents.ledger import Ledger
from aster_agents.ledger.notify import NotifyStore
from aster_agents.ledger.readonly import open_readonly
from aster_agents.ledger.transfer import copy_to_postgres
from aster_agents.models import Side
from tests.plugins.ledger import kill_child, spawn_python

D = Decimal


def _file_ledger(state: Path) -> None:
    """A SQLite ledger with audit rows (so counters), a denial counter and notifier state."""
    with Ledger(state, url=None) as ledger:
        ledger.set_account_limits(
            "u1", max_total_positions=1, max_gross_leverage=D(5), equity=D(1000)
        )
        ledger.register_agent("a1", "u1", max_positions=1, capital=D(100))
        ledger.reserve("a1", "BTCUSDT", Side.BUY, margin=D(1), notional=D(1))
        with pytest.raises(ReservationDenied):
            ledger.reserve("a1", "ETHUSDT", Side.BUY, margin=D(1), notional=D(1))
    with NotifyStore(state) as notify:
        cursor = notify.cursor()
        notify.sent(1, cursor, 3, "three events")
        notify.advance(cursor)


def test_migrate_copies_counters_and_the_notifier_state(
    pg_url: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter's counters and the notifier's cursor and sent messages arrive unchanged,
    their row counts checked; the notifier's id sequence continues after the copy."""
    _file_ledger(state_dir)
    file = open_readonly(state_dir)
    assert file is not None
    with file:
        before = sorted(map(repr, file.counters()))
    report = copy_to_postgres(state_dir, pg_url)
    assert report.rows["counters"] == len(before) > 0
    assert (report.rows["notify_state"], report.rows["notify_sent"]) == (1, 1)
    shared = open_readonly(state_dir, pg_url)
    assert shared is not None
    with shared:
        assert sorted(map(repr, shared.counters())) == before
    monkeypatch.setenv("ASTER_AGENTS_LEDGER_URL", pg_url)
    with NotifyStore(state_dir) as notify:
        assert notify.cursor() > 0
        notify.sent(None, None, 0, "after the move")  # a fresh id, no clash with the copy


HOLDER = """
import sys, time
from pathlib import Path
from aster_agents.errors import ReservationDenied
from aster_agents.ledger import Ledger
with Ledger(Path(sys.argv[1]), url=sys.argv[2]) as ledger:
    with ledger.rebalance_lock() as held:
        print("held" if held is not None else "busy", flush=True)
        time.sleep(120)
"""


def test_rebalance_lock_is_one_for_every_host(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebalance lock held on one host (its own state dir) is busy on another, and a holder
    killed with SIGKILL leaves it free."""
    monkeypatch.setenv("ASTER_AGENTS_HOST", "alpha")
    holder = spawn_python(HOLDER, str(tmp_path / "alpha"), pg_url)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("ASTER_AGENTS_HOST", "beta")
        with Ledger(tmp_path / "beta", url=pg_url) as beta:
            with beta.rebalance_lock(wait=False) as held:
                assert held is None
            kill_child(holder)
            with beta.rebalance_lock() as held:  # waits for the server to drop the session
                assert held is not None
                with (
                    Ledger(tmp_path / "gamma", url=pg_url) as gamma,
                    gamma.rebalance_lock(wait=False) as other,
                ):
                    assert other is None
    finally:
        if holder.poll() is None:
            kill_child(holder)


def test_margin_type_is_remembered_on_both_backends(ledger: Ledger) -> None:
    """The margin type noted for an account's symbol is read back (an agent starting on a
    PostgreSQL ledger asked with SQLite's json_extract and exited 1 before)."""
    from aster_agents.ledger import facts

    assert facts.margin_type(ledger, "u1", "BTCUSDT") is None
    facts.note_margin_type(ledger, "u1", "BTCUSDT", "CROSSED")
    facts.note_margin_type(ledger, "u2", "BTCUSDT", "ISOLATED")
    facts.note_margin_type(ledger, "u1", "ETHUSDT", "ISOLATED")
    assert facts.margin_type(ledger, "u1", "BTCUSDT") == "CROSSED"
    facts.note_margin_type(ledger, "u1", "BTCUSDT", "ISOLATED")
    assert facts.margin_type(ledger, "u1", "BTCUSDT") == "ISOLATED"
