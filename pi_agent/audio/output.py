"""The loop-side half of a speaker, shared by the PortAudio and the WAV-file outputs.

:class:`BufferedOutput` implements the ``AudioOutput`` seam's ``play``, ``flush``,
``end_stream``, ``audible_until`` and ``play_earcon`` on a :class:`~.buffer.PlaybackBuffer`
that the subclass creates when it opens; it bounds what is queued, queues the
resampler's tail when the agent's audio pauses, and keeps the volume (:meth:`set_volume`) and
the ducking while a voice is heard over the reply (:meth:`duck`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

import numpy as np

from .buffer import VOLUME_MAX, PcmLike, PlaybackBuffer, volume_gain
from .earcons import EARCON_NAMES, make_earcons

log = logging.getLogger(__name__)


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
        self._volume = VOLUME_MAX
        self._volume_gain = 1.0
        self._duck_gain = 1.0

    @property
    def _gain(self) -> float:
        """What the buffer scales everything by: the volume's gain, ducked."""
        return self._volume_gain * self._duck_gain

    @property
    def volume(self) -> int:
        """The speaker's volume, 0-100 (100: played as received)."""
        return self._volume

    def set_volume(self, volume: int) -> None:
        """Play everything, earcons and what is already queued included, at ``volume`` (0-100;
        see :func:`~.buffer.volume_gain`) from the next period the device pulls."""
        self._volume_gain = volume_gain(volume)  # ValueError out of range
        self._volume = volume
        if self._buffer is not None:
            self._buffer.set_gain(self._gain)

    def duck(self, gain: float) -> None:
        """Play everything ``gain`` (0 to 1) times as loud as the volume says, from the next period
        the device pulls (ramped over it: no click); 1.0 ends the ducking."""
        if not 0.0 <= gain <= 1.0:
            raise ValueError(f"a duck's gain must be from 0 to 1, got {gain}")
        self._duck_gain = gain
        if self._buffer is not None:
            self._buffer.set_gain(self._gain)

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
        samples = pcm.size if isinstance(pcm, np.ndarray) else len(pcm) // 2
        self._sound_coming(now, samples / rate if rate > 0 else 0.0)
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

    def _sound_coming(self, now: float, seconds: float = 0.0) -> None:
        """Sound is about to be queued: ``seconds`` of agent audio (0: an earcon). A device that
        stopped while nothing played starts here."""

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
            gain=self._gain,
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
