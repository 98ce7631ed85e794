"""The exception tree, named by the reaction each error calls for.

::

    AsterAgentsError                 base; ``exit_code`` is what the CLI exits with
    ├── ConfigError                  stop, exit 2 (bad config or bad usage)
    ├── CredentialError              stop, exit 2 (key missing, wrong password, key/signer mismatch)
    ├── AlreadyRunning               stop, exit 3 (the agent's singleton lock is held)
    ├── LedgerError                  stop, exit 1 (ledger unusable: newer schema, corrupt file)
    │   ├── StateDirFull             stop opening, retry with backoff (no space left)
    │   └── ReservationDenied        skip this tick (a limit says no); carries ``reason``
    └── ExchangeError                carries ``code`` (exchange error code) and ``msg``
        ├── AuthError                stop, exit 4 (signature, signer or nonce refused)
        │   └── DepositRequired      stop, exit 4 (-5050: the main wallet never deposited)
        ├── TransientExchangeError   retry with backoff (5xx, timeouts, dropped connections)
        │   ├── RateLimited          pause every agent on the host until ``retry_at``
        │   │   └── IpBanned         the same, for HTTP 418
        │   └── UnknownOutcome       an order may or may not exist: resolve by client order id
        ├── OrderRejected            skip this tick (filters, precision, would trigger,
        │   │                        open/stop order caps -2025/-4045, ...)
        │   ├── InsufficientMargin   skip this tick (-2018/-2019)
        │   └── OrderNotFound        the order does not exist (-2013)
        ├── ListenKeyInvalid         start a new user-data stream key (-1125)
        └── BadRequest               a bug on our side (missing/invalid parameter): stop the step

Only ``exchange/http.py`` sees raw exchange codes and httpx exceptions; it translates
them into these classes in one place.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_RUNTIME: Final = 1
EXIT_CONFIG: Final = 2
EXIT_ALREADY_RUNNING: Final = 3
EXIT_AUTH: Final = 4


class AsterAgentsError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code: int = EXIT_RUNTIME


class ConfigError(AsterAgentsError):
    """Bad config or bad usage: stop and exit 2.

    ``problems`` holds one line per problem, each naming the file and the key path.
    """

    exit_code = EXIT_CONFIG

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = problems if problems is not None else [message]


class CredentialError(ConfigError):
    """A signer key could not be resolved or does not match the configured signer."""


class AlreadyRunning(AsterAgentsError):
    """Another process holds the agent's singleton lock."""

    exit_code = EXIT_ALREADY_RUNNING


class LedgerError(AsterAgentsError):
    """The ledger cannot be used (newer schema, corrupt file)."""


class StateDirFull(LedgerError):
    """The state dir's filesystem is full: stop opening, keep what is on the exchange, retry."""

    def __init__(self, path: object, free: str) -> None:
        super().__init__(f"state dir full: {path}, {free}")
        self.path = path


class ReservationDenied(LedgerError):
    """A ledger limit refused a reservation: skip this tick."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ExchangeError(AsterAgentsError):
    """An error reported by (or on the way to) the exchange."""

    def __init__(self, msg: str, code: int | None = None, status: int | None = None) -> None:
        super().__init__(f"{msg} (code {code})" if code is not None else msg)
        self.code = code
        self.msg = msg
        self.status = status


class AuthError(ExchangeError):
    """The exchange refused our credentials: stop, exit 4."""

    exit_code = EXIT_AUTH


class DepositRequired(AuthError):
    """-5050 DEPOSIT_REQUIRED: the main wallet has not deposited yet; deposit first, no retry."""


class TransientExchangeError(ExchangeError):
    """Worth retrying after a backoff."""


class RateLimited(TransientExchangeError):
    """HTTP 429: every agent on the host pauses until ``retry_at`` (epoch seconds)."""

    def __init__(
        self, msg: str, retry_at: float, code: int | None = None, status: int | None = None
    ) -> None:
        super().__init__(msg, code, status)
        self.retry_at = retry_at


class IpBanned(RateLimited):
    """HTTP 418: the IP is banned until ``retry_at``."""


class UnknownOutcome(TransientExchangeError):
    """The request may have been executed: resolve by querying, never by resending.

    ``client_order_id`` names the order whose fate is unknown (None for non-order requests).
    """

    def __init__(
        self,
        msg: str,
        code: int | None = None,
        status: int | None = None,
        client_order_id: str | None = None,
    ) -> None:
        super().__init__(msg, code, status)
        self.client_order_id = client_order_id


class OrderRejected(ExchangeError):
    """The exchange refused this order: skip this tick."""


class InsufficientMargin(OrderRejected):
    """Not enough margin for the order."""


class OrderNotFound(OrderRejected):
    """The order does not exist (-2013)."""


class ListenKeyInvalid(ExchangeError):
    """The user-data stream key expired or was closed by another agent: start a new one."""


class BadRequest(ExchangeError):
    """The request itself was wrong: a bug on our side."""
