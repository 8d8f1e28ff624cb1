"""``pi-agent check``: one pass/fail line for each part the daemon needs, from the configuration to the agent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..audio.formats import dbfs
from ..config import AudioSettings, CaptureSettings, Settings
from ..errors import ConfigError, ConnectError, DeviceError
from .agent import reach_agent
from .report import FAIL, OK, SKIP, device_name, line


async def check(settings: Settings, config_source: str) -> int:
    """One pass/fail line per check; exit status 1 if any failed."""
    from ..parts import make_audio_input, make_audio_output

    failed = 0
    line(OK, "config", f"{config_source}: agent {settings.agent_id} at {settings.server_url}, "
         f"{settings.session.policy} policy, {settings.capture.mode} capture, {settings.audio.echo}")

    async def device(what: str, run: Callable[[], Any]) -> None:
        nonlocal failed
        try:
            line(OK, what, await run())
        except DeviceError as e:
            failed += 1
            line(FAIL, what, str(e))

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
            raise DeviceError(f"{device_name(audio_in)} opened but delivered no audio within 3 s") from None
        finally:
            await audio_in.close()
        if errors:
            raise errors[0]
        return f"{device_name(audio_in)} delivers 16 kHz frames (level {dbfs(b''.join(frames)):.0f} dBFS)"

    async def speaker() -> str:
        audio_out = make_audio_output(settings.audio)
        errors: list[DeviceError] = []
        await audio_out.open(errors.append)
        await audio_out.close()
        if errors:
            raise errors[0]
        return f"{device_name(audio_out)} opens"

    failed += _check_capture(settings.capture)
    failed += _check_echo(settings.audio)
    await device("microphone", mic)
    await device("speaker", speaker)
    gpio = _gpio_summary(settings)
    if gpio:
        try:
            _open_gpio_once(settings)
            line(OK, "gpio", gpio)
        except DeviceError as e:
            failed += 1
            line(FAIL, "gpio", str(e))
    else:
        line(SKIP, "gpio", "no LED or button pins configured")
    try:
        line(OK, "agent", await reach_agent(settings))
    except ConnectError as e:
        failed += 1
        line(FAIL, "agent", str(e))
    print(f"pi-agent {__version__}: {'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def _check_capture(c: CaptureSettings) -> int:
    """The capture mode, and which modes this machine can run; 1 if the configured one cannot."""
    from ..audio.gate import MODES
    from ..audio.wakeword import unavailable
    from ..parts import make_wake_word

    reason = unavailable()
    modes = ", ".join(m for m in MODES if m != "wake_word" or reason is None)
    here = f"modes available here: {modes}" + (f" (not wake_word: {reason})" if reason else "")
    if c.mode != "wake_word":
        line(OK, "capture", f"{c.mode}; {here}")
        return 0
    try:
        detector = make_wake_word(c)
    except ConfigError as e:
        line(FAIL, "capture", f"{e}\n{here}")
        return 1
    assert detector is not None
    line(OK, "capture", f"wake_word: the {detector.description} loads; follow-ups for {c.follow_up:g} s; {here}")
    return 0


def _check_echo(a: AudioSettings) -> int:
    """The echo setting, and whether software echo cancellation can run here; 1 if ``aec`` cannot."""
    from ..audio.echo import unavailable

    reason = unavailable()
    if a.echo != "aec":
        line(OK, "echo", f"{a.echo}" + ("; aec available here (try pi-agent test-mic --echo)" if reason is None
                                        else f"; not aec: {reason}"))
        return 0
    if reason is not None:
        line(FAIL, "echo", f"audio.echo = aec: {reason}")
        return 1
    if a.output_wav is not None:
        line(FAIL, "echo", "audio.echo = aec needs a sound card's speaker, not audio.output_wav")
        return 1
    line(OK, "echo", "aec: WebRTC's echo canceller loads"
         + (" (with noise suppression)" if a.noise_suppression else "")
         + "; pi-agent test-mic --echo says whether it works with this speaker and microphone")
    return 0



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
    from ..gpio.button import ButtonInput
    from ..gpio.leds import LedDriver

    leds, button = settings.leds, settings.button
    if leds.connection_pin is not None or leds.activity_pin is not None or leds.rgb_pins is not None:
        LedDriver(leds.connection_pin, leds.activity_pin, leds.rgb_pins, leds.active_high).close()
    if button.pin is not None:
        ButtonInput(button.pin, pull_up=button.pull_up, bounce_time=button.bounce_time).close()
