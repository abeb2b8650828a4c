"""`reelgen generate`: a small client for a running server, with a progress bar."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True)


def _fail(response: httpx.Response) -> None:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    err.print(f"[red]error {response.status_code}:[/red] {message}")
    raise typer.Exit(1)


def generate(
    prompt: Annotated[str, typer.Argument(help="What the video should show.")],
    seconds: Annotated[int, typer.Option(help="Length, 1 to 20 seconds.")] = 4,
    size: Annotated[str, typer.Option(help="WIDTHxHEIGHT, e.g. 1280x720.")] = "1280x720",
    style: Annotated[str | None, typer.Option(help="cinematic, anime, noir, ...")] = None,
    seed: Annotated[int | None, typer.Option(help="Fixes the output for a prompt.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to write the MP4.")] = None,
    url: Annotated[str, typer.Option(envvar="REELGEN_URL")] = "http://127.0.0.1:8000",
    api_key: Annotated[str, typer.Option(envvar="REELGEN_API_KEY", show_default=False)] = "",
) -> None:
    """Generate a video on a running server and save it."""
    if not api_key:
        err.print("[red]Set REELGEN_API_KEY (or pass --api-key).[/red]")
        raise typer.Exit(2)
    body: dict[str, Any] = {"prompt": prompt, "seconds": str(seconds), "size": size}
    if style:
        body["style"] = style
    if seed is not None:
        body["seed"] = seed
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=url.rstrip("/") + "/v1", headers=headers, timeout=60) as http:
        response = http.post("/videos", json=body)
        if response.status_code != 200:
            _fail(response)
        video = response.json()
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=err,
        ) as bar:
            task = bar.add_task(video["id"], total=100)
            while video["status"] in ("queued", "in_progress"):
                bar.update(
                    task, completed=video["progress"], description=f"{video['id']} {video['stage']}"
                )
                time.sleep(int(response.headers.get("openai-poll-after-ms", "1000")) / 1000)
                response = http.get(f"/videos/{video['id']}")
                if response.status_code != 200:
                    _fail(response)
                video = response.json()
            bar.update(task, completed=video["progress"], description=f"{video['id']} done")
        if video["status"] != "completed":
            err.print(f"[red]{video['id']} {video['status']}:[/red] {video['error']['message']}")
            raise typer.Exit(1)
        target = out or Path(f"{video['id']}.mp4")
        with http.stream("GET", f"/videos/{video['id']}/content", follow_redirects=True) as r:
            if r.status_code != 200:
                r.read()
                _fail(r)
            with open(target, "wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
    typer.echo(str(target))
