"""The package's layer contract, checked over ``ast``: every import, wherever it sits in a module
(top level, inside functions, under ``TYPE_CHECKING``), relative imports resolved.

Rules (``shared/design.md`` section 2):

1. Layers point down: a module may import its own layer and the layers below it, never above.
2. Nothing imports ``cli`` but ``__main__`` (``python -m aster_agents``, above every layer).
3. The package never imports ``tests`` or ``bench``.
4. Every module belongs to a layer: a new top-level module must be placed in the order.
5. Each listed third-party library is imported only where ``LIBRARIES`` allows it, every
   allowance with its reason.

Run as ``python -m tests.kit.architecture`` (``make lint``) or through
``tests/test_architecture.py`` (``make test``); both print one line per violation.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]

LAYERS: Final = (
    ("models", "errors", "logs", "signing", "fsutil", "decimals"),  # the ground floor
    ("strategies",),
    ("config",),
    ("exchange",),
    ("ledger",),
    ("sim",),
    ("portfolio",),
    ("agent",),
    ("fleet",),
    ("cli",),
)

# library -> {module path or folder/ (relative to the package): why it may import it there}
LIBRARIES: Final[Mapping[str, Mapping[str, str]]] = {
    "httpx": {
        "exchange/http.py": "the exchange client: the only module that sees httpx errors",
        "strategies/llm.py": "the llm strategy's own model endpoint (OpenAI-compatible, not the "
        "exchange); strategies sit below exchange/ and cannot borrow its client",
    },
    "yaml": {"config/": "agents.d, _portfolio.yaml and the simulator's accounts file"},
    "pydantic": {
        "config/": "the agents.d schema",
        "strategies/": "each strategy validates its own params",
    },
    "pydantic_core": {
        "strategies/base.py": "formats a strategy's params error",
        "config/schema.py": "refuses a notify URL in YAML without echoing its token",
    },
    "prometheus_client": {"fleet/metrics.py": "the exporter's exposition and HTTP server"},
    "apprise": {"fleet/notify.py": "the notifier's delivery"},
    "loguru": {"logs.py": "logging is set up in one module"},
    "coincurve": {"signing.py": "EIP-712 signatures"},
    "eth_account": {"signing.py": "keystores"},
    "eth_hash": {"signing.py": "keccak"},
    "eth_utils": {"signing.py": "checksum addresses"},
    "typer": {"cli/": "the command line"},
    "rich": {"cli/": "the command line's rendering"},
    "supervisor": {},  # supervisord runs as a program; XML-RPC is fleet/rpc.py (stdlib)
}


@dataclass(frozen=True)
class Contract:
    package: str
    layers: tuple[tuple[str, ...], ...] = LAYERS
    libraries: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: LIBRARIES)
    forbidden: tuple[str, ...] = ("tests", "bench")
    top: str = "cli"  # nothing imports it ...
    entry: str = "__main__"  # ... but the entry point, which sits above every layer

    def rank(self, name: str) -> int | None:
        if name == "__init__":
            return -1  # the package's own __init__ imports nothing of the package
        if name == self.entry:
            return len(self.layers)
        for i, group in enumerate(self.layers):
            if name in group:
                return i
        return None


@dataclass(frozen=True)
class _Import:
    line: int
    module: str  # absolute dotted name


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[_Import]:
    """Every import in ``tree`` as absolute names; ``from a import b`` yields ``a.b``."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _Import(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here[: len(here) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                yield _Import(node.lineno, f"{base}.{alias.name}" if base else alias.name)


def _layer_of(module: str, tops: frozenset[str]) -> str:
    """``aster_agents.agent.runner`` -> ``agent``; ``aster_agents`` and names defined in its
    ``__init__`` (``from aster_agents import __version__``) -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in tops else "__init__"


def _allowed(rel: str, places: Mapping[str, str]) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in places)


def violations(package_dir: Path, contract: Contract) -> list[str]:
    """One line per broken rule in the package at ``package_dir``; empty when it keeps them."""
    problems: list[str] = []
    shown = package_dir.parent
    tops = frozenset(p.stem for p in package_dir.iterdir() if p.suffix == ".py" or p.is_dir())
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).as_posix()
        parts = path.relative_to(package_dir).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        dotted = [contract.package, *parts[:-1]] if is_package else [contract.package, *parts]
        module = ".".join(dotted)
        layer = _layer_of(module, tops)
        where = path.relative_to(shown).as_posix()
        source_rank = contract.rank(layer)
        if source_rank is None:
            problems.append(f"{where}: module {layer!r} is in no layer; add it to the order")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for imp in sorted(_imports(tree, module, is_package), key=lambda i: i.line):
            problems += _check(contract, tops, (where, rel, layer, source_rank), imp)
    return problems


def _check(
    contract: Contract, tops: frozenset[str], source: tuple[str, str, str, int], imp: _Import
) -> list[str]:
    where, rel, layer, rank = source
    top = imp.module.split(".")[0]
    at = f"{where}:{imp.line}: imports {imp.module}"
    if top in contract.forbidden:
        return [f"{at}: the package never imports {top}/"]
    if top in contract.libraries and not _allowed(rel, contract.libraries[top]):
        places = ", ".join(contract.libraries[top]) or "nowhere"
        return [f"{at}: {top} is imported only in {places}"]
    if top != contract.package:
        return []
    target = _layer_of(imp.module, tops)
    if target == contract.top and layer not in (contract.top, contract.entry):
        return [f"{at}: nothing imports {contract.top}"]
    target_rank = contract.rank(target)
    if target_rank is None:
        return [f"{at}: {target!r} is in no layer"]
    if target_rank > rank:
        return [f"{at}: {layer} may not import {target} (a higher layer)"]
    return []


def main() -> int:
    found = violations(ROOT / "aster_agents", Contract("aster_agents"))
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
