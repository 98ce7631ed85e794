"""The 2026 nonce rules of the simulator: +-60 s, a book per signer, noop, -5050 (API ref 0.1)."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from aster_agents.errors import ConfigError, DepositRequired, OrderNotFound, OrderRejected
from aster_agents.exchange.http import AsterClient
from aster_agents.models import OrderRequest, OrderType, Side
from aster_agents.signing import NonceSource, Signer
from aster_agents.sim.accounts import load_accounts_file
from aster_agents.sim.server import SimAccount, SimConfig, SimServer
from tests.plugins.sim import SignedClient, SimKeys, start_sim_process


def _code(response: httpx.Response) -> int:
    return int(response.json()["code"])


def test_nonce_books_are_kept_per_signer(sim_server: SimServer, sim_keys: SimKeys) -> None:
    """Two agents of one account may use the same nonce; one agent may not use it twice."""
    one = SignedClient(sim_server.base_url, sim_keys.agents[0], sim_keys.user)
    two = SignedClient(sim_server.base_url, sim_keys.agents[1], sim_keys.user)
    nonce = time.time_ns() // 1000
    try:
        assert one.send("GET", "/fapi/v3/balance", nonce=nonce).status_code == 200
        assert two.send("GET", "/fapi/v3/balance", nonce=nonce).status_code == 200
        assert _code(one.send("GET", "/fapi/v3/balance", nonce=nonce)) == -4225
    finally:
        one.close()
        two.close()


def test_noop_spends_the_nonce_of_an_order_still_in_flight(sim_client: SignedClient) -> None:
    """A noop with an order's nonce is accepted; the order carrying it then gets -4225."""
    nonce = time.time_ns() // 1000
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001"}
    assert sim_client.send("POST", "/fapi/v3/noop", nonce=nonce).json() == {
        "code": 200,
        "msg": "success",
    }
    late = sim_client.send("POST", "/fapi/v3/order", order, nonce=nonce)
    assert (late.status_code, _code(late)) == (400, -4225)
    assert sim_client.ok("GET", "/fapi/v3/allOrders", {"symbol": "BTCUSDT"}) == []


def test_noop_after_the_order_is_refused_as_duplicate(sim_client: SignedClient) -> None:
    """An order that reached the exchange first makes the noop with its nonce fail (-4225)."""
    nonce = time.time_ns() // 1000
    order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001"}
    assert sim_client.send("POST", "/fapi/v3/order", order, nonce=nonce).status_code == 200
    assert _code(sim_client.send("POST", "/fapi/v3/noop", nonce=nonce)) == -4225


def test_client_noop_reports_accepted_and_refused(sim_server: SimServer, sim_keys: SimKeys) -> None:
    """AsterClient.noop: True when it spends the nonce, False when the nonce was used already."""
    with AsterClient(
        sim_server.base_url,
        user=sim_keys.user,
        signer=sim_keys.agents[0],
        nonces=NonceSource(3),
    ) as client:
        nonce = client.next_nonce()
        assert client.noop(nonce) is True
        assert client.noop(nonce) is False
        assert client.noop() is True


def test_account_without_deposit_gets_5050_and_a_typed_error(sim_keys: SimKeys) -> None:
    """deposited: false -> -5050 on signed requests; the client raises DepositRequired."""
    account = SimAccount(sim_keys.user, sim_keys.signers, Decimal(0), deposited=False)
    with SimServer(SimConfig(accounts=(account,))) as server:
        raw = SignedClient(server.base_url, sim_keys.agents[0], sim_keys.user)
        try:
            assert _code(raw.send("GET", "/fapi/v3/balance")) == -5050
        finally:
            raw.close()
        with AsterClient(
            server.base_url, user=sim_keys.user, signer=sim_keys.agents[0], nonces=NonceSource(1)
        ) as client:
            with pytest.raises(DepositRequired, match="has not deposited yet"):
                client.balances()
            assert client.server_time() > 0  # public endpoints still answer


def test_accounts_file_marks_an_account_without_deposit(tmp_path: Path) -> None:
    """`deposited: false` in the accounts file; anything but a boolean is a one-line error."""
    user = Signer("0x" + "44" * 32).address
    path = tmp_path / "accounts.yaml"
    path.write_text(f"- {{user: '{user}', deposited: false}}\n- {{user: '{user}'}}\n")
    first, second = load_accounts_file(path)
    assert (first.deposited, second.deposited) == (False, True)
    path.write_text(f"- {{user: '{user}', deposited: maybe}}\n")
    with pytest.raises(ConfigError, match=r"\[0\]\.deposited: must be true or false"):
        load_accounts_file(path)


def test_nonce_window_option_is_enforced_and_advertised(sim_keys: SimKeys) -> None:
    """`sim --nonce-window-s 2`: a 3 s old nonce is refused and exchangeInfo states 2000 ms."""
    sim = start_sim_process("--nonce-window-s", "2", "--seed", "3")
    try:
        info = httpx.get(f"{sim.base_url}/fapi/v3/exchangeInfo", timeout=10).json()
        assert info["nonceWindowMs"] == 2000
        signer = Signer("0x" + "55" * 32)
        client = SignedClient(sim.base_url, signer, None)
        try:
            old = time.time_ns() // 1000 - 3_000_000
            # the signer is unknown, but the nonce is judged first
            assert _code(client.send("GET", "/fapi/v3/balance", nonce=old)) == -4225
        finally:
            client.close()
    finally:
        assert sim.stop() == 0


def test_default_window_is_the_exchanges_60_s(sim_server: SimServer) -> None:
    """Without the option the simulator states the exchange's 60 s."""
    info = httpx.get(f"{sim_server.base_url}/fapi/v3/exchangeInfo", timeout=10).json()
    assert info["nonceWindowMs"] == 60_000


def test_order_with_a_spent_pinned_nonce_is_rejected_not_retried(
    sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """new_order(nonce=n) after noop(n): OrderRejected -4225, and no retry with a fresh nonce."""
    with AsterClient(
        sim_server.base_url, user=sim_keys.user, signer=sim_keys.agents[0], nonces=NonceSource(4)
    ) as client:
        nonce = client.next_nonce()
        assert client.noop(nonce)
        request = OrderRequest(
            "BTCUSDT", Side.BUY, OrderType.MARKET, "pinned-1", quantity=Decimal("0.001")
        )
        with pytest.raises(OrderRejected) as info:
            client.new_order(request, nonce=nonce)
        assert info.value.code == -4225 and "not placed" in str(info.value)
        with pytest.raises(OrderNotFound):
            client.query_order("BTCUSDT", client_order_id="pinned-1")
