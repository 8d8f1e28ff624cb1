"""Device counters that grow are explained in the log, without flooding it."""

from __future__ import annotations

import logging

import pytest

from pi_agent.alarms import GrowthAlarm


def test_a_growing_counter_is_reported_once_per_interval_with_the_count_since_the_last_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    count = [3]  # what the device counted before the daemon looked: not reported
    alarm = GrowthAlarm(lambda: count[0], "lost %d frame(s)", interval=60.0)
    caplog.set_level(logging.WARNING, logger="pi_agent.alarms")

    alarm.check(0.0)
    assert caplog.messages == []
    count[0] = 5
    alarm.check(1.0)
    assert caplog.messages == ["lost 2 frame(s)"]
    count[0] = 9
    alarm.check(30.0)  # within the interval: held back, not lost
    assert caplog.messages == ["lost 2 frame(s)"]
    alarm.check(61.0)
    assert caplog.messages == ["lost 2 frame(s)", "lost 4 frame(s)"]
    alarm.check(200.0)  # no growth: nothing to say
    assert len(caplog.messages) == 2


def test_a_counter_that_restarts_or_cannot_be_read_is_not_an_alarm(caplog: pytest.LogCaptureFixture) -> None:
    state: dict[str, object] = {"value": 10}

    def read() -> int:
        value = state["value"]
        if isinstance(value, Exception):
            raise value
        return int(value)  # type: ignore[call-overload]

    alarm = GrowthAlarm(read, "ran dry %d time(s)")
    caplog.set_level(logging.WARNING, logger="pi_agent.alarms")
    state["value"] = RuntimeError("device being reopened")
    alarm.check(1.0)
    state["value"] = 0  # a new device object counts from zero
    alarm.check(2.0)
    assert caplog.messages == []
    state["value"] = 1
    alarm.check(3.0)
    assert caplog.messages == ["ran dry 1 time(s)"]
