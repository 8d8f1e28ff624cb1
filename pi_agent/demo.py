"""``pi-agent demo`` and ``pi-agent say``: the whole daemon for one exchange, then exit.

The demo needs nothing but this package: the built-in fake agent on loopback, a shipped
speech WAV as the microphone, a WAV file as the speaker and gpiozero's mock pins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import wave
from importlib import resources
from pathlib import Path
from typing import Any

from .config import (ApiSettings, AudioSettings, ButtonSettings, CaptureSettings, LedSettings, SessionSettings,
                     Settings)
from .audio import AudioOutput, ErrorCallback
from .daemon import Daemon
from .parts import Parts, make_audio_output
from .run import install_signal_handlers
from .errors import DeviceError
from .decide import inputs as i
from .decide.states import State

log = logging.getLogger("pi_agent.demo")

QUESTION = "What is the weather like in Lisbon today?"
DEMO_TIMEOUT = 25.0
GREETING_WINDOW = 1.0  # s after the conversation opens in which an agent's first message starts


class DemoSettings(Settings):
    """Settings from the arguments only: the demo ignores the environment and config files."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> tuple[Any, ...]:
        return (init_settings,)


def asset(name: str) -> Path:
    return Path(str(resources.files("pi_agent") / "assets" / name))


class _SpeakerOrNothing:
    """``pi-agent say`` on a machine without a speaker: the reply is printed, not played."""

    def __init__(self, speaker: AudioOutput) -> None:
        self._speaker = speaker
        self._absent = False

    @property
    def underruns(self) -> int:
        return self._speaker.underruns

    @property
    def dropped_frames(self) -> int:
        return self._speaker.dropped_frames

    async def open(self, on_error: ErrorCallback) -> None:
        try:
            await self._speaker.open(on_error)
        except DeviceError as e:
            self._absent = True
            log.warning("no speaker (%s): the reply is printed, not played", e)

    async def close(self) -> None:
        if not self._absent:
            await self._speaker.close()

    def play(self, pcm: bytes, rate: int) -> None:
        if not self._absent:
            self._speaker.play(pcm, rate)

    def flush(self) -> None:
        if not self._absent:
            self._speaker.flush()

    def end_stream(self) -> None:
        if not self._absent:
            self._speaker.end_stream()

    def audible_until(self) -> float:
        return 0.0 if self._absent else self._speaker.audible_until()

    def play_earcon(self, name: str) -> None:
        if not self._absent:
            self._speaker.play_earcon(name)

    def duck(self, gain: float) -> None:
        if not self._absent:
            self._speaker.duck(gain)


class _Silence:
    """A microphone that hears nothing (``pi-agent say``): no frames; the session keeps the stream alive."""

    overflows = 0

    async def open(self, on_frame: Any, on_error: Any) -> None:
        return None

    async def close(self) -> None:
        return None


async def _one_exchange(daemon: Daemon, timeout: float, say: str | None = None) -> tuple[int, list[str]]:
    """Run ``daemon`` until the agent has answered and its reply has played out.

    With ``say``: a conversation is opened, and once any greeting (the agent's first
    message) has played, ``say`` goes out as a user message; only what the agent says
    after that counts as the reply. A greeting is one that starts within
    :data:`GREETING_WINDOW` of the conversation opening.
    """
    stop = asyncio.Event()
    install_signal_handlers(stop)
    events = daemon.hub.subscribe()
    runner = asyncio.create_task(daemon.run(stop))
    responses: list[str] = []
    spoke = False  # the agent spoke since `say` went out (or at all, without `say`)
    sent = say is None
    opened_at: float | None = None
    greeting_playing = False
    deadline = time.monotonic() + timeout
    try:
        if say is not None:
            daemon.controller.dispatch(i.OpenConversation())
        while not runner.done():
            now = time.monotonic()
            if not sent and opened_at is not None and not greeting_playing and now - opened_at >= GREETING_WINDOW:
                daemon.controller.dispatch(i.Say(say or ""))
                sent = True
            remaining = deadline - now
            if remaining <= 0:
                log.error("no complete reply within %g s", timeout)
                stop.set()
                await runner
                return 1, responses
            try:
                text = await asyncio.wait_for(events.queue.get(), min(remaining, 0.1))
            except TimeoutError:
                continue
            if text is None:
                break
            event = json.loads(text)
            kind = event["type"]
            if kind == "connection" and event["connected"] and opened_at is None:
                opened_at = time.monotonic()
            elif kind == "agent_response":
                if sent:
                    responses.append(event["text"])
                else:
                    log.info("the agent greeted first; %r goes out once the greeting has played", say)
            elif kind == "state" and event["state"] == State.SPEAKING.value:
                if sent:
                    spoke = True
                else:
                    greeting_playing = True
            elif kind == "state" and event["previous"] == State.SPEAKING.value:
                if not sent:
                    greeting_playing = False
                    opened_at = float("-inf")  # the greeting is over: send at once
                elif responses and spoke:
                    break
        stop.set()
        code = await runner
        return code, responses
    finally:
        daemon.hub.unsubscribe(events)
        if not runner.done():
            stop.set()
            await asyncio.gather(runner, return_exceptions=True)


def default_reply_path() -> Path:
    """Where the demo writes the reply: the temp directory, one file per user (a file left
    by another user, or by an earlier ``sudo`` run, cannot be in the way)."""
    return Path(tempfile.gettempdir()) / f"pi-agent-demo-reply-{os.getuid()}.wav"


def _next_steps() -> str:
    activate = ""
    if sys.prefix != sys.base_prefix and not os.environ.get("VIRTUAL_ENV"):
        venv = Path(sys.prefix)
        with contextlib.suppress(ValueError):
            venv = venv.relative_to(Path.cwd())
        activate = f"  . {venv}/bin/activate                 # puts pi-agent on the PATH\n"
    return ("Next: point pi-agent at your own agent (see the README), or run it against the fake agent:\n"
            f"{activate}"
            "  pi-agent fake-agent &\n"
            "  PI_AGENT_SERVER_URL=http://127.0.0.1:8765 PI_AGENT_AGENT_ID=dev pi-agent run")


async def run_demo(out: Path | None = None) -> int:
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    from .fake_agent import FakeAgent, FakeAgentOptions
    from .decide.leds import LedInputs, describe, picture

    out = out or default_reply_path()
    try:  # say so now, not after the exchange
        with open(out, "ab"):
            pass
    except OSError as e:
        print(f"pi-agent demo: cannot write the reply to {out}: {e.strerror or e}; "
              "choose another file with --out PATH", file=sys.stderr)
        return 73  # EX_CANTCREAT
    logging.getLogger("pi_agent.fake_agent").setLevel(logging.WARNING)
    print("pi-agent demo: the daemon against the built-in fake agent, with a WAV file as the "
          f"microphone ({QUESTION!r}), a WAV file as the speaker and mock GPIO pins.\n", flush=True)
    async with FakeAgent(FakeAgentOptions(port=0, transcript=QUESTION, output_format="pcm_22050")) as agent:
        settings = DemoSettings(
            agent_id="demo-agent", server_url=agent.http_url,
            session=SessionSettings(policy="on_demand"), capture=CaptureSettings(mode="vad"),
            audio=AudioSettings(echo="half_duplex", input_wav=asset("question.wav"), output_wav=out,
                                output_rate=48000),
            api=ApiSettings(port=0), leds=LedSettings(connection_pin=5, activity_pin=6),
            button=ButtonSettings(pin=17),
        )
        daemon = Daemon(settings, Parts(pin_factory=MockFactory(pin_class=MockPWMPin)))
        last: list[str] = []

        def show_leds(s: Any) -> None:
            text = describe(picture(LedInputs.of(s)))
            if [text] != last:
                last[:] = [text]
                log.info("leds: %s", text)

        daemon.controller.observe(show_leds)
        code, responses = await _one_exchange(daemon, DEMO_TIMEOUT)
    if code == 0 and responses:
        with wave.open(str(out), "rb") as w:
            seconds = w.getnframes() / w.getframerate()
        print(f"\nThe agent answered: {responses[-1]!r}")
        print(f"Its reply audio, as the speaker played it ({seconds:.1f} s at {w.getframerate()} Hz): {out}")
        print(_next_steps())
        return 0
    print("pi-agent demo: the exchange did not complete (see the log above)")
    return code or 1


async def run_say(settings: Settings, text: str, *, timeout: float = 30.0) -> int:
    """Send ``text`` as a user message to the configured agent and play the reply."""
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"port": 0, "socket": "off"})})
    speaker = _SpeakerOrNothing(make_audio_output(settings.audio))
    daemon = Daemon(settings, Parts(audio_in=_Silence(), audio_out=speaker))
    code, responses = await _one_exchange(daemon, timeout, say=text)
    for response in responses:
        print(response)
    return code if responses else (code or 1)
