"""``aster-agent init``: a working two-agent project for the simulator, from nothing.

Writes, next to each other in one directory: ``agents.d/`` (``_portfolio.yaml`` and one file
per agent), ``keys/<id>.json`` (fresh API-wallet keys in encrypted keystores, 0600 in a 0700
directory), ``.env`` (the keystore passwords, 0600) and ``sim-accounts.yaml`` (the main
account and its API wallets for ``aster-agent sim --accounts``). Every file is first written
into a private temporary directory beside the target and then moved into place, after a check
that none of them exists: a failure leaves nothing half-written.

The main account is a fresh random address: on the simulator any address can be an account.
For a real exchange, ``user`` becomes the user's main account and each ``signer`` must be
authorised as its API wallet (README "API wallets").
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aster_agents.errors import ConfigError

SIM_DEFAULT_PORT: Final = 8765
SIM_DEFAULT_URL: Final = f"http://127.0.0.1:{SIM_DEFAULT_PORT}"
ACCOUNTS_FILE: Final = "sim-accounts.yaml"
ENV_FILE: Final = ".env"
MAX_AGENTS: Final = 2


@dataclass(frozen=True, slots=True)
class Template:
    """One starter agent: a conservative and an aggressive profile on separate symbols."""

    name: str
    strategy: str
    symbols: tuple[str, ...]
    max_positions: int
    min_confidence: float
    position_size_pct: float
    leverage: int
    stop_loss_pct: float
    take_profit_pct: float


TEMPLATES: Final = (
    Template("Conservative", "conservative", ("BTCUSDT", "ETHUSDT"), 1, 0.6, 0.05, 2, 0.015, 0.03),
    Template("Aggressive", "aggressive", ("SOLUSDT", "ASTERUSDT"), 2, 0.5, 0.15, 5, 0.02, 0.04),
)


@dataclass(frozen=True, slots=True)
class Project:
    """What ``init`` wrote (never a key or a password)."""

    root: Path
    config_dir: Path
    user: str
    agents: tuple[tuple[str, str], ...]  # (id, signer address)
    base_url: str
    files: tuple[Path, ...]


def init_project(root: Path, *, base_url: str = SIM_DEFAULT_URL, agents: int = 2) -> Project:
    """Write a starter project into ``root``; ConfigError (nothing written) when any file exists."""
    from aster_agents.signing import Signer, encrypt_keystore, generate_private_key

    if not 1 <= agents <= MAX_AGENTS:
        raise ConfigError(f"--agents: must be between 1 and {MAX_AGENTS}, got {agents}")
    names = ("agents.d", "keys", ENV_FILE, ACCOUNTS_FILE)
    existing = [str(root / n) for n in names if (root / n).exists()]
    if existing:
        raise ConfigError(
            f"{existing[0]}: already exists; `aster-agent init` only writes a new project "
            "(choose an empty directory, e.g. `aster-agent init my-fleet`)"
        )
    user = Signer(generate_private_key()).address
    ids = [f"agent-{i + 1}" for i in range(agents)]
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".aster-init-", dir=root))
    try:
        (staging / "agents.d").mkdir()
        (staging / "keys").mkdir(mode=0o700)
        env_lines, signers = [], []
        for agent_id, template in zip(ids, TEMPLATES, strict=False):
            key, password = generate_private_key(), secrets.token_urlsafe(24)
            signer = Signer(key).address
            password_env = agent_id.upper().replace("-", "_") + "_KEYSTORE_PASSWORD"
            _private(
                staging / "keys" / f"{agent_id}.json", json.dumps(encrypt_keystore(key, password))
            )
            del key
            env_lines.append(f"{password_env}={password}")
            signers.append((agent_id, signer))
            text = agent_yaml(agent_id, template, user, signer, password_env, base_url, agents)
            (staging / "agents.d" / f"{agent_id}.yaml").write_text(text, encoding="utf-8")
        (staging / "agents.d" / "_portfolio.yaml").write_text(PORTFOLIO_YAML, encoding="utf-8")
        _private(staging / ENV_FILE, "\n".join(env_lines) + "\n")
        (staging / ACCOUNTS_FILE).write_text(accounts_yaml(user, signers), encoding="utf-8")
        for name in names:
            os.rename(staging / name, root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Project(
        root, root / "agents.d", user, tuple(signers), base_url, tuple(root / n for n in names)
    )


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


PORTFOLIO_YAML: Final = """\
# Account-wide settings (README "Configuration").
state_dir: state                 # ledger, locks, logs; relative to the directory holding agents.d
limits:
  max_total_positions: 4         # per main account, across all agents
  max_gross_leverage: 3.0        # sum of position notionals / account equity
symbol_policy: exclusive         # one agent per symbol per account: the agents' symbols differ
"""


def agent_yaml(
    agent_id: str,
    t: Template,
    user: str,
    signer: str,
    password_env: str,
    base_url: str,
    agents: int,
) -> str:
    """The YAML of one starter agent (block style, so `wallet new --update-config` can edit it)."""
    return f"""\
# {t.name}: written by `aster-agent init`. README "Configuration" lists every key.
id: {agent_id}
name: {t.name}
enabled: true
exchange:
  user: "{user}"   # the main account (a fresh address: on the simulator any address works)
  signer: "{signer}"   # this agent's API wallet
  signer_keystore: keys/{agent_id}.json
  signer_keystore_password_env: {password_env}   # in ../.env
  base_url: {base_url}   # the simulator; $ASTER_AGENTS_BASE_URL overrides it (loopback only)
trading:
  strategy: {t.strategy}
  params: {{}}
  symbols: [{", ".join(t.symbols)}]
  interval: 1m
  scan_interval_seconds: 60
  max_positions: {t.max_positions}
  min_confidence: {t.min_confidence}
  position_size_pct: {t.position_size_pct}
  leverage: {t.leverage}
  stop_loss_pct: {t.stop_loss_pct}
  take_profit_pct: {t.take_profit_pct}
allocation:
  capital_pct: {round(1 / agents, 4)}
"""


def accounts_yaml(user: str, signers: list[tuple[str, str]]) -> str:
    """``aster-agent sim --accounts`` format: the main account and its API wallets."""
    lines = [
        "# For `aster-agent sim --accounts sim-accounts.yaml`, written by `aster-agent init`.",
        f'- user: "{user}"',
        "  balance_usdt: 10000",
        "  signers:",
    ]
    lines += [f'    - "{address}"   # {agent_id}' for agent_id, address in signers]
    return "\n".join(lines) + "\n"
