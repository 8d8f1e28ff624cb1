"""A speaker stream's starts and stops, on a thread of their own.

A stuck sound server can block a PortAudio start or stop for good; the event loop must
never wait for one, and a call stuck in a dead stream must not hold up the next stream.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import pyaudio

from ..errors import DeviceError
from .streams import abort_stream, close_quietly

log = logging.getLogger(__name__)


class StreamSwitch:
    """Starts and stops a speaker's stream on a thread of its own, in the order asked.

    A stuck sound server can block a PortAudio start or stop for good: the event loop
    never waits for one. Commands: ``start``; ``stop`` (Pa_AbortStream: what the device
    holds is dropped); ``restart`` (both); ``probe`` (a start and a stop of a stopped
    stream, counted in :attr:`probes_done`: it hangs or fails when the device is gone);
    ``exit``. ``stopped`` is called whenever the stream has just been stopped (the
    callback does not run until the next start). A failure is reported once through
    ``report`` (any thread) and ends the thread: the owner closes the device and opens
    it again.
    """

    def __init__(self, stream: Any, what: str, report: Callable[[DeviceError], None],
                 stopped: Callable[[], None]) -> None:
        self._stream = stream
        self._what = what
        self._report = report
        self._stopped = stopped
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.probes_asked = 0
        self.probes_done = 0  # a probe asked and not done by the next one: the stream hangs
        self._lock = threading.Lock()
        self._done = False
        self._abandoned: tuple[pyaudio.PyAudio | None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"pi-agent: {what} switch", daemon=True)
        self._thread.start()

    def request(self, command: str) -> None:
        """Ask for ``command`` after those asked before (any thread; never waits)."""
        if command == "probe":
            self.probes_asked += 1
        self._queue.put(command)

    def finish(self, timeout: float) -> bool:
        """End the thread once what was asked before is done; False if it is stuck (blocking)."""
        self._queue.put("exit")
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abandon(self, pa: pyaudio.PyAudio | None) -> bool:
        """The thread is stuck in a call (a frozen sound server): it closes the stream, and
        terminates ``pa``, if the call returns. False if it has ended meanwhile (the caller
        closes them)."""
        with self._lock:
            if self._done:
                return False
            self._abandoned = (pa,)
            return True

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            with self._lock:
                self._done = True
                abandoned = self._abandoned
            if abandoned is not None:
                log.info("%s: the call that held up closing returned; closing the stream now", self._what)
                close_quietly(self._stream, abandoned[0], self._what)

    def _serve(self) -> None:
        stream = self._stream
        while True:
            command = self._queue.get()
            if command == "exit":
                return
            try:
                if command in ("stop", "restart"):
                    if not stream.is_stopped():
                        abort_stream(stream)
                    self._stopped()
                if command in ("start", "restart", "probe") and stream.is_stopped():
                    stream.start_stream()
                if command == "probe":
                    abort_stream(stream)
                    self.probes_done += 1
            except Exception as exc:  # a device gone: PortAudio says so here
                self._report(DeviceError(f"{self._what}: cannot {command} the stream: {exc!r}"))
                return
