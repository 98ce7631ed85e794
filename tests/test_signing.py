"""EIP-712 signing: the vectors of shared/aster-v3-api.md 1.7, recovery, keys, nonces."""

from __future__ import annotations

import itertools
import pickle
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aster_agents.errors import CredentialError
from aster_agents.signing import (
    MAINNET_CHAIN_ID,
    TESTNET_CHAIN_ID,
    NonceSource,
    Signer,
    chain_id_for,
    digest,
    domain_separator,
    generate_private_key,
    recover_address,
    reference_digest,
)

KEY = "0x4fd0a42218f3eae43a6ce26d22544e986139a01e5b34a62db53757ffca81bae1"
AGENT = "0x21cF8Ae13Bb72632562c6Fff438652Ba1a151bb0"
E1_MSG = (
    "symbol=ASTERUSDT&type=LIMIT&side=BUY&timeInForce=GTC&quantity=20&price=0.5"
    "&nonce=1748310859508867&signer=0x21cF8Ae13Bb72632562c6Fff438652Ba1a151bb0"
)
E2_MSG = (
    "symbol=ASTERUSDT&type=LIMIT&side=BUY&timeInForce=GTC&quantity=20&price=0.5"
    "&nonce=1748310859508867&user=0x63DD5aCC6b1aa0f563956C0e534DD30B6dcF7C4e"
    "&signer=0x21cF8Ae13Bb72632562c6Fff438652Ba1a151bb0"
)
E3_MSG = "nonce=1748310859508867&signer=0x21cF8Ae13Bb72632562c6Fff438652Ba1a151bb0"
E5_MSG = (
    "nonce=1748310859508000&user=0x21cf8ae13bb72632562c6fff438652ba1a151bb0"
    "&signer=0x21cf8ae13bb72632562c6fff438652ba1a151bb0"
)
E5_SIG = (
    "0x923c190fb0e9dea3f7da1a81c4b9a3604b94805c546bf194d8435f20bc93879b1d2f78b107940e61eb8bee91"
    "b19b08c4858ad26efde5b010cd7626e58fa9cd661C"
)

VECTORS = [
    pytest.param(
        MAINNET_CHAIN_ID,
        E1_MSG,
        "0xed6fe2804fb7a74d857c73d838ce3722b0f44d2c023c24bca0acb2bdf0d56267",
        "0xd82a6784f5eff00b95ecb88145cf7a5fa6803ea6f67e0217262073da628750a7"
        "42bb3ba555af418320e55029afe358957808d4f810d73ea663d9c91852cd6d941c",
        id="E1",
    ),
    pytest.param(
        MAINNET_CHAIN_ID,
        E2_MSG,
        "0x214122039b686e20a15baab91d368d354cf8c88067cb8b0e96e9018d8b08a625",
        "0x0a56c5923ebf3524475c5f631940ec4c0e41dbd300ad28198d1915d8f3ca49ce"
        "26fd1aeb8b0c3079133595da0de38322ae7e860e0c76d032c4a491d27c1430b01c",
        id="E2",
    ),
    pytest.param(
        MAINNET_CHAIN_ID,
        E3_MSG,
        "0xd5181d2f501c0a68c31516a89d610155f8dcd0a837ec4d7d629a36bc46ca4c83",
        "0xcd0ea4d53d67b3aa39bb62a85fbd4b819f83f745a6eb30c6dfd31991b7b9f00a"
        "359d9be3656c8c0860e71e2416f0c06b89d7f64e291f0d7ebe71f7fb76a144c11b",
        id="E3",
    ),
    pytest.param(
        TESTNET_CHAIN_ID,
        E1_MSG,
        "0x9dcd200534ea4cd58f431d0445a26170e5d4c436e4f0e30317cbe98916285c58",
        "0x798abbc1eb6244bdf530e3890383494679aecf574a0d65cd79ed48b151df2e18"
        "2cafc9a2b055701c9c0dbc091898f6c3eae29307ca554f3ab97c8b860de35bef1c",
        id="E4",
    ),
]


@pytest.mark.parametrize(("chain_id", "msg", "want_digest", "want_sig"), VECTORS)
def test_vectors_digest_and_signature(
    chain_id: int, msg: str, want_digest: str, want_sig: str
) -> None:
    """The digest and the deterministic signature equal the documented E1-E4 vectors."""
    assert "0x" + digest(msg, chain_id).hex() == want_digest
    assert Signer(KEY, chain_id).sign(msg) == want_sig


def test_domain_separators() -> None:
    """The mainnet and testnet domain separators equal the documented constants."""
    mainnet = "a95d0a7a6f3f17fcebb0c2336645385ce79cde7523f71ab147fdb7f15e9f37f9"
    testnet = "fad01b07bed5729a04dbb977fd86da612eba71d668660bf12cf10b3d65b74d94"
    assert domain_separator(MAINNET_CHAIN_ID).hex() == mainnet
    assert domain_separator(TESTNET_CHAIN_ID).hex() == testnet


# eth-account raises the recursion limit when first used; do that before hypothesis watches it.
reference_digest("warm-up", MAINNET_CHAIN_ID)


@settings(max_examples=40, deadline=None)
@given(msg=st.text(max_size=200), chain_id=st.sampled_from([MAINNET_CHAIN_ID, TESTNET_CHAIN_ID]))
def test_digest_matches_eth_account(msg: str, chain_id: int) -> None:
    """The fast digest equals eth-account's encode_typed_data digest for any text."""
    assert digest(msg, chain_id) == reference_digest(msg, chain_id)


@pytest.mark.parametrize("chain_id", [MAINNET_CHAIN_ID, TESTNET_CHAIN_ID])
def test_recover_round_trip(chain_id: int) -> None:
    """recover_address returns the signer's address for a fresh signature."""
    signer = Signer(KEY, chain_id)
    assert signer.address == AGENT
    assert recover_address(E1_MSG, signer.sign(E1_MSG), chain_id) == AGENT


def _variants(sig: str) -> list[str]:
    body, v = sig[2:-2], int(sig[-2:], 16)
    return [
        body + format(v, "02x"),
        "0x" + (body + format(v, "02x")).upper(),
        "0x" + body + format(v - 27, "02x"),
    ]


def test_recover_accepts_lenient_forms() -> None:
    """No 0x, upper-case hex and v in {0, 1} all recover the same address."""
    sig = Signer(KEY).sign(E3_MSG)
    for form in _variants(sig):
        assert recover_address(E3_MSG, form, MAINNET_CHAIN_ID) == AGENT, form


def test_recover_ccxt_signature_e5() -> None:
    """CCXT's signature with an upper-case v byte (vector E5) recovers the agent address."""
    assert recover_address(E5_MSG, E5_SIG, MAINNET_CHAIN_ID) == AGENT


@pytest.mark.parametrize("bad", ["", "0xzz", "0x" + "00" * 64, "0x" + "11" * 64 + "1d"])
def test_recover_rejects_malformed(bad: str) -> None:
    """Malformed signatures (bad hex, wrong length, v not in 0/1/27/28) recover nothing."""
    assert recover_address(E1_MSG, bad, MAINNET_CHAIN_ID) is None


def test_recover_wrong_message_or_chain() -> None:
    """A signature over another message or chain does not recover the signer."""
    sig = Signer(KEY).sign(E1_MSG)
    assert recover_address(E2_MSG, sig, MAINNET_CHAIN_ID) != AGENT
    assert recover_address(E1_MSG, sig, TESTNET_CHAIN_ID) != AGENT


def test_signer_hides_key() -> None:
    """The key appears in neither repr nor str, and a Signer refuses to be pickled."""
    signer = Signer(KEY)
    for text in (repr(signer), str(signer)):
        assert KEY[2:] not in text.lower()
        assert AGENT in text
    with pytest.raises(TypeError):
        pickle.dumps(signer)


@pytest.mark.parametrize("bad", ["0x1234", "not hex", "0x" + "00" * 32, b"short"])
def test_signer_rejects_bad_keys(bad: str | bytes) -> None:
    """A key that is not 32 valid bytes raises CredentialError without echoing the key."""
    with pytest.raises(CredentialError) as info:
        Signer(bad)
    shown = bad if isinstance(bad, str) else bad.hex()
    assert shown not in str(info.value)


def test_generated_keys_sign() -> None:
    """generate_private_key yields a usable, fresh key each time."""
    a, b = generate_private_key(), generate_private_key()
    assert a != b
    signer = Signer(a)
    assert recover_address("x=1", signer.sign("x=1"), MAINNET_CHAIN_ID) == signer.address


@pytest.mark.parametrize(
    ("url", "chain_id"),
    [
        ("https://fapi.asterdex.com", 1666),
        ("https://fapi3.asterdex.com/", 1666),
        ("https://fapi.asterdex-testnet.com", 714),
        ("http://127.0.0.1:8080", 1666),
    ],
)
def test_chain_id_for(url: str, chain_id: int) -> None:
    """Testnet hosts map to 714, everything else to mainnet 1666."""
    assert chain_id_for(url) == chain_id


def test_nonces_monotonic_in_process() -> None:
    """One NonceSource never repeats and always increases, carrying its slot in the low bits."""
    source = NonceSource(5)
    values = [source.next() for _ in range(20_000)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert {v % NonceSource.SLOTS for v in values} == {5}


def test_nonces_unique_across_threads() -> None:
    """Threads sharing one NonceSource never get the same nonce."""
    source = NonceSource(1)
    out: list[list[int]] = [[] for _ in range(4)]

    def work(bucket: list[int]) -> None:
        bucket.extend(source.next() for _ in range(5_000))

    threads = [threading.Thread(target=work, args=(b,)) for b in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [v for bucket in out for v in bucket]
    assert len(set(flat)) == len(flat)


_CHILD = (
    "import sys\n"
    "from aster_agents.signing import NonceSource\n"
    "s = NonceSource(int(sys.argv[1]))\n"
    "print('\\n'.join(str(s.next()) for _ in range(10_000)))\n"
)


@pytest.mark.slow
def test_nonces_unique_across_processes() -> None:
    """Two real processes with different slots produce 10k nonces each with no overlap."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(slot)], stdout=subprocess.PIPE, text=True
        )
        for slot in (0, 1)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    sets = [{int(line) for line in out.split()} for out in outputs]
    assert [len(s) for s in sets] == [10_000, 10_000]
    assert not sets[0] & sets[1]


@pytest.mark.parametrize("slot", [-1, NonceSource.SLOTS])
def test_nonce_slot_range(slot: int) -> None:
    """A slot outside 0..SLOTS-1 is refused."""
    with pytest.raises(ValueError, match="slot"):
        NonceSource(slot)


def test_signing_backend_is_coincurve() -> None:
    """Signatures come from coincurve (libsecp256k1), never a pure-Python fallback."""
    import coincurve

    assert isinstance(Signer(KEY)._key, coincurve.PrivateKey)
