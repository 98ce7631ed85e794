"""YAML files read outside ``agents.d`` (the simulator's accounts file): yaml stays in config/."""

from __future__ import annotations

from pathlib import Path

from aster_agents.errors import ConfigError


def load_yaml_file(path: Path, what: str) -> object:
    """The document in ``path`` (safe loader); a ConfigError naming the file when unreadable."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None
