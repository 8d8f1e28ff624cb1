"""``pi-agent check``: one pass/fail line for each part the daemon needs, from the configuration to the agent."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..audio.formats import dbfs
from ..config import DEFAULT_CONFIG_PATH, AudioSettings, CaptureSettings, Settings
from ..config.settings import ServiceKey, service_key
from ..errors import ConfigError, ConnectError, DeviceError
from .agent import reach_agent
from .report import FAIL, OK, SKIP, device_name, line


async def check(settings: Settings, config_source: str) -> int:
    """One pass/fail line per check; exit status 1 if any failed.

    ``config_source``: the config file's path, or words saying there is none. The agent is
    tested with the key the service gets (:func:`~pi_agent.config.settings.service_key`)."""
    from ..parts import make_audio_input, make_audio_output

    failed = 0
    config_file = Path(config_source) if Path(config_source).is_file() else None
    summary = (f"{config_source}: agent {settings.agent_id} at {settings.server_url}, "
               f"{settings.session.policy} policy, {settings.capture.mode} capture, {settings.audio.echo}")
    key: ServiceKey | None = None
    try:
        key = service_key(settings, config_file)
    except ConfigError as e:  # the service's credential is there, but holds no key
        failed += 1
        line(FAIL, "config", f"{summary}\n{e}")
    else:
        line(OK, "config", f"{summary}; {_key_words(key)}")

    async def device(what: str, run: Callable[[], Any]) -> None:
        nonlocal failed
        try:
            line(OK, what, await run())
        except DeviceError as e:
            failed += 1
            line(FAIL, what, device_failure(str(e)))

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
    untested = ""
    if key is None:
        untested = "the API key cannot be used"
        line(SKIP, "agent", "not tested: the service's API key cannot be used (see the config line)")
    elif key.unreadable is not None and key.key is None:
        untested = "no API key readable here"
        line(SKIP, "agent", f"no API key readable here: the service gets {key.unreadable} through "
             f"LoadCredential=; run `{_as_root(config_file)}`")
    else:
        try:
            line(OK, "agent", await reach_agent(settings.model_copy(update={"api_key": key.key})))
        except ConnectError as e:
            failed += 1
            refused = key.key is None and any(f"HTTP {code}" in str(e) for code in (401, 403))
            line(FAIL, "agent", f"{e}" + ("; no API key was found: a private agent needs one" if refused else ""))
    verdict = "all checks passed" if not failed else f"{failed} check(s) failed"
    print(f"pi-agent {__version__}: {verdict}" + (f"; the agent was not tested ({untested})" if untested else ""))
    return 1 if failed else 0


def device_failure(message: str) -> str:
    """A device's failure, and for a busy card a second line: who holds it and what to do (or, for a
    ``default`` device where no sound server answers for this user, that it is the desktop's)."""
    from ..audio.holders import busy_hint, server_hint

    hint = busy_hint(message) or server_hint(message)
    return message if hint is None else f"{message}\n{hint}"


def _as_root(config_file: Path | None) -> str:
    """This check again as root: the program as it was started (the installed one is not on
    root's PATH), with ``--config`` unless the file is the default."""
    program = sys.argv[0] if Path(sys.argv[0]).name == "pi-agent" and Path(sys.argv[0]).is_absolute() else "pi-agent"
    config = f" --config {config_file}" if config_file is not None and config_file != DEFAULT_CONFIG_PATH else ""
    return f"sudo {program}{config} check"


def _key_words(key: ServiceKey) -> str:
    """Whether an API key was found, and where (never the key)."""
    if key.key is None:
        return (f"no API key readable here ({key.unreadable} is the service's, not readable by this user)"
                if key.unreadable is not None else "no API key (a public agent)")
    where = f"API key from {key.origin}"
    if key.unreadable is not None:  # the user's own key, not the service's
        return f"{where}, not the service's ({key.unreadable} is not readable by this user)"
    return where


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
