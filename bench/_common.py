"""Shared pieces of the benchmarks: a `reelgen serve` subprocess, load tools, stats, output.

Every benchmark is a standalone script that starts its own server(s) on free loopback ports
with a temporary data directory, measures, stops them, prints a Markdown section and, with
`--json PATH`, writes its section and target checks for `bench/run_all.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
API_KEY = "rg_bench_0123456789abcdef"
SIGNING_SECRET = "reelgen-bench-signing-secret"


def python_executable() -> str:
    """The project's virtualenv interpreter if there is one, else the running one."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    """Progress goes to stderr so stdout stays the Markdown section."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * p / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (rank - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def fmt(value: float, digits: int = 2) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


# --------------------------------------------------------------------------- results


@dataclass
class Check:
    """One number compared against a target; `passed` is None for information only."""

    name: str
    value: float
    unit: str
    target: str
    passed: bool | None

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "info"
        return "PASS" if self.passed else "FAIL"


def check_max(name: str, value: float, unit: str, limit: float) -> Check:
    ok = not math.isnan(value) and value <= limit
    return Check(name, value, unit, f"<= {limit:g} {unit}", ok)


def check_true(name: str, ok: bool, what: str) -> Check:
    return Check(name, 1.0 if ok else 0.0, "", what, ok)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def checks_table(checks: Sequence[Check]) -> str:
    rows = [
        [c.name, _check_value(c), c.target, f"**{c.verdict}**" if c.passed is not None else "—"]
        for c in checks
    ]
    return table(["check", "measured", "target", "result"], rows)


def _check_value(c: Check) -> str:
    if c.unit == "":
        return "yes" if c.value else "no"
    return f"{fmt(c.value)} {c.unit}"


def bench_args(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, help="also write the section and checks here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary data directories (debugging)"
    )
    return parser


def emit(args: argparse.Namespace, title: str, markdown: str, checks: Sequence[Check]) -> int:
    """Prints the section and, with --json, writes it and the checks for run_all.

    Returns the exit status: 0, since a missed target is a result, not a broken benchmark."""
    section = f"## {title}\n\n{markdown.strip()}\n"
    print(section)
    if args.json is not None:
        payload = {
            "title": title,
            "markdown": section,
            "checks": [dataclasses.asdict(c) for c in checks],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout
        cores = nproc.strip()
    except (OSError, subprocess.CalledProcessError):
        cores = str(len(os.sched_getaffinity(0)))
    py = subprocess.run(
        [python_executable(), "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "nproc": cores,
        "cpu": cpu,
        "ram": mem,
        "python": py or platform.python_version(),
        "kernel": platform.release(),
        "os": _os_name(),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


# --------------------------------------------------------------------------- /proc


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction (0..1) of all CPUs busy over `seconds`, from /proc/stat: others' load."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    dt = total1 - total0
    return 0.0 if dt <= 0 else 1.0 - (idle1 - idle0) / dt


def _stat_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, busy meaning time charged to processes.

    Interrupt and softirq time (loopback networking, much of it caused by the benchmark's
    own traffic) and steal time are counted as neither busy nor idle.
    """
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait = v[:5]
    busy = user + nice + system
    return busy, busy + idle + iowait


def _pid_jiffies(pid: int | str, *, children: bool = False) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(x) for x in fields[11 : 15 if children else 13])


class ForeignLoad:
    """Share of all CPUs used by processes other than ours while the block ran.

    Ours: this process (its threads and the children it has waited for, e.g. wrk) and the
    live processes in `pids` (the servers). The machine is shared, so this says how far
    the numbers of one block may be off.
    """

    def __init__(self, *pids: int):
        self.pids = pids
        self.fraction = math.nan

    def _own(self) -> int:
        total = _pid_jiffies("self", children=True)
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += _pid_jiffies(pid)
        return total

    def __enter__(self) -> Self:
        self._busy, self._total = _stat_jiffies()
        self._own0 = self._own()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = _stat_jiffies()
        own = self._own() - self._own0
        elapsed = total - self._total
        if elapsed > 0:
            self.fraction = max(0.0, (busy - self._busy - own) / elapsed)

    def __str__(self) -> str:
        return "n/a" if math.isnan(self.fraction) else f"{self.fraction:.0%}"


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... in KiB, and Threads, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if (key.startswith("Vm") or key == "Threads") and parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def child_pids(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return [int(p) for p in path.read_text().split()]
    return []


# --------------------------------------------------------------------------- the server


class ServerError(RuntimeError):
    pass


class Server:
    """`python -m reelgen serve` on a free loopback port with its own temporary data dir."""

    def __init__(
        self,
        *,
        workers: int,
        env: dict[str, str] | None = None,
        name: str = "reelgen",
        keep: bool = False,
    ):
        self.workers = workers
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"{name}-bench-"))
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.keep = keep
        self.api_key = API_KEY
        self.signing_secret = SIGNING_SECRET.encode()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds = math.nan

    @property
    def command(self) -> list[str]:
        return [
            python_executable(),
            "-m",
            "reelgen",
            "serve",
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--data-dir",
            str(self.data_dir),
        ]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REELGEN_")}
        env.update(
            REELGEN_BOOTSTRAP_API_KEY=self.api_key,
            REELGEN_SIGNING_SECRET=SIGNING_SECRET,
            REELGEN_PAID_MAX_CONCURRENT="1000000",
            REELGEN_PAID_MAX_PER_DAY="1000000",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 90.0) -> Self:
        log(f"starting {' '.join(self.command[1:])}")
        t0 = time.monotonic()
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.data_dir,
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = t0 + timeout
        with httpx.Client(timeout=2.0) as http:
            while True:
                if self.proc.poll() is not None:
                    raise ServerError(
                        f"reelgen serve exited with {self.proc.returncode} during start-up:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.url}/readyz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(
                        f"reelgen serve was not ready in {timeout:.0f} s:\n" + self.log_tail()
                    )
                time.sleep(0.05)
        self.startup_seconds = time.monotonic() - t0
        log(f"ready in {self.startup_seconds:.1f} s, pid {self.pid}, {self.url}")
        return self

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no log)"

    def client(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60.0, **kwargs)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGINT (uvicorn's graceful stop), then SIGKILL after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"reelgen serve (pid {self.proc.pid}) did not stop in {timeout:.0f} s; kill")
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.log_path.unlink(missing_ok=True)
        else:
            log(f"kept {self.data_dir} and {self.log_path}")
        return code

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.proc is not None:
            log("server log tail:\n" + self.log_tail())
        self.stop()


# --------------------------------------------------------------------------- Debian tools


def ensure_apt_tool(binary: str, packages: Sequence[str]) -> str | None:
    """Path of `binary`, installing the first Debian package that provides it if missing.

    Returns None (and logs why) when it cannot be had; callers then skip or fall back.
    """
    found = _which(binary)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        log(f"{binary} is missing and cannot be installed here (needs root and apt-get)")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in ("install", "update-then-install"):
        if attempt == "update-then-install":
            log("apt-get update")
            subprocess.run(
                ["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300, check=False
            )
        for package in packages:
            log(f"apt-get install -y {package}")
            result = subprocess.run(
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            found = _which(binary)
            if result.returncode == 0 and found:
                return found
    log(f"could not install {binary} from {', '.join(packages)}")
    return None


def _which(binary: str) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(directory) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def tool_version(command: Sequence[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run(list(command), capture_output=True, text=True, timeout=10)
        text = (result.stdout + result.stderr).strip().splitlines()
        return text[0] if text else "?"
    return "?"


# --------------------------------------------------------------------------- wrk

WRK_DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass
class WrkResult:
    requests: int
    bytes: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else math.nan

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / 2**20 if self.seconds else math.nan

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_wrk(
    wrk: str,
    url: str,
    lua: str,
    *,
    threads: int,
    connections: int,
    seconds: float,
    timeout_s: int = 30,
) -> WrkResult:
    """Runs wrk with `lua` (which must not define `done`) plus a JSON-printing `done`."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua + "\n" + WRK_DONE_LUA)
        script = f.name
    try:
        cmd = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s}s",
            "-s",
            script,
            url,
        ]
        log(" ".join(cmd[1:]))
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False
        )
    finally:
        os.unlink(script)
    for line in result.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data = json.loads(line[len("WRKJSON ") :])
            return WrkResult(
                requests=data["requests"],
                bytes=data["bytes"],
                seconds=data["duration_us"] / 1e6,
                errors={k: data[k] for k in ("connect", "read", "write", "status", "timeout")},
                latency_ms={k: data[k] / 1000.0 for k in ("p50", "p90", "p99", "max", "mean")},
            )
    raise RuntimeError(
        f"wrk gave no result (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


def lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal here


@contextlib.contextmanager
def temp_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
