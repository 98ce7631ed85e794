"""A fast, read-only view of ``agents.d`` for the commands that only display it.

``status`` and ``portfolio`` must start in a few tens of milliseconds, so they do not pay for
pydantic validation and address checksums: they read the YAML with the C loader and keep
the fields they show, with the same defaults as the validated config. A broken file does not
stop them (they show what they can); ``agents validate`` and ``run`` are where config is
checked. Path resolution (``--config-dir``/``--state-dir``, their env vars) lives here and is
shared with ``config.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

CONFIG_ENV: Final = "ASTER_AGENTS_CONFIG"
STATE_ENV: Final = "ASTER_AGENTS_STATE"
PORTFOLIO_FILE: Final = "_portfolio.yaml"
DEFAULT_STATE_DIR: Final = "state"
DEFAULT_INTERVAL: Final = "5m"
DEFAULT_SCAN_SECONDS: Final = 60.0
DEFAULT_MAX_POSITIONS: Final = 1
DEFAULT_MAX_TOTAL_POSITIONS: Final = 10
DEFAULT_MAX_GROSS_LEVERAGE: Final = 3.0


def resolve_config_dir(option: str | Path | None = None) -> Path:
    """``--config-dir``, then ``$ASTER_AGENTS_CONFIG``, then ``./agents.d``."""
    return Path(option or os.environ.get(CONFIG_ENV) or "agents.d").expanduser()


def resolve_state_dir(root: Path, configured: str, override: str | Path | None = None) -> Path:
    """``--state-dir``, then ``$ASTER_AGENTS_STATE``, then ``_portfolio.yaml``, then ./state."""
    chosen = override or os.environ.get(STATE_ENV) or configured
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else root / path


def agent_files(directory: Path) -> list[Path]:
    """The agent files of an agents.d, in name order (``_*`` and dot files are not agents)."""
    return [
        p
        for p in sorted(directory.glob("*.y*ml"))
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(("_", "."))
    ]


@dataclass(frozen=True, slots=True)
class ExchangeView:
    user: str


@dataclass(frozen=True, slots=True)
class TradingView:
    strategy: str
    symbols: tuple[str, ...]
    interval: str
    scan_interval_seconds: float
    max_positions: int


@dataclass(frozen=True, slots=True)
class AllocationView:
    capital_pct: float


@dataclass(frozen=True, slots=True)
class AgentView:
    id: str
    name: str
    enabled: bool
    exchange: ExchangeView
    trading: TradingView
    allocation: AllocationView


@dataclass(frozen=True, slots=True)
class LimitsView:
    max_total_positions: int = DEFAULT_MAX_TOTAL_POSITIONS
    max_gross_leverage: float = DEFAULT_MAX_GROSS_LEVERAGE


@dataclass(frozen=True, slots=True)
class PortfolioView:
    state_dir: str = DEFAULT_STATE_DIR
    limits: LimitsView = field(default_factory=LimitsView)


@dataclass(frozen=True, slots=True)
class FleetView:
    """What the display commands need of a fleet; ``config.FleetConfig`` has the same shape."""

    config_dir: Path
    portfolio: PortfolioView
    agents: tuple[AgentView, ...]

    @property
    def root(self) -> Path:
        return self.config_dir.resolve().parent

    def state_dir(self, override: str | Path | None = None) -> Path:
        return resolve_state_dir(self.root, self.portfolio.state_dir, override)


def load_view(config_dir: str | Path | None = None) -> FleetView:
    """Read ``agents.d`` without validating it; unreadable files are skipped."""
    from aster_agents.errors import ConfigError

    directory = resolve_config_dir(config_dir)
    if not directory.is_dir():
        raise ConfigError(
            f"{directory}: config directory not found; pass --config-dir or set {CONFIG_ENV}"
        )
    portfolio = _portfolio(_read(directory / PORTFOLIO_FILE))
    agents = []
    for path in agent_files(directory):
        agent = _agent(path.stem, _read(path))
        if agent is not None:
            agents.append(agent)
    return FleetView(directory, portfolio, tuple(sorted(agents, key=lambda a: a.id)))


def _read(path: Path) -> Mapping[str, Any]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _portfolio(data: Mapping[str, Any]) -> PortfolioView:
    limits = _section(data, "limits")
    return PortfolioView(
        state_dir=str(data.get("state_dir", DEFAULT_STATE_DIR)),
        limits=LimitsView(
            max_total_positions=_as(
                int, limits.get("max_total_positions"), DEFAULT_MAX_TOTAL_POSITIONS
            ),
            max_gross_leverage=_as(
                float, limits.get("max_gross_leverage"), DEFAULT_MAX_GROSS_LEVERAGE
            ),
        ),
    )


def _agent(stem: str, data: Mapping[str, Any]) -> AgentView | None:
    if not data:
        return None
    trading, exchange = _section(data, "trading"), _section(data, "exchange")
    symbols = trading.get("symbols")
    return AgentView(
        id=str(data.get("id", stem)),
        name=str(data.get("name", stem)),
        enabled=bool(data.get("enabled", True)),
        exchange=ExchangeView(user=str(exchange.get("user", ""))),
        trading=TradingView(
            strategy=str(trading.get("strategy", "?")),
            symbols=tuple(str(s) for s in symbols) if isinstance(symbols, list) else (),
            interval=str(trading.get("interval", DEFAULT_INTERVAL)),
            scan_interval_seconds=_as(
                float, trading.get("scan_interval_seconds"), DEFAULT_SCAN_SECONDS
            ),
            max_positions=_as(int, trading.get("max_positions"), DEFAULT_MAX_POSITIONS),
        ),
        allocation=AllocationView(
            capital_pct=_as(float, _section(data, "allocation").get("capital_pct"), 0.0)
        ),
    )


def _as(kind: type[Any], value: object, default: Any) -> Any:
    try:
        return kind(value) if value is not None else default
    except (TypeError, ValueError):
        return default
