from reelgen.domain.jobs import Tier
from reelgen.scheduler.policy import Policy, retry_backoff


def _order(policy: Policy, jobs: list[tuple[str, Tier, float]]) -> list[str]:
    return [name for name, tier, t in sorted(jobs, key=lambda j: policy.rank(j[1], j[2]))]


def test_paid_first_within_head_start() -> None:
    policy = Policy(paid_head_start_s=120)
    assert _order(policy, [("free", Tier.FREE, 100.0), ("paid", Tier.PAID, 150.0)]) == [
        "paid",
        "free",
    ]


def test_free_job_is_not_starved() -> None:
    policy = Policy(paid_head_start_s=120)
    assert _order(policy, [("free", Tier.FREE, 0.0), ("paid", Tier.PAID, 130.0)]) == [
        "free",
        "paid",
    ]


def test_same_tier_is_fifo() -> None:
    policy = Policy()
    jobs = [
        ("b", Tier.FREE, 2.0),
        ("a", Tier.FREE, 1.0),
        ("c", Tier.PAID, 3.0),
        ("d", Tier.PAID, 2.5),
    ]
    assert _order(policy, jobs) == ["d", "c", "a", "b"]


def test_backoff_grows_and_is_capped() -> None:
    assert [retry_backoff(a, 0.0) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_backoff(1, 0.999) < 1.0
    assert retry_backoff(30, 0.999) < 60.0
