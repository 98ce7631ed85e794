"""EIP-712 ``AsterSignTransaction`` signing and verification (the only eth_account import).

The digest is the standard EIP-712 one for the typed data ``Message{string msg}`` in the
domain ``AsterSignTransaction`` v1 with ``verifyingContract = 0x0``. The domain separator and
the struct type hash are constants per chain id, so the hot path is two keccaks and one
coincurve ECDSA signature; tests check the digest against eth-account's own
``encode_typed_data`` and the vectors E1 to E4 of ``shared/aster-v3-api.md``.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Final
from urllib.parse import urlparse

from aster_agents.errors import CredentialError

try:  # signing must use coincurve (libsecp256k1): about 10x faster than the pure-Python backend
    import coincurve
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "aster-agents needs the 'coincurve' package for signing; reinstall with "
        "`pip install coincurve` (the pure-Python fallback is too slow and is not used)"
    ) from exc

from eth_hash.auto import keccak

MAINNET_CHAIN_ID: Final = 1666
TESTNET_CHAIN_ID: Final = 714
ZERO_ADDRESS: Final = "0x" + "00" * 20

_DOMAIN_TYPEHASH: Final = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_MESSAGE_TYPEHASH: Final = keccak(b"Message(string msg)")
_SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def chain_id_for(base_url: str) -> int:
    """1666 for mainnet hosts, 714 for testnet hosts (``asterdex-testnet``)."""
    host = urlparse(base_url).hostname or ""
    return TESTNET_CHAIN_ID if "testnet" in host else MAINNET_CHAIN_ID


@functools.cache
def domain_separator(chain_id: int) -> bytes:
    return keccak(
        _DOMAIN_TYPEHASH
        + keccak(b"AsterSignTransaction")
        + keccak(b"1")
        + chain_id.to_bytes(32, "big")
        + bytes(32)
    )


def digest(msg: str, chain_id: int) -> bytes:
    """The EIP-712 digest of ``Message{msg}`` in the Aster domain."""
    struct_hash = keccak(_MESSAGE_TYPEHASH + keccak(msg.encode("utf-8")))
    return keccak(b"\x19\x01" + domain_separator(chain_id) + struct_hash)


def typed_data(msg: str, chain_id: int) -> dict[str, object]:
    """The full EIP-712 typed data, as wallets and eth-account see it."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Message": [{"name": "msg", "type": "string"}],
        },
        "primaryType": "Message",
        "domain": {
            "name": "AsterSignTransaction",
            "version": "1",
            "chainId": chain_id,
            "verifyingContract": ZERO_ADDRESS,
        },
        "message": {"msg": msg},
    }


def reference_digest(msg: str, chain_id: int) -> bytes:
    """The digest computed by eth-account itself (slow; for tests and doctor)."""
    from eth_account.messages import _hash_eip191_message, encode_typed_data

    return bytes(_hash_eip191_message(encode_typed_data(full_message=typed_data(msg, chain_id))))


def checksum_address(address: str) -> str:
    """EIP-55 checksummed form of a 0x address (raises ValueError if malformed)."""
    from eth_utils.address import to_checksum_address

    return str(to_checksum_address(address))


def is_address(value: str) -> bool:
    from eth_utils.address import is_address as _is_address

    return bool(_is_address(value))


def _address_from_pubkey(pub: coincurve.PublicKey) -> str:
    return checksum_address("0x" + keccak(pub.format(compressed=False)[1:])[-20:].hex())


class Signer:
    """An API wallet key. The key never appears in ``repr``, ``str`` or pickles."""

    __slots__ = ("_key", "address", "chain_id")

    def __init__(self, private_key: str | bytes, chain_id: int = MAINNET_CHAIN_ID) -> None:
        raw = _key_bytes(private_key)
        self._key = coincurve.PrivateKey(raw)
        self.address = _address_from_pubkey(self._key.public_key)
        self.chain_id = chain_id

    def __repr__(self) -> str:
        return f"Signer(address={self.address}, chain_id={self.chain_id})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Signer holds a private key and cannot be pickled")

    def sign(self, msg: str) -> str:
        """Hex signature (``0x`` + r‖s‖v, v in {27, 28}) of the exact parameter string ``msg``."""
        sig = self._key.sign_recoverable(digest(msg, self.chain_id), hasher=None)
        return "0x" + sig[:64].hex() + format(sig[64] + 27, "02x")


def _key_bytes(private_key: str | bytes) -> bytes:
    if isinstance(private_key, bytes):
        raw = private_key
    else:
        text = private_key.strip()
        text = text[2:] if text.lower().startswith("0x") else text
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
    if len(raw) != 32 or not 0 < int.from_bytes(raw, "big") < _SECP256K1_N:
        raise CredentialError("private key is not 32 bytes of hex (64 hex digits, optional 0x)")
    return raw


def recover_address(msg: str, signature: str, chain_id: int) -> str | None:
    """The checksummed address that signed ``msg``, or None if the signature is malformed.

    Accepts ``0x`` or no prefix, any hex case, v in {27, 28} (and 0/1, leniently).
    """
    text = signature[2:] if signature[:2].lower() == "0x" else signature
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    if len(raw) != 65:
        return None
    v = raw[64]
    recid = v - 27 if v in (27, 28) else v if v in (0, 1) else -1
    if recid < 0:
        return None
    try:
        pub = coincurve.PublicKey.from_signature_and_message(
            raw[:64] + bytes([recid]), digest(msg, chain_id), hasher=None
        )
    except Exception:
        return None
    return _address_from_pubkey(pub)


def generate_private_key() -> str:
    """A fresh random private key as 0x-hex (for ``wallet new`` and tests)."""
    return "0x" + coincurve.PrivateKey().secret.hex()


def encrypt_keystore(private_key: str, password: str) -> dict[str, object]:
    """An eth-account (Web3 Secret Storage v3, scrypt) keystore for ``private_key``."""
    from eth_account import Account

    result: dict[str, object] = Account.encrypt(_key_bytes(private_key), password, kdf="scrypt")
    return result


def decrypt_keystore(keystore: dict[str, object], password: str) -> str:
    """The 0x-hex private key from a keystore; ValueError on a wrong password."""
    from eth_account import Account

    return "0x" + bytes(Account.decrypt(keystore, password)).hex()


class NonceSource:
    """Nonces unique per ``user`` across processes.

    A nonce is the wall clock in microseconds with its low bits replaced by this process's
    ``slot``: two processes with different slots can never produce the same value, and one
    process never repeats itself (it steps by ``SLOTS`` when the clock has not moved).
    """

    SLOTS: Final = 64

    def __init__(self, slot: int) -> None:
        if not 0 <= slot < self.SLOTS:
            raise ValueError(f"nonce slot must be in 0..{self.SLOTS - 1}, got {slot}")
        self.slot = slot
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            now = time.time_ns() // 1000
            value = now - now % self.SLOTS + self.slot
            if value <= self._last:
                value = self._last + self.SLOTS
            self._last = value
            return value
