"""How long a job waits before it runs again after its worker was lost. Pure."""

from __future__ import annotations


def retry_backoff(
    attempt: int, jitter: float, *, base_s: float = 1.0, cap_s: float = 60.0
) -> float:
    """Exponential backoff before attempt `attempt + 1`; `jitter` in [0, 1) spreads retries."""
    delay: float = min(cap_s, base_s * 2.0 ** max(0, attempt - 1))
    return delay * (0.5 + jitter / 2)
