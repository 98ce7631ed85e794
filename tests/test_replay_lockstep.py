"""``sim --market replay --lockstep``: agent processes over HTTP trade exactly as ``backtest``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from aster_agents.config.schema import load_fleet
from aster_agents.fleet.backtest import run_backtest
from aster_agents.ledger import Ledger
from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.engine import Engine
from aster_agents.sim.lockstep import Lockstep, replay_events
from aster_agents.sim.recording import load_recording
from aster_agents.sim.sources import WEEK_MS, ReplayMarket
from tests.kit.wait import wait_for
from tests.plugins.sim import start_sim_process

FIXTURE = Path(__file__).parent / "data" / "replay" / "xrp"
WARMUP = 100  # the replay's default start: 100 candles in
CANDLES = 52  # then 4h20 of 5m candles: across the recorded funding at 00:00 UTC, long enough
# for an agent that holds then to book it (the runner reads its funding every tenth tick)
# (id, strategy, scan seconds): three styles that trade several times in those four hours
AGENTS = (("eq-1", "scalper", 300), ("eq-2", "momentum", 300), ("eq-3", "breakout", 600))


def write_recording(out: Path) -> Path:
    """The fixture's first WARMUP + CANDLES candles and its funding rates."""
    out.mkdir(parents=True)
    lines = (FIXTURE / "XRPUSDT-5m-klines.csv").read_text().splitlines()
    (out / "XRPUSDT-5m-klines.csv").write_text("\n".join(lines[: 1 + WARMUP + CANDLES]) + "\n")
    funding = (FIXTURE / "XRPUSDT-fundingRate.csv").read_text()
    (out / "XRPUSDT-fundingRate.csv").write_text(funding)
    return out


KEYS = {a: (generate_private_key(), generate_private_key()) for a, _, _ in AGENTS}


def write_fleet(root: Path) -> tuple[Path, dict[str, str]]:
    """An agents.d of AGENTS, each on its own account; returns it and the key env vars."""
    d = root / "agents.d"
    d.mkdir(parents=True)
    (d / "_portfolio.yaml").write_text("state_dir: state\n")
    env: dict[str, str] = {}
    for agent_id, strategy, scan in AGENTS:
        user, signer = KEYS[agent_id]
        name = agent_id.upper().replace("-", "_") + "_KEY"
        env[name] = signer
        (d / f"{agent_id}.yaml").write_text(
            f"id: {agent_id}\nname: {strategy}\nexchange:\n"
            f'  user: "{Signer(user).address}"\n  signer: "{Signer(signer).address}"\n'
            f"  signer_key_env: {name}\n  base_url: http://127.0.0.1:1\n"
            f"trading:\n  strategy: {strategy}\n  symbols: [XRPUSDT]\n  interval: 5m\n"
            f"  scan_interval_seconds: {scan}\n  max_positions: 1\n  min_confidence: 0.5\n"
            "  position_size_pct: 0.1\n  leverage: 3\n  stop_loss_pct: 0.004\n"
            "  take_profit_pct: 0.006\nallocation:\n  capital_pct: 0.5\n"
        )
    return d, env


def point_at(config_dir: Path, base_url: str) -> None:
    for path in config_dir.glob("eq-*.yaml"):
        path.write_text(path.read_text().replace("http://127.0.0.1:1", base_url))


@contextmanager
def agent_processes(
    config_dir: Path, state_dir: Path, env: dict[str, str], speed: float
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``aster-agent run --id`` for every agent; SIGTERM on the way out, exit 0 expected."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
    base.update(env, ASTER_AGENTS_MARKET_SPEED=str(speed))
    cmd = [sys.executable, "-m", "aster_agents", "--config-dir", str(config_dir)]
    procs = []
    for agent_id, _, _ in AGENTS:
        with (state_dir.parent / f"{agent_id}.stderr").open("ab") as log:
            args = [*cmd, "--state-dir", str(state_dir), "run", "--id", agent_id]
            procs.append(subprocess.Popen(args, env=base, stdout=subprocess.DEVNULL, stderr=log))
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(30) for proc in procs]
    assert codes == [0] * len(procs), [
        (state_dir.parent / f"{a}.stderr").read_text()[-2000:] for a, _, _ in AGENTS
    ]


def lockstep_run(root: Path, data: Path, speed: float) -> tuple[dict[str, Any], int]:
    """A lockstep replay of ``data`` by the agents as processes: (books, its start time)."""
    config_dir, env = write_fleet(root)
    sim = start_sim_process(
        "--market", "replay", "--data", str(data), "--lockstep", "--speed", str(speed),
        "--config-dir", str(config_dir),
    )  # fmt: skip
    try:
        point_at(config_dir, sim.base_url)
        state = root / "state"
        state.mkdir()
        with (
            httpx.Client(base_url=sim.base_url, timeout=10) as http,
            agent_processes(config_dir, state, env, speed),
        ):
            status = wait_for(
                lambda: (doc := http.get("/sim/lockstep").json())["finished"] and doc,
                timeout=90,
                what="the lockstep replay to finish",
            )
        return books(state, status["offsetMs"]), status["start"]
    finally:
        assert sim.stop() == 0


def books(state_dir: Path, offset_ms: int = 0) -> dict[str, Any]:
    """Fills (market time less the replay's shift), positions, sleeves and equity snapshots."""
    with Ledger(state_dir) as ledger:
        return {
            "fills": [f._replace(time_ms=f.time_ms - offset_ms) for f in ledger.trade_fills()],
            "positions": [p[:6] for p in ledger.positions()],
            "sleeves": sorted((a.agent_id, a.capital, a.units) for a in ledger.agent_rows()),
            "equity": {a: [p.equity for p in ledger.equity_history(a)] for a, _, _ in AGENTS},
            "funding": [r._replace(time_ms=r.time_ms - offset_ms) for r in ledger.funding_rows()],
        }


@pytest.mark.slow
def test_a_lockstep_replay_of_agent_processes_equals_the_backtest_trade_for_trade(
    tmp_path: Path,
) -> None:
    """Same recording, same agents: backtest and lockstep processes at two speeds book alike."""
    data = write_recording(tmp_path / "data")
    config_dir, _ = write_fleet(tmp_path / "bt")
    (tmp_path / "bt" / "state").mkdir()
    result = run_backtest(load_fleet(config_dir), data, state_dir=tmp_path / "bt" / "state")
    want = books(tmp_path / "bt" / "state")
    kinds = {(f.agent_id, f.kind) for f in want["fills"]}
    assert {a for a, _ in kinds} == {a for a, _, _ in AGENTS}  # every agent traded
    assert {k for _, k in kinds} >= {"open", "close", "protect"}
    assert len(want["fills"]) >= 10 and want["funding"]
    speeds = (1.0, 5000.0)  # both at once: they wait on each other's HTTP more than on CPU
    with ThreadPoolExecutor(len(speeds)) as pool:
        runs = [pool.submit(lockstep_run, tmp_path / f"speed-{s:g}", data, s) for s in speeds]
        for run in runs:
            got, start = run.result()
            assert (start - result.start_ms) % WEEK_MS == 0  # the replay's shift: whole weeks
            assert got["fills"] == want["fills"]
            assert got == want


def test_replay_events_interleave_price_steps_and_agents_by_time_then_id() -> None:
    """Agents due together come by index; price steps fill the gaps; nothing after the end."""
    events = list(replay_events(1000, 2000, 300, (500, 250)))
    assert events == [
        (1000, (0, 1)),
        (1200, ()),
        (1250, (1,)),
        (1500, (0, 1)),
        (1750, (1,)),
        (1800, ()),
        (2000, (0, 1)),
    ]


def test_lockstep_refuses_an_unknown_agent_and_a_market_that_is_not_a_replay(
    tmp_path: Path,
) -> None:
    """--lockstep without --market replay or --config-dir: exit 2 in one line; a stranger's
    turn is answered 400 naming the agents of the replay."""
    cmd = [sys.executable, "-m", "aster_agents", "sim", "--port", "0", "--lockstep"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--market replay" in done.stderr
    assert "Traceback" not in done.stderr
    data = write_recording(tmp_path / "data")
    replay = [*cmd, "--market", "replay", "--data", str(data)]
    done = subprocess.run(replay, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--config-dir" in done.stderr
    config_dir, _ = write_fleet(tmp_path)
    sim = start_sim_process(
        "--market", "replay", "--data", str(data), "--lockstep", "--config-dir", str(config_dir)
    )
    try:
        with httpx.Client(base_url=sim.base_url, timeout=10) as http:
            info = http.get("/fapi/v3/exchangeInfo").json()
            assert info["marketClock"] == "lockstep"
            reply = http.post("/sim/lockstep/turn", data={"agent": "stranger", "scanMs": "1000"})
            assert reply.status_code == 400 and "eq-1, eq-2, eq-3" in reply.json()["msg"]
            status = http.get("/sim/lockstep").json()
            assert status["waitingFor"] == ["eq-1", "eq-2", "eq-3"]
            assert status["time"] == status["start"] and not status["finished"]
    finally:
        assert sim.stop() == 0


def test_lockstep_waits_for_every_agent_then_hands_turns_in_order_and_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """Nothing before all have asked; start-ups by id; an unfinished turn is given again."""
    market = ReplayMarket(load_recording(write_recording(tmp_path / "data")))
    steps = Lockstep(market, Engine(market), ("b", "a"), wait_s=0.05)
    scan = 3_600_000
    assert steps.turn("b", scan)["turn"] == 0  # "a" has not asked yet: nothing moves
    assert steps.turn("a", scan)["turn"] == 1  # both here: start-up turns, by id
    assert steps.turn("b", scan)["turn"] == 0
    assert steps.turn("a", scan, done=0)["turn"] == 1  # "a" restarted: its turn again
    assert steps.turn("a", scan, done=1)["turn"] == 0
    assert steps.turn("b", scan)["turn"] == 2
    grants = []
    while not steps.finished:  # each holder finishes its turn: the ticks, hour by hour
        holder, number = steps.holder, steps.turns
        assert holder is not None
        grants.append((holder, market.now_ms()))
        steps.turn(holder, scan, done=number)
    hours = [steps.start_ms + h * scan for h in range(5)]  # 4h20 of candles: five hours begin
    assert grants == [("b", steps.start_ms)] + [(a, t) for t in hours for a in ("a", "b")]
    last_step = steps.start_ms + CANDLES * 300_000 - 75_000  # a quarter of 5m before the end
    assert steps.status()["time"] == last_step and steps.holder is None
    assert steps.turn("a", scan, done=steps.turns)["finished"]
