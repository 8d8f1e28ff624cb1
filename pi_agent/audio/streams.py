"""One PortAudio stream's life: open, start, abort and close it, and the device base that does so.

:func:`open_stream`, :func:`start_stream`, :func:`abort_stream` and :func:`close_quietly`
wrap PyAudio's calls with ALSA's noise captured (into the error message when a call
fails). :class:`CallbackDevice` is what the microphone and the speaker share: resolve
the device, open its stream off the loop, watch it with a :class:`~.guard.StreamGuard`,
close it. Blocking PortAudio calls go through :func:`pi_agent.threads.run_blocking`,
since a stalled sound server can hang ``open``/``close`` forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pyaudio

from ..errors import DeviceError, InternalError
from ..threads import run_blocking
from .guard import StreamGuard
from .listing import DeviceInfo
from .native import PORTAUDIO_LOCK, CapturedStderr, new_pyaudio, portaudio_lock, quiet_native_stderr

log = logging.getLogger(__name__)


def _error_detail(exc: BaseException, captured: CapturedStderr) -> str:
    """A short reason from a PortAudio error plus the last ALSA lines that explain it."""
    alsa = captured.alsa_lines()
    tail = f" (ALSA: {' | '.join(alsa[-3:])})" if alsa else ""
    if isinstance(exc, OSError) and len(exc.args) >= 2:
        return f"{exc.args[1]} [{exc.args[0]}]{tail}"
    return f"{exc}{tail}"


def open_stream(pa: pyaudio.PyAudio, what: str, **kwargs: object) -> pyaudio.PyAudio.Stream:
    """``pa.open(..., start=False)`` with ALSA noise captured into the error message."""
    with PORTAUDIO_LOCK, quiet_native_stderr() as captured:
        try:
            return pa.open(start=False, **kwargs)
        except (OSError, ValueError) as exc:
            raise DeviceError(f"cannot open {what}: {_error_detail(exc, captured)}") from exc


def start_stream(stream: pyaudio.PyAudio.Stream, what: str) -> None:
    """Start a stream; a failure becomes a :class:`DeviceError`."""
    with PORTAUDIO_LOCK, quiet_native_stderr() as captured:
        try:
            stream.start_stream()
        except (OSError, ValueError) as exc:
            raise DeviceError(f"cannot start {what}: {_error_detail(exc, captured)}") from exc


def abort_stream(stream: Any) -> None:
    """Pa_AbortStream: stop a PyAudio stream at once, dropping what the device holds.

    PyAudio wraps only Pa_StopStream, which plays out the device's buffer first (a period
    or two, ~40 ms at 40 ms periods); its C module has the abort. Not under
    :data:`PORTAUDIO_LOCK`: a barge-in must not wait for another device being opened,
    and start/stop touch nothing but this stream."""
    from pyaudio import _portaudio

    _portaudio.abort_stream(stream._stream)
    stream._is_running = False  # so that PyAudio's start_stream() starts it again


def close_quietly(stream: pyaudio.PyAudio.Stream | None, pa: pyaudio.PyAudio | None, what: str) -> None:
    """Close a stream (aborting it) and terminate an owned PortAudio; never raises."""
    with PORTAUDIO_LOCK, quiet_native_stderr():
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # a dead device may fail in any way here
                log.debug("closing %s: %r", what, exc)
        if pa is not None:
            try:
                pa.terminate()
            except Exception as exc:
                log.debug("terminating PortAudio for %s: %r", what, exc)


class CallbackDevice:
    """What the PortAudio microphone and speaker share: a device named by the user and
    resolved afresh on every open, a callback stream opened and closed off the loop (a stuck
    sound server cannot hang the daemon) under :data:`PORTAUDIO_LOCK`, and a
    :class:`StreamGuard` that reports the device's death once.

    A subclass names itself (:attr:`noun`) and builds its stream in :meth:`_make_stream`,
    on a worker thread; starting it, cleaning up after a failure and closing are here.
    """

    noun = "device"

    def __init__(
        self,
        device: str,
        *,
        pa: pyaudio.PyAudio | None,
        rate: int | None,
        channels: int | None,
        period_ms: int,
        stall_timeout: float,
        start_timeout: float,
        open_timeout: float,
        close_timeout: float,
        quality: str,
    ):
        self.device_name = device
        self.forced_rate = rate
        self.forced_channels = channels
        self.period_ms = period_ms
        self.stall_timeout = stall_timeout
        self.start_timeout = start_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.quality = quality
        self._pa_given = pa

        self.device: DeviceInfo | None = None
        """The device in use (after open)."""
        self.rate: int | None = None
        """The device sample rate in use (after open)."""
        self.channels: int | None = None
        """The device channel count in use (after open)."""

        self._loop: asyncio.AbstractEventLoop | None = None
        self._guard: StreamGuard | None = None
        self._stream: Any = None
        self._pa_owned: pyaudio.PyAudio | None = None
        self._broken = False  # the callback failed: it only returns silence until reopened

    @property
    def callbacks(self) -> int:
        """PortAudio callbacks since the last open (diagnostics, tests)."""
        return self._guard.callbacks if self._guard is not None else 0

    @property
    def what(self) -> str:
        """How log lines and errors name this device."""
        return f"{self.noun} {self.device_name!r}"

    def _make_stream(self, pa: pyaudio.PyAudio) -> Any:
        """Resolve the device, negotiate a format and open (not start) the stream; worker thread."""
        raise NotImplementedError

    async def _open_stream(self, on_error: Callable[[DeviceError], None]) -> None:
        """Open and start the stream on a worker thread, then watch it."""
        if self._stream is not None:
            raise InternalError(f"{self.what} is already open")
        loop = self._loop = asyncio.get_running_loop()
        self._broken = False
        guard = self._guard = StreamGuard(
            loop, self.what, on_error, stall_timeout=self.stall_timeout, start_timeout=self.start_timeout
        )
        self._stream, self._pa_owned = await run_blocking(
            self._open_blocking,
            timeout=self.open_timeout,
            what=f"opening {self.what}",
            error=DeviceError,
            hint=" (sound server stuck?)",
            dispose=lambda opened: close_quietly(opened[0], opened[1], self.what),
        )
        guard.start(self._stream.is_active)

    def _open_blocking(self) -> tuple[Any, pyaudio.PyAudio | None]:
        # Resolve, probe and open as one step; given up before run_blocking does, so that the
        # keeper hears why (and the thread ends) when an earlier call is stuck in the sound server.
        with portaudio_lock(max(0.1, self.open_timeout - 1.0), f"opening {self.what}"):
            owned = None if self._pa_given is not None else new_pyaudio()
            pa = self._pa_given if self._pa_given is not None else owned
            if pa is None:  # pragma: no cover - new_pyaudio() either returns or raises
                raise InternalError("no PortAudio instance")
            stream = None
            try:
                stream = self._make_stream(pa)
                start_stream(stream, self.what)
                return stream, owned
            except BaseException:
                close_quietly(stream, owned, self.what)
                raise

    async def _close_stream(self) -> None:
        """Stop watching, then stop and release the stream; never raises."""
        if self._guard is not None:
            self._guard.stop()
        stream, pa_owned = self._stream, self._pa_owned
        self._stream = self._pa_owned = None
        if stream is None and pa_owned is None:
            return
        try:
            await run_blocking(
                lambda: close_quietly(stream, pa_owned, self.what),
                timeout=self.close_timeout,
                what=f"closing {self.what}",
                error=DeviceError,
                hint=" (sound server stuck?)",
            )
        except DeviceError as exc:
            log.warning("%s; abandoning it", exc)
        log.info("%s closed", self.what)
