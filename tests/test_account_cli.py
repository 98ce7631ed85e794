"""`aster-agent account --id ID [--json]`: what the simulated exchange reports for an agent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aster_agents.errors import EXIT_AUTH
from aster_agents.exchange.http import AsterClient
from aster_agents.models import OrderRequest, OrderType, Side, TimeInForce
from aster_agents.signing import NonceSource, Signer, generate_private_key
from aster_agents.sim.server import SimServer
from tests.kit.cli import run_cli
from tests.plugins.sim import SimKeys

KEY_ENV = "AGENT_1_PRIVATE_KEY"
BTC = "BTCUSDT"
ETH = "ETHUSDT"
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")


def write_agents_d(root: Path, sim: SimServer, keys: SimKeys, signer: str | None = None) -> Path:
    """An agents.d with one agent (agent-1) trading the sim's funded account via agent key 1."""
    config = root / "agents.d"
    config.mkdir()
    (config / "agent-1.yaml").write_text(f"""id: agent-1
name: Account view
exchange:
  user: "{keys.user}"
  signer: "{signer or keys.agents[0].address}"
  signer_key_env: {KEY_ENV}
  base_url: {sim.base_url}
trading:
  strategy: random
  params: {{}}
  symbols: [{BTC}, {ETH}]
  interval: 1m
  scan_interval_seconds: 60
  max_positions: 2
  min_confidence: 0.5
  position_size_pct: 0.05
  leverage: 2
  stop_loss_pct: 0.5
  take_profit_pct: 0.5
allocation:
  capital_pct: 0.5
""")
    (config / "_portfolio.yaml").write_text("state_dir: state\n")
    return config


@pytest.fixture
def config_dir(tmp_path: Path, sim_server: SimServer, sim_keys: SimKeys) -> Path:
    return write_agents_d(tmp_path, sim_server, sim_keys)


@pytest.fixture
def client(sim_server: SimServer, sim_keys: SimKeys) -> Iterator[AsterClient]:
    with AsterClient(
        sim_server.base_url, user=sim_keys.user, signer=sim_keys.agents[0], nonces=NonceSource(0)
    ) as c:
        yield c


def _trade(client: AsterClient, sim: SimServer) -> None:
    """A BTC long, and a resting ETH limit order."""
    sim.market.pin(BTC, Decimal("100000.0"))
    sim.market.pin(ETH, Decimal("3000.00"))
    client.new_order(
        OrderRequest(BTC, Side.BUY, OrderType.MARKET, "cli-open-1", quantity=Decimal("0.010"))
    )
    client.new_order(
        OrderRequest(
            ETH,
            Side.BUY,
            OrderType.LIMIT,
            "cli-rest-1",
            quantity=Decimal("0.100"),
            price=Decimal("2900.00"),
            time_in_force=TimeInForce.GTC,
        )
    )


def _no_secrets(text: str, keys: SimKeys) -> None:
    for key in (keys.agent_keys[0], keys.main_key):
        assert key[2:].lower() not in text.lower()
    assert not _SIGNATURE.search(text), "a signature appears in the output"


def test_account_json_matches_exchange(
    config_dir: Path,
    client: AsterClient,
    sim_server: SimServer,
    sim_keys: SimKeys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--json prints one versioned document whose balances, positions, orders are the exchange's."""
    monkeypatch.setenv(KEY_ENV, sim_keys.agent_keys[0])
    _trade(client, sim_server)
    code, out, err = run_cli(
        ["--config-dir", str(config_dir), "account", "--id", "agent-1", "--json"], capsys
    )
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    assert doc["version"] == 1
    assert {"balances", "positions", "open_orders"} <= set(doc)
    assert (doc["agent"], doc["user"], doc["signer"]) == (
        "agent-1",
        sim_keys.user,
        sim_keys.agents[0].address,
    )
    assert doc["base_url"] == sim_server.base_url

    (usdt,) = client.balances()
    (bal,) = doc["balances"]
    assert bal["asset"] == "USDT"
    assert Decimal(bal["balance"]) == usdt.balance == sim_server.engine.balance(sim_keys.user)
    assert Decimal(bal["available_balance"]) == usdt.available_balance

    (pos,) = doc["positions"]
    (live,) = [p for p in client.position_risk() if p.position_amt]
    assert (pos["symbol"], Decimal(pos["position_amt"])) == (BTC, Decimal("0.010"))
    assert Decimal(pos["entry_price"]) == live.entry_price
    assert Decimal(pos["unrealized_profit"]) == live.unrealized_profit
    assert (pos["leverage"], pos["position_side"]) == (live.leverage, "BOTH")

    (order,) = doc["open_orders"]
    (resting,) = client.open_orders()
    assert (order["symbol"], order["client_order_id"]) == (ETH, "cli-rest-1")
    assert order["order_id"] == resting.order_id
    assert (order["type"], order["side"], order["status"]) == ("LIMIT", "BUY", "NEW")
    assert Decimal(order["price"]) == Decimal("2900.00") == resting.price
    assert Decimal(order["orig_qty"]) == Decimal("0.100")
    _no_secrets(out + err, sim_keys)


def test_account_table_shows_symbols_without_secrets(
    config_dir: Path,
    client: AsterClient,
    sim_server: SimServer,
    sim_keys: SimKeys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The table view names the account, the position's symbol and the open order; no secrets."""
    monkeypatch.setenv(KEY_ENV, sim_keys.agent_keys[0])
    _trade(client, sim_server)
    code, out, err = run_cli(
        ["--config-dir", str(config_dir), "account", "--id", "agent-1"], capsys
    )
    assert code == 0, err
    assert sim_keys.user in out and "agent-1" in out
    for title in ("balances", "positions", "open_orders"):
        assert title in out
    assert BTC in out and ETH in out and "cli-rest-1" in out and "USDT" in out
    _no_secrets(out + err, sim_keys)


def test_account_empty_account(
    config_dir: Path,
    sim_keys: SimKeys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A fresh account shows its balance and empty position and order lists."""
    monkeypatch.setenv(KEY_ENV, sim_keys.agent_keys[0])
    code, out, err = run_cli(
        ["--config-dir", str(config_dir), "account", "--id", "agent-1", "--json"], capsys
    )
    assert code == 0, err
    doc = json.loads(out)
    assert [Decimal(b["balance"]) for b in doc["balances"]] == [Decimal(10000)]
    assert doc["positions"] == [] and doc["open_orders"] == []


def test_account_missing_key_env_exits_2(
    config_dir: Path, sim_server: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the key env var: exit 2 and one clear line naming the variable; no request."""
    code, out, err = run_cli(
        ["--config-dir", str(config_dir), "account", "--id", "agent-1", "--json"], capsys
    )
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert KEY_ENV in lines[0] and "agent-1" in lines[0]
    assert "Traceback" not in err


def test_account_unknown_agent_exits_2(
    config_dir: Path,
    sim_keys: SimKeys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An agent id that is not in agents.d is exit 2 with a line naming it."""
    monkeypatch.setenv(KEY_ENV, sim_keys.agent_keys[0])
    code, out, err = run_cli(
        ["--config-dir", str(config_dir), "account", "--id", "agent-9"], capsys
    )
    assert code == 2 and out == ""
    assert "agent-9" in err and err.startswith("error: ")


def test_account_key_of_another_signer_exits_2(
    config_dir: Path,
    sim_keys: SimKeys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A key that is not the configured signer's is refused before any request (exit 2)."""
    monkeypatch.setenv(KEY_ENV, sim_keys.agent_keys[1])
    code, out, err = run_cli(
        ["--config-dir", str(config_dir), "account", "--id", "agent-1"], capsys
    )
    assert code == 2 and out == ""
    assert "belongs to" in err and sim_keys.agents[1].address in err
    _no_secrets(err, sim_keys)


def test_account_signer_unknown_to_exchange_exits_4(
    tmp_path: Path,
    sim_server: SimServer,
    sim_keys: SimKeys,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An API wallet the exchange does not know: AuthError over HTTP, exit 4, one line, no key."""
    key = generate_private_key()
    config = write_agents_d(tmp_path, sim_server, sim_keys, signer=Signer(key).address)
    monkeypatch.setenv(KEY_ENV, key)
    code, out, err = run_cli(["--config-dir", str(config), "account", "--id", "agent-1"], capsys)
    assert code == EXIT_AUTH and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "agent-1" in lines[0], err
    assert "/fapi/v3/balance" in lines[0]
    assert key[2:] not in err and not _SIGNATURE.search(err)
