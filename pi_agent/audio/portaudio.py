"""PortAudio's blocking input streams, called directly: what PyAudio does not pass on.

PyAudio opens every stream with the device's *low* suggested latency: on ALSA a capture
buffer of two periods (40 ms with the microphone's 20 ms periods). A reader that waits
longer than that between reads loses samples, so with PyAudio the microphone has to be
served 50 times a second even while nobody speaks. PortAudio itself can do better: a
stream opened with a long ``suggestedLatency`` (and, on ALSA, enough periods:
``PaAlsa_SetNumPeriods``) keeps 20 ms periods, so a blocking read of one period returns
20 ms after the period began, *and* holds a second of audio, so a reader may also come
by only a few times a second and take several frames at once (see
:class:`~pi_agent.audio.capture.PyAudioInput`).

This module calls the ``libportaudio`` PyAudio is linked with, through ctypes: one
PortAudio in the process, which PyAudio initialises and whose device indices both use.
:func:`library` checks that it is that one (a PyAudio built with PortAudio inside it has
no shared library to share); without it the microphone reads PyAudio's own blocking
stream instead, every period. ctypes releases the GIL around every call, so a read that
waits for the device does not hold up the event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

PA_INT16 = 0x00000008  # paInt16
PA_CLIP_OFF = 0x00000001  # paClipOff: int16 in, int16 out, nothing to clip
PA_INPUT_OVERFLOWED = -9981  # paInputOverflowed: the read is good, but samples were lost before it
PA_NOT_INITIALIZED = -10000


class _StreamParameters(ctypes.Structure):
    _fields_ = [
        ("device", ctypes.c_int),
        ("channelCount", ctypes.c_int),
        ("sampleFormat", ctypes.c_ulong),
        ("suggestedLatency", ctypes.c_double),
        ("hostApiSpecificStreamInfo", ctypes.c_void_p),
    ]


class _StreamInfo(ctypes.Structure):
    _fields_ = [
        ("structVersion", ctypes.c_int),
        ("inputLatency", ctypes.c_double),
        ("outputLatency", ctypes.c_double),
        ("sampleRate", ctypes.c_double),
    ]


class _DeviceInfo(ctypes.Structure):
    _fields_ = [  # the head of PaDeviceInfo: all that is read
        ("structVersion", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("hostApi", ctypes.c_int),
        ("maxInputChannels", ctypes.c_int),
        ("maxOutputChannels", ctypes.c_int),
    ]


class PortAudioError(OSError):
    """A PortAudio call failed: ``args`` are ``(code, PortAudio's text)``, as PyAudio's errors."""


class Library:
    """The PortAudio calls the blocking input stream and the format probe need."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        stream = ctypes.c_void_p
        self._declare("Pa_OpenStream", ctypes.c_int,
                      [ctypes.POINTER(stream), ctypes.POINTER(_StreamParameters), ctypes.POINTER(_StreamParameters),
                       ctypes.c_double, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p])
        for name in ("Pa_StartStream", "Pa_StopStream", "Pa_AbortStream", "Pa_CloseStream", "Pa_IsStreamActive"):
            self._declare(name, ctypes.c_int, [stream])
        self._declare("Pa_ReadStream", ctypes.c_int, [stream, ctypes.c_void_p, ctypes.c_ulong])
        self._declare("Pa_GetStreamReadAvailable", ctypes.c_long, [stream])
        self._declare("Pa_GetStreamInfo", ctypes.POINTER(_StreamInfo), [stream])
        self._declare("Pa_GetErrorText", ctypes.c_char_p, [ctypes.c_int])
        self._declare("Pa_GetDeviceCount", ctypes.c_int, [])
        self._declare("Pa_GetDeviceInfo", ctypes.POINTER(_DeviceInfo), [ctypes.c_int])
        params = ctypes.POINTER(_StreamParameters)
        self._declare("Pa_IsFormatSupported", ctypes.c_int, [params, params, ctypes.c_double])
        self.set_num_periods = None
        with contextlib.suppress(AttributeError):  # ALSA builds only
            self._declare("PaAlsa_SetNumPeriods", ctypes.c_int, [ctypes.c_int])
            self.set_num_periods = lib.PaAlsa_SetNumPeriods

    def _declare(self, name: str, restype: Any, argtypes: list[Any]) -> None:
        fn = getattr(self._lib, name)
        fn.restype, fn.argtypes = restype, argtypes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)

    def error(self, code: int, what: str) -> PortAudioError:
        text = self._lib.Pa_GetErrorText(code)
        return PortAudioError(code, f"{what}: {text.decode(errors='replace') if text else 'error'}")

    def is_format_supported(self, index: int, kind: str, rate: int, channels: int) -> bool:
        """Whether device ``index`` opens with s16 at ``rate`` and ``channels`` in direction
        ``kind`` (``"input"`` or ``"output"``). PyAudio's own ``is_format_supported`` holds the
        GIL while PortAudio opens the device to try it, so a sound server that stopped
        answering froze every thread of the daemon, the event loop with it; here ctypes lets go."""
        params = ctypes.byref(_StreamParameters(index, channels, PA_INT16, 0.0, None))
        inp, out = (params, None) if kind == "input" else (None, params)
        return int(self._lib.Pa_IsFormatSupported(inp, out, float(rate))) == 0

    def device_name(self, index: int) -> str | None:
        info = self._lib.Pa_GetDeviceInfo(index)
        if not info:
            return None
        name: bytes | None = info.contents.name
        return name.decode(errors="replace") if name is not None else None


_library: Library | None = None
_looked = False


def _loaded_path() -> str | None:
    """The libportaudio already mapped into this process (PyAudio's), if any."""
    try:
        with open(f"/proc/{os.getpid()}/maps") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if "/libportaudio.so" in path:
                    return path
    except OSError:
        pass
    return None


def library() -> Library | None:
    """PyAudio's PortAudio, through ctypes; None if PyAudio has no shared one to share.

    Call after PyAudio initialised PortAudio (``pyaudio.PyAudio()``): a library that is
    not initialised is not PyAudio's.
    """
    global _library, _looked
    if _looked:
        return _library
    import pyaudio  # noqa: F401  (loads PyAudio's PortAudio first, so that it is the one found mapped)

    path = _loaded_path() or ctypes.util.find_library("portaudio")
    lib: Library | None = None
    if path is not None:
        try:
            lib = Library(ctypes.CDLL(path))
        except (OSError, AttributeError) as exc:
            log.debug("PortAudio at %s is not usable through ctypes: %r", path, exc)
            lib = None
    if lib is not None and lib.Pa_GetDeviceCount() == PA_NOT_INITIALIZED:
        log.debug("the PortAudio at %s is not PyAudio's (not initialised)", path)
        lib = None
    _library, _looked = lib, True
    return lib


class BlockingInput:
    """A PortAudio input stream in blocking mode with a long buffer and short periods.

    ``period`` frames per host period (the device wakes a waiting reader once per
    period), ``buffer_seconds`` of audio held for a reader that comes by less often.
    Reads happen on one thread (the reader's); :meth:`is_active` may be called from
    any thread. Open it under :data:`~pi_agent.audio.native.PORTAUDIO_LOCK` (the
    number of ALSA periods is a setting of the whole library, restored at once).
    """

    def __init__(self, lib: Library, index: int, *, channels: int, rate: int, period: int,
                 buffer_seconds: float) -> None:
        self._lib = lib
        self.channels = channels
        self.rate = rate
        self.period = period
        params = _StreamParameters(index, channels, PA_INT16, buffer_seconds, None)
        stream = ctypes.c_void_p()
        periods = max(2, round(buffer_seconds * rate / period))
        if lib.set_num_periods is not None:
            lib.set_num_periods(periods)
        try:
            code = lib.Pa_OpenStream(ctypes.byref(stream), ctypes.byref(params), None, float(rate), period,
                                     PA_CLIP_OFF, None, None)
        finally:
            if lib.set_num_periods is not None:
                lib.set_num_periods(4)  # PortAudio's default, for every other stream
        if code != 0:
            raise lib.error(code, "Pa_OpenStream")
        self._stream: ctypes.c_void_p | None = stream
        info = lib.Pa_GetStreamInfo(stream)
        self.latency = float(info.contents.inputLatency) if info else 0.0
        """PortAudio's input latency: about the buffer's length."""
        self.capacity = max(period, int(self.latency * rate) + period)
        self._buffer = ctypes.create_string_buffer(self.capacity * channels * 2)

    def start(self) -> None:
        code = self._lib.Pa_StartStream(self._require())
        if code != 0:
            raise self._lib.error(code, "Pa_StartStream")

    def available(self) -> int:
        """Frames that a read returns without waiting (PortAudio error: raises)."""
        n = int(self._lib.Pa_GetStreamReadAvailable(self._require()))
        if n < 0:
            raise self._lib.error(n, "Pa_GetStreamReadAvailable")
        return n

    def read(self, frames: int) -> tuple[memoryview, bool]:
        """Read ``frames`` (at most :attr:`capacity`), waiting for them if need be.

        Returns interleaved s16le (a view of a buffer the next read reuses) and whether
        samples were lost before this read (the reader came too late).
        """
        frames = min(frames, self.capacity)
        code = self._lib.Pa_ReadStream(self._require(), self._buffer, frames)
        if code not in (0, PA_INPUT_OVERFLOWED):
            raise self._lib.error(code, "Pa_ReadStream")
        return memoryview(self._buffer)[: frames * self.channels * 2], code == PA_INPUT_OVERFLOWED

    def is_active(self) -> bool:
        stream = self._stream
        return stream is not None and self._lib.Pa_IsStreamActive(stream) == 1

    def close(self) -> None:
        """Abort and close (no read may be under way). Idempotent."""
        stream, self._stream = self._stream, None
        if stream is not None:
            self._lib.Pa_AbortStream(stream)
            code = self._lib.Pa_CloseStream(stream)
            if code != 0:
                raise self._lib.error(code, "Pa_CloseStream")

    def _require(self) -> ctypes.c_void_p:
        if self._stream is None:
            raise PortAudioError(-9988, "the stream is closed")  # paBadStreamPtr
        return self._stream
