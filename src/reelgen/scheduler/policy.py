"""Who runs next. Pure policy over plain data: no clock reads, no I/O.

The queue is ordered by a rank: the submit time, moved earlier by the tier's head start.
Paid work thus runs before free work submitted up to `paid_head_start_s` earlier; beyond
that, age wins, so a free job is never starved. The store sorts by the rank this policy
computes; the simulator sorts by the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

from reelgen.domain.jobs import Tier


@dataclass(frozen=True, slots=True)
class Policy:
    paid_head_start_s: float = 120.0

    def head_start(self, tier: Tier) -> float:
        return self.paid_head_start_s if tier is Tier.PAID else 0.0

    def rank(self, tier: Tier, created_at: float) -> float:
        """Lower runs first."""
        return created_at - self.head_start(tier)


def retry_backoff(
    attempt: int, jitter: float, *, base_s: float = 1.0, cap_s: float = 60.0
) -> float:
    """Exponential backoff before attempt `attempt + 1`; `jitter` in [0, 1) spreads retries."""
    delay: float = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    return delay * (0.5 + jitter / 2)
