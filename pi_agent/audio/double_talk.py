"""Keeping the user's words while the speaker plays: a linear echo canceller beside AEC3.

WebRTC's AEC3 (as ``pywebrtc-audio`` builds it: its default configuration, nothing of its
suppressor reachable) removes the echo very well while only the agent speaks, but when the
user talks over a reply whose echo is about as loud as they are, its suppressor takes the
user down with the echo: 26-31 % of their energy kept, correlation 0.61-0.65, at unity echo
gain; 11-13 % and 0.44-0.46 at +6 dB (issue 21, ``tests/test_echo_matrix.py``).

:class:`DoubleTalk` runs a linear canceller of its own beside it and hands on the linear
canceller's output instead of AEC3's while the user speaks over the echo:

- **the delay** between the reference and its echo: GCC-PHAT over the last 2 s of both, once
  a second while the speaker plays (:func:`find_delay`); taken when two looks agree;
- **the echo path**: a partitioned-block frequency-domain adaptive filter (overlap-save,
  10 ms blocks, :data:`TAPS` s long from :data:`BEFORE` s before that delay), normalised per
  frequency, as two filters: one that adapts, and the one whose output is used, which takes
  the first's coefficients only when they do better (so a filter thrown off by the user's
  voice is never the one used, and adaptation stops while the user speaks);
- **the user**: a 10 ms block is the user's when what is left after the linear canceller is
  :data:`NEAR_OVER` times what the echo (its estimate, or what the microphone heard if more),
  divided by the echo attenuation the filter achieves (the median of the last 1.5 s while only
  the echo was there, at least :data:`MIN_ERLE`), leaves to expect; three blocks of four make
  double talk. It starts only where AEC3 itself let some of the frame through (at least
  :data:`AEC3_KEPT` of the linear output's power: AEC3's suppressor judges double talk too),
  lasts while the blocks say so, and :data:`HANGOVER` frames more. A new delay, or a reference
  that moved (:meth:`DoubleTalk.moved`: the speaker's stream restarted), ends it and starts the
  path afresh.

Outside double talk AEC3's output is used, so the echo alone is removed as before. The echo
left in the linear output (14-21 dB below the echo on the matrix) is what the user's words
carry while they talk over the reply; on the matrix (``tests/test_echo_matrix.py``) they come
through at 115-119 % of their energy (the residual adds to it) with a correlation of 0.81-0.91.
It costs about 200 us per 20 ms frame while the speaker plays and 25 us while it is silent (x86,
beside AEC3's 150 and 120).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from . import MIC_RATE

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]

BLOCK = 160  # samples (10 ms) a block of the linear filter
TAPS = 0.08  # s of echo path the linear filter models
BEFORE = 0.02  # s of it before the delay found (the delay's error, a path shorter than found)
STEP = 0.5  # the adaptive filter's normalised step
MAX_DELAY = 0.45  # s: the longest delay looked for (AEC3's own reach)
HISTORY = 2.0  # s of both signals the delay is looked for in
LOOK_EVERY = 50  # frames (1 s) between two looks for the delay while the speaker plays
CLEAR_PEAK = 8.0  # a delay's correlation peak must stand this many standard deviations out
AGREE = 16  # samples (1 ms) two looks may differ by and agree
ACTIVE_DBFS = -50.0  # a reference block louder than this is the speaker playing
SILENT = 2.0  # |sample| at or below which the reference is silence (the canceller's dither is +-1)
NEAR_OVER = 4.0  # the residual over the echo left as expected that makes a block the user's
NOISE_FLOOR = 30.0  # int16 RMS below which a residual is nobody's
NEED, WINDOW = 3, 4  # blocks of the last WINDOW that must be the user's
AEC3_KEPT = 0.03  # AEC3's output over the linear output's (power) for double talk to start
HANGOVER = 5  # frames double talk lasts after the blocks stop saying so
ERLE_BLOCKS = 150  # blocks (1.5 s) of echo alone the linear attenuation is the median of
MIN_ERLE = 20.0  # the linear filter's echo attenuation (power ratio, 13 dB) before its output is used


def find_delay(near: F64, far: F64, max_lag: int) -> tuple[int, float]:
    """The lag (samples, ``near`` later than ``far``) of the strongest GCC-PHAT correlation within
    ``0 <= lag < max_lag``, and how clear it is (its height over the correlation's deviation)."""
    size = 1 << int(np.ceil(np.log2(len(near) + max_lag)))
    cross = np.fft.rfft(near, size) * np.conj(np.fft.rfft(far, size))
    cross /= np.abs(cross) + 1e-9
    corr = np.fft.irfft(cross, size)[:max_lag]
    k = int(np.argmax(corr))
    return k, float(corr[k] / (np.std(corr) + 1e-12))


class _Ring:
    """The last ``size`` samples of a signal, any recent stretch of them readable as one slice
    (each sample is written twice, a ring's length apart)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: F64 = np.zeros(2 * size)
        self._at = 0  # where the next sample goes (and its twin, a size later)

    def add(self, x: F64) -> None:
        n, at, size = len(x), self._at, self.size
        first = min(n, size - at)
        self._data[at : at + first] = self._data[at + size : at + size + first] = x[:first]
        rest = n - first
        if rest:
            self._data[:rest] = self._data[size : size + rest] = x[first:]
        self._at = (at + n) % size

    def last(self, n: int, skip: int = 0) -> F64:
        """``n`` samples ending ``skip`` samples before the newest (``n + skip <= size``)."""
        end = self._at + self.size - skip
        return self._data[end - n : end]


class _TwoFilters:
    """The linear echo path: a partitioned-block frequency-domain adaptive filter, in two copies."""

    def __init__(self, partitions: int) -> None:
        bins = BLOCK + 1
        self.partitions = partitions
        self.x: C128 = np.zeros((partitions, bins), dtype=np.complex128)  # the reference's blocks, newest first
        self.used: C128 = np.zeros((partitions, bins), dtype=np.complex128)
        self.adapting: C128 = np.zeros((partitions, bins), dtype=np.complex128)
        self.previous: F64 = np.zeros(BLOCK)
        self.power: F64 = np.zeros(bins)
        self.used_err = self.adapting_err = 0.0
        self.zeros: F64 = np.zeros(BLOCK)
        self.span = partitions * BLOCK  # samples of the reference the filter reaches back
        self.quiet = 0  # silent blocks in a row (up to partitions)

    def silent(self, x: F64) -> None:
        """A block of a silent reference: only kept (its echo is nothing to estimate); once the
        filter reaches back over nothing but silence, not even that."""
        if self.quiet < self.partitions:
            self.quiet += 1
            self._push(np.zeros(BLOCK) if self.quiet == self.partitions else x)
            if self.quiet == self.partitions:
                self.x[:] = 0

    def block(self, y: F64, x: F64, adapt: bool) -> tuple[F64, F64]:
        """One block of the microphone ``y`` and the reference ``x`` (aligned): the residual of the
        filter in use and its echo estimate."""
        self.quiet = 0
        self._push(x)
        estimate: F64 = np.fft.irfft((self.used * self.x).sum(axis=0))[BLOCK:]
        trial: F64 = np.fft.irfft((self.adapting * self.x).sum(axis=0))[BLOCK:]
        residual, trial_residual = y - estimate, y - trial
        if adapt:
            self.used_err += 0.3 * (float(residual @ residual) - self.used_err)
            self.adapting_err += 0.3 * (float(trial_residual @ trial_residual) - self.adapting_err)
            power = (np.abs(self.x) ** 2).sum(axis=0)
            self.power = np.where(self.power == 0, power, 0.5 * (self.power + power))
            norm = np.maximum(self.power, 0.01 * float(self.power.mean()) + 1.0)
            error = np.fft.rfft(np.concatenate([self.zeros, trial_residual]))
            gradient = np.fft.irfft(np.conj(self.x) * error / norm, axis=1)
            gradient[:, BLOCK:] = 0.0
            self.adapting += STEP * np.fft.rfft(gradient, axis=1)
            if self.adapting_err < 0.7 * self.used_err:  # the adapting filter does better: use it
                self.used[:] = self.adapting
                self.used_err = self.adapting_err
            elif self.adapting_err > 8 * self.used_err:  # thrown off (the user's voice): again from the used one
                self.adapting[:] = self.used
                self.adapting_err = self.used_err
        return residual, estimate

    def _push(self, x: F64) -> None:
        self.x = np.roll(self.x, 1, axis=0)
        self.x[0] = np.fft.rfft(np.concatenate([self.previous, x]))
        self.previous = x.copy()  # x may be a view of a ring that moves on


class DoubleTalk:
    """Hands on a linear canceller's output instead of AEC3's while the user talks over the echo
    (see the module docstring). :meth:`process` takes each frame's microphone samples, the
    reference given to AEC3 and AEC3's output; ``double_talk_frames`` counts the frames handed on."""

    def __init__(self) -> None:
        self._max_lag = int(MAX_DELAY * MIC_RATE)
        self._history = int(HISTORY * MIC_RATE)
        self._far = _Ring(self._history + self._max_lag)
        self._near = _Ring(self._history)
        self._playing: deque[bool] = deque(maxlen=round(HISTORY * 50))
        self._frames = 0
        self._candidate: int | None = None
        self.delay: int | None = None  # samples from the reference to its echo, once found
        self._filters = _TwoFilters(round(TAPS * MIC_RATE / BLOCK))
        self._erle: deque[float] = deque(maxlen=ERLE_BLOCKS)
        self._votes: deque[bool] = deque([False] * WINDOW, maxlen=WINDOW)
        self._hang = 0
        self._active = BLOCK * (32768 * 10 ** (ACTIVE_DBFS / 20)) ** 2
        self.double_talk_frames = 0

    def process(self, near: npt.NDArray[np.int16], far: npt.NDArray[np.int16],
                cancelled: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        n = len(near)
        y, x = near.astype(np.float64), far.astype(np.float64)
        self._far.add(x)
        self._near.add(y)
        self._playing.append(float(x @ x) * BLOCK / max(n, 1) > self._active)
        self._frames += 1
        if self._frames % LOOK_EVERY == 0 and sum(self._playing) > len(self._playing) // 2:
            self._look_for_the_delay()
        if self.delay is None or n % BLOCK:
            return cancelled
        skip = max(0, self.delay - round(BEFORE * MIC_RATE))
        aligned = self._far.last(n, skip)
        out = np.empty(n)
        user = False
        erle = float(np.median(self._erle)) if len(self._erle) >= ERLE_BLOCKS // 3 else 1.0
        if self._hang == 0 and float(np.max(np.abs(self._far.last(n + self._filters.span, skip)))) <= SILENT:
            for i in range(0, n, BLOCK):  # nothing played that could echo now: nothing to do but keep it
                self._filters.silent(aligned[i : i + BLOCK])
            return cancelled
        for i in range(0, n, BLOCK):
            yb, xb = y[i : i + BLOCK], aligned[i : i + BLOCK]
            playing = float(xb @ xb) > self._active
            residual, estimate = self._filters.block(yb, xb, playing and self._hang == 0)
            left, echo, heard = float(residual @ residual), float(estimate @ estimate), float(yb @ yb)
            said = left > NEAR_OVER * max(echo, heard) / erle + BLOCK * NOISE_FLOOR**2  # more than the echo leaves
            self._votes.append(playing and erle > MIN_ERLE and said)
            voted = sum(self._votes) >= NEED
            if playing and not voted and self._hang == 0:
                self._erle.append(float(yb @ yb) / max(left, 1.0))
            user = user or voted
            out[i : i + BLOCK] = residual
        if user and self._hang == 0:
            kept = float(np.mean(cancelled.astype(np.float64) ** 2))
            user = kept >= AEC3_KEPT * float(np.mean(out**2))
        if user:
            self._hang = HANGOVER
            self.double_talk_frames += 1
        elif self._hang > 0:
            self._hang -= 1
        if self._hang == 0 or float(out @ out) > 2 * float(y @ y):
            # Not double talk; or the linear output well above what the microphone heard: a filter
            # off its path, not a voice.
            return cancelled
        result: npt.NDArray[np.int16] = np.clip(np.round(out), -32768, 32767).astype(np.int16)
        return result

    @property
    def active(self) -> bool:
        """The last frame was handed on from the linear canceller (the user talks over the echo)."""
        return self._hang > 0

    def _look_for_the_delay(self) -> None:
        lag, clear = find_delay(self._near.last(self._history), self._far.last(self._history), self._max_lag)
        if clear < CLEAR_PEAK:
            return
        agreed = self._candidate is not None and abs(lag - self._candidate) <= AGREE
        if agreed and (self.delay is None or abs(lag - self.delay) > AGREE):  # found, or moved: a path to learn
            self.delay = lag
            self._filters = _TwoFilters(self._filters.partitions)
            self._erle.clear()
            self._hang = 0
        self._candidate = lag

    def moved(self) -> None:
        """The reference moved against the echo (the speaker's stream restarted, its clock jumped):
        the path is to be learnt again (the delay is looked for again as always, and kept meanwhile:
        a new stream's reported moment of playing is off by a few ms); AEC3's output goes on until
        the linear filter is of use again."""
        self._filters = _TwoFilters(self._filters.partitions)
        self._erle.clear()
        self._hang = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]
