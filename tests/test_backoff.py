"""Retry policy: delays, reset after a healthy connection, what is retryable."""

from __future__ import annotations

import pytest

from pi_agent.engine.backoff import Backoff, Outcome, classify_close, classify_http_status
from pi_agent.engine.protocol import ErrorEvent


def test_delays_double_up_to_the_cap_with_full_jitter() -> None:
    b = Backoff(initial=1.0, cap=10.0, reset_after=30.0, rng=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    b = Backoff(initial=1.0, cap=10.0, rng=lambda: 0.5)
    assert [b.next_delay() for _ in range(5)] == [0.5, 1, 2, 4, 5]


def test_jitter_stays_within_the_ceiling() -> None:
    b = Backoff(initial=1.0, cap=60.0)
    for attempt in range(12):
        d = b.next_delay()
        assert 0 <= d <= min(60.0, 2 ** attempt)


def test_reset_only_after_a_healthy_connection() -> None:
    b = Backoff(initial=1.0, cap=60.0, reset_after=30.0, rng=lambda: 1.0)
    b.next_delay(), b.next_delay(), b.next_delay()
    b.connection_lasted(2.0)  # accepted, then dropped at once: no reset
    assert b.next_delay() == 8
    b.connection_lasted(31.0)
    assert b.next_delay() == 1


def test_fatal_waits_the_cap() -> None:
    b = Backoff(initial=1.0, cap=60.0, rng=lambda: 0.0)
    assert b.fatal_delay() == 60.0


@pytest.mark.parametrize(("code", "reason", "error", "outcome"), [
    (1000, "", None, Outcome.ENDED),
    (1002, "", ErrorEvent(1002, "timeout", "transport_receive_timeout", None), Outcome.RETRY),
    (1011, "", None, Outcome.RETRY),
    (3000, "Request error", None, Outcome.RETRY),
    (3008, "too many concurrent connections", None, Outcome.RETRY),
    (None, "", None, Outcome.RETRY),
    (1006, "", None, Outcome.RETRY),
    (1008, "Invalid message received", ErrorEvent(1008, "bad", "invalid_message", None), Outcome.RETRY),
    (1008, "Authentication failed", None, Outcome.FATAL),
    (1008, "", ErrorEvent(1008, "Invalid agent id", None, None), Outcome.FATAL),
    (1008, "", ErrorEvent(1008, "x", "override_error", None), Outcome.FATAL),
    (1008, "", ErrorEvent(1008, "x", "missing_dynamic_variable", None), Outcome.FATAL),
])
def test_classify_close(code, reason, error, outcome) -> None:
    assert classify_close(code, reason, error) is outcome


def test_end_call_is_a_normal_end_whatever_the_code() -> None:
    assert classify_close(1011, "", None, ended_by_agent=True) is Outcome.ENDED


@pytest.mark.parametrize(("status", "outcome"), [
    (401, Outcome.FATAL), (403, Outcome.FATAL), (404, Outcome.FATAL), (422, Outcome.FATAL),
    (429, Outcome.RETRY), (500, Outcome.RETRY), (502, Outcome.RETRY), (503, Outcome.RETRY),
])
def test_classify_http_status(status: int, outcome: Outcome) -> None:
    assert classify_http_status(status) is outcome
