"""The microphone's two blocking input streams, behind the one face its reader thread reads.

:class:`DirectSource` is the stream opened through :mod:`.portaudio`, with about a second
of buffer: the reader may come by seldom and take several frames at once (``batches``).
:class:`PyAudioSource` is PyAudio's own blocking stream, used without a shared
``libportaudio``: two periods of buffer, so it is read every period. Both have ``period``
(device frames a read takes at low latency) and ``start``, ``available``, ``read`` (the
data, and whether samples were lost before it), ``is_active`` and ``close``;
:mod:`.capture` picks one at open.
"""

from __future__ import annotations

from typing import Any

from . import portaudio as pa_direct


class DirectSource:
    """The stream opened through :mod:`.portaudio`: a long buffer, so it may be read seldom."""

    batches = True

    def __init__(self, stream: pa_direct.BlockingInput, step: int) -> None:
        self._stream = stream
        self.period = step

    def start(self) -> None:
        self._stream.start()

    def available(self) -> int:
        return self._stream.available()

    def read(self, frames: int) -> tuple[bytes | memoryview, bool]:
        return self._stream.read(frames)

    def is_active(self) -> bool:
        return self._stream.is_active()

    def close(self) -> None:
        self._stream.close()


class PyAudioSource:
    """PyAudio's own blocking stream: two periods of buffer, so it is read every period."""

    batches = False

    def __init__(self, stream: Any, period: int) -> None:
        self._stream = stream
        self.period = period

    def start(self) -> None:
        self._stream.start_stream()

    def available(self) -> int:
        return int(self._stream.get_read_available())

    def read(self, frames: int) -> tuple[bytes | memoryview, bool]:
        return self._stream.read(frames, exception_on_overflow=False), False

    def is_active(self) -> bool:
        return bool(self._stream.is_active())

    def close(self) -> None:
        self._stream.close()
