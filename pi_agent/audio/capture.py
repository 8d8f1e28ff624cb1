"""Microphone capture with PyAudio in callback mode.

The PortAudio thread converts each device buffer to 16 kHz mono (picking a
channel or mixing all, resampling streaming with soxr when the device will not
open at 16 kHz) and slices it into 20 ms frames. Frames go into a bounded deque;
one ``loop.call_soon_threadsafe`` wake-up per batch lets the event loop drain it
and call ``on_frame`` on its own thread. If the loop falls behind, the oldest
frames are dropped and counted in :attr:`PyAudioInput.overflows`, together with
PortAudio's own input-overflow flags; neither is fatal.

A dead device (PortAudio stops the stream, or callbacks stop coming) is
reported once through ``on_error`` by a :class:`~.devices.StreamGuard`; the owner
closes and opens again, and ``open`` resolves the name afresh.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import pyaudio

from ..errors import DeviceError, InternalError
from . import FRAME_MS, MIC_RATE, ErrorCallback, FrameCallback
from .devices import CallbackDevice, negotiate, open_stream, resolve, unique
from .formats import MicPipeline

log = logging.getLogger(__name__)


class PyAudioInput(CallbackDevice):
    """A PortAudio microphone that delivers 20 ms frames of 16 kHz mono s16le on the loop.

    ``device``: a device name, a unique part of one, or ``default``.
    ``channel``: 0-based input channel to use; ``None`` mixes all channels.
    ``pa``: a PyAudio instance to use (not terminated on close); by default one is
    created on every open and terminated on close (PortAudio re-lists devices only once no
    instance is left: the daemon closes the other device briefly when one is not found).
    ``rate`` / ``channels``: force the device format instead of negotiating it
    (16 kHz when accepted, else the device's native rate resampled with soxr).
    ``period_ms``: device buffer length. ``max_queue_frames``: frames held for a
    busy loop before the oldest are dropped.
    """

    noun = "microphone"

    def __init__(
        self,
        device: str = "default",
        *,
        channel: int | None = None,
        pa: pyaudio.PyAudio | None = None,
        rate: int | None = None,
        channels: int | None = None,
        period_ms: int = FRAME_MS,
        max_queue_frames: int = 50,
        stall_timeout: float = 0.5,
        start_timeout: float = 3.0,
        open_timeout: float = 10.0,
        close_timeout: float = 3.0,
        quality: str = "HQ",
    ):
        if channel is not None and channel < 0:
            raise ValueError(f"channel must be >= 0, got {channel}")
        super().__init__(
            device,
            pa=pa,
            rate=rate,
            channels=channels,
            period_ms=period_ms,
            stall_timeout=stall_timeout,
            start_timeout=start_timeout,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            quality=quality,
        )
        self.channel = channel
        self.overflows = 0
        """PortAudio input-overflow flags plus frames dropped because the loop fell behind."""
        self.frames = 0
        """Frames delivered to ``on_frame`` since construction."""

        self._queue: deque[bytes] = deque(maxlen=max(1, max_queue_frames))
        self._on_frame: FrameCallback | None = None
        self._pipeline: MicPipeline | None = None
        self._wake_pending = False
        self._running = False

    # ------------------------------------------------------------------ open / close

    async def open(self, on_frame: FrameCallback, on_error: ErrorCallback) -> None:
        """Resolve the device, open it and start delivering frames to ``on_frame``."""
        if self._stream is not None:
            raise InternalError(f"{self.what} is already open")
        self._on_frame = on_frame
        self._queue.clear()
        self._wake_pending = False
        self._running = True
        try:
            await self._open_stream(on_error)
        except BaseException:
            self._running = False
            raise
        log.info(
            "%s open: %r at %d Hz x%d (%s), %d ms buffers",
            self.what,
            self.device.name if self.device else "?",
            self.rate or 0,
            self.channels or 0,
            "mix" if self.channel is None else f"channel {self.channel}",
            self.period_ms,
        )

    def _make_stream(self, pa: pyaudio.PyAudio) -> Any:
        info = resolve(self.device_name, "input", pa=pa)
        need = 1 if self.channel is None else self.channel + 1
        if info.max_input_channels < need:
            raise DeviceError(
                f"{self.what}: channel {self.channel} requested but {info.name!r} "
                f"has {info.max_input_channels} input channel(s)"
            )
        if self.forced_channels:
            channel_choices = [self.forced_channels]
        else:
            channel_choices = [
                c for c in unique([need, max(need, 2), info.max_input_channels]) if c <= info.max_input_channels
            ]
        rate_choices = (
            [self.forced_rate] if self.forced_rate
            else unique([MIC_RATE, int(info.default_rate), 48_000, 44_100, 32_000])
        )
        rate, channels = negotiate(pa, info, "input", rates=rate_choices, channels=channel_choices)
        if self.channel is not None and self.channel >= channels:
            raise DeviceError(f"{self.what}: channel {self.channel} does not exist at {channels} channels")
        self._pipeline = MicPipeline(rate, channels, channel=self.channel, quality=self.quality)
        self.device, self.rate, self.channels = info, rate, channels
        return open_stream(
            pa,
            f"{self.what} ({info.name!r} at {rate} Hz x{channels})",
            format=pyaudio.paInt16,
            channels=channels,
            rate=rate,
            input=True,
            input_device_index=info.index,
            frames_per_buffer=max(1, rate * self.period_ms // 1000),
            stream_callback=self._callback,
        )

    async def close(self) -> None:
        """Stop and release the device. Idempotent, safe after a failure, never raises."""
        self._running = False
        self._queue.clear()
        await self._close_stream()

    # ------------------------------------------------------------------ audio thread

    def _callback(self, in_data: bytes | None, frame_count: int, time_info: dict[str, float],
                  status: int) -> tuple[None, int]:
        guard = self._guard
        if guard is not None:
            guard.tick()
        if not self._running or self._broken or in_data is None:
            return None, pyaudio.paContinue
        try:
            if status & pyaudio.paInputOverflow:
                self.overflows += 1
            pipeline = self._pipeline
            if pipeline is None:
                return None, pyaudio.paContinue
            frames = pipeline.feed(in_data)
            if frames:
                queue = self._queue
                for frame in frames:
                    if len(queue) == queue.maxlen:
                        self.overflows += 1  # the append below drops the oldest frame
                    queue.append(frame)
                if not self._wake_pending and self._loop is not None:
                    self._wake_pending = True
                    self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody to deliver to
            self._broken = True
        except Exception as exc:  # never let the audio thread die silently
            self._broken = True
            if guard is not None:
                guard.fail_threadsafe(DeviceError(f"{self.what}: processing failed: {exc!r}"))
        return None, pyaudio.paContinue

    # ------------------------------------------------------------------ loop thread

    def _drain(self) -> None:
        self._wake_pending = False
        queue = self._queue
        on_frame = self._on_frame
        while queue and self._running and on_frame is not None:
            try:
                frame = queue.popleft()
            except IndexError:
                break
            self.frames += 1
            try:
                on_frame(frame)
            except Exception:
                log.exception("on_frame handler raised for %s", self.what)
