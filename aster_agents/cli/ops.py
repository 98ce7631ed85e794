"""``aster-agent metrics`` and ``aster-agent notify``: the fleet's operations processes.

Both read the ledger and supervisord; neither runs inside an agent. See README
"Monitoring and alerts".
"""

from __future__ import annotations

from pathlib import Path

import typer

from aster_agents.cli.common import state


def metrics(
    ctx: typer.Context,
    bind: str = typer.Option("127.0.0.1", "--bind", help="Address to listen on (loopback)."),
    port: int = typer.Option(9464, "--port", min=0, max=65535, help="Port; 0 picks a free one."),
    textfile: Path | None = typer.Option(
        None, "--textfile", help="Write the metrics once to PATH (node_exporter) and exit."
    ),
    allow_remote: bool = typer.Option(
        False, "--allow-remote", help="Allow a --bind address other than loopback."
    ),
    all_hosts: bool = typer.Option(
        False,
        "--all-hosts",
        help="Series of every agent of a shared ledger, not only of this host's agents.",
    ),
) -> None:
    """Serve the fleet's Prometheus metrics on /metrics (the URL is the first stdout line).

    Every scrape reads the config, the ledger (read-only) and supervisord afresh. On a
    ledger shared by several hosts, per-agent series are this host's agents' only.
    """
    from aster_agents.config.view import load_view
    from aster_agents.fleet import metrics as m

    cli = state(ctx)
    fleet = load_view(cli.config_dir)  # fails here, exit 2, on a missing config dir
    reg = m.registry(fleet.config_dir, cli.state_dir, all_hosts=all_hosts)
    if textfile is not None:
        m.write_textfile(reg, textfile)
        return
    m.check_bind(bind, allow_remote)
    raise typer.Exit(m.serve(reg, bind, port))


def notify(ctx: typer.Context) -> None:
    """Deliver fleet alerts and a daily summary through Apprise (``notify:`` in _portfolio.yaml).

    The URLs come from the environment variable named by notify.urls_env; runs until SIGTERM.
    """
    import threading

    from aster_agents.agent.runner import stop_on_signals
    from aster_agents.fleet.notify import run

    cli = state(ctx)
    fleet = cli.fleet()
    stop = threading.Event()
    with stop_on_signals(stop):
        raise typer.Exit(run(fleet, cli.resolved_state_dir(), stop))


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
    app.command("notify")(notify)
