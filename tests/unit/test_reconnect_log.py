"""Which failed NATS reconnect attempts are logged: the first of each URL at once, then one
line per URL every RECONNECT_LOG_SECONDS, each line counting the attempts since the
connection was lost (shared.reconnects)."""

from __future__ import annotations

from shared.reconnects import Attempt, ReconnectLog

A = "nats://a:4222"
B = "nats://b:4222"


def test_the_first_failure_of_each_url_is_logged_then_one_per_url_per_period() -> None:
    log = ReconnectLog(every_seconds=5)
    log.disconnected(100.0)

    assert log.failed(A, 100.5) == Attempt(1, 0.5)
    assert log.failed(B, 101.0) == Attempt(2, 1.0)  # another URL: its own first line
    assert log.failed(A, 101.5) is None  # counted, not logged
    assert log.failed(A, 104.0) is None
    assert log.failed(A, 105.5) == Attempt(5, 5.5)
    assert log.failed(B, 105.9) is None


def test_the_reconnection_says_how_many_attempts_failed_and_starts_afresh() -> None:
    log = ReconnectLog(every_seconds=5)
    log.disconnected(10.0)
    for second in range(6):
        log.failed(A, 10.5 + second)

    assert log.reconnected(17.0) == Attempt(6, 7.0)

    log.disconnected(50.0)
    assert log.failed(A, 50.5) == Attempt(1, 0.5), "a new outage logs its first attempt"


def test_an_attempt_without_a_disconnect_seen_counts_from_itself() -> None:
    log = ReconnectLog()
    assert log.failed(A, 3.0) == Attempt(1, 0.0)
    assert log.reconnected(4.0) == Attempt(1, 1.0)
