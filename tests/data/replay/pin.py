"""Write (or rewrite) ``xrp-backtest.json``: the trades and books of a short backtest.

``tests/test_backtest.py`` runs the backtest this file describes (its ``strategies``, one
agent each on XRPUSDT 5m, and its ``from``/``to`` window over ``xrp/``) and compares the
result with the pinned one. Re-run this only when a change is *meant* to alter a backtest's
trades (e.g. when the event schedule changes), and say so in the commit:

    python tests/data/replay/pin.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
sys.path.insert(0, str(HERE.parents[1]))

from test_backtest import FIXTURE, PINNED, pinned_run  # noqa: E402


def main() -> None:
    old = json.loads(PINNED.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        doc = pinned_run(Path(tmp), old["strategies"], old["from"], old["to"])
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in doc.items() if k != "fills"]
    fills = ",\n".join(f"  {json.dumps(f)}" for f in doc["fills"])
    PINNED.write_text("{\n" + "\n".join(lines) + '\n "fills": [\n' + fills + "\n ]\n}\n")
    print(f"{PINNED}: {len(doc['fills'])} fills over {FIXTURE.name}")


if __name__ == "__main__":
    main()
