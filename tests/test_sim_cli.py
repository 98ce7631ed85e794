"""``aster-agent sim``: the command, its options and the real process."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from aster_agents.cli import sim
from aster_agents.errors import ConfigError
from aster_agents.sim.accounts import accounts_from_config_dir, load_accounts_file
from aster_agents.sim.server import SimConfig, SimServer
from tests.kit.wait import wait_for
from tests.plugins.sim import SignedClient, new_keys, start_sim_process


def _app() -> typer.Typer:
    app = typer.Typer()
    sim.register(app)

    @app.command("noop")
    def _noop() -> None:
        """Keeps ``sim`` a sub-command, as in the real CLI."""

    return app


def test_process_prints_url_serves_accounts_and_stops_on_sigterm(tmp_path: Path) -> None:
    """--port 0 prints the base URL first; --accounts registers; SIGTERM exits 0."""
    keys = new_keys()
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(
        f"- user: '{keys.user}'\n  signers: ['{keys.signers[0]}']\n  balance_usdt: 2500\n"
    )
    proc = start_sim_process("--accounts", str(accounts), "--seed", "5", "--speed", "2")
    client = SignedClient(proc.base_url, keys.agents[0], keys.user)
    try:
        balance = client.send("GET", "/fapi/v3/balance").json()
        assert balance[0]["balance"] == "2500.00000000"
    finally:
        client.close()
        assert proc.stop() == 0


def test_funding_interval_option_settles_funding_on_an_open_position(tmp_path: Path) -> None:
    """--funding-interval S: an open position pays or earns FUNDING_FEE every S market seconds."""
    keys = new_keys()
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(f"- user: '{keys.user}'\n  signers: ['{keys.signers[0]}']\n")
    proc = start_sim_process(
        "--accounts", str(accounts), "--speed", "60", "--funding-interval", "60"
    )
    client = SignedClient(proc.base_url, keys.agents[0], keys.user)
    try:
        order = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "quantity": "0.002"}
        assert client.send("POST", "/fapi/v3/order", order).status_code == 200

        def funding() -> list[dict[str, object]]:
            params = {"incomeType": "FUNDING_FEE"}
            return list(client.send("GET", "/fapi/v3/income", params).json())

        paid = wait_for(funding, timeout=20, what="a FUNDING_FEE income")
        assert paid[0]["symbol"] == "BTCUSDT" and Decimal(str(paid[0]["income"])) != 0
    finally:
        client.close()
        assert proc.stop() == 0


def test_non_loopback_host_is_refused_without_flag() -> None:
    """--host 0.0.0.0 fails with a ConfigError unless --allow-remote is given."""
    result = CliRunner().invoke(_app(), ["sim", "--host", "0.0.0.0"])
    assert isinstance(result.exception, ConfigError)
    assert "--allow-remote" in str(result.exception)
    with pytest.raises(ConfigError):
        SimServer(SimConfig(host="192.0.2.1"))


def test_bad_error_rate_is_a_usage_error() -> None:
    """--error-rate must be STATUS=RATE."""
    result = CliRunner().invoke(_app(), ["sim", "--error-rate", "oops"])
    assert result.exit_code == 2


def test_accounts_file_errors_name_the_entry(tmp_path: Path) -> None:
    """A bad accounts entry is reported with its file and index."""
    path = tmp_path / "accounts.yaml"
    path.write_text("- user: nope\n")
    with pytest.raises(ConfigError, match=r"\[0\]\.user"):
        load_accounts_file(path)


def test_config_dir_registers_every_agent(tmp_path: Path) -> None:
    """Agents of one main account in agents.d become one account with all their signers."""
    keys = new_keys()
    agents = tmp_path / "agents.d"
    agents.mkdir()
    for i, signer in enumerate(keys.signers, start=1):
        (agents / f"agent-{i}.yaml").write_text(
            f"id: agent-{i}\nname: Agent {i}\nexchange:\n  user: '{keys.user}'\n"
            f"  signer: '{signer}'\n  signer_key_env: AGENT_{i}_PRIVATE_KEY\n"
            "trading:\n  strategy: trend\n  symbols: [BTCUSDT]\n"
            "allocation:\n  capital_pct: 0.1\n"
        )
    try:
        found = accounts_from_config_dir(agents, balance=Decimal(777))
    except ConfigError as exc:  # the agents.d schema belongs to config.py; show why
        pytest.fail(f"agents.d fixture no longer matches config.py: {exc.problems}")
    assert [(a.user, set(a.signers), a.balance_usdt) for a in found] == [
        (keys.user, set(keys.signers), Decimal(777))
    ]


def test_module_entry_point_serves_http() -> None:
    """``python -m aster_agents sim`` answers ping on the printed URL."""
    proc = start_sim_process()
    try:
        assert httpx.get(f"{proc.base_url}/fapi/v3/ping").json() == {}
    finally:
        assert proc.stop() == 0
