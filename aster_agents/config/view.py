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
from pathlib import Path
from typing import Any, Final, NamedTuple

CONFIG_ENV: Final = "ASTER_AGENTS_CONFIG"
STATE_ENV: Final = "ASTER_AGENTS_STATE"
PORTFOLIO_FILE: Final = "_portfolio.yaml"
DEFAULT_STATE_DIR: Final = "state"
LEDGER_URL_ENV: Final = "ASTER_AGENTS_LEDGER_URL"
DEFAULT_INTERVAL: Final = "5m"
DEFAULT_SCAN_SECONDS: Final = 60.0
DEFAULT_MAX_POSITIONS: Final = 1
DEFAULT_MAX_TOTAL_POSITIONS: Final = 10
DEFAULT_MAX_GROSS_LEVERAGE: Final = 3.0
DEFAULT_MIN_TRACK_RECORD_DAYS: Final = 7.0


def resolve_config_dir(option: str | Path | None = None) -> Path:
    """``--config-dir``, then ``$ASTER_AGENTS_CONFIG``, then ``./agents.d``."""
    return Path(option or os.environ.get(CONFIG_ENV) or "agents.d").expanduser()


def resolve_state_dir(root: Path, configured: str, override: str | Path | None = None) -> Path:
    """``--state-dir``, then ``$ASTER_AGENTS_STATE``, then ``_portfolio.yaml``, then ./state."""
    chosen = override or os.environ.get(STATE_ENV) or configured
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else root / path


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders numbers by value: agent-2 before agent-10."""
    import re

    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part
    )


def agent_files(directory: Path) -> list[Path]:
    """The agent files of an agents.d, in name order (``_*`` and dot files are not agents)."""
    return [
        p
        for p in sorted(directory.glob("*.y*ml"))
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(("_", "."))
    ]


class ExchangeView(NamedTuple):
    user: str
    signer: str = ""


class TradingView(NamedTuple):
    strategy: str
    symbols: tuple[str, ...]
    interval: str
    scan_interval_seconds: float
    max_positions: int


class AllocationView(NamedTuple):
    capital_pct: float


class AgentView(NamedTuple):
    id: str
    name: str
    enabled: bool
    exchange: ExchangeView
    trading: TradingView
    allocation: AllocationView
    issue: str | None = None  # why the file would not validate, when it can tell cheaply
    host: str | None = None  # ``host:``: the one host that runs it (None: any)


# the keys of an agent file (tests keep this equal to config.schema's models)
KNOWN_KEYS: Final[dict[str, frozenset[str]]] = {
    "": frozenset({"id", "name", "enabled", "host", "exchange", "trading", "allocation"}),
    "exchange": frozenset(
        {
            "user",
            "signer",
            "signer_key_env",
            "signer_keystore",
            "signer_keystore_password_env",
            "base_url",
            "chain_id",
        }
    ),
    "trading": frozenset(
        {
            "strategy",
            "params",
            "symbols",
            "interval",
            "scan_interval_seconds",
            "max_positions",
            "min_confidence",
            "position_size_pct",
            "leverage",
            "stop_loss_pct",
            "take_profit_pct",
        }
    ),
    "allocation": frozenset({"capital_pct"}),
}
_BROKEN: Final = "__unreadable__"


class LimitsView(NamedTuple):
    max_total_positions: int = DEFAULT_MAX_TOTAL_POSITIONS
    max_gross_leverage: float = DEFAULT_MAX_GROSS_LEVERAGE


class PortfolioView(NamedTuple):
    state_dir: str = DEFAULT_STATE_DIR
    limits: LimitsView = LimitsView()
    min_track_record_days: float = DEFAULT_MIN_TRACK_RECORD_DAYS  # rebalance.*, for report
    ledger_url: str | None = None  # ``ledger.url``: a PostgreSQL ledger instead of the file
    rate_group: str | None = None  # ``rate_group``: hosts sharing one IP's request weight


class FleetView(NamedTuple):
    """What the display commands need of a fleet; ``config.FleetConfig`` has the same shape."""

    config_dir: Path
    portfolio: PortfolioView
    agents: tuple[AgentView, ...]

    @property
    def root(self) -> Path:
        return self.config_dir.resolve().parent

    def state_dir(self, override: str | Path | None = None) -> Path:
        return resolve_state_dir(self.root, self.portfolio.state_dir, override)

    @property
    def ledger_url(self) -> str | None:
        return self.portfolio.ledger_url


def load_view(config_dir: str | Path | None = None) -> FleetView:
    """Read ``agents.d`` without validating it; unreadable files are skipped.

    The parsed files are cached in the user's cache dir, keyed by each file's size and
    modification time, so a repeated ``status`` does not even import the YAML parser.
    """
    from aster_agents.errors import ConfigError

    directory = resolve_config_dir(config_dir)
    if not directory.is_dir():
        raise ConfigError(
            f"{directory}: config directory not found; pass --config-dir or set {CONFIG_ENV}"
        )
    files = [directory / PORTFOLIO_FILE, *agent_files(directory)]
    stamp = [_stamp(p) for p in files]
    cache = _cache_path(directory)
    raw = _cached(cache, stamp)
    if raw is None:
        raw = {str(p.name): _read(p) for p in files}
        _store(cache, stamp, raw)
    portfolio = _portfolio(raw.get(PORTFOLIO_FILE, {}))
    agents = []
    for path in files[1:]:
        agent = _agent(path.name, raw.get(path.name, {}))
        if agent is not None:
            agents.append(agent)
    return FleetView(directory, portfolio, tuple(sorted(agents, key=lambda a: natural_key(a.id))))


class ViewMemo:
    """``load_view`` for a long-running reader (the exporter): the view is kept in memory and
    reused while the config directory (its mtime: files added, removed or renamed) and every
    file of it (size and mtime) are unchanged, so a read costs a few ``stat`` calls.
    """

    def __init__(self, config_dir: str | Path | None = None) -> None:
        self.config_dir = config_dir
        self._listing: tuple[object, list[Path]] | None = None
        self._view: tuple[list[list[object]], FleetView] | None = None

    def load(self) -> FleetView:
        directory = resolve_config_dir(self.config_dir)
        try:
            listed = directory.stat().st_mtime_ns
        except OSError:
            return load_view(directory)  # its one-line error
        if self._listing is None or self._listing[0] != listed:
            self._listing = (listed, [directory / PORTFOLIO_FILE, *agent_files(directory)])
        stamp = [_stamp(p) for p in self._listing[1]]  # taken before the files are read
        if self._view is None or self._view[0] != stamp:
            self._view = (stamp, load_view(directory))
        return self._view[1]


def _stamp(path: Path) -> list[object]:
    try:
        st = path.stat()
    except OSError:
        return [path.name, None, None]
    return [path.name, st.st_size, st.st_mtime_ns]


def _cache_path(directory: Path) -> Path:
    home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    key = str(directory.resolve()).strip("/").replace("/", "_")[-150:]
    return Path(home) / "aster-agents" / f"view-{key}.json"


def _cached(cache: Path, stamp: list[list[object]]) -> dict[str, Any] | None:
    import json

    try:
        doc = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("stamp") != stamp:
        return None
    files = doc.get("files")
    return files if isinstance(files, dict) else None


def _store(cache: Path, stamp: list[list[object]], files: dict[str, Any]) -> None:
    """Write the cache atomically; a cache that cannot be written is simply not used."""
    import json
    import tempfile

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".view-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"stamp": stamp, "files": files}, out, default=str)
        os.replace(tmp, cache)
    except (OSError, TypeError, ValueError):
        return


def _read(path: Path) -> Mapping[str, Any]:
    """The file's mapping, or {} when it is missing or refused (the same bounds as the loader)."""
    import yaml

    from aster_agents.config import safeyaml

    try:
        data = safeyaml.load(safeyaml.read_text(path))
    except (safeyaml.BadYamlFile, yaml.YAMLError) as exc:
        return {_BROKEN: str(exc) if isinstance(exc, safeyaml.BadYamlFile) else type(exc).__name__}
    return data if isinstance(data, dict) else {_BROKEN: "not a mapping"}


def _section(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _portfolio(data: Mapping[str, Any]) -> PortfolioView:
    limits = _section(data, "limits")
    url = _section(data, "ledger").get("url")
    return PortfolioView(
        state_dir=str(data.get("state_dir", DEFAULT_STATE_DIR)),
        ledger_url=url if isinstance(url, str) and url else None,
        rate_group=str(data["rate_group"]) if data.get("rate_group") else None,
        limits=LimitsView(
            max_total_positions=_as(
                int, limits.get("max_total_positions"), DEFAULT_MAX_TOTAL_POSITIONS
            ),
            max_gross_leverage=_as(
                float, limits.get("max_gross_leverage"), DEFAULT_MAX_GROSS_LEVERAGE
            ),
        ),
        min_track_record_days=_as(
            float,
            _section(data, "rebalance").get("min_track_record_days"),
            DEFAULT_MIN_TRACK_RECORD_DAYS,
        ),
    )


def _issue(name: str, data: Mapping[str, Any]) -> str | None:
    """The first unknown key (a typo that validation would refuse), or an unreadable file."""
    hint = "run `aster-agent agents validate`"
    if _BROKEN in data:
        return f"{name}: cannot be read as YAML ({data[_BROKEN]}); {hint}"
    for section, known in KNOWN_KEYS.items():
        values = data if not section else _section(data, section)
        for key in values:
            if key not in known:
                where = f"{section}.{key}" if section else str(key)
                return f"{name}: unknown key {where}, so defaults are shown; {hint}"
    return None


def _agent(name: str, data: Mapping[str, Any]) -> AgentView | None:
    if not data:
        return None
    stem = name.rsplit(".", 1)[0]
    trading, exchange = _section(data, "trading"), _section(data, "exchange")
    symbols = trading.get("symbols")
    return AgentView(
        id=str(data.get("id", stem)),
        name=str(data.get("name", stem)),
        enabled=bool(data.get("enabled", True)),
        exchange=ExchangeView(
            user=str(exchange.get("user", "")), signer=str(exchange.get("signer", ""))
        ),
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
        issue=_issue(name, data),
        host=str(data["host"]) if data.get("host") else None,
    )


def _as(kind: type[Any], value: object, default: Any) -> Any:
    try:
        return kind(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` term) shown as ``***``."""
    import re
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        cred, _, host = netloc.rpartition("@")
        if ":" in cred:
            cred = cred.split(":", 1)[0] + ":***"
        netloc = f"{cred}@{host}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
