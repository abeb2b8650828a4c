from reelgen.scheduler.backoff import retry_backoff


def test_backoff_grows_and_is_capped() -> None:
    assert [retry_backoff(a, 0.0) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_backoff(1, 0.999) < 1.0
    assert retry_backoff(30, 0.999) < 60.0
