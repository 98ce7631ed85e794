"""When may an order whose fate is unknown be written off? (API reference 0.1 and 1.5)

A signed request is valid for 60 s either side of the exchange's clock (since 2026-07-16).
An order the exchange does not know yet may still be held somewhere in the network and land
until its nonce leaves that window: writing it off sooner lets the agent reserve and send a
second entry while the first one can still be filled. So an unresolved sent intent is
released only

- once ``sent + window + margin`` has passed (the margin covers clock skew between this host
  and the exchange, up to 5 s, and the time a request spends in the exchange), or
- at once, when ``POST /fapi/v3/noop`` signed with the order's own nonce was accepted and the
  order is still unknown afterwards: that nonce is spent, so the order can never be accepted.
  A noop refused as a duplicate means the order reached the exchange: it is awaited.

The window is 60 s for Aster's main and test networks whatever anyone says. Another base URL
(a simulator) may state a different one in ``exchangeInfo.nonceWindowMs``; tests may force
the whole write-off delay with ``$ASTER_AGENTS_NONCE_WINDOW_MS``, which is refused for an Aster
host when shorter than the real rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import urlparse

from aster_agents.errors import ConfigError
from aster_agents.ledger import Intent

ASTER_WINDOW_MS: Final = 60_000
MARGIN_MS: Final = 5_000
ASTER_HOSTS: Final = ("asterdex.com", "asterdex-testnet.com")
WINDOW_ENV: Final = "ASTER_AGENTS_NONCE_WINDOW_MS"  # tests: the whole write-off delay, in ms
NOOP_ENV: Final = "ASTER_AGENTS_NOOP_RESOLVE"  # "0": wait for the window, never send a noop


def is_aster_host(base_url: str) -> bool:
    """True for Aster's own hosts (main and test networks), which follow the real rule."""
    host = (urlparse(base_url).hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in ASTER_HOSTS)


def write_off_ms(base_url: str, stated_ms: int | None, env: Mapping[str, str]) -> int:
    """How long after sending an unknown order may be written off (window + margin)."""
    aster = is_aster_host(base_url)
    forced = env.get(WINDOW_ENV, "").strip()
    if forced:
        if not forced.isdigit() or int(forced) <= 0:
            raise ConfigError(f"${WINDOW_ENV}: expected a whole number of ms, got {forced!r}")
        if aster and int(forced) < ASTER_WINDOW_MS + MARGIN_MS:
            raise ConfigError(
                f"${WINDOW_ENV}={forced}: {base_url} accepts a signed request for "
                f"{ASTER_WINDOW_MS // 1000} s, so an order cannot be written off sooner than "
                f"{(ASTER_WINDOW_MS + MARGIN_MS) // 1000} s; this knob is for simulators only"
            )
        return int(forced)
    window = ASTER_WINDOW_MS
    if stated_ms is not None and stated_ms > 0 and (stated_ms > window or not aster):
        window = stated_ms
    return window + MARGIN_MS


def noop_resolve(env: Mapping[str, str]) -> bool:
    """Whether unresolved intents are settled early with a noop on their nonce (default yes)."""
    return env.get(NOOP_ENV, "1").strip() not in ("0", "false", "no", "off")


def sent_ms(intent: Intent) -> int:
    """When the intent's order went out: its nonce's time, else the latest time we know."""
    if intent.nonce is not None:
        return intent.nonce // 1000
    return max(intent.created_ms, intent.updated_ms)
