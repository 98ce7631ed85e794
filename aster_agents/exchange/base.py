"""Contracts between the exchange client and the rest of the project."""

from __future__ import annotations

from typing import Protocol


class RequestBudget(Protocol):
    """The host-wide request budget every exchange request goes through.

    The shared implementation lives in the ledger package (cross-process token buckets
    under the ledger lock); ``NullBudget`` below is for one-off CLI calls and tests.
    """

    def acquire(self, weight: int, orders: int = 0) -> None:
        """Block until ``weight`` request weight (and ``orders`` orders) may be spent.

        Raises ``RateLimited`` instead of blocking when the host is paused for longer than
        the implementation is willing to wait.
        """
        ...

    def observe(
        self,
        used_weight_1m: int | None,
        order_count_10s: int | None,
        order_count_1m: int | None,
    ) -> None:
        """Correct the buckets from the exchange's ``X-MBX-*`` headers."""
        ...

    def pause(self, until: float, reason: str) -> None:
        """Pause every agent on the host until ``until`` (epoch seconds), after a 429/418."""
        ...


class NullBudget:
    """A budget that never waits: for single CLI calls and unit tests."""

    def acquire(self, weight: int, orders: int = 0) -> None:
        return None

    def observe(
        self,
        used_weight_1m: int | None,
        order_count_10s: int | None,
        order_count_1m: int | None,
    ) -> None:
        return None

    def pause(self, until: float, reason: str) -> None:
        return None
