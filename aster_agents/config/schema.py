"""``agents.d/`` YAML -> frozen, validated config objects (the only yaml import).

Every problem is reported as one line naming the file, the key path and what is expected,
e.g. ``agents.d/agent-3.yaml: trading.min_confidence: must be <= 1, got 1.7``. All files are
checked and all problems collected before anything is raised, so ``agents validate`` shows
the whole list at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from aster_agents.config import safeyaml
from aster_agents.config.starter import SIM_DEFAULT_URL
from aster_agents.config.view import (
    CONFIG_ENV,
    DEFAULT_INTERVAL,
    DEFAULT_MAX_GROSS_LEVERAGE,
    DEFAULT_MAX_POSITIONS,
    DEFAULT_MAX_TOTAL_POSITIONS,
    DEFAULT_MIN_TRACK_RECORD_DAYS,
    DEFAULT_SCAN_SECONDS,
    DEFAULT_STATE_DIR,
    LEDGER_URL_ENV,
    PORTFOLIO_FILE,
    agent_files,
    mask_url,
    natural_key,
    resolve_config_dir,
    resolve_state_dir,
)
from aster_agents.errors import ConfigError

DEFAULT_BASE_URL: Final = "https://fapi.asterdex.com"
BASE_URL_ENV: Final = "ASTER_AGENTS_BASE_URL"

_ADDRESS_RE: Final = re.compile(r"^0x[0-9a-fA-F]{40}$")
_RAW_KEY_RE: Final = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOST_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # a host name, as `host:` and --host
_SECRET_HINT: Final = (
    "use signer_key_env (an environment variable) or signer_keystore (an encrypted keystore)"
)


def _address(value: str) -> str:
    if not _ADDRESS_RE.match(value):
        raise ValueError("must be a 0x-prefixed 40-hex-digit address")
    from aster_agents.signing import checksum_address

    checksummed = checksum_address(value)
    mixed_case = value[2:] not in (value[2:].lower(), value[2:].upper())
    if mixed_case and checksummed != value:
        raise ValueError("has an invalid EIP-55 checksum (mixed case that does not match)")
    return checksummed


Address = Annotated[str, AfterValidator(_address)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ExchangeConfig(_Model):
    user: Address
    signer: Address
    signer_key_env: str | None = Field(default=None, pattern=_ENV_NAME_RE.pattern)
    signer_keystore: str | None = Field(default=None, min_length=1)
    signer_keystore_password_env: str | None = Field(default=None, pattern=_ENV_NAME_RE.pattern)
    base_url: str = Field(default=DEFAULT_BASE_URL, pattern=r"^https?://[^\s/?#]+(:\d+)?/?$")
    chain_id: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_key_source(self) -> ExchangeConfig:
        if (self.signer_key_env is None) == (self.signer_keystore is None):
            raise ValueError("set exactly one of signer_key_env or signer_keystore")
        if self.signer_keystore is not None and self.signer_keystore_password_env is None:
            raise ValueError("signer_keystore needs signer_keystore_password_env")
        return self

    @property
    def effective_chain_id(self) -> int:
        from aster_agents.signing import chain_id_for

        return self.chain_id if self.chain_id is not None else chain_id_for(self.base_url)


class TradingConfig(_Model):
    strategy: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    symbols: tuple[Annotated[str, Field(pattern=r"^[A-Z0-9]{2,30}$")], ...] = Field(min_length=1)
    interval: Literal[
        "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"
    ] = DEFAULT_INTERVAL
    scan_interval_seconds: float = Field(default=DEFAULT_SCAN_SECONDS, gt=0, le=86400)
    max_positions: int = Field(default=DEFAULT_MAX_POSITIONS, ge=1, le=100)
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    position_size_pct: float = Field(default=0.1, gt=0, le=1)
    leverage: int = Field(default=1, ge=1, le=125)
    stop_loss_pct: float = Field(default=0.02, gt=0, lt=1)
    take_profit_pct: float = Field(default=0.04, gt=0, lt=1)  # a short cannot gain 100%

    @field_validator("symbols")
    @classmethod
    def _unique_symbols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("must not list a symbol twice")
        return value


class AllocationConfig(_Model):
    capital_pct: float = Field(gt=0, le=1)


class AgentConfig(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,19}$")
    name: str = Field(min_length=1, max_length=60)
    enabled: bool = True
    host: str | None = Field(default=None, pattern=HOST_PATTERN)  # None: any host
    exchange: ExchangeConfig
    trading: TradingConfig
    allocation: AllocationConfig

    def runs_on(self, host: str) -> bool:
        """True when this agent belongs to ``host`` (no ``host:`` key: every host)."""
        return self.host is None or self.host == host


class LimitsConfig(_Model):
    max_total_positions: int = Field(default=DEFAULT_MAX_TOTAL_POSITIONS, ge=1, le=1000)
    max_gross_leverage: float = Field(default=DEFAULT_MAX_GROSS_LEVERAGE, gt=0, le=125)


class RebalanceConfig(_Model):
    enabled: bool = False
    interval_minutes: float | None = Field(default=None, gt=0)
    lookback_days: float = Field(default=30, gt=0)
    min_track_record_days: float = Field(default=DEFAULT_MIN_TRACK_RECORD_DAYS, ge=0)
    cooldown_hours: float = Field(default=24, ge=0)
    hysteresis: float = Field(default=0.02, ge=0, lt=1)
    max_step: float = Field(default=0.05, gt=0, le=1)
    floor: float = Field(default=0.02, ge=0, le=1)
    cap: float = Field(default=0.25, gt=0, le=1)
    probation_drawdown: float = Field(default=0.10, gt=0, lt=1)
    kill_drawdown: float = Field(default=0.20, gt=0, lt=1)
    portfolio_kill_drawdown: float = Field(default=0.25, gt=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> RebalanceConfig:
        if self.floor > self.cap:
            raise ValueError(f"floor ({self.floor}) must not exceed cap ({self.cap})")
        if self.probation_drawdown >= self.kill_drawdown:
            raise ValueError(
                f"probation_drawdown ({self.probation_drawdown}) must be below kill_drawdown "
                f"({self.kill_drawdown})"
            )
        if self.enabled and self.interval_minutes is None:
            raise ValueError(
                "enabled: true needs interval_minutes (minutes between automatic rebalances)"
            )
        return self


class MetricsConfig(_Model):
    """``aster-agent metrics`` as a supervisord program (README "Monitoring and alerts")."""

    enabled: bool = False
    port: int = Field(default=9464, ge=1, le=65535)
    bind: str = "127.0.0.1"
    allow_remote: bool = False


class NotifyConfig(_Model):
    """``aster-agent notify``: where alerts go (URLs from the environment) and how often."""

    urls_env: str = Field(default="ASTER_AGENTS_NOTIFY_URLS", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    poll_seconds: float = Field(default=2.0, gt=0, le=300)
    group_seconds: float = Field(default=10.0, ge=0, le=600)
    max_per_hour: int = Field(default=20, ge=1, le=3600)
    reconcile_threshold: int = Field(default=1, ge=1)
    rejections: int = Field(default=3, ge=1)
    rejection_window_minutes: float = Field(default=10.0, gt=0)
    repeat_minutes: float = Field(default=60.0, ge=0)
    # how long the exchange gives an agent no answer before an ``exchange_unreachable`` event
    unreachable_minutes: float = Field(default=5.0, gt=0, le=1440)
    daily_summary_utc: str | None = Field(
        default="08:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
    )

    urls: Any = Field(default=None, exclude=True)  # refused: see _no_urls_here

    @field_validator("urls", mode="before")
    @classmethod
    def _no_urls_here(cls, value: Any) -> Any:
        if value is not None:
            raise PydanticCustomError(
                "secret_refused",
                "Apprise URLs carry tokens and are refused in YAML: put them, separated by "
                "spaces, in the environment variable named by notify.urls_env "
                "(default ASTER_AGENTS_NOTIFY_URLS)",
            )
        return value


class LedgerConfig(_Model):
    """``ledger.url``: a PostgreSQL database shared by hosts; absent: the SQLite file."""

    url: str | None = None

    @field_validator("url")
    @classmethod
    def _postgres_without_password(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres") or not parts.netloc + parts.query:
            raise ValueError("must be a URL like postgresql://user@host:5432/database")
        if parts.password or "password=" in parts.query.lower():
            raise ValueError(
                "must not contain a password: set PGPASSWORD in the environment "
                f"(or the whole URL in {LEDGER_URL_ENV})"
            )
        return value


class PortfolioConfig(_Model):
    state_dir: str = DEFAULT_STATE_DIR
    ledger: LedgerConfig = LedgerConfig()
    limits: LimitsConfig = LimitsConfig()
    symbol_policy: Literal["exclusive"] = "exclusive"
    rebalance: RebalanceConfig = RebalanceConfig()
    metrics: MetricsConfig = MetricsConfig()
    notify: NotifyConfig | None = None
    # the hosts sharing one public IP (behind one NAT) name one group: they share the
    # exchange's request-weight budget; absent, each host is its own group (ledger/budget.py)
    rate_group: str | None = Field(default=None, pattern=HOST_PATTERN)


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """Everything in one ``agents.d``: the agents (sorted by id) and the portfolio settings."""

    config_dir: Path
    portfolio: PortfolioConfig
    agents: tuple[AgentConfig, ...]
    files: Mapping[str, Path]

    @property
    def root(self) -> Path:
        """The directory relative paths (state dir, keystores) are resolved against."""
        return self.config_dir.resolve().parent

    @property
    def enabled_agents(self) -> tuple[AgentConfig, ...]:
        return tuple(a for a in self.agents if a.enabled)

    def agents_on(self, host: str) -> tuple[AgentConfig, ...]:
        """The enabled agents ``host`` runs (``host:`` absent or equal to it)."""
        return tuple(a for a in self.enabled_agents if a.runs_on(host))

    def agent(self, agent_id: str) -> AgentConfig:
        for agent in self.agents:
            if agent.id == agent_id:
                return agent
        known = ", ".join(a.id for a in self.agents) or "none"
        raise ConfigError(f"{self.config_dir}: no agent with id {agent_id!r} (known: {known})")

    @property
    def ledger_url(self) -> str | None:
        return self.portfolio.ledger.url

    def state_dir(self, override: str | Path | None = None) -> Path:
        """``--state-dir``, then ``$ASTER_AGENTS_STATE``, then ``_portfolio.yaml``, then ./state."""
        return resolve_state_dir(self.root, self.portfolio.state_dir, override)

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.root / path


def load_fleet(
    config_dir: str | Path | None = None, *, check_strategies: bool = True
) -> FleetConfig:
    """Load and validate every file in ``config_dir``; ConfigError lists every problem."""
    directory = resolve_config_dir(config_dir)
    if not directory.is_dir():
        raise ConfigError(
            f"{directory}: config directory not found; pass --config-dir or set {CONFIG_ENV}"
        )
    problems: list[str] = []
    portfolio = _load_portfolio(directory / PORTFOLIO_FILE, problems)
    agents: list[AgentConfig] = []
    files: dict[str, Path] = {}
    for path in agent_files(directory):
        agent = _load_agent(path, problems, check_strategies)
        if agent is not None:
            agents.append(agent)
            files[agent.id] = path
    _check_fleet(agents, files, problems)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {directory}", problems)
    agents = _with_base_url_override(agents, os.environ.get(BASE_URL_ENV, "").strip())
    ordered = tuple(sorted(agents, key=lambda a: natural_key(a.id)))  # agent-2 before agent-10
    return FleetConfig(directory, portfolio, ordered, files)


def _with_base_url_override(agents: list[AgentConfig], url: str) -> list[AgentConfig]:
    """Every agent's ``exchange.base_url`` replaced by ``$ASTER_AGENTS_BASE_URL`` when set.

    Only a loopback URL (a local simulator) is accepted: pointing a whole fleet at another
    exchange takes an explicit ``base_url`` in each agent's YAML.
    """
    if not url:
        return agents
    if not is_loopback_url(url):
        raise ConfigError(
            f"{BASE_URL_ENV}: {url!r} is not a loopback simulator URL such as "
            f"{SIM_DEFAULT_URL}; to use another exchange set exchange.base_url in each "
            "agent's YAML (and unset the variable)"
        )
    return [
        a.model_copy(update={"exchange": a.exchange.model_copy(update={"base_url": url})})
        for a in agents
    ]


def is_loopback_url(url: str) -> bool:
    """True for an http(s) URL whose host is 127.0.0.0/8, ::1 or localhost."""
    import ipaddress
    from urllib.parse import urlsplit

    if not re.match(r"^https?://[^\s/?#]+(:\d+)?/?$", url):
        return False
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_yaml(path: Path, problems: list[str]) -> object:
    try:
        return safeyaml.load(safeyaml.read_text(path))
    except safeyaml.BadYamlFile as exc:
        problems.append(f"{path}: {exc}")
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        what = getattr(exc, "problem", None) or "invalid YAML"
        problems.append(f"{path}: {where}YAML syntax error: {what}")
        return None


def _load_portfolio(path: Path, problems: list[str]) -> PortfolioConfig:
    if not path.exists():
        return PortfolioConfig()
    data = _read_yaml(path, problems)
    if data is None:
        return PortfolioConfig()
    before = len(problems)
    _find_raw_keys(path, data, (), problems)
    if len(problems) > before:
        return PortfolioConfig()
    if not isinstance(data, dict):
        problems.append(f"{path}: must be a mapping of settings, got {type(data).__name__}")
        return PortfolioConfig()
    try:
        return PortfolioConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_describe(path, exc))
        return PortfolioConfig()


def _load_agent(path: Path, problems: list[str], check_strategies: bool) -> AgentConfig | None:
    data = _read_yaml(path, problems)
    if data is None and not problems:
        problems.append(
            f"{path}: file is empty; expected an agent mapping (id, name, exchange, ...)"
        )
        return None
    if data is None:
        return None
    before = len(problems)
    _find_raw_keys(path, data, (), problems)
    if len(problems) > before:
        return None
    if not isinstance(data, dict):
        problems.append(
            f"{path}: must be a mapping (id, name, exchange, ...), got {type(data).__name__}"
        )
        return None
    try:
        agent = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(_describe(path, exc))
        return None
    if agent.id != path.stem:
        problems.append(
            f"{path}: id: must equal the file name stem {path.stem!r}, got {agent.id!r}"
        )
    if check_strategies:
        _check_strategy(path, agent, problems)
    return agent


def _check_strategy(path: Path, agent: AgentConfig, problems: list[str]) -> None:
    from aster_agents.strategies import get_strategy

    try:
        get_strategy(agent.trading.strategy, agent.trading.params)
    except ConfigError as exc:
        problems.extend(f"{path}: {line}" for line in exc.problems)


def _check_fleet(
    agents: Sequence[AgentConfig], files: Mapping[str, Path], problems: list[str]
) -> None:
    seen_ids: dict[str, AgentConfig] = {}
    signers: dict[str, str] = {}
    totals: dict[str, float] = {}
    for agent in agents:
        path = files[agent.id]
        if agent.id in seen_ids:
            problems.append(f"{path}: id: duplicate agent id {agent.id!r}")
        seen_ids[agent.id] = agent
        signer = agent.exchange.signer.lower()
        if signer in signers:
            problems.append(
                f"{path}: exchange.signer: API wallet already used by agent {signers[signer]!r}; "
                "give every agent its own API wallet"
            )
        signers.setdefault(signer, agent.id)
        if agent.enabled:
            user = agent.exchange.user
            totals[user] = totals.get(user, 0.0) + agent.allocation.capital_pct
    for user, total in totals.items():
        if total > 1.0 + 1e-9:
            problems.append(
                f"allocation.capital_pct: enabled agents of account {user} add up to "
                f"{total:.0%}, must be at most 100%"
            )


def _find_raw_keys(
    path: Path, data: object, where: tuple[str | int, ...], problems: list[str]
) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _find_raw_keys(path, value, (*where, str(key)), problems)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            _find_raw_keys(path, value, (*where, index), problems)
    elif isinstance(data, str | int) and _looks_like_key(data):
        problems.append(
            f"{path}: {_dotted(where) or '<root>'}: looks like a raw private key; "
            f"never put keys in YAML, {_SECRET_HINT}"
        )


def _looks_like_key(value: str | int) -> bool:
    if isinstance(value, int):  # unquoted 0x... hex is parsed by YAML as a (huge) integer
        return value.bit_length() > 160
    return bool(_RAW_KEY_RE.match(value.strip()))


def _dotted(where: Sequence[str | int]) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(path: Path, exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = _dotted(loc) or "<root>"
        message = _humanize(err)
        if err["type"] == "missing":
            lines.append(f"{path}: {key}: required key is missing")
        elif err["type"] == "secret_refused":  # never echo the value: it holds a token
            lines.append(f"{path}: {key}: {message}")
        elif err["type"] == "extra_forbidden":
            lines.append(
                f"{path}: {key}: unknown key (check the spelling; see README 'Configuration')"
            )
        else:
            given = err.get("input")
            if loc[:1] == ("ledger",) and isinstance(given, str):
                given = mask_url(given)  # never echo a password
            lines.append(f"{path}: {key}: {message}, got {_show(given)}")
    return lines


def _humanize(err: Any) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}"
    return {
        "greater_than": f"must be > {ctx.get('gt')}",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than": f"must be < {ctx.get('lt')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
    }.get(kind, msg[0].lower() + msg[1:] if msg else msg)


def _show(value: object) -> str:
    if isinstance(value, str) and _looks_like_key(value):
        return "<redacted>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
