"""``pi-agent test-mic``: the microphone's level and speech, and with ``--wake-word`` its detections."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..audio import FRAME_BYTES, FRAME_MS, MIC_RATE
from ..audio.formats import dbfs
from ..config import AudioSettings, CaptureSettings
from ..errors import DeviceError
from .report import device_name


async def test_mic(audio: AudioSettings, capture: CaptureSettings, seconds: float = 3.0,
                   play_back: bool = False, wake_word: bool = False) -> int:
    from ..parts import make_audio_input, make_audio_output, make_vad

    listener = _WakeWordListener(capture) if wake_word else None  # a model that does not load: exit 78
    audio_in = make_audio_input(audio)
    frames: list[bytes] = []
    errors: list[DeviceError] = []

    def on_frame(frame: bytes) -> None:
        frames.append(frame)
        if listener is not None:
            listener.feed(frame, len(frames) * FRAME_MS / 1000)

    try:
        await audio_in.open(on_frame, errors.append)
    except DeviceError as e:
        print(f"pi-agent test-mic: {e}")
        return 1
    if listener is not None:
        print(f"listening {seconds:g} s on {device_name(audio_in)} for the {listener.detector.description}: say it "
              "a few times, near and far, and talk as people will near it", flush=True)
    else:
        print(f"recording {seconds:g} s from {device_name(audio_in)}: speak now", flush=True)
    try:
        await asyncio.sleep(seconds)
    finally:
        await audio_in.close()
    if errors or not frames:
        print(f"pi-agent test-mic: {errors[0] if errors else 'no audio arrived'}")
        return 1
    vad = make_vad(capture.vad_aggressiveness)
    voiced = sum(vad(f) for f in frames if len(f) == FRAME_BYTES)
    recorded = b"".join(frames)
    samples = np.frombuffer(recorded, dtype="<i2")
    peak = 20 * np.log10(max(1, int(np.abs(samples.astype(np.int32)).max())) / 32768)
    print(f"level {dbfs(recorded):.1f} dBFS (peak {peak:.1f} dBFS); VAD heard speech in "
          f"{voiced * 20} ms of {len(frames) * 20} ms: {'speech detected' if voiced >= 10 else 'no speech'}")
    if listener is not None:
        listener.summary()
    if play_back:
        audio_out = make_audio_output(audio)
        await audio_out.open(errors.append)
        try:
            audio_out.play(recorded, MIC_RATE)
            while audio_out.audible_until() > time.monotonic():
                await asyncio.sleep(0.05)
        finally:
            await audio_out.close()
    return 0


class _WakeWordListener:
    """``test-mic --wake-word``: each detection as it happens, and the near misses, so that the
    admin can choose ``capture.wake_word_threshold`` for the room."""

    NEAR_MISS = 0.5  # of the threshold: a probability this high without a detection is shown

    def __init__(self, capture: CaptureSettings) -> None:
        from ..audio.wakeword import WakeWordDetector
        self.detector = WakeWordDetector(capture.wake_word, capture.wake_word_threshold)
        self.detections: list[float] = []
        self._miss: tuple[float, float] | None = None  # the highest probability below the threshold, when
        self._best_miss = 0.0

    def feed(self, frame: bytes, at: float) -> None:
        d = self.detector
        p = d.probability(frame)
        if p >= d.threshold:
            d.reset()
            self._miss = None  # the rise to this detection, not a miss
            self.detections.append(p)
            print(f"{at:7.2f} s  wake word heard: probability {p:.3f} (threshold {d.threshold:g})", flush=True)
            return
        if p > 0 and (self._miss is None or p > self._miss[0]):
            self._miss = (p, at)
        if self._miss is not None and at - self._miss[1] > 0.5:  # no detection followed it
            self._flush_miss()

    def _flush_miss(self) -> None:
        if self._miss is None:
            return
        p, at = self._miss
        self._miss = None
        self._best_miss = max(self._best_miss, p)
        if p >= self.NEAR_MISS * self.detector.threshold:
            print(f"{at:7.2f} s  near miss: probability {p:.3f} (threshold {self.detector.threshold:g})", flush=True)

    def summary(self) -> None:
        self._flush_miss()
        d = self.detector
        heard = ", ".join(f"{p:.2f}" for p in self.detections) or "none"
        print(f"wake word {d.phrase!r}: {len(self.detections)} detection(s) ({heard}); highest probability "
              f"without one: {self._best_miss:.2f}. Missed it? Lower capture.wake_word_threshold (now {d.threshold:g}) "
              "towards the near misses; woken by other talk? Raise it.")
