"""Pure audio conversions: agent audio, G.711 mu-law, streaming resampling, frames, levels.

Nothing here touches a device, sleeps or reads the clock. Everything works on
numpy arrays of signed 16-bit samples (``int16``) with no Python loop per
sample, so it stays cheap on a Pi Zero 2 W.

The agent formats (``agent_output_audio_format`` / ``user_input_audio_format``)
are raw mono PCM s16le at several rates, or G.711 mu-law at 8 kHz, one byte a
sample; their table is the engine's (:mod:`pi_agent.engine.formats`), these are their
codecs. :func:`decode` turns agent audio into ``int16`` samples at the format's
rate; :class:`MicEncoder` turns the daemon's 16 kHz mic frames into the format
the agent asked for; :class:`MicPipeline` turns whatever a microphone delivers
(any rate, any channel count) into the fixed internal 20 ms frames.
"""

from __future__ import annotations

import math

import numpy as np
import soxr

from ..engine.formats import FORMATS as FORMATS  # the one table of formats; re-exported for the tests
from ..engine.formats import AudioFormat, get_format
from ..errors import ProtocolError
from . import FRAME_BYTES, FRAME_SAMPLES, MIC_RATE

# --------------------------------------------------------------------------- G.711 mu-law

_ULAW_BIAS = 0x84
# Segment end points of the 14-bit encoder (ITU-T G.711 / the Sun reference code).
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ULAW_CLIP_14 = 8159


def _build_ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _build_ulaw_encode_table() -> np.ndarray:
    """Map every int16 value (indexed as uint16) to its mu-law byte.

    Works on the top 14 bits like the reference encoder, so the output is
    byte-identical to the classic implementations (e.g. the former ``audioop``).
    """
    x = np.arange(65536, dtype=np.int32)
    x = np.where(x >= 32768, x - 65536, x) >> 2
    negative = x < 0
    mask = np.where(negative, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), _ULAW_CLIP_14) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEG_END, magnitude)
    code = (np.minimum(segment, 7) << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


_ULAW_DECODE = _build_ulaw_decode_table()
_ULAW_ENCODE = _build_ulaw_encode_table()


def ulaw_decode(data: bytes | np.ndarray) -> np.ndarray:
    """G.711 mu-law bytes -> int16 samples (one sample per byte)."""
    codes = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    return np.take(_ULAW_DECODE, codes)


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> G.711 mu-law bytes."""
    return _ULAW_ENCODE[np.asarray(samples, dtype=np.int16).view(np.uint16)].tobytes()


# --------------------------------------------------------------------------- agent audio


def decode(fmt: str | AudioFormat, data: bytes) -> tuple[np.ndarray, int]:
    """Decode one chunk of agent audio to ``(int16 mono samples, rate)``.

    Raises :class:`ProtocolError` for an unknown format or a PCM chunk whose byte
    length is not a whole number of samples.
    """
    f = fmt if isinstance(fmt, AudioFormat) else get_format(fmt)
    if f.encoding == "ulaw":
        return ulaw_decode(data), f.rate
    if len(data) % 2:
        raise ProtocolError(f"{f.name} audio chunk of {len(data)} bytes is not a whole number of 16-bit samples")
    return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False), f.rate


def decode_pcm(fmt: str | AudioFormat, data: bytes) -> tuple[bytes, int]:
    """Like :func:`decode` but returns s16le bytes, ready for ``AudioOutput.play``."""
    samples, rate = decode(fmt, data)
    return samples.astype("<i2", copy=False).tobytes(), rate


# --------------------------------------------------------------------------- resampling


class Resampler:
    """Streaming resampler (soxr) for int16 audio that keeps its state across chunks.

    Feed consecutive chunks of one continuous signal to :meth:`process`; joins are
    seamless. soxr holds back some output (its filter delay plus block size, up to
    ~0.15 s for 8 -> 48 kHz); :meth:`flush` returns that tail at the end of a
    stream and starts a fresh one. With equal rates it passes data through.
    """

    def __init__(self, in_rate: int, out_rate: int, *, channels: int = 1, quality: str = "HQ"):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self.channels = channels
        self.quality = quality
        self._stream: soxr.ResampleStream | None = None
        self._fed = False
        self._in_total = 0
        self._out_total = 0

    @property
    def passthrough(self) -> bool:
        """True when the rates are equal and data is passed through untouched."""
        return self.in_rate == self.out_rate

    def _new_stream(self) -> soxr.ResampleStream:
        return soxr.ResampleStream(self.in_rate, self.out_rate, self.channels, dtype="int16", quality=self.quality)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next chunk (1-D mono, or 2-D ``[frame, channel]``)."""
        x = np.ascontiguousarray(samples, dtype=np.int16)
        if self.passthrough:
            return x
        if self._stream is None:
            self._stream = self._new_stream()
        self._fed = True
        y = np.asarray(self._stream.resample_chunk(x))
        self._in_total += len(x)
        self._out_total += len(y)
        return y

    def flush(self) -> np.ndarray:
        """Return what the resampler still holds (end of stream) and start afresh."""
        if self.passthrough or self._stream is None or not self._fed:
            self.reset()
            shape = (0,) if self.channels == 1 else (0, self.channels)
            return np.zeros(shape, dtype=np.int16)
        shape = (0,) if self.channels == 1 else (0, self.channels)
        tail = np.asarray(self._stream.resample_chunk(np.zeros(shape, dtype=np.int16), last=True))
        self.reset()
        return tail

    @property
    def held(self) -> int:
        """Output samples owed for the input so far but still held inside soxr."""
        if not self._fed:
            return 0
        return max(0, round(self._in_total * self.out_rate / self.in_rate) - self._out_total)

    @property
    def pending(self) -> bool:
        """True when input has been fed since the last flush/reset (a tail may be held)."""
        return self._fed and not self.passthrough

    def reset(self) -> None:
        """Forget all state: the next chunk starts a new stream."""
        self._stream = None
        self._fed = False
        self._in_total = 0
        self._out_total = 0


def resample(samples: np.ndarray, in_rate: int, out_rate: int, *, quality: str = "HQ") -> np.ndarray:
    """Resample a whole (mono or ``[frame, channel]``) int16 signal in one go."""
    x = np.ascontiguousarray(samples, dtype=np.int16)
    if in_rate == out_rate or len(x) == 0:
        return x
    return np.asarray(soxr.resample(x, in_rate, out_rate, quality=quality))


# --------------------------------------------------------------------------- channels


def deinterleave(data: bytes | memoryview | np.ndarray, channels: int) -> np.ndarray:
    """Interleaved s16le -> ``[frame, channel]`` int16 view (a trailing partial frame is dropped)."""
    x = np.frombuffer(data, dtype="<i2") if not isinstance(data, np.ndarray) else data
    usable = len(x) - len(x) % channels
    return x[:usable].reshape(-1, channels)


def mix_down(frames: np.ndarray) -> np.ndarray:
    """``[frame, channel]`` int16 -> mono int16, the mean of all channels."""
    if frames.ndim == 1 or frames.shape[1] == 1:
        return frames.reshape(-1).astype(np.int16, copy=False)
    return np.asarray(np.round(frames.mean(axis=1, dtype=np.float32)), dtype=np.int16)


def pick_channel(frames: np.ndarray, channel: int) -> np.ndarray:
    """``[frame, channel]`` int16 -> one channel as mono int16 (0-based)."""
    if frames.ndim == 1:
        if channel != 0:
            raise ValueError(f"channel {channel} requested from mono audio")
        return frames
    if not 0 <= channel < frames.shape[1]:
        raise ValueError(f"channel {channel} requested from {frames.shape[1]}-channel audio")
    return np.ascontiguousarray(frames[:, channel])


def to_mono(frames: np.ndarray, channel: int | None = None) -> np.ndarray:
    """Pick ``channel`` when given, else mix every channel down."""
    return mix_down(frames) if channel is None else pick_channel(frames, channel)


def upmix(mono: np.ndarray, channels: int) -> np.ndarray:
    """Mono int16 -> ``[frame, channel]`` with the same signal on every channel."""
    return np.repeat(mono.reshape(-1, 1), channels, axis=1)


# --------------------------------------------------------------------------- levels

SILENCE_DBFS = -120.0


def rms(samples: np.ndarray) -> float:
    """Root-mean-square of int16 samples, as a fraction of full scale (0..1)."""
    if len(samples) == 0:
        return 0.0
    x = samples.astype(np.float32) / 32768.0
    return float(np.sqrt(np.mean(x * x)))


def dbfs(samples: np.ndarray | bytes) -> float:
    """RMS level in dBFS (a full-scale sine is about -3); silence gives :data:`SILENCE_DBFS`."""
    x = np.frombuffer(samples, dtype="<i2") if isinstance(samples, (bytes, bytearray, memoryview)) else samples
    level = rms(x)
    if level <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 20.0 * math.log10(level))


# --------------------------------------------------------------------------- frames


class FrameSlicer:
    """Cut a stream of int16 samples into exact frames of ``frame_samples`` (s16le bytes)."""

    def __init__(self, frame_samples: int = FRAME_SAMPLES):
        self.frame_samples = frame_samples
        self._buf = np.zeros(frame_samples * 8, dtype="<i2")
        self._fill = 0

    def push(self, samples: np.ndarray) -> list[bytes]:
        """Append samples; return every complete frame now available, oldest first."""
        n = len(samples)
        if self._fill + n > len(self._buf):
            grown = np.zeros(max(len(self._buf) * 2, self._fill + n), dtype="<i2")
            grown[: self._fill] = self._buf[: self._fill]
            self._buf = grown
        self._buf[self._fill : self._fill + n] = samples
        self._fill += n
        whole = self._fill - self._fill % self.frame_samples
        if whole == 0:
            return []
        out = [self._buf[i : i + self.frame_samples].tobytes() for i in range(0, whole, self.frame_samples)]
        rest = self._fill - whole
        self._buf[:rest] = self._buf[whole : self._fill]
        self._fill = rest
        return out

    @property
    def pending(self) -> int:
        """Samples waiting for a frame to fill."""
        return self._fill

    def reset(self) -> None:
        """Drop a partial frame."""
        self._fill = 0


class MicPipeline:
    """Microphone PCM at any rate and channel count -> 20 ms frames of 16 kHz mono s16le.

    ``channel`` picks one input channel (0-based); ``None`` mixes all of them.
    Rate conversion is streaming (one :class:`Resampler` for the whole capture).
    """

    def __init__(self, rate: int, channels: int = 1, *, channel: int | None = None, quality: str = "HQ"):
        if channel is not None and not 0 <= channel < channels:
            raise ValueError(f"channel {channel} does not exist on a {channels}-channel stream")
        self.rate = rate
        self.channels = channels
        self.channel = channel
        self._resampler = Resampler(rate, MIC_RATE, quality=quality)
        self._slicer = FrameSlicer(FRAME_SAMPLES)
        self._as_is = rate == MIC_RATE and channels == 1  # the device's own samples are the frames

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        """Convert one device buffer (read before it returns: it may be reused); return the
        complete frames (each :data:`FRAME_BYTES`)."""
        size = len(data)
        if self._as_is and size % FRAME_BYTES == 0 and not self._slicer.pending:
            # 16 kHz mono read in whole frames (what the reader asks for): the frames are copies
            # of the buffer's slices, with no array made (the same bytes the slicer would give).
            view = memoryview(data)
            return [bytes(view[at:at + FRAME_BYTES]) for at in range(0, size, FRAME_BYTES)]
        frames = deinterleave(data, self.channels)
        mono = to_mono(frames, self.channel)
        return self._slicer.push(self._resampler.process(mono))

    def input_to_next_frame(self) -> int:
        """Device frames that complete the next frame (at most one frame's worth; with a
        resampler, what it holds back is not counted, so a little more may be needed)."""
        missing = FRAME_SAMPLES - self._slicer.pending
        return max(1, math.ceil(missing * self.rate / MIC_RATE))

    def reset(self) -> None:
        """Start over (after a device restart)."""
        self._resampler.reset()
        self._slicer.reset()


# --------------------------------------------------------------------------- mic -> wire


class MicEncoder:
    """16 kHz mono mic frames -> the agent's ``user_input_audio_format`` (streaming).

    ``pcm_16000`` is a pass-through; other PCM rates are resampled with state kept
    across frames; ``ulaw_8000`` is resampled to 8 kHz then mu-law encoded.
    """

    def __init__(self, fmt: str | AudioFormat, *, quality: str = "HQ"):
        self.format = fmt if isinstance(fmt, AudioFormat) else get_format(fmt)
        self._resampler = Resampler(MIC_RATE, self.format.rate, quality=quality)

    def encode(self, frame: bytes) -> bytes:
        """Encode one chunk of 16 kHz mono s16le (any whole number of samples)."""
        if len(frame) % 2:
            raise ValueError(f"mic audio of {len(frame)} bytes is not whole 16-bit samples")
        if self._resampler.passthrough and self.format.encoding == "pcm":
            return bytes(frame)
        samples = self._resampler.process(np.frombuffer(frame, dtype="<i2"))
        if self.format.encoding == "ulaw":
            return ulaw_encode(samples)
        return samples.astype("<i2", copy=False).tobytes()

    def reset(self) -> None:
        """Start a new stream (new conversation)."""
        self._resampler.reset()
