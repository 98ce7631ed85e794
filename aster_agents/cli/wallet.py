"""``aster-agent wallet new|show``: API-wallet keys in encrypted keystores.

Nothing printed here (text or JSON) ever contains the key or the password.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import typer

from aster_agents.cli.common import console, emit_json, load_dotenv, state

if TYPE_CHECKING:
    from aster_agents.config.wallet import NewWallet, WalletAddress

wallet_app = typer.Typer(help="API-wallet keys in encrypted keystores.", no_args_is_help=True)

_WEB_UI = "https://www.asterdex.com/en/api-wallet"
_WEB_UI_TESTNET = "https://www.asterdex-testnet.com/en/api-wallet"


@wallet_app.command("new")
def new(
    ctx: typer.Context,
    agent_id: str = typer.Option(..., "--id", help="Agent the new API wallet is for."),
    password_env: str | None = typer.Option(
        None, "--password-env", help="Read the keystore password from this environment variable."
    ),
    update_config: bool = typer.Option(
        False,
        "--update-config/--no-update-config",
        help="Point agents.d/<id>.yaml at the new keystore (comments are kept).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing keystore."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of text."),
) -> None:
    """Create a new API-wallet key in an encrypted keystore (keys/<id>.json, mode 0600)."""
    from aster_agents.config import wallet

    wallet.check_agent_id(agent_id)
    config_dir = wallet.config_dir_or_fail(state(ctx).config_dir)
    load_dotenv(config_dir.resolve().parent)
    default_env = wallet.configured_password_env(config_dir, agent_id)
    default_env = default_env or wallet.default_password_env(agent_id)
    password, variable = wallet.password_from_env(os.environ, password_env, default_env)
    if password is None:
        variable = default_env
        password = _prompt_password(variable)
    assert variable is not None
    created = wallet.create_wallet(
        config_dir, agent_id, password, variable, force=force, update_config=update_config
    )
    del password
    if as_json:
        emit_json(_new_json(created))
        return
    _print_new(created)


def _prompt_password(variable: str) -> str:
    from aster_agents.errors import ConfigError

    if not sys.stdin.isatty():
        raise ConfigError(
            "no keystore password: not a terminal, so it cannot be prompted for; export it in "
            f"{variable} (or any variable) and pass --password-env {variable}"
        )
    value: str = typer.prompt(
        "Keystore password", hide_input=True, confirmation_prompt=True, err=True
    )
    if not value:
        raise ConfigError("the keystore password is empty; choose a non-empty one")
    return value


def _new_json(created: NewWallet) -> dict[str, object]:
    return {
        "agent": created.agent_id,
        "address": created.address,
        "keystore": created.keystore,
        "signer_keystore": created.keystore_ref,
        "password_env": created.password_env,
        "config_file": created.config_file,
        "config_updated": created.config_updated,
        "yaml": "\n".join(created.yaml_lines()),
    }


def _print_new(created: NewWallet) -> None:
    from rich.markup import escape

    out = console()
    out.print(f"new API wallet for agent {created.agent_id}: {created.address}")
    out.print(f"keystore: {escape(str(created.keystore))} (mode 0600, scrypt)")
    if created.config_updated:
        out.print(f"updated {escape(str(created.config_file))}: signer and keystore lines")
    else:
        where = created.config_file or f"agents.d/{created.agent_id}.yaml"
        out.print(f"put these lines in {escape(str(where))} (exchange section):")
        for line in created.yaml_lines():
            out.print(f"  {escape(line)}", soft_wrap=True)
    out.print(
        f"the agent reads the password from ${created.password_env}: export it where the "
        "agent runs (or in the .env next to agents.d, mode 0600)",
        soft_wrap=True,
    )
    for line in authorisation_steps(created.address, created.agent_id):
        out.print(escape(line), soft_wrap=True)


def authorisation_steps(address: str, agent_id: str) -> list[str]:
    """How to make ``address`` an API wallet of the main account (shared/aster-v3-api.md 4)."""
    return [
        f"next: authorise {address} as an API wallet of the main account; until then the "
        "exchange refuses its requests (exit 4):",
        f"  - web: {_WEB_UI} (testnet: {_WEB_UI_TESTNET}), 'Pro API', connect the MAIN "
        "wallet, authorise an API wallet for this address; allow perp trading, not "
        "withdrawals (if the page only offers a key it generates itself, use the way below, "
        "or that key with signer_key_env instead of this keystore)",
        "  - or programmatically: POST /fapi/v3/registerAndApproveAgent signed by the MAIN "
        f"wallet with agentAddress={address}, agentName={agent_id}, canPerpTrade=true, "
        "canWithdraw=false, expired=<ms>, signatureChainId=56",
        "  - simulator: `aster-agent --config-dir agents.d sim` registers every agent's signer",
        f"then check everything with: aster-agent doctor --id {agent_id}",
    ]


@wallet_app.command("show")
def show(
    ctx: typer.Context,
    agent_id: str = typer.Option(..., "--id", help="Agent whose API-wallet address to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document instead of text."),
) -> None:
    """Print the agent's API-wallet address (never the key)."""
    from aster_agents.config.view import resolve_config_dir
    from aster_agents.config.wallet import show_wallet

    config_dir = state(ctx).config_dir
    load_dotenv(resolve_config_dir(config_dir).resolve().parent)
    found = show_wallet(config_dir, agent_id)
    if as_json:
        emit_json(_show_json(found))
        return
    typer.echo(found.address)
    note = f"; {found.note}" if found.note else ""
    typer.echo(f"(from {found.source}{note})", err=True)


def _show_json(found: WalletAddress) -> dict[str, object]:
    return {
        "agent": found.agent_id,
        "address": found.address,
        "source": found.source,
        "note": found.note,
    }


def register(app: typer.Typer) -> None:
    app.add_typer(wallet_app, name="wallet")
