"""RELIABILITY.md names the tests that check each promise: every one it names must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_test_named_in_reliability_md_exists() -> None:
    text = (REPO / "RELIABILITY.md").read_text()
    named = set(re.findall(r"`(?:tests/[\w/]+\.py::)?(test_\w+)`", text))
    files = set(re.findall(r"`(tests/[\w/]+\.py)(?:::\w+)?`", text))
    defined = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        defined |= set(re.findall(r"^(?:async )?def (test_\w+)\(", path.read_text(), re.M))
    assert len(named) > 20  # the parse found the lists
    assert sorted(named - defined) == []
    assert sorted(f for f in files if not (REPO / f).is_file()) == []


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n{title}\n")
    end = text.find("\n##", start + len(title) + 2)
    return text[start:end]


def test_readme_metric_table_is_every_exported_family_with_its_help(tmp_path: Path) -> None:
    """README's metric table: one row per exported family, its type, and its HELP verbatim."""
    from prometheus_client.parser import text_string_to_metric_families

    from aster_agents.fleet import metrics

    (tmp_path / "agents.d").mkdir()
    (tmp_path / "agents.d" / "_portfolio.yaml").write_text("state_dir: state\n")
    text = metrics.exposition(metrics.registry(tmp_path / "agents.d", tmp_path / "state"))
    exported = {
        f.name + ("_total" if f.type == "counter" else ""): (f.type, f.documentation)
        for f in text_string_to_metric_families(text.decode())
    }
    rows = re.findall(
        r"^\| `(aster_\w+)` \| (\w+) \| [^|]* \| ([^|]*) \|",
        readme_section("### Prometheus metrics (`aster-agent metrics`)"),
        re.M,
    )
    listed = {name: (kind, help_text.strip()) for name, kind, help_text in rows}
    assert len(listed) == len(rows) and len(exported) > 40
    assert listed == exported


def test_readme_lists_every_event_the_notifier_alerts_on() -> None:
    """Each audit event ``alert_for`` turns into a message has a row in README's event table."""
    source = (REPO / "aster_agents" / "fleet" / "notify.py").read_text()
    events = set(re.findall(r'entry\.event == "(\w+)"', source))
    for group in re.findall(r"entry\.event in \(([^)]*)\)", source):
        events |= set(re.findall(r'"(\w+)"', group))
    table = readme_section("### Alerts (`aster-agent notify`)")
    first_cells = " ".join(re.findall(r"^\| ([^|]*)\|", table, re.M))
    documented = set(re.findall(r"`(\w+)`", first_cells))
    assert len(events) > 8
    assert sorted(events - documented) == []
