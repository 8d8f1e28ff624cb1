"""``pi-agent test-speaker``: a tone on the speaker the daemon uses."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..audio import MIC_RATE
from ..config import AudioSettings
from ..errors import DeviceError
from .report import device_name


async def test_speaker(audio: AudioSettings, seconds: float = 1.0, freq: float = 440.0) -> int:
    from ..parts import make_audio_output

    audio_out = make_audio_output(audio)
    errors: list[DeviceError] = []
    try:
        await audio_out.open(errors.append)
    except DeviceError as e:
        print(f"pi-agent test-speaker: {e}")
        return 1
    try:
        t = np.arange(int(MIC_RATE * seconds)) / MIC_RATE
        ramp = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)  # 10 ms fades: no clicks
        tone = (0.3 * 32767 * ramp * np.sin(2 * np.pi * freq * t)).astype("<i2")
        print(f"playing a {freq:g} Hz tone for {seconds:g} s on {device_name(audio_out)}", flush=True)
        audio_out.play(tone.tobytes(), MIC_RATE)
        while audio_out.audible_until() > time.monotonic() and not errors:
            await asyncio.sleep(0.05)
    finally:
        await audio_out.close()
    if errors:
        print(f"pi-agent test-speaker: {errors[0]}")
        return 1
    print("done")
    return 0
