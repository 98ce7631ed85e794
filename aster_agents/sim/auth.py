"""Signature, nonce and signer checks of the simulated exchange (API reference 1.5 and 1.9).

``msg`` is the raw parameter string as sent, minus the ``signature`` pair. It is verified
as-is first and, unless the fallback is turned off, again URL-decoded (some official demos
sign the decoded text and send it encoded). The recovered address must be the ``signer``;
the signer must be an API wallet of a registered account, or that account's main address
signing for itself; ``user``, when sent, must be that account.

Nonces follow the rule in force since 2026-07-16 (API reference 0.1): within +-60 s of the
server's clock (``nonce_window_us``; shorter only for fast tests), and the book of recent
nonces (duplicates, and "older than the oldest of the last 100") is kept **per signer**, so
agents of one account never collide. A nonce is recorded once the signature and the signer
pass, before the endpoint runs: ``POST /fapi/v3/noop`` with the nonce of an order still in
flight therefore consumes it, and the order is refused as a duplicate when it arrives.
An account registered without a deposit answers -5050 DEPOSIT_REQUIRED to every signed
request (API reference 0.1, since 2026-09-01).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, unquote_plus

from aster_agents.signing import MAINNET_CHAIN_ID, recover_address
from aster_agents.sim.engine import ApiError, missing

NONCE_WINDOW_US: Final = 60_000_000  # the exchange's rule since 2026-07-16
NONCE_KEEP: Final = 100
DEPOSIT_REQUIRED: Final = -5050


def _auth_error(code: int, msg: str) -> ApiError:
    return ApiError(code, msg, 401)


def split_signature(raw: str) -> tuple[str, str | None]:
    """(the signed text, the signature) of a raw parameter string."""
    kept: list[str] = []
    signature: str | None = None
    for part in raw.split("&"):
        if part.startswith("signature="):
            signature = unquote_plus(part[len("signature=") :])
        else:
            kept.append(part)
    return "&".join(kept), signature


@dataclass(slots=True)
class _NonceBook:
    heap: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Authenticated:
    user: str
    signer: str
    params: dict[str, str]


class Authenticator:
    """Maps signers to accounts and checks signatures and nonces. Thread-safe."""

    def __init__(
        self,
        chain_id: int = MAINNET_CHAIN_ID,
        decode_fallback: bool = True,
        wall_us: Callable[[], int] = lambda: time.time_ns() // 1000,
        nonce_window_us: int = NONCE_WINDOW_US,
    ) -> None:
        self.chain_id = chain_id
        self.decode_fallback = decode_fallback
        self.nonce_window_us = nonce_window_us
        self._wall_us = wall_us
        self._users: dict[str, str] = {}
        self._no_deposit: set[str] = set()
        self._signers: dict[str, str] = {}
        self._nonces: dict[str, _NonceBook] = {}
        self._lock = threading.Lock()

    def register(self, user: str, signers: Iterable[str], deposited: bool = True) -> None:
        with self._lock:
            self._users[user.lower()] = user
            if deposited:
                self._no_deposit.discard(user.lower())
            else:
                self._no_deposit.add(user.lower())
            for signer in signers:
                self._signers[signer.lower()] = user.lower()

    def verify(self, raw: str) -> Authenticated:
        """Check one signed request; returns the account and its parameters or raises."""
        msg, signature = split_signature(raw)
        params = dict(parse_qsl(msg, keep_blank_values=True))
        if not signature:
            raise missing("signature")
        signer = params.get("signer") or ""
        if not signer:
            raise missing("signer")
        nonce = self._nonce(params)
        self._check_signature(msg, signature, signer)
        user_key = self._account_of(signer, params.get("user"))
        if user_key in self._no_deposit:
            raise ApiError(
                DEPOSIT_REQUIRED,
                "DEPOSIT_REQUIRED: the main wallet must make a deposit before using the API.",
            )
        self._record_nonce(signer.lower(), nonce)
        return Authenticated(self._users[user_key], signer, params)

    def _nonce(self, params: dict[str, str]) -> int:
        text = params.get("nonce") or ""
        if not text.isdigit():
            raise missing("nonce")
        nonce = int(text)
        if abs(nonce - self._wall_us()) > self.nonce_window_us:
            raise ApiError(-4225, "Nonce Expired")
        return nonce

    def _check_signature(self, msg: str, signature: str, signer: str) -> None:
        candidates = [msg]
        if self.decode_fallback:
            decoded = unquote_plus(msg)
            if decoded != msg:
                candidates.append(decoded)
        for text in candidates:
            found = recover_address(text, signature, self.chain_id)
            if found is not None and found.lower() == signer.lower():
                return
        raise _auth_error(-1022, "Signature for this request is not valid.")

    def _account_of(self, signer: str, user: str | None) -> str:
        key = signer.lower()
        with self._lock:
            account = self._signers.get(key) or (key if key in self._users else None)
        if account is None:
            raise _auth_error(
                -2015,
                f"Invalid API-key, IP, or permissions for action: signer "
                f"{signer} is not an API wallet of any account.",
            )
        if user and user.lower() != account:
            raise _auth_error(
                -2015,
                f"Invalid API-key, IP, or permissions for action: signer "
                f"{signer} does not act for user {user}.",
            )
        return account

    def _record_nonce(self, signer_key: str, nonce: int) -> None:
        with self._lock:
            book = self._nonces.setdefault(signer_key, _NonceBook())
            if nonce in book.seen:
                raise ApiError(-4225, "Nonce Expired")
            if len(book.heap) >= NONCE_KEEP and nonce < book.heap[0]:
                raise ApiError(-4225, "Nonce Expired")
            heapq.heappush(book.heap, nonce)
            book.seen.add(nonce)
            if len(book.heap) > NONCE_KEEP:
                book.seen.discard(heapq.heappop(book.heap))
