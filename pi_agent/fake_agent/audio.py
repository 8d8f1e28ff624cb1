"""Audio helpers of the fake agent: wire formats, G.711 mu-law, the reply clip, an energy gate.

Pure code: no device or network library, no clock. The energy gate counts time in
samples of the audio it is fed, so it gives the same answer however fast a client sends.

The format table and the mu-law codec are this module's own, written apart from the
client's (:mod:`pi_agent.engine.formats`, :mod:`pi_agent.audio.formats`) on purpose: the
fake agent plays the service, so it must not share a mistake of the client it tests.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

ASSETS = Path(__file__).resolve().parent / "assets"
REPLY_WAV = ASSETS / "reply.wav"
REPLY_TEXT = "It is sunny in Lisbon, twenty two degrees, with a light breeze from the sea."


@dataclass(frozen=True)
class AudioFormat:
    """One of the agent's audio formats, e.g. ``pcm_16000`` or ``ulaw_8000``."""

    name: str
    rate: int
    encoding: str  # "pcm" (s16le) or "ulaw" (G.711 mu-law)

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm" else 1

    def seconds(self, n_bytes: int) -> float:
        """Duration of ``n_bytes`` of audio in this format."""
        return n_bytes / (self.bytes_per_sample * self.rate)

    def bytes_for(self, seconds: float) -> int:
        """Whole-sample byte count closest to ``seconds`` of audio (at least one sample)."""
        return max(1, round(seconds * self.rate)) * self.bytes_per_sample


FORMATS: dict[str, AudioFormat] = {
    f.name: f
    for f in (
        AudioFormat("pcm_8000", 8000, "pcm"),
        AudioFormat("pcm_16000", 16000, "pcm"),
        AudioFormat("pcm_22050", 22050, "pcm"),
        AudioFormat("pcm_24000", 24000, "pcm"),
        AudioFormat("pcm_44100", 44100, "pcm"),
        AudioFormat("pcm_48000", 48000, "pcm"),
        AudioFormat("ulaw_8000", 8000, "ulaw"),
    )
}


def audio_format(name: str) -> AudioFormat:
    """The :class:`AudioFormat` called ``name``; ``ValueError`` naming the valid ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown audio format {name!r}; expected one of {', '.join(FORMATS)}") from None


# --- G.711 mu-law --------------------------------------------------------------------

_ULAW_BIAS = 0x84
# The classic G.711 reference works on 14-bit magnitudes: clip, add the bias (33), then
# find the segment from the magnitude's top bits; a magnitude past segment 7 saturates.
_ULAW_CLIP_14 = 8159
_ULAW_SEGMENT = np.array([0, 0] + [int(np.log2(i)) for i in range(2, 257)], dtype=np.int32)


def ulaw_encode(samples: np.ndarray) -> bytes:
    """Encode signed 16-bit samples as G.711 mu-law bytes (bit-exact with the reference)."""
    x = np.asarray(samples, dtype=np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), _ULAW_CLIP_14) + (_ULAW_BIAS >> 2)
    segment = _ULAW_SEGMENT[magnitude >> 5]
    code = np.where(segment >= 8, 0x7F, (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F))
    return ((code ^ mask) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """Decode G.711 mu-law bytes to signed 16-bit samples."""
    u = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    segment = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + _ULAW_BIAS) << segment
    magnitude -= _ULAW_BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


# --- conversions ---------------------------------------------------------------------


def encode(samples: np.ndarray, fmt: AudioFormat) -> bytes:
    """Signed 16-bit samples (already at ``fmt.rate``) as wire bytes of ``fmt``."""
    if fmt.encoding == "ulaw":
        return ulaw_encode(samples)
    return np.asarray(samples, dtype="<i2").tobytes()


def decode(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """Wire bytes of ``fmt`` as signed 16-bit samples; a trailing half sample is dropped."""
    if fmt.encoding == "ulaw":
        return ulaw_decode(data)
    usable = len(data) - len(data) % 2
    return np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample signed 16-bit mono samples with soxr (HQ), clipping to the int16 range."""
    if from_rate == to_rate:
        return np.asarray(samples, dtype=np.int16)
    out: np.ndarray = soxr.resample(np.asarray(samples, dtype=np.float32) / 32768.0, from_rate, to_rate)
    return np.clip(np.round(out * 32768.0), -32768, 32767).astype(np.int16)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Samples (mono int16) and rate of a 16-bit PCM WAV file; stereo is averaged to mono."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        channels, rate = w.getnchannels(), w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data.astype(np.int16), rate


def reply_audio(fmt: AudioFormat, max_seconds: float | None = None, path: Path = REPLY_WAV) -> bytes:
    """The shipped reply speech converted to ``fmt``, cut to ``max_seconds`` if given."""
    samples, rate = read_wav(path)
    if max_seconds is not None:
        samples = samples[: max(1, int(max_seconds * rate))]
    return encode(resample(samples, rate, fmt.rate), fmt)


# --- energy gate ---------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechStarted:
    """Speech confirmed; ``at`` is the audio position (seconds) where it began."""

    at: float


@dataclass(frozen=True)
class SpeechEnded:
    """The utterance is over; ``duration`` is from its first to its last loud block (s)."""

    at: float
    duration: float


GateEvent = SpeechStarted | SpeechEnded


class EnergyGate:
    """A simple end-of-speech detector on block RMS energy.

    Speech starts once ``min_speech_ms`` of blocks above ``threshold_db`` (dBFS) add up
    without a gap of ``end_silence_ms``; it ends after ``end_silence_ms`` below it.
    Time is counted in samples fed, not wall-clock time.
    """

    def __init__(
        self,
        rate: int,
        threshold_db: float = -40.0,
        min_speech_ms: float = 150.0,
        end_silence_ms: float = 500.0,
        block_ms: float = 20.0,
    ) -> None:
        self.rate = rate
        self._threshold = 32768.0 * 10 ** (threshold_db / 20.0)
        self._block = max(1, int(rate * block_ms / 1000))
        self._min_speech = min_speech_ms / 1000.0
        self._end_silence = end_silence_ms / 1000.0
        self._pending = np.zeros(0, dtype=np.int16)
        self._position = 0  # samples consumed in whole blocks
        self.in_speech = False
        self._start: float | None = None  # candidate or confirmed start (s)
        self._loud = 0.0  # seconds above threshold since _start
        self._last_loud_end = 0.0
        self._quiet = 0.0  # seconds below threshold in a row

    def feed(self, samples: np.ndarray) -> list[GateEvent]:
        """Consume samples; return the speech starts and ends they complete, in order."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.int16)])
        n_blocks = len(data) // self._block
        self._pending = data[n_blocks * self._block :]
        events: list[GateEvent] = []
        if n_blocks == 0:
            return events
        blocks = data[: n_blocks * self._block].astype(np.float64).reshape(n_blocks, self._block)
        rms = np.sqrt(np.mean(blocks * blocks, axis=1))
        step = self._block / self.rate
        for level in rms:
            begin = self._position / self.rate
            self._position += self._block
            end = self._position / self.rate
            if level >= self._threshold:
                if self._start is None:
                    self._start, self._loud = begin, 0.0
                self._loud += step
                self._quiet = 0.0
                self._last_loud_end = end
                if not self.in_speech and self._loud >= self._min_speech - 1e-9:
                    self.in_speech = True
                    events.append(SpeechStarted(at=self._start))
            elif self._start is not None:
                self._quiet += step
                if self._quiet >= self._end_silence - 1e-9:
                    if self.in_speech:
                        events.append(SpeechEnded(at=end, duration=self._last_loud_end - self._start))
                    self.in_speech = False
                    self._start = None
        return events
