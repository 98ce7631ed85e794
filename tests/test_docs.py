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
