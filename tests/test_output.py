"""Output people read: full width into pipes and files, terminal width in a pty, plain decimals."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from decimal import Decimal
from pathlib import Path

import pytest

from aster_agents.decimals import plain, signed

BIN = str(Path(sys.executable).parent / "aster-agent")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The shipped agents.d; no COLUMNS, as in a user's shell."""
    monkeypatch.delenv("COLUMNS")
    monkeypatch.setenv("ASTER_AGENTS_CONFIG", str(REPO / "agents.d"))
    return dict(os.environ)


def test_tables_are_full_width_into_a_pipe(env: dict[str, str]) -> None:
    """`agents list | cat` and `status > file` keep every id and address whole."""
    listed = subprocess.run(
        [BIN, "agents", "list"], env=env, capture_output=True, text=True, check=True
    )
    assert "…" not in listed.stdout
    assert (
        "agent-10" in listed.stdout
        and "0xA38dc8d61C1f18257a7A32a399D499A07A2c9b39" in listed.stdout
    )
    shown = subprocess.run([BIN, "status"], env=env, capture_output=True, text=True, check=True)
    assert "…" not in shown.stdout and "agent-10" in shown.stdout


def test_tables_fit_the_terminal_in_a_pty(env: dict[str, str]) -> None:
    """In an 80-column terminal the table is cut to 80 columns, as before."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(
        [BIN, "agents", "list"], env=env, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=30) == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())
    lines = text.splitlines()
    assert lines and max(len(line) for line in lines) <= 80


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("0E-8", "0"),
        ("-0E-8", "0"),
        ("10000.00000000", "10000.00000000"),
        ("350.00", "350.00"),
        ("9998.06575935", "9998.06575935"),
        ("1.123456789", "1.12345679"),
        ("1E+3", "1000"),
    ],
)
def test_plain_decimal_strings(value: str, text: str) -> None:
    """No exponent, at most 8 places, zero is "0"; the value's own places are kept."""
    assert plain(Decimal(value)) == text


def test_signed_decimal_strings() -> None:
    """A difference carries its sign, zero included."""
    assert (signed(Decimal("0E-8")), signed(Decimal("-1.5"))) == ("+0", "-1.5")
