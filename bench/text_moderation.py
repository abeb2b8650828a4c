"""The prompt check's latency on CPU: `safety.text.TextModerator.check` over the shipped
evaluation prompts (720 prompts in five languages, half of them evasions or hard
negatives), in this process, first on one thread and then on the API's 4 safety threads at
once (what a burst of submits does). Start-up (term lists, gazetteer, loading the learned
classifier's weights) is timed apart.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import Check, bench_args, check_max, checks_table, emit, fmt, log, percentile, table

from reelgen.platform import safety_policy
from reelgen.safety.learned import builtin_examples
from reelgen.safety.text import TextModerator
from reelgen.settings import Settings

TARGET_P99_MS = 20.0


def main() -> int:
    parser = bench_args(__doc__ or "")
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    prompts = [e.text for e in builtin_examples("eval")]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        t0 = time.perf_counter()
        moderator = TextModerator(safety_policy(settings))
        startup_s = time.perf_counter() - t0
    log(f"built the check in {startup_s:.2f} s")
    for p in prompts[:50]:
        moderator.check(p)

    def timed(prompt: str) -> float:
        started = time.perf_counter()
        moderator.check(prompt)
        return (time.perf_counter() - started) * 1000

    work = prompts * args.passes
    single = [timed(p) for p in work]
    with ThreadPoolExecutor(args.threads) as pool:
        t0 = time.perf_counter()
        threaded = list(pool.map(timed, work))
        threaded_wall = time.perf_counter() - t0
    rows = []
    for name, values, rate in (
        ("1 thread", single, len(work) / (sum(single) / 1000)),
        (f"{args.threads} threads at once", threaded, len(work) / threaded_wall),
    ):
        rows.append(
            [
                name,
                str(len(values)),
                fmt(percentile(values, 50)),
                fmt(percentile(values, 99)),
                fmt(max(values)),
                f"{rate:,.0f}",
            ]
        )
        log(f"{name}: p50 {percentile(values, 50):.2f} ms p99 {percentile(values, 99):.2f} ms")
    checks = [
        check_max("prompt check p99, 1 thread", percentile(single, 99), "ms", TARGET_P99_MS),
        Check(
            f"prompt check p99, {args.threads} threads at once",
            percentile(threaded, 99),
            "ms",
            "none",
            None,
        ),
        Check(
            "building the check (lists, gazetteer, learned weights)", startup_s, "s", "none", None
        ),
    ]
    md = [
        __doc__.split("\n\n", 1)[0].strip() if __doc__ else "",
        "",
        table(["run", "checks", "p50 ms", "p99 ms", "max ms", "checks/s"], rows),
        "",
        checks_table(checks),
    ]
    return emit(args, "Prompt check latency", "\n".join(md), checks)


if __name__ == "__main__":
    raise SystemExit(main())
