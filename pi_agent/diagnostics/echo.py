"""``pi-agent test-mic --echo``: play a test signal, record it, and say whether ``audio.echo = aec``
will work with this speaker and microphone (the measuring is :mod:`pi_agent.audio.echo_analysis`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from ..audio import MIC_RATE
from ..audio.echo_analysis import at_dbfs, delay
from ..audio.formats import dbfs
from ..config import AudioSettings
from ..errors import DeviceError
from .report import device_name

ECHO_SIGNAL_DBFS = -20.0  # the test signal's level
ECHO_QUIET = 1.0  # s of silence first: the room's noise floor
ECHO_CONVERGED = 2.0  # s into the signal after which the canceller is judged
MAX_ECHO_DELAY = 0.4  # s: AEC3 finds an echo this late (measured: 0.45 s works, 0.55 s does not)
ECHO_LAGS = np.r_[np.arange(0, MIC_RATE), np.arange(-int(0.1 * MIC_RATE), 0)]  # where to look: -0.1 s to +1 s


@dataclass
class EchoReport:
    """What ``test-mic --echo`` measured (all levels in dBFS; ``None``: not measurable)."""

    noise_floor: float
    echo_level: float
    delay_ms: float | None
    cancelled_level: float | None
    verdict: str
    ok: bool

    @property
    def return_loss(self) -> float:
        """How much quieter the echo is at the microphone than the signal sent to the speaker."""
        return ECHO_SIGNAL_DBFS - self.echo_level

    @property
    def attenuation(self) -> float | None:
        return None if self.cancelled_level is None else self.echo_level - self.cancelled_level


def echo_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Broadband noise in 250 ms bursts with short gaps (what AEC3 converges on quickly), at
    :data:`ECHO_SIGNAL_DBFS`, 16 kHz."""
    rng = np.random.default_rng(seed)
    n = int(seconds * MIC_RATE)
    x = rng.normal(0.0, 1.0, n)
    x = np.convolve(x, [0.5, 0.3, 0.2], mode="same")  # a little less top end, like speech
    gate = (np.arange(n) // (MIC_RATE // 4)) % 6 != 5  # a gap every 1.5 s
    x *= gate
    x = at_dbfs(x, ECHO_SIGNAL_DBFS, float(np.sqrt(np.mean(x[gate] ** 2))))
    return np.clip(np.round(x), -32767, 32767).astype("<i2")


def judge_echo(mic: np.ndarray, reference: np.ndarray, cleaned: np.ndarray | None) -> EchoReport:
    """Measure an echo test: ``mic`` and ``reference`` are aligned sample for sample on the
    canceller's clock (16 kHz, :data:`ECHO_QUIET` of silence first); ``cleaned`` is the
    canceller's output (None: it is not installed)."""
    quiet = slice(int(0.2 * MIC_RATE), int(ECHO_QUIET * MIC_RATE))
    playing = np.abs(reference) > 0
    floor = dbfs(mic[quiet])
    start = int((ECHO_QUIET + 0.3) * MIC_RATE)
    echo = dbfs(mic[start:][playing[start:]]) if playing[start:].any() else floor
    if echo < floor + 6:
        return EchoReport(floor, echo, None, None, "the microphone does not hear the speaker (the echo is not above "
                          "the room's noise): no cancellation is needed; full_duplex will do (check the speaker's "
                          "volume if you expected to hear it)", True)
    lag = delay(mic[start:], reference[start:], ECHO_LAGS)  # how late the echo is
    later = int((ECHO_QUIET + ECHO_CONVERGED) * MIC_RATE)
    cancelled = None
    if cleaned is not None and len(cleaned) > later:
        usable = playing[later : len(cleaned)]
        cancelled = dbfs(cleaned[later:][usable]) if usable.any() else None
    report = EchoReport(floor, echo, lag * 1000 / MIC_RATE, cancelled, "", False)
    if not 0 <= lag <= MAX_ECHO_DELAY * MIC_RATE:
        report.verdict = (f"the echo comes {report.delay_ms:.0f} ms after what the canceller takes for its moment "
                          f"of playing; it can find one 0-{MAX_ECHO_DELAY * 1000:.0f} ms late: aec will not work "
                          "with these devices (use half_duplex)")
    elif report.attenuation is None:
        report.verdict = "the canceller is not installed here (see pi-agent check): use half_duplex"
    elif report.attenuation >= 20:
        report.verdict = "aec will work: set audio.echo = \"aec\""
        report.ok = True
    elif report.attenuation >= 10:
        report.verdict = ("aec removes only part of the echo here: a voice may not interrupt reliably; lower the "
                          "speaker's volume or move the microphone away from it, or use half_duplex")
    else:
        report.verdict = "aec does not work with this speaker and microphone: use half_duplex"
    return report


async def test_echo(audio: AudioSettings, seconds: float = 6.0) -> int:
    """Play a test signal, record it, and say whether ``audio.echo = aec`` will work here."""
    from ..audio.echo import EchoCanceller, FarEnd, FrameClock, unavailable
    from ..parts import make_audio_input, make_audio_output

    audio_out = make_audio_output(audio)
    if not hasattr(audio_out, "far_end"):
        print("pi-agent test-mic --echo: needs a sound card's speaker (audio.output_wav is set)")
        return 1
    far = FarEnd()
    audio_out.far_end = far
    canceller = EchoCanceller(far) if unavailable() is None else None
    clock = FrameClock()
    audio_in = make_audio_input(audio)
    raw: list[tuple[bytes, float]] = []
    cleaned: list[bytes] = []

    def on_frame(frame: bytes) -> None:
        at = clock.stamp(time.monotonic())
        raw.append((frame, at))
        if canceller is not None:
            cleaned.extend(canceller.push(frame, at))

    errors: list[DeviceError] = []
    try:
        await audio_out.open(errors.append)
        await audio_in.open(on_frame, errors.append)
    except DeviceError as e:
        await audio_out.close()
        print(f"pi-agent test-mic --echo: {e}")
        return 1
    print(f"playing a test signal on {device_name(audio_out)} for {seconds:g} s and recording it on "
          f"{device_name(audio_in)}; keep the room quiet", flush=True)
    try:
        await asyncio.sleep(ECHO_QUIET)
        audio_out.play(echo_signal(seconds).tobytes(), MIC_RATE)
        while audio_out.audible_until() > time.monotonic() and not errors:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        await audio_in.close()
        await audio_out.close()
    if errors or len(raw) < 50:
        print(f"pi-agent test-mic --echo: {errors[0] if errors else 'no audio arrived'}")
        return 1
    mic = np.frombuffer(b"".join(f for f, _ in raw), dtype="<i2")
    reference = np.concatenate([far.read(at, len(f) // 2) for f, at in raw])
    out = np.frombuffer(b"".join(cleaned), dtype="<i2") if canceller is not None else None
    r = judge_echo(mic, reference, out)
    print(f"room noise {r.noise_floor:.0f} dBFS; echo at the microphone {r.echo_level:.0f} dBFS (the speaker's "
          f"signal {ECHO_SIGNAL_DBFS:.0f} dBFS: {r.return_loss:.0f} dB lost on the way)")
    if r.delay_ms is not None:
        print(f"echo delay {r.delay_ms:.0f} ms after the speaker's clock says it played")
    if r.attenuation is not None:
        print(f"with cancellation: {r.cancelled_level:.0f} dBFS, {r.attenuation:.0f} dB below the echo")
    print(r.verdict)
    return 0 if r.ok else 1
