"""Signature, nonce and signer rules of the simulated exchange (API reference 1.5, 1.7, 1.9)."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import pytest

from aster_agents.signing import Signer
from aster_agents.sim.auth import Authenticator
from aster_agents.sim.server import SimAccount, SimApp, SimConfig, SimServer
from tests.plugins.sim import SignedClient, SimKeys

DEMO_SIGNER = "0x21cF8Ae13Bb72632562c6Fff438652Ba1a151bb0"
DEMO_USER = "0x63DD5aCC6b1aa0f563956C0e534DD30B6dcF7C4e"
NONCE = 1748310859508867
E1_MSG = (
    "symbol=ASTERUSDT&type=LIMIT&side=BUY&timeInForce=GTC&quantity=20&price=0.5"
    f"&nonce={NONCE}&signer={DEMO_SIGNER}"
)
E1_SIG = (
    "0xd82a6784f5eff00b95ecb88145cf7a5fa6803ea6f67e0217262073da628750a742bb3ba555af418320e5"
    "5029afe358957808d4f810d73ea663d9c91852cd6d941c"
)
E2_MSG = (
    "symbol=ASTERUSDT&type=LIMIT&side=BUY&timeInForce=GTC&quantity=20&price=0.5"
    f"&nonce={NONCE}&user={DEMO_USER}&signer={DEMO_SIGNER}"
)
E2_SIG = (
    "0x0a56c5923ebf3524475c5f631940ec4c0e41dbd300ad28198d1915d8f3ca49ce26fd1aeb8b0c3079133595"
    "da0de38322ae7e860e0c76d032c4a491d27c1430b01c"
)
E3_MSG = f"nonce={NONCE}&signer={DEMO_SIGNER}"
E3_SIG = (
    "0xcd0ea4d53d67b3aa39bb62a85fbd4b819f83f745a6eb30c6dfd31991b7b9f00a359d9be3656c8c0860e7"
    "1e2416f0c06b89d7f64e291f0d7ebe71f7fb76a144c11b"
)
E5_NONCE = 1748310859508000
E5_MSG = f"nonce={E5_NONCE}&user={DEMO_SIGNER.lower()}&signer={DEMO_SIGNER.lower()}"
E5_SIG = (
    "0x923c190fb0e9dea3f7da1a81c4b9a3604b94805c546bf194d8435f20bc93879b1d2f78b107940e61eb8bee"
    "91b19b08c4858ad26efde5b010cd7626e58fa9cd661C"
)


def _demo_app(at_us: int) -> SimApp:
    app = SimApp(SimConfig(seed=1))
    app.auth = Authenticator(wall_us=lambda: at_us)
    app.add_account(SimAccount(DEMO_USER, (DEMO_SIGNER,), Decimal(1000)))
    return app


@pytest.mark.parametrize(
    ("method", "path", "msg", "sig"),
    [
        ("POST", "/fapi/v3/order", E1_MSG, E1_SIG),
        ("POST", "/fapi/v3/order", E2_MSG, E2_SIG),
        ("GET", "/fapi/v3/balance", E3_MSG, E3_SIG),
    ],
)
def test_documented_vectors_pass_the_server_path(
    method: str, path: str, msg: str, sig: str
) -> None:
    """The API reference's EIP-712 vectors E1-E3 are accepted by the full request path."""
    app = _demo_app(NONCE)
    raw = f"{msg}&signature={sig}"
    body, query = ("", raw) if method == "GET" else (raw, "")
    reply = app.handle(method, path, query, body, "127.0.0.1")
    assert reply.status == 200, reply.body


def test_ccxt_vector_with_upper_case_v_is_a_main_account_signing_for_itself() -> None:
    """E5 (ccxt: lower-case addresses, v written "1C") passes as signer == user."""
    app = SimApp(SimConfig(seed=1))
    app.auth = Authenticator(wall_us=lambda: E5_NONCE)
    app.add_account(SimAccount(DEMO_SIGNER, (), Decimal(1000)))
    reply = app.handle("GET", "/fapi/v3/balance", f"{E5_MSG}&signature={E5_SIG}", "", "1.2.3.4")
    assert reply.status == 200, reply.body


def test_signature_formats_without_prefix_and_upper_case_are_accepted() -> None:
    """A signature is accepted without 0x and in any hex case."""
    auth = Authenticator(wall_us=lambda: NONCE)
    auth.register(DEMO_USER, [DEMO_SIGNER])
    assert auth.verify(f"{E1_MSG}&signature={E1_SIG[2:].upper()}").user == DEMO_USER


def _error(response: httpx.Response) -> tuple[int, int]:
    return response.status_code, int(response.json()["code"])


def test_tampered_signature_is_refused(sim_client: SignedClient) -> None:
    """Flipping one hex digit of the signature gives -1022 with HTTP 401."""
    text = sim_client.signed_text()
    flipped = text[:-3] + ("0" if text[-3] != "0" else "1") + text[-2:]
    assert _error(sim_client.send("GET", "/fapi/v3/balance", raw=flipped)) == (401, -1022)


def test_tampered_parameter_is_refused(sim_client: SignedClient) -> None:
    """Changing a signed parameter after signing gives -1022."""
    text = sim_client.signed_text(
        {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.001"}
    )
    raw = text.replace("quantity=0.001", "quantity=0.002")
    assert _error(sim_client.send("POST", "/fapi/v3/order", raw=raw)) == (401, -1022)


def test_reused_nonce_is_refused(sim_client: SignedClient) -> None:
    """The same signed request sent twice: the second gets -4225."""
    text = sim_client.signed_text()
    assert sim_client.send("GET", "/fapi/v3/balance", raw=text).status_code == 200
    assert _error(sim_client.send("GET", "/fapi/v3/balance", raw=text)) == (400, -4225)


def test_stale_and_future_nonces_are_refused(sim_client: SignedClient) -> None:
    """A nonce more than 60 s from the wall clock is refused with -4225; 30 s is accepted."""
    now = time.time_ns() // 1000
    for nonce in (now - 61_000_000, now + 61_000_000):
        assert _error(sim_client.send("GET", "/fapi/v3/balance", nonce=nonce)) == (400, -4225)
    for nonce in (now - 30_000_000, now + 30_000_000):
        assert sim_client.send("GET", "/fapi/v3/balance", nonce=nonce).status_code == 200


def test_nonce_below_the_last_hundred_is_refused() -> None:
    """With 100 nonces kept, an unused nonce older than all of them is refused."""
    now = 1_800_000_000_000_000
    signer = Signer("0x" + "11" * 32)
    auth = Authenticator(wall_us=lambda: now)
    auth.register(signer.address, [])

    def raw(nonce: int) -> str:
        msg = f"nonce={nonce}&signer={signer.address}"
        return f"{msg}&signature={signer.sign(msg)}"

    for i in range(100):
        auth.verify(raw(now + 2 * i))
    with pytest.raises(Exception, match="-4225"):
        auth.verify(raw(now - 1))
    assert auth.verify(raw(now + 1)).user == signer.address


def test_unknown_signer_is_refused(sim_server: SimServer, sim_keys: SimKeys) -> None:
    """A valid signature from a wallet no account knows gives -2015 with HTTP 401."""
    stranger = Signer("0x" + "22" * 32)
    client = SignedClient(sim_server.base_url, stranger, sim_keys.user)
    try:
        assert _error(client.send("GET", "/fapi/v3/balance")) == (401, -2015)
    finally:
        client.close()


def test_wrong_user_is_refused(sim_server: SimServer, sim_keys: SimKeys) -> None:
    """An agent of account A claiming user B gives -2015."""
    other = Signer("0x" + "33" * 32)
    sim_server.add_account(SimAccount(other.address, (), Decimal(5)))
    client = SignedClient(sim_server.base_url, sim_keys.agents[1], other.address)
    try:
        assert _error(client.send("GET", "/fapi/v3/balance")) == (401, -2015)
    finally:
        client.close()


def test_main_account_may_sign_for_itself_and_user_is_optional(
    sim_server: SimServer, sim_keys: SimKeys
) -> None:
    """signer == user signed by the main key works; an agent may leave user out."""
    main = SignedClient(sim_server.base_url, sim_keys.main, sim_keys.user)
    agent = SignedClient(sim_server.base_url, sim_keys.agents[1], None)
    try:
        assert main.send("GET", "/fapi/v3/balance").status_code == 200
        assert agent.send("GET", "/fapi/v3/balance").status_code == 200
    finally:
        main.close()
        agent.close()


def test_missing_signature_is_a_missing_parameter(sim_client: SignedClient) -> None:
    """A signed endpoint without signature gives -1102."""
    raw = f"nonce={time.time_ns() // 1000}&signer={sim_client.signer.address}"
    assert _error(sim_client.send("GET", "/fapi/v3/balance", raw=raw)) == (400, -1102)


def test_post_in_query_and_delete_with_body(sim_client: SignedClient) -> None:
    """POST parameters may travel in the query string; DELETE bodies are read."""
    order = sim_client.ok(
        "POST",
        "/fapi/v3/order",
        {
            "symbol": "BTCUSDT",
            "side": "BUY",
            "type": "LIMIT",
            "timeInForce": "GTC",
            "quantity": "0.001",
            "price": "60000",
        },
        in_query=True,
    )
    assert isinstance(order, dict)
    canceled = sim_client.ok(
        "DELETE", "/fapi/v3/order", {"symbol": "BTCUSDT", "orderId": order["orderId"]}
    )
    assert isinstance(canceled, dict) and canceled["status"] == "CANCELED"


def _encoded_request(client: SignedClient) -> str:
    """Signed over the decoded text, sent percent-encoded (the official JS demo's habit)."""
    msg = (
        f"symbol=BTCUSDT&orderId=1&origClientOrderId=a:b&nonce={client.nonces.next()}"
        f"&signer={client.signer.address}"
    )
    return f"{msg.replace(':', '%3A')}&signature={client.signer.sign(msg)}"


def test_decoded_fallback_accepts_and_can_be_turned_off(sim_keys: SimKeys) -> None:
    """The URL-decoded retry accepts decoded-signed requests unless the flag turns it off."""
    for fallback, expected in ((True, -2013), (False, -1022)):
        config = SimConfig(accounts=(sim_keys.account(),), decode_fallback=fallback)
        with SimServer(config) as server:
            client = SignedClient(server.base_url, sim_keys.agents[0], None)
            try:
                response = client.send("GET", "/fapi/v3/order", raw=_encoded_request(client))
                assert int(response.json()["code"]) == expected
            finally:
                client.close()


def test_public_endpoints_need_no_signature(sim_client: SignedClient) -> None:
    """Market data answers without any auth parameter."""
    for path in (
        "/fapi/v3/ping",
        "/fapi/v3/time",
        "/fapi/v3/exchangeInfo",
        "/fapi/v3/premiumIndex",
        "/fapi/v3/ticker/bookTicker",
    ):
        assert sim_client.public(path).status_code == 200
