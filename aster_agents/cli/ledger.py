"""``aster-agent ledger info|migrate``: which ledger backend is in use; SQLite -> PostgreSQL."""

from __future__ import annotations

import typer

from aster_agents.cli.common import console, emit_json, state

ledger_app = typer.Typer(help="The ledger's backend: info, migrate to PostgreSQL.")


@ledger_app.command("info")
def info(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="One JSON document."),
) -> None:
    """Which backend (sqlite or postgresql), where (password masked), schema version."""
    from aster_agents.ledger.transfer import info as ledger_info

    cli = state(ctx)
    fleet = cli.fleet()
    found = ledger_info(fleet.state_dir(cli.state_dir), fleet.ledger_url)
    doc = {
        "backend": found.backend,
        "where": found.where,
        "schema_version": found.schema_version,
        "known_schema_version": found.known_version,
    }
    if as_json:
        emit_json(doc)
        return
    out = console()
    for key, value in doc.items():
        out.print(f"{key:<21} {value}", highlight=False, markup=False)


@ledger_app.command("migrate")
def migrate(
    ctx: typer.Context,
    to: str = typer.Option(
        ..., "--to", help="postgresql://user@host:port/db (password from PGPASSWORD)"
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON document."),
) -> None:
    """Copy this state dir's SQLite ledger, history included, into an empty PostgreSQL one.

    Verifies the row counts and every account's books before committing; on any
    difference nothing is written. Then set ledger.url (or ASTER_AGENTS_LEDGER_URL).
    """
    from aster_agents.ledger.transfer import copy_to_postgres

    cli = state(ctx)
    report = copy_to_postgres(cli.resolved_state_dir(), to)
    if as_json:
        emit_json({"target": report.target, "rows": report.rows, "books": report.books})
        return
    out = console()
    total = sum(report.rows.values())
    out.print(f"copied {total} rows into {report.target}", highlight=False, markup=False)
    for table, n in report.rows.items():
        out.print(f"  {table:<12} {n}", highlight=False, markup=False)
    for user, equity in report.books.items():
        out.print(f"  books {user}: {equity} (equal)", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")
