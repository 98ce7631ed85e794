"""Built-in trading strategies: pure ``decide(market, position) -> Signal`` objects.

Use from the runner::

    from aster_agents.strategies import FLAT, MarketSnapshot, PositionView, get_strategy

    strategy = get_strategy(cfg.trading.strategy, cfg.trading.params, seed=seed)
    lookback = max(strategy.min_klines, floor)
    signal = strategy.decide(MarketSnapshot(symbol, interval, klines, mark, now_ms), position)
    if signal.action in (Action.LONG, Action.SHORT) and signal.confidence >= min_confidence: ...

Each strategy module's docstring explains its idea, params and confidence mapping.
``get_strategy`` validates params and raises :class:`~aster_agents.errors.ConfigError` whose
``problems`` lines read ``trading.params.<key>: <what is expected>, got <value>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from aster_agents.errors import ConfigError
from aster_agents.strategies import (
    breakout,
    llm,
    mean_reversion,
    momentum,
    profiles,
    random_strategy,
    scalper,
    swing,
    trend,
)
from aster_agents.strategies.base import (
    FLAT,
    Action,
    MarketSnapshot,
    PositionView,
    RiskLimits,
    Signal,
    Strategy,
    attached,
)

Builder = Callable[[Mapping[str, object], int], Strategy]

# name -> builder(params, seed). A new strategy adds one line here and a module with a
# ``build(params, seed)`` function; nothing else changes.
_REGISTRY: Final[dict[str, Builder]] = {
    "trend": trend.build,
    "mean_reversion": mean_reversion.build,
    "breakout": breakout.build,
    "momentum": momentum.build,
    "scalper": scalper.build,
    "swing": swing.build,
    "conservative": profiles.build_conservative,
    "aggressive": profiles.build_aggressive,
    "random": random_strategy.build,
    "llm": llm.build,
}

STRATEGY_NAMES: Final[tuple[str, ...]] = tuple(_REGISTRY)


def get_strategy(name: str, params: Mapping[str, object], *, seed: int = 0) -> Strategy:
    """Build the named strategy with validated params; ConfigError if either is wrong."""
    builder = _REGISTRY.get(name) if isinstance(name, str) else None
    if builder is None:
        line = f"trading.strategy: must be one of {', '.join(STRATEGY_NAMES)}, got {name!r}"
        raise ConfigError(line)
    return builder(params, seed)


__all__ = [
    "FLAT",
    "STRATEGY_NAMES",
    "Action",
    "MarketSnapshot",
    "PositionView",
    "RiskLimits",
    "Signal",
    "Strategy",
    "attached",
    "get_strategy",
]
