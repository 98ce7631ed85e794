"""Accounts for the simulator from an accounts YAML file or from an agents.d directory.

An accounts file is a YAML list of ``{user, signers, balance_usdt, deposited}``;
``deposited: false`` registers an account whose main wallet never deposited (every signed
request answers -5050 DEPOSIT_REQUIRED); it defaults to true.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path

from aster_agents.config.yamlfile import load_yaml_file
from aster_agents.errors import ConfigError
from aster_agents.signing import checksum_address, is_address
from aster_agents.sim.server import DEFAULT_BALANCE, SimAccount


def _address(value: object, where: str) -> str:
    if not isinstance(value, str) or not is_address(value):
        raise ConfigError(f"{where}: must be a 0x address (40 hex digits), got {value!r}")
    return checksum_address(value)


def _account(entry: object, where: str, default_balance: Decimal) -> SimAccount:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping with user, signers, balance_usdt")
    unknown = set(entry) - {"user", "signers", "balance_usdt", "deposited"}
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: user, signers, balance_usdt, "
            "deposited"
        )
    deposited = entry.get("deposited", True)
    if not isinstance(deposited, bool):
        raise ConfigError(f"{where}.deposited: must be true or false, got {deposited!r}")
    signers = entry.get("signers") or []
    if not isinstance(signers, list):
        raise ConfigError(f"{where}.signers: must be a list of 0x addresses")
    try:
        balance = Decimal(str(entry.get("balance_usdt", default_balance)))
    except InvalidOperation:
        raise ConfigError(f"{where}.balance_usdt: must be a number") from None
    if not balance.is_finite() or balance < 0:
        raise ConfigError(f"{where}.balance_usdt: must be a number >= 0, got {balance}")
    return SimAccount(
        _address(entry.get("user"), f"{where}.user"),
        tuple(_address(s, f"{where}.signers[{i}]") for i, s in enumerate(signers)),
        balance,
        deposited,
    )


def load_accounts_file(path: Path, default_balance: Decimal = DEFAULT_BALANCE) -> list[SimAccount]:
    """A YAML list of ``{user, signers, balance_usdt, deposited}``; ConfigError names the entry."""
    data = load_yaml_file(path, "the accounts file")  # the simulator's own format
    if not isinstance(data, list):
        raise ConfigError(f"{path}: must be a YAML list of {{user, signers, balance_usdt}}")
    return [_account(e, f"{path}: [{i}]", default_balance) for i, e in enumerate(data)]


def accounts_from_pairs(
    pairs: Iterable[tuple[str, str]], balance: Decimal = DEFAULT_BALANCE
) -> list[SimAccount]:
    """Group (user, signer) pairs into one account per user."""
    grouped: dict[str, tuple[str, list[str]]] = {}
    for user, signer in pairs:
        entry = grouped.setdefault(user.lower(), (user, []))
        if signer.lower() not in (s.lower() for s in entry[1]):
            entry[1].append(signer)
    return [SimAccount(u, tuple(s), balance) for u, s in grouped.values()]


def accounts_from_config_dir(config_dir: Path, balance: Decimal) -> list[SimAccount]:
    """One account per main ``user`` in agents.d, with every agent's signer registered."""
    from aster_agents.config.schema import load_fleet

    fleet = load_fleet(config_dir, check_strategies=False)
    return accounts_from_pairs(
        ((a.exchange.user, a.exchange.signer) for a in fleet.agents), balance
    )
