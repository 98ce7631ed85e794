"""Config loading: the shipped agents.d, the bad-config corpus, key resolution."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from aster_agents.config.keys import resolve_signer
from aster_agents.config.schema import TradingConfig, load_fleet
from aster_agents.errors import ConfigError, CredentialError
from aster_agents.models import INTERVAL_MS
from aster_agents.signing import encrypt_keystore
from tests.kit.cli import run_cli

REPO = Path(__file__).resolve().parent.parent
BAD = Path(__file__).parent / "data" / "bad_configs"
CASES = sorted(p.name for p in BAD.iterdir() if p.is_dir())
DEMO_KEY = "0x4fd0a42218f3eae43a6ce26d22544e986139a01e5b34a62db53757ffca81bae1"
DEMO_SIGNER = "0x21cF8Ae13Bb72632562c6Fff438652Ba1a151bb0"


def test_shipped_agents_d_is_valid() -> None:
    """The shipped ten-agent portfolio validates, 10% each, ids match files, in natural order."""
    fleet = load_fleet(REPO / "agents.d")
    assert len(fleet.agents) == 10
    assert all(a.allocation.capital_pct == 0.10 for a in fleet.agents)
    assert [a.id for a in fleet.agents] == [f"agent-{i}" for i in range(1, 11)]  # natural order


def test_shipped_agents_trade_disjoint_symbols_the_simulator_offers() -> None:
    """Under the exclusive policy no shipped agent shares a symbol; the simulator offers all."""
    from aster_agents.sim.symbols import SYMBOLS

    fleet = load_fleet(REPO / "agents.d")
    assert fleet.portfolio.symbol_policy == "exclusive"
    owners: dict[str, str] = {}
    for agent in fleet.agents:
        for symbol in agent.trading.symbols:
            assert symbol not in owners, f"{symbol}: {owners.get(symbol)} and {agent.id}"
            owners[symbol] = agent.id
        assert len(agent.trading.symbols) >= agent.trading.max_positions
    assert set(owners) <= set(SYMBOLS)


def test_corpus_is_large_enough() -> None:
    """The bad-config corpus holds at least 30 distinct malformed configs."""
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_bad_config_exits_2_naming_file_and_key(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each malformed config gives exit 2 and a one-line error naming the file and the key."""
    config = tmp_path / "agents.d"
    shutil.copytree(BAD / case, config)
    expect = (config / "EXPECT").read_text().strip()
    code, _, err = run_cli(["--config-dir", str(config), "agents", "validate"], capsys)
    assert code == 2
    assert "Traceback" not in err
    assert expect in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(line.startswith("error: ") for line in lines)
    assert any(str(config) in line for line in lines) or "add up to" in err
    assert "4fd0a42218f3eae43a6ce26d22544e986139a01e5b34a62db53757ffca81bae1" not in err
    assert not (tmp_path / "state").exists()


def test_validate_ok_lists_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid agents.d validates with exit 0."""
    code, out, _ = run_cli(["--config-dir", str(REPO / "agents.d"), "agents", "validate"], capsys)
    assert code == 0 and "10 agent(s)" in out


def test_agents_list_json_envelope(capsys: pytest.CaptureFixture[str]) -> None:
    """`agents list --json` prints one versioned document without secrets."""
    code, out, _ = run_cli(
        ["--config-dir", str(REPO / "agents.d"), "agents", "list", "--json"], capsys
    )
    doc = json.loads(out)
    assert code == 0 and doc["version"] == 1 and len(doc["agents"]) == 10


def test_missing_config_dir_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config dir that does not exist is exit 2 with a hint."""
    code, _, err = run_cli(["--config-dir", str(tmp_path / "nope"), "agents", "list"], capsys)
    assert code == 2 and "--config-dir" in err


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    """The installed entry point turns a bad config into exit 2 without a traceback."""
    config = tmp_path / "agents.d"
    shutil.copytree(BAD / "confidence-too-high", config)
    proc = subprocess.run(
        [sys.executable, "-m", "aster_agents", "--config-dir", str(config), "agents", "validate"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1


def _fleet_with(tmp_path: Path, exchange_lines: str) -> Path:
    config = tmp_path / "agents.d"
    config.mkdir(exist_ok=True)
    text = (BAD / "confidence-too-high" / "agent-1.yaml").read_text()
    text = text.replace("min_confidence: 1.7", "min_confidence: 0.7")
    text = text.replace("  signer_key_env: TEST_AGENT_KEY\n", exchange_lines)
    (config / "agent-1.yaml").write_text(text)
    return config


def test_key_from_env_resolves_and_matches(tmp_path: Path) -> None:
    """A key in the named env var resolves to a Signer for the configured address."""
    fleet = load_fleet(_fleet_with(tmp_path, "  signer_key_env: TEST_AGENT_KEY\n"))
    signer = resolve_signer(fleet, fleet.agents[0], {"TEST_AGENT_KEY": DEMO_KEY})
    assert signer.address == DEMO_SIGNER
    assert DEMO_KEY[2:] not in repr(signer)


def test_missing_env_var_is_credential_error(tmp_path: Path) -> None:
    """An unset key env var names the variable and the agent."""
    fleet = load_fleet(_fleet_with(tmp_path, "  signer_key_env: TEST_AGENT_KEY\n"))
    with pytest.raises(CredentialError, match="TEST_AGENT_KEY is not set"):
        resolve_signer(fleet, fleet.agents[0], {})


def test_key_for_other_address_is_refused(tmp_path: Path) -> None:
    """A key that does not belong to the configured signer is refused, without echoing it."""
    fleet = load_fleet(_fleet_with(tmp_path, "  signer_key_env: TEST_AGENT_KEY\n"))
    other = "0x" + "11" * 32
    with pytest.raises(CredentialError, match="not to the configured signer") as info:
        resolve_signer(fleet, fleet.agents[0], {"TEST_AGENT_KEY": other})
    assert "11" * 32 not in str(info.value)


def test_keystore_resolves_and_wrong_password_fails(tmp_path: Path) -> None:
    """An encrypted keystore decrypts with the right password and is a clear error otherwise."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "agent-1.json").write_text(json.dumps(encrypt_keystore(DEMO_KEY, "pw")))
    lines = "  signer_keystore: keys/agent-1.json\n  signer_keystore_password_env: KS_PW\n"
    fleet = load_fleet(_fleet_with(tmp_path, lines))
    assert resolve_signer(fleet, fleet.agents[0], {"KS_PW": "pw"}).address == DEMO_SIGNER
    with pytest.raises(CredentialError, match="wrong password"):
        resolve_signer(fleet, fleet.agents[0], {"KS_PW": "nope"})
    with pytest.raises(CredentialError, match="KS_PW is not set"):
        resolve_signer(fleet, fleet.agents[0], {})


def test_config_error_lists_every_problem(tmp_path: Path) -> None:
    """All problems across files are collected before raising."""
    config = tmp_path / "agents.d"
    shutil.copytree(BAD / "confidence-too-high", config)
    text = (config / "agent-1.yaml").read_text().replace("leverage: 3", "leverage: 500")
    (config / "agent-1.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_fleet(config)
    assert len(info.value.problems) == 2


def test_config_accepts_exactly_the_intervals_the_project_knows() -> None:
    """trading.interval's allowed values are the keys of models.INTERVAL_MS, in order."""
    allowed = typing.get_args(TradingConfig.model_fields["interval"].annotation)
    assert allowed == tuple(INTERVAL_MS)
