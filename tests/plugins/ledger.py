"""pytest fixtures for the ledger (owned by the ledger work)."""

from __future__ import annotations
