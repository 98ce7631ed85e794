"""Strategies on synthetic series: entries, exits, holds, params validation, purity."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aster_agents.errors import ConfigError
from aster_agents.models import Kline
from aster_agents.strategies import (
    FLAT,
    STRATEGY_NAMES,
    Action,
    MarketSnapshot,
    PositionView,
    Signal,
    Strategy,
    get_strategy,
)
from aster_agents.strategies import indicators as ind

MINUTE = 60_000
# llm needs base_url and model and calls an endpoint: tests/test_llm_strategy.py covers it
PURE_STRATEGIES = tuple(n for n in STRATEGY_NAMES if n != "llm")
RULE_STRATEGIES = tuple(n for n in PURE_STRATEGIES if n != "random")


# --- synthetic series -------------------------------------------------------------------------


def make_klines(closes: Sequence[float], volumes: Sequence[float] | None = None) -> list[Kline]:
    """Candles opening at the previous close, with a 0.01% wick either side."""
    out: list[Kline] = []
    prev = closes[0]
    for i, c in enumerate(closes):
        o = prev
        hi, lo = max(o, c) * 1.0001, min(o, c) * 0.9999
        vol = 100.0 if volumes is None else volumes[i]
        out.append(
            Kline(
                open_time=i * MINUTE,
                open=Decimal(f"{o:.4f}"),
                high=Decimal(f"{hi:.4f}"),
                low=Decimal(f"{lo:.4f}"),
                close=Decimal(f"{c:.4f}"),
                volume=Decimal(f"{vol:.3f}"),
                close_time=i * MINUTE + MINUTE - 1,
            )
        )
        prev = c
    return out


def trend_path(n: int, step: float, start: float = 100.0) -> list[float]:
    """A steady geometric trend: each close ``step`` (a fraction) from the previous one."""
    return [start * (1.0 + step) ** i for i in range(n)]


def noisy_range(n: int, seed: int = 7, start: float = 100.0) -> list[float]:
    """A flat, mean-reverting range: +-0.15% around ``start`` with a little noise."""
    rng = random.Random(seed)
    return [
        start * (1.0 + 0.0012 * math.sin(i * 1.3) + rng.uniform(-0.0003, 0.0003)) for i in range(n)
    ]


def up(n: int = 200) -> list[float]:
    """Steady up-trend, +0.2% per candle."""
    return trend_path(n, 0.002)


def down(n: int = 200) -> list[float]:
    """Steady down-trend, -0.2% per candle."""
    return trend_path(n, -0.002)


def snap(closes: Sequence[float], volumes: Sequence[float] | None = None) -> MarketSnapshot:
    """A snapshot of BTCUSDT 1m candles for ``closes``."""
    klines = tuple(make_klines(closes, volumes))
    last = klines[-1] if klines else None
    mark = last.close if last else Decimal(100)
    return MarketSnapshot("BTCUSDT", "1m", klines, mark, len(klines) * MINUTE)


def long_at(price: float) -> PositionView:
    """A long position of 1 entered at ``price``."""
    return PositionView(Decimal(1), Decimal(f"{price:.4f}"), 0)


def short_at(price: float) -> PositionView:
    """A short position of 1 entered at ``price``."""
    return PositionView(Decimal(-1), Decimal(f"{price:.4f}"), 0)


def decide(
    name: str, closes: Sequence[float], position: PositionView = FLAT, **params: object
) -> Signal:
    """Build ``name`` with ``params`` and decide on ``closes``."""
    strategy = get_strategy(name, params)
    return strategy.decide(snap(closes), position)


def assert_action(signal: Signal, action: Action) -> None:
    """The signal has ``action``, a confidence in [0, 1] and a non-empty reason."""
    assert signal.action == action, signal
    assert 0.0 <= signal.confidence <= 1.0
    assert signal.reason


RANGE = noisy_range(200)
SPIKE_DOWN = [*RANGE, RANGE[-1] * 0.97]
SPIKE_UP = [*RANGE, RANGE[-1] * 1.03]
BREAK_UP = [*RANGE, RANGE[-1] * 1.01]
BREAK_DOWN = [*RANGE, RANGE[-1] * 0.99]
UP_PULLBACK = [*up(), up()[-1] * 0.994]
DOWN_POP = [*down(), down()[-1] * 1.006]
UP_DIP = [*up(), *(up()[-1] * 0.99**k for k in range(1, 4))]
DOWN_RALLY = [*down(), *(down()[-1] * 1.01**k for k in range(1, 4))]


# --- entries and holds, flat --------------------------------------------------------------------

ENTRY_CASES = [
    ("trend", up(), Action.LONG),
    ("trend", down(), Action.SHORT),
    ("trend", RANGE, Action.HOLD),
    ("trend", UP_DIP, Action.HOLD),
    ("mean_reversion", SPIKE_DOWN, Action.LONG),
    ("mean_reversion", SPIKE_UP, Action.SHORT),
    ("mean_reversion", RANGE, Action.HOLD),
    ("mean_reversion", up(), Action.HOLD),
    ("mean_reversion", down(), Action.HOLD),
    ("breakout", BREAK_UP, Action.LONG),
    ("breakout", BREAK_DOWN, Action.SHORT),
    ("breakout", RANGE, Action.HOLD),
    ("breakout", UP_PULLBACK, Action.HOLD),
    ("momentum", up(), Action.LONG),
    ("momentum", down(), Action.SHORT),
    ("momentum", RANGE, Action.HOLD),
    ("scalper", UP_PULLBACK, Action.LONG),
    ("scalper", DOWN_POP, Action.SHORT),
    ("scalper", up(), Action.HOLD),
    ("scalper", RANGE, Action.HOLD),
    ("scalper", SPIKE_UP, Action.HOLD),
    ("swing", UP_DIP, Action.LONG),
    ("swing", DOWN_RALLY, Action.SHORT),
    ("swing", up(), Action.HOLD),
    ("swing", RANGE, Action.HOLD),
    ("conservative", up(), Action.LONG),
    ("conservative", down(), Action.SHORT),
    ("conservative", RANGE, Action.HOLD),
    ("conservative", BREAK_UP, Action.HOLD),
    ("aggressive", up(), Action.LONG),
    ("aggressive", down(), Action.SHORT),
    ("aggressive", BREAK_UP, Action.LONG),
    ("aggressive", BREAK_DOWN, Action.SHORT),
    ("aggressive", RANGE, Action.HOLD),
]


@pytest.mark.parametrize(("name", "closes", "expected"), ENTRY_CASES)
def test_entry_when_flat(name: str, closes: list[float], expected: Action) -> None:
    """Flat, each strategy goes long, short or stays out on the synthetic series it targets."""
    assert_action(decide(name, closes), expected)


def test_strong_clean_signals_clear_the_usual_min_confidence() -> None:
    """A textbook setup gives confidence >= 0.7 (the example min_confidence)."""
    assert decide("trend", up()).confidence >= 0.7
    assert decide("momentum", down()).confidence >= 0.7
    assert decide("mean_reversion", SPIKE_DOWN).confidence >= 0.7
    assert decide("breakout", BREAK_UP).confidence >= 0.7
    assert decide("swing", UP_DIP).confidence >= 0.7


def test_trend_reason_names_the_emas_and_spread() -> None:
    """The trend reason reads like 'ema9 above ema21 (+1.19%), ...'."""
    reason = decide("trend", up()).reason
    assert reason.startswith("ema9 above ema21 (+")
    assert "%" in reason


def test_breakout_volume_filter_refuses_thin_breaks() -> None:
    """A channel break on below-average volume is not taken."""
    closes = BREAK_UP
    thin = [100.0] * (len(closes) - 1) + [40.0]
    strategy = get_strategy("breakout", {})
    signal = strategy.decide(snap(closes, thin), FLAT)
    assert_action(signal, Action.HOLD)
    assert "volume" in signal.reason


def test_breakout_atr_filter_refuses_marginal_breaks() -> None:
    """A break smaller than atr_buffer ATRs is not taken."""
    signal = decide("breakout", BREAK_UP, atr_buffer=9.0)
    assert_action(signal, Action.HOLD)
    assert "ATR" in signal.reason


def test_conservative_needs_momentum_agreement() -> None:
    """A clean trend without enough momentum (high roc_threshold) is held, not entered."""
    signal = decide("conservative", up(), roc_threshold=0.4)
    assert_action(signal, Action.HOLD)
    assert "momentum" in signal.reason


def test_conservative_is_less_confident_than_trend_on_a_weak_setup() -> None:
    """On a one-candle spike the conservative profile stays below trend's confidence."""
    assert decide("conservative", SPIKE_UP).confidence < decide("trend", SPIKE_UP).confidence


# --- exits, in a position ---------------------------------------------------------------------

EXIT_CASES = [
    ("trend", down(), long_at(70.0), Action.CLOSE),
    ("trend", up(), long_at(140.0), Action.HOLD),
    ("trend", up(), short_at(140.0), Action.CLOSE),
    ("trend", down(), short_at(70.0), Action.HOLD),
    ("mean_reversion", [*SPIKE_DOWN, 100.1], long_at(97.0), Action.CLOSE),
    ("mean_reversion", SPIKE_DOWN, long_at(97.0), Action.HOLD),
    ("mean_reversion", [*SPIKE_UP, 99.9], short_at(103.0), Action.CLOSE),
    ("mean_reversion", SPIKE_UP, short_at(103.0), Action.HOLD),
    ("breakout", BREAK_DOWN, long_at(100.0), Action.CLOSE),
    ("breakout", BREAK_UP, long_at(100.0), Action.HOLD),
    ("breakout", BREAK_UP, short_at(100.0), Action.CLOSE),
    ("breakout", BREAK_DOWN, short_at(100.0), Action.HOLD),
    ("momentum", down(), long_at(70.0), Action.CLOSE),
    ("momentum", up(), long_at(140.0), Action.HOLD),
    ("momentum", up(), short_at(140.0), Action.CLOSE),
    ("scalper", up(), long_at(up()[-1] / 1.004), Action.CLOSE),
    ("scalper", up(), long_at(up()[-1] * 1.003), Action.CLOSE),
    ("scalper", up(), long_at(up()[-1]), Action.HOLD),
    ("scalper", down(), long_at(down()[-1]), Action.CLOSE),
    ("scalper", down(), short_at(down()[-1] * 1.004), Action.CLOSE),
    ("scalper", down(), short_at(down()[-1]), Action.HOLD),
    ("swing", up(), long_at(140.0), Action.CLOSE),
    ("swing", UP_DIP, long_at(140.0), Action.HOLD),
    ("swing", down(), long_at(70.0), Action.CLOSE),
    ("swing", down(), short_at(70.0), Action.CLOSE),
    ("swing", DOWN_RALLY, short_at(70.0), Action.HOLD),
    ("conservative", down(), long_at(70.0), Action.CLOSE),
    ("conservative", UP_DIP, long_at(140.0), Action.CLOSE),
    ("conservative", up(), long_at(140.0), Action.HOLD),
    ("conservative", up(), short_at(140.0), Action.CLOSE),
    ("aggressive", UP_DIP, long_at(140.0), Action.CLOSE),
    ("aggressive", up(), long_at(140.0), Action.HOLD),
    ("aggressive", DOWN_RALLY, short_at(70.0), Action.CLOSE),
]


@pytest.mark.parametrize(("name", "closes", "position", "expected"), EXIT_CASES)
def test_exit_in_position(
    name: str, closes: list[float], position: PositionView, expected: Action
) -> None:
    """In a position, each strategy closes when its exit condition holds and holds otherwise."""
    signal = decide(name, closes, position)
    assert_action(signal, expected)
    if expected == Action.CLOSE:
        assert signal.confidence == 1.0


def test_in_position_never_opens_more() -> None:
    """In a position a rule strategy only ever returns CLOSE or HOLD."""
    for name in RULE_STRATEGIES:
        for closes in (up(), down(), RANGE, SPIKE_UP, SPIKE_DOWN, UP_DIP):
            for position in (long_at(100.0), short_at(100.0)):
                assert decide(name, closes, position).action in (Action.CLOSE, Action.HOLD)


def test_mean_reversion_exit_reason_says_mean_reached() -> None:
    """The mean-reversion exit explains that the mean was reached."""
    signal = decide("mean_reversion", [*SPIKE_DOWN, 100.1], long_at(97.0))
    assert "mean reached" in signal.reason


# --- history and robustness -------------------------------------------------------------------


@pytest.mark.parametrize("name", PURE_STRATEGIES)
def test_too_few_klines_holds_with_reason(name: str) -> None:
    """With fewer than min_klines candles decide() holds and says how many it needs."""
    strategy = get_strategy(name, {})
    assert strategy.min_klines >= 1
    for n in (0, strategy.min_klines - 1):
        closes = up(n)
        market = snap(closes) if closes else MarketSnapshot("BTCUSDT", "1m", (), Decimal(1), 0)
        signal = strategy.decide(market, FLAT)
        assert_action(signal, Action.HOLD)
        assert f"need {strategy.min_klines}" in signal.reason


@pytest.mark.parametrize("name", RULE_STRATEGIES)
def test_exactly_min_klines_is_enough(name: str) -> None:
    """With exactly min_klines candles the strategy evaluates its rules."""
    strategy = get_strategy(name, {})
    signal = strategy.decide(snap(up(strategy.min_klines)), FLAT)
    assert "need" not in signal.reason


@pytest.mark.parametrize("name", RULE_STRATEGIES)
def test_zero_prices_hold(name: str) -> None:
    """A series with a zero price holds instead of dividing by zero."""
    closes = [*up(), 0.0]
    signal = decide(name, closes)
    assert_action(signal, Action.HOLD)


def test_flat_series_holds() -> None:
    """A perfectly flat series gives no entry for any rule strategy."""
    for name in RULE_STRATEGIES:
        assert_action(decide(name, [100.0] * 200), Action.HOLD)


closes_strategy = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
        st.floats(min_value=99.0, max_value=101.0),
    ),
    max_size=130,
)


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(PURE_STRATEGIES),
    closes=closes_strategy,
    qty=st.sampled_from([-1, 0, 1]),
    entry=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**63),
)
def test_any_series_gives_valid_signal(
    name: str, closes: list[float], qty: int, entry: float, seed: int
) -> None:
    """For any series and position decide() never raises and confidence stays in [0, 1]."""
    strategy = get_strategy(name, {}, seed=seed)
    market = snap(closes) if closes else MarketSnapshot("X", "1m", (), Decimal(0), 0)
    position = PositionView(Decimal(qty), Decimal(f"{entry:.4f}"), None)
    signal = strategy.decide(market, position)
    assert isinstance(signal.action, Action)
    assert 0.0 <= signal.confidence <= 1.0
    assert signal.reason
    if qty != 0:
        assert signal.action in (Action.CLOSE, Action.HOLD)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(RULE_STRATEGIES),
    prices=st.lists(
        st.tuples(*[st.decimals(min_value=0, max_value=10**9, places=2)] * 4),
        min_size=100,
        max_size=110,
    ),
)
def test_inconsistent_candles_never_raise(
    name: str, prices: list[tuple[Decimal, Decimal, Decimal, Decimal]]
) -> None:
    """Candles whose high/low/open/close disagree still give a valid signal."""
    klines = tuple(
        Kline(i * MINUTE, o, h, lo, c, Decimal(0), i * MINUTE + MINUTE - 1)
        for i, (o, h, lo, c) in enumerate(prices)
    )
    signal = get_strategy(name, {}).decide(MarketSnapshot("X", "1m", klines, Decimal(1), 0), FLAT)
    assert 0.0 <= signal.confidence <= 1.0


# --- params validation ------------------------------------------------------------------------

# name -> (an int or float key, a wrongly-typed value, an out-of-range value)
PARAM_PROBES: dict[str, tuple[str, object, object]] = {
    "trend": ("fast", "nine", 1),
    "mean_reversion": ("width", "wide", 0.0),
    "breakout": ("lookback", 20.5, 100_000),
    "momentum": ("roc_threshold", "0.3%", -0.1),
    "scalper": ("take_profit_pct", None, 5.0),
    "swing": ("pullback_rsi", [40], 60.0),
    "conservative": ("min_efficiency", "high", 1.5),
    "aggressive": ("roc_period", True, 0),
    "random": ("p_enter", "often", 1.5),
}


def test_every_strategy_has_a_param_probe() -> None:
    """The validation probes below cover every registered strategy."""
    assert set(PARAM_PROBES) == set(PURE_STRATEGIES)


def config_error(name: str, params: dict[str, object]) -> ConfigError:
    """The ConfigError raised by get_strategy(name, params)."""
    with pytest.raises(ConfigError) as info:
        get_strategy(name, params)
    return info.value


@pytest.mark.parametrize("name", PURE_STRATEGIES)
def test_unknown_param_key_is_refused(name: str) -> None:
    """An unknown key is named with its path and the valid keys are listed."""
    err = config_error(name, {"bogus": 1})
    assert len(err.problems) == 1
    line = err.problems[0]
    assert line.startswith("trading.params.bogus: unknown key (valid keys: ")
    assert PARAM_PROBES[name][0] in line
    assert line.endswith("got 1")
    assert line in str(err)


@pytest.mark.parametrize("name", PURE_STRATEGIES)
def test_wrong_param_type_is_refused(name: str) -> None:
    """A wrongly-typed value is refused (no coercion) with the key path and the value."""
    key, bad, _ = PARAM_PROBES[name]
    err = config_error(name, {key: bad})
    assert err.problems[0].startswith(f"trading.params.{key}: must be a valid ")
    assert err.problems[0].endswith(f"got {bad!r}")


@pytest.mark.parametrize("name", PURE_STRATEGIES)
def test_out_of_range_param_is_refused(name: str) -> None:
    """An out-of-range value is refused with the bound, the key path and the value."""
    key, _, bad = PARAM_PROBES[name]
    err = config_error(name, {key: bad})
    line = err.problems[0]
    assert line.startswith(f"trading.params.{key}: must be ")
    assert any(word in line for word in ("greater", "less"))
    assert line.endswith(f"got {bad!r}")


def test_all_problems_are_reported_at_once() -> None:
    """Several bad keys give one problem line each."""
    err = config_error("trend", {"fast": "x", "min_efficiency": 2.0, "nope": 0})
    paths = sorted(line.split(":")[0] for line in err.problems)
    expected = ["trading.params.fast", "trading.params.min_efficiency", "trading.params.nope"]
    assert paths == expected


def test_cross_field_constraint_names_the_key() -> None:
    """slow <= fast is reported on trading.params.slow."""
    err = config_error("trend", {"fast": 30, "slow": 21})
    assert err.problems == ["trading.params.slow: must be greater than fast (30), got 21"]


def test_breakout_exit_channel_not_longer_than_entry() -> None:
    """exit_lookback > lookback is refused on its own key."""
    err = config_error("breakout", {"lookback": 10, "exit_lookback": 20})
    assert err.problems[0].startswith("trading.params.exit_lookback: must be at most lookback")


def test_int_is_accepted_for_float_params() -> None:
    """YAML integers are fine for float params (width: 2)."""
    assert get_strategy("mean_reversion", {"width": 2}).min_klines > 0


def test_valid_params_change_behaviour() -> None:
    """Params are applied: a longer slow EMA needs more history."""
    assert get_strategy("trend", {"slow": 50}).min_klines > get_strategy("trend", {}).min_klines


def test_params_must_be_a_mapping() -> None:
    """A non-mapping params value is refused on trading.params."""
    with pytest.raises(ConfigError, match=r"^trading\.params: must be a mapping"):
        get_strategy("trend", [1, 2])  # type: ignore[arg-type]


def test_unknown_strategy_lists_valid_names() -> None:
    """An unknown strategy name is reported on trading.strategy with the valid names."""
    err = config_error("oracle", {})
    assert err.problems[0].startswith("trading.strategy: must be one of ")
    for name in STRATEGY_NAMES:
        assert name in str(err)
    assert err.problems[0].endswith("got 'oracle'")


def test_registry_names_and_protocol() -> None:
    """Every registered name builds a Strategy whose name matches."""
    expected = {"trend", "mean_reversion", "breakout", "momentum", "scalper", "swing"}
    expected |= {"conservative", "aggressive", "random", "llm"}
    assert set(STRATEGY_NAMES) == expected
    for name in PURE_STRATEGIES:
        strategy: Strategy = get_strategy(name, {})
        assert strategy.name == name


# --- random -----------------------------------------------------------------------------------


def random_signals(
    params: dict[str, object], position: PositionView = FLAT, seed: int = 1, symbol: str = "BTCUSDT"
) -> list[Signal]:
    """The random strategy's signals on each of 300 successive candles."""
    strategy = get_strategy("random", params, seed=seed)
    klines = tuple(make_klines(RANGE + RANGE[:100]))
    return [
        strategy.decide(MarketSnapshot(symbol, "1m", klines[: i + 1], Decimal(100), 0), position)
        for i in range(len(klines))
    ]


def test_random_is_deterministic() -> None:
    """Same seed, symbol and candles give the same signals, from fresh instances."""
    assert random_signals({}) == random_signals({})


def test_random_depends_on_seed_and_symbol() -> None:
    """Another seed or another symbol gives another sequence."""
    base = random_signals({})
    assert random_signals({}, seed=2) != base
    assert random_signals({}, symbol="ETHUSDT") != base


def test_random_entry_rate_and_sides() -> None:
    """With the default p_enter about 30% of candles enter, on both sides, all at confidence 1."""
    signals = random_signals({})
    entries = [s for s in signals if s.action in (Action.LONG, Action.SHORT)]
    assert 0.2 < len(entries) / len(signals) < 0.4
    assert {s.action for s in entries} == {Action.LONG, Action.SHORT}
    assert all(s.confidence == 1.0 for s in signals)


def test_random_p_enter_extremes() -> None:
    """p_enter=0 never enters; p_enter=1 always enters."""
    assert {s.action for s in random_signals({"p_enter": 0})} == {Action.HOLD}
    assert {s.action for s in random_signals({"p_enter": 1})} == {Action.LONG, Action.SHORT}


def test_random_p_exit_extremes() -> None:
    """In a position p_exit=1 always closes and p_exit=0 never does."""
    position = long_at(100.0)
    assert {s.action for s in random_signals({"p_exit": 1}, position)} == {Action.CLOSE}
    assert {s.action for s in random_signals({"p_exit": 0.0}, short_at(1.0))} == {Action.HOLD}


def test_random_leaves_global_random_state_alone() -> None:
    """The random strategy neither reads nor advances the global random module."""
    random.seed(1234)
    state = random.getstate()
    random_signals({})
    assert random.getstate() == state


# --- indicators -------------------------------------------------------------------------------


def test_indicators_on_known_values() -> None:
    """Indicators match hand-computed values on tiny series."""
    assert ind.sma([1.0, 2.0, 3.0, 4.0], 2) == 3.5
    assert ind.ema([2.0, 2.0, 2.0], 3) == 2.0
    assert ind.ema([0.0, 4.0], 3) == 2.0
    assert ind.rsi([1.0, 2.0, 3.0], 2) == 100.0
    assert ind.rsi([3.0, 2.0, 1.0], 2) == 0.0
    assert ind.rsi([1.0, 1.0, 1.0], 2) == 50.0
    assert ind.rsi([1.0, 2.0, 1.0], 2) == 50.0
    assert ind.roc([100.0, 50.0, 110.0], 2) == pytest.approx(0.1)
    assert ind.efficiency_ratio([1.0, 2.0, 1.0, 2.0], 3) == pytest.approx(1 / 3)
    band = ind.bollinger([1.0, 3.0], 2, 2.0)
    assert (band.lower, band.middle, band.upper) == (0.0, 2.0, 4.0)
    chan = ind.donchian([5.0, 7.0, 6.0], [1.0, 2.0, 3.0], 2)
    assert (chan.lower, chan.upper) == (2.0, 7.0)
    assert ind.atr([2.0, 3.0], [1.0, 1.0], [1.5, 2.5], 2) == pytest.approx(1.5)
    assert ind.ramp(5.0, 0.0, 10.0) == 0.5


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(RULE_STRATEGIES),
    returns=st.lists(st.floats(min_value=-0.05, max_value=0.05), min_size=100, max_size=130),
    qty=st.sampled_from([-1, 0, 1]),
)
def test_any_random_walk_gives_valid_signal(name: str, returns: list[float], qty: int) -> None:
    """On random walks long enough for every rule, signals stay valid in every position."""
    closes = [100.0]
    for r in returns:
        closes.append(closes[-1] * (1.0 + r))
    position = PositionView(Decimal(qty), Decimal(100), None)
    signal = decide(name, closes, position)
    assert 0.0 <= signal.confidence <= 1.0
    assert "need" not in signal.reason


def test_a_moving_window_gives_the_series_and_signals_of_a_fresh_one() -> None:
    """One strategy fed a window moving candle by candle decides as a fresh one on each window."""
    from aster_agents.strategies.base import Series

    rng = random.Random(7)
    closes = [100.0]
    for _ in range(400):
        closes.append(closes[-1] * (1 + rng.gauss(0, 0.004)))
    volumes = [rng.choice([0.0, 50.0, 100.0, 250.0]) for _ in closes]
    klines = make_klines(closes, volumes)
    inf = dataclasses.replace(klines[150], volume=Decimal("Infinity"))
    klines[150] = inf  # a non-finite volume zeroes all volumes while it is in the window
    for name in RULE_STRATEGIES:
        kept = get_strategy(name, {})
        width = 120
        for end in range(2, len(klines) + 1):
            window = tuple(klines[max(0, end - width) : end])
            market = MarketSnapshot("BTCUSDT", "1m", window, window[-1].close, end * MINUTE)
            assert kept.decide(market, FLAT) == get_strategy(name, {}).decide(market, FLAT)
            assert kept._series(window) == Series.from_klines(window)  # type: ignore[attr-defined]
