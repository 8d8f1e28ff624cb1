"""WAV-file microphone and speaker behind the same seams, for the demo and tests.

:class:`WavFileInput` behaves like a real microphone: it delivers 20 ms frames
of 16 kHz mono paced in real time by the event loop (scheduled against the
loop clock, so there is no drift), and after the file ends it goes on
delivering silence (or starts the file again with ``loop=True``). It tells when
the file has been fully "spoken" (:attr:`WavFileInput.finished_at`,
:meth:`WavFileInput.wait_finished`).

:class:`WavFileOutput` behaves like a speaker: a loop timer pulls one period at
a time from the same :class:`~.buffer.PlaybackBuffer` the PortAudio output
uses, so ``audible_until()``, underruns, flush and earcons behave as on a device.
Everything it "played" from ``open()`` on — silence included — is written to a
WAV file at ``rate``, so sample ``n`` of the file was heard ``n / rate`` seconds
after :attr:`WavFileOutput.opened_at`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import wave
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DeviceError, InternalError
from . import FRAME_BYTES, FRAME_MS, FRAME_SAMPLES, MIC_RATE, ErrorCallback, FrameCallback
from .earcons import EARCON_NAMES
from .formats import resample, to_mono
from .output import BufferedOutput

log = logging.getLogger(__name__)

_FORMAT_PCM = 1
_FORMAT_FLOAT = 3
_FORMAT_EXTENSIBLE = 0xFFFE


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file as int16 ``[frame, channel]`` samples and its rate.

    Handles integer PCM (8, 16, 24, 32 bit), IEEE float (32, 64 bit) and
    WAVE_FORMAT_EXTENSIBLE. Raises ``ValueError`` with the reason otherwise.
    """
    data = Path(path).read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    payload: bytes | None = None
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise ValueError(f"{path}: truncated fmt chunk")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == _FORMAT_EXTENSIBLE and len(body) >= 26:
                (tag,) = struct.unpack_from("<H", body, 24)
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            payload = body  # a streamed WAV may claim more than the file holds
        pos += 8 + size + (size & 1)
    if fmt is None or payload is None:
        raise ValueError(f"{path}: missing fmt or data chunk")
    tag, channels, rate, bits = fmt
    if channels < 1 or rate < 1:
        raise ValueError(f"{path}: invalid header ({channels} channels at {rate} Hz)")
    width = bits // 8
    usable = len(payload) - len(payload) % (width * channels)
    raw = payload[:usable]
    if tag == _FORMAT_PCM and bits == 8:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8
    elif tag == _FORMAT_PCM and bits == 16:
        x = np.frombuffer(raw, dtype="<i2").astype(np.int16)
    elif tag == _FORMAT_PCM and bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        x = ((b[:, 2].astype(np.int8).astype(np.int32) << 8) | b[:, 1]).astype(np.int16)
    elif tag == _FORMAT_PCM and bits == 32:
        x = (np.frombuffer(raw, dtype="<i4") >> 16).astype(np.int16)
    elif tag == _FORMAT_FLOAT and bits in (32, 64):
        f = np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8")
        x = np.clip(np.round(f * 32767.0), -32768, 32767).astype(np.int16)
    else:
        raise ValueError(f"{path}: unsupported WAV encoding (format tag {tag:#x}, {bits} bits)")
    return x.reshape(-1, channels), rate


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    """Write int16 mono (or ``[frame, channel]``) samples as a 16-bit PCM WAV."""
    x = np.asarray(samples, dtype=np.int16)
    channels = 1 if x.ndim == 1 else x.shape[1]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(x.astype("<i2").tobytes())


def load_mic_audio(path: str | Path, *, channel: int | None = None) -> np.ndarray:
    """A WAV file as 16 kHz mono int16 (channel picked or mixed, resampled with soxr)."""
    frames, rate = read_wav(path)
    if channel is not None and channel >= frames.shape[1]:
        raise ValueError(f"{path}: channel {channel} requested but the file has {frames.shape[1]}")
    return resample(to_mono(frames, channel), rate, MIC_RATE)


class WavFileInput:
    """A microphone that "speaks" a WAV file in real time, then stays silent (or loops).

    Any rate and channel count is accepted (mixed to mono, resampled to 16 kHz).
    ``lead_in`` seconds of silence come before the file. If the loop is blocked,
    owed frames are delivered at once, up to ``max_catch_up`` frames; older ones
    are dropped and counted in :attr:`overflows`, as a real capture queue would.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        loop: bool = False,
        lead_in: float = 0.0,
        channel: int | None = None,
        max_catch_up: int = 50,
    ):
        self.path = Path(path)
        self.loop = loop
        self.lead_in = lead_in
        self.channel = channel
        self.max_catch_up = max(1, max_catch_up)
        self.overflows = 0
        self.frames = 0
        """Frames delivered since open."""
        self.finished_at: float | None = None
        """``time.monotonic()`` when the last frame of the file (first pass) was delivered."""
        self.speech_frames = 0
        """Frames of file audio (lead-in excluded), known after open."""
        self._audio = np.zeros(0, dtype=np.int16)
        self._lead_frames = 0
        self._event: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._on_frame: FrameCallback | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._sent = 0
        self._silence = bytes(FRAME_BYTES)

    @property
    def duration(self) -> float:
        """Seconds of file audio (after open)."""
        return self.speech_frames * FRAME_MS / 1000

    @property
    def finished(self) -> bool:
        """Whether the whole file has been delivered once."""
        return self.finished_at is not None

    async def open(self, on_frame: FrameCallback, on_error: ErrorCallback) -> None:
        """Read the file and start delivering frames; a bad file raises :class:`DeviceError`."""
        if self._timer is not None:
            raise InternalError(f"WAV microphone {self.path} is already open")
        try:
            mono = load_mic_audio(self.path, channel=self.channel)
        except (OSError, ValueError) as exc:
            raise DeviceError(f"cannot use {self.path} as microphone: {exc}") from exc
        pad = (-len(mono)) % FRAME_SAMPLES
        self._audio = np.concatenate([mono, np.zeros(pad, dtype=np.int16)]).astype("<i2")
        self.speech_frames = len(self._audio) // FRAME_SAMPLES
        self._lead_frames = round(self.lead_in * 1000 / FRAME_MS)
        self._loop = asyncio.get_running_loop()
        self._on_frame = on_frame
        self._event = asyncio.Event()
        self.finished_at = None
        self._sent = 0
        self._t0 = self._loop.time()
        self._schedule()
        log.info("WAV microphone %s open: %.2f s of audio", self.path, self.duration)

    async def close(self) -> None:
        """Stop delivering frames. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_frame = None

    async def wait_finished(self) -> float:
        """Wait until the whole file has been delivered once; return :attr:`finished_at`."""
        if self._event is None:
            raise InternalError("WavFileInput.wait_finished() before open()")
        await self._event.wait()
        return self.finished_at or 0.0

    def _frame(self, index: int) -> bytes:
        k = index - self._lead_frames
        if k < 0 or self.speech_frames == 0:
            return self._silence
        if k >= self.speech_frames:
            if not self.loop:
                return self._silence
            k %= self.speech_frames
        return self._audio[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES].tobytes()

    def _schedule(self) -> None:
        if self._loop is None:
            return
        when = self._t0 + (self._sent + 1) * FRAME_MS / 1000
        self._timer = self._loop.call_at(when, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        if loop is None or self._on_frame is None:
            return
        due = int((loop.time() - self._t0) * 1000 / FRAME_MS + 1e-6)
        owed = due - self._sent
        if owed > self.max_catch_up:
            self.overflows += owed - self.max_catch_up
            self._sent = due - self.max_catch_up
        last_speech = self._lead_frames + self.speech_frames
        while self._sent < due and self._on_frame is not None:
            index = self._sent
            frame = self._frame(index)
            self._sent += 1
            self.frames += 1
            try:
                self._on_frame(frame)
            except Exception:
                log.exception("on_frame handler raised for WAV microphone %s", self.path)
            if self._sent >= last_speech and self.finished_at is None:
                self.finished_at = time.monotonic()
                if self._event is not None:
                    self._event.set()
        if self._on_frame is not None:
            self._schedule()


class WavFileOutput(BufferedOutput):
    """A speaker that records what it plays, paced in real time, to a mono WAV at ``rate``.

    One period of ``period_ms`` is pulled from the shared playback buffer per loop
    tick; if the loop was blocked the owed periods are pulled at once, so the file
    stays a true timeline from :attr:`opened_at`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rate: int = 16_000,
        period_ms: int = 20,
        earcons: Iterable[str] = EARCON_NAMES,
        underrun_gap: float = 1.0,
        quality: str = "HQ",
    ):
        super().__init__(earcons)
        self.path = Path(path)
        self.rate = int(rate)
        self.channels = 1
        self.period_ms = period_ms
        self.underrun_gap = underrun_gap
        self.quality = quality
        self.opened_at: float | None = None
        """``time.monotonic()`` at which sample 0 of the file was "heard"."""
        self.frames_written = 0
        self._period = max(1, self.rate * period_ms // 1000)
        self._writer: wave.Wave_write | None = None
        self._file: BinaryIO | None = None
        self._pending: list[bytes] = []
        self._pending_frames = 0
        self._timer: asyncio.TimerHandle | None = None
        self._on_error: ErrorCallback | None = None
        self._loop_t0 = 0.0
        self._mono_t0 = 0.0
        self._pulled = 0

    async def open(self, on_error: ErrorCallback) -> None:
        """Create the WAV file and start pulling periods; a bad path raises :class:`DeviceError`."""
        if self._writer is not None:
            raise InternalError(f"WAV speaker {self.path} is already open")
        try:
            # opened here: wave.open() leaks a half-built object on errors; file and writer stay open
            # until close(), so no with-block
            file = open(self.path, "wb")  # noqa: SIM115
        except OSError as exc:
            raise DeviceError(f"cannot record speaker output to {self.path}: {exc}") from exc
        writer = wave.open(file, "wb")  # noqa: SIM115
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(self.rate)
        self._file = file
        self._writer = writer
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._buffer = self._make_buffer(
            self.rate, 1, latency=0.0, underrun_gap=self.underrun_gap, quality=self.quality
        )
        self.frames_written = 0
        self._pulled = 0
        self._loop_t0 = self._loop.time()
        self._mono_t0 = time.monotonic()
        self.opened_at = self._mono_t0
        self._tick()
        log.info("WAV speaker %s open at %d Hz", self.path, self.rate)

    async def close(self) -> None:
        """Stop, write out and finalise the WAV file. Idempotent, never raises."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._drop_buffer()
        writer, self._writer = self._writer, None
        file, self._file = self._file, None
        if writer is None:
            return
        try:
            self._write_pending(writer)
            writer.close()
        except (OSError, wave.Error) as exc:
            log.warning("finishing %s: %s", self.path, exc)
        finally:
            if file is not None:
                file.close()

    def _tick(self) -> None:
        self._timer = None
        loop, buf, writer = self._loop, self._buffer, self._writer
        if loop is None or buf is None or writer is None:
            return
        period_s = self._period / self.rate
        due = int((loop.time() - self._loop_t0) / period_s + 1e-6) + 1
        while self._pulled < due:
            start = self._mono_t0 + self._pulled * period_s
            self._pending.append(buf.fill(self._period, start)[:, 0].astype("<i2").tobytes())
            self._pending_frames += self._period
            self._pulled += 1
        if self._pending_frames >= self.rate // 4:
            try:
                self._write_pending(writer)
            except (OSError, wave.Error) as exc:
                self._fail(DeviceError(f"cannot write {self.path}: {exc}"))
                return
        self._timer = loop.call_at(self._loop_t0 + self._pulled * period_s, self._tick)

    def _write_pending(self, writer: wave.Wave_write) -> None:
        if self._pending:
            writer.writeframes(b"".join(self._pending))
            self.frames_written += self._pending_frames
            self._pending.clear()
            self._pending_frames = 0

    def _fail(self, error: DeviceError) -> None:
        log.error("%s", error)
        handler, self._on_error = self._on_error, None
        if handler is not None:
            try:
                handler(error)
            except Exception:
                log.exception("on_error handler raised for WAV speaker %s", self.path)
