"""pgqueuer's side of `queue_throughput.py`; runs in its own venv (pgqueuer is not a reelgen dep).

    python _pgqueuer_bench.py --dsn URL --jobs N --consumers K --mode loop|qm [--install]

Empties pgqueuer's tables, enqueues N jobs (entrypoint "bench", empty payload) in batches,
then starts K consumer processes that drain the queue with a no-op job, and prints one JSON
object: jobs done, wall seconds from the start signal to the last ack, client and server
(PostgreSQL backend) CPU seconds.

Modes:
- `loop`: the same per-job work as reelgen's consumers: `Queries.dequeue(batch_size=1)`,
  then `Queries.log_jobs([(job, "successful", None)])` (the ack), one job at a time.
- `qm`: pgqueuer's own runner, `QueueManager.run(mode=drain, batch_size=B)` with a no-op
  `@entrypoint` (batched dequeue, buffered acks: how pgqueuer is meant to be run).

Standalone on purpose: it imports only pgqueuer, psycopg and the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ENTRYPOINT = "bench"


def backend_cpu_s(pid: int) -> float:
    """utime + stime of a PostgreSQL backend (same machine; needs permission to read it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def jiffies() -> list[int]:
    """(busy, total) jiffies of all CPUs, as `queue_throughput._jiffies`."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = v[0] + v[1] + v[2]
    return [busy, busy + v[3] + v[4]]


async def _connect(dsn: str, **kwargs: Any) -> Any:
    import psycopg

    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, **kwargs)


async def prepare(dsn: str, jobs: int, install: bool) -> dict[str, float]:
    from pgqueuer import Queries

    conn = await _connect(dsn, application_name="pgqueuer_bench_setup")
    try:
        queries = Queries.from_psycopg_connection(conn)
        if install and not await queries.schema_is_installed():
            await queries.install()
        s = queries.qbe.settings
        await conn.execute(
            f"TRUNCATE {s.queue_table}, {s.queue_table_log}, {s.statistics_table}"  # type: ignore[arg-type]
        )
        t0 = time.perf_counter()
        batch = 1000
        for start in range(0, jobs, batch):
            n = min(batch, jobs - start)
            await queries.enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
        enqueue_s = time.perf_counter() - t0
        await conn.execute(f"VACUUM ANALYZE {s.queue_table}")  # type: ignore[arg-type]
        await conn.execute(f"VACUUM ANALYZE {s.queue_table_log}")  # type: ignore[arg-type]
        return {"enqueue_s": enqueue_s}
    finally:
        await conn.close()


async def remaining(dsn: str) -> int:
    from pgqueuer import Queries

    conn = await _connect(dsn, application_name="pgqueuer_bench_setup")
    try:
        table = Queries.from_psycopg_connection(conn).qbe.settings.queue_table
        cur = await conn.execute(f"SELECT count(*) FROM {table}")  # type: ignore[arg-type]
        row = await cur.fetchone()
        return int(row[0]) if row else -1
    finally:
        await conn.close()


async def consume(
    dsn: str, mode: str, batch_size: int, go: Any, ready: Any, deadline_s: float
) -> dict[str, Any]:
    from pgqueuer import Queries, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode
    from pgqueuer.ports.repository import EntrypointExecutionParameter

    conn = await _connect(dsn)
    row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
    backend = int(row[0])
    done = 0
    queries = Queries.from_psycopg_connection(conn)
    qm: Any = None
    if mode == "qm":
        qm = QueueManager(queries)

        @qm.entrypoint(ENTRYPOINT)
        async def noop(job: Any) -> None:
            nonlocal done
            done += 1

    ready.put(os.getpid())
    go.wait()  # blocks the event loop, which has nothing else to do yet
    start = go_time = time.time()
    cpu0, backend0 = time.process_time(), backend_cpu_s(backend)
    deadline = go_time + deadline_s
    if mode == "loop":
        entrypoints = {ENTRYPOINT: EntrypointExecutionParameter(concurrency_limit=0)}
        manager_id = uuid.uuid4()
        while time.time() < deadline:
            jobs = await queries.dequeue(
                batch_size=1,
                entrypoints=entrypoints,  # type: ignore[arg-type]
                queue_manager_id=manager_id,  # type: ignore[arg-type]
                global_concurrency_limit=None,
                heartbeat_timeout=timedelta(seconds=30),
            )
            if not jobs:
                break
            await queries.log_jobs([(jobs[0], "successful", None)])
            done += 1
    else:

        async def stop_at_deadline() -> None:
            await asyncio.sleep(max(0.0, deadline - time.time()))
            qm.shutdown.set()

        stopper = asyncio.create_task(stop_at_deadline())
        await qm.run(
            batch_size=batch_size,
            mode=QueueExecutionMode.drain,
            log_aggregation_interval=timedelta(0),
        )
        stopper.cancel()
    end = time.time()
    result = {
        "done": done,
        "start": start,
        "end": end,
        "cpu_s": time.process_time() - cpu0,
        "backend_cpu_s": backend_cpu_s(backend) - backend0,
    }
    await conn.close()
    return result


def _consumer(
    dsn: str, mode: str, batch_size: int, go: Any, ready: Any, out: Any, deadline_s: float
) -> None:
    try:
        out.put(asyncio.run(consume(dsn, mode, batch_size, go, ready, deadline_s)))
    except BaseException as exc:
        out.put({"error": repr(exc)})
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--consumers", type=int, default=1)
    parser.add_argument("--mode", choices=["loop", "qm"], default="loop")
    parser.add_argument("--batch-size", type=int, default=10, help="qm mode only")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--install", action="store_true", help="install the schema if missing")
    args = parser.parse_args()

    import pgqueuer

    prep = asyncio.run(prepare(args.dsn, args.jobs, args.install))
    ctx = mp.get_context("spawn")
    go, ready, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_consumer,
            args=(args.dsn, args.mode, args.batch_size, go, ready, out, args.max_seconds),
        )
        for _ in range(args.consumers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    j0 = jiffies()
    t0 = time.time()
    go.set()
    results = [out.get(timeout=args.max_seconds + 60) for _ in procs]
    j1 = jiffies()
    for p in procs:
        p.join(timeout=30)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        print(json.dumps({"error": errors}))
        return 1
    done = sum(r["done"] for r in results)
    elapsed = max(r["end"] for r in results) - t0
    left = asyncio.run(remaining(args.dsn))
    # Acked jobs leave the queue table; what is left was never dequeued (or not acked).
    verified = "yes" if left == args.jobs - done else f"NO ({left} rows left, {done} acked)"
    print(
        json.dumps(
            {
                "version": pgqueuer.__version__,
                "jobs": args.jobs,
                "consumers": args.consumers,
                "mode": args.mode,
                "batch_size": args.batch_size if args.mode == "qm" else 1,
                "enqueue_s": prep["enqueue_s"],
                "done": done,
                "seconds": elapsed,
                "per_consumer": [r["done"] for r in results],
                "client_cpu_s": sum(r["cpu_s"] for r in results),
                "backend_cpu_s": sum(r["backend_cpu_s"] for r in results),
                "jiffies0": j0,
                "jiffies1": j1,
                "verified": verified,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
