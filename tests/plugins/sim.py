"""pytest fixtures for the sim (owned by the sim work).

- ``sim_keys``: a funded main account with its main key and two API-wallet (agent) keys.
- ``sim_server``: a started :class:`SimServer` (function scope) with that account registered.
- ``sim_client``: a :class:`SignedClient` for agent 1 against ``sim_server``.
- :func:`start_sim_process`: ``python -m aster_agents sim --port 0 ...`` as a real process,
  returning once the first stdout line (the base URL) has been read.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest

from aster_agents.signing import NonceSource, Signer, generate_private_key
from aster_agents.sim.server import SimAccount, SimConfig, SimServer

SIM_BALANCE = Decimal("10000")


@dataclass(frozen=True)
class SimKeys:
    """One main account: its address, its key and two agent keys (keys hidden from repr)."""

    main: Signer
    agents: tuple[Signer, Signer]
    main_key: str = field(repr=False)
    agent_keys: tuple[str, str] = field(repr=False)

    @property
    def user(self) -> str:
        return self.main.address

    @property
    def signers(self) -> tuple[str, ...]:
        return tuple(a.address for a in self.agents)

    def account(self, balance: Decimal = SIM_BALANCE) -> SimAccount:
        return SimAccount(self.user, self.signers, balance)


def new_keys() -> SimKeys:
    main_key = generate_private_key()
    agent_keys = (generate_private_key(), generate_private_key())
    return SimKeys(
        Signer(main_key),
        (Signer(agent_keys[0]), Signer(agent_keys[1])),
        main_key,
        agent_keys,
    )


def build_params(
    params: Mapping[str, object] | Sequence[tuple[str, object]],
    nonce: int,
    signer: str,
    user: str | None,
) -> str:
    """``k=v&...&nonce=..&user=..&signer=..`` with values in the safe character set, unencoded."""
    items = list(params.items()) if isinstance(params, Mapping) else list(params)
    items.append(("nonce", nonce))
    if user is not None:
        items.append(("user", user))
    items.append(("signer", signer))
    return "&".join(f"{k}={v}" for k, v in items)


class SignedClient:
    """Raw signed requests over real HTTP, for tests and benches (no project client needed)."""

    _slots = itertools.count()

    def __init__(
        self, base_url: str, signer: Signer, user: str | None, *, slot: int | None = None
    ) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10.0)
        self.signer = signer
        self.user = user
        self.nonces = NonceSource(
            slot if slot is not None else next(self._slots) % NonceSource.SLOTS
        )

    def close(self) -> None:
        self.http.close()

    def signed_text(
        self, params: Mapping[str, object] | Sequence[tuple[str, object]] = (), **kw: object
    ) -> str:
        """The full parameter string including ``&signature=...``."""
        nonce = kw.get("nonce")
        user = kw.get("user", self.user)
        msg = build_params(
            params,
            int(str(nonce)) if nonce is not None else self.nonces.next(),
            str(kw.get("signer", self.signer.address)),
            None if user is None else str(user),
        )
        return f"{msg}&signature={self.signer.sign(msg)}"

    def send(
        self,
        method: str,
        path: str,
        params: Mapping[str, object] | Sequence[tuple[str, object]] = (),
        *,
        in_query: bool = False,
        raw: str | None = None,
        **kw: object,
    ) -> httpx.Response:
        """GET in the query string; other methods in a form body unless ``in_query``."""
        text = raw if raw is not None else self.signed_text(params, **kw)
        if method == "GET" or in_query:
            return self.http.request(method, f"{path}?{text}")
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.http.request(method, path, content=text.encode(), headers=headers)

    def ok(
        self,
        method: str,
        path: str,
        params: Mapping[str, object] | Sequence[tuple[str, object]] = (),
        *,
        in_query: bool = False,
    ) -> Any:
        """Send and return the JSON body, failing the test on a non-200 answer."""
        response = self.send(method, path, params, in_query=in_query)
        assert response.status_code == 200, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json()

    def public(self, path: str, **params: object) -> httpx.Response:
        return self.http.get(path, params={k: str(v) for k, v in params.items()})


@pytest.fixture
def sim_keys() -> SimKeys:
    return new_keys()


@pytest.fixture
def sim_server(sim_keys: SimKeys) -> Iterator[SimServer]:
    server = SimServer(SimConfig(seed=7, accounts=(sim_keys.account(),)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sim_client(sim_server: SimServer, sim_keys: SimKeys) -> Iterator[SignedClient]:
    client = SignedClient(sim_server.base_url, sim_keys.agents[0], sim_keys.user)
    try:
        yield client
    finally:
        client.close()


@dataclass
class SimProcess:
    proc: subprocess.Popen[str]
    base_url: str

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def start_sim_process(*args: str, timeout: float = 20.0) -> SimProcess:
    """Run ``python -m aster_agents sim --port 0 ARGS`` and read the base URL line."""
    cmd = [sys.executable, "-m", "aster_agents", "sim", "--port", "0", *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            line = proc.stdout.readline().strip()
            if line.startswith("http://"):
                return SimProcess(proc, line)
            break
        if proc.poll() is not None:
            break
    proc.kill()
    _, err = proc.communicate(timeout=5)
    raise AssertionError(f"sim process did not print its URL: exit={proc.returncode} {err}")
