"""``sim --market replay``: recorded klines, mark prices and funding through the same engine."""

from __future__ import annotations

import csv
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aster_agents.errors import ConfigError
from aster_agents.sim.engine import MONEY, ApiError, Engine
from aster_agents.sim.recording import load_recording
from aster_agents.sim.server import SimConfig, SimServer
from aster_agents.sim.sources import WEEK_MS, ReplayMarket
from tests.kit.wait import wait_for
from tests.plugins.sim import SignedClient, SimKeys, new_keys, start_sim_process

FIXTURE = Path(__file__).parent / "data" / "replay" / "xrp"
REFERENCE = 1_790_000_000_000  # a fixed reference keeps the week shift independent of the clock
USER = "0x00000000000000000000000000000000000000aa"
FIVE_MIN = 300_000
FUNDING_2021_11_18 = 1_637_193_600_000  # 00:00 UTC, rate 0.0001 in the recording
D = Decimal


class FakeWall:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _recorded() -> list[list[str]]:
    with (FIXTURE / "XRPUSDT-5m-klines.csv").open() as fh:
        return list(csv.reader(fh))[1:]


def _market(wall: FakeWall | None = None, speed: float = 1.0) -> ReplayMarket:
    return ReplayMarket(
        load_recording(FIXTURE), speed=speed, reference_ms=REFERENCE, wall=wall or FakeWall()
    )


def test_replay_serves_the_recorded_candles_shifted_by_whole_weeks() -> None:
    """Every 5m candle served is the recording's row, its time shifted by whole weeks."""
    market = _market()
    market.freeze(market.end_ms)
    rows = market.klines("XRPUSDT", "5m", limit=1000)
    assert market.offset_ms % WEEK_MS == 0 and market.genesis_ms >= REFERENCE
    served = [(int(str(r[0])) - market.offset_ms, D(str(r[2])), D(str(r[4]))) for r in rows]
    assert served == [(int(r[0]), D(r[2]), D(r[4])) for r in _recorded()]


def test_a_mark_kept_for_its_instant_equals_a_fresh_one_and_yields_to_pins_and_shocks() -> None:
    """Marks and books asked again at the same instant are the ones a fresh market gives;
    a pin or a shock of the symbol applies at once, and its removal too."""
    market, fresh = _market(), _market()
    times = [market.start_ms + k * 61_000 for k in range(12)]
    for t in times + times[::-1]:
        market.freeze(t)
        fresh.freeze(t)
        assert market.mark("XRPUSDT") == fresh.mark("XRPUSDT")
        assert market.book("XRPUSDT") == market.book("XRPUSDT", t) == fresh.book("XRPUSDT", t)
    before = market.mark("XRPUSDT")
    market.pin("XRPUSDT", D("2.5"))
    assert market.mark("XRPUSDT") == D("2.5") and market.book("XRPUSDT")[0] < D("2.5")
    market.pin("XRPUSDT", None)
    assert market.mark("XRPUSDT") == before
    market.shock("XRPUSDT", D("-0.5"))
    assert market.mark("XRPUSDT") < before


def test_coarser_intervals_aggregate_the_recording_and_finer_ones_are_refused() -> None:
    """A 1h candle is twelve recorded 5m candles; 1m is finer than the recording: -1120."""
    market = _market()
    market.freeze(market.end_ms)
    hour = market.klines("XRPUSDT", "1h", limit=1)[0]
    start = int(str(hour[0])) - market.offset_ms
    parts = [r for r in _recorded() if start <= int(r[0]) < start + 3_600_000]
    assert len(parts) == 12
    assert D(str(hour[1])) == D(parts[0][1]) and D(str(hour[4])) == D(parts[-1][4])
    assert D(str(hour[2])) == max(D(p[2]) for p in parts)
    assert D(str(hour[3])) == min(D(p[3]) for p in parts)
    with pytest.raises(ApiError) as err:
        market.klines("XRPUSDT", "1m")
    assert err.value.code == -1120


def test_market_time_starts_after_the_warmup_and_stops_at_the_recordings_end() -> None:
    """The clock starts 100 candles in, runs at --speed and holds the last close at the end."""
    wall = FakeWall()
    market = _market(wall, speed=600.0)
    assert market.now_ms() == market.genesis_ms + 100 * FIVE_MIN
    assert len(market.klines("XRPUSDT", "5m", limit=1000)) == 101  # 100 closed + the forming one
    wall.now += 1.0
    assert market.now_ms() == market.genesis_ms + 100 * FIVE_MIN + 600_000
    wall.now += 10_000.0
    assert market.finished and market.now_ms() == market.end_ms
    assert market.mark("XRPUSDT") == D(_recorded()[-1][4])


def test_recorded_funding_settles_on_a_position_and_unrecorded_times_pay_nothing() -> None:
    """An open long pays qty x mark x the recorded rate at 2021-11-18 00:00, nothing before."""
    market = _market()
    at = FUNDING_2021_11_18 + market.offset_ms
    market.freeze(at - 9 * 3_600_000)  # one settlement (unrecorded) before the recorded one
    engine = Engine(market, funding_interval_ms=8 * 3_600_000)
    engine.add_account(USER, D(10_000))
    engine.new_order(
        USER, {"symbol": "XRPUSDT", "side": "BUY", "type": "MARKET", "quantity": "100"}
    )
    market.advance(9 * 3_600_000)
    rows = engine.income_json(USER, {"incomeType": "FUNDING_FEE"})
    want = (-D(100) * market.mark("XRPUSDT", at) * D("0.0001")).quantize(MONEY)
    assert [(r["time"], D(str(r["income"]))) for r in rows] == [(at, want)]


def test_mark_price_follows_recorded_mark_klines_at_the_base_interval(tmp_path: Path) -> None:
    """With a markPriceKlines file at the base interval, premiumIndex's mark comes from it."""
    rows = _recorded()[:3]
    (tmp_path / "XRPUSDT-5m-klines.csv").write_text(
        "open_time,open,high,low,close,volume\n" + "".join(",".join(r) + "\n" for r in rows)
    )
    marks = [[r[0], "2.0", "2.0", "2.0", "2.0"] for r in rows]
    (tmp_path / "XRPUSDT-5m-markPriceKlines.csv").write_text(
        "open_time,open,high,low,close\n" + "".join(",".join(r) + "\n" for r in marks)
    )
    market = ReplayMarket(load_recording(tmp_path), reference_ms=REFERENCE, wall=FakeWall())
    assert market.mark("XRPUSDT") == D("2.0")
    assert D(str(market.klines("XRPUSDT", "5m")[0][4])) == D(rows[0][4])


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("XRPUSDT-5m-klines.csv", "time,o\n", "line 1: expected the header"),
        (
            "XRPUSDT-5m-klines.csv",
            "open_time,open,high,low,close,volume\n0,1,1,1,1,1\n600000,1,1,1,1,1\n",
            "line 3: open_time 600000: expected 300000",
        ),
        (
            "XRPUSDT-5m-klines.csv",
            "open_time,open,high,low,close,volume\n0,1,x,1,1,1\n",
            "line 2: high: expected a number",
        ),
        ("QQQXUSDT-5m-klines.csv", "open_time\n", "QQQXUSDT is not offered"),
        ("notes.txt", "", "no SYMBOL-INTERVAL-klines.csv file"),
    ],
)
def test_a_bad_recording_is_refused_with_one_line_naming_file_and_line(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    """Bad headers, gaps, non-numbers and unknown symbols name the file and the line."""
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=expected):
        SimServer(SimConfig(market="replay", data_dir=tmp_path))


def test_the_cli_refuses_a_bad_recording_with_exit_2_and_one_line(tmp_path: Path) -> None:
    """sim --market replay --data DIR with a gap: one stderr line naming the file, exit 2."""
    (tmp_path / "XRPUSDT-5m-klines.csv").write_text(
        "open_time,open,high,low,close,volume\n0,1,1,1,1,1\n900000,1,1,1,1,1\n"
    )
    cmd = [sys.executable, "-m", "aster_agents", "sim", "--market", "replay", "--data"]
    done = subprocess.run([*cmd, str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "XRPUSDT-5m-klines.csv: line 3" in lines[0]
    assert "Traceback" not in done.stderr


def _replay_server(keys: SimKeys) -> SimServer:
    config = SimConfig(seed=5, start_time_ms=REFERENCE, market="replay", data_dir=FIXTURE)
    server = SimServer(config)
    server.market.freeze(server.market.start_ms)  # the same market time from the first request
    server.add_account(keys.account())
    server.start()
    return server


def _step(server: SimServer, ms: int) -> None:
    with server.engine.lock:
        server.market.advance(ms)
        server.engine.settle_funding()
        server.engine.tick()


def _session(server: SimServer, keys: SimKeys) -> dict[str, Any]:
    """The same orders at the same market times: market, limit, stop and take-profit."""
    client = SignedClient(server.base_url, keys.agents[0], keys.user)
    try:
        orders = [
            {"side": "BUY", "type": "MARKET", "quantity": "500"},
            {"side": "SELL", "type": "STOP_MARKET", "stopPrice": "1.0400", "closePosition": "true"},
            {"side": "SELL", "type": "MARKET", "quantity": "200"},
            {
                "side": "BUY",
                "type": "LIMIT",
                "quantity": "300",
                "price": "1.0800",
                "timeInForce": "GTC",
            },
        ]
        for order in orders:
            client.ok("POST", "/fapi/v3/order", {"symbol": "XRPUSDT", **order})
            _step(server, 37 * FIVE_MIN)
        _step(server, 200 * FIVE_MIN)
        get = lambda path, **p: client.ok("GET", path, {"symbol": "XRPUSDT", **p})  # noqa: E731
        return {
            "trades": get("/fapi/v3/userTrades"),
            "orders": get("/fapi/v3/allOrders"),
            "positions": get("/fapi/v3/positionRisk"),
            "income": client.ok("GET", "/fapi/v3/income"),
            "balance": client.ok("GET", "/fapi/v3/balance"),
            "book": client.public("/fapi/v3/depth", symbol="XRPUSDT", limit=5).json(),
            "klines": client.public("/fapi/v3/klines", symbol="XRPUSDT", interval="1h").json(),
        }
    finally:
        client.close()


def test_two_replays_with_the_same_seed_and_recording_give_identical_trades_and_books() -> None:
    """Same seed, recording and orders at the same market times: same trades, books, income."""
    keys = new_keys()
    results = []
    for _ in range(2):
        server = _replay_server(keys)
        try:
            results.append(_session(server, keys))
        finally:
            server.stop()
    first, second = results
    assert len(first["trades"]) >= 3 and first["income"]
    assert first == second


def test_sim_process_replays_the_recording_to_its_end_at_speed() -> None:
    """A real `sim --market replay` process runs to the recording's end and holds its close."""
    proc = start_sim_process("--market", "replay", "--data", str(FIXTURE), "--speed", "200000")
    client = SignedClient(proc.base_url, new_keys().agents[0], None)
    try:
        last = _recorded()[-1]

        def at_end() -> list[Any] | None:
            rows = client.public("/fapi/v3/klines", symbol="XRPUSDT", interval="5m", limit=2)
            row = rows.json()[-1]
            return (
                row if D(row[4]) == D(last[4]) and int(row[6]) % FIVE_MIN == FIVE_MIN - 1 else None
            )

        row = wait_for(at_end, timeout=20)
        assert (int(row[0]) - int(last[0])) % WEEK_MS == 0
        assert client.public("/fapi/v3/premiumIndex", symbol="XRPUSDT").json()["markPrice"] == str(
            D(last[4]).quantize(D("0.0001"))
        )
    finally:
        client.close()
        assert proc.stop() == 0


def test_an_agent_process_on_a_replay_books_its_fills_and_matches_the_exchange(
    tmp_path: Path,
) -> None:
    """A real agent process trading a replay (market time weeks ahead) books every fill."""
    from aster_agents.ledger import Ledger
    from tests.kit.agents import make_fleet

    server = SimServer(SimConfig(market="replay", data_dir=FIXTURE, speed=300.0))
    server.start()
    fleet = make_fleet(
        tmp_path, server, ["replay-1"], symbols=("XRPUSDT",), interval="5m", balance=D(10_000)
    )
    fleet.start("replay-1")
    try:

        def traded() -> bool:
            if not (fleet.state_dir / "ledger.sqlite3").exists():
                return False
            with Ledger(fleet.state_dir) as ledger:
                return len(ledger.trade_fills("replay-1")) >= 2

        wait_for(traded, timeout=60, what="two booked fills on the replay")
    finally:
        codes = fleet.stop_all()
        server.stop()
    assert codes == {"replay-1": 0}, fleet.stderr("replay-1")
    assert fleet.ledger_positions() == fleet.exchange_positions()
    with Ledger(fleet.state_dir) as ledger:
        fills = ledger.trade_fills("replay-1")
    assert all(f.time_ms >= server.market.genesis_ms for f in fills)  # replay time, not 2021
