"""User-data stream keys (``POST/PUT/DELETE /fapi/v3/listenKey``) of the simulated exchange.

One key per account, shared by every API wallet of it, as on Aster: ``POST`` returns the
account's active key (a new one only when none is active) and extends its life; ``PUT``
keeps it alive; ``DELETE`` ends it for every agent of the account. A key lives 60 minutes
from its last ``POST``/``PUT``. Anything else answers ``-1125`` "This listenKey does not
exist.". The simulator pushes no events: the key is the contract, not a stream.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from aster_agents.sim.engine import ApiError

LISTEN_KEY_LIFE_S: Final = 3600.0


@dataclass(slots=True)
class _Key:
    value: str
    expires: float


def invalid_key() -> ApiError:
    return ApiError(-1125, "This listenKey does not exist.")


class ListenKeys:
    """The active listen key of each account. Thread-safe."""

    def __init__(
        self, life_s: float = LISTEN_KEY_LIFE_S, wall: Callable[[], float] = time.monotonic
    ) -> None:
        self.life_s = life_s
        self._wall = wall
        self._keys: dict[str, _Key] = {}
        self._lock = threading.Lock()

    def _active(self, user: str, params: Mapping[str, str]) -> _Key:
        key = self._keys.get(user.lower())
        if key is None or key.expires <= self._wall():
            self._keys.pop(user.lower(), None)
            raise invalid_key()
        sent = params.get("listenKey")
        if sent and sent != key.value:
            raise invalid_key()
        return key

    def active(self, user: str) -> str | None:
        """The account's live key, without extending it (for tests and the CLI)."""
        with self._lock:
            key = self._keys.get(user.lower())
            return key.value if key is not None and key.expires > self._wall() else None

    def start(self, user: str, _params: Mapping[str, str]) -> dict[str, object]:
        with self._lock:
            key = self._keys.get(user.lower())
            if key is None or key.expires <= self._wall():
                key = _Key(secrets.token_hex(32), 0.0)
                self._keys[user.lower()] = key
            key.expires = self._wall() + self.life_s
            return {"listenKey": key.value}

    def keepalive(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        with self._lock:
            self._active(user, params).expires = self._wall() + self.life_s
            return {}

    def close(self, user: str, params: Mapping[str, str]) -> dict[str, object]:
        with self._lock:
            self._active(user, params)
            del self._keys[user.lower()]
            return {}
