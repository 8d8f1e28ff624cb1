"""What the native audio libraries need from the process: fd 2 kept clean, one lock, PortAudio instances.

PortAudio (through ALSA) prints a screenful of probe noise to the process's
stderr when it initialises or opens devices. :func:`quiet_native_stderr`
captures fd 2 around those calls so the journal stays readable; whatever is
not recognisable library noise is written back.

PortAudio's own bookkeeping is not thread-safe: its set-up and tear-down go under
:data:`PORTAUDIO_LOCK`. :func:`new_pyaudio` and :func:`portaudio` make PortAudio
instances with both in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

import pyaudio

from ..errors import DeviceError

log = logging.getLogger(__name__)

_STDERR_LOCK = threading.Lock()
_NOISE = re.compile(
    r"^(ALSA lib |Expression '|Cannot connect to server|jack server is not running|"
    r"JackShmReadWritePtr|Cannot lock down|connect\(2\) call to|attempt to connect to server failed|"
    r"Jack: |bt_audio_service_open|Cannot open device|Cannot open DB environment|\s*$)"
)


class CapturedStderr:
    """What C libraries wrote to fd 2 inside a :func:`quiet_native_stderr` block."""

    def __init__(self, fd: int | None):
        self._fd = fd
        self.noise: list[str] = []
        """Library-noise lines, filled when the block ends."""

    def text(self) -> str:
        """Everything captured so far (readable inside the block, e.g. for an error message)."""
        if self._fd is None:
            return ""
        try:
            size = os.fstat(self._fd).st_size
            return os.pread(self._fd, size, 0).decode("utf-8", errors="replace")
        except OSError:
            return ""

    def alsa_lines(self) -> list[str]:
        """The ALSA messages captured so far: they usually say why an open failed."""
        return [line.strip() for line in self.text().splitlines() if line.startswith("ALSA lib")]


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[CapturedStderr]:
    """Capture what C libraries write to fd 2 inside the block.

    ALSA, PortAudio and JACK print their probe noise straight to fd 2. Inside the
    block fd 2 points at a temporary file; afterwards recognisable library noise
    is kept in ``captured.noise`` and any other line is written back to stderr
    (so another thread's log line is delayed, never lost). Serialised by a lock
    because fd 2 is process-wide. Without a usable fd 2 the block simply runs.
    """
    with _STDERR_LOCK:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep clean
            yield CapturedStderr(None)
            return
        with tempfile.TemporaryFile() as tmp:
            captured = CapturedStderr(tmp.fileno())
            try:
                os.dup2(tmp.fileno(), 2)
                try:
                    yield captured
                finally:
                    os.dup2(saved, 2)
                text = captured.text()
            finally:
                os.close(saved)
        for line in text.splitlines():
            if _NOISE.match(line):
                if line.strip():
                    captured.noise.append(line)
            else:
                with contextlib.suppress(OSError):
                    os.write(2, (line + "\n").encode())


PORTAUDIO_LOCK = threading.RLock()
"""Serialises PortAudio set-up and tear-down (initialise, terminate, open, close, probe):
PortAudio's bookkeeping of instances and open streams is not thread-safe, and the
backends open and close from worker threads."""


@contextlib.contextmanager
def portaudio_lock(timeout: float, what: str) -> Iterator[None]:
    """:data:`PORTAUDIO_LOCK`, waited for ``timeout`` s at most, then a :class:`DeviceError`
    naming ``what``. A call stuck in a sound server that stopped answering holds the lock
    for good; a device's open that waited behind it for good would leave one more thread
    waiting at every retry, for as long as the server stays stuck."""
    if not PORTAUDIO_LOCK.acquire(timeout=timeout):
        raise DeviceError(f"{what}: an earlier call into PortAudio never returned (sound server stuck?)")
    try:
        yield
    finally:
        PORTAUDIO_LOCK.release()


def new_pyaudio() -> pyaudio.PyAudio:
    """Initialise PortAudio with its ALSA/JACK probe noise kept out of the journal."""
    with PORTAUDIO_LOCK, quiet_native_stderr() as captured:
        pa = pyaudio.PyAudio()
    if captured.noise:
        log.debug("PortAudio initialisation printed %d lines of library noise", len(captured.noise))
    return pa


@contextlib.contextmanager
def portaudio(pa: pyaudio.PyAudio | None = None) -> Iterator[pyaudio.PyAudio]:
    """Yield ``pa``, or a fresh PortAudio instance that is terminated afterwards."""
    if pa is not None:
        yield pa
        return
    own = new_pyaudio()
    try:
        yield own
    finally:
        with PORTAUDIO_LOCK, quiet_native_stderr():
            own.terminate()
