"""Runs every benchmark and writes docs/benchmarks.md (`make bench`).

Each benchmark runs as its own process (`bench/NAME.py --json FILE`) with a time limit; its
Markdown section and target checks are collected into one document with the machine, the
date, the command and a summary of PASS/FAIL against the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    Check,
    cpu_busy,
    fmt,
    load_average,
    machine_info,
    python_executable,
    table,
)

BENCHMARKS: list[tuple[str, int]] = [
    # (script name, time limit in seconds)
    ("submit_latency", 360),
    ("submit_throughput", 240),
    ("e2e_720p", 240),
    ("content_delivery", 300),
    ("idle_memory", 120),
    ("worker_pipeline", 240),
    ("model_switch", 240),
    ("s3_upload", 300),
    # The fleet on a local PostgreSQL (see bench/_pg.py):
    ("queue_throughput", 900),
    ("dispatch_latency", 480),
    ("crash_recovery", 300),
    ("gc_rate", 600),
    # Pure Python, no servers:
    ("policy_decisions", 300),
    ("text_moderation", 300),
    ("output_moderation", 300),
    ("sim_day", 900),
    ("fleet_size", 1800),
]
SECTION_MARK = "<!-- bench: {} @ {} -->"
"""Precedes each section: the benchmark's name and when it ran (for --keep-others)."""


@dataclass
class Kept:
    """A benchmark's summary rows and section carried over from an earlier document."""

    rows: list[str]
    section: str
    date: str


def previous_sections(path: Path) -> dict[str, Kept]:
    """Splits an earlier docs/benchmarks.md into its benchmarks' rows and sections.

    Sections are found by their `<!-- bench: NAME @ DATE -->` marks or, in a document
    written before the marks, by order: its `## ` sections follow the order in which
    benchmarks first appear in its summary table (and their date is the document's).
    """
    try:
        text = path.read_text()
    except OSError:
        return {}
    date = next(
        (ln[len("- Date: ") :] for ln in text.splitlines() if ln.startswith("- Date: ")), ""
    )
    date = date.split(" (")[0]
    _head, _, body = text.partition("\n## Summary\n")
    if not body:
        return {}
    rows: dict[str, list[str]] = {}
    lines = body.split("\n")
    i = 0
    while i < len(lines) and not lines[i].startswith(("## ", "<!-- bench: ")):
        match = re.match(r"\| `([a-z0-9_]+)` \|", lines[i])
        if match:
            rows.setdefault(match.group(1), []).append(lines[i])
        i += 1
    rest = "\n".join(lines[i:])
    sections: dict[str, tuple[str, str]] = {}
    mark = "<!-- bench: "
    if mark in rest:
        for chunk in rest.split(mark)[1:]:
            head, _, section = chunk.partition(" -->\n")
            name, _, when = head.partition(" @ ")
            sections[name.strip()] = (section.strip("\n") + "\n", when.strip() or date)
    else:
        chunks = re.split(r"(?m)^(?=## )", rest)
        for name, chunk in zip(rows, [c for c in chunks if c.startswith("## ")], strict=False):
            sections[name] = (chunk.strip("\n") + "\n", date)
    return {n: Kept(rows[n], *sections[n]) for n in rows if n in sections}


def wait_for_quiet(max_wait: float, threshold: float = 0.25) -> str:
    """Waits (bounded) until other processes use less than `threshold` of the CPUs.

    Returns a note on the load at the start, for the document.
    """
    deadline = time.monotonic() + max_wait
    busy = cpu_busy(2.0)
    while busy > threshold and time.monotonic() < deadline:
        print(f"    machine {busy:.0%} busy; waiting for it to quiet down", file=sys.stderr)
        time.sleep(3.0)
        busy = cpu_busy(2.0)
    return (
        f"CPUs {busy:.0%} busy with other processes just before it (load average {load_average()})"
    )


def run_one(name: str, limit: int, extra: list[str]) -> tuple[dict[str, Any] | None, str, float]:
    script = REPO / "bench" / f"{name}.py"
    with tempfile.TemporaryDirectory(prefix="reelgen-bench-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [python_executable(), str(script), "--json", str(out), *extra]
        print(f"==> {name}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=limit)
            problem = "" if proc.returncode == 0 else f"exited with status {proc.returncode}"
        except subprocess.TimeoutExpired:
            problem = f"did not finish within {limit} s"
        elapsed = time.monotonic() - t0
        if out.exists() and not problem:
            return json.loads(out.read_text()), "", elapsed
        return None, problem or "wrote no result", elapsed


def git_commit() -> str:
    """Reads .git directly (no git command): the checked-out commit, if any."""
    head = REPO / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            name = ref[5:]
            path = REPO / ".git" / name
            if path.exists():
                return path.read_text().strip()[:12]
            packed = REPO / ".git" / "packed-refs"
            for line in packed.read_text().splitlines():
                if line.endswith(" " + name):
                    return line.split()[0][:12]
            return "?"
        return ref[:12]
    except OSError:
        return "?"


def document(
    results: list[tuple[str, dict[str, Any] | None, str, float, str]],
    machine: dict[str, str],
    command: str,
    started: datetime,
    total_s: float,
    kept: dict[str, Kept] | None = None,
) -> str:
    kept = kept or {}
    date = started.strftime("%Y-%m-%d %H:%M UTC")
    fresh = {
        name: (result, problem, elapsed, load) for name, result, problem, elapsed, load in results
    }
    summary_lines: list[str] = []
    sections: list[str] = []
    for name, _limit in BENCHMARKS:
        if name not in fresh:
            if name in kept:
                summary_lines += kept[name].rows
                mark = SECTION_MARK.format(name, kept[name].date)
                sections.append(mark + "\n" + kept[name].section)
            continue
        result, problem, elapsed, load = fresh[name]
        sections.append(SECTION_MARK.format(name, date))
        if result is None:
            row = [f"`{name}`", "benchmark run", problem, "completes", "**FAIL**"]
            summary_lines.append("| " + " | ".join(row) + " |")
            sections.append(
                f"## `{name}`\n\nThe benchmark did not complete: {problem}. _({load}.)_\n"
            )
            continue
        for raw in result["checks"]:
            c = Check(**raw)
            value = ("yes" if c.value else "no") if c.unit == "" else f"{fmt(c.value)} {c.unit}"
            verdict = f"**{c.verdict}**" if c.passed is not None else "info"
            row = [f"`{name}`", c.name, value, c.target, verdict]
            summary_lines.append("| " + " | ".join(row) + " |")
        sections.append(result["markdown"] + f"\n_Wall time {elapsed:.0f} s; {load}._\n")
    failed = sum(1 for line in summary_lines if line.endswith("| **FAIL** |"))
    passed = sum(1 for line in summary_lines if line.endswith("| **PASS** |"))
    carried = [n for n, _ in BENCHMARKS if n not in fresh and n in kept]
    kept_note = (
        [
            "- Not re-run by this command, kept from earlier runs: "
            + ", ".join(f"`{n}` ({kept[n].date})" for n in carried)
            + "."
        ]
        if carried
        else []
    )
    head = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python bench/run_all.py`); do not edit by hand.",
        "Every benchmark starts its own `reelgen serve` (or, for the fleet benchmarks, "
        "`reelgen api`/`controller`/`worker` processes on a scratch database of the local "
        "PostgreSQL server) on free 127.0.0.1 ports with a temporary "
        "data directory, measures it, and stops it. Run one alone with "
        "`.venv/bin/python bench/NAME.py` (it prints its section; `--help` lists its options).",
        "",
        f"- Date: {date} (whole run {total_s:.0f} s)",
        f"- Command: `{command}`",
        f"- Machine: {machine['nproc']} CPUs (`nproc`), {machine['cpu']}, {machine['ram']} RAM, "
        f"{machine['os']}, Linux {machine['kernel']}",
        f"- Python {machine['python']}; reelgen commit {git_commit()}",
        *kept_note,
        "- Load generators run on the same machine as the servers, so they compete for the "
        "same cores; each section says how busy the CPUs were with other processes just "
        "before it (numbers taken on a busy machine are slower than the code is).",
        "",
        "## Summary",
        "",
        f"{passed} targets met, {failed} missed or not measured.",
        "",
        table(["benchmark", "check", "measured", "target", "result"], []),
        *summary_lines,
        "",
    ]
    return "\n".join(head) + "\n" + "\n".join(sections)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--only", action="append", choices=[n for n, _ in BENCHMARKS], help="run just these"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the document ('-' for stdout); default docs/benchmarks.md, "
        "or stdout with --only",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed, too")
    parser.add_argument(
        "--keep-others",
        action="store_true",
        help="with --only: write docs/benchmarks.md (or --output) with the other benchmarks' "
        "summary rows and sections kept from the document already there",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=60.0,
        help="before each benchmark, wait up to this many seconds for other processes to "
        "leave the CPUs mostly idle (the numbers are only comparable on a quiet machine)",
    )
    args = parser.parse_args()

    started = datetime.now(UTC)
    t0 = time.monotonic()
    machine = machine_info()
    results = []
    for name, limit in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        load = wait_for_quiet(args.wait_idle)
        result, problem, elapsed = run_one(name, limit, [])
        if problem:
            print(f"!! {name}: {problem}", file=sys.stderr, flush=True)
        results.append((name, result, problem, elapsed, load))
    invoked = shlex.join([".venv/bin/python", "bench/run_all.py", *sys.argv[1:]])
    command = "make bench" if os.environ.get("MAKELEVEL") and not sys.argv[1:] else invoked
    default = REPO / "docs" / "benchmarks.md"
    kept = previous_sections(args.output or default) if args.keep_others else {}
    text = document(results, machine, command, started, time.monotonic() - t0, kept)
    to_stdout = args.only and not args.keep_others
    output = args.output or (Path("-") if to_stdout else default)
    if str(output) == "-":
        print(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"wrote {output}", file=sys.stderr)
    broken = any(r[1] is None for r in results)
    missed = any(c["passed"] is False for r in results if r[1] is not None for c in r[1]["checks"])
    return 1 if broken or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
