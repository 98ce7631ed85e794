"""pytest fixtures for the sim (owned by the sim work)."""

from __future__ import annotations
