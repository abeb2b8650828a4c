"""Who runs next. Pure policy over plain data: no clock reads, no I/O.

Paid work gets a head start of `paid_head_start_s` seconds of waiting time over free work;
beyond that, age wins, so a free job is never starved: once it has waited that much longer
than the newest paid job, it runs first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reelgen.domain.jobs import Tier


@dataclass(frozen=True, slots=True)
class QueuedView:
    id: str
    tier: Tier
    created_at: float


@dataclass(frozen=True, slots=True)
class Policy:
    paid_head_start_s: float = 120.0

    def head_start(self, tier: Tier) -> float:
        return self.paid_head_start_s if tier is Tier.PAID else 0.0

    def score(self, job: QueuedView, now: float) -> float:
        """Effective waiting time; the highest score runs first."""
        return now - job.created_at + self.head_start(job.tier)

    def choose(self, candidates: Sequence[QueuedView], now: float) -> QueuedView | None:
        if not candidates:
            return None
        return max(candidates, key=lambda j: (self.score(j, now), -j.created_at))

    def ahead_cutoffs(self, tier: Tier, created_at: float) -> dict[Tier, float]:
        """For each tier, jobs created before the cutoff are scheduled before this one."""
        mine = self.head_start(tier)
        return {t: created_at + self.head_start(t) - mine for t in Tier}


def retry_backoff(
    attempt: int, jitter: float, *, base_s: float = 1.0, cap_s: float = 60.0
) -> float:
    """Exponential backoff before attempt `attempt + 1`; `jitter` in [0, 1) spreads retries."""
    return min(cap_s, base_s * 2 ** max(0, attempt - 1)) * (0.5 + jitter / 2)
