"""`aster-agent wallet new|show`: private keystores, no key material anywhere, safe YAML edits.

Keystores use eth-account's real scrypt parameters (about 1 s per encryption on these
machines), so the tests that need one share as few as they can.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from loguru import logger

from aster_agents.config.keys import resolve_signer
from aster_agents.config.schema import load_fleet
from aster_agents.config.wallet import keystore_path, updated_yaml
from aster_agents.errors import ConfigError
from aster_agents.signing import Signer, decrypt_keystore, encrypt_keystore, generate_private_key
from aster_agents.sim.server import SimAccount, SimServer
from tests.kit.agents import make_fleet
from tests.kit.cli import run_cli
from tests.kit.wait import wait_for

PASSWORD = "correct horse battery staple 42"
ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}")
USER = "0xbada17e8f51b3af018f69f627887d6b4e1da0d18"
OLD_SIGNER = "0x6419b6194E1Dab06BEBf7A20a8A855E42a59c174"

AGENT_YAML = f"""# agent-1: the conservative one
id: agent-1
name: Conservative   # shown in status
exchange:
  user: "{USER}"   # main account
  signer: "{OLD_SIGNER}" # this agent's API wallet
  signer_key_env: AGENT_1_PRIVATE_KEY                  # or:
  # signer_keystore: keys/agent-1.json                 # encrypted JSON keystore
  base_url: BASE_URL
trading:
  strategy: random   # test strategy
  params: {{p_enter: 0.0, p_exit: 0.0}}
  symbols: [BTCUSDT, ETHUSDT]
  interval: 1m
  leverage: 2
allocation:
  capital_pct: 0.5  # half
"""


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every loguru line emitted while the test runs."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="TRACE")
    try:
        yield lines
    finally:
        logger.remove(sink)


def key_forms(key: str) -> list[str]:
    bare = key.lower().removeprefix("0x")
    return [bare, bare.upper(), "0x" + bare, "0x" + bare.upper()]


def assert_no_secret(text: str, key: str, password: str = PASSWORD) -> None:
    lowered = text.lower()
    assert key.lower().removeprefix("0x") not in lowered, "private key leaked"
    assert password not in text, "password leaked"


def files_text(root: Path, *, skip: Path | None = None) -> str:
    """Every file under ``root`` as text (the keystore itself may be skipped)."""
    parts = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path != skip:
            parts.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(parts)


def write_agent(root: Path, base_url: str = "http://127.0.0.1:9") -> Path:
    config = root / "agents.d"
    config.mkdir(exist_ok=True)
    path = config / "agent-1.yaml"
    path.write_text(AGENT_YAML.replace("BASE_URL", base_url))
    return path


# ------------------------------------------------------------------------------ wallet new


def test_new_keystore_is_private_decrypts_and_leaks_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    log_lines: list[str],
) -> None:
    """wallet new: 0600 keystore in a 0700 keys/, decrypts to the printed address; no secret out."""
    write_agent(tmp_path)
    monkeypatch.setenv("MY_PW", PASSWORD)
    code, out, err = run_cli(
        ["wallet", "new", "--id", "agent-1", "--password-env", "MY_PW"], capsys
    )
    assert code == 0, err
    keystore = tmp_path / "keys" / "agent-1.json"
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert stat.S_IMODE(keystore.parent.stat().st_mode) == 0o700
    assert [p.name for p in keystore.parent.iterdir()] == ["agent-1.json"]  # no temp left
    key = decrypt_keystore(json.loads(keystore.read_text()), PASSWORD)
    address = Signer(key).address
    assert address in out
    assert "signer_keystore: keys/agent-1.json" in out
    assert "signer_keystore_password_env: MY_PW" in out
    assert "registerAndApproveAgent" in out
    assert (tmp_path / "agents.d" / "agent-1.yaml").read_text().count(OLD_SIGNER) == 1
    code, doc_out, doc_err = run_cli(
        ["wallet", "new", "--id", "agent-2", "--password-env", "MY_PW", "--json"], capsys
    )
    assert code == 0, doc_err
    doc = json.loads(doc_out)
    assert doc["version"] == 1 and doc["config_file"] is None
    key2 = decrypt_keystore(json.loads((tmp_path / "keys" / "agent-2.json").read_text()), PASSWORD)
    assert Signer(key2).address == doc["address"]
    everything = "\n".join([out, err, doc_out, doc_err, *log_lines])
    for secret_key in (key, key2):
        for form in key_forms(secret_key):
            assert form not in everything
        assert_no_secret(everything, secret_key)
        assert_no_secret(files_text(tmp_path), secret_key)  # keystores hold ciphertext only


def test_new_refuses_to_overwrite_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing keystore is kept byte for byte (exit 2) unless --force replaces it."""
    write_agent(tmp_path)
    monkeypatch.setenv("MY_PW", PASSWORD)
    args = ["wallet", "new", "--id", "agent-1", "--password-env", "MY_PW", "--json"]
    assert run_cli(args, capsys)[0] == 0
    keystore = tmp_path / "keys" / "agent-1.json"
    before = keystore.read_bytes()
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == ""
    assert "already exists" in err and "--force" in err
    assert keystore.read_bytes() == before
    code, out, err = run_cli([*args, "--force"], capsys)
    assert code == 0, err
    assert keystore.read_bytes() != before
    assert stat.S_IMODE(keystore.stat().st_mode) == 0o600
    assert sorted(p.name for p in keystore.parent.iterdir()) == ["agent-1.json"]


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, ["--password-env", "NOT_SET_ANYWHERE"], "NOT_SET_ANYWHERE is not set"),
        ({"EMPTY_PW": ""}, ["--password-env", "EMPTY_PW"], "empty"),
        ({}, ["--password-env", "bad name"], "not an environment variable name"),
        ({}, [], "AGENT_1_KEYSTORE_PASSWORD"),  # no TTY under pytest, nothing to prompt on
        ({"MY_PW": PASSWORD}, ["--password-env", "MY_PW", "--id", "Bad_Id"], "valid agent id"),
    ],
)
def test_new_without_a_usable_password_creates_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    """No password (unset/empty variable, no terminal) or a bad id: exit 2, no file, no keys/."""
    write_agent(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = run_cli(["wallet", "new", "--id", "agent-1", *args], capsys)
    assert code == 2
    assert message in err
    assert not (tmp_path / "keys").exists()


def test_update_config_keeps_comments_validates_and_doctor_passes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sim_server: SimServer,
    log_lines: list[str],
) -> None:
    """--update-config: signer and key source replaced, comments kept, doctor --id passes."""
    yaml_file = write_agent(tmp_path, sim_server.base_url)
    monkeypatch.setenv("AGENT_1_KEYSTORE_PASSWORD", PASSWORD)
    code, out, err = run_cli(["wallet", "new", "--id", "agent-1", "--update-config"], capsys)
    assert code == 0, err
    text = yaml_file.read_text()
    for comment in (
        "# agent-1: the conservative one",
        "# shown in status",
        "# main account",
        "# this agent's API wallet",
        "# test strategy",
        "# half",
        "# signer_keystore: keys/agent-1.json",
    ):
        assert comment in text
    assert "signer_key_env" not in text and OLD_SIGNER not in text
    assert "signer_keystore: keys/agent-1.json\n" in text
    assert "signer_keystore_password_env: AGENT_1_KEYSTORE_PASSWORD\n" in text
    fleet = load_fleet(tmp_path / "agents.d")
    signer = resolve_signer(fleet, fleet.agent("agent-1"))
    assert signer.address in out and signer.address in text
    sim_server.add_account(SimAccount(USER, (signer.address,), Decimal(5000)))
    code, doc_out, doc_err = run_cli(["doctor", "--id", "agent-1", "--json"], capsys)
    assert code == 0, doc_out + doc_err
    statuses = {c["name"]: c["status"] for c in json.loads(doc_out)["checks"]}
    assert statuses["key"] == "PASS" and statuses["account"] == "PASS"
    assert statuses["key files"] == "PASS"
    assert sim_server.engine.all_orders_ever() == []
    key = decrypt_keystore(
        json.loads(keystore_path(tmp_path / "agents.d", "agent-1").read_text()), PASSWORD
    )
    for form in key_forms(key):
        assert form not in "\n".join([out, err, doc_out, doc_err, *log_lines])


def test_update_config_that_cannot_apply_leaves_everything_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A YAML the edit cannot fix (flow style, invalid elsewhere): exit 2, no keystore, no edit."""
    yaml_file = write_agent(tmp_path)
    monkeypatch.setenv("MY_PW", PASSWORD)
    flow = (
        f'id: agent-1\nname: A\nexchange: {{user: "{USER}", signer: "{OLD_SIGNER}",\n'
        "  signer_key_env: AGENT_1_PRIVATE_KEY, base_url: http://127.0.0.1:9}\n" + LAYOUT_REST
    )
    broken = {"flow": flow, "invalid": AGENT_YAML.replace("leverage: 2", "leverage: 500")}
    for kind, text in broken.items():
        yaml_file.write_text(text)
        code, out, err = run_cli(
            ["wallet", "new", "--id", "agent-1", "--password-env", "MY_PW", "--update-config"],
            capsys,
        )
        assert code == 2, (kind, out, err)
        assert yaml_file.read_text() == text, kind
        assert not (tmp_path / "keys").exists(), kind
        assert sorted(p.name for p in yaml_file.parent.iterdir()) == ["agent-1.yaml"], kind
    assert "trading.leverage" in err and "left unchanged" in err


LAYOUT_REST = "trading: {strategy: random, symbols: [BTCUSDT]}\nallocation: {capital_pct: 0.5}\n"


@pytest.mark.parametrize(
    ("exchange", "expected"),
    [
        (  # keystore already configured: values replaced in place, comments kept, nothing added
            '  user: "U"\n  signer: "OLD"\n  signer_keystore: old/k.json  # old\n'
            "  signer_keystore_password_env: OLD_PW\n  base_url: http://127.0.0.1:9\n",
            '  user: "U"\n  signer: "NEW"\n  signer_keystore: keys/agent-1.json  # old\n'
            "  signer_keystore_password_env: NEW_PW\n  base_url: http://127.0.0.1:9\n",
        ),
        (  # env key listed first, four-space indent: the keystore lines go where it was
            '    signer_key_env: K\n    user: "U"\n    signer: "OLD"\n'
            "    base_url: http://127.0.0.1:9\n",
            "    signer_keystore: keys/agent-1.json\n    signer_keystore_password_env: NEW_PW\n"
            '    user: "U"\n    signer: "NEW"\n    base_url: http://127.0.0.1:9\n',
        ),
    ],
)
def test_yaml_edit_layouts(tmp_path: Path, exchange: str, expected: str) -> None:
    """The line edit replaces values in place and puts the key source where the old one was."""
    signer = Signer(generate_private_key()).address
    head = "id: agent-1\nname: A\nexchange:\n"

    def fill(block: str) -> str:
        block = block.replace('"OLD"', f'"{OLD_SIGNER}"').replace('"NEW"', f'"{signer}"')
        return head + block.replace('"U"', f'"{USER}"') + LAYOUT_REST

    path = tmp_path / "agent-1.yaml"
    path.write_text(fill(exchange))
    assert updated_yaml(path, signer, "keys/agent-1.json", "NEW_PW") == fill(expected)


def test_yaml_edit_refuses_a_file_without_an_exchange_block(tmp_path: Path) -> None:
    """No block-style exchange section: ConfigError naming the file; nothing to guess."""
    path = tmp_path / "agent-1.yaml"
    path.write_text("id: agent-1\nname: A\n")
    with pytest.raises(ConfigError, match=r"agent-1\.yaml: exchange"):
        updated_yaml(path, OLD_SIGNER, "keys/agent-1.json", "PW")


# ------------------------------------------------------------------------------ wallet show


def test_show_prints_the_address_from_keystore_env_key_or_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """show: keystore's address (no password), else the env key's, else the configured signer."""
    yaml_file = write_agent(tmp_path)
    code, out, err = run_cli(["wallet", "show", "--id", "agent-1"], capsys)
    assert (code, out.strip()) == (0, OLD_SIGNER)
    assert "AGENT_1_PRIVATE_KEY is not set" in err
    key = generate_private_key()
    monkeypatch.setenv("AGENT_1_PRIVATE_KEY", key)
    code, out, err = run_cli(["wallet", "show", "--id", "agent-1", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["address"] == Signer(key).address
    assert "does not match the configured signer" in doc["note"]
    assert_no_secret(out + err, key)
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir(mode=0o700)
    other = Signer(generate_private_key())
    (keys_dir / "agent-1.json").write_text(
        json.dumps({"address": other.address[2:].lower(), "crypto": {}, "version": 3})
    )
    yaml_file.write_text(
        yaml_file.read_text().replace(
            "signer_key_env: AGENT_1_PRIVATE_KEY",
            "signer_keystore: keys/agent-1.json\n  signer_keystore_password_env: UNSET_PW",
        )
    )
    code, out, err = run_cli(["wallet", "show", "--id", "agent-1"], capsys)
    assert (code, out.strip()) == (0, other.address)
    assert "keystore" in err
    code, out, err = run_cli(["wallet", "show", "--id", "agent-9"], capsys)
    assert code == 2 and "agent-9" in err and out == ""


# ------------------------------------------------------------------------------ agent start


def test_agent_start_warns_about_a_keystore_readable_by_others(
    tmp_path: Path, sim_server: SimServer
) -> None:
    """A real `aster-agent run` with a 0644 keystore logs a chmod 600 warning, and no key."""
    fleet = make_fleet(tmp_path, sim_server, ["agent-1"], params="{p_enter: 0.0, p_exit: 0.0}")
    key = fleet.keys["agent-1"]
    keystore = tmp_path / "keys" / "agent-1.json"
    keystore.parent.mkdir(mode=0o700)
    keystore.write_text(json.dumps(encrypt_keystore(key, PASSWORD)))
    os.chmod(keystore, 0o644)
    yaml_file = fleet.config_dir / "agent-1.yaml"
    yaml_file.write_text(
        updated_yaml(yaml_file, fleet.signers["agent-1"].address, "keys/agent-1.json", "KS_PW")
    )
    fleet.keys.clear()  # the agent gets no env key: only the keystore
    proc = fleet.start("agent-1", {"KS_PW": PASSWORD})
    try:
        wait_for(
            lambda: "started:" in fleet.stderr("agent-1") or proc.poll() is not None,
            timeout=60,
            what="agent start",
        )
    finally:
        codes = fleet.stop_all()
    log = fleet.stderr("agent-1")
    assert codes == {"agent-1": 0}, log
    assert re.search(r"keystore .*agent-1\.json is readable by group or others; chmod 600", log)
    assert_no_secret(log + files_text(fleet.state_dir), key)
