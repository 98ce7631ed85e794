"""`aster-agent doctor`: one line per check against a real simulator, ledger and sockets."""

from __future__ import annotations

import json
import os
import socket
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aster_agents.fleet.doctor import Status, classify_skew
from aster_agents.ledger import Ledger, SharedBudget
from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.server import SimAccount, SimConfig, SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.cli import run_cli

HOST_CHECKS = ("key files", "state dir", "ledger", "supervisord", "rate budget")
EXCHANGE_CHECKS = ("clock", "account", "position mode", "leverage and margin")


def doctor_json(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any]]:
    """Run doctor --json in-process with the fleet's env; (exit code, document)."""
    code, out, err = run_cli(
        [
            "--config-dir",
            str(fleet.config_dir),
            "--state-dir",
            str(fleet.state_dir),
            "doctor",
            "--json",
            *args,
        ],
        capsys,
    )
    assert err == "" or code != 0, err
    return code, json.loads(out)


def statuses(doc: dict[str, Any], agent: str | None = "agent-1") -> dict[str, str]:
    return {c["name"]: c["status"] for c in doc["checks"] if c["agent"] in (agent, None)}


@pytest.fixture
def fleet(tmp_path: Path, sim_server: SimServer, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    """Two agents on the sim's funded account, their keys exported."""
    made = make_fleet(tmp_path, sim_server, ["agent-1", "agent-2"])
    for name, value in made.env().items():
        if name.endswith("_PRIVATE_KEY"):
            monkeypatch.setenv(name, value)
    return made


def test_healthy_fleet_passes_and_changes_nothing(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """Healthy sim: every check PASS (supervisord WARN: not running), exit 0, no order placed."""
    with Ledger(fleet.state_dir) as ledger:
        ledger.register_agent("agent-1", fleet.user, max_positions=2, enabled=True)
        audit_before = len(ledger.audit(limit=1000))
    code, doc = doctor_json(fleet, capsys)
    assert code == 0 and doc["version"] == 1 and doc["ok"] is True
    for agent in ("agent-1", "agent-2"):
        got = statuses(doc, agent)
        assert got.pop("supervisord") == "WARN"
        assert set(got.values()) == {"PASS"}, got
        assert {"config", "key", "exchange", *EXCHANGE_CHECKS, *HOST_CHECKS} <= {
            *got,
            "supervisord",
        }
    assert fleet.sim.engine.all_orders_ever() == []
    with Ledger(fleet.state_dir) as ledger:
        assert len(ledger.audit(limit=1000)) == audit_before
    code, out, _ = run_cli(["doctor", "--id", "agent-2"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("PASS") and "config" in lines[0]
    assert not any("agent-1" in line for line in lines)
    assert all(line.split()[0] in {"PASS", "WARN"} for line in lines if line[:1] != " ")


def test_wrong_key_for_signer_fails_and_skips_signed_checks(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key that is not the signer's: key FAIL (names both addresses, not the key), exit 1."""
    wrong = generate_private_key()
    monkeypatch.setenv("AGENT_1_PRIVATE_KEY", wrong)
    code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    got = statuses(doc)
    assert code == 1 and doc["ok"] is False
    assert got["key"] == "FAIL" and got["exchange"] == "PASS"
    assert got["account"] == got["position mode"] == got["leverage and margin"] == "SKIP"
    detail = next(c["detail"] for c in doc["checks"] if c["name"] == "key")
    assert Signer(wrong).address in detail and fleet.signers["agent-1"].address in detail
    assert wrong[2:].lower() not in json.dumps(doc).lower()


def test_signer_unknown_to_the_exchange_fails_the_account_check(
    tmp_path: Path,
    sim_server: SimServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An API wallet the exchange has not authorised: account FAIL (refused), exit 1."""
    made = make_fleet(tmp_path, sim_server, ["agent-1"])
    stranger = generate_private_key()
    path = made.config_dir / "agent-1.yaml"
    path.write_text(
        path.read_text().replace(made.signers["agent-1"].address, Signer(stranger).address)
    )
    monkeypatch.setenv("AGENT_1_PRIVATE_KEY", stranger)
    code, doc = doctor_json(made, capsys)
    got = statuses(doc)
    assert code == 1
    assert got["key"] == "PASS" and got["account"] == "FAIL"
    assert got["position mode"] == got["leverage and margin"] == "SKIP"
    detail = next(c["detail"] for c in doc["checks"] if c["name"] == "account")
    assert "refused" in detail and Signer(stranger).address in detail


def test_unreachable_exchange_fails_and_skips_exchange_checks(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A closed port: exchange FAIL, every later exchange check SKIP, host checks still run."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    path = fleet.config_dir / "agent-1.yaml"
    path.write_text(path.read_text().replace(fleet.sim.base_url, f"http://127.0.0.1:{closed}"))
    code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    got = statuses(doc)
    assert code == 1
    assert got["key"] == "PASS" and got["exchange"] == "FAIL"
    assert {got[name] for name in EXCHANGE_CHECKS} == {"SKIP"}
    assert got["ledger"] == "PASS" and got["rate budget"] == "PASS"


def test_clock_skew_against_a_sim_running_behind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server clock 5 s behind the local one: clock FAIL, the other exchange checks run."""
    behind = SimServer(SimConfig(seed=7, start_time_ms=int(time.time() * 1000) - 5000))
    behind.start()
    try:
        made = make_fleet(tmp_path, behind, ["agent-1"])
        monkeypatch.setenv("AGENT_1_PRIVATE_KEY", made.keys["agent-1"])
        code, doc = doctor_json(made, capsys)
    finally:
        behind.stop()
    got = statuses(doc)
    assert code == 1 and got["clock"] == "FAIL" and got["account"] == "PASS"
    assert "ahead of the server" in next(c["detail"] for c in doc["checks"] if c["name"] == "clock")


@pytest.mark.parametrize(
    ("skew_ms", "rtt_ms", "expected"),
    [
        (0, 2, Status.PASS),
        (-450, 10, Status.PASS),
        (700, 10, Status.WARN),
        (-900, 10, Status.WARN),
        (1200, 10, Status.FAIL),
        (-5000, 10, Status.FAIL),
        (1200, 600, Status.WARN),  # a slow round trip leaves room for a smaller true skew
    ],
)
def test_skew_classifier(skew_ms: float, rtt_ms: float, expected: Status) -> None:
    """PASS up to 500 ms, WARN up to 1000 ms, FAIL beyond, judged on the least possible skew."""
    assert classify_skew(skew_ms, rtt_ms)[0] is expected


def test_ledger_problems_fail_the_ledger_check(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state dir path that is a file, or a ledger that is not SQLite: ledger FAIL, exit 1."""
    fleet.state_dir.write_text("not a directory")
    code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    assert code == 1 and statuses(doc)["ledger"] == "FAIL"
    fleet.state_dir.unlink()
    fleet.state_dir.mkdir()
    (fleet.state_dir / "ledger.sqlite3").write_bytes(b"garbage, not an SQLite file" * 100)
    code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    got = statuses(doc)
    assert code == 1 and got["ledger"] == "FAIL" and got["rate budget"] == "FAIL"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_read_only_state_dir_fails_the_ledger_check(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state dir (with a ledger) the user cannot write: ledger FAIL, exit 1."""
    Ledger(fleet.state_dir).close()
    os.chmod(fleet.state_dir, 0o500)
    try:
        code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    finally:
        os.chmod(fleet.state_dir, 0o700)
    assert code == 1 and statuses(doc)["ledger"] == "FAIL"


def test_supervisord_socket_that_does_not_answer_fails(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """No socket: WARN (fine for `run`); a socket nobody answers on: FAIL."""
    fleet.state_dir.mkdir()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(fleet.state_dir / "supervisor.sock"))  # bound, never listening
        code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    assert code == 1 and statuses(doc)["supervisord"] == "FAIL"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("HTTP 418 banned until 9999999999999", "FAIL"), ("HTTP 429 too many requests", "WARN")],
)
def test_host_pause_shows_in_the_rate_budget_check(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], reason: str, expected: str
) -> None:
    """An active 418 ban fails the rate budget check; a 429 pause warns."""
    budget = SharedBudget(fleet.state_dir, user=fleet.user)
    budget.pause(time.time() + 120, reason)
    budget.close()
    _, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    check = next(c for c in doc["checks"] if c["name"] == "rate budget")
    assert check["status"] == expected and "paused until" in check["detail"]


def test_invalid_config_fails_and_skips_the_rest(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config error: config FAIL naming file and key, everything else SKIP; unknown id exit 2."""
    path = fleet.config_dir / "agent-2.yaml"
    path.write_text(path.read_text().replace("leverage: 2", "leverage: 500"))
    code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    assert code == 1
    config = doc["checks"][0]
    assert config["status"] == "FAIL" and "agent-2.yaml: trading.leverage" in config["detail"]
    assert {c["status"] for c in doc["checks"][1:]} == {"SKIP"}
    path.write_text(path.read_text().replace("leverage: 500", "leverage: 2"))
    args = ["--config-dir", str(fleet.config_dir), "doctor", "--id", "nope"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "nope" in err


def test_hedge_mode_and_open_positions(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """Hedge mode: WARN while flat, FAIL with a position; a symbol in use keeps its leverage."""
    from aster_agents.exchange.http import AsterClient
    from aster_agents.models import OrderRequest, OrderType, PositionSide, Side
    from aster_agents.signing import NonceSource

    signer = fleet.signers["agent-1"]
    with AsterClient(
        fleet.sim.base_url, user=fleet.user, signer=signer, nonces=NonceSource(5)
    ) as client:
        client.set_position_mode(True)
        code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
        assert code == 0 and statuses(doc)["position mode"] == "WARN"
        client.set_leverage("BTCUSDT", 5)
        client.new_order(
            OrderRequest(
                "BTCUSDT",
                Side.BUY,
                OrderType.MARKET,
                "test-long-1",
                quantity=Decimal("0.01"),
                position_side=PositionSide.LONG,
            )
        )
    orders_before = len(fleet.sim.engine.all_orders_ever())
    code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    got = statuses(doc)
    assert code == 1 and got["position mode"] == "FAIL"
    leverage = next(c for c in doc["checks"] if c["name"] == "leverage and margin")
    assert leverage["status"] == "PASS" and "BTCUSDT open at 5x, left as is" in leverage["detail"]
    assert len(fleet.sim.engine.all_orders_ever()) == orders_before


def test_keys_from_dotenv_and_loose_key_files(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys are read from .env next to agents.d as `up` does; a 0644 .env is a WARN."""
    key = fleet.keys["agent-1"]
    monkeypatch.delenv("AGENT_1_PRIVATE_KEY")
    dotenv = fleet.root / ".env"
    dotenv.write_text(f"export AGENT_1_PRIVATE_KEY={key}\n")
    os.chmod(dotenv, 0o644)
    code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    got = statuses(doc)
    assert code == 0 and got["key"] == "PASS" and got["key files"] == "WARN"
    assert ".env" in next(c["detail"] for c in doc["checks"] if c["name"] == "key files")
    assert key[2:].lower() not in json.dumps(doc).lower()
    os.chmod(dotenv, 0o600)
    _, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    assert statuses(doc)["key files"] == "PASS"


def test_llm_agent_model_key_env_is_checked_never_shown(
    tmp_path: Path,
    sim_server: SimServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """llm agent: `model key` FAILs while api_key_env is unset, PASSes once set; value hidden."""
    params = "{base_url: 'http://127.0.0.1:9/v1', model: m, api_key_env: DOCTOR_MODEL_KEY}"
    made = make_fleet(tmp_path, sim_server, ["agent-1"], strategy="llm", params=params)
    for name, value in made.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DOCTOR_MODEL_KEY", raising=False)
    code, doc = doctor_json(made, capsys, "--id", "agent-1")
    detail = next(c["detail"] for c in doc["checks"] if c["name"] == "model key")
    assert code == 1 and statuses(doc)["model key"] == "FAIL"
    assert "api_key_env: environment variable DOCTOR_MODEL_KEY is not set" in detail
    secret = "sk-doctor-" + "x" * 24
    monkeypatch.setenv("DOCTOR_MODEL_KEY", secret)
    code, doc = doctor_json(made, capsys, "--id", "agent-1")
    assert statuses(doc)["model key"] == "PASS" and secret not in json.dumps(doc)


def test_account_without_deposit_says_deposit_first(
    fleet: Fleet, sim_server: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """-5050 DEPOSIT_REQUIRED: account FAIL 'the main wallet has not deposited yet', exit 1."""
    signers = tuple(s.address for s in fleet.signers.values())
    sim_server.add_account(SimAccount(fleet.user, signers, deposited=False))
    code, doc = doctor_json(fleet, capsys)
    got = statuses(doc)
    assert code == 1 and got["account"] == "FAIL"
    detail = next(c["detail"] for c in doc["checks"] if c["name"] == "account")
    assert "the main wallet has not deposited yet" in detail and "-5050" in detail


def detail(doc: dict[str, Any], name: str) -> str:
    return str(next(c["detail"] for c in doc["checks"] if c["name"] == name))


def test_state_dir_check_reports_free_space_and_loose_modes(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state dir check shows the free space; a file others can read is a WARN naming it."""
    Ledger(fleet.state_dir).close()
    _, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    assert statuses(doc)["state dir"] == "PASS", detail(doc, "state dir")
    assert " free" in detail(doc, "state dir") and str(fleet.state_dir) in detail(doc, "state dir")
    os.chmod(fleet.state_dir / "ledger.sqlite3", 0o644)
    code, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    assert code == 0 and statuses(doc)["state dir"] == "WARN"
    assert "ledger.sqlite3 644" in detail(doc, "state dir")


def test_keystore_dir_behind_a_symlink_is_a_warning(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """keys/ as a symlink to a 0755 directory: key files WARN naming the link and the mode."""
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o755)
    os.chmod(real, 0o755)
    (real / "agent-1.json").write_text("{}")
    os.chmod(real / "agent-1.json", 0o600)
    (fleet.root / "keys").symlink_to(real)
    config = fleet.config_dir / "agent-1.yaml"
    text = config.read_text().replace(
        "signer_key_env: AGENT_1_PRIVATE_KEY",
        "signer_keystore: keys/agent-1.json\n  signer_keystore_password_env: AGENT_1_PASSWORD",
    )
    config.write_text(text)
    _, doc = doctor_json(fleet, capsys, "--id", "agent-1")
    assert statuses(doc)["key files"] == "WARN"
    assert "is a symlink to" in detail(doc, "key files") and "mode 755" in detail(doc, "key files")
