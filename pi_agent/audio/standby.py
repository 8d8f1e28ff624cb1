"""When a speaker's stream runs: a small pure piece in the engine's style.

No clock, no thread, no PortAudio: the speaker tells :class:`Standby` what happened
(a sound is coming, the queue was flushed, a deadline passed) with the time, and gets
back the :class:`Move` to ask of its stream, if any; :meth:`Standby.next_deadline` says
when it wants to be asked again. The speaker keeps one loop timer on that deadline.

The rules:
- a running stream stops ``standby_after`` seconds after the last sound it holds
  (nothing wakes for a stopped stream);
- a sound starts a stopped stream; a sound that comes while the running stream holds
  only silence restarts it (its first sample is then not queued behind that silence);
- a flush stops the stream (what the device holds is dropped), unless an earcon still
  plays: then it restarts from the earcon;
- while stopped, every ``probe_every`` seconds the stream is started and stopped again
  (a probe): a probe still not done at the next one means the device is gone or the
  sound server stuck, and the speaker fails (its keeper reopens it).

With ``keep_running`` (``audio.echo = aec``) the stream never stops for standby and a sound
never restarts it: it queues behind the silence the device holds (a period or two). Every
new stream's moment of playing, as PortAudio reports it, is off by a millisecond or more
from the last one's (measured on the virtual card: the echo of a 60 ms loopback came
61.0-63.9 ms after the reference from one reply to the next), and the echo canceller's
filter, placed for the old stream, is then misplaced until it has re-converged (issue 21:
a 5 ms move cost 57 -> 32 dB at the start of a reply in tests/support_echo.py's rig).
A flush still aborts the stream (silent at once), and starts it again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

SLACK = 0.01  # s: a stop due within this of the moment is due now


class Move(enum.StrEnum):
    """What the speaker asks of its stream (the switch thread's commands), or a failure."""

    START = "start"
    STOP = "stop"
    RESTART = "restart"
    PROBE = "probe"
    FAIL = "fail"


@dataclass
class Standby:
    """The stream's running state and its next deadline (see the module docstring)."""

    standby_after: float
    probe_every: float
    running: bool = True
    keep_running: bool = False
    _stop_check: float | None = None  # when to look whether the stream can stop (running)
    _probe_at: float | None = None  # when to probe (stopped)

    def opened(self, now: float) -> None:
        """The stream has just started, holding nothing."""
        self.running, self._probe_at = True, None
        self._stop_check = None if self.keep_running else now + self.standby_after

    def sound(self, now: float, audible_until: float) -> Move | None:
        """A sound is about to be queued; ``audible_until``: when what the device holds ends."""
        if not self.running:
            self.running, self._probe_at = True, None
            self._stop_check = None if self.keep_running else now + self.standby_after
            return Move.START
        if self.keep_running:
            return None
        if self._stop_check is None:
            self._stop_check = max(now, audible_until) + self.standby_after
        return Move.RESTART if audible_until <= now else None

    def flushed(self, now: float, audible: bool) -> Move | None:
        """Everything queued was dropped; ``audible``: an earcon still plays."""
        if not self.running:
            return None
        if audible or self.keep_running:
            return Move.RESTART
        return self._stop(now)

    def due(self, now: float, audible_until: float, probe_pending: bool) -> Move | None:
        """The deadline has passed: the move it calls for, if any. ``probe_pending``: the
        last probe asked has not been done."""
        if self.running:
            if self._stop_check is None or now < self._stop_check:
                return None
            if audible_until + self.standby_after > now + SLACK:  # sound came meanwhile
                self._stop_check = audible_until + self.standby_after
                return None
            return self._stop(now)
        if self._probe_at is None or now < self._probe_at:
            return None
        if probe_pending:
            self._probe_at = None
            return Move.FAIL
        self._probe_at = now + self.probe_every
        return Move.PROBE

    def next_deadline(self) -> float | None:
        """When :meth:`due` wants to be called next (None: not until something happens)."""
        return self._stop_check if self.running else self._probe_at

    def _stop(self, now: float) -> Move:
        self.running, self._stop_check = False, None
        self._probe_at = now + self.probe_every if self.probe_every > 0 else None
        return Move.STOP
