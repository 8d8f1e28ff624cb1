"""The watchdog on a PortAudio stream: :class:`StreamGuard` reports a dead or stalled stream once.

Capture and playback both run one (through :class:`~.streams.CallbackDevice`). It lives on
the event loop: the audio thread only records that callbacks come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from ..errors import DeviceError

log = logging.getLogger(__name__)


class StreamGuard:
    """Watches a PortAudio stream from the event loop; reports its death once.

    The audio thread calls :meth:`tick` on every callback (or read) and may call
    :meth:`fail_threadsafe`. A loop timer checks that the stream is still active and
    that callbacks keep coming: no callback for ``stall_timeout`` once the stream runs
    steadily (``start_timeout`` while it starts up: PulseAudio-backed devices can pause
    for over a second after priming) counts as a dead device. ``on_error`` is then
    called once, on the loop thread.

    The timer is due only when a stall would have become visible (``stall_timeout``
    after the last callback), so a healthy stream costs the loop one wake-up per
    ``stall_timeout``, and a stream stopped on purpose (:meth:`pause`) none at all.
    """

    STEADY_CALLBACKS = 10
    SLACK = 0.005  # s past the moment a stall becomes visible

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        what: str,
        on_error: Callable[[DeviceError], None],
        *,
        stall_timeout: float = 0.5,
        start_timeout: float = 3.0,
    ):
        self.loop = loop
        self.what = what
        self.on_error = on_error
        self.stall_timeout = stall_timeout
        self.start_timeout = start_timeout
        self.callbacks = 0
        """Callbacks since the stream was opened."""
        self.last_callback = time.monotonic()
        self.failed = False
        self._since_start = 0  # callbacks since the stream last started
        self._stopped = True
        self._paused = False
        self._fail_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._is_active: Callable[[], bool] = lambda: True

    # audio thread -------------------------------------------------------------
    def tick(self) -> None:
        """Record a callback (audio thread)."""
        self.last_callback = time.monotonic()
        self.callbacks += 1
        self._since_start += 1

    def fail_threadsafe(self, error: DeviceError) -> None:
        """Report a failure from any thread (only the first one counts)."""
        if self._fail_scheduled or self._stopped:
            return
        self._fail_scheduled = True
        with contextlib.suppress(RuntimeError):  # loop already closed
            self.loop.call_soon_threadsafe(self.fail, error)

    # loop thread --------------------------------------------------------------
    def start(self, is_active: Callable[[], bool]) -> None:
        """Begin watching a stream that has just started (loop thread)."""
        self._is_active = is_active
        self._stopped = False
        self.resume()

    def pause(self) -> None:
        """The stream is being stopped on purpose: expect no callbacks until :meth:`resume`."""
        self._paused = True
        self._cancel()

    def resume(self) -> None:
        """The stream is (being) started again: callbacks are due, after a start-up allowance."""
        if self._stopped:
            return
        self._paused = False
        self._since_start = 0
        self.last_callback = time.monotonic()
        self._arm()

    def stop(self) -> None:
        """Stop watching; later failures are ignored (loop thread)."""
        self._stopped = True
        self._cancel()

    def fail(self, error: DeviceError) -> None:
        """Report ``error`` through ``on_error`` unless already reported (loop thread)."""
        if self.failed or self._stopped:
            return
        self.failed = True
        self.stop()
        log.error("%s failed: %s", self.what, error)
        try:
            self.on_error(error)
        except Exception:
            log.exception("on_error handler raised for %s", self.what)

    def _limit(self) -> float:
        return self.stall_timeout if self._since_start >= self.STEADY_CALLBACKS else self.start_timeout

    def _arm(self) -> None:
        self._cancel()
        due = max(0.0, self.last_callback + self._limit() - time.monotonic()) + self.SLACK
        self._timer = self.loop.call_later(due, self._check)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._stopped or self._paused:
            return
        try:
            active = self._is_active()
        except Exception as exc:
            self.fail(DeviceError(f"{self.what}: PortAudio stream unusable ({exc!r})"))
            return
        silent_for = time.monotonic() - self.last_callback
        if not active:
            self.fail(DeviceError(f"{self.what} stopped (device unplugged or sound server gone?)"))
            return
        if silent_for > self._limit():
            self.fail(DeviceError(f"{self.what} stalled: no audio callback for {silent_for:.1f} s (device gone?)"))
            return
        self._arm()
