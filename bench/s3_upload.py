"""Uploading a 100 MB output to an S3 API server on this machine.

`S3Store.put` of a 100 MB file (as a worker publishes an encoded MP4: 16 MiB parts on four
threads, streamed from disk), next to boto3's `upload_file` with its default transfer
settings (8 MiB parts on ten threads: what `aws s3 cp` does) against the same server in the
same run, and the ranged read back through `S3Store.read`. Two servers, each in its own
process on 127.0.0.1: `rclone serve s3` over a directory (Go, writes to disk) and moto's
server (Python, holds objects in memory). Both are emulators: the numbers say what the
client costs and how the two compare, not what AWS would do.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from _common import LOOPBACK, Check, bench_args, checks_table, emit, fmt, free_port, log, table

from reelgen.storage.s3 import S3Location, S3Store

ACCESS, SECRET = "reelgen-bench", "reelgen-bench-secret"
MB = 1_000_000


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


@contextmanager
def s3_server(kind: str, root: Path) -> Iterator[str]:
    """An S3 API server's endpoint, for the life of the block."""
    port = free_port()
    if kind == "rclone":
        argv = [_tool("rclone"), "serve", "s3", str(root), "--addr", f"{LOOPBACK}:{port}"]
        argv += ["--auth-key", f"{ACCESS},{SECRET}", "--config", "/dev/null"]
    else:
        argv = [_tool("moto_server"), "-H", LOOPBACK, "-p", str(port)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1.0)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        process.wait(10)


def _timed(call: Callable[[], Any]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def measure(kind: str, source: Path, rounds: int) -> dict[str, float]:
    size = source.stat().st_size
    with tempfile.TemporaryDirectory() as root, s3_server(kind, Path(root)) as endpoint:
        url = f"s3://bench/out?endpoint_url={endpoint}&region=us-east-1&addressing_style=path"
        store = S3Store(S3Location.parse(url))
        client = store._client
        client.create_bucket(Bucket="bench")
        ours, default, reads = [], [], []
        for k in range(rounds):
            ours.append(
                _timed(lambda k=k: store.put(f"v{k}.mp4", source, content_type="video/mp4"))
            )
            default.append(
                _timed(lambda k=k: client.upload_file(str(source), "bench", f"d{k}.mp4"))
            )
            reads.append(_timed(lambda k=k: sum(len(c) for c in store.read(f"v{k}.mp4", 0, size))))
    return {
        "put": size / MB / statistics.median(ours),
        "upload_file": size / MB / statistics.median(default),
        "read": size / MB / statistics.median(reads),
    }


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "output.mp4"
        with source.open("wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(MB))
        for kind in ("rclone", "moto"):
            results[kind] = measure(kind, source, args.rounds)
            log(f"{kind}: {results[kind]}")
    rows = [
        [
            kind,
            f"{args.mb} MB",
            fmt(r["put"], 0),
            fmt(r["upload_file"], 0),
            f"{r['put'] / r['upload_file']:.2f}",
            fmt(r["read"], 0),
        ]
        for kind, r in results.items()
    ]
    rclone = results["rclone"]
    checks = [
        Check("S3Store.put, 100 MB to rclone serve s3", rclone["put"], "MB/s", "none", None),
        Check(
            "boto3 upload_file (aws s3 cp defaults), same server",
            rclone["upload_file"],
            "MB/s",
            "none",
            None,
        ),
        Check("S3Store.read back, same server", rclone["read"], "MB/s", "none", None),
    ]
    md = [
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
        table(
            [
                "server",
                "object",
                "S3Store.put MB/s",
                "upload_file MB/s",
                "ratio",
                "S3Store.read MB/s",
            ],
            rows,
        ),
        "",
        f"Medians of {args.rounds} rounds each.",
        "",
        checks_table(checks),
    ]
    return emit(args, "S3 upload of a 100 MB output", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
