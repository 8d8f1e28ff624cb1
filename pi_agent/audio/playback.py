"""Playback: one jitter buffer for every output, and the PortAudio speaker.

:class:`PlaybackBuffer` sits between the event loop, which queues agent audio
(resampled, streaming, to the device rate: one soxr stream per agent stream,
reset on flush or format change), and a device that pulls one period at a time
(the PortAudio callback here, a loop timer in :class:`~.files.WavFileOutput`).
It mixes earcons into what it hands out, keeps the output clock for
:meth:`~PlaybackBuffer.audible_until`, and counts underruns. It never reads the
clock itself: the puller says when each period will reach the speaker.

:class:`BufferedOutput` is the loop-side half shared by both outputs (the
``AudioOutput`` seam's ``play``/``flush``/``audible_until``/``play_earcon``).
:class:`PyAudioOutput` runs it on a PortAudio callback stream.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

import numpy as np
import pyaudio

from ..errors import DeviceError
from ..threads import run_blocking
from . import ErrorCallback
from .devices import CallbackDevice, abort_stream, close_quietly, negotiate, open_stream, resolve, unique
from .earcons import EARCON_NAMES, make_earcons
from .echo import FarEnd
from .formats import Resampler

log = logging.getLogger(__name__)

PcmLike: TypeAlias = bytes | bytearray | memoryview | np.ndarray


def _as_samples(pcm: PcmLike) -> np.ndarray:
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise ValueError(f"PCM arrays must be int16, got {pcm.dtype}")
        return pcm.reshape(-1)
    if len(pcm) % 2:
        raise ValueError(f"PCM of {len(pcm)} bytes is not a whole number of 16-bit samples")
    return np.frombuffer(pcm, dtype="<i2")


class PlaybackBuffer:
    """Jitter buffer: the loop queues agent audio, a device pulls periods of it.

    ``rate`` and ``channels`` are the device's; every channel gets the same signal.
    ``earcons`` maps enabled earcon names to float32 samples at ``rate``.
    ``latency`` estimates how long a pulled period takes to reach the speaker,
    used only until the device reports times. An underrun is counted when the
    device ran dry in the middle of a stream, i.e. more audio of the stream came
    within ``underrun_gap`` seconds (device time) after the queue emptied.

    Thread-safety: ``fill`` may run on an audio thread; every other method on the
    loop thread. A short lock guards the queue.
    """

    def __init__(
        self,
        rate: int,
        *,
        channels: int = 1,
        earcons: Mapping[str, np.ndarray] | None = None,
        latency: float = 0.0,
        underrun_gap: float = 1.0,
        max_period: int = 4096,
        quality: str = "HQ",
    ):
        self.rate = int(rate)
        self.channels = int(channels)
        self.latency = latency
        self.underrun_gap = underrun_gap
        self.quality = quality
        self.earcons = dict(earcons or {})
        self.underruns = 0
        """Times the device ran dry mid-stream (silence was played instead)."""
        self.played_frames = 0
        """Device frames of agent audio handed to the device so far."""

        self._lock = threading.Lock()
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0
        self._queued = 0
        self._active: list[list[Any]] = []  # [earcon samples, position]
        self._resampler: Resampler | None = None
        self._expecting = False  # a stream is being played (until end_stream/flush)
        self._started = False  # ... and some of it has reached the device
        self._starved_at: float | None = None
        self._last_end = 0.0  # device time at which the last pulled period ends
        self._audio_end = 0.0  # device time at which the last audible sample ends
        self._lead = 0  # device frames of silence to hand out before anything else (lead-in)
        self._held = False  # hand out silence and take nothing (the device is about to drop it)
        self._alloc(max_period)

    def _alloc(self, frames: int) -> None:
        self._pcm = np.zeros(frames, dtype=np.int16)
        self._mix = np.zeros(frames, dtype=np.float32)
        self._out = np.zeros((frames, self.channels), dtype=np.int16)

    # ------------------------------------------------------------------ loop side

    def play(self, pcm: PcmLike, rate: int, now: float = 0.0) -> None:
        """Queue mono s16 PCM at ``rate``; resampled, streaming, to the device rate.

        ``now`` tells a stopped device's buffer the time (its own clock stopped with it),
        for the underrun count."""
        samples = _as_samples(pcm)
        if rate <= 0:
            raise ValueError(f"sample rate must be positive, got {rate}")
        if len(samples) == 0:
            return
        if self._resampler is None or self._resampler.in_rate != rate:
            if self._resampler is not None:  # format change: end the old stream cleanly
                self._append(self._resampler.flush())
            self._resampler = Resampler(rate, self.rate, quality=self.quality)
        self._append(self._resampler.process(samples), expecting=True, now=now)

    def drain_tail(self) -> None:
        """Queue what the resampler still holds; the next chunk starts a new resampler stream.

        Called when the input pauses and the queue is about to run dry, so the end
        of an utterance is not stuck inside soxr (up to ~0.15 s at 8 -> 48 kHz).
        """
        if self._resampler is not None and self._resampler.pending:
            self._append(self._resampler.flush())

    def end_stream(self) -> None:
        """The agent stream is complete: queue the resampler tail; a later gap is no underrun."""
        self.drain_tail()
        with self._lock:
            self._expecting = False
            self._started = False
            self._starved_at = None

    def flush(self) -> None:
        """Drop all queued agent audio (earcons keep playing); silence from the next period.

        What the device already holds still plays, unless the device drops it too
        (:meth:`device_dropped`)."""
        with self._lock:
            self._chunks.clear()
            self._offset = 0
            self._queued = 0
            self._expecting = False
            self._started = False
            self._starved_at = None
            # What the device already holds still plays until the end of its last period.
            self._audio_end = min(self._audio_end, self._last_end)
        if self._resampler is not None:
            self._resampler.reset()

    def device_dropped(self, now: float) -> None:
        """The device was stopped at ``now`` and dropped what it held: nothing pulled is heard
        after ``now``; the next period pulled (after a restart) says when sound resumes."""
        with self._lock:
            self._audio_end = min(self._audio_end, now)
            self._last_end = min(self._last_end, now)

    def hold(self, held: bool) -> None:
        """While held, periods are silence and nothing queued is taken: a stream that is about
        to be stopped, dropping what the device holds, drops no sound."""
        with self._lock:
            self._held = held

    def lead_in(self, seconds: float) -> None:
        """Hand out ``seconds`` of silence before anything else (a restarted sink's wake-up)."""
        with self._lock:
            self._lead = max(0, round(seconds * self.rate))

    def play_earcon(self, name: str) -> bool:
        """Start mixing an enabled earcon from the next period; False if it is disabled."""
        samples = self.earcons.get(name)
        if samples is None:
            return False
        with self._lock:
            self._active = [item for item in self._active if item[0] is not samples]
            self._active.append([samples, 0])
        return True

    def audible_until(self, now: float) -> float:
        """Device time at which everything queued (audio and earcons) will have been heard."""
        with self._lock:
            queued = self._queued
            last_end = self._last_end
            until = self._audio_end
            earcon_left = max((len(e) - pos for e, pos in self._active), default=0)
            lead = self._lead
        resampler = self._resampler
        if resampler is not None:
            queued += resampler.held
        pending = max(queued, earcon_left)
        if pending:
            start = max(last_end, now + self.latency) + lead / self.rate
            until = max(until, start + pending / self.rate)
        return until

    @property
    def audible(self) -> bool:
        """Sound is being played: agent audio queued or expected, or an earcon mixing."""
        return self._expecting or self._queued > 0 or bool(self._active)

    @property
    def queued_frames(self) -> int:
        """Device frames of agent audio waiting to be pulled."""
        return self._queued

    @property
    def queued_seconds(self) -> float:
        """Seconds of agent audio waiting to be pulled."""
        return self._queued / self.rate

    @property
    def tail_pending(self) -> bool:
        """True when the resampler may hold the end of the current stream."""
        return self._resampler is not None and self._resampler.pending

    def _append(self, samples: np.ndarray, *, expecting: bool | None = None, now: float = 0.0) -> None:
        n = len(samples)
        with self._lock:
            if self._starved_at is not None:
                if max(self._last_end, now) - self._starved_at < self.underrun_gap:
                    self.underruns += 1
                self._starved_at = None
            if n:
                self._chunks.append(samples)
                self._queued += n
            if expecting is not None:
                self._expecting = expecting

    # ------------------------------------------------------------------ device side

    def fill(self, frames: int, start: float) -> np.ndarray:
        """Hand out the next ``frames`` device frames as an int16 ``[frame, channel]`` view.

        ``start`` is when (``time.monotonic()`` terms) the first of them reaches the
        speaker. The view is reused by the next call: copy it before then.
        """
        if frames > len(self._pcm):
            self._alloc(frames)
        pcm = self._pcm[:frames]
        out = self._out[:frames]
        with self._lock:
            if self._held:
                out[:] = 0
                return out
            lead = min(self._lead, frames)
            if lead:  # a lead-in: silence first, then what is queued (earcons included) after it
                self._lead -= lead
                pcm[:lead] = 0
                start += lead / self.rate
                frames -= lead
                pcm = pcm[lead:]
                out[:lead] = 0
                out = out[lead:]
                self._last_end = start + frames / self.rate
                if not frames:
                    return self._out[:lead]
            taken = self._take(pcm)
            if taken and self._expecting:
                self._started = True
            if taken < frames:
                pcm[taken:] = 0
                # Dry before the stream's first sample is no underrun: soxr may still hold it.
                if self._expecting and self._started and self._starved_at is None:
                    self._starved_at = start + taken / self.rate
            audible = taken
            if self._active:
                mix = self._mix[:frames]
                np.copyto(mix, pcm)
                still: list[list[Any]] = []
                for item in self._active:
                    samples, pos = item
                    k = min(frames, len(samples) - pos)
                    mix[:k] += samples[pos : pos + k]
                    item[1] = pos + k
                    audible = max(audible, k)
                    if item[1] < len(samples):
                        still.append(item)
                self._active = still
                np.clip(mix, -32768.0, 32767.0, out=mix)
                np.copyto(out, mix[:, None], casting="unsafe")
            else:
                out[:] = pcm[:, None]
            self._last_end = start + frames / self.rate
            if audible:
                self._audio_end = max(self._audio_end, start + audible / self.rate)
            self.played_frames += taken
        return self._out[: lead + frames]

    def _take(self, dest: np.ndarray) -> int:
        want = len(dest)
        n = 0
        chunks = self._chunks
        while n < want and chunks:
            chunk = chunks[0]
            k = min(len(chunk) - self._offset, want - n)
            dest[n : n + k] = chunk[self._offset : self._offset + k]
            n += k
            self._offset += k
            if self._offset >= len(chunk):
                chunks.popleft()
                self._offset = 0
        self._queued -= n
        return n


class BufferedOutput:
    """The loop-side half of an ``AudioOutput``: play/flush/audible_until/earcons on a buffer.

    Subclasses create :attr:`_buffer` when they open and drop it when they close;
    audio played while closed is dropped (and counted in :attr:`dropped_chunks`).
    A loop timer queues the resampler's tail when the input pauses
    (see :meth:`PlaybackBuffer.drain_tail`).
    """

    TAIL_MARGIN = 0.08  # seconds of queue left when the resampler tail is queued
    MAX_QUEUED = 60.0  # seconds of agent audio the speaker holds; more (a flood) is dropped

    def __init__(self, earcons: Iterable[str]):
        enabled = tuple(earcons)
        for name in enabled:
            if name not in EARCON_NAMES:
                raise ValueError(f"unknown earcon {name!r} (known: {', '.join(EARCON_NAMES)})")
        self.earcon_names = enabled
        self.dropped_chunks = 0
        self.dropped_frames = 0
        """Agent audio dropped because :data:`MAX_QUEUED` seconds were already queued, in 20 ms frames."""
        self._full_reported = False
        self._buffer: PlaybackBuffer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tail_timer: asyncio.TimerHandle | None = None
        self._underruns_before = 0

    @property
    def underruns(self) -> int:
        """Mid-stream underruns since construction (silence played while audio was due)."""
        buf = self._buffer
        return self._underruns_before + (buf.underruns if buf is not None else 0)

    @property
    def buffer(self) -> PlaybackBuffer | None:
        """The jitter buffer while open."""
        return self._buffer

    def _now(self) -> float:
        return time.monotonic()

    def play(self, pcm: PcmLike, rate: int) -> None:
        """Queue 16-bit mono PCM at ``rate`` Hz (resampled, streaming, to the device rate).

        Memory stays bounded whatever the agent sends: with :data:`MAX_QUEUED` seconds
        already queued, more is dropped before it costs anything (counted, said once a reply).
        """
        buf = self._buffer
        if buf is None:
            self.dropped_chunks += 1
            return
        if buf.queued_seconds >= self.MAX_QUEUED:
            self.dropped_frames += max(1, round(len(pcm) / 2 / rate / 0.02))
            if not self._full_reported:
                self._full_reported = True
                log.warning("the agent sent more audio than the speaker holds (%g s queued): the rest of this "
                            "reply is dropped", self.MAX_QUEUED)
            return
        now = self._now()
        self._sound_coming(now)
        buf.play(pcm, rate, now)
        self._arm_tail_timer()

    def end_stream(self) -> None:
        """Optional: the agent's audio for this turn is complete (queues the resampler tail)."""
        if self._buffer is not None:
            self._buffer.end_stream()
        self._cancel_tail_timer()
        self._full_reported = False

    def flush(self) -> None:
        """Drop everything queued, and what the device holds: the speaker is silent at once."""
        if self._buffer is not None:
            self._buffer.flush()
            self._flushed()
        self._cancel_tail_timer()
        self._full_reported = False

    def audible_until(self) -> float:
        """``time.monotonic()`` at which all queued audio will have left the speaker."""
        buf = self._buffer
        if buf is None:
            return 0.0
        return buf.audible_until(self._now())

    def play_earcon(self, name: str) -> None:
        """Mix a short feedback sound; a disabled one is silently skipped."""
        if name not in EARCON_NAMES:
            raise ValueError(f"unknown earcon {name!r} (known: {', '.join(EARCON_NAMES)})")
        if self._buffer is not None and name in self._buffer.earcons:
            self._sound_coming(self._now())
            self._buffer.play_earcon(name)

    def _sound_coming(self, now: float) -> None:
        """Sound is about to be queued (a device that stopped while nothing played starts here)."""

    def _flushed(self) -> None:
        """Everything queued was dropped (a device drops what it holds here)."""

    def _make_buffer(
        self, rate: int, channels: int, *, latency: float, underrun_gap: float, quality: str
    ) -> PlaybackBuffer:
        return PlaybackBuffer(
            rate,
            channels=channels,
            earcons=make_earcons(rate, self.earcon_names),
            latency=latency,
            underrun_gap=underrun_gap,
            quality=quality,
        )

    def _drop_buffer(self) -> None:
        self._cancel_tail_timer()
        if self._buffer is not None:
            self._underruns_before += self._buffer.underruns
            self._buffer = None

    def _arm_tail_timer(self) -> None:
        self._cancel_tail_timer()
        buf = self._buffer
        if buf is None or self._loop is None or not buf.tail_pending:
            return
        delay = max(0.0, buf.queued_seconds - self.TAIL_MARGIN)
        self._tail_timer = self._loop.call_later(delay, self._on_tail_timer)

    def _cancel_tail_timer(self) -> None:
        if self._tail_timer is not None:
            self._tail_timer.cancel()
            self._tail_timer = None

    def _on_tail_timer(self) -> None:
        self._tail_timer = None
        buf = self._buffer
        if buf is None:
            return
        if buf.queued_seconds > self.TAIL_MARGIN * 1.5:  # the device consumed slower than expected
            self._arm_tail_timer()
            return
        buf.drain_tail()


class PyAudioOutput(CallbackDevice, BufferedOutput):
    """A PortAudio speaker fed from a :class:`PlaybackBuffer` by the output callback.

    The stream runs only while there is something to hear. ``standby_after`` seconds
    after the last sound it is stopped (no callback, nothing wakes for the speaker);
    the next sound starts it again, and its first sample goes to the device at once
    (a stopped stream holds nothing to wait behind). A sound that comes while the
    running stream holds only silence restarts it, for the same reason. ``lead_in``
    seconds of silence go first after a stop, for sinks that clip the first sound after
    a pause. :meth:`flush` aborts the stream: what the device holds is dropped, so the
    speaker is silent at once, whatever the period. Starting and stopping are PortAudio
    calls that a stuck sound server can block, so they run in order on a thread of their
    own (:class:`_Switch`); while the stream is stopped that thread starts and stops it
    every ``probe_every`` seconds, so that a speaker that vanished while nothing played is
    still reported within a few seconds.

    ``device``: a name, a unique part of one, or ``default``; resolved on every open.
    ``period_ms``: device buffer (callback) length. ``rate``: force the device rate
    (default: the device's default rate, else 48/44.1/16 kHz). ``channels``: force
    a channel count (default: stereo when possible, else mono or all channels;
    every channel carries the same signal). ``earcons``: the earcons enabled.
    ``pa``: a PyAudio instance to use (not terminated on close).
    """

    noun = "speaker"
    SWITCH_JOIN = 1.0  # s closing waits for the switch thread before abandoning a stream it is stuck in

    def __init__(
        self,
        device: str = "default",
        *,
        period_ms: int = 10,
        rate: int | None = None,
        channels: int | None = None,
        earcons: Iterable[str] = EARCON_NAMES,
        pa: pyaudio.PyAudio | None = None,
        stall_timeout: float = 0.5,
        start_timeout: float = 3.0,
        open_timeout: float = 10.0,
        close_timeout: float = 3.0,
        underrun_gap: float = 1.0,
        quality: str = "HQ",
        standby_after: float = 1.0,
        lead_in: float = 0.0,
        probe_every: float = 2.0,
    ):
        CallbackDevice.__init__(
            self,
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
        BufferedOutput.__init__(self, earcons)
        self.underrun_gap = underrun_gap
        self.device_underflows = 0
        """PortAudio output-underflow flags (the callback was late for the device) while sound
        was playing; a gap in silence, such as while a stream settles after opening, is inaudible
        and not counted."""
        self.latency: float | None = None
        """PortAudio's output latency for the open stream, seconds."""
        self.far_end: FarEnd | None = None
        """Where every period handed to the device is also kept, on the output clock (``audio.echo = aec``)."""
        self._cb_buffer: PlaybackBuffer | None = None
        self._silence = b""
        self.standby_after = standby_after
        self.lead_in = lead_in
        self.probe_every = probe_every
        self.starts = 0
        """Times the stream was started again after a stop (diagnostics, tests)."""
        self._switch: _Switch | None = None
        self._running = False  # what the switch was last asked for
        self._standby_timer: asyncio.TimerHandle | None = None
        self._probe_timer: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        """The stream runs (or has been asked to): callbacks are due."""
        return self._running

    async def open(self, on_error: ErrorCallback) -> None:
        """Resolve the device, open it and start the callback (silence until audio is queued).

        The stream runs for ``standby_after`` seconds, then stops until the first sound."""
        await self._open_stream(on_error)
        self._buffer = self._cb_buffer
        guard = self._guard
        assert guard is not None and self._loop is not None
        buffer = self._cb_buffer
        assert buffer is not None
        self._switch = _Switch(self._stream, self.what, guard.fail_threadsafe, lambda: self._stopped(buffer))
        self._running = True
        self._arm_standby()
        log.info(
            "%s open: %r at %d Hz x%d, %d ms periods, latency %.0f ms",
            self.what,
            self.device.name if self.device else "?",
            self.rate or 0,
            self.channels or 0,
            self.period_ms,
            (self.latency or 0.0) * 1000,
        )

    def _make_stream(self, pa: pyaudio.PyAudio) -> Any:
        info = resolve(self.device_name, "output", pa=pa)
        if self.forced_channels:
            channel_choices = [self.forced_channels]
        else:
            channel_choices = [c for c in unique([2, 1, info.max_output_channels]) if c <= info.max_output_channels]
        rate_choices = (
            [self.forced_rate] if self.forced_rate else unique([int(info.default_rate), 48_000, 44_100, 16_000])
        )
        rate, channels = negotiate(pa, info, "output", rates=rate_choices, channels=channel_choices)
        period = max(1, rate * self.period_ms // 1000)
        buf = self._make_buffer(
            rate, channels, latency=2 * period / rate, underrun_gap=self.underrun_gap, quality=self.quality
        )
        self._cb_buffer = buf
        self._silence = bytes(period * channels * 2)
        self.device, self.rate, self.channels = info, rate, channels
        stream = open_stream(
            pa,
            f"{self.what} ({info.name!r} at {rate} Hz x{channels})",
            format=pyaudio.paInt16,
            channels=channels,
            rate=rate,
            output=True,
            output_device_index=info.index,
            frames_per_buffer=period,
            stream_callback=self._callback,
        )
        try:
            self.latency = float(stream.get_output_latency())
            buf.latency = max(buf.latency, self.latency)
        except OSError:
            self.latency = None
        return stream

    async def close(self) -> None:
        """Stop and release the device; queued audio is dropped. Idempotent, never raises."""
        if self._guard is not None:
            self._guard.stop()
        self._cancel_switch_timers()
        self._drop_buffer()
        switch, self._switch = self._switch, None
        self._running = False
        if switch is not None:
            try:
                finished = await run_blocking(lambda: switch.finish(self.SWITCH_JOIN), timeout=self.close_timeout,
                                              what=f"stopping {self.what}", error=DeviceError)
            except DeviceError:
                finished = False
            if not finished and switch.abandon(self._pa_owned):
                # The switch is stuck in a PortAudio call on this stream (a sound server that hangs):
                # closing the stream, or the PortAudio it belongs to, under it would crash the process.
                log.warning("%s: a start or stop of its stream never returned; leaving the stream to the "
                            "thread stuck in it, which closes it if the call ever returns", self.what)
                self._stream = self._pa_owned = None
        await self._close_stream()
        self._cb_buffer = None

    # ------------------------------------------------------------------ start and stop (loop thread)

    def _sound_coming(self, now: float) -> None:
        buf, switch, guard = self._buffer, self._switch, self._guard
        if buf is None or switch is None or guard is None:
            return
        if not self._running:
            if self.lead_in > 0:
                buf.lead_in(self.lead_in)
            self._set_running(True, "start")
        elif buf.audible_until(now) <= now:
            # The device holds nothing but silence: drop it, so that this sound does not wait behind it
            # (held until the stream is stopped: what the callback hands out meanwhile is dropped too).
            buf.device_dropped(now)
            buf.hold(True)
            guard.resume()
            switch.request("restart")
        self._arm_standby()

    def _flushed(self) -> None:
        buf, switch = self._buffer, self._switch
        if buf is None or switch is None or not self._running:
            return
        buf.device_dropped(self._now())  # the abort drops what the device holds: silent at once
        if buf.audible:  # an earcon goes on: the stream goes on, from it
            switch.request("restart")
        else:
            self._set_running(False, "stop")

    def _stopped(self, buffer: PlaybackBuffer) -> None:
        """The switch thread has just stopped the stream (the callback does not run)."""
        buffer.hold(False)
        far = self.far_end
        if far is not None:
            far.stopped(time.monotonic())

    def _set_running(self, running: bool, command: str) -> None:
        guard, switch = self._guard, self._switch
        if guard is None or switch is None:
            return
        self._running = running
        if running:
            self._cancel_switch_timers()
            guard.resume()
            self.starts += 1
        else:
            guard.pause()
            self._cancel_switch_timers()
            self._arm_probe()
        switch.request(command)
        if running:
            self._arm_standby()

    def _arm_standby(self) -> None:
        if self._standby_timer is not None or self._loop is None or not self._running:
            return
        buf = self._buffer
        until = buf.audible_until(self._now()) if buf is not None else 0.0
        self._standby_timer = self._loop.call_at(
            self._loop.time() + max(0.0, until - self._now()) + self.standby_after, self._on_standby)

    def _on_standby(self) -> None:
        self._standby_timer = None
        buf = self._buffer
        if buf is None or not self._running:
            return
        now = self._now()
        if buf.audible_until(now) + self.standby_after > now + 0.01:
            self._arm_standby()  # sound came meanwhile (a reply whose next chunk is late is no reason to wait)
            return
        buf.device_dropped(now)
        self._set_running(False, "stop")

    def _arm_probe(self) -> None:
        if self._loop is not None and self.probe_every > 0:
            self._probe_timer = self._loop.call_later(self.probe_every, self._on_probe)

    def _on_probe(self) -> None:
        """While stopped, every ``probe_every``: the last start-and-stop must have finished
        (a device gone from a sound server makes it hang); then ask for the next."""
        self._probe_timer = None
        switch, guard = self._switch, self._guard
        if switch is None or guard is None or self._running:
            return
        if switch.probes_done < switch.probes_asked:
            guard.fail(DeviceError(f"{self.what} did not start within {self.probe_every:g} s "
                                   "(device gone or sound server stuck?)"))
            return
        switch.request("probe")
        self._arm_probe()

    def _cancel_switch_timers(self) -> None:
        for timer in (self._standby_timer, self._probe_timer):
            if timer is not None:
                timer.cancel()
        self._standby_timer = self._probe_timer = None

    # ------------------------------------------------------------------ audio thread

    def _callback(self, in_data: bytes | None, frame_count: int, time_info: dict[str, float],
                  status: int) -> tuple[bytes, int]:
        guard = self._guard
        if guard is not None:
            guard.tick()
        buf = self._cb_buffer
        if buf is None or self._broken:
            return self._silent(frame_count), pyaudio.paContinue
        try:
            if status & pyaudio.paOutputUnderflow and buf.audible:
                self.device_underflows += 1
            delay = time_info["output_buffer_dac_time"] - time_info["current_time"]
            if not 0.0 <= delay < 2.0:  # some host APIs report no times
                delay = buf.latency
            start = time.monotonic() + delay
            out = buf.fill(frame_count, start)
            far = self.far_end
            if far is not None:
                far.played(out, buf.rate, start)
            return out.tobytes(), pyaudio.paContinue
        except Exception as exc:  # never let the audio thread die silently
            self._broken = True
            if guard is not None:
                guard.fail_threadsafe(DeviceError(f"{self.what}: playback failed: {exc!r}"))
            return self._silent(frame_count), pyaudio.paContinue

    def _silent(self, frame_count: int) -> bytes:
        size = frame_count * (self.channels or 1) * 2
        return self._silence if len(self._silence) == size else bytes(size)


class _Switch:
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
