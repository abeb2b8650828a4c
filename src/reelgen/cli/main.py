"""The `reelgen` command: run the platform, manage it, and use it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from reelgen.cli import client, provenance, safety, sim
from reelgen.domain.jobs import Tier

if TYPE_CHECKING:
    from reelgen.settings import Settings
from reelgen.observability.logging import configure as configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Reelgen: text to video.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(safety.app, name="safety")
app.add_typer(provenance.app, name="provenance")
app.command("generate")(client.generate)
app.command("sim")(sim.sim)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Overrides REELGEN_DATA_DIR.", show_default=False)
]


def _settings(data_dir: Path | None) -> Settings:
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

    configure_logging("serve")
    run_serve(_settings(data_dir), host=host, port=port, workers=workers)


MetricsPort = Annotated[
    int | None, typer.Option(help="Serve Prometheus /metrics on this port.", show_default=False)
]


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    data_dir: DataDir = None,
) -> None:
    """Run one stateless API replica (PostgreSQL fleet; run `reelgen db upgrade` first)."""
    from reelgen.fleet import run_api

    configure_logging("api")
    run_api(_settings(data_dir), host=host, port=port)


@app.command()
def controller(metrics_port: MetricsPort = None, data_dir: DataDir = None) -> None:
    """Run a controller; one leads (advisory lock), the others stand by."""
    from reelgen.fleet import run_controller

    configure_logging("controller")
    run_controller(_settings(data_dir), metrics_port=metrics_port)


@app.command()
def worker(
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="Model to serve; repeat it to serve several (the first starts on the device, "
            "the others wait in host memory).",
            show_default=False,
        ),
    ] = None,
    model_path: Annotated[
        list[Path] | None,
        typer.Option(
            help="Its weights: a local diffusers pipeline directory; with several models, one "
            "per --model, in the same order.",
            show_default=False,
        ),
    ] = None,
    gpu: Annotated[str | None, typer.Option(help="Accelerator id (CUDA_VISIBLE_DEVICES).")] = None,
    metrics_port: MetricsPort = None,
    data_dir: DataDir = None,
) -> None:
    """Run one worker (one per accelerator); SIGTERM drains it."""
    from reelgen.fleet import run_worker

    settings = _settings(data_dir)
    names = model or [settings.default_model]
    paths = model_path or []
    if len(set(names)) != len(names):
        raise typer.BadParameter("a model is named twice", param_hint="--model")
    if paths and len(paths) != len(names):
        raise typer.BadParameter(
            f"{len(paths)} paths for {len(names)} models: give one per --model, in order",
            param_hint="--model-path",
        )
    for path in paths:
        if not path.is_dir():
            raise typer.BadParameter(f"{path} is not a directory", param_hint="--model-path")
    from reelgen.models.registry import needs_weights

    weighted = [name for name in names if needs_weights(name, settings)]
    if len(weighted) > 1 and not paths:
        raise typer.BadParameter(
            f"{', '.join(weighted)} each need their weights: give one --model-path per --model",
            param_hint="--model-path",
        )
    chosen: list[Path | None] = list(paths) or [None] * len(names)
    pairs = list(zip(names, chosen, strict=True))
    configure_logging("worker")  # after the checks: a refusal only prints its message
    run_worker(settings, models=pairs, gpu=gpu, metrics_port=metrics_port)


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
    tier: Annotated[
        Tier | None,
        typer.Option(help="Tier of the user; a new user starts free, an existing one keeps its."),
    ] = None,
    batch: Annotated[
        bool, typer.Option(help="Whether the key's requests may ask for service_tier=batch.")
    ] = True,
    admin: Annotated[
        bool, typer.Option("--admin", help="An admin key: may also review held jobs.")
    ] = False,
    likeness_consent: Annotated[
        bool,
        typer.Option(
            "--likeness-consent",
            help="Consent of the real people this key's users depict is on record: "
            "photoreal faces and likenesses are allowed (harmful contexts never are).",
        ),
    ] = False,
    age_verified: Annotated[
        bool,
        typer.Option(
            "--age-verified",
            help="The key's users are verified adults: adult content the deployment allows "
            "(REELGEN_SAFETY_BLOCK_SEXUAL=false) is allowed for them, and for nobody else.",
        ),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create an API key for a user and print it (shown only once)."""
    from reelgen.platform import build_api
    from reelgen.services.accounts import create_key
    from reelgen.store.database import upgrade

    settings = _settings(data_dir)
    platform = build_api(settings)
    if settings.is_embedded_database:
        upgrade(platform.db.engine)
    from reelgen.domain.errors import ReelgenError

    try:
        typer.echo(
            create_key(
                platform,
                user_name=user,
                tier=tier,
                allow_batch=batch,
                admin=admin,
                likeness_consent=likeness_consent,
                age_verified=age_verified,
            )
        )
    except ReelgenError as exc:
        raise typer.BadParameter(exc.message, param_hint="--tier") from exc
    finally:
        platform.close()
