"""``aster-agent sim``: run the simulated Aster exchange in the foreground."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from aster_agents.sim.server import SimServer
from aster_agents.config.starter import SIM_DEFAULT_PORT


def _error_rates(values: list[str]) -> dict[int, float]:
    rates: dict[int, float] = {}
    for value in values:
        status, sep, rate = value.partition("=")
        try:
            rates[int(status)] = float(rate)
        except ValueError:
            raise typer.BadParameter(
                f"--error-rate {value!r}: expected STATUS=RATE, e.g. 503=0.05"
            ) from None
        if not sep:
            raise typer.BadParameter(f"--error-rate {value!r}: expected STATUS=RATE")
    return rates


def sim(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Listen address (loopback unless --allow-remote)."),
    port: int = typer.Option(
        SIM_DEFAULT_PORT, help="Port; 0 picks a free one. The base URL is stdout's first line."
    ),
    seed: int = typer.Option(1, help="Market generator seed (same seed, same prices)."),
    speed: float = typer.Option(
        1.0, help="Market time per wall-clock second (nonces use the wall clock)."
    ),
    accounts: Annotated[
        Path | None,
        typer.Option("--accounts", help="YAML list of {user, signers, balance_usdt, deposited}."),
    ] = None,
    config_dir: Annotated[
        Path | None, typer.Option("--config-dir", help="Register every agent in this agents.d.")
    ] = None,
    balance: str = typer.Option(
        "10000", "--default-balance", help="USDT for --config-dir accounts."
    ),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback --host."),
    chain_id: int = typer.Option(1666, help="EIP-712 chain id (1666 mainnet, 714 testnet)."),
    decode_fallback: bool = typer.Option(
        True,
        "--decode-fallback/--no-decode-fallback",
        help="Also accept signatures over the URL-decoded string.",
    ),
    weight_limit: int = typer.Option(2400, help="Request weight per IP per window."),
    weight_window: float = typer.Option(60.0, help="Weight window in seconds."),
    orders_10s: int = typer.Option(300, "--orders-10s", help="Orders per account per 10 s."),
    orders_1m: int = typer.Option(1200, "--orders-1m", help="Orders per account per minute."),
    ban_seconds: float = typer.Option(120.0, help="First 418 ban length; doubles on repeat."),
    error_rate: Annotated[
        list[str] | None, typer.Option("--error-rate", help="STATUS=RATE, repeatable.")
    ] = None,
    latency_ms: float = typer.Option(0.0, help="Added latency per request (ms)."),
    latency_jitter_ms: float = typer.Option(0.0, help="Random extra latency up to this (ms)."),
    unknown_outcome_rate: float = typer.Option(0.0, help="Share of accepted orders answered 503."),
    drop_rate: float = typer.Option(0.0, help="Share of requests whose connection is dropped."),
    fault_seed: int = typer.Option(0, help="Seed for fault injection."),
    start_time_ms: int | None = typer.Option(
        None, help="Market start time (epoch ms); default now. Fix it for reproducible runs."
    ),
    nonce_window_s: float = typer.Option(
        60.0,
        "--nonce-window-s",
        min=0.001,
        help="How far a nonce may be from the clock (s). The exchange's is 60; shorter is "
        "for fast tests only.",
    ),
    funding_interval: float = typer.Option(
        8 * 3600.0,
        "--funding-interval",
        min=0.0,
        help="Market seconds between funding settlements (seeded rates); 0 turns funding off.",
    ),
    shock: Annotated[
        list[str] | None,
        typer.Option(
            "--shock",
            help="SYMBOL:PCT@SECONDS, repeatable: move SYMBOL's mark by PCT percent (a crash "
            "when negative) SECONDS after the start, e.g. BTCUSDT:-30@20.",
        ),
    ] = None,
    insurance_fund: str = typer.Option(
        "1000000",
        "--insurance-fund",
        help="USDT per symbol that covers liquidation losses; 0 makes every deficit an ADL.",
    ),
    market: str = typer.Option(
        "synthetic",
        "--market",
        help="Price source: synthetic (seeded), replay (--data) or live (--upstream).",
    ),
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Recording directory for --market replay (see README)."),
    ] = None,
    upstream: str = typer.Option(
        "https://fapi.asterdex.com",
        "--upstream",
        help="The exchange --market live mirrors (public data only; orders stay local).",
    ),
    lockstep: bool = typer.Option(
        False,
        "--lockstep",
        help="Replay only: market time moves from event to event as the --config-dir agents "
        "finish their turns (results equal backtest's; --speed does not apply).",
    ),
) -> None:
    """Run the simulated Aster exchange (Futures V3) until SIGTERM or Ctrl-C."""
    import signal
    import sys
    import threading

    from aster_agents.sim.accounts import accounts_from_config_dir, load_accounts_file
    from aster_agents.sim.faults import FaultConfig
    from aster_agents.sim.limits import LimitConfig
    from aster_agents.sim.server import Shock, SimConfig, SimServer

    try:
        default_balance = Decimal(balance)
    except ArithmeticError:
        raise typer.BadParameter(f"--default-balance {balance!r}: expected a number") from None
    try:
        fund = Decimal(insurance_fund)
        shocks = tuple(Shock.parse(s) for s in shock or [])
    except ArithmeticError:
        raise typer.BadParameter(
            f"--insurance-fund {insurance_fund!r}: expected a number"
        ) from None
    except ValueError as exc:
        raise typer.BadParameter(f"--shock {exc}") from None
    registered = load_accounts_file(accounts, default_balance) if accounts else []
    chosen_dir = config_dir or getattr(ctx.obj, "config_dir", None)
    if chosen_dir is not None:
        registered += accounts_from_config_dir(Path(chosen_dir), default_balance)
    try:
        faults = FaultConfig(
            _error_rates(error_rate or []),
            latency_ms,
            latency_jitter_ms,
            unknown_outcome_rate,
            drop_rate,
            fault_seed,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if market not in ("synthetic", "replay", "live"):
        raise typer.BadParameter(f"--market {market!r}: expected synthetic, replay or live")
    if (market == "replay") != (data is not None):
        raise typer.BadParameter("--data DIR goes with --market replay (and only with it)")
    if lockstep and market != "replay":
        raise typer.BadParameter("--lockstep steps a recording: use it with --market replay")
    turns = _lockstep_agents(Path(chosen_dir) if chosen_dir else None) if lockstep else ()
    limits = LimitConfig(
        weight_limit, weight_window, orders_10s, 10.0, orders_1m, 60.0, ban_seconds
    )
    config = SimConfig(
        host,
        port,
        seed,
        speed,
        tuple(registered),
        faults,
        limits,
        chain_id,
        decode_fallback,
        start_time_ms=start_time_ms,
        allow_remote=allow_remote,
        funding_interval_s=funding_interval,
        nonce_window_s=nonce_window_s,
        shocks=shocks,
        insurance_fund=fund,
        market=market,
        data_dir=data,
        upstream=upstream,
        lockstep=turns,
    )
    server = SimServer(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    url = server.start()
    print(url, flush=True)
    users = ", ".join(a.user for a in registered) or "none (use --accounts or --config-dir)"
    print(f"sim: seed={seed} speed={speed} accounts: {users}", file=sys.stderr, flush=True)
    print(f"sim: market {_describe(server)}", file=sys.stderr, flush=True)
    try:
        server.serve_until(stop)
    finally:
        server.stop()


def _describe(server: SimServer) -> str:
    from aster_agents.sim.sources import ReplayMarket

    m = server.market
    if server.config.market == "live":
        return f"live from {server.config.upstream} (public data; orders matched here)"
    if not isinstance(m, ReplayMarket):
        return "synthetic"
    names = ", ".join(sorted(m.recording.symbols))
    text = f"replay of {m.recording.path} ({names}), shifted by {m.offset_ms // 86_400_000} days"
    if server.app.lockstep is not None:
        text += f"; lockstep with {', '.join(server.app.lockstep.agents)} (waiting for them)"
    return text


def _lockstep_agents(config_dir: Path | None) -> tuple[str, ...]:
    """The enabled agents of ``config_dir``: the ones a lockstep replay waits for."""
    from aster_agents.config.schema import load_fleet

    if config_dir is None:
        raise typer.BadParameter("--lockstep waits for the agents of --config-dir: give one")
    agents = tuple(a.id for a in load_fleet(config_dir, check_strategies=False).enabled_agents)
    if not agents:
        raise typer.BadParameter(f"--lockstep: {config_dir} has no enabled agent to wait for")
    return agents


def register(app: typer.Typer) -> None:
    """Add the ``sim`` command to ``app``."""
    app.command("sim")(sim)
