"""What operators read about the fleet: the leading controller's autoscaling answer."""

from __future__ import annotations

from typing import Any

from reelgen.platform import Core


def pool_report(platform: Core) -> dict[str, Any]:
    """Per model pool: the desired workers and the load they were computed from, and the
    batch jobs waiting past their deadline."""
    now = platform.clock()
    pools = [
        {
            "model": t.model,
            "desired_workers": t.desired,
            "live_workers": t.live,
            "busy_workers": t.busy,
            "queued_jobs": t.queued,
            "backlog_gpu_seconds": round(t.backlog_gpu_s, 3),
            "arrival_gpu_seconds_per_second": round(t.arrival_gpu_s_per_s, 4),
            "late_jobs": t.late,
            "updated_at": updated_at,
            "age_seconds": round(max(0.0, now - updated_at), 3),
        }
        for t, updated_at in platform.jobs.pool_targets()
    ]
    return {"object": "list", "data": pools}
