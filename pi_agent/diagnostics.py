"""Diagnostics for the admin: ``check``, ``test-leds``, ``test-button``, ``test-speaker``, ``test-mic``.

Each uses the same parts as the daemon (device lookup by name, the PortAudio or WAV
backends, the LED driver, the button input), so a pass here means the daemon can use them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import __version__
from .audio import FRAME_BYTES, FRAME_MS, MIC_RATE
from .audio.formats import dbfs
from .config import AudioSettings, ButtonSettings, CaptureSettings, LedSettings, Settings
from .errors import ConfigError, ConnectError, DeviceError

OK, FAIL, SKIP = " ok ", "FAIL", "skip"


def _line(mark: str, what: str, detail: str) -> None:
    first, *rest = detail.splitlines() or [""]
    print(f"[{mark}] {what}: {first}", flush=True)
    for extra in rest:
        print(f"       {extra}", flush=True)


# --- check -----------------------------------------------------------------------------------


async def check(settings: Settings, config_source: str) -> int:
    """One pass/fail line per check; exit status 1 if any failed."""
    from .daemon import make_audio_input, make_audio_output

    failed = 0
    _line(OK, "config", f"{config_source}: agent {settings.agent_id} at {settings.server_url}, "
          f"{settings.session.policy} policy, {settings.capture.mode} capture, {settings.audio.echo}")

    async def device(what: str, run: Callable[[], Any]) -> None:
        nonlocal failed
        try:
            _line(OK, what, await run())
        except DeviceError as e:
            failed += 1
            _line(FAIL, what, str(e))

    async def mic() -> str:
        audio_in = make_audio_input(settings.audio)
        frames: list[bytes] = []
        got = asyncio.Event()

        def on_frame(frame: bytes) -> None:
            frames.append(frame)
            if len(frames) >= 10:
                got.set()

        errors: list[DeviceError] = []
        await audio_in.open(on_frame, errors.append)
        try:
            await asyncio.wait_for(got.wait(), 3.0)
        except TimeoutError:
            raise DeviceError(f"{_what(audio_in)} opened but delivered no audio within 3 s") from None
        finally:
            await audio_in.close()
        if errors:
            raise errors[0]
        return f"{_what(audio_in)} delivers 16 kHz frames (level {dbfs(b''.join(frames)):.0f} dBFS)"

    async def speaker() -> str:
        audio_out = make_audio_output(settings.audio)
        errors: list[DeviceError] = []
        await audio_out.open(errors.append)
        await audio_out.close()
        if errors:
            raise errors[0]
        return f"{_what(audio_out)} opens"

    failed += _check_capture(settings.capture)
    failed += _check_echo(settings.audio)
    await device("microphone", mic)
    await device("speaker", speaker)
    gpio = _gpio_summary(settings)
    if gpio:
        try:
            _open_gpio_once(settings)
            _line(OK, "gpio", gpio)
        except DeviceError as e:
            failed += 1
            _line(FAIL, "gpio", str(e))
    else:
        _line(SKIP, "gpio", "no LED or button pins configured")
    try:
        _line(OK, "agent", await reach_agent(settings))
    except ConnectError as e:
        failed += 1
        _line(FAIL, "agent", str(e))
    print(f"pi-agent {__version__}: {'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def _check_capture(c: CaptureSettings) -> int:
    """The capture mode, and which modes this machine can run; 1 if the configured one cannot."""
    from .audio.gate import MODES
    from .audio.wakeword import unavailable
    from .daemon import make_wake_word

    reason = unavailable()
    modes = ", ".join(m for m in MODES if m != "wake_word" or reason is None)
    here = f"modes available here: {modes}" + (f" (not wake_word: {reason})" if reason else "")
    if c.mode != "wake_word":
        _line(OK, "capture", f"{c.mode}; {here}")
        return 0
    try:
        detector = make_wake_word(c)
    except ConfigError as e:
        _line(FAIL, "capture", f"{e}\n{here}")
        return 1
    assert detector is not None
    _line(OK, "capture", f"wake_word: the {detector.description} loads; follow-ups for {c.follow_up:g} s; {here}")
    return 0


def _check_echo(a: AudioSettings) -> int:
    """The echo setting, and whether software echo cancellation can run here; 1 if ``aec`` cannot."""
    from .audio.echo import unavailable

    reason = unavailable()
    if a.echo != "aec":
        _line(OK, "echo", f"{a.echo}" + ("; aec available here (try pi-agent test-mic --echo)" if reason is None
                                         else f"; not aec: {reason}"))
        return 0
    if reason is not None:
        _line(FAIL, "echo", f"audio.echo = aec: {reason}")
        return 1
    if a.output_wav is not None:
        _line(FAIL, "echo", "audio.echo = aec needs a sound card's speaker, not audio.output_wav")
        return 1
    _line(OK, "echo", "aec: WebRTC's echo canceller loads"
          + (" (with noise suppression)" if a.noise_suppression else "")
          + "; pi-agent test-mic --echo says whether it works with this speaker and microphone")
    return 0


def _what(part: Any) -> str:
    return str(getattr(part, "what", None) or type(part).__name__)


def _gpio_summary(settings: Settings) -> str:
    leds, button = settings.leds, settings.button
    parts = [f"{name} LED on {pin}" for name, pin in (("connection", leds.connection_pin),
                                                      ("activity", leds.activity_pin)) if pin is not None]
    if leds.rgb_pins is not None:
        parts.append(f"RGB LED on {', '.join(map(str, leds.rgb_pins))}")
    if button.pin is not None:
        parts.append(f"button on {button.pin}")
    return "; ".join(parts)


def _open_gpio_once(settings: Settings) -> None:
    from .gpio.button import ButtonInput
    from .gpio.leds import LedDriver

    leds, button = settings.leds, settings.button
    if leds.connection_pin is not None or leds.activity_pin is not None or leds.rgb_pins is not None:
        LedDriver(leds.connection_pin, leds.activity_pin, leds.rgb_pins, leds.active_high).close()
    if button.pin is not None:
        ButtonInput(button.pin, pull_up=button.pull_up, bounce_time=button.bounce_time).close()


async def reach_agent(settings: Settings) -> str:
    """Open one conversation the way the daemon does (signed URL with a key, the handshake,
    the metadata), then close it with 1000. Raises :class:`ConnectError` saying why not."""
    from .audio.formats import decode_pcm
    from .engine import events as ev
    from .engine.conversation import Engine
    from .net.session import Session
    from .net.signed_url import url_for

    s = settings.session
    key = settings.api_key.get_secret_value() if settings.api_key else None
    engine = Engine(replace(s.engine_settings(), policy="on_demand"), encoder_factory=lambda fmt: lambda pcm: pcm,
                    decode_audio=decode_pcm)
    loop = asyncio.get_running_loop()
    result: asyncio.Future[ev.Opened] = loop.create_future()

    def on_event(event: ev.Event) -> None:
        if result.done():
            return
        if isinstance(event, ev.Opened):
            result.set_result(event)
        elif isinstance(event, ev.Closed):
            result.set_exception(ConnectError(event.reason))

    session = Session(engine, url=lambda: url_for(settings.server_url, settings.agent_id, key, s.connect_timeout),
                      on_event=on_event, connect_timeout=s.connect_timeout)
    started = time.monotonic()
    engine.request(started)
    runner = asyncio.create_task(session.run())
    try:
        opened = await asyncio.wait_for(result, 2 * s.connect_timeout + 2)
    except TimeoutError:
        raise ConnectError(f"no conversation within {2 * s.connect_timeout + 2:g} s") from None
    finally:
        await session.close(2.0)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    ms = (time.monotonic() - started) * 1000
    how = "signed URL fetched" if key else "public agent"
    return (f"{how}; conversation opened in {ms:.0f} ms (agent audio {opened.agent_output_audio_format}, "
            f"mic audio {opened.user_input_audio_format})")


# --- test-leds, test-button ------------------------------------------------------------------


async def test_leds(leds: LedSettings, seconds: float) -> int:
    from .decide.leds import DEMO_SEQUENCE, describe, picture
    from .gpio.leds import LedDriver

    if leds.connection_pin is None and leds.activity_pin is None and leds.rgb_pins is None:
        print("pi-agent test-leds: no LED pins configured (leds.connection_pin, leds.activity_pin, leds.rgb_pins)")
        return 1
    try:
        driver = LedDriver(leds.connection_pin, leds.activity_pin, leds.rgb_pins, leds.active_high)
    except DeviceError as e:
        print(f"pi-agent test-leds: {e}")
        return 1
    with driver:
        for inputs in DEMO_SEQUENCE:
            pic = picture(inputs)
            driver.apply(pic)
            print(describe(pic), flush=True)
            await asyncio.sleep(seconds)
        driver.off()
    print("all LEDs off")
    return 0


async def test_button(b: ButtonSettings, seconds: float) -> int:
    from .gpio.button import ButtonInput

    if b.pin is None:
        print("pi-agent test-button: no button pin configured (button.pin)")
        return 1
    try:
        button = ButtonInput(b.pin, pull_up=b.pull_up, bounce_time=b.bounce_time, hold_time=b.hold_time,
                             long_hold_time=b.long_hold_time)
    except DeviceError as e:
        print(f"pi-agent test-button: {e}")
        return 1
    started = time.monotonic()
    print(f"press, hold ({b.hold_time:g} s) and long-hold ({b.long_hold_time:g} s) the button on pin {b.pin}; "
          f"listening for {seconds:g} s (Ctrl-C to stop)", flush=True)
    with button:
        button.start(asyncio.get_running_loop(),
                     lambda ev: print(f"{time.monotonic() - started:7.2f} s  {ev}", flush=True))
        await asyncio.sleep(seconds)
    return 0


# --- test-speaker, test-mic ------------------------------------------------------------------


async def test_speaker(audio: AudioSettings, seconds: float = 1.0, freq: float = 440.0) -> int:
    from .daemon import make_audio_output

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
        print(f"playing a {freq:g} Hz tone for {seconds:g} s on {_what(audio_out)}", flush=True)
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


async def test_mic(audio: AudioSettings, capture: CaptureSettings, seconds: float = 3.0,
                   play_back: bool = False, wake_word: bool = False) -> int:
    from .daemon import make_audio_input, make_audio_output, make_vad

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
        print(f"listening {seconds:g} s on {_what(audio_in)} for the {listener.detector.description}: say it "
              "a few times, near and far, and talk as people will near it", flush=True)
    else:
        print(f"recording {seconds:g} s from {_what(audio_in)}: speak now", flush=True)
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
        from .audio.wakeword import WakeWordDetector
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


# --- test-mic --echo --------------------------------------------------------------------------

ECHO_SIGNAL_DBFS = -20.0  # the test signal's level
ECHO_QUIET = 1.0  # s of silence first: the room's noise floor
ECHO_CONVERGED = 2.0  # s into the signal after which the canceller is judged
MAX_ECHO_DELAY = 0.4  # s: AEC3 finds an echo this late (measured: 0.45 s works, 0.55 s does not)


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
    x *= 32768 * 10 ** (ECHO_SIGNAL_DBFS / 20) / np.sqrt(np.mean(x[gate] ** 2))
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
    lag = _echo_lag(mic[start:], reference[start:])
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


def _echo_lag(mic: np.ndarray, reference: np.ndarray) -> int:
    """Samples by which ``mic`` follows ``reference`` (-0.1 s to +1 s), by cross-correlation."""
    n = min(len(mic), len(reference))
    a, b = mic[:n].astype(np.float64), reference[:n].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    corr = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    lags = np.r_[np.arange(0, MIC_RATE), np.arange(-int(0.1 * MIC_RATE), 0)]
    return int(lags[int(np.argmax(np.abs(corr[lags])))])


async def test_echo(audio: AudioSettings, seconds: float = 6.0) -> int:
    """Play a test signal, record it, and say whether ``audio.echo = aec`` will work here."""
    from .audio.echo import EchoCanceller, FarEnd, FrameClock, unavailable
    from .daemon import make_audio_input, make_audio_output

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
    print(f"playing a test signal on {_what(audio_out)} for {seconds:g} s and recording it on {_what(audio_in)}; "
          "keep the room quiet", flush=True)
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
