"""Queue throughput on PostgreSQL: claim -> complete with a no-op model, reelgen vs pgqueuer.

For each K in `--consumers` (default 1, 2, 4), on one scratch database: N jobs (default
20,000) of the shape `services.videos.submit` writes are bulk-inserted (with their "created"
events), then K consumer processes each loop `JobStore.claim(...)` then
`JobStore.complete(...)` (no model, no media, fake keys) until the queue is empty or
`--max-seconds` pass; jobs/s = jobs completed / (last ack - start signal).

pgqueuer (installed with pip into its own venv, `bench/out/venv-pgqueuer`, created if
missing; never into the project's venv) does the same on another scratch database on the
same server, run by `bench/_pgqueuer_bench.py` in that venv: the same N jobs enqueued, K
processes that dequeue one job and ack it, one at a time (`loop`), and pgqueuer's own runner
(`QueueManager`, batch 10, buffered acks; `qm`).

A profile pass (K=1, `--profile-jobs`) says where reelgen's time goes: round trips and
the time blocked on them (psycopg's `Connection.wait`), statements and transactions per job,
client vs backend CPU, and a cProfile breakdown by package, next to a fixed floor: the same
two transitions as one statement each, sent with raw psycopg (no SQLAlchemy). While the
consumers run, their PostgreSQL backends' state is sampled from `pg_stat_activity` every
10 ms.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    Check,
    bench_args,
    checks_table,
    emit,
    fmt,
    log,
    table,
)
from _pg import pg_server_info, scratch_database

TARGET_JOBS_S = 1000.0
PGQ_VENV = REPO / "bench" / "out" / "venv-pgqueuer"
PGQ_SCRIPT = REPO / "bench" / "_pgqueuer_bench.py"
PGQ_REQUIREMENT = "pgqueuer"
APP_NAME = "reelgen_bench_consumer"
MODEL = "reference"
USER_ID = "user_bench"
DAY_S = 86_400.0


# --------------------------------------------------------------------------- measurement


def _jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs (user+nice+system; total adds idle+iowait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = v[0] + v[1] + v[2]
    return busy, busy + v[3] + v[4]


def backend_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backends_cpu(url: str) -> dict[int, float]:
    """CPU seconds so far of every backend serving a consumer (by application_name)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APP_NAME,)
        ).fetchall()
    return {int(pid): backend_cpu_s(int(pid)) for (pid,) in rows}


def others_share(j0: tuple[int, int], j1: tuple[int, int], own_cpu_s: float) -> float:
    """Share of all CPUs busy with processes other than the consumers and their backends."""
    hz = os.sysconf("SC_CLK_TCK")
    total = j1[1] - j0[1]
    if total <= 0:
        return math.nan
    return max(0.0, (j1[0] - j0[0] - own_cpu_s * hz) / total)


class ActivitySampler:
    """Samples `pg_stat_activity` of the consumers' backends (by application_name)."""

    def __init__(self, url: str, app_name: str, every_s: float = 0.01):
        self.url, self.app_name, self.every_s = url, app_name, every_s
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            query = (
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                "WHERE application_name = %s"
            )
            while not self._stop.is_set():
                for state, wtype, wevent in conn.execute(query, (self.app_name,)).fetchall():
                    self.counts[_activity_label(state, wtype, wevent)] += 1
                self._stop.wait(self.every_s)

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self, top: int = 5) -> str:
        total = sum(self.counts.values())
        if not total:
            return "n/a"
        return ", ".join(f"{k} {v / total:.0%}" for k, v in self.counts.most_common(top))


def _activity_label(state: str | None, wtype: str | None, wevent: str | None) -> str:
    if state == "active":
        return "executing" if wtype is None else f"waiting on {wtype}:{wevent}"
    if state == "idle in transaction":
        return "idle in transaction (client)"
    if state == "idle" and wtype == "Client":
        return "idle (client)"
    return str(state)


@dataclass
class Run:
    system: str
    consumers: int
    jobs: int
    done: int
    seconds: float
    client_cpu_s: float
    backend_cpu_s: float
    others: float
    activity: str = "n/a"
    enqueue_s: float = math.nan
    verified: str = ""
    per_consumer: list[int] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, float] = field(default_factory=dict)
    trips: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else math.nan

    @property
    def drained(self) -> bool:
        return self.done >= self.jobs

    def per_job_us(self, seconds: float) -> float:
        return seconds / self.done * 1e6 if self.done else math.nan


# --------------------------------------------------------------------------- reelgen


def _job_rows(n: int, now: float) -> Iterator[dict[str, Any]]:
    """Rows as `services.videos.submit` builds them for a 1 s 64x64 reference job."""
    for i in range(n):
        created = now + i * 1e-6
        yield dict(
            id=f"video_{secrets.token_hex(16)}",
            user_id=USER_ID,
            tier="paid",
            model=MODEL,
            requested_model=MODEL,
            prompt="a small red ball bouncing",
            seconds=1,
            width=64,
            height=64,
            fps=24,
            seed=i,
            style=None,
            reference_key=None,
            parent_id=None,
            operation="create",
            status="queued",
            stage="waiting_for_gpu",
            progress=0,
            step=0,
            total_steps=30,
            estimated_seconds=1.0,
            created_at=created,
            not_before=created,
            attempt=0,
            max_attempts=3,
            strikes=0,
            attempt_start_step=0,
            cancel_requested=False,
            checkpoint_step=0,
        )


def reelgen_prepare(url: str, jobs: int) -> float:
    """Empties the queue tables and bulk-inserts `jobs` queued jobs; returns seconds taken."""
    from sqlalchemy import insert, text

    from reelgen.domain.jobs import Tier
    from reelgen.store.accounts import AccountStore
    from reelgen.store.database import Database, make_engine
    from reelgen.store.schema import job_events
    from reelgen.store.schema import jobs as jobs_table

    engine = make_engine(url)
    db = Database(engine)
    with db.write() as conn:
        conn.execute(text("TRUNCATE jobs, job_events, workers RESTART IDENTITY"))
    AccountStore(db).get_or_create_user(user_id=USER_ID, name="bench", tier=Tier.PAID, now=0.0)
    t0 = time.perf_counter()
    now = time.time() - 1.0
    rows = list(_job_rows(jobs, now))
    with db.write() as conn:
        for start in range(0, jobs, 2000):
            chunk = rows[start : start + 2000]
            conn.execute(insert(jobs_table), chunk)
            events = [
                dict(job_id=r["id"], at=r["created_at"], kind="created", data='{"attempt": 0}')
                for r in chunk
            ]
            conn.execute(insert(job_events), events)
    seconds = time.perf_counter() - t0
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            "VACUUM ANALYZE jobs, job_events, workers, users"
        )
    engine.dispose()
    return seconds


class _WaitCounter:
    """Counts psycopg's network waits (one per round trip) and the time spent in them.

    Wraps `psycopg.Connection.wait`, through which every blocking exchange with the server
    goes; `restore` puts the original back.
    """

    def __init__(self) -> None:
        import psycopg

        self.calls = 0
        self.seconds = 0.0
        self._original = original = psycopg.Connection.wait

        def wait(conn: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(conn, gen, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        psycopg.Connection.wait = wait  # type: ignore[method-assign]

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0

    def restore(self) -> None:
        import psycopg

        psycopg.Connection.wait = self._original  # type: ignore[method-assign]


def reelgen_dispatcher(url: str, go: Any, stop: Any, out: Any) -> None:
    """The leading controller's dispatcher (`controller.dispatch`), as `reelgen controller`
    runs it: a round whenever work is announced (a worker free), else every 0.25 s."""
    try:
        import tempfile

        from reelgen.controller.dispatch import Dispatcher
        from reelgen.platform import build_core
        from reelgen.settings import Settings
        from reelgen.store.notify import WORK_CHANNEL

        with tempfile.TemporaryDirectory() as data_dir:
            platform = build_core(
                Settings(database_url=url, data_dir=Path(data_dir)),
                listen=frozenset({WORK_CHANNEL}),
            )
            dispatcher = Dispatcher(platform)
            go.wait()
            cpu0 = time.process_time()
            rounds = 0
            while not stop.is_set():
                mark = platform.bus.work_mark()
                dispatcher.step(time.time())
                rounds += 1
                platform.bus.wait_for_work(0.25, since=mark)
            out.put({"dispatcher_cpu_s": time.process_time() - cpu0, "rounds": rounds})
            platform.close()
    except BaseException as exc:
        out.put({"error": repr(exc)})
        raise


def reelgen_consumer(
    url: str,
    index: int,
    go: Any,
    ready: Any,
    out: Any,
    release: Any,
    deadline_s: float,
    profile: bool,
    cprofile: bool = False,
    remaining: Any = None,
) -> None:
    try:
        import cProfile

        from reelgen.store.database import Database, make_engine
        from reelgen.store.jobs import JobStore
        from reelgen.store.notify import ASSIGNED_CHANNEL, open_bus

        counter = _WaitCounter() if profile else None
        engine = make_engine(f"{url}?application_name={APP_NAME}")
        db = Database(engine)
        store = JobStore(db)
        bus = open_bus(url, frozenset({ASSIGNED_CHANNEL}))
        worker_id = f"worker_bench{index}"
        store.register_worker(worker_id, MODEL, "bench", time.time(), holds=(MODEL,))
        # Warm every pool and statement the claim path uses (nothing is assigned yet).
        store.claim(worker_id=worker_id, now=time.time(), lease_seconds=30.0, lease_token="warm")
        ready.put(os.getpid())
        go.wait()
        if counter is not None:
            counter.reset()
        start = time.time()
        deadline = start + deadline_s
        cpu0 = time.process_time()
        done = 0
        claim_s = complete_s = 0.0
        trace = PqTrace(f"/tmp/reelgen-bench-pqtrace-{os.getpid()}") if cprofile else None
        tracer = cProfile.Profile() if cprofile else None
        if tracer is not None:
            tracer.enable()
        waited_s = 0.0
        while time.time() < deadline:
            mark = bus.assignment_mark(worker_id)
            t0 = time.perf_counter()
            claimed = store.claim(
                worker_id=worker_id,
                now=time.time(),
                lease_seconds=30.0,
                lease_token=secrets.token_hex(16),
            )
            t1 = time.perf_counter()
            claim_s += t1 - t0
            if not claimed:
                if remaining.value <= 0:
                    break
                bus.wait_for_assignment(worker_id, 0.25, since=mark)
                waited_s += time.perf_counter() - t1
                continue
            [job] = claimed
            assert job.lease_token is not None
            now = time.time()
            prefix = f"videos/{job.id}/a{job.attempt}"
            store.complete(
                job.id,
                job.lease_token,
                now=now,
                expires_at=now + 7 * DAY_S,
                video_key=f"{prefix}/video.mp4",
                thumbnail_key=f"{prefix}/thumbnail.webp",
                spritesheet_key=f"{prefix}/spritesheet.jpg",
                first_step=1,
            )
            complete_s += time.perf_counter() - t1
            with remaining.get_lock():
                remaining.value -= 1
            done += 1
            # Free again, as `reelgen worker` does: announce, then wait for the assignment.
            mark = bus.assignment_mark(worker_id)
            bus.work_available(MODEL)
            if remaining.value > 0:
                t2 = time.perf_counter()
                bus.wait_for_assignment(worker_id, 0.25, since=mark)
                waited_s += time.perf_counter() - t2
        end = time.time()
        if tracer is not None:
            tracer.disable()
        trips = trace.stop() if trace is not None else Counter[str]()
        result: dict[str, Any] = {
            "done": done,
            "start": start,
            "end": end,
            "cpu_s": time.process_time() - cpu0,
            "claim_s": claim_s,
            "complete_s": complete_s,
            "assignment_wait_s": waited_s,
        }
        if counter is not None:
            result.update(waits=counter.calls, wait_s=counter.seconds)
        if tracer is not None:
            result["buckets"] = _buckets(tracer)
            result["trips"] = dict(trips)
        out.put(result)
        release.wait(60)
        bus.close()
        db.dispose()
    except BaseException as exc:
        out.put({"error": repr(exc)})
        raise


class PqTrace:
    """libpq's protocol trace on every connection any SQLAlchemy pool of this process hands
    out from now on (the store may use more than one engine), one file per connection."""

    def __init__(self, prefix: str):
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        self.prefix = prefix
        self.conns: dict[int, Any] = {}
        self.paths: list[Path] = []
        self._event, self._pool = event, Pool
        event.listen(Pool, "checkout", self._on_checkout)

    def _on_checkout(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        from psycopg import pq

        pgconn = getattr(dbapi_conn, "pgconn", None)
        if pgconn is None or id(dbapi_conn) in self.conns:
            return
        path = Path(f"{self.prefix}-{len(self.paths)}.txt")
        handle = open(path, "w")  # noqa: SIM115 - libpq writes to it until untrace
        pgconn.trace(handle.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        self.conns[id(dbapi_conn)] = (dbapi_conn, handle)
        self.paths.append(path)

    def stop(self) -> Counter[str]:
        self._event.remove(self._pool, "checkout", self._on_checkout)
        out: Counter[str] = Counter()
        for conn, handle in self.conns.values():
            if not conn.closed:
                conn.pgconn.untrace()
            handle.close()
        for path in self.paths:
            out.update(parse_pq_trace(path))
            path.unlink(missing_ok=True)
        return out


def parse_pq_trace(path: Path) -> Counter[str]:
    """Round trips (the server's ReadyForQuery answers) and what the client sent in them.

    Simple-protocol `Query` messages are classified by their text; an extended-protocol
    exchange (Parse/Bind/Execute ... Sync) by the statement it runs.
    """
    out: Counter[str] = Counter()
    names: dict[str, str] = {}
    current = ""
    messages: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("F\t", "B\t")) or not messages:
            messages.append(line)
        else:  # a message whose text (e.g. multi-line SQL) went on over several lines
            messages[-1] += "\n" + line
    for message in messages:
        parts = message.split("\t", 3)
        if len(parts) < 3 or parts[0] not in ("F", "B"):
            continue
        direction, kind = parts[0], parts[2].strip()
        rest = parts[3].strip() if len(parts) > 3 else ""
        quoted = re.findall(r'"((?:[^"\\]|\\.)*)"', rest)
        if direction == "B" and kind == "ReadyForQuery":
            out["round_trips"] += 1
        elif direction == "F" and kind == "Query":
            out[_sql_kind(quoted[0] if quoted else rest)] += 1
        elif direction == "F" and kind == "Parse":
            current = rest.split('" "', 1)[1] if '" "' in rest else rest
            if quoted and quoted[0]:
                names[quoted[0]] = current
        elif direction == "F" and kind == "Bind" and len(quoted) > 1 and quoted[1]:
            current = names.get(quoted[1], current)
        elif direction == "F" and kind == "Sync":
            out[_sql_kind(current)] += 1
            if "SYNCHRONOUS_COMMIT" in current.upper():
                out["async_commit"] += 1
        if direction == "F" and kind == "Query" and "SYNCHRONOUS_COMMIT" in rest.upper():
            out["async_commit"] += 1
    return out


def _sql_kind(sql: str) -> str:
    head = sql.strip().strip('"').strip().upper()
    for word in ("BEGIN", "COMMIT", "ROLLBACK", "SET"):
        if head.startswith(word):
            return word
    if head in ("", ";", "SELECT 1"):
        return "ping"
    return "statements"


def _buckets(tracer: Any) -> dict[str, float]:
    """cProfile's own time (tottime) of every function, summed by where the code lives."""
    import pstats

    out: Counter[str] = Counter()
    stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(tracer).stats  # type: ignore[attr-defined]
    for (filename, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        path = filename.replace("\\", "/")
        if "/psycopg/" in path and func == "wait":
            key = "psycopg `Connection.wait`: blocked on the server (and libpq I/O)"
        elif "/sqlalchemy/" in path:
            key = "SQLAlchemy"
        elif "/psycopg/" in path or "/psycopg_binary/" in path:
            key = "psycopg (other)"
        elif "/reelgen/" in path:
            key = "reelgen (store, domain)"
        elif filename == "~":
            key = "C built-ins (called from any of the above)"
        elif "/bench/" in path:
            key = "the benchmark loop"
        else:
            key = "standard library and others"
        out[key] += tottime
    return dict(out)


def run_reelgen(
    url: str,
    jobs: int,
    consumers: int,
    max_seconds: float,
    profile: bool,
    *,
    cprofile: bool = False,
) -> Run:
    enqueue_s = reelgen_prepare(url, jobs)
    log(f"reelgen: {jobs} jobs inserted in {enqueue_s:.1f} s; {consumers} consumer(s)")
    ctx = mp.get_context("spawn")
    go, release, ready, out = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    remaining = ctx.Value("i", jobs)
    stop_dispatch, dispatch_out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=reelgen_consumer,
            args=(url, i, go, ready, out, release, max_seconds, profile, cprofile, remaining),
            daemon=True,
        )
        for i in range(consumers)
    ]
    for p in procs:
        p.start()
    dispatcher = ctx.Process(
        target=reelgen_dispatcher, args=(url, go, stop_dispatch, dispatch_out), daemon=True
    )
    try:
        for _ in procs:
            ready.get(timeout=120)
        dispatcher.start()  # after the workers registered: it starts from the store
        with ActivitySampler(url, APP_NAME) as sampler:
            j0 = _jiffies()
            t0 = time.time()
            go.set()
            b0 = backends_cpu(url)
            results = [out.get(timeout=max_seconds + 120) for _ in procs]
            b1 = backends_cpu(url)
            j1 = _jiffies()
        stop_dispatch.set()
        dispatched = dispatch_out.get(timeout=30)
    finally:
        stop_dispatch.set()
        dispatcher.join(timeout=30)
        release.set()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in [*results, dispatched] if "error" in r]
    if errors:
        raise RuntimeError(f"reelgen consumer failed: {errors}")
    done = sum(r["done"] for r in results)
    client = sum(r["cpu_s"] for r in results)
    # Backends that connected after the start began at zero CPU time.
    backend = sum(cpu - b0.get(pid, 0.0) for pid, cpu in b1.items())
    extra = {
        k: float(sum(r.get(k, 0) for r in results))
        for k in ("claim_s", "complete_s", "wait_s", "assignment_wait_s")
    }
    extra.update(dispatcher_cpu_s=dispatched["dispatcher_cpu_s"], rounds=dispatched["rounds"])
    run = Run(
        system="reelgen `JobStore`",
        consumers=consumers,
        jobs=jobs,
        done=done,
        seconds=max(r["end"] for r in results) - t0,
        client_cpu_s=client,
        backend_cpu_s=backend,
        others=others_share(j0, j1, client + backend),
        activity=sampler.summary(),
        enqueue_s=enqueue_s,
        per_consumer=[r["done"] for r in results],
        extra=extra,
    )
    run.verified = reelgen_verify(url, done)
    if cprofile:
        buckets: Counter[str] = Counter()
        trips: Counter[str] = Counter()
        for r in results:
            buckets.update(r.get("buckets", {}))
            trips.update(r.get("trips", {}))
        run.buckets = dict(buckets)
        run.trips = dict(trips)
    return run


def reelgen_verify(url: str, done: int) -> str:
    """Every job completed exactly once: one started and one completed event each."""
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM jobs WHERE status = 'completed'),"
            " (SELECT count(*) FROM jobs WHERE status = 'in_progress'),"
            " (SELECT count(*) FROM job_events WHERE kind = 'started'),"
            " (SELECT count(*) FROM job_events WHERE kind = 'completed'),"
            " (SELECT count(DISTINCT job_id) FROM job_events WHERE kind = 'started')"
        ).fetchone()
    assert row is not None
    completed, running, started, ended, distinct = (int(x) for x in row)
    ok = completed == done == started == ended == distinct and running == 0
    return (
        "yes" if ok else f"NO ({completed} completed, {started} started events, {running} running)"
    )


# --------------------------------------------------------------------------- raw replicas

# The floor: the same two transitions (claim: pick, lease, `started` event, worker row;
# complete: fenced update, `completed` event) as one autocommit statement each, sent with
# psycopg directly. A fixed reference point for what the work costs on this server with
# the fewest round trips and no ORM, whatever reelgen's store does at the time. No
# dispatcher: every job is assigned to the floor's worker up front, so it claims in order.
ONE_STATEMENT_CLAIM = """
WITH chosen AS (
    SELECT id FROM jobs WHERE assigned_worker = %(worker)s AND status = 'queued'
    LIMIT 1 FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs SET status = 'in_progress', stage = 'generating', attempt = attempt + 1,
        worker_id = %(worker)s, lease_token = %(token)s, lease_expires_at = %(expires)s,
        started_at = coalesce(started_at, %(now)s), preempt_requested = false,
        assigned_worker = NULL
    FROM chosen WHERE jobs.id = chosen.id RETURNING jobs.*
), started AS (
    INSERT INTO job_events (job_id, at, kind, data)
    SELECT id, %(now)s, 'started', json_build_object(
        'attempt', attempt, 'worker_id', %(worker)s::text, 'resume_step', checkpoint_step)::text
    FROM claimed
), busy AS (
    UPDATE workers SET heartbeat_at = %(now)s, current_job_id = (SELECT id FROM claimed)
    WHERE id = %(worker)s
)
SELECT * FROM claimed
"""
ONE_STATEMENT_COMPLETE = """
WITH done AS (
    UPDATE jobs SET status = 'completed', stage = 'done', progress = 100,
        completed_at = %(now)s, expires_at = %(expires)s, video_key = %(v)s,
        thumbnail_key = %(t)s, spritesheet_key = %(s)s, lease_token = NULL,
        lease_expires_at = NULL, checkpoint_key = NULL
    WHERE id = %(id)s AND lease_token = %(token)s AND status = 'in_progress'
    RETURNING id, attempt
)
INSERT INTO job_events (job_id, at, kind, data)
SELECT id, %(now)s, 'completed', json_build_object('attempt', attempt, 'first_step', 1)::text
FROM done RETURNING job_id
"""


def run_floor(url: str, jobs: int, max_seconds: float) -> Run:
    """One consumer sending each transition as one statement with raw psycopg (diagnostic)."""
    import psycopg

    enqueue_s = reelgen_prepare(url, jobs)
    worker = "worker_floor"
    with psycopg.connect(f"{url}?application_name={APP_NAME}", autocommit=True) as conn:
        conn.execute(
            "INSERT INTO workers (id, model, hostname, started_at, heartbeat_at)"
            " VALUES (%s, %s, 'bench', 0, 0)",
            (worker, MODEL),
        )
        conn.execute("UPDATE jobs SET assigned_worker = %s WHERE status = 'queued'", (worker,))
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend = int(row[0])
        done = 0
        counter = _WaitCounter()
        with ActivitySampler(url, APP_NAME) as sampler:
            j0 = _jiffies()
            cpu0, backend0 = time.process_time(), backend_cpu_s(backend)
            t0 = time.time()
            deadline = t0 + max_seconds
            while time.time() < deadline:
                now = time.time()
                p: dict[str, Any] = dict(
                    model=MODEL,
                    now=now,
                    worker=worker,
                    token=secrets.token_hex(16),
                    expires=now + 30.0,
                )
                job = conn.execute(ONE_STATEMENT_CLAIM, p).fetchone()
                if job is None:
                    break
                now = time.time()
                p.update(id=job[1], now=now, expires=now + 7 * DAY_S, v="v", t="t", s="s")
                ack = conn.execute(ONE_STATEMENT_COMPLETE, p).fetchone()
                assert ack is not None
                done += 1
            end = time.time()
            client = time.process_time() - cpu0
            server = backend_cpu_s(backend) - backend0
            j1 = _jiffies()
        counter.restore()
    run = Run(
        system="floor: one statement per transition, raw psycopg",
        consumers=1,
        jobs=jobs,
        done=done,
        seconds=end - t0,
        client_cpu_s=client,
        backend_cpu_s=server,
        others=others_share(j0, j1, client + server),
        activity=sampler.summary(),
        enqueue_s=enqueue_s,
        extra=dict(wait_s=counter.seconds, rt_round_trips=2.0, rt_statements=2.0),
    )
    run.verified = reelgen_verify(url, done)
    return run


# --------------------------------------------------------------------------- pgqueuer


def ensure_pgqueuer_venv() -> Path | None:
    """The pgqueuer venv's python, creating the venv (pip install pgqueuer) if missing."""
    python = PGQ_VENV / "bin" / "python"
    check = [str(python), "-c", "import pgqueuer, psycopg"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    creator = str(base) if base.exists() else sys.executable
    log(f"creating {PGQ_VENV} and installing {PGQ_REQUIREMENT} with pip")
    try:
        subprocess.run([creator, "-m", "venv", "--clear", str(PGQ_VENV)], check=True)
        (PGQ_VENV / ".gitignore").write_text("*\n")
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", PGQ_REQUIREMENT, "psycopg[binary]"],
            check=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"could not set up pgqueuer: {exc}")
        return None
    return python if subprocess.run(check, capture_output=True).returncode == 0 else None


def _pair(values: list[int]) -> tuple[int, int]:
    return int(values[0]), int(values[1])


def run_pgqueuer(
    python: Path,
    url: str,
    jobs: int,
    consumers: int,
    mode: str,
    max_seconds: float,
    *,
    install: bool,
    batch: int,
) -> tuple[Run, str]:
    cmd = [
        str(python),
        str(PGQ_SCRIPT),
        "--dsn",
        f"{url}?application_name={APP_NAME}",
        "--jobs",
        str(jobs),
        "--consumers",
        str(consumers),
        "--mode",
        mode,
        "--max-seconds",
        str(max_seconds),
        "--batch-size",
        str(batch),
    ]
    if install:
        cmd.append("--install")
    log(f"pgqueuer {mode}: {jobs} jobs, {consumers} consumer(s)")
    with ActivitySampler(url, APP_NAME) as sampler:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=max_seconds + 300, check=False
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"pgqueuer run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    data = json.loads(lines[-1])
    label = (
        "pgqueuer, dequeue 1 + ack, per job"
        if mode == "loop"
        else f"pgqueuer `QueueManager`, batch {data['batch_size']}"
    )
    own = data["client_cpu_s"] + data["backend_cpu_s"]
    run = Run(
        system=label,
        consumers=consumers,
        jobs=jobs,
        done=data["done"],
        seconds=data["seconds"],
        client_cpu_s=data["client_cpu_s"],
        backend_cpu_s=data["backend_cpu_s"],
        others=others_share(_pair(data["jiffies0"]), _pair(data["jiffies1"]), own),
        activity=sampler.summary(),
        enqueue_s=data["enqueue_s"],
        verified=str(data["verified"]),
        per_consumer=data["per_consumer"],
    )
    return run, str(data["version"])


# --------------------------------------------------------------------------- report


def _us(value: float) -> str:
    return fmt(value, 0)


def throughput_table(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        rows.append(
            [
                r.system,
                str(r.consumers),
                f"{r.done:,} / {r.jobs:,}" + ("" if r.drained else " (time limit)"),
                fmt(r.seconds, 1),
                f"**{fmt(r.rate, 0)}**",
                " / ".join(f"{n:,}" for n in r.per_consumer),
                _us(r.per_job_us(r.client_cpu_s)),
                _us(r.per_job_us(r.backend_cpu_s)),
                "n/a" if math.isnan(r.others) else f"{r.others:.0%}",
                r.activity,
                r.verified,
            ]
        )
    return table(
        [
            "consumer",
            "K",
            "jobs done / enqueued",
            "s",
            "jobs/s",
            "jobs per consumer",
            "client CPU µs/job",
            "backend CPU µs/job",
            "others' CPU",
            "consumers' backends, sampled",
            "each job once",
        ],
        rows,
    )


TRIP_KINDS = ("statements", "BEGIN", "COMMIT", "ROLLBACK", "SET", "ping")


def profile_table(runs: list[Run]) -> str:
    rows = []
    for r in runs:
        e = r.extra
        wall_us = r.seconds / r.done * 1e6 if r.done else math.nan
        kinds = ", ".join(
            f"{fmt(e[f'rt_{k}'], 1)} {k}" for k in TRIP_KINDS if e.get(f"rt_{k}", 0) > 0
        )
        rows.append(
            [
                r.system,
                fmt(r.rate, 0),
                _us(wall_us),
                _us(r.per_job_us(r.client_cpu_s)),
                _us(r.per_job_us(r.backend_cpu_s)),
                _us(r.per_job_us(e.get("wait_s", math.nan))),
                fmt(e.get("rt_round_trips", math.nan), 1),
                kinds or "n/a",
            ]
        )
    return table(
        [
            "K=1",
            "jobs/s",
            "wall µs/job",
            "client CPU µs/job",
            "backend CPU µs/job",
            "µs/job blocked on the server",
            "round trips/job",
            "what they carry, per job",
        ],
        rows,
    )


def best(runs: list[Run], prefix: str) -> Run | None:
    candidates = [r for r in runs if r.system.startswith(prefix) and r.done]
    return max(candidates, key=lambda r: r.rate) if candidates else None


def render(
    args: Any,
    runs: list[Run],
    profile: list[Run],
    buckets: dict[str, float],
    pgq_version: str,
    pgq_problem: str,
    server: str,
) -> tuple[str, list[Check]]:
    reel = [r for r in runs if r.system.startswith("reelgen")]
    loop = {r.consumers: r for r in runs if r.system.startswith("pgqueuer, dequeue")}
    qm = {r.consumers: r for r in runs if r.system.startswith("pgqueuer `QueueManager`")}
    ratio_rows = []
    for r in reel:
        a, b = loop.get(r.consumers), qm.get(r.consumers)
        ratio_rows.append(
            [
                str(r.consumers),
                fmt(r.rate, 0),
                fmt(a.rate, 0) if a else "n/a",
                f"{r.rate / a.rate:.2f} x" if a and a.rate else "n/a",
                fmt(b.rate, 0) if b else "n/a",
                f"{r.rate / b.rate:.2f} x" if b and b.rate else "n/a",
            ]
        )
    top = best(runs, "reelgen")
    top_rate = top.rate if top else math.nan
    top_loop = best(runs, "pgqueuer, dequeue")
    once = all(r.verified == "yes" for r in runs + profile if r.verified != "n/a")
    checks = [
        Check(
            f"reelgen claim->complete, best of K={args.consumers}",
            top_rate,
            "jobs/s",
            f">= {TARGET_JOBS_S:g} jobs/s",
            not math.isnan(top_rate) and top_rate >= TARGET_JOBS_S,
        )
    ]
    for r in reel:
        checks.append(Check(f"reelgen, K={r.consumers}", r.rate, "jobs/s", "none", None))
    if top_loop is not None:
        checks.append(
            Check(
                f"pgqueuer dequeue+ack per job, best (K={top_loop.consumers})",
                top_loop.rate,
                "jobs/s",
                "none",
                None,
            )
        )
        checks.append(
            Check("reelgen/pgqueuer, best vs best", top_rate / top_loop.rate, "x", "none", None)
        )
    top_qm = best(runs, "pgqueuer `QueueManager`")
    if top_qm is not None:
        checks.append(
            Check(
                f"pgqueuer QueueManager batch {args.pgq_batch}, best (K={top_qm.consumers})",
                top_qm.rate,
                "jobs/s",
                "none",
                None,
            )
        )
    checks.append(check_true_once(once))

    parts = [
        f"{server}; loopback TCP. N = {args.jobs:,} jobs enqueued before each run; each run "
        f"stops when the queue is empty or after {args.max_seconds:g} s, and jobs/s = jobs "
        "completed / (last ack - start signal). Consumers are separate processes "
        "(`multiprocessing`, spawn), each with its own connection; all set up and connected "
        "before the start signal. The machine's CPUs are shared by the consumers, PostgreSQL "
        "and whatever else runs on it.",
        "",
        "- **reelgen**: rows of the shape `services.videos.submit` writes (1 s 64x64 "
        "`reference` job, paid tier) and their `created` events, bulk-inserted; each consumer "
        "registers a worker, then loops as `reelgen worker` does: `JobStore.claim(worker_id, "
        "now, lease_seconds=30, lease_token)` takes the job the dispatcher assigned to it -> "
        "`JobStore.complete(job_id, token, fake keys)` -> announces itself free on the bus and "
        "waits for its next assignment's NOTIFY, until every job is done. One more process "
        "runs the leading controller's dispatcher (`controller.dispatch.Dispatcher.step` "
        "whenever work is announced, as `reelgen controller` does): it follows the event "
        "log, runs the scheduling policy and assigns each free worker its next job. The "
        "store is built as the platform builds it (`store.database.make_engine` + "
        "`Database`: SQLAlchemy, psycopg 3) with whatever statements, pools and commit "
        "settings it uses at the time. The dispatcher's own CPU counts under `others' CPU`.",
        f"- **pgqueuer {pgq_version}** (its own venv, `bench/out/venv-pgqueuer`; schema from "
        "`Queries.install()`), the same N jobs enqueued in batches of 1000 (empty payload, one "
        "entrypoint), psycopg 3 async driver. *dequeue 1 + ack, per job*: each consumer loops "
        "`Queries.dequeue(batch_size=1)` -> `Queries.log_jobs([(job, 'successful', None)])`, "
        "the same one-at-a-time work as reelgen's consumers. *QueueManager*: pgqueuer's own "
        f"runner, `QueueManager.run(mode=drain, batch_size={args.pgq_batch})` with a no-op "
        "entrypoint: batched dequeues and buffered acks, how pgqueuer is meant to be run.",
        "",
        "`client CPU` is the consumer processes' CPU time, `backend CPU` that of their "
        "PostgreSQL backends (from /proc), both per job. `others' CPU` is the share of all CPUs "
        "used by anything else during the run (PostgreSQL's WAL writer and autovacuum "
        "included). `consumers' backends, sampled` is `pg_stat_activity` of the consumers' "
        "connections every 10 ms: *executing* = running a statement, *idle in transaction "
        "(client)* / *idle (client)* = waiting for the consumer, *waiting on X* = a wait event "
        "inside PostgreSQL (e.g. `IO:WALSync`, commit flush; `Lock:*`, a lock wait). "
        "`each job once`: every completed job has exactly one `started` and one `completed` "
        "event and none is left running (reelgen), or no acked job is left in the queue table "
        "(pgqueuer).",
        "",
        throughput_table(runs),
        "",
    ]
    if pgq_problem:
        parts += [f"pgqueuer was not measured: {pgq_problem}.", ""]
    parts += [
        "### reelgen vs pgqueuer, same server, same N",
        "",
        table(
            [
                "K",
                "reelgen jobs/s",
                "pgqueuer per job jobs/s",
                "reelgen/pgqueuer",
                f"pgqueuer QueueManager (batch {args.pgq_batch}) jobs/s",
                "reelgen/QueueManager",
            ],
            ratio_rows,
        ),
        "",
    ]
    if profile:
        parts += profile_section(profile, buckets, args)
    parts += [checks_table(checks)]
    return "\n".join(parts), checks


def check_true_once(ok: bool) -> Check:
    return Check(
        "every completed job claimed and completed exactly once", 1.0 if ok else 0.0, "", "yes", ok
    )


def profile_section(profile: list[Run], buckets: dict[str, float], args: Any) -> list[str]:
    reel = next((r for r in profile if r.system.startswith("reelgen")), None)
    floor = next((r for r in profile if r.system.startswith("floor")), None)
    lines = [
        "### Where reelgen's time goes (K=1)",
        "",
        f"One consumer, N = {args.profile_jobs:,} (time limit {args.profile_seconds:g} s): "
        "reelgen's `JobStore` as above, with the time the consumer spends blocked on the "
        "server (in psycopg's `Connection.wait`) measured; next to it a fixed floor that is "
        "not reelgen code: the same two transitions (claim: pick, lease, `started` event, "
        "worker row; complete: fenced update, `completed` event) as one autocommit statement "
        "each, sent with raw psycopg 3. Round trips and what they carry come from libpq's "
        "protocol trace (`PGconn.trace`; each ends with the server's `ReadyForQuery`) in a "
        f"separate instrumented run of {args.cprofile_jobs:,} jobs, which is also profiled "
        "with `cProfile` (below).",
        "",
        profile_table(profile),
        "",
    ]
    if reel and reel.done:
        r_wall = reel.seconds / reel.done * 1e6
        r_cpu = reel.per_job_us(reel.client_cpu_s)
        r_wait = reel.per_job_us(reel.extra.get("wait_s", math.nan))
        trips = reel.extra.get("rt_round_trips", math.nan)
        text = (
            f"Per job reelgen takes {_us(r_wall)} µs of wall time with one consumer: "
            f"{_us(r_cpu)} µs of the consumer's own CPU and {_us(r_wait)} µs blocked on "
            f"{fmt(trips, 1)} round trips (the two overlap a little: CPU spent in psycopg's "
            "send and receive counts in both)."
        )
        relaxed = reel.extra.get("rt_async_commit", 0.0)
        if relaxed > 0:
            text += (
                f" {fmt(relaxed, 1)} of its statements per job mention `synchronous_commit` "
                "(the store turns it off for some writes, e.g. the claim: the server answers "
                "before that commit is flushed to disk), while every commit of pgqueuer's and "
                "of the floor waits for the flush; that is part of reelgen's lead over "
                "pgqueuer's per-job loop."
            )
        if floor and floor.done:
            f_cpu = floor.per_job_us(floor.client_cpu_s)
            text += (
                f" The floor needs {_us(f_cpu)} µs of client CPU and "
                f"{_us(floor.per_job_us(floor.backend_cpu_s))} µs of backend CPU per job and "
                f"runs at {fmt(floor.rate, 0)} jobs/s with one consumer, "
                f"{floor.rate / reel.rate:.1f} x reelgen's rate (the floor has no dispatcher: "
                "every job is assigned to its worker up front, so a job's wall time holds no "
                "round of the policy): reelgen's worker side (SQLAlchemy Core, "
                "`Job.from_row`, the bus, round trips beyond the two statements) "
                f"costs {_us(r_cpu - f_cpu)} µs of client CPU per job more than raw psycopg."
            )
        lines += [text, ""]
    if buckets:
        total = sum(buckets.values())
        rows = [
            [name, f"{value / total:.0%}"]
            for name, value in sorted(buckets.items(), key=lambda kv: -kv[1])
        ]
        lines += [
            "The consumer's time by code under `cProfile` (the instrumented run; the profiler "
            "slows Python code, so only the shares mean something):",
            "",
            table(["where", "share of the consumer's time"], rows),
            "",
        ]
    return lines


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs enqueued per run")
    parser.add_argument(
        "--consumers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2, 4],
        help="comma-separated consumer counts (default 1,2,4)",
    )
    parser.add_argument("--max-seconds", type=float, default=45.0, help="time limit per run")
    parser.add_argument("--no-pgqueuer", action="store_true", help="reelgen only")
    parser.add_argument("--pgq-batch", type=int, default=10, help="QueueManager batch size")
    parser.add_argument("--profile-jobs", type=int, default=3000, help="0 skips the profile")
    parser.add_argument("--profile-seconds", type=float, default=30.0)
    parser.add_argument("--cprofile-jobs", type=int, default=1000, help="0 skips cProfile")
    args = parser.parse_args()
    args.consumers_text = ",".join(str(k) for k in args.consumers)

    server = pg_server_info()
    pgq_python: Path | None = None
    pgq_problem = ""
    if not args.no_pgqueuer:
        pgq_python = ensure_pgqueuer_venv()
        if pgq_python is None:
            pgq_problem = "its venv could not be set up (pip install pgqueuer failed)"
    else:
        pgq_problem = "skipped (--no-pgqueuer)"

    runs: list[Run] = []
    profile: list[Run] = []
    buckets: dict[str, float] = {}
    pgq_version = "?"
    with (
        scratch_database("queue", keep=args.keep) as url,
        scratch_database("pgq", migrate=False, keep=args.keep) as pgq_url,
    ):
        installed = False
        for k in args.consumers:
            run = run_reelgen(url, args.jobs, k, args.max_seconds, profile=False)
            log(f"reelgen K={k}: {run.rate:.0f} jobs/s ({run.done} jobs, {run.seconds:.1f} s)")
            runs.append(run)
            if pgq_python is None:
                continue
            for mode in ("loop", "qm"):
                try:
                    prun, pgq_version = run_pgqueuer(
                        pgq_python,
                        pgq_url,
                        args.jobs,
                        k,
                        mode,
                        args.max_seconds,
                        install=not installed,
                        batch=args.pgq_batch,
                    )
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    log(f"pgqueuer {mode} K={k} failed: {exc}")
                    pgq_problem = f"the {mode} run with K={k} failed ({str(exc)[:200]})"
                    continue
                installed = True
                log(f"{prun.system} K={k}: {prun.rate:.0f} jobs/s ({prun.done} jobs)")
                runs.append(prun)
        if args.profile_jobs > 0:
            log("profile pass")
            profile.append(
                run_reelgen(url, args.profile_jobs, 1, args.profile_seconds, profile=True)
            )
            profile.append(run_floor(url, args.profile_jobs, args.profile_seconds))
            if args.cprofile_jobs > 0:
                traced = run_reelgen(
                    url, args.cprofile_jobs, 1, args.profile_seconds, profile=False, cprofile=True
                )
                buckets = traced.buckets
                for key, count in traced.trips.items():
                    profile[0].extra[f"rt_{key}"] = count / max(1, traced.done)
            for p in profile:
                log(f"{p.system}: {p.rate:.0f} jobs/s")

    args.consumers = args.consumers_text
    markdown, checks = render(args, runs, profile, buckets, pgq_version, pgq_problem, server)
    return emit(args, "Queue throughput: claim -> complete on PostgreSQL", markdown, checks)


if __name__ == "__main__":
    sys.exit(main())
