"""Submit throughput (`POST /v1/videos`) and authenticated reads, each next to a bare app.

In one run, on the same machine, with wrk (installed with apt-get if missing):

1. A bare FastAPI app (bench/_bare_app.py: uvicorn, one process, access log off, as
   reelgen runs it) that answers `POST /v1/videos` and `GET /v1/videos/{id}` with the same
   JSON shape and no auth or database: the HTTP stack's ceiling here.
2. Embedded: `reelgen serve --workers 0` (SQLite, `synchronous=FULL`): submits with 16
   connections, then the authenticated `GET /v1/videos/{id}` of a queued video, then
   sequential submits from one keep-alive client (bench/submit_latency.py's loop).
3. Fleet: two `reelgen api` processes on a scratch PostgreSQL database (bench/_pg.py),
   one wrk per process at the same time; rates summed, p99 the larger of the two.

Every rate is also given as a ratio to the bare app's rate for the same request.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import (
    LOOPBACK,
    Check,
    ForeignLoad,
    Server,
    WrkResult,
    bench_args,
    check_max,
    checks_table,
    emit,
    ensure_apt_tool,
    fmt,
    free_port,
    log,
    lua_string,
    python_executable,
    run_wrk,
    table,
    tool_version,
)
from _pg import Fleet, pg_server_info, scratch_database
from submit_latency import BODY, sequential

BARE_APP = Path(__file__).resolve().parent / "_bare_app.py"
TARGET_EMBEDDED_RPS = 500.0
TARGET_FLEET_RPS = 1000.0
TARGET_P99_MS = 50.0
TARGET_GET_RATIO = 0.4
TARGET_SEQ_P50_MS = 5.0


@dataclass
class Row:
    """One load run: what was measured and against which bare-app rate."""

    name: str
    connections: int
    seconds: float
    requests: int
    errors: int
    p50: float
    p99: float
    bare_rps: float
    others: str

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else math.nan

    @property
    def ratio(self) -> float:
        return self.rps / self.bare_rps if self.bare_rps else math.nan

    def cells(self) -> list[str]:
        return [
            self.name,
            str(self.connections),
            fmt(self.seconds, 1),
            str(self.requests),
            str(self.errors),
            fmt(self.rps, 0),
            fmt(self.p50),
            fmt(self.p99),
            fmt(self.ratio) + " x" if not math.isnan(self.ratio) else "—",
            self.others,
        ]


def post_lua(api_key: str | None) -> str:
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {lua_string(json.dumps(BODY))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if api_key is not None:
        lines.append(f'wrk.headers["Authorization"] = {lua_string("Bearer " + api_key)}')
    return "\n".join(lines)


def get_lua(api_key: str | None) -> str:
    if api_key is None:
        return ""
    return f'wrk.headers["Authorization"] = {lua_string("Bearer " + api_key)}'


def wrk_many(
    wrk: str, urls: list[str], lua: str, *, connections: int, seconds: float
) -> list[WrkResult]:
    """One wrk per URL, all at the same time; `connections` each."""
    results: list[WrkResult | None] = [None] * len(urls)

    def one(i: int) -> None:
        results[i] = run_wrk(
            wrk,
            urls[i],
            lua,
            threads=1 if len(urls) > 1 else 2,
            connections=connections,
            seconds=seconds,
        )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in results):
        raise RuntimeError("a wrk run gave no result")
    return [r for r in results if r is not None]


def measure(
    name: str,
    wrk: str,
    urls: list[str],
    lua: str,
    *,
    connections: int,
    seconds: float,
    bare_rps: float,
    pids: list[int],
) -> Row:
    with ForeignLoad(*pids) as others:
        results = wrk_many(wrk, urls, lua, connections=connections, seconds=seconds)
    return Row(
        name=name,
        connections=connections * len(urls),
        seconds=max(r.seconds for r in results),
        requests=sum(r.requests for r in results),
        errors=sum(r.error_count for r in results),
        p50=max(r.latency_ms["p50"] for r in results),
        p99=max(r.latency_ms["p99"] for r in results),
        bare_rps=bare_rps,
        others=str(others),
    )


@contextlib.contextmanager
def bare_app() -> Iterator[tuple[str, int]]:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    proc = subprocess.Popen(
        [python_executable(), str(BARE_APP), str(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the bare app exited during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the bare app was not ready in 30 s")
            time.sleep(0.05)
        log(f"bare app ready, pid {proc.pid}, {url}")
        yield url, proc.pid
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


def queued_video(url: str, api_key: str) -> str:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}) as http:
        response = http.post("/v1/videos", json=BODY)
        response.raise_for_status()
        return str(response.json()["id"])


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=16, help="embedded and bare runs")
    parser.add_argument(
        "--fleet-connections", type=int, default=16, help="per `reelgen api` process"
    )
    parser.add_argument("--requests", type=int, default=1000, help="sequential submits")
    parser.add_argument("--no-fleet", action="store_true", help="skip the PostgreSQL fleet")
    args = parser.parse_args()

    wrk = ensure_apt_tool("wrk", ["wrk"])
    if wrk is None:
        raise SystemExit("wrk is required")
    rows: list[Row] = []
    c, secs = args.connections, args.seconds

    with bare_app() as (bare_url, bare_pid):
        bare_post = measure(
            "bare app, POST",
            wrk,
            [f"{bare_url}/v1/videos"],
            post_lua(None),
            connections=c,
            seconds=secs,
            bare_rps=math.nan,
            pids=[bare_pid],
        )
        bare_get = measure(
            "bare app, GET",
            wrk,
            [f"{bare_url}/v1/videos/video_x"],
            get_lua(None),
            connections=c,
            seconds=secs,
            bare_rps=math.nan,
            pids=[bare_pid],
        )
        # Two wrk processes, as for the fleet: the same ceiling measured the same way.
        bare_post_2 = measure(
            "bare app, POST, 2 wrk",
            wrk,
            [f"{bare_url}/v1/videos"] * 2,
            post_lua(None),
            connections=args.fleet_connections,
            seconds=secs,
            bare_rps=math.nan,
            pids=[bare_pid],
        )
    rows += [bare_post, bare_get, bare_post_2]

    with Server(workers=0, keep=args.keep) as server:
        embedded = measure(
            "embedded, POST (SQLite)",
            wrk,
            [f"{server.url}/v1/videos"],
            post_lua(server.api_key),
            connections=c,
            seconds=secs,
            bare_rps=bare_post.rps,
            pids=[server.pid],
        )
        video = queued_video(server.url, server.api_key)
        embedded_get = measure(
            "embedded, GET a queued video",
            wrk,
            [f"{server.url}/v1/videos/{video}"],
            get_lua(server.api_key),
            connections=c,
            seconds=secs,
            bare_rps=bare_get.rps,
            pids=[server.pid],
        )
        log(f"sequential: 100 warm-up + {args.requests} submits")
        seq = sequential(server, 100, args.requests)
        if not server.alive():
            raise RuntimeError("the server died during the run:\n" + server.log_tail())
    rows += [embedded, embedded_get]

    fleet_row: Row | None = None
    fleet_get: Row | None = None
    pg_info = ""
    if not args.no_fleet:
        pg_info = pg_server_info()
        with (
            scratch_database("submit", keep=args.keep) as url,
            Fleet(url, keep=args.keep) as fleet,
        ):
            apis = [fleet.api(), fleet.api()]
            api_key = fleet.env["REELGEN_BOOTSTRAP_API_KEY"]
            fleet_row = measure(
                "fleet, POST (PostgreSQL, 2 `reelgen api`)",
                wrk,
                [f"{u}/v1/videos" for _, u in apis],
                post_lua(api_key),
                connections=args.fleet_connections,
                seconds=secs,
                bare_rps=bare_post_2.rps,
                pids=[p.pid for p, _ in apis],
            )
            video = queued_video(apis[0][1], api_key)
            fleet_get = measure(
                "fleet, GET a queued video",
                wrk,
                [f"{u}/v1/videos/{video}" for _, u in apis],
                get_lua(api_key),
                connections=args.fleet_connections,
                seconds=secs,
                bare_rps=math.nan,
                pids=[p.pid for p, _ in apis],
            )
            for proc, _ in apis:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} died during the run:\n{proc.tail()}")
        rows += [fleet_row, fleet_get]

    checks = [
        Check(
            "embedded submits/s, 16 connections",
            embedded.rps,
            "req/s",
            f">= {TARGET_EMBEDDED_RPS:g} req/s",
            embedded.rps >= TARGET_EMBEDDED_RPS,
        ),
        check_max("embedded submit p99, 16 connections", embedded.p99, "ms", TARGET_P99_MS),
        Check("embedded submits/s vs bare app", embedded.ratio, "x", "none", None),
        Check(
            "embedded GET vs bare app",
            embedded_get.ratio,
            "x",
            f">= {TARGET_GET_RATIO:g} x",
            embedded_get.ratio >= TARGET_GET_RATIO,
        ),
        check_max("sequential submit p50, embedded", seq.pct(50), "ms", TARGET_SEQ_P50_MS),
    ]
    if fleet_row is not None:
        checks += [
            Check(
                "fleet submits/s, 2 API processes",
                fleet_row.rps,
                "req/s",
                f">= {TARGET_FLEET_RPS:g} req/s",
                fleet_row.rps >= TARGET_FLEET_RPS,
            ),
            check_max("fleet submit p99", fleet_row.p99, "ms", TARGET_P99_MS),
            Check("fleet submits/s vs bare app", fleet_row.ratio, "x", "none", None),
        ]
    if fleet_get is not None:
        fleet_get_ratio = fleet_get.rps / bare_get.rps if bare_get.rps else math.nan
        checks.append(
            Check("fleet GET vs bare app (one process)", fleet_get_ratio, "x", "none", None)
        )

    md = [
        f"wrk ({tool_version([wrk, '-v']).split(' Copyright')[0]}), {secs:g} s per run, "
        f"`POST /v1/videos` with `{json.dumps(BODY)}` and `Authorization: Bearer` (reelgen), "
        "on loopback; wrk, the servers and PostgreSQL share the machine's cores. The bare app "
        "(`bench/_bare_app.py`) is FastAPI on uvicorn with reelgen's settings (one process, "
        "access log off), answering the same JSON shape without auth, validation or "
        "database; `x bare` is the rate over the bare app's rate for the same request, "
        "measured in the same run (the fleet's against the bare app under two wrk processes "
        "at once). The embedded server is `reelgen serve --workers 0` (SQLite, "
        "`synchronous=FULL`: an answered submit is on disk); the fleet is two `reelgen api` "
        f"processes on a scratch database ({pg_info or 'not run'}), one wrk per process at "
        "the same time, rates summed and p50/p99 the larger of the two. GET reads a queued "
        "video (its queue position and ETA are computed per request). `others' CPU` is the "
        "share of the CPUs used by processes other than the benchmark's own during the run.",
        "",
        table(
            [
                "run",
                "connections",
                "seconds",
                "requests",
                "errors",
                "req/s",
                "p50 ms",
                "p99 ms",
                "x bare",
                "others' CPU",
            ],
            [r.cells() for r in rows],
        ),
        "",
        f"Sequential submits (one keep-alive `httpx.Client`, 100 warm-up then "
        f"{len(seq.latencies_ms)} measured, latency taken in the client): p50 "
        f"{fmt(seq.pct(50))} ms, p90 {fmt(seq.pct(90))} ms, p99 {fmt(seq.pct(99))} ms, "
        f"{seq.errors} errors; others' CPU {seq.others}.",
        "",
        checks_table(checks),
    ]
    return emit(args, "Submit throughput and reads vs a bare app", "\n".join(md), checks)


if __name__ == "__main__":
    sys.exit(main())
