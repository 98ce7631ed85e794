"""The ledger benchmark on PostgreSQL and SQLite side by side, with a throwaway server.

    python bench/ledger_pg.py "pg --procs 10 --seconds 8" "sqlite --procs 10 --seconds 8"
    python bench/ledger_pg.py "pg --procs 50 --think-ms 200 --seconds 8"
    python bench/ledger_pg.py --repo ../main "pg --procs 10 --seconds 8"   # another checkout

Each argument is one run of ``bench/ledger.py``: its backend (``pg`` or ``sqlite``) and its
options. A PostgreSQL server from the ``pgserver`` wheel (the one the tests use) is started on
a unix socket in a temporary directory and stopped at the end; every ``pg`` run gets a fresh
schema there. Prints one JSON line per run: the run's spec and the figures that decide the
targets (throughput, latency, violations, the machine's load) and the CPU per loop of the
workers (``cpu_us_per_loop``) and, on PostgreSQL, of the server processes serving them
(``server_cpu_us_per_loop``): on a small machine those two are what the throughput is made
of, and they are far less noisy than it.
``--repo PATH`` runs the ``bench/ledger.py`` of another checkout (with its own package and
venv, if it has one), for a before/after comparison on one server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEEP = (
    "reservations_per_s",
    "p50_ms",
    "p99_ms",
    "violations",
    "cpu_us_per_loop",
    "server_cpu_us_per_loop",
    "loadavg_1m_start",
    "loadavg_1m",
)


def run_one(spec: str, uri: str, repo: Path) -> dict[str, Any]:
    backend, *options = spec.split()
    venv = repo / ".venv" / "bin" / "python"
    python = str(venv) if venv.exists() else sys.executable
    cmd = [python, str(repo / "bench" / "ledger.py"), *options, "--json"]
    if backend == "pg":
        cmd += ["--url", uri]
    elif backend != "sqlite":
        raise SystemExit(f"run {spec!r}: the backend is pg or sqlite")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run {spec!r} failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    out: dict[str, Any] = {"version": 1, "run": spec}
    out.update({key: result[key] for key in KEEP if key in result})
    return out


def main() -> None:
    runs = sys.argv[1:]
    repo = ROOT
    if runs[:1] == ["--repo"] and len(runs) > 1:
        repo, runs = Path(runs[1]).resolve(), runs[2:]
    if not runs or runs[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if runs else 2)
    root = Path(tempfile.mkdtemp(prefix="aster-pgbench-"))
    root.chmod(0o755)  # as root, pgserver runs the server as its own user, which must reach it
    os.environ.setdefault("XDG_RUNTIME_DIR", str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(root / "data", cleanup_mode="stop")
    try:
        for spec in runs:
            print(json.dumps(run_one(spec, server.get_uri(), repo)), flush=True)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
