"""Test kit: an agents.d wired to a running simulator, agent processes, and independent checks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from aster_agents.signing import Signer, generate_private_key
from aster_agents.sim.server import SimAccount, SimServer
from tests.kit.chaos import exchange_positions, ledger_positions, replay_positions

ZERO = Decimal(0)


@dataclass
class Fleet:
    """An agents.d in ``root`` whose agents all trade one simulated main account."""

    root: Path
    sim: SimServer
    main: Signer
    keys: dict[str, str] = field(repr=False)
    signers: dict[str, Signer] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def config_dir(self) -> Path:
        return self.root / "agents.d"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def user(self) -> str:
        return self.main.address

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASTER_AGENTS_")}
        env.update({_key_env(a): k for a, k in self.keys.items()})
        env["ASTER_AGENTS_MARKET_SPEED"] = str(self.sim.config.speed)
        env.update(extra or {})
        return env

    def command(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "aster_agents",
            "--config-dir",
            str(self.config_dir),
            "--state-dir",
            str(self.state_dir),
            *args,
        ]

    def start(
        self, agent_id: str, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{agent_id}.stderr").open("ab")
        proc = subprocess.Popen(
            self.command("run", "--id", agent_id),
            env=self.env(extra_env),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        self.procs[agent_id] = proc
        return proc

    def kill(self, agent_id: str) -> None:
        proc = self.procs[agent_id]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    def stop_all(self, timeout: float = 15.0) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return {a: p.wait(timeout) for a, p in self.procs.items()}

    def stderr(self, agent_id: str) -> str:
        path = self.root / f"{agent_id}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---------------------------------------------------------------- exchange views

    def exchange_positions(self) -> dict[str, Decimal]:
        return exchange_positions(self.sim, self.user)

    def ledger_positions(self) -> dict[str, Decimal]:
        return ledger_positions(self.state_dir, self.user)

    def coids(self) -> list[str]:
        return [
            o.client_order_id
            for o in self.sim.engine.all_orders_ever()
            if o.user.lower() == self.user.lower()
        ]


def _key_env(agent_id: str) -> str:
    return agent_id.upper().replace("-", "_") + "_PRIVATE_KEY"


def make_fleet(
    root: Path,
    sim: SimServer,
    agents: Sequence[str],
    *,
    strategy: str = "random",
    params: str = "{p_enter: 1.0, p_exit: 0.3}",
    symbols: Iterable[str] = ("BTCUSDT", "ETHUSDT", "SOLUSDT"),
    max_positions: int = 2,
    max_total_positions: int = 10,
    scan_interval: float = 0.5,
    stop_loss_pct: float = 0.5,
    take_profit_pct: float = 0.9,
    balance: Decimal = Decimal(100_000),
    capital_pct: float | None = None,
    leverage: int = 2,
    position_size_pct: float = 0.05,
    max_gross_leverage: float = 5.0,
    portfolio_extra: str = "",
    interval: str = "1m",
) -> Fleet:
    """Write an agents.d for ``agents`` on one funded simulated account.

    Stops and take-profits default to far away so they never trigger during a test and
    the ledger can be compared to the exchange exactly.
    """
    main_key = generate_private_key()
    main = Signer(main_key)
    keys = {a: generate_private_key() for a in agents}
    signers = {a: Signer(k) for a, k in keys.items()}
    sim.add_account(SimAccount(main.address, tuple(s.address for s in signers.values()), balance))
    config = root / "agents.d"
    config.mkdir(parents=True, exist_ok=True)
    pct = capital_pct if capital_pct is not None else round(0.9 / len(agents), 4)
    for agent_id in agents:
        (config / f"{agent_id}.yaml").write_text(f"""id: {agent_id}
name: Test {agent_id}
exchange:
  user: "{main.address}"
  signer: "{signers[agent_id].address}"
  signer_key_env: {_key_env(agent_id)}
  base_url: {sim.base_url}
trading:
  strategy: {strategy}
  params: {params}
  symbols: [{", ".join(symbols)}]
  interval: {interval}
  scan_interval_seconds: {scan_interval}
  max_positions: {max_positions}
  min_confidence: 0.5
  position_size_pct: {position_size_pct}
  leverage: {leverage}
  stop_loss_pct: {stop_loss_pct}
  take_profit_pct: {take_profit_pct}
allocation:
  capital_pct: {pct}
""")
    (config / "_portfolio.yaml").write_text(
        f"state_dir: state\nlimits:\n  max_total_positions: {max_total_positions}\n"
        f"  max_gross_leverage: {max_gross_leverage}\n{portfolio_extra}"
    )
    return Fleet(root, sim, main, keys, signers)


def replay_max_positions(fleet: Fleet) -> tuple[int, list[str]]:
    """Most positions ever held at once, and symbols that changed hands while open."""
    return replay_positions(fleet.sim, fleet.user)
