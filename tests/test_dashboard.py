"""ops/grafana-dashboard.json queries only names the exporter exports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from aster_agents.sim.server import SimServer
from tests.kit.agents import make_fleet

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "ops" / "grafana-dashboard.json"
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def queries(node: Any) -> Iterator[str]:
    """Every PromQL string in the dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, dict) and "query" in value:
                yield value["query"]
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def test_every_dashboard_query_names_an_exported_metric(
    tmp_path: Path, sim_server: SimServer
) -> None:
    """Each aster_* name in a query is a sample name of a family the exporter describes."""
    fleet = make_fleet(tmp_path, sim_server, ["agent-1"])
    target = tmp_path / "out.prom"
    done = subprocess.run(
        fleet.command("metrics", "--textfile", str(target)),
        env=fleet.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    exported = {
        f.name + suffix
        for f in text_string_to_metric_families(target.read_text())
        for suffix in SUFFIXES[f.type]
    }
    found = list(queries(json.loads(DASHBOARD.read_text())))
    assert len(found) > 20
    used = {name for q in found for name in re.findall(r"\baster_[a-z0-9_]+", q)}
    assert sorted(used - exported) == []
    sections = {"Fleet overview", "Agents", "Rate budget", "Errors"}
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert sections <= titles
