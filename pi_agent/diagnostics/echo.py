"""``pi-agent test-mic --echo``: play a test signal, record it, and say whether ``audio.echo = aec``
will work with this speaker and microphone (the measuring is :mod:`pi_agent.audio.echo_analysis`).

Three figures, each with its verdict: the echo's delay (can the canceller find it), its attenuation
(does the canceller remove it), and double talk: the recording is run through a fresh canceller
again with a voice added where the user would talk over a reply (at :data:`VOICE_DBFS`), the
echo lowered by ``audio.duck_db`` from :data:`DUCK_REACT` after the voice begins as the daemon
lowers a reply, and what the canceller keeps of that voice is measured (energy, correlation after
alignment), so that a speaker too loud or too close shows before a user finds it out."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from ..audio import MIC_RATE
from ..audio.echo_analysis import Match, at_dbfs, delay, match
from ..audio.formats import dbfs
from ..config import AudioSettings
from ..errors import DeviceError
from .report import device_name

ECHO_SIGNAL_DBFS = -20.0  # the test signal's level
ECHO_QUIET = 1.0  # s of silence first: the room's noise floor
ECHO_CONVERGED = 2.0  # s into the signal after which the canceller is judged
MAX_ECHO_DELAY = 0.4  # s: AEC3 finds an echo this late (measured: 0.45 s works, 0.55 s does not)
GOOD_ATTENUATION = 25.0  # dB of echo removed that make a good set-up (issue 21's target)
PART_ATTENUATION = 10.0  # dB below which the canceller does not work here
DT_ENERGY, DT_CORR = 0.5, 0.7  # double talk: what a good set-up keeps of the stand-in voice
DT_FROM, DT_SECONDS = 3.0, 2.0  # s into the signal the voice starts, and how long it speaks
VOICE_DBFS = -26.0  # the stand-in user's level at the microphone while it speaks (the test signal's echo
# is compared with it: a speaker played as loud as a reply, at -20 dBFS, whose echo comes back above
# this is louder at the microphone than such a user)
DUCK_REACT = 0.1  # s from a voice's onset to a lowered speaker: the 3 voiced frames the gate waits for,
# and the period or two the speaker holds ahead
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
    double_talk: Match | None = None  # what the canceller kept of a voice at VOICE_DBFS
    duck_db: float = 0.0  # ... with the reply lowered by this much once the voice was heard

    @property
    def return_loss(self) -> float:
        """How much quieter the echo is at the microphone than the signal sent to the speaker."""
        return ECHO_SIGNAL_DBFS - self.echo_level

    @property
    def attenuation(self) -> float | None:
        return None if self.cancelled_level is None else self.echo_level - self.cancelled_level

    @property
    def double_talk_energy(self) -> float | None:
        return None if self.double_talk is None else float(10 ** (self.double_talk.level_db / 10))

    def figures(self) -> list[str]:
        """One line per figure, each with its verdict: ``[ ok ]``, ``[warn]`` or ``[FAIL]``."""
        lines = []
        if self.delay_ms is not None:
            good = 0 <= self.delay_ms <= MAX_ECHO_DELAY * 1000
            advice = "" if good else ("; the card reports its latency wrong, or something delays the sound on the "
                                      "way: use half_duplex")
            lines.append(f"[{' ok ' if good else 'FAIL'}] delay: {self.delay_ms:.0f} ms (the canceller finds an "
                         f"echo 0-{MAX_ECHO_DELAY * 1000:.0f} ms late{advice})")
        a = self.attenuation
        if a is not None:
            mark = " ok " if a >= GOOD_ATTENUATION else "warn" if a >= PART_ATTENUATION else "FAIL"
            advice = "" if a >= GOOD_ATTENUATION else "; turn the speaker down or move the microphone away from it"
            lines.append(f"[{mark}] attenuation: {a:.0f} dB (good: {GOOD_ATTENUATION:.0f} dB or more{advice})")
        energy, dt = self.double_talk_energy, self.double_talk
        if energy is not None and dt is not None:
            good = energy >= DT_ENERGY and dt.corr >= DT_CORR
            advice = "" if good else ("; the canceller takes a user's words down with the echo: turn the speaker "
                                      "down or move it away, so that the user is louder than the echo at the "
                                      "microphone")
            ducked = f", the reply lowered by {self.duck_db:g} dB once it is heard" if self.duck_db else ""
            lines.append(f"[{' ok ' if good else 'warn'}] double talk: a voice at {VOICE_DBFS:.0f} dBFS keeps "
                         f"{energy * 100:.0f}% of its energy, correlation {dt.corr:.2f}{ducked} (good: "
                         f"{DT_ENERGY * 100:.0f}% and {DT_CORR} or more{advice})")
        return lines


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


def voice(seconds: float, dbfs_level: float) -> np.ndarray:
    """A stand-in for a user's voice (float, 16 kHz): a harmonic tone whose pitch wanders between
    110 and 190 Hz, in syllables four a second, at ``dbfs_level`` while it sounds."""
    n = int(seconds * MIC_RATE)
    t = np.arange(n) / MIC_RATE
    f0 = 150 + 40 * np.sin(2 * np.pi * 0.7 * t) + 15 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / MIC_RATE
    x = sum(np.sin(k * phase) / k * (1.0 if k * 150 < 1000 else 0.3) for k in range(1, 24))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t) * 1.4, 0, 1)
    y = np.asarray(x * syllables, dtype=np.float64)
    loud = syllables > 0.5
    return at_dbfs(y, dbfs_level, float(np.sqrt(np.mean(y[loud] ** 2))))


def replay_double_talk(mic: np.ndarray, reference: np.ndarray, lag: int, level: float = VOICE_DBFS,
                       duck_db: float = 0.0) -> Match | None:
    """Run ``mic`` and ``reference`` (aligned, as :func:`judge_echo` takes them) through a fresh
    canceller again, a :func:`voice` at ``level`` dBFS added :data:`DT_FROM` s into the test
    signal, the speaker lowered by ``duck_db`` :data:`DUCK_REACT` s later (the reference from
    then, the echo in the recording ``lag`` samples later, as :func:`judge_echo` found it): how
    much of the voice comes out (None: no canceller here)."""
    from ..audio import FRAME_SAMPLES
    from ..audio.echo import EchoCanceller, FarEnd, unavailable

    if unavailable() is not None:
        return None
    start = int((ECHO_QUIET + DT_FROM) * MIC_RATE)
    user = np.zeros(len(mic))
    said = voice(DT_SECONDS, level)[: max(0, len(mic) - start)]
    user[start : start + len(said)] = said
    echo, reference = mic.astype(np.float64), np.asarray(reference, dtype=np.float64)
    if duck_db > 0:
        lowered = start + int(DUCK_REACT * MIC_RATE)
        gain = 10 ** (-duck_db / 20)
        reference[lowered:] *= gain
        echo[lowered + max(0, lag) :] *= gain
        reference = np.round(reference)
    near = np.clip(np.round(echo + user), -32768, 32767).astype("<i2")
    far = FarEnd(seconds=len(mic) / MIC_RATE + 2)
    t0 = 100.0
    far.played(reference.astype(np.int16), MIC_RATE, t0)
    canceller = EchoCanceller(far)
    out = [canceller.push(near[i : i + FRAME_SAMPLES].tobytes(), t0 + i / MIC_RATE)
           for i in range(0, len(near) - FRAME_SAMPLES + 1, FRAME_SAMPLES)]
    cleaned = np.frombuffer(b"".join(f for frames in out for f in frames), dtype="<i2").astype(np.float64)
    if len(cleaned) < start + len(said) or not len(said):
        return None
    return match(cleaned, user, (start, start + len(said)), MIC_RATE, max_lag_ms=60)


def judge_echo(mic: np.ndarray, reference: np.ndarray, cleaned: np.ndarray | None) -> EchoReport:
    """Measure an echo test: ``mic`` and ``reference`` are aligned sample for sample on the
    canceller's clock (16 kHz, :data:`ECHO_QUIET` of silence first); ``cleaned`` is the
    canceller's output (None: it is not installed). Double talk is measured afterwards, where an
    echo was found (:func:`replay_double_talk`, given the delay found here)."""
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
    elif report.attenuation >= GOOD_ATTENUATION:
        report.verdict = "aec will work: set audio.echo = \"aec\""
        report.ok = True
    elif report.attenuation >= PART_ATTENUATION:
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
        now = time.monotonic()
        at = clock.stamp(now, hold=canceller is not None and canceller.cancelling(now))
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
    if out is not None and r.delay_ms is not None:
        lag = round(r.delay_ms * MIC_RATE / 1000)
        r.double_talk, r.duck_db = replay_double_talk(mic, reference, lag, duck_db=audio.duck_db), audio.duck_db
    print(f"room noise {r.noise_floor:.0f} dBFS; echo at the microphone {r.echo_level:.0f} dBFS (the speaker's "
          f"signal {ECHO_SIGNAL_DBFS:.0f} dBFS: {r.return_loss:.0f} dB lost on the way)")
    if r.delay_ms is not None:
        print(f"echo delay {r.delay_ms:.0f} ms after the speaker's clock says it played")
    if r.attenuation is not None:
        print(f"with cancellation: {r.cancelled_level:.0f} dBFS, {r.attenuation:.0f} dB below the echo")
    for line in r.figures():
        print(line)
    print(r.verdict)
    return 0 if r.ok else 1
