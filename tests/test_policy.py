from reelgen.domain.jobs import Tier
from reelgen.scheduler.policy import Policy, QueuedView, retry_backoff


def test_paid_first_within_head_start() -> None:
    policy = Policy(paid_head_start_s=120)
    free = QueuedView("f", Tier.FREE, created_at=100.0)
    paid = QueuedView("p", Tier.PAID, created_at=150.0)
    assert policy.choose([free, paid], now=200.0) == paid


def test_free_job_is_not_starved() -> None:
    policy = Policy(paid_head_start_s=120)
    free = QueuedView("f", Tier.FREE, created_at=0.0)
    paid = QueuedView("p", Tier.PAID, created_at=130.0)
    assert policy.choose([free, paid], now=200.0) == free


def test_same_tier_is_fifo() -> None:
    policy = Policy()
    a = QueuedView("a", Tier.FREE, created_at=1.0)
    b = QueuedView("b", Tier.FREE, created_at=2.0)
    assert policy.choose([b, a], now=10.0) == a
    assert policy.choose([], now=10.0) is None


def test_ahead_cutoffs_match_choose() -> None:
    policy = Policy(paid_head_start_s=120)
    cut = policy.ahead_cutoffs(Tier.FREE, created_at=500.0)
    assert cut[Tier.FREE] == 500.0
    assert cut[Tier.PAID] == 620.0
    cut = policy.ahead_cutoffs(Tier.PAID, created_at=500.0)
    assert cut[Tier.FREE] == 380.0


def test_backoff_grows_and_is_capped() -> None:
    assert [retry_backoff(a, 0.0) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_backoff(1, 0.999) < 1.0
    assert retry_backoff(30, 0.999) < 60.0
