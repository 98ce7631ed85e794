"""Convert and trim the reference XRPUSDT data into the project's recording format.

Run once by hand (tests never read the source; they read the files this writes):

    python tests/data/replay/convert.py SOURCE_DIR tests/data/replay/xrp

SOURCE_DIR holds the plain-CSV XRPUSDT klines and funding rates described in
tests/data/replay/README.md (where the prices come from); nothing reads it at test time.

Numbers are written with at most 8 decimals. Keeps 32 hours of 5-minute klines
(2021-11-17 12:00 to 2021-11-18 20:00 UTC) and the funding rates inside that window,
as ``XRPUSDT-5m-klines.csv`` and ``XRPUSDT-fundingRate.csv``.
"""

from __future__ import annotations

import csv
import sys
from decimal import Decimal
from pathlib import Path

START = 1_637_150_400_000  # 2021-11-17 12:00 UTC
_PLACES = Decimal("1e-8")  # the source's float noise sits beyond the 8th place
END = START + 32 * 3_600_000


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))


def _clean(row: list[str]) -> list[str]:
    """Times as integers, numbers in their shortest form (the source has 1.1038000000000001)."""
    return [row[0], *(format(Decimal(v).quantize(_PLACES).normalize(), "f") for v in row[1:])]


def _write(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def main(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    klines = _rows(src / "XRPUSDT-5m-klines.csv")
    kept = [_clean(r) for r in klines[1:] if START <= int(r[0]) < END]
    _write(out / "XRPUSDT-5m-klines.csv", [klines[0], *kept])
    funding = _rows(src / "XRPUSDT-fundingRate.csv")
    kept = [_clean(r) for r in funding[1:] if START <= int(r[0]) < END]
    _write(out / "XRPUSDT-fundingRate.csv", [funding[0], *kept])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
