"""Resolve an agent's signer key from an env var or an encrypted keystore.

The key is only ever held by ``signing.Signer``; messages here name the env var or the file,
never the key.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from aster_agents.config.schema import AgentConfig, FleetConfig
from aster_agents.errors import CredentialError
from aster_agents.signing import Signer


def resolve_signer(
    fleet: FleetConfig, agent: AgentConfig, env: Mapping[str, str] | None = None
) -> Signer:
    """The agent's Signer; CredentialError when missing, undecryptable or not the signer."""
    env = os.environ if env is None else env
    exchange = agent.exchange
    where = f"{fleet.files.get(agent.id, fleet.config_dir)}: exchange"
    if exchange.signer_key_env is not None:
        raw = env.get(exchange.signer_key_env, "").strip()
        if not raw:
            raise CredentialError(
                f"{where}.signer_key_env: environment variable {exchange.signer_key_env} is "
                f"not set; export the API wallet key for agent {agent.id} in it"
            )
        source = f"environment variable {exchange.signer_key_env}"
    else:
        assert exchange.signer_keystore is not None
        raw = _decrypt(fleet.resolve_path(exchange.signer_keystore), exchange, env, where)
        source = f"keystore {exchange.signer_keystore}"
    try:
        signer = Signer(raw, chain_id=exchange.effective_chain_id)
    except CredentialError as exc:
        raise CredentialError(f"{where}: the key in {source} is not valid: {exc}") from None
    if signer.address.lower() != exchange.signer.lower():
        raise CredentialError(
            f"{where}.signer: the key in {source} belongs to {signer.address}, "
            f"not to the configured signer {exchange.signer}"
        )
    return signer


def model_key_env(agent: AgentConfig) -> str | None:
    """The env var an ``llm`` agent reads its model API key from, or None (none needed)."""
    if agent.trading.strategy != "llm":
        return None
    name = agent.trading.params.get("api_key_env")
    return name if isinstance(name, str) and name else None


def check_model_key(fleet: FleetConfig, agent: AgentConfig, env: Mapping[str, str]) -> None:
    """CredentialError when an ``llm`` agent's ``api_key_env`` is not set in ``env``.

    The agent itself stops with exit 2 on that at start; ``up`` and ``doctor`` say it first.
    """
    name = model_key_env(agent)
    if name is not None and not env.get(name, "").strip():
        where = fleet.files.get(agent.id, fleet.config_dir)
        raise CredentialError(
            f"{where}: trading.params.api_key_env: environment variable {name} is not set; "
            f"export the model API key for agent {agent.id} in it"
        )


def _decrypt(path: Path, exchange: object, env: Mapping[str, str], where: str) -> str:
    from aster_agents.signing import decrypt_keystore

    password_env = getattr(exchange, "signer_keystore_password_env", None) or ""
    password = env.get(password_env)
    if password is None:
        raise CredentialError(
            f"{where}.signer_keystore_password_env: environment variable {password_env} is not set"
        )
    try:
        keystore = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CredentialError(f"{where}.signer_keystore: file {path} not found") from None
    except (OSError, ValueError) as exc:
        raise CredentialError(f"{where}.signer_keystore: cannot read {path}: {exc}") from None
    try:
        return decrypt_keystore(keystore, password)
    except ValueError:
        raise CredentialError(
            f"{where}.signer_keystore: wrong password for {path} (from {password_env}), "
            "or the file is not an eth-account keystore"
        ) from None


def loose_permissions(path: Path) -> bool:
    """True when a key file is readable or writable by group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))
