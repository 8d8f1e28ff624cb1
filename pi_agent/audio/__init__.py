"""Audio: the microphone and speaker seams, and their PortAudio and WAV-file backends.

The daemon's internal microphone format is fixed: 16 kHz, mono, signed 16-bit
little-endian, cut into 20 ms frames (320 samples, 640 bytes). Every input
backend resamples and down-mixes to it; conversion to the agent's announced
``user_input_audio_format`` happens at the wire (see :mod:`pi_agent.audio.formats`).

Agent audio reaches an output backend as 16-bit mono PCM at the rate of its
format; the backend resamples it, streaming, to whatever rate the device runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import DeviceError

MIC_RATE = 16_000
FRAME_MS = 20
FRAME_SAMPLES = MIC_RATE * FRAME_MS // 1000  # 320
FRAME_BYTES = FRAME_SAMPLES * 2  # 640

FrameCallback = Callable[[bytes], None]
ErrorCallback = Callable[[DeviceError], None]


class AudioInput(Protocol):
    """A microphone.

    ``open`` starts delivering frames: ``on_frame(frame)`` is called *on the event
    loop's thread* with exactly :data:`FRAME_BYTES` of 16 kHz mono s16le, every
    20 ms. A failure after ``open`` (device unplugged) is reported once through
    ``on_error`` on the loop's thread; the owner then closes and reopens.
    """

    @property
    def overflows(self) -> int:
        """Frames lost because the device or the loop could not keep up (counted, not fatal)."""

    async def open(self, on_frame: FrameCallback, on_error: ErrorCallback) -> None:
        """Open the device; raise :class:`DeviceError` with a clear message if it cannot."""

    async def close(self) -> None:
        """Stop and release the device. Idempotent."""


class AudioOutput(Protocol):
    """A speaker fed from a jitter buffer; safe to call from the event loop only."""

    @property
    def underruns(self) -> int:
        """Times the speaker ran dry in the middle of agent audio (silence was played)."""

    @property
    def dropped_frames(self) -> int:
        """Agent audio dropped (in 20 ms frames) because the speaker's queue was full."""

    async def open(self, on_error: ErrorCallback) -> None:
        """Open the device; raise :class:`DeviceError` with a clear message if it cannot."""

    async def close(self) -> None:
        """Stop and release the device. Idempotent."""

    def play(self, pcm: bytes, rate: int) -> None:
        """Queue 16-bit mono PCM at ``rate`` Hz (resampled, streaming, to the device rate);
        beyond a bound of queued audio, drop it (counted in :attr:`dropped_frames`)."""

    def flush(self) -> None:
        """Drop everything queued: the speaker is silent within one device period."""

    def end_stream(self) -> None:
        """The agent turn being played is complete: running dry now is not an underrun."""

    def audible_until(self) -> float:
        """``time.monotonic()`` at which all queued audio will have left the speaker,
        judged from the device's output clock (``<= now`` when nothing is queued)."""

    def play_earcon(self, name: str) -> None:
        """Mix a short feedback sound (``listening``, ``done``, ``error``, ``offline``)."""

    def duck(self, gain: float) -> None:
        """Play everything ``gain`` (0 to 1) times as loud from the next period on (1.0: not ducked)."""
