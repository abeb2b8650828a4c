"""`reelgen safety`: evaluate the content checks on a labelled set; train the learned one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from reelgen.safety.learned import Example

app = typer.Typer(no_args_is_help=True, help="Content safety.")


@app.command("eval")
def evaluate_command(
    dataset: Annotated[
        str,
        typer.Argument(
            help="A JSONL file of {text, labels[, lang, kind]}; `builtin` is the shipped "
            "evaluation set."
        ),
    ] = "builtin",
    show_misses: Annotated[int, typer.Option(help="Print up to this many mistakes.")] = 0,
) -> None:
    """Prints precision, recall and false-positive rate per category."""
    from rich.console import Console
    from rich.table import Table

    from reelgen.platform import safety_policy
    from reelgen.safety.evaluate import evaluate
    from reelgen.safety.text import TextModerator
    from reelgen.settings import Settings

    examples = _examples(dataset, builtin="eval")
    moderator = TextModerator(safety_policy(Settings()))
    report = evaluate(moderator, examples)
    console = Console()
    table = Table(title=f"{report.examples} prompts, policy {moderator.version}")
    for column in ("category", "positives", "precision", "recall", "false-positive rate"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for category, c in report.per_category.items():
        table.add_row(
            category.value,
            str(c.tp + c.fn),
            f"{c.precision:.3f}" if c.tp + c.fp else "-",
            f"{c.recall:.3f}" if c.tp + c.fn else "-",
            f"{c.fpr:.3%}",
        )
    console.print(table)
    console.print(
        f"benign prompts flagged: {report.benign_flagged} of {report.benign} "
        f"({report.benign_fpr:.2%})"
    )
    lat = sorted(report.latencies_ms)
    if lat:
        console.print(
            f"check latency: p50 {lat[len(lat) // 2]:.2f} ms, "
            f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.2f} ms"
        )
    for example, what in report.misses[:show_misses]:
        console.print(f"[{example.lang}/{example.kind}] {what}: {example.text}", markup=False)


@app.command("train")
def train_command(
    dataset: Annotated[
        str,
        typer.Argument(help="A JSONL file of {text, labels}; `builtin` is the shipped set."),
    ] = "builtin",
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the weights (default: the package's shipped file)."),
    ] = None,
) -> None:
    """Trains the prompt check's learned classifier (needs the `train` extra)."""
    from importlib import resources

    from reelgen.safety.learned import SHIPPED

    try:
        from reelgen.safety.training import train
    except ImportError as e:  # pragma: no cover - the extra is missing
        raise typer.BadParameter(
            f"training needs scikit-learn: pip install 'reelgen[train]' ({e})"
        ) from e
    examples = _examples(dataset, builtin="train")
    model = train(examples)
    target = out or Path(str(resources.files("reelgen.safety").joinpath(SHIPPED)))
    with target.open("wb") as f:
        model.save(f)
    typer.echo(f"trained on {len(examples)} examples ({model.trained_on[:12]}); wrote {target}")


def _examples(dataset: str, *, builtin: str) -> list[Example]:
    """A labelled JSONL file's examples, or the shipped set `builtin` for "builtin"."""
    from reelgen.safety.learned import builtin_examples, read_examples

    if dataset == "builtin":
        return builtin_examples(builtin)
    path = Path(dataset)
    if not path.is_file():
        raise typer.BadParameter(f"{dataset} is not a file", param_hint="DATASET")
    try:
        return read_examples(path.read_text("utf-8").splitlines(), source=dataset)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="DATASET") from e
