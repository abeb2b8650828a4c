"""POST /v1/videos latency and throughput of the embedded default (`reelgen serve`).

1. `--workers 0` (nothing renders): one keep-alive client, 100 warm-up then 2000 sequential
   submits; p50/p90/p99/max. Then 16 concurrent connections for ~10 s with wrk (installed
   with apt-get if missing) and, for comparison, 16 Python threads with their own clients.
2. `--workers 1` while the worker renders a large clip: the same sequential run, reported
   separately (information; no target).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from dataclasses import dataclass

from _common import (
    Check,
    ForeignLoad,
    Server,
    bench_args,
    check_max,
    checks_table,
    emit,
    ensure_apt_tool,
    fmt,
    log,
    lua_string,
    percentile,
    proc_cpu_seconds,
    run_wrk,
    table,
    tool_version,
)

BODY = {"prompt": "a small red ball bouncing", "seconds": "1", "size": "64x64"}
BIG_BODY = {"prompt": "a neon city at night, slow zoom", "seconds": "8", "size": "1280x720"}
BIG_JOBS = 4
TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0


@dataclass
class Sequential:
    latencies_ms: list[float]
    errors: int
    seconds: float
    others: ForeignLoad

    def pct(self, p: float) -> float:
        return percentile(self.latencies_ms, p)

    @property
    def max(self) -> float:
        return max(self.latencies_ms) if self.latencies_ms else math.nan


def sequential(server: Server, warmup: int, count: int) -> Sequential:
    with server.client() as http:
        for _ in range(warmup):
            http.post("/v1/videos", json=BODY).raise_for_status()
        latencies: list[float] = []
        errors = 0
        t_start = time.perf_counter()
        with ForeignLoad(server.pid) as others:
            for _ in range(count):
                t0 = time.perf_counter()
                response = http.post("/v1/videos", json=BODY)
                latencies.append((time.perf_counter() - t0) * 1000.0)
                if response.status_code != 200:
                    errors += 1
        return Sequential(latencies, errors, time.perf_counter() - t_start, others)


def healthz_floor(server: Server, count: int) -> list[float]:
    """GET /healthz (no auth, no database): the HTTP stack plus the client, for scale."""
    with server.client() as http:
        out: list[float] = []
        for _ in range(count):
            t0 = time.perf_counter()
            http.get("/healthz")
            out.append((time.perf_counter() - t0) * 1000.0)
        return out


@dataclass
class Concurrent:
    tool: str
    requests: int
    errors: int
    seconds: float
    p50: float
    p90: float
    p99: float
    max: float
    server_cores: float
    others: ForeignLoad

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else math.nan


def python_clients(server: Server, clients: int, seconds: float) -> Concurrent:
    results: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(i: int) -> None:
        with server.client() as http:
            http.post("/v1/videos", json=BODY)  # connect + warm
            barrier.wait()
            while time.perf_counter() < deadline[0]:
                t0 = time.perf_counter()
                response = http.post("/v1/videos", json=BODY)
                results[i].append((time.perf_counter() - t0) * 1000.0)
                if response.status_code != 200:
                    errors[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + 3600
    cpu0 = proc_cpu_seconds(server.pid)
    t_start = time.perf_counter()
    deadline[0] = t_start + seconds
    with ForeignLoad(server.pid) as others:
        barrier.wait()
        for t in threads:
            t.join()
    elapsed = time.perf_counter() - t_start
    cpu = proc_cpu_seconds(server.pid) - cpu0
    lat = [x for r in results for x in r]
    return Concurrent(
        tool=f"{clients} Python threads, one httpx.Client each",
        requests=len(lat),
        errors=sum(errors),
        seconds=elapsed,
        p50=percentile(lat, 50),
        p90=percentile(lat, 90),
        p99=percentile(lat, 99),
        max=max(lat) if lat else math.nan,
        server_cores=cpu / elapsed,
        others=others,
    )


def wrk_clients(server: Server, wrk: str, connections: int, seconds: float) -> Concurrent:
    lua = "\n".join(
        [
            'wrk.method = "POST"',
            f"wrk.body = {lua_string(json.dumps(BODY))}",
            'wrk.headers["Content-Type"] = "application/json"',
            f'wrk.headers["Authorization"] = {lua_string("Bearer " + server.api_key)}',
        ]
    )
    cpu0 = proc_cpu_seconds(server.pid)
    t0 = time.perf_counter()
    with ForeignLoad(server.pid) as others:
        r = run_wrk(
            wrk,
            f"{server.url}/v1/videos",
            lua,
            threads=2,
            connections=connections,
            seconds=seconds,
        )
    elapsed = time.perf_counter() - t0
    cpu = proc_cpu_seconds(server.pid) - cpu0
    return Concurrent(
        tool=f"wrk, 2 threads, {connections} connections",
        requests=r.requests,
        errors=r.error_count,
        seconds=r.seconds,
        p50=r.latency_ms["p50"],
        p90=r.latency_ms["p90"],
        p99=r.latency_ms["p99"],
        max=r.latency_ms["max"],
        server_cores=cpu / elapsed,
        others=others,
    )


def busy_sequential(args_warmup: int, count: int, keep: bool) -> tuple[Sequential, str]:
    """`--workers 1` with the worker rendering 1280x720 clips during the whole run."""
    with Server(workers=1, keep=keep, name="reelgen-busy") as server, server.client() as http:
        big = [http.post("/v1/videos", json=BIG_BODY).json()["id"] for _ in range(BIG_JOBS)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if http.get(f"/v1/videos/{big[0]}").json()["status"] == "in_progress":
                break
            time.sleep(0.05)
        result = sequential(server, args_warmup, count)
        states = [http.get(f"/v1/videos/{v}").json() for v in big]
        busy = ", ".join(f"{s['status']} {s['progress']}% ({s.get('stage')})" for s in states)
        return result, busy


def client_note(concurrent: list[Concurrent], wrk: str | None) -> str:
    """Says whether the client or the server limited the concurrent figures."""
    text = (
        "Client and server share the same 2 cores. wrk ("
        + (tool_version([wrk, "-v"]).split(" Copyright")[0] if wrk else "not available")
        + ", C) costs little CPU per request; Python clients cost about as much CPU per "
        "request as the server does, so on this machine they can be the bottleneck. "
    )
    by_tool = {c.tool.split(",")[0]: c for c in concurrent}
    ours, theirs = by_tool.get("wrk"), next((c for c in concurrent if "Python" in c.tool), None)
    if ours is not None and theirs is not None:
        if theirs.rps < 0.8 * ours.rps:
            text += (
                f"Here the Python clients reached {theirs.rps / ours.rps:.0%} of wrk's rate: "
                "their figure is bounded by the client; wrk's is the server's. "
            )
        else:
            text += (
                f"Here the Python clients reached {theirs.rps / ours.rps:.0%} of wrk's rate, "
                "so the server, not the client, is the limit. "
            )
    return text + (
        "`server CPU` is the server process's user+system time over the run; near 1.0 means "
        "the single server process is CPU-bound (one event loop, GIL). `others' CPU` is the "
        "share of the machine's CPUs used by processes other than the benchmark's own "
        "(client, load generator, server) during the measurement: the machine is shared, and "
        "numbers taken while it is high are slower than the code is."
    )


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="concurrent run length")
    parser.add_argument("--python-seconds", type=float, default=5.0)
    parser.add_argument("--busy-requests", type=int, default=1000)
    parser.add_argument("--no-busy", action="store_true", help="skip the --workers 1 run")
    args = parser.parse_args()

    wrk = ensure_apt_tool("wrk", ["wrk"])
    concurrent: list[Concurrent] = []
    with Server(workers=0, keep=args.keep) as server:
        log(f"sequential: {args.warmup} warm-up + {args.requests} submits")
        seq = sequential(server, args.warmup, args.requests)
        floor = healthz_floor(server, 500)
        if wrk is not None:
            concurrent.append(wrk_clients(server, wrk, args.clients, args.seconds))
        if args.python_seconds > 0 or wrk is None:
            seconds = args.python_seconds if wrk is not None else args.seconds
            log(f"{args.clients} Python clients for {seconds:.0f} s")
            concurrent.append(python_clients(server, args.clients, seconds))
        total_jobs = args.warmup + args.requests + sum(c.requests for c in concurrent)
        if not server.alive():
            raise RuntimeError("the server died during the run:\n" + server.log_tail())

    busy: tuple[Sequential, str] | None = None
    if not args.no_busy:
        log("sequential with --workers 1 rendering 1280x720 clips")
        busy = busy_sequential(args.warmup, args.busy_requests, args.keep)

    checks = [
        check_max("submit p50, sequential, --workers 0", seq.pct(50), "ms", TARGET_P50_MS),
        check_max("submit p99, sequential, --workers 0", seq.pct(99), "ms", TARGET_P99_MS),
    ]
    for c in concurrent:
        checks.append(Check(f"submit throughput, {c.tool}", c.rps, "req/s", "none", None))
    if busy is not None:
        checks.append(
            Check("submit p99, sequential, --workers 1 busy", busy[0].pct(99), "ms", "none", None)
        )

    n = len(seq.latencies_ms)
    first = seq.latencies_ms[: n // 10]
    last = seq.latencies_ms[-(n // 10) :]
    rows = [
        [
            "`--workers 0` (no rendering)",
            str(n),
            str(seq.errors),
            fmt(seq.pct(50)),
            fmt(seq.pct(90)),
            fmt(seq.pct(99)),
            fmt(seq.max),
            fmt(n / seq.seconds, 0),
            str(seq.others),
        ]
    ]
    if busy is not None:
        b = busy[0]
        rows.append(
            [
                "`--workers 1`, rendering 1280x720",
                str(len(b.latencies_ms)),
                str(b.errors),
                fmt(b.pct(50)),
                fmt(b.pct(90)),
                fmt(b.pct(99)),
                fmt(b.max),
                fmt(len(b.latencies_ms) / b.seconds, 0),
                str(b.others),
            ]
        )
    md = [
        "One client over loopback (`httpx.Client`, keep-alive), "
        f'`POST /v1/videos` with `{{"seconds": "1", "size": "64x64", ...}}`, '
        f"{args.warmup} warm-up requests then {args.requests} measured "
        f"({args.busy_requests} in the `--workers 1` run), one at a time. "
        "The main run uses `reelgen serve --workers 0`, so no rendering competes for the CPU "
        "(jobs stay queued). Latency is measured in the client and includes its own overhead.",
        "",
        table(
            [
                *["server", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                *["req/s", "others' CPU"],
            ],
            rows,
        ),
        "",
        f"Drift with queue depth (`--workers 0`): p50 of the first {len(first)} measured "
        f"requests {fmt(percentile(first, 50))} ms, of the last {len(last)} "
        f"{fmt(percentile(last, 50))} ms. For scale, `GET /healthz` (no auth, no database) "
        f"over the same client: p50 {fmt(percentile(floor, 50))} ms, "
        f"p99 {fmt(percentile(floor, 99))} ms ({len(floor)} requests).",
    ]
    if busy is not None:
        md += [
            "",
            f"In the `--workers 1` run, {BIG_JOBS} 8-second 1280x720 clips were submitted first "
            "so that the worker renders during the whole measurement; at its end they were: "
            f"{busy[1]}.",
        ]
    md += [
        "",
        f"### {args.clients} concurrent clients, `--workers 0`",
        "",
        table(
            [
                *["load generator", "seconds", "requests", "errors", "req/s"],
                *["p50 ms", "p90 ms", "p99 ms", "max ms", "server CPU (cores)", "others' CPU"],
            ],
            [
                [
                    c.tool,
                    fmt(c.seconds, 1),
                    str(c.requests),
                    str(c.errors),
                    fmt(c.rps, 0),
                    fmt(c.p50),
                    fmt(c.p90),
                    fmt(c.p99),
                    fmt(c.max),
                    fmt(c.server_cores),
                    str(c.others),
                ]
                for c in concurrent
            ],
        ),
        "",
        client_note(concurrent, wrk),
        "",
        f"Jobs created in the `--workers 0` server: {total_jobs} (all queued).",
        "",
        checks_table(checks),
    ]
    return emit(args, "Submit latency (`POST /v1/videos`)", "\n".join(md), checks)


if __name__ == "__main__":
    sys.exit(main())
