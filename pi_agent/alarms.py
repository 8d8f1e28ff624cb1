"""Device counters that grow (lost mic frames, a speaker running dry) explained in the log:
one warning line per interval at most, with the count since the last line."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("pi_agent.alarms")


class GrowthAlarm:
    """Says in the log when a device counter grows: one warning line per ``interval`` at
    most, with the count since the last line (an admin sees choppy audio explained in
    ``journalctl`` without a flood)."""

    def __init__(self, read: Callable[[], int], message: str, *, interval: float = 60.0) -> None:
        self._read = read
        self._message = message  # %d: how many since the last line
        self._interval = interval
        self._reported = read()
        self._quiet_until = float("-inf")

    def check(self, now: float) -> None:
        try:
            value = self._read()
        except Exception:  # a device being reopened: look again next time
            return
        if value < self._reported:  # a counter that restarted
            self._reported = value
        if value > self._reported and now >= self._quiet_until:
            log.warning(self._message, value - self._reported)
            self._reported = value
            self._quiet_until = now + self._interval
