"""API-wallet keys in encrypted keystores: ``wallet new`` and ``wallet show`` (the library).

A new key is generated in memory, encrypted (eth-account, scrypt) and written atomically to
``<dir holding agents.d>/keys/<id>.json`` with mode 0600 in a 0700 directory; an existing
keystore is never replaced without ``force``. The key and the password never leave this
module's locals: results carry the address, paths and the *name* of the password variable.

``update_config`` rewrites ``agents.d/<id>.yaml`` line by line (PyYAML would drop comments):
``exchange.signer`` becomes the new address and the key source becomes ``signer_keystore`` +
``signer_keystore_password_env`` (a ``signer_key_env`` line is replaced). The result is checked
with the real config loader before anything is written; on any problem nothing changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aster_agents.config.view import resolve_config_dir
from aster_agents.errors import ConfigError, CredentialError
from aster_agents.fsutil import write_private_file

KEYS_DIR: Final = "keys"
AGENT_ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,19}$")
_LINE_RE: Final = re.compile(
    r"^(?P<indent>[ \t]*)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<gap>[ \t]*)"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^#\s][^#]*?)?(?P<comment>[ \t]+#.*)?[ \t]*$"
)
_SOURCE_KEYS: Final = ("signer_key_env", "signer_keystore", "signer_keystore_password_env")


@dataclass(frozen=True, slots=True)
class NewWallet:
    """What ``create_wallet`` did: never the key or the password."""

    agent_id: str
    address: str
    keystore: Path
    keystore_ref: str  # the value for ``signer_keystore`` (relative to the agents.d parent)
    password_env: str
    config_file: Path | None  # the agent's YAML when it exists
    config_updated: bool

    def yaml_lines(self) -> list[str]:
        return [
            "exchange:",
            f'  signer: "{self.address}"',
            f"  signer_keystore: {self.keystore_ref}",
            f"  signer_keystore_password_env: {self.password_env}",
        ]


@dataclass(frozen=True, slots=True)
class WalletAddress:
    """``wallet show``: the agent's API-wallet address and where it was read."""

    agent_id: str
    address: str
    source: str
    note: str | None = None


# ------------------------------------------------------------------------------ paths, ids


def check_agent_id(agent_id: str) -> None:
    if not AGENT_ID_RE.match(agent_id):
        raise ConfigError(
            f"--id: {agent_id!r} is not a valid agent id ([a-z0-9-], starts with a letter or "
            "digit, at most 20 characters)"
        )


def config_dir_or_fail(config_dir: str | Path | None) -> Path:
    directory = resolve_config_dir(config_dir)
    if not directory.is_dir():
        raise ConfigError(
            f"{directory}: config directory not found; pass --config-dir or set "
            "ASTER_AGENTS_CONFIG (keys/ is created next to it)"
        )
    return directory


def keystore_ref(agent_id: str) -> str:
    return f"{KEYS_DIR}/{agent_id}.json"


def keystore_path(config_dir: Path, agent_id: str) -> Path:
    """``<dir holding agents.d>/keys/<id>.json`` (the base the state dir also resolves from)."""
    return config_dir.resolve().parent / keystore_ref(agent_id)


def default_password_env(agent_id: str) -> str:
    return agent_id.upper().replace("-", "_") + "_KEYSTORE_PASSWORD"


# ------------------------------------------------------------------------------ password


def configured_password_env(config_dir: Path, agent_id: str) -> str | None:
    """``exchange.signer_keystore_password_env`` as the agent's YAML names it (if it does)."""
    path = config_dir / f"{agent_id}.yaml"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    block = _exchange_block(lines)
    if block is None:
        return None
    for index in range(block[0] + 1, block[1]):
        match = _LINE_RE.match(lines[index])
        if match and match["key"] == "signer_keystore_password_env" and match["value"]:
            return match["value"].strip("\"'")
    return None


def password_from_env(
    env: Mapping[str, str], option_env: str | None, default_env: str | None
) -> tuple[str | None, str | None]:
    """(password, variable) from ``--password-env`` or ``default_env``; (None, None) if neither.

    ``--password-env`` must name a set, non-empty variable; ``default_env`` (the variable the
    agent's YAML names, else ``<ID>_KEYSTORE_PASSWORD``) is used only when it is set.
    """
    if option_env is not None:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", option_env):
            raise ConfigError(f"--password-env: {option_env!r} is not an environment variable name")
        value = env.get(option_env)
        if value is None:
            raise ConfigError(
                f"--password-env: environment variable {option_env} is not set; export the "
                "keystore password in it (or omit --password-env to be prompted)"
            )
        check_password(value, f"environment variable {option_env}")
        return value, option_env
    if default_env is not None and env.get(default_env):
        return env[default_env], default_env
    return None, None


def check_password(password: str, where: str) -> None:
    if not password:
        raise ConfigError(f"{where}: the keystore password is empty; choose a non-empty one")


# ------------------------------------------------------------------------------ wallet new


def create_wallet(
    config_dir: Path,
    agent_id: str,
    password: str,
    password_env: str,
    *,
    force: bool = False,
    update_config: bool = False,
) -> NewWallet:
    """Generate a key, write its keystore and (optionally) point the agent's YAML at it."""
    from aster_agents.signing import Signer, encrypt_keystore, generate_private_key

    check_agent_id(agent_id)
    check_password(password, "password")
    target = keystore_path(config_dir, agent_id)
    if target.exists() and not force:
        raise ConfigError(
            f"{target}: a keystore already exists for agent {agent_id}; refusing to overwrite "
            "it (its key may be an authorised API wallet). Pass --force to replace it"
        )
    key = generate_private_key()
    address = Signer(key).address
    yaml_file = config_dir / f"{agent_id}.yaml"
    new_text = None
    if update_config and yaml_file.is_file():
        new_text = updated_yaml(yaml_file, address, keystore_ref(agent_id), password_env)
    document = json.dumps(encrypt_keystore(key, password)).encode("utf-8")
    del key
    try:
        write_private_file(target, document, replace=force)
    except FileExistsError:
        raise ConfigError(
            f"{target}: a keystore appeared while this one was written; nothing was replaced"
        ) from None
    if new_text is not None:
        replace_text(yaml_file, new_text)
    return NewWallet(
        agent_id=agent_id,
        address=address,
        keystore=target,
        keystore_ref=keystore_ref(agent_id),
        password_env=password_env,
        config_file=yaml_file if yaml_file.is_file() else None,
        config_updated=new_text is not None,
    )


def replace_text(path: Path, text: str) -> None:
    """Replace a text file atomically, keeping its permission bits."""
    mode = stat.S_IMODE(path.stat().st_mode)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# ------------------------------------------------------------------------------ YAML edit


def updated_yaml(path: Path, address: str, keystore: str, password_env: str) -> str:
    """The agent file with the new signer and keystore lines; ConfigError if it cannot be done.

    The edit is line based (comments and layout stay); the result must pass the real loader.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    block = _exchange_block(lines)
    if block is None:
        raise ConfigError(
            f"{path}: exchange: no block-style 'exchange:' section to edit (flow style or "
            "missing); edit the file by hand, or use --no-update-config for the lines to paste"
        )
    values = {
        "signer": f'"{address}"',
        "signer_keystore": keystore,
        "signer_keystore_password_env": password_env,
    }
    edited = _edit_block(lines, block, values)
    new_text = "\n".join(edited) + ("\n" if text.endswith("\n") or not text else "")
    _validate_agent_text(path, new_text)
    return new_text


def _exchange_block(lines: list[str]) -> tuple[int, int] | None:
    """(index of ``exchange:``, end index) of a block-style top-level exchange mapping."""
    start = next((i for i, line in enumerate(lines) if _is_exchange_header(line)), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if line.strip() and not line.lstrip().startswith("#") and not line[0].isspace():
            break
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return start, end


def _is_exchange_header(line: str) -> bool:
    match = _LINE_RE.match(line)
    return bool(match and not match["indent"] and match["key"] == "exchange" and not match["value"])


def _child_indent(lines: list[str], block: tuple[int, int]) -> str:
    for index in range(block[0] + 1, block[1]):
        match = _LINE_RE.match(lines[index])
        if match and not lines[index].lstrip().startswith("#"):
            return match["indent"]
    return "  "


def _edit_block(lines: list[str], block: tuple[int, int], values: dict[str, str]) -> list[str]:
    indent = _child_indent(lines, block)
    head, body, tail = lines[: block[0] + 1], lines[block[0] + 1 : block[1]], lines[block[1] :]
    out: list[str] = []
    pending = dict(values)
    anchor = None  # where missing key-source lines go: where the old source was
    for line in body:
        match = _LINE_RE.match(line)
        key = match["key"] if match and match["indent"] == indent else None
        if match and key in pending:
            out.append(f"{indent}{key}: {pending.pop(key)}{match['comment'] or ''}")
            anchor = len(out) if key in _SOURCE_KEYS else anchor
        elif key == "signer_key_env":
            anchor = len(out)
        else:
            out.append(line)
    rest = [f"{indent}{k}: {v}" for k, v in pending.items()]
    if "signer" in pending:  # no signer line at all: put everything first
        return head + rest + out + tail
    at = anchor if anchor is not None else _after_key(out, indent, "signer")
    return head + out[:at] + rest + out[at:] + tail


def _after_key(body: list[str], indent: str, key: str) -> int:
    for index, line in enumerate(body):
        match = _LINE_RE.match(line)
        if match and match["indent"] == indent and match["key"] == key:
            return index + 1
    return len(body)


def _validate_agent_text(path: Path, text: str) -> None:
    """Load ``text`` as the agent file with the real loader (in a scratch agents.d)."""
    from aster_agents.config.schema import load_fleet

    with tempfile.TemporaryDirectory(prefix="aa-wallet-") as scratch:
        directory = Path(scratch) / "agents.d"
        directory.mkdir()
        (directory / path.name).write_text(text, encoding="utf-8")
        try:
            load_fleet(directory)
        except ConfigError as exc:
            problems = [
                line.replace(str(directory / path.name), str(path)) for line in exc.problems
            ]
            raise ConfigError(
                f"{path}: the updated file would not be valid; it was left unchanged",
                [*problems, f"{path}: left unchanged; no keystore was written"],
            ) from None


# ------------------------------------------------------------------------------ wallet show


def show_wallet(
    config_dir: str | Path | None, agent_id: str, env: Mapping[str, str] | None = None
) -> WalletAddress:
    """The agent's API-wallet address: keystore file, env key, or the configured signer."""
    from aster_agents.config.schema import load_fleet

    env = os.environ if env is None else env
    check_agent_id(agent_id)
    directory = config_dir_or_fail(config_dir)
    fleet = load_fleet(directory)
    if agent_id not in {a.id for a in fleet.agents}:
        orphan = keystore_path(directory, agent_id)
        if orphan.is_file():
            address = keystore_address(orphan)
            return WalletAddress(agent_id, address, f"keystore {orphan}", "no agent file yet")
        fleet.agent(agent_id)  # raises the ConfigError that lists the known ids
    agent = fleet.agent(agent_id)
    exchange = agent.exchange
    where = fleet.files.get(agent.id, directory)
    if exchange.signer_keystore is not None:
        path = fleet.resolve_path(exchange.signer_keystore)
        if path.is_file():
            return _checked(agent_id, keystore_address(path), f"keystore {path}", exchange.signer)
        return WalletAddress(
            agent_id, exchange.signer, f"{where}: exchange.signer", f"keystore {path} not found"
        )
    assert exchange.signer_key_env is not None
    raw = env.get(exchange.signer_key_env, "").strip()
    if raw:
        source = f"environment variable {exchange.signer_key_env}"
        address = _env_address(raw, exchange.signer_key_env)
        return _checked(agent_id, address, source, exchange.signer)
    return WalletAddress(
        agent_id,
        exchange.signer,
        f"{where}: exchange.signer",
        f"{exchange.signer_key_env} is not set, so the key was not checked against it",
    )


def _checked(agent_id: str, address: str, source: str, configured: str) -> WalletAddress:
    note = None
    if address.lower() != configured.lower():
        note = f"does not match the configured signer {configured}"
    return WalletAddress(agent_id, address, source, note)


def _env_address(raw: str, name: str) -> str:
    from aster_agents.signing import Signer

    try:
        return Signer(raw).address
    except CredentialError as exc:
        raise CredentialError(f"environment variable {name}: {exc}") from None


def keystore_address(path: Path) -> str:
    """The checksummed address a keystore declares (no password needed)."""
    from aster_agents.signing import checksum_address

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        raw = str(document["address"])
        return checksum_address(raw if raw.lower().startswith("0x") else "0x" + raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{path}: not a readable eth-account keystore with an 'address' field ({exc})"
        ) from None
