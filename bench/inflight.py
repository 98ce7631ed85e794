"""Time from an agent's restart to its unresolved intent being resolved, with and without noop.

    python bench/inflight.py --json [--window-s 10] [--modes noop window]

An agent process trades through a delaying proxy that holds its first entry order (the
order never reaches the exchange while the agent lives); the agent is SIGKILLed with that
intent sent and unresolved, then started again. Measured: seconds from the restart to the
ledger no longer holding the intent as unresolved. ``noop``: the restarted agent spends the
order's recorded nonce with ``POST /fapi/v3/noop``, finds the order unknown and releases it
at once. ``window``: ``ASTER_AGENTS_NOOP_RESOLVE=0``, it waits until the nonce window
(``--window-s``, stated by the simulator) + 5 s margin after sending has passed; with the
exchange's 60 s that is up to 65 s minus however long the agent was down.

Measured (2 cores shared with other helpers' work, load average 10-13; the agent was killed
right after sending, so it was down a few ms):

    mode    window  restart -> resolved
    noop    10 s    1.85 s   (process start-up + start(); the noop and query take ~20 ms)
    noop    60 s    2.21 s   (independent of the window)
    window  10 s    15.3 s   (window + 5 s margin after sending)
    window  20 s    24.9 s   -> with the exchange's 60 s: about 65 s
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aster_agents.agent.inflight import NOOP_ENV
from aster_agents.ledger import Ledger
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.agents import make_fleet
from tests.kit.proxy import HoldingProxy, first
from tests.kit.wait import wait_for


def _sent_entries(state_dir: Path) -> list[str]:
    with Ledger(state_dir) as ledger:
        return [
            i.client_order_id
            for i in ledger.unresolved_intents("agent-1")
            if i.kind == "open" and i.sent
        ]


def measure(mode: str, window_s: float) -> dict[str, object]:
    config = SimConfig(port=0, seed=7, speed=60.0, nonce_window_s=window_s)
    with (
        SimServer(config) as sim,
        HoldingProxy(sim.base_url, first("POST", "/fapi/v3/order")) as proxy,
        tempfile.TemporaryDirectory() as tmp,
    ):
        url = proxy.start()
        fleet = make_fleet(Path(tmp), sim, ["agent-1"], symbols=("BTCUSDT",), max_positions=1)
        path = fleet.config_dir / "agent-1.yaml"
        path.write_text(path.read_text().replace(sim.base_url, url))
        env = {NOOP_ENV: "0"} if mode == "window" else {}
        proc = fleet.start("agent-1", env)
        wait_for(lambda: proxy.held, 60, "the entry held in the network")
        coid = wait_for(lambda: _sent_entries(fleet.state_dir), 30, "the intent marked sent")[0]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        killed = time.monotonic()
        fleet.start("agent-1", env)
        restarted = time.monotonic()
        wait_for(lambda: coid not in _sent_entries(fleet.state_dir), window_s + 60, "resolution")
        resolved = time.monotonic()
        with Ledger(fleet.state_dir) as ledger:
            intent = ledger.intent(coid)
        fleet.stop_all()
    return {
        "mode": mode,
        "window_s": window_s,
        "restart_to_resolved_s": round(resolved - restarted, 2),
        "down_s": round(restarted - killed, 3),
        "state": intent.state if intent else None,
        "reason": intent.reason if intent else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument(
        "--modes", nargs="+", choices=("noop", "window"), default=["noop", "window"]
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.pop(NOOP_ENV, None)
    for mode in args.modes:
        result = measure(mode, args.window_s)
        print(json.dumps(result) if args.json else result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
