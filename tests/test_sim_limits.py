"""Rate limits (weight per IP, orders per account), 429 then 418, and fault injection."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from aster_agents.sim.faults import FaultConfig
from aster_agents.sim.limits import LimitConfig
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.wait import wait_for
from tests.plugins.sim import SignedClient, SimKeys

MARKET_BUY = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001"}


def _serve(keys: SimKeys, **config: object) -> tuple[SimServer, SignedClient]:
    server = SimServer(SimConfig(accounts=(keys.account(),), **config))  # type: ignore[arg-type]
    server.start()
    return server, SignedClient(server.base_url, keys.agents[0], keys.user)


@pytest.fixture
def tiny(sim_keys: SimKeys) -> Iterator[tuple[SimServer, SignedClient]]:
    limits = LimitConfig(
        weight_per_window=12,
        orders_short=2,
        ban_seconds=30,
        grace_s=0.0,
        align_to_start=True,
        weight_window_s=3600,
        orders_short_window_s=3600,
    )
    server, client = _serve(sim_keys, limits=limits)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


def test_weight_and_order_count_headers(sim_client: SignedClient) -> None:
    """Every answer carries the used weight; order answers carry the order counts."""
    first = sim_client.send("GET", "/fapi/v3/balance")
    assert first.headers["X-MBX-USED-WEIGHT-1M"] == "5"
    order = sim_client.send("POST", "/fapi/v3/order", MARKET_BUY)
    assert order.headers["X-MBX-USED-WEIGHT-1M"] == "6"
    assert (order.headers["X-MBX-ORDER-COUNT-10S"], order.headers["X-MBX-ORDER-COUNT-1M"]) == (
        "1",
        "1",
    )


def test_rate_limit_then_ban(tiny: tuple[SimServer, SignedClient]) -> None:
    """Over the weight limit: 429 with Retry-After; ignoring it: 418 with a ban."""
    _, client = tiny
    assert client.send("GET", "/fapi/v3/balance").status_code == 200
    assert client.send("GET", "/fapi/v3/balance").status_code == 200
    limited = client.send("GET", "/fapi/v3/balance")
    assert (limited.status_code, limited.json()["code"]) == (429, -1003)
    assert int(limited.headers["Retry-After"]) >= 1
    banned = client.public("/fapi/v3/ping")
    assert (banned.status_code, banned.json()["code"]) == (418, -1003)
    assert 25 <= int(banned.headers["Retry-After"]) <= 30
    assert client.public("/fapi/v3/ping").status_code == 418


def test_requests_in_flight_at_a_429_get_grace_not_a_ban(sim_keys: SimKeys) -> None:
    """A request sent within grace_s of a 429 gets another 429; only a later one is banned."""
    limits = LimitConfig(
        weight_per_window=12, grace_s=60, align_to_start=True, weight_window_s=3600
    )
    server, client = _serve(sim_keys, limits=limits)
    try:
        while client.send("GET", "/fapi/v3/balance").status_code == 200:
            pass
        again = client.public("/fapi/v3/ping")
        assert (again.status_code, again.json()["code"]) == (429, -1003)
        assert server.app.limiter.counts() == (2, 0)
    finally:
        client.close()
        server.stop()


def test_a_request_that_arrived_before_a_429_is_judged_by_its_arrival(sim_keys: SimKeys) -> None:
    """In-flight means arrived: a request that reached the server before the 429 went out gets
    a 429, not a 418, however late this process gets to it (a busy simulator)."""
    limits = LimitConfig(weight_per_window=12, grace_s=1, align_to_start=True, weight_window_s=3600)
    server, client = _serve(sim_keys, limits=limits)
    try:
        while client.send("GET", "/fapi/v3/balance").status_code == 200:
            pass
        late = time.time()  # arrived right as the 429 went out: in flight
        wait_for(lambda: time.time() > late + 1.2, 5, "the grace to pass on the wall clock")
        reply = server.app.handle("GET", "/fapi/v3/ping", "", "", "127.0.0.1", received=late)
        assert reply.status == 429, reply.body
        assert server.app.handle("GET", "/fapi/v3/ping", "", "", "127.0.0.1").status == 418
    finally:
        client.close()
        server.stop()


def test_order_count_limit(tiny: tuple[SimServer, SignedClient]) -> None:
    """More new orders than the account's 10 s limit gives -1015 with HTTP 429."""
    server, client = tiny
    server.market.pin("BTCUSDT", Decimal("50000.0"))
    for _ in range(2):
        assert client.send("POST", "/fapi/v3/order", MARKET_BUY).status_code == 200
    refused = client.send("POST", "/fapi/v3/order", MARKET_BUY)
    assert (refused.status_code, refused.json()["code"]) == (429, -1015)
    assert "Retry-After" in refused.headers


def test_injected_errors_are_not_processed(sim_keys: SimKeys) -> None:
    """error_rates answers with the status and JSON error without placing the order."""
    server, client = _serve(sim_keys, faults=FaultConfig(error_rates={502: 1.0}))
    try:
        response = client.send("POST", "/fapi/v3/order", MARKET_BUY)
        assert response.status_code == 502 and "code" in response.json()
        assert server.engine.all_orders_ever() == []
    finally:
        client.close()
        server.stop()


def test_unknown_outcome_503_after_the_order_was_placed(sim_keys: SimKeys) -> None:
    """accepted_503_rate places the order and still answers 503 (outcome unknown)."""
    server, client = _serve(sim_keys, faults=FaultConfig(accepted_503_rate=1.0))
    try:
        params = {**MARKET_BUY, "newClientOrderId": "x-1"}
        response = client.send("POST", "/fapi/v3/order", params)
        assert (response.status_code, response.json()["code"]) == (503, -1007)
        assert [o.client_order_id for o in server.engine.all_orders_ever()] == ["x-1"]
        assert client.send("GET", "/fapi/v3/balance").status_code == 200
    finally:
        client.close()
        server.stop()


def test_dropped_connections(sim_keys: SimKeys) -> None:
    """drop_rate closes the connection without an answer."""
    server, client = _serve(sim_keys, faults=FaultConfig(drop_rate=1.0))
    try:
        with pytest.raises(httpx.TransportError):
            client.public("/fapi/v3/ping")
    finally:
        client.close()
        server.stop()


def test_fault_config_validates_rates() -> None:
    """Rates outside [0, 1] and non-error statuses are refused."""
    with pytest.raises(ValueError, match="probabilities"):
        FaultConfig(drop_rate=1.5)
    with pytest.raises(ValueError, match="4xx/5xx"):
        FaultConfig(error_rates={200: 0.1})
