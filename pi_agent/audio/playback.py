"""The PortAudio speaker: a callback stream fed from a :class:`~.buffer.PlaybackBuffer`.

:class:`PyAudioOutput` runs :class:`~.output.BufferedOutput` (the loop-side half it shares
with the WAV-file output) on a PortAudio callback stream, stops the stream when nothing is
to be heard (standby) and starts it again for the next sound, through a
:class:`~.switch.StreamSwitch` so that a stuck sound server never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import pyaudio

from ..errors import DeviceError
from ..threads import run_blocking
from . import ErrorCallback
from .buffer import PlaybackBuffer
from .listing import negotiate, resolve, unique
from .streams import CallbackDevice, open_stream
from .earcons import EARCON_NAMES
from .echo import FarEnd
from .output import BufferedOutput
from .standby import Move, Standby
from .switch import StreamSwitch

log = logging.getLogger(__name__)

START_MARGIN = 0.09  # s of the agent's audio, beyond the device's read-ahead, a reply starts with (periods > 20 ms)
RESAMPLER_HOLD = 0.02  # s of a chunk that soxr may still hold back (16.5 ms at 16 -> 48 kHz, HQ)
CLOCK_MATCH = 0.5  # s: PortAudio's callback time is on the clock it is this close to (else on neither)


def heard_at(time_info: dict[str, float], fallback_delay: float) -> float:
    """``time.monotonic()`` at which a callback's first sample is heard.

    PortAudio stamps the callback with its own clock when it calls it; the Python callback may
    run later (it waits for the GIL, or for a core on a busy machine). Reading
    ``time.monotonic()`` then and adding the delay would place the sound that much too late,
    and the echo reference with it. So the stamp itself is mapped onto the monotonic clock:
    from the wall clock (Debian 12's PortAudio 19.6, as measured on the virtual card), or
    taken as it is if it is on the monotonic clock; on neither, now plus the reported delay.
    Host APIs that report no times: now plus ``fallback_delay``."""
    dac, current = time_info["output_buffer_dac_time"], time_info["current_time"]
    delay = dac - current
    mono = time.monotonic()
    if not dac or not 0.0 <= delay < 2.0:  # some host APIs report no times (zeros) or nonsense
        return mono + fallback_delay
    wall = time.time()
    if abs(wall - current) < CLOCK_MATCH:
        return dac + (mono - wall)
    if abs(mono - current) < CLOCK_MATCH:
        return dac
    return mono + delay


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
    own (:class:`StreamSwitch`); while the stream is stopped that thread starts and stops it
    every ``probe_every`` seconds, so that a speaker that vanished while nothing played is
    still reported within a few seconds.

    Periods longer than 20 ms: a stream that starts hands the device its latency and two
    periods of sound at once (PortAudio primes its buffer; 160 ms at 40 ms periods on the test
    card, 80 ms at 20), and from then on reads that far ahead of the ear. A reply whose next
    chunk comes later than that ran dry in its first fifth of a second and a period of
    silence cut it (issue 25: the fake agent's 200 ms chunks, 100 ms apart; soxr still holds
    16 ms of the first). So at such periods a reply's first sample waits, as a lead-in, until
    what is queued covers the read-ahead plus :data:`START_MARGIN`; at 10 and 20 ms a first
    chunk of 200 ms covers it already and nothing changes.

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
        self._switch: StreamSwitch | None = None
        self._standby: Standby | None = None  # while open: when the stream runs
        self._timer: asyncio.TimerHandle | None = None  # at the standby's next deadline,
        self._timer_due = 0.0  # this one

    @property
    def running(self) -> bool:
        """The stream runs (or has been asked to): callbacks are due."""
        return self._standby is not None and self._standby.running

    async def open(self, on_error: ErrorCallback) -> None:
        """Resolve the device, open it and start the callback (silence until audio is queued).

        The stream runs for ``standby_after`` seconds, then stops until the first sound."""
        await self._open_stream(on_error)
        self._buffer = self._cb_buffer
        if self._buffer is not None:  # the volume may have changed while the stream was being opened
            self._buffer.set_gain(self._gain)
        guard = self._guard
        assert guard is not None and self._loop is not None
        buffer = self._cb_buffer
        assert buffer is not None
        self._switch = StreamSwitch(self._stream, self.what, guard.fail_threadsafe, lambda: self._stopped(buffer))
        self._standby = Standby(self.standby_after, self.probe_every, keep_running=self.far_end is not None)
        self._standby.opened(self._now())
        self._arm()
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
        self._cancel_timer()
        self._drop_buffer()
        switch, self._switch = self._switch, None
        self._standby = None
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

    def start_lead(self, buf: PlaybackBuffer, coming: float) -> float:
        """Seconds a reply's first sample waits when the stream (re)starts for the ``coming``
        seconds of it being queued (see the class docstring): 0 at periods up to 20 ms, for an
        earcon (``coming`` 0), or when enough is queued."""
        if self.period_ms <= 20 or not coming:
            return 0.0
        read_ahead = buf.latency + 2 * self.period_ms / 1000
        ahead = buf.queued_seconds + coming - RESAMPLER_HOLD
        return max(0.0, read_ahead + START_MARGIN - ahead)

    def _sound_coming(self, now: float, seconds: float = 0.0) -> None:
        buf, standby = self._buffer, self._standby
        if buf is None or standby is None:
            return
        until = buf.audible_until(now)
        move = standby.sound(now, until)
        if move is Move.START:
            lead = max(self.lead_in, self.start_lead(buf, seconds))
            if lead > 0:
                buf.lead_in(lead)
        elif move is Move.RESTART:
            # The device holds nothing but silence: drop it, so that this sound does not wait behind it
            # (held until the stream is stopped: what the callback hands out meanwhile is dropped too).
            buf.device_dropped(now)
            buf.hold(True)
            lead = self.start_lead(buf, seconds)
            if lead > 0:
                buf.lead_in(lead)
        self._apply(move)

    def _flushed(self) -> None:
        buf, standby = self._buffer, self._standby
        if buf is None or standby is None or not standby.running:
            return
        now = self._now()
        buf.device_dropped(now)  # the abort drops what the device holds: silent at once
        self._apply(standby.flushed(now, buf.audible))  # an earcon goes on: the stream goes on, from it

    def _stopped(self, buffer: PlaybackBuffer) -> None:
        """The switch thread has just stopped the stream (the callback does not run)."""
        buffer.hold(False)
        far = self.far_end
        if far is not None:
            far.stopped(time.monotonic())

    def _on_timer(self) -> None:
        self._timer = None
        buf, standby, switch = self._buffer, self._standby, self._switch
        if buf is None or standby is None or switch is None:
            return
        now = self._now()
        move = standby.due(now, buf.audible_until(now), switch.probes_done < switch.probes_asked)
        if move is Move.STOP:
            buf.device_dropped(now)
        self._apply(move)

    def _apply(self, move: Move | None) -> None:
        """Ask the switch thread for ``move``, with what the stream's watch must know; re-arm the timer."""
        guard, switch = self._guard, self._switch
        if guard is None or switch is None:
            return
        if move is Move.FAIL:
            guard.fail(DeviceError(f"{self.what} did not start within {self.probe_every:g} s "
                                   "(device gone or sound server stuck?)"))
            return
        if move is Move.START:
            self.starts += 1
        if move in (Move.START, Move.RESTART):
            guard.resume()
        elif move is Move.STOP:
            guard.pause()
        if move is not None:
            switch.request(move.value)
        self._arm()

    def _arm(self) -> None:
        """One loop timer at the standby's next deadline (left alone when that has not moved:
        a reply's every chunk comes here)."""
        standby, loop = self._standby, self._loop
        due = standby.next_deadline() if standby is not None else None
        if self._timer is not None and due == self._timer_due:
            return
        self._cancel_timer()
        if due is not None and loop is not None:
            self._timer_due = due
            self._timer = loop.call_at(loop.time() + max(0.0, due - self._now()), self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

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
            start = heard_at(time_info, buf.latency)
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
