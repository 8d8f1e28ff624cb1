"""Software echo cancellation: WebRTC's AEC3 fed with exactly what the speaker played.

Two halves, one on each audio thread:

* :class:`FarEnd`, written by the speaker's PortAudio callback: every period it hands
  to the device is kept as 16 kHz mono, placed on the ``time.monotonic()`` axis at the
  moment it will be heard (the output clock the speaker already keeps, device latency
  included). A few seconds are kept; what was never played reads as silence. A new
  stream's first callbacks say their periods play sooner than they do (measured on the
  virtual card: the first three "now", while the device's latency is 60 ms, so that the
  reference lagged the echo by 33 ms until the early estimates were followed a second
  later): for its first :data:`YOUNG` seconds the reference follows every estimate that
  comes earlier, at once.
* :class:`EchoCanceller`, on the event loop, given every 20 ms microphone frame with the
  moment its first sample was captured (:class:`FrameClock` finds it from when frames
  arrive): it reads what the speaker played at that moment (a little later,
  :data:`AHEAD`, so that the reference always leads the echo in it, whatever the error
  of the two clocks) and lets AEC3 remove it. AEC3 finds the remaining delay (the air,
  the converters) itself, up to about 450 ms (measured); what it cannot do is cancel an
  echo whose reference comes after it, so a frame waits for a speaker that is late with
  its reference.

The microphone's frames then go on as always: the capture gate, VAD, the wake word and
the agent all get the cancelled signal. The engine is ``pywebrtc-audio`` (Apache-2.0,
the WebRTC audio processing module; see the README for why it and not another);
:func:`unavailable` says why it cannot run where it is not installed.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import FRAME_SAMPLES, MIC_RATE
from .formats import Resampler

log = logging.getLogger(__name__)

AHEAD = 0.01  # s: the reference is read this much after the capture time, so that it leads the echo
RING_SECONDS = 4.0  # of played audio kept for the canceller
EARLY_WINDOW = 1.0  # s an early output clock must stay early before the reference follows it
IDLE = 0.1  # s: a speaker this far behind a read has stopped (its reference is silence)
MAX_WAIT = 3  # frames a microphone frame may wait for a speaker that is late with its reference
RESYNC = 0.03  # s: the output clock's jitter is ignored below this; beyond it, the stream was interrupted
YOUNG = 0.5  # s from a stream's first period during which an earlier estimate moves the reference at once
YOUNG_RESYNC = 0.002  # s: ... by at least this much
SPEAKER_ACTIVE_DBFS = -50.0  # a reference frame louder than this counts as the speaker playing
ATTENUATION_SMOOTHING = 0.02  # weight of each frame (~1 s) in the running echo attenuation
ECHO_HOLD = 1.0  # s after the speaker last played that the canceller counts as cancelling an echo


def unavailable() -> str | None:
    """Why software echo cancellation cannot run here, or None if it can."""
    try:
        import pywebrtc_audio  # noqa: F401
    except ImportError as e:
        import platform
        return (f"the echo canceller (pywebrtc-audio) is not installed for {platform.machine()}: it is installed "
                f"on x86_64 and aarch64 (64-bit Raspberry Pi OS) ({e})")
    except OSError as e:
        return f"the echo canceller (pywebrtc-audio) does not load here: {e}"
    return None


def require() -> None:
    """:class:`ConfigError` if ``audio.echo = aec`` cannot run here."""
    reason = unavailable()
    if reason is not None:
        raise ConfigError(f"audio.echo = aec: {reason}")


class FarEnd:
    """What the speaker played, as 16 kHz mono on the monotonic clock: the echo reference.

    :meth:`played` runs on the speaker's audio thread, :meth:`read` on the event loop; a
    lock guards the ring (both are short copies).
    """

    def __init__(self, seconds: float = RING_SECONDS) -> None:
        self._size = 1 << math.ceil(math.log2(seconds * MIC_RATE))
        self._ring = np.zeros(self._size, dtype=np.int16)
        self._end: int | None = None  # absolute 16 kHz sample index just past the last one written
        self._resampler: Resampler | None = None
        self._lock = threading.Lock()
        self.periods = 0  # speaker periods seen (diagnostics)
        self.resyncs = 0  # times the output clock jumped (a new stream, an underrun): the reference moved
        self._early_since: float | None = None  # since when periods have come earlier than the count says
        self._young_until: float | None = None  # the stream under way is young until then (None: a new one)

    def played(self, pcm: np.ndarray, rate: int, start: float) -> None:
        """The speaker hands ``pcm`` (int16, ``[frame, channel]`` or mono at ``rate``) to the
        device; its first sample is heard at ``start`` (``time.monotonic()`` terms)."""
        mono = pcm[:, 0] if pcm.ndim == 2 else pcm
        resampler = self._resampler
        if resampler is None or resampler.in_rate != rate:
            resampler = self._resampler = Resampler(rate, MIC_RATE)
        x = resampler.process(mono)
        # soxr hands out a little later than it takes in: the samples out now began then.
        at = round(start * MIC_RATE) - resampler.held - len(x) + round(len(mono) * MIC_RATE / rate)
        with self._lock:
            self.periods += 1
            end = self._end
            if self._young_until is None:
                self._young_until = start + YOUNG
            if end is not None and start < self._young_until and at < end - YOUNG_RESYNC * MIC_RATE:
                # A young stream's estimates settle from too late to right: follow each earlier one.
                self._move(end, at)
                end = at
            elif end is not None and at < end - RESYNC * MIC_RATE:
                # Earlier than the samples before it allow: the output clock's estimate jitters
                # (a sound server's more than a card's). Only an estimate that stays early for a
                # whole window moves the reference; a single one would make the canceller search.
                if self._early_since is None:
                    self._early_since = start
                if start - self._early_since < EARLY_WINDOW:
                    at = end
            else:
                self._early_since = None
            if end is None or abs(at - end) > RESYNC * MIC_RATE:  # a new stream, a pause, an underrun
                if end is not None:
                    self.resyncs += 1
                    log.debug("echo reference: the output clock moved by %+.1f ms", (at - end) / MIC_RATE * 1000)
                    if at > end:
                        self._zero(end, at)  # a pause: nothing was played in between
                end = at
                self._early_since = None
            self._write(end, x)
            self._end = end + len(x)

    def waiting_for(self, start: float, n: int) -> bool:
        """Whether the speaker, playing now, has yet to hand over some of the ``n`` samples from
        ``start`` on (False when it has, or when it has handed nothing over lately: it stopped)."""
        need = round(start * MIC_RATE) + n
        with self._lock:
            end = self._end
        return end is not None and need - IDLE * MIC_RATE < end < need

    def stopped(self, at: float) -> None:
        """The speaker's stream was stopped at ``at``, dropping what the device held: what was
        handed over for later was never played. The next stream starts a new reference (no
        early-clock window to wait out, no resampler tail of the old one)."""
        with self._lock:
            end = self._end
            cut = round(at * MIC_RATE)
            if end is not None and cut < end:
                self._zero(cut, end)
                self._end = cut
            self._early_since = None
            self._resampler = None
            self._young_until = None

    def _move(self, end: int, at: int) -> None:
        """The samples written up to ``end`` were placed ``end - at`` too late: move them earlier."""
        shift = end - at
        keep = min(self._size - shift, round(YOUNG * MIC_RATE))
        if keep > 0:
            self._write(at - keep, self._read_span(end - keep, keep))
        self._zero(at, end)
        self.resyncs += 1
        log.debug("echo reference: a young stream's output clock moved by %+.1f ms", -shift / MIC_RATE * 1000)

    def read(self, start: float, n: int) -> np.ndarray:
        """The ``n`` samples the speaker played from ``start`` on (silence where it played nothing)."""
        with self._lock:
            return self._read_span(round(start * MIC_RATE), n)

    def _read_span(self, first: int, n: int) -> np.ndarray:
        """The ``n`` samples from sample ``first`` on (the lock held)."""
        out = np.zeros(n, dtype=np.int16)
        end = self._end
        if end is None:
            return out
        lo, hi = max(first, end - self._size), min(first + n, end)
        if lo < hi:
            i = lo % self._size
            k = min(hi - lo, self._size - i)
            out[lo - first : lo - first + k] = self._ring[i : i + k]
            if k < hi - lo:
                out[lo - first + k : hi - first] = self._ring[: hi - lo - k]
        return out

    def _write(self, at: int, x: np.ndarray) -> None:
        if len(x) > self._size:
            at, x = at + len(x) - self._size, x[-self._size :]
        i = at % self._size
        k = min(len(x), self._size - i)
        self._ring[i : i + k] = x[:k]
        self._ring[: len(x) - k] = x[k:]

    def _zero(self, lo: int, hi: int) -> None:
        hi = min(hi, lo + self._size)
        self._write(lo, np.zeros(hi - lo, dtype=np.int16))


class FrameClock:
    """When each microphone frame was captured, from when frames arrive: steady, so that the
    echo's reference does not move under the canceller (every move costs AEC3 a moment of
    echo while it finds the new delay).

    A frame cannot arrive before its last sample was captured, so ``arrival - (n + 1) *
    20 ms`` for frame ``n`` bounds the stream's start from above. In the first
    :data:`SETTLE` seconds the estimate is the smallest bound; then it holds, whatever the
    jitter of a busy loop or of a reader that takes several frames at once (an estimate a
    little late only makes the reference lead the echo a little more, which AEC3 absorbs).
    It moves only when the smallest bound of a whole :data:`WINDOW` is :data:`MOVE` away
    from it (frames were lost, or the device's clock drifted), and a gap of a second (the
    microphone was reopened) starts afresh. ``jumps`` counts the moves.

    While an echo is being cancelled (``hold``), the estimate moves later at once (the
    reference must never lag the echo: that echo could not be cancelled at all) but earlier
    only by more than :data:`LEAD_LIMIT`: moving earlier only trims a lead AEC3 absorbs, and
    every move costs a moment of echo while AEC3 finds the new delay. Such a move waits for
    the speaker's silence.
    """

    SETTLE = 1.0  # s
    WINDOW = 3.0  # s
    MOVE = 0.02  # s
    LEAD_LIMIT = 0.1  # s: a lead beyond this is trimmed even while cancelling (AEC3 finds delays to ~0.45 s)
    GAP = 1.0  # s later than expected: a new stream

    def __init__(self) -> None:
        self._n = 0
        self._start: float | None = None
        self._floor = math.inf  # the smallest bound of the window under way
        self._window_ends = 0.0
        self._settled_at = 0.0
        self.jumps = 0

    def stamp(self, arrival: float, hold: bool = False) -> float:
        """The capture time of the first sample of the frame that arrives now. ``hold``: the
        canceller is cancelling an echo (:meth:`EchoCanceller.cancelling`), so a move earlier waits
        (up to :data:`LEAD_LIMIT`): a move of a few ms then costs AEC3 a second of echo while it
        finds the new delay (measured: 8-12 ms moves 0.6-0.9 s into the first reply, which began
        0.2 s after the microphone opened, let the echo through for 1-1.5 s; a 20 ms move 3 s into
        one, on a loaded machine, let enough through for a false user turn), where an estimate
        that stays a little late only makes the reference lead the echo a little more."""
        seconds = FRAME_SAMPLES / MIC_RATE
        bound = arrival - (self._n + 1) * seconds
        start = self._start
        if start is None or bound - start > self.GAP:
            self._n, start = 0, arrival - seconds
            self._settled_at, self._floor, self._window_ends = arrival + self.SETTLE, math.inf, arrival + self.WINDOW
        elif arrival < self._settled_at:
            if not hold or bound < start - self.LEAD_LIMIT:
                start = min(start, bound)
        else:
            self._floor = min(self._floor, bound)
            if arrival >= self._window_ends:
                shift = self._floor - start
                if shift > self.MOVE or shift < -(self.LEAD_LIMIT if hold else self.MOVE):
                    self.jumps += 1
                    log.debug("echo reference: the microphone's clock moved by %+.1f ms", (self._floor - start) * 1000)
                    start = self._floor
                self._floor, self._window_ends = math.inf, arrival + self.WINDOW
        self._start = start
        at = start + self._n * seconds
        self._n += 1
        return at

    def reset(self) -> None:
        self._start = None


class EchoCanceller:
    """Removes what the speaker played (``far``) from the microphone's frames.

    :meth:`push` takes each frame with the moment it was captured and returns the cleaned
    frames that are ready, in order: a frame waits (one frame, :data:`MAX_WAIT` at most)
    while the speaker has not yet handed over what it played then, so that the canceller
    never gets a reference with a hole in it (the echo of the hole would go through).
    ``attenuation_db`` is the running echo attenuation while the speaker plays
    (microphone level over cleaned level, ~1 s average): for ``/metrics`` and
    ``pi-agent test-mic --echo``.
    """

    def __init__(self, far: FarEnd, *, noise_suppression: bool = False, engine: Any = None) -> None:
        if engine is None:
            require()
            from pywebrtc_audio import AudioProcessor
            engine = AudioProcessor(MIC_RATE, 1, echo_cancellation=True, high_pass_filter=True,
                                    noise_suppression=noise_suppression)
        self._engine = engine
        # +-1 LSB of noise on the reference: AEC3 runs ~15x slower on a reference of exact
        # zeros after sound (denormal floats; measured in scripts/aec_compare.py), and the
        # speaker is silent most of the time. It costs no attenuation.
        self._dither = np.random.default_rng(0).choice(np.array([-1, 1], dtype=np.int32), size=MIC_RATE)
        self._dither_at = 0
        self._waiting: deque[tuple[bytes, float]] = deque()
        self.far = far
        self.noise_suppression = noise_suppression
        self.frames = 0
        self.waited = 0  # frames that had to wait for the speaker's reference
        self._near_power = 0.0
        self._out_power = 0.0
        self._echo_until = -math.inf  # cancelling an echo until then (the speaker played)

    def push(self, frame: bytes, captured_at: float) -> list[bytes]:
        """A microphone frame and when its first sample was captured; the cleaned frames ready now."""
        waiting = self._waiting
        waiting.append((frame, captured_at))
        ready = []
        while waiting:
            head, at = waiting[0]
            if len(waiting) <= MAX_WAIT and self.far.waiting_for(at + AHEAD, len(head) // 2):
                self.waited += len(waiting) == 1
                break
            waiting.popleft()
            ready.append(self._cancel(head, at))
        return ready

    def _cancel(self, frame: bytes, captured_at: float) -> bytes:
        near = np.frombuffer(frame, dtype="<i2")
        far = self.far.read(captured_at + AHEAD, len(near))
        self.frames += 1
        if not near.any() and not far.any():
            return frame  # digital silence both ways (a muted or virtual mic): nothing to do, and AEC3 is slow at it
        out = np.asarray(self._engine.process(near, self._dithered(far)), dtype="<i2")
        far_power = float(np.mean(far.astype(np.float32) ** 2))
        if far_power > (32768.0 * 10 ** (SPEAKER_ACTIVE_DBFS / 20)) ** 2:
            self._echo_until = captured_at + ECHO_HOLD
            a = ATTENUATION_SMOOTHING
            self._near_power += a * (float(np.mean(near.astype(np.float32) ** 2)) - self._near_power)
            self._out_power += a * (float(np.mean(out.astype(np.float32) ** 2)) - self._out_power)
        return out.tobytes()

    def _dithered(self, far: np.ndarray) -> np.ndarray:
        i = self._dither_at
        if i + len(far) > len(self._dither):
            i = 0
        self._dither_at = i + len(far)
        dithered: np.ndarray = np.clip(far + self._dither[i : i + len(far)], -32768, 32767).astype(np.int16)
        return dithered

    @property
    def attenuation_db(self) -> float | None:
        """Echo attenuation while the speaker played lately, in dB (None before it played)."""
        if self._near_power <= 0:
            return None
        return 10 * math.log10(self._near_power / max(self._out_power, 1e-3))

    def cancelling(self, now: float) -> bool:
        """Whether an echo is being cancelled: the speaker played in the :data:`ECHO_HOLD` s before
        ``now`` (the reference's time), so the reference must not move under the canceller."""
        return now < self._echo_until

    def reset(self) -> None:
        """Start afresh (the microphone was reopened: its delay may have changed)."""
        self._engine.reset()
        self._waiting.clear()
        self._near_power = self._out_power = 0.0
        self._echo_until = -math.inf
