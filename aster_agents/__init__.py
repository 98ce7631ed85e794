"""aster-agents: a small fleet of independent trading agents on Aster DEX perpetual futures."""

from __future__ import annotations

__version__ = "0.1.0"
