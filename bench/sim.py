"""Signed order throughput of the simulated exchange: N concurrent clients, real loopback HTTP.

Runs ``python -m aster_agents.sim`` as a separate process (its own core and GIL) with
generous rate limits, and N client threads in this process, each with its own main account
and API wallet, alternating MARKET BUY/SELL orders (every request is signed and verified).

    .venv/bin/python bench/sim.py --json [--clients 10] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.plugins.sim import SignedClient, new_keys, start_sim_process

TARGET_PER_SECOND = 300


def _worker(
    client: SignedClient, stop: threading.Event, latencies: list[float], errors: list[str]
) -> None:
    side = "BUY"
    while not stop.is_set():
        params = {"symbol": "BTCUSDT", "side": side, "type": "MARKET", "quantity": "0.001"}
        t0 = time.perf_counter()
        try:
            response = client.send("POST", "/fapi/v3/order", params)
        except httpx.HTTPError as exc:
            errors.append(type(exc).__name__)
            continue
        if response.status_code == 200:
            latencies.append(time.perf_counter() - t0)
        else:
            errors.append(response.text[:120])
        side = "SELL" if side == "BUY" else "BUY"


def run(clients: int, seconds: float) -> dict[str, object]:
    keys = [new_keys() for _ in range(clients)]
    with tempfile.TemporaryDirectory() as tmp:
        accounts = Path(tmp) / "accounts.yaml"
        accounts.write_text(
            "".join(
                f"- user: '{k.user}'\n  signers: ['{k.signers[0]}']\n  balance_usdt: 1000000\n"
                for k in keys
            )
        )
        proc = start_sim_process(
            "--accounts",
            str(accounts),
            "--weight-limit",
            "100000000",
            "--orders-10s",
            "100000000",
            "--orders-1m",
            "100000000",
        )
    try:
        sessions = [
            SignedClient(proc.base_url, k.agents[0], k.user, slot=i) for i, k in enumerate(keys)
        ]
        for s in sessions:  # warm up: connection, market path, account
            s.send("GET", "/fapi/v3/balance")
        stop = threading.Event()
        per_thread: list[list[float]] = [[] for _ in sessions]
        errors: list[str] = []
        threads = [
            threading.Thread(target=_worker, args=(s, stop, lat, errors))
            for s, lat in zip(sessions, per_thread, strict=True)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        for s in sessions:
            s.close()
    finally:
        proc.stop()
    lat = sorted(x for xs in per_thread for x in xs)
    ok = len(lat)
    return {
        "version": 1,
        "bench": "sim.signed_orders",
        "clients": clients,
        "seconds": round(elapsed, 3),
        "ok": ok,
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:3],
        "orders_per_second": round(ok / elapsed, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2) if lat else None,
        "target_per_second": TARGET_PER_SECOND,
        "meets_target": ok / elapsed >= TARGET_PER_SECOND,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    result = run(args.clients, args.seconds)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
