"""An entry order held in the network is never written off while it can still land.

The agent process talks to the simulator through a delaying proxy on loopback that holds
the agent's first entry order longer than the agent's request timeout (5 s) but shorter than
the exchange's nonce window (60 s). The invariant: once the held order reaches the exchange,
the exchange holds exactly the entries the ledger booked. The old rule (write off after
12 s, no noop), forced through the simulator-only ``$ASTER_AGENTS_NONCE_WINDOW_MS`` knob,
is shown to break it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from aster_agents.agent.inflight import (
    ASTER_WINDOW_MS,
    MARGIN_MS,
    NOOP_ENV,
    WINDOW_ENV,
    noop_resolve,
    write_off_ms,
)
from aster_agents.errors import ConfigError
from aster_agents.ledger import Ledger
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.proxy import Held, HoldingProxy, first
from tests.kit.wait import wait_for

ORDER = ("POST", "/fapi/v3/order")
QUERY = ("GET", "/fapi/v3/order")
NOOP = ("POST", "/fapi/v3/noop")
RULES = {
    "noop": {},  # the default: a noop on the order's nonce settles it at once
    "window": {NOOP_ENV: "0"},  # no noop: wait for the 60 s window
    "old-12s": {NOOP_ENV: "0", WINDOW_ENV: "12000"},  # the rule before 2026-12
}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(port=0, seed=7, speed=60.0)) as server:  # the 60 s nonce window
        yield server


def _fleet_behind(proxy_url: str, sim: SimServer, root: Path) -> Fleet:
    fleet = make_fleet(
        root,
        sim,
        ["agent-1"],
        symbols=("BTCUSDT",),
        max_positions=1,
        params="{p_enter: 1.0, p_exit: 0.0}",
        scan_interval=0.2,
    )
    path = fleet.config_dir / "agent-1.yaml"
    path.write_text(path.read_text().replace(sim.base_url, proxy_url))
    return fleet


def _unresolved_entries(fleet: Fleet) -> list[str]:
    with Ledger(fleet.state_dir) as ledger:
        return [i.client_order_id for i in ledger.unresolved_intents("agent-1") if i.kind == "open"]


def _filled_entries(fleet: Fleet) -> list[str]:
    """Client order ids of the entries the exchange filled for the account."""
    return [
        o.client_order_id
        for o in fleet.sim.engine.all_orders_ever()
        if o.user.lower() == fleet.user.lower()
        and o.client_order_id.endswith("-open")
        and o.status == "FILLED"
    ]


def _booked_entries(fleet: Fleet) -> list[str]:
    """Of those, the ones the ledger booked as filled."""
    with Ledger(fleet.state_dir) as ledger:
        intents = [ledger.intent(c) for c in _filled_entries(fleet)]
    return [i.client_order_id for i in intents if i is not None and i.state == "filled"]


def _deliver_when(rule: str, proxy: HoldingProxy) -> bool:
    if rule == "window":  # the client's own queries after its timeout, then one tick's
        return proxy.count(*QUERY) >= 5
    if rule == "noop" and proxy.count(*NOOP) == 0:
        return False
    return proxy.count(*ORDER) >= 2  # the agent has sent its next entry


@pytest.mark.slow
@pytest.mark.parametrize("rule", list(RULES))
def test_entry_held_in_the_network_is_booked_or_refused(
    rule: str, sim: SimServer, tmp_path: Path
) -> None:
    """Held past the request timeout: the exchange ends with exactly the ledger's entries."""
    with HoldingProxy(sim.base_url, hold=first(*ORDER)) as proxy:
        fleet = _fleet_behind(proxy.start(), sim, tmp_path)
        fleet.start("agent-1", RULES[rule])
        try:
            held: Held = wait_for(lambda: proxy.held, 60, "the first entry held")[0]
            wait_for(lambda: _deliver_when(rule, proxy), 60, f"the agent's move ({rule})")
            assert held.held_s < ASTER_WINDOW_MS / 1000, "held longer than the nonce window"
            held.release()
            assert held.answered.wait(10), "the held order got no answer from the exchange"
            wait_for(lambda: not _unresolved_entries(fleet), 30, "no unresolved entry")
            wait_for(lambda: _booked_entries(fleet), 30, "an entry booked")
        finally:
            assert fleet.stop_all() == {"agent-1": 0}, fleet.stderr("agent-1")
    exchange, ledger = fleet.exchange_positions(), fleet.ledger_positions()
    if rule == "old-12s":
        assert json.loads(held.body)["status"] == "FILLED", held.body
        assert exchange != ledger and len(_filled_entries(fleet)) == 2, (exchange, ledger)
        assert len(_booked_entries(fleet)) == 1
        return
    if rule == "noop":
        assert (held.status, json.loads(held.body)["code"]) == (400, -4225), held.body
    else:
        assert held.status == 200, held.body
    assert exchange == ledger and len(ledger) == 1, (exchange, ledger)
    assert len(_filled_entries(fleet)) == 1
    assert _booked_entries(fleet) == _filled_entries(fleet)


def test_write_off_follows_the_exchange_and_refuses_a_shorter_real_one() -> None:
    """60 s + margin for Aster hosts; a simulator's stated window; the knob only for simulators."""
    real, test = "https://fapi.asterdex.com", "https://fapi.asterdex-testnet.com"
    full = ASTER_WINDOW_MS + MARGIN_MS
    assert write_off_ms(real, None, {}) == write_off_ms(test, 10_000, {}) == full
    assert write_off_ms(real, 90_000, {}) == 90_000 + MARGIN_MS
    assert write_off_ms("http://127.0.0.1:8080", 2_000, {}) == 2_000 + MARGIN_MS
    assert write_off_ms("http://127.0.0.1:8080", None, {}) == full
    assert write_off_ms("http://127.0.0.1:8080", None, {WINDOW_ENV: "12000"}) == 12_000
    with pytest.raises(ConfigError, match="for simulators only"):
        write_off_ms(real, None, {WINDOW_ENV: "12000"})
    with pytest.raises(ConfigError, match="whole number of ms"):
        write_off_ms("http://127.0.0.1:8080", None, {WINDOW_ENV: "soon"})
    assert noop_resolve({}) and not noop_resolve({NOOP_ENV: "0"})
