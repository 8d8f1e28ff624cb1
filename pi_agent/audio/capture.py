"""Microphone capture: a PortAudio input stream read by a thread of its own.

The stream runs in blocking mode with 10 ms periods and about a second of buffer
(:mod:`.portaudio`: PyAudio cannot ask for the buffer). A reader thread reads it in one
of two ways, switched at once from the loop (:meth:`PyAudioInput.set_low_latency`; the
daemon follows its state):

- **low latency** (someone speaks, or is being answered): one blocking read per 20 ms
  frame, so a frame reaches the loop as soon as the device has it whole;
- **idle** (nobody speaks): a read every ``idle_read_ms``, of everything that came
  meanwhile, handed to the loop in one go: a few wake-ups a second instead of fifty.
  The device's buffer holds the frames in between, so no sample is lost by switching.

The reader converts what it read to 16 kHz mono (picking a channel or mixing all,
resampling streaming with soxr when the device will not open at 16 kHz) and slices it
into 20 ms frames. Frames go into a bounded deque; one wake-up per read lets the event
loop drain it and call ``on_frame`` on its own thread. The wake-up is an ``eventfd`` the
loop watches (one write on the reader, one read on the loop: measured with
``scripts/bench.py frame``, about half of what ``loop.call_soon_threadsafe`` costs, whose
self-pipe takes a send, two receives and a handle each time); where there is no eventfd
(not Linux) it is ``call_soon_threadsafe``.
If the loop falls behind, the oldest frames are dropped and counted in
:attr:`PyAudioInput.overflows`, together with the device's own overruns (the reader
came too late); neither is fatal.

A dead device (a read fails, or reads stop coming) is reported once through
``on_error`` by a :class:`~.guard.StreamGuard`; the owner closes and opens again, and
``open`` resolves the name afresh. Without a shared ``libportaudio`` (a PyAudio built
with PortAudio inside it) the reader reads PyAudio's own blocking stream, whose buffer
is two periods: every period, idle or not. The two kinds of stream are in :mod:`.capture_streams`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections import deque
from typing import Any

import pyaudio

from ..errors import DeviceError, InternalError
from ..threads import run_blocking
from . import FRAME_MS, MIC_RATE, ErrorCallback, FrameCallback
from . import portaudio as pa_direct
from .capture_streams import DirectSource, PyAudioSource
from .formats import MicPipeline
from .listing import negotiate, resolve, unique
from .native import PORTAUDIO_LOCK
from .streams import CallbackDevice, close_quietly, open_stream

log = logging.getLogger(__name__)

BUFFER_SECONDS = 1.0  # of audio the device holds for an idle reader
READER_JOIN = 0.5  # s closing waits for the reader before leaving the stream to it


class _Capture:
    """A microphone stream and the thread that reads it. The object the device base class
    starts (``start_stream``), watches (``is_active``) and closes (``close``)."""

    def __init__(self, source: DirectSource | PyAudioSource, owner: PyAudioInput) -> None:
        self.source = source
        self._owner = owner
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._abandoned = False
        self._abandoned_pa: pyaudio.PyAudio | None = None
        self._thread = threading.Thread(target=self._run, name=f"pi-agent: {owner.what} reader", daemon=True)

    # any thread
    def start_stream(self) -> None:
        self.source.start()
        self._thread.start()

    def is_active(self) -> bool:
        return self.source.is_active() and self._thread.is_alive()

    def wake(self) -> None:
        """Read now, and every period from now on if the owner asks for low latency."""
        self._wake.set()

    def stop_reader(self, timeout: float) -> bool:
        """Ask the reader to stop and wait for it; False if it is still inside a read."""
        self._halt.set()
        self._wake.set()
        if self._thread.ident is None:  # never started
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abandon(self, pa: pyaudio.PyAudio | None) -> None:
        """The reader is stuck in a read (a frozen sound server): it closes the stream, and
        terminates ``pa``, when that read returns. Nobody else may touch them meanwhile."""
        self._abandoned_pa = pa
        self._abandoned = True

    def close(self) -> None:
        if self.stop_reader(READER_JOIN):
            self.source.close()
        else:  # pragma: no cover - the owner stops the reader first (see PyAudioInput._close_stream)
            self.abandon(None)

    # the reader thread
    def _run(self) -> None:
        source, owner = self.source, self._owner
        period = source.period
        try:
            while not self._halt.is_set():
                if owner.low_latency or not source.batches:
                    # What completes the next frame, and no more: a frame goes out the moment its
                    # last sample is read (a backlog comes a frame per read).
                    frames = owner._to_next_frame(period)
                else:
                    self._wake.wait(owner.idle_read)
                    self._wake.clear()
                    if self._halt.is_set():
                        break
                    frames = source.available() // period * period  # whole frames: none left half read
                    if frames <= 0:
                        continue  # nothing came: the guard sees reads stop
                data, lost = source.read(frames)
                if self._halt.is_set():
                    break
                owner._deliver(data, lost)
        except Exception as exc:  # a device gone: PortAudio says so here
            owner._read_failed(exc)
        finally:
            if self._abandoned:
                log.info("%s: the read that held up closing returned; closing the stream now", owner.what)
                with PORTAUDIO_LOCK, contextlib.suppress(Exception):
                    source.close()
                close_quietly(None, self._abandoned_pa, owner.what)


class PyAudioInput(CallbackDevice):
    """A PortAudio microphone that delivers 20 ms frames of 16 kHz mono s16le on the loop.

    ``device``: a device name, a unique part of one, or ``default``.
    ``channel``: 0-based input channel to use; ``None`` mixes all channels.
    ``pa``: a PyAudio instance to use (not terminated on close); by default one is
    created on every open and terminated on close (PortAudio re-lists devices only once no
    instance is left: the daemon closes the other device briefly when one is not found).
    ``rate`` / ``channels``: force the device format instead of negotiating it
    (16 kHz when accepted, else the device's native rate resampled with soxr).
    ``period_ms``: device period (the reader's step at low latency). ``idle_read_ms``:
    how often the reader comes by while not at low latency (see the module docstring);
    it starts at low latency. ``max_queue_frames``: frames held for a busy loop before
    the oldest are dropped.
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
        idle_read_ms: int = 200,
        max_queue_frames: int = 50,
        stall_timeout: float = 0.5,
        start_timeout: float = 3.0,
        open_timeout: float = 10.0,
        close_timeout: float = 3.0,
        quality: str = "HQ",
    ):
        if channel is not None and channel < 0:
            raise ValueError(f"channel must be >= 0, got {channel}")
        idle_read = max(period_ms, idle_read_ms) / 1000
        if idle_read >= BUFFER_SECONDS / 2:
            raise ValueError(f"idle_read_ms must be below {BUFFER_SECONDS * 500:g}, got {idle_read_ms}")
        super().__init__(
            device,
            pa=pa,
            rate=rate,
            channels=channels,
            period_ms=period_ms,
            stall_timeout=max(stall_timeout, idle_read + 0.3),  # an idle reader comes by every idle_read
            start_timeout=start_timeout,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            quality=quality,
        )
        self.channel = channel
        self.idle_read = idle_read
        """Seconds between two reads while not at low latency."""
        self.low_latency = True
        """A read every period (True) or every :attr:`idle_read` (False); see :meth:`set_low_latency`."""
        self.overflows = 0
        """Samples lost before a read (the reader came too late) plus frames dropped because the
        loop fell behind."""
        self.frames = 0
        """Frames delivered to ``on_frame`` since construction."""
        self.batched = False
        """Whether the open stream can be read seldom (False: PyAudio's own stream, read every period)."""

        self._batch = max(1, round(idle_read * 1000 / FRAME_MS))
        self._queue: deque[bytes] = deque(maxlen=max(max_queue_frames, 3 * self._batch))
        self._on_frame: FrameCallback | None = None
        self._pipeline: MicPipeline | None = None
        self._wake_pending = False
        self._running = False
        self._wake_fd: int | None = None  # the eventfd the reader wakes the loop with (None: call_soon_threadsafe)
        self._watching: asyncio.AbstractEventLoop | None = None  # the loop that watches it

    # ------------------------------------------------------------------ open / close

    async def open(self, on_frame: FrameCallback, on_error: ErrorCallback) -> None:
        """Resolve the device, open it and start delivering frames to ``on_frame``."""
        if self._stream is not None:
            raise InternalError(f"{self.what} is already open")
        self._on_frame = on_frame
        self._queue.clear()
        self._wake_pending = False
        self._running = True
        self._watch(asyncio.get_running_loop())
        try:
            await self._open_stream(on_error)
        except BaseException:
            self._running = False
            self._unwatch()
            raise
        log.info(
            "%s open: %r at %d Hz x%d (%s), %d ms periods, %s",
            self.what,
            self.device.name if self.device else "?",
            self.rate or 0,
            self.channels or 0,
            "mix" if self.channel is None else f"channel {self.channel}",
            self.period_ms,
            f"read every {self.idle_read * 1000:.0f} ms while idle" if self.batched
            else "read every period (no shared libportaudio: PyAudio's own buffer is two periods)",
        )

    def set_low_latency(self, on: bool) -> None:
        """Read every period (``True``: someone speaks) or every ``idle_read_ms`` (``False``).
        Switching to low latency delivers what piled up at once. Loop thread; never waits."""
        if on == self.low_latency:
            return
        self.low_latency = on
        log.debug("%s: read %s", self.what, "every frame" if on else f"every {self.idle_read * 1000:.0f} ms")
        stream = self._stream
        if on and isinstance(stream, _Capture):
            stream.wake()

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
        period = max(1, rate * self.period_ms // 1000)
        what = f"{self.what} ({info.name!r} at {rate} Hz x{channels})"
        source: DirectSource | PyAudioSource | None = None
        lib = pa_direct.library()
        if lib is not None and lib.device_name(info.index) == info.name:
            try:
                # Half-frame host periods: PulseAudio hands a stream with a long buffer its audio two
                # periods at a time, and a frame should come soon after it is whole. Measured with
                # scripts/bench.py on PulseAudio: quarter-frame periods cut mic-to-wire p50 in speech
                # from 18-25 ms to 9-14 ms, but the sound server's thread then wakes 250 times a
                # second instead of 70 while nobody speaks, for no gain a user could hear.
                stream = pa_direct.BlockingInput(lib, info.index, channels=channels, rate=rate,
                                                 period=max(1, period // 2), buffer_seconds=BUFFER_SECONDS)
                source = DirectSource(stream, period)
            except OSError as exc:  # a device that will not hold a second: read it every period instead
                log.warning("%s: cannot open it with a long buffer (%s); reading it every period instead",
                            what, exc.args[1] if len(exc.args) > 1 else exc)
        if source is None:
            source = PyAudioSource(open_stream(pa, what, format=pyaudio.paInt16, channels=channels, rate=rate,
                                                input=True, input_device_index=info.index,
                                                frames_per_buffer=period), period)
        self.batched = source.batches
        return _Capture(source, self)

    async def close(self) -> None:
        """Stop and release the device. Idempotent, safe after a failure, never raises."""
        self._running = False
        self._queue.clear()
        self._unwatch()
        await self._close_stream()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake ``loop`` through an eventfd (made once; closed with this object: a reader left
        inside a read may still write to it)."""
        if not hasattr(os, "eventfd"):
            return
        if self._wake_fd is None:
            fd = self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            weakref.finalize(self, os.close, fd)
        self._unwatch()
        loop.add_reader(self._wake_fd, self._woken)
        self._watching = loop

    def _unwatch(self) -> None:
        loop, self._watching = self._watching, None
        if loop is not None and self._wake_fd is not None and not loop.is_closed():
            loop.remove_reader(self._wake_fd)
    async def _close_stream(self) -> None:
        """Stop the reader first (off the loop): a read under way may not see its stream closed."""
        stream = self._stream
        if isinstance(stream, _Capture):
            if self._guard is not None:
                self._guard.stop()
            try:
                stopped = await run_blocking(lambda: stream.stop_reader(READER_JOIN), timeout=self.close_timeout,
                                             what=f"stopping the {self.what} reader", error=DeviceError)
            except DeviceError:
                stopped = False
            if not stopped:
                log.warning("%s: a read never returned (sound server stuck?); leaving the stream to the reader, "
                            "which closes it if the read ever returns", self.what)
                stream.abandon(self._pa_owned)
                self._stream = self._pa_owned = None
        await super()._close_stream()

    # ------------------------------------------------------------------ reader thread

    def _deliver(self, data: bytes | memoryview, lost: bool) -> None:
        guard = self._guard
        if guard is not None:
            guard.tick()
        if not self._running or self._broken:
            return
        if lost:
            self.overflows += 1
        pipeline = self._pipeline
        if pipeline is None:
            return
        try:
            frames = pipeline.feed(data)
            if frames:
                queue = self._queue
                for frame in frames:
                    if len(queue) == queue.maxlen:
                        self.overflows += 1  # the append below drops the oldest frame
                    queue.append(frame)
                if not self._wake_pending and self._loop is not None:
                    self._wake_pending = True
                    if self._watching is not None and self._wake_fd is not None:
                        os.eventfd_write(self._wake_fd, 1)
                    else:
                        self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody to deliver to
            self._broken = True
        except Exception as exc:  # never let the reader die silently
            self._broken = True
            if guard is not None:
                guard.fail_threadsafe(DeviceError(f"{self.what}: processing failed: {exc!r}"))

    def _to_next_frame(self, period: int) -> int:
        """Device frames that complete the frame being filled (``period`` when none is)."""
        pipeline = self._pipeline
        if pipeline is None:
            return period
        return pipeline.input_to_next_frame()

    def _read_failed(self, exc: Exception) -> None:
        guard = self._guard
        if guard is not None and self._running:
            detail = exc.args[1] if isinstance(exc, OSError) and len(exc.args) > 1 else repr(exc)
            guard.fail_threadsafe(DeviceError(f"{self.what}: reading failed: {detail}"))

    # ------------------------------------------------------------------ loop thread

    def _woken(self) -> None:
        fd = self._wake_fd
        if fd is not None:
            with contextlib.suppress(BlockingIOError):  # read already (a wake-up that came before the drain)
                os.eventfd_read(fd)
        self._drain()

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
