"""Content delivery: a 50 MiB object through reelgen's signed URL route vs nginx, with wrk.

A file of random bytes is placed at `<data_dir>/objects/videos/bench/video.mp4` of a
running `reelgen serve` and fetched through `GET /files/{key}?expires=E&signature=S`; nginx
(installed with apt-get if missing; own temporary config, `daemon off;`, `sendfile on`,
`access_log off`) serves the same file on another loopback port. The same wrk runs against
both: random 1 MiB `Range` requests, then whole-file GETs, 8 connections each.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
from _common import (
    LOOPBACK,
    Check,
    ForeignLoad,
    Server,
    WrkResult,
    bench_args,
    check_true,
    checks_table,
    child_pids,
    emit,
    ensure_apt_tool,
    fmt,
    free_port,
    log,
    lua_string,
    proc_cpu_seconds,
    run_wrk,
    table,
    temp_dir,
    tool_version,
)

KEY = "videos/bench/video.mp4"
CHUNK = 1 << 20


def signed_path(secret: bytes, key: str, expires: int) -> str:
    """As documented for `/files`: S = hmac_sha256(secret, f"{key}\\n{E}").hexdigest()."""
    signature = hmac.new(secret, f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()
    return f"/files/{quote(key)}?expires={expires}&signature={signature}"


def nginx_config(root: Path, port: int, work: Path) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types {{ video/mp4 mp4; }}
    default_type application/octet-stream;
    client_body_temp_path {work}/client_body;
    server {{
        listen {LOOPBACK}:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


@contextlib.contextmanager
def nginx_server(nginx: str, root: Path, keep: bool) -> Iterator[tuple[str, int]]:
    """Yields (base URL, master pid)."""
    with temp_dir("nginx-bench-", keep) as work:
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(nginx_config(root, port, work))
        cmd = [nginx, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
        log(" ".join(cmd))
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        url = f"http://{LOOPBACK}:{port}"
        try:
            deadline = time.monotonic() + 15
            while True:
                if proc.poll() is not None:
                    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                    raise RuntimeError(f"nginx exited with {proc.returncode}: {out}")
                with contextlib.suppress(httpx.HTTPError):
                    httpx.head(f"{url}/", timeout=1.0)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start in 15 s")
                time.sleep(0.05)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def check_range(url: str, data: bytes, rng: random.Random) -> tuple[bool, str]:
    start = rng.randrange(0, len(data) - CHUNK)
    end = start + CHUNK - 1
    with httpx.Client(timeout=60) as http:
        r = http.get(url, headers={"Range": f"bytes={start}-{end}"})
        expected_range = f"bytes {start}-{end}/{len(data)}"
        ok = (
            r.status_code == 206
            and r.headers.get("content-range") == expected_range
            and r.content == data[start : end + 1]
        )
        why = (
            f"status {r.status_code}, Content-Range {r.headers.get('content-range')!r} "
            f"(expected {expected_range!r}), {len(r.content)} bytes, "
            f"bytes match: {r.content == data[start : end + 1]}"
        )
        whole = http.get(url)
        whole_ok = whole.status_code == 200 and whole.content == data
        why += f"; whole GET status {whole.status_code}, bytes match: {whole.content == data}"
    return ok and whole_ok, why


def range_lua(path: str, size: int, seed: int) -> str:
    return f"""
local path = {lua_string(path)}
local size = {size}
local chunk = {CHUNK}
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("id", counter)
end
init = function(args)
  math.randomseed({seed} + (id or 0) * 7919)
end
request = function()
  local s = math.random(0, size - chunk)
  return wrk.format("GET", path, {{Range = "bytes=" .. s .. "-" .. (s + chunk - 1)}})
end
"""


def whole_lua(path: str) -> str:
    return f"""
local path = {lua_string(path)}
request = function()
  return wrk.format("GET", path)
end
"""


@dataclass
class Measured:
    server: str
    mode: str
    result: WrkResult
    server_cores: float
    others: ForeignLoad

    @property
    def avg_body(self) -> float:
        return self.result.bytes / self.result.requests if self.result.requests else 0.0


def measure(
    wrk: str,
    name: str,
    mode: str,
    base: str,
    lua: str,
    pids: list[int],
    connections: int,
    seconds: float,
) -> Measured:
    def cpu() -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += proc_cpu_seconds(pid)
        return total

    c0, t0 = cpu(), time.perf_counter()
    with ForeignLoad(*pids) as others:
        result = run_wrk(wrk, base, lua, threads=2, connections=connections, seconds=seconds)
    cores = (cpu() - c0) / (time.perf_counter() - t0)
    log(
        f"{name} {mode}: {result.rps:.0f} req/s, {result.mib_per_s:.0f} MiB/s, "
        f"errors {result.errors}"
    )
    return Measured(name, mode, result, cores, others)


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--size-mib", type=int, default=50)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0, help="per wrk run")
    args = parser.parse_args()

    wrk = ensure_apt_tool("wrk", ["wrk"])
    nginx = ensure_apt_tool("nginx", ["nginx-light", "nginx"])
    if wrk is None:
        raise SystemExit("wrk is required for this benchmark and could not be installed")

    data = os.urandom(args.size_mib * 2**20)
    rng = random.Random(1234)
    results: list[Measured] = []
    checks: list[Check] = []
    notes: list[str] = []
    with Server(workers=1, keep=args.keep) as server:
        root = server.data_dir / "objects"
        target = root / KEY
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        path = signed_path(server.signing_secret, KEY, int(time.time()) + 3600)
        ok, why = check_range(server.url + path, data, rng)
        checks.append(check_true("reelgen `/files` Range answer correct", ok, "206, right bytes"))
        notes.append(f"- reelgen: {why}")

        nginx_ctx: contextlib.AbstractContextManager[tuple[str, int] | None]
        nginx_ctx = (
            nginx_server(nginx, root, args.keep)
            if nginx is not None
            else contextlib.nullcontext(None)
        )
        with nginx_ctx as ng:
            if ng is not None:
                ng_url, ng_pid = ng
                ok, why = check_range(f"{ng_url}/{KEY}", data, rng)
                checks.append(check_true("nginx Range answer correct", ok, "206, right bytes"))
                notes.append(f"- nginx: {why}")
            for mode in ("1 MiB random Range", "whole file"):
                ours = range_lua(path, len(data), 42) if mode.endswith("Range") else whole_lua(path)
                results.append(
                    measure(
                        wrk,
                        "reelgen",
                        mode,
                        server.url,
                        ours,
                        [server.pid],
                        args.connections,
                        args.seconds,
                    )
                )
                if ng is not None:
                    theirs = (
                        range_lua(f"/{KEY}", len(data), 42)
                        if mode.endswith("Range")
                        else whole_lua(f"/{KEY}")
                    )
                    results.append(
                        measure(
                            wrk,
                            "nginx",
                            mode,
                            ng_url,
                            theirs,
                            [ng_pid, *child_pids(ng_pid)],
                            args.connections,
                            args.seconds,
                        )
                    )
        if not server.alive():
            raise RuntimeError("reelgen died during the run:\n" + server.log_tail())

    rows = []
    for m in results:
        r = m.result
        rows.append(
            [
                m.server,
                m.mode,
                str(r.requests),
                fmt(r.rps, 1),
                fmt(r.mib_per_s, 1),
                fmt(r.latency_ms["p50"], 1),
                fmt(r.latency_ms["p99"], 1),
                str(r.error_count),
                fmt(m.avg_body / 2**20, 3),
                fmt(m.server_cores),
                str(m.others),
            ]
        )
    ratios = []
    for mode in ("1 MiB random Range", "whole file"):
        pair = {m.server: m for m in results if m.mode == mode}
        if "reelgen" in pair and "nginx" in pair:
            ours, theirs = pair["reelgen"].result, pair["nginx"].result
            ratio = ours.mib_per_s / theirs.mib_per_s if theirs.mib_per_s else float("nan")
            ratios.append([mode, fmt(ratio, 3), fmt(ours.rps / theirs.rps, 3)])
            checks.append(Check(f"reelgen/nginx MiB/s, {mode}", ratio, "x", "none", None))
        for m in pair.values():
            expected = CHUNK if mode.endswith("Range") else len(data)
            # wrk also counts the bytes of responses still in flight when it stops, so the
            # average is a little above the body size; far off means Range was not honoured.
            if m.result.requests and not (0.9 * expected <= m.avg_body <= 2 * expected):
                notes.append(
                    f"- WARNING: {m.server} {mode}: {m.avg_body:.0f} bytes per response on "
                    f"average, expected about {expected}."
                )
    md = [
        f"A {args.size_mib} MiB file of random bytes at `objects/{KEY}`, fetched through "
        "reelgen's signed URL route `/files/...` (`reelgen serve`, 1 worker idle) and from "
        "nginx (`worker_processes auto`, `sendfile on`, `access_log off`) on another loopback "
        f"port; wrk, 2 threads, {args.connections} connections, {args.seconds:.0f} s per run, "
        "the same scripts for both. Load generator and servers share the machine's cores; "
        "`others' CPU` is the share of the CPUs used by processes other than the benchmark's "
        "own during each run.",
        "",
        table(
            [
                "server",
                "mode",
                "requests",
                "req/s",
                "MiB/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "MiB per response",
                "server CPU (cores)",
                "others' CPU",
            ],
            rows,
        ),
        "",
    ]
    if ratios:
        md += [table(["mode", "reelgen/nginx MiB/s", "reelgen/nginx req/s"], ratios), ""]
    else:
        md += ["nginx was not available; no comparison.", ""]
    md += [
        "Correctness (one random 1 MiB Range and one whole GET, compared with the file):",
        *notes,
        "",
        f"Tools: {tool_version([wrk, '-v']).split(' Copyright')[0]}; "
        + (tool_version([nginx, "-v"]) if nginx else "nginx: not available")
        + ".",
        "",
        checks_table(checks),
    ]
    return emit(args, "Content delivery (`/files` signed URLs vs nginx)", "\n".join(md), checks)


if __name__ == "__main__":
    sys.exit(main())
