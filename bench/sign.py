"""EIP-712 signatures per second on one core (target: at least 2,500/s).

Signs realistic order strings with a fresh nonce each, as the client does, in one process for
``--seconds``. ``--json`` prints one JSON document with ``"version": 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from aster_agents.signing import NonceSource, Signer, generate_private_key, recover_address

TARGET_PER_S = 2500
TEMPLATE = (
    "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.012&price=64250.1"
    "&newClientOrderId=a01-000123-open&nonce={nonce}&user={user}&signer={signer}"
)


def measure(seconds: float) -> tuple[int, float]:
    """Sign for about ``seconds``; returns (signatures, elapsed seconds)."""
    signer = Signer(generate_private_key())
    nonces = NonceSource(0)
    user = "0x63DD5aCC6b1aa0f563956C0e534DD30B6dcF7C4e"
    first = TEMPLATE.format(nonce=nonces.next(), user=user, signer=signer.address)
    if recover_address(first, signer.sign(first), signer.chain_id) != signer.address:
        raise SystemExit("signature does not verify: the benchmark would measure a broken signer")
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(200):
            signer.sign(TEMPLATE.format(nonce=nonces.next(), user=user, signer=signer.address))
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count, now - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to sign (default 3)")
    args = parser.parse_args(argv)
    count, elapsed = measure(args.seconds)
    rate = count / elapsed
    result = {
        "version": 1,
        "benchmark": "eip712_sign",
        "signatures_per_s": round(rate, 1),
        "signatures": count,
        "seconds": round(elapsed, 3),
        "cores": 1,
        "target_per_s": TARGET_PER_S,
        "meets_target": rate >= TARGET_PER_S,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "meets" if result["meets_target"] else "MISSES"
        print(f"{rate:,.0f} EIP-712 signatures/s on one core ({verdict} target {TARGET_PER_S}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
