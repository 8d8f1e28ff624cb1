"""The jitter buffer between the event loop and a speaker that pulls periods.

:class:`PlaybackBuffer` sits between the event loop, which queues agent audio
(resampled, streaming, to the device rate: one soxr stream per agent stream,
reset on flush or format change), and a device that pulls one period at a time
(the PortAudio callback in :mod:`.playback`, a loop timer in :class:`~.files.WavFileOutput`).
It mixes earcons into what it hands out, applies the volume's gain to the mix (so that what
the device gets, and the echo canceller's reference taken from it, is what is heard), keeps
the output clock for
:meth:`~PlaybackBuffer.audible_until`, and counts underruns. It never reads the
clock itself: the puller says when each period will reach the speaker.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np

from .formats import Resampler

PcmLike: TypeAlias = bytes | bytearray | memoryview | np.ndarray


def _as_samples(pcm: PcmLike) -> np.ndarray:
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise ValueError(f"PCM arrays must be int16, got {pcm.dtype}")
        return pcm.reshape(-1)
    if len(pcm) % 2:
        raise ValueError(f"PCM of {len(pcm)} bytes is not a whole number of 16-bit samples")
    return np.frombuffer(pcm, dtype="<i2")


VOLUME_MAX = 100
VOLUME_RANGE_DB = 40.0  # volume 1 is this far below 100; 0 is silence


def volume_gain(volume: int) -> float:
    """The amplitude factor of ``volume`` (0-100) on a perceptual (dB) curve: 100 is 1 (what
    is played is untouched, bit for bit), each step below it 0.4 dB quieter (a step of 10 is
    4 dB, 50 is -20 dB, 1 is -39.6 dB), and 0 is silence."""
    if not 0 <= volume <= VOLUME_MAX:
        raise ValueError(f"volume must be from 0 to {VOLUME_MAX}, got {volume}")
    if volume == VOLUME_MAX:
        return 1.0
    if volume == 0:
        return 0.0
    return float(10.0 ** ((volume - VOLUME_MAX) * VOLUME_RANGE_DB / VOLUME_MAX / 20.0))


class PlaybackBuffer:
    """Jitter buffer: the loop queues agent audio, a device pulls periods of it.

    ``rate`` and ``channels`` are the device's; every channel gets the same signal.
    ``earcons`` maps enabled earcon names to float32 samples at ``rate``.
    ``gain`` (see :func:`volume_gain`, :meth:`set_gain`) scales what is handed out, earcons
    included; at 1 nothing is computed and the samples pass untouched.
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
        gain: float = 1.0,
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
        self._gain = np.float32(1.0)
        self.set_gain(gain)
        self._handed_gain = self._gain  # the gain the last period ended at: a change ramps from it
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

    @property
    def gain(self) -> float:
        """The amplitude factor applied to what is handed out (1: untouched)."""
        return float(self._gain)

    def set_gain(self, gain: float) -> None:
        """Scale what is handed out by ``gain`` (0 to 1) from the next period on, queued audio included
        (the gain moves to it across that period, so that a step makes no click)."""
        if not 0.0 <= gain <= 1.0:
            raise ValueError(f"gain must be from 0 to 1, got {gain}")
        self._gain = np.float32(gain)  # one store: the audio thread reads it under the lock

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
            gain, was = self._gain, self._handed_gain
            if self._active or gain != 1.0 or was != 1.0:
                mix = self._mix[:frames]
                np.copyto(mix, pcm)
                if self._active:
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
                if gain != was:  # a new volume or a duck: a ramp across this period
                    mix *= np.linspace(was, gain, frames, endpoint=False, dtype=np.float32)
                    np.rint(mix, out=mix)
                    self._handed_gain = gain
                elif gain != 1.0:  # the volume: float32 throughout, rounded to the nearest sample
                    mix *= gain
                    np.rint(mix, out=mix)
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
