"""The `reelgen` command: run the platform, manage it, and use it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from reelgen.cli import client
from reelgen.domain.jobs import Tier

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Reelgen: text to video.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.command("generate")(client.generate)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Overrides REELGEN_DATA_DIR.", show_default=False)
]


def _settings(data_dir: Path | None):
    from reelgen.settings import Settings

    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=0, help="In-process workers.")] = 1,
    data_dir: DataDir = None,
) -> None:
    """Run API, controller and workers in one process (SQLite, local storage)."""
    from reelgen.embedded import serve as run_serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_serve(_settings(data_dir), host=host, port=port, workers=workers)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    data_dir: DataDir = None,
) -> None:
    """Apply migrations to REELGEN_DATABASE_URL."""
    from reelgen.store.database import current_revision, make_engine, upgrade

    settings = _settings(data_dir)
    engine = make_engine(settings.resolved_database_url())
    upgrade(engine, revision)
    typer.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option(help="User name; created if new.")],
    tier: Annotated[Tier, typer.Option(help="Tier of the user.")] = Tier.FREE,
    data_dir: DataDir = None,
) -> None:
    """Create an API key for a user and print it (shown only once)."""
    from reelgen.platform import build_platform
    from reelgen.services.accounts import create_key
    from reelgen.store.database import upgrade

    settings = _settings(data_dir)
    platform = build_platform(settings)
    if settings.is_embedded_database:
        upgrade(platform.db.engine)
    typer.echo(create_key(platform, user_name=user, tier=tier))
    platform.close()
