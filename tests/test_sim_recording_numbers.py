"""A recording's prices read as floats straight from the text: what the Decimal route gives."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from aster_agents.errors import ConfigError
from aster_agents.sim.recording import KLINE_COLUMNS, _float, _number, read_series

FIXTURE = Path(__file__).parent / "data" / "replay" / "xrp"
ODD = [
    "1.1069", "0.00001", "65000.5", "1e-3", "2.5E+4", " 2.50 ", "+3", ".5", "5.", "1_000.5",
    "-0", "0", "-0.0", "0.1", "123456789.123456789123", "1e308", "1e400", "1__0", "1_",
    "nan", "NaN", "inf", "-Infinity", "sNaN", "", "abc", "0x10", "1,5",
]  # fmt: skip


def _plain(value: str) -> float | str:
    """The plain reading (``float`` of ``_number``), or its error's message."""
    try:
        return float(_number(Path("k.csv"), 7, value, "close"))
    except ConfigError as exc:
        return str(exc)


@pytest.mark.parametrize("value", ODD)
def test_a_number_reads_as_the_decimal_route_reads_it(value: str) -> None:
    """The same float (the sign of a zero too), or the same error naming line and column."""
    try:
        fast: float | str = _float(Path("k.csv"), 7, value, "close")
    except ConfigError as exc:
        fast = str(exc)
    plain = _plain(value)
    assert fast == plain and type(fast) is type(plain)
    if isinstance(fast, float) and isinstance(plain, float):
        assert math.copysign(1, fast) == math.copysign(1, plain)


def test_the_fixture_series_is_every_row_read_through_decimal() -> None:
    """Every price and volume of the fixture recording, as ``float(Decimal(text))``."""
    path = FIXTURE / "XRPUSDT-5m-klines.csv"
    series = read_series(path, "5m", KLINE_COLUMNS)
    with path.open() as fh:
        rows = list(csv.reader(fh))[1:]
    columns = list(zip(*(r[1:6] for r in rows), strict=True))
    plain = [[float(_number(path, 0, text, "x")) for text in col] for col in columns]
    assert [series.o, series.h, series.low, series.c, series.v] == plain
    assert len(series.c) == len(rows) > 300
