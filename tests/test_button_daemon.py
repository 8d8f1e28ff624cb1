"""The button (gpiozero mock pins) driving the whole daemon in-process against the fake agent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import numpy as np
from gpiozero.pins.mock import MockFactory, MockPWMPin

from pi_agent.audio.files import WavFileInput, WavFileOutput
from pi_agent.audio.gate import SPEECH_WAIT
from pi_agent.daemon import Daemon, Parts
from pi_agent.demo import DemoSettings
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_daemon import QUESTION_WAV

BUTTON, CONN_LED, ACT_LED = 17, 5, 6


async def wait_state(daemon: Daemon, state: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while daemon.controller.state.value != state:
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running_daemon(agent: FakeAgent, tmp: Path, mic: Path = QUESTION_WAV, **capture):
    settings = DemoSettings(
        agent_id="agent_button", server_url=agent.http_url, session={"policy": "persistent"},
        capture={"mode": "push_to_talk", **capture}, audio={"echo": "half_duplex", "earcons": []}, api={"port": 0},
        leds={"connection_pin": CONN_LED, "activity_pin": ACT_LED},
        button={"pin": BUTTON, "hold_time": 0.15, "long_hold_time": 0.8, "bounce_time": 0.0})
    factory = MockFactory(pin_class=MockPWMPin)
    daemon = Daemon(settings, Parts(audio_in=WavFileInput(mic, loop=True),
                                    audio_out=WavFileOutput(tmp / "spk.wav"), pin_factory=factory))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await agent.wait_for(lambda: agent.latest.is_open, 10)
        await wait_state(daemon, "idle")
        yield daemon, factory.pin(BUTTON), factory
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 5) == 0


def loud_seconds(pcm: bytes) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float32)
    frames = x[: len(x) // 320 * 320].reshape(-1, 320)
    return float((np.sqrt((frames ** 2).mean(axis=1)) > 300).sum() * 0.02)


def continuous_speech(tmp: Path) -> Path:
    """question.wav without its leading and trailing silence: looped, a talker with no long pause."""
    import wave
    with wave.open(str(QUESTION_WAV), "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    path = tmp / "talker.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(rate)
        out.writeframes(pcm[int(0.3 * rate) * 2: -int(0.8 * rate) * 2])
    return path


async def test_hold_to_talk_and_press_to_interrupt(tmp_path: Path) -> None:
    async with (FakeAgent(FakeAgentOptions(port=0, send_speed=1.0)) as agent,
                running_daemon(agent, tmp_path, mic=continuous_speech(tmp_path)) as (daemon, pin, factory)):
        before = loud_seconds(bytes(agent.latest.user_audio))
        assert before == 0  # nothing but zeros until the button is held
        pin.drive_low()  # press (pull-up: pressed is low)
        await wait_state(daemon, "listening", 2)
        await asyncio.sleep(1.5)
        pin.drive_high()
        await wait_state(daemon, "thinking", 2)
        heard = loud_seconds(bytes(agent.latest.user_audio))
        assert 1.2 <= heard <= 2.2, heard  # the hold (+ pre-roll), and nothing after release
        await wait_state(daemon, "speaking", 10)
        assert factory.pin(CONN_LED).state  # connected: LED lit
        # A press while the agent speaks stops it at once and, push-to-talk, starts listening.
        pin.drive_low()
        await wait_state(daemon, "listening", 1)
        assert daemon.audio_out.audible_until() <= asyncio.get_running_loop().time() + 0.05  # flushed
        await asyncio.sleep(0.3)
        pin.drive_high()
        await wait_state(daemon, "thinking", 2)
        # A push-to-talk hold longer than long_hold_time with speech is still talking.
        pin.drive_low()
        await wait_state(daemon, "listening", 2)
        await asyncio.sleep(1.2)
        assert daemon.controller.state.value == "listening" and not daemon.controller.model.muted
        pin.drive_high()
        await wait_state(daemon, "thinking", 2)
    # Shut down: every LED off.
    assert not factory.pin(CONN_LED).state and not factory.pin(ACT_LED).state


async def test_a_mid_speech_disconnect_leaves_no_led_stuck(tmp_path: Path) -> None:
    async with (FakeAgent(FakeAgentOptions(port=0, send_speed=1.0)) as agent,
                running_daemon(agent, tmp_path) as (daemon, _pin, _factory)):
        await agent.agent_speak()
        await wait_state(daemon, "speaking", 5)
        await agent.close_conversation(1011, "boom")
        await wait_state(daemon, "offline", 3)
        status = daemon.controller.status
        assert not status.connected
        pic = daemon.leds.picture
        assert pic.top.value == "offline" and pic.activity.value == "off"
        await wait_state(daemon, "idle", 10)  # reconnected


async def test_long_hold_toggles_mute_and_press_starts_listening_in_vad_mode(tmp_path: Path) -> None:
    import wave
    silence = tmp_path / "silence.wav"
    with wave.open(str(silence), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(bytes(32000))
    async with (FakeAgent(FakeAgentOptions(port=0)) as agent,
                running_daemon(agent, tmp_path, mic=silence, mode="vad") as (daemon, pin, _factory)):
        pin.drive_low()
        await wait_state(daemon, "muted", 3)
        pin.drive_high()
        await asyncio.sleep(0.2)
        assert daemon.controller.model.muted and daemon.leds.picture.top.value == "muted"
        pin.drive_low()
        await wait_state(daemon, "idle", 3)
        pin.drive_high()
        assert not daemon.controller.model.muted
        # A short press starts listening; the user has SPEECH_WAIT to begin, and when nothing
        # is said the turn ends without asking the agent anything.
        pin.drive_low()
        await asyncio.sleep(0.05)
        pressed = time.monotonic()
        pin.drive_high()
        await wait_state(daemon, "listening", 2)
        await wait_state(daemon, "idle", SPEECH_WAIT + 2)
        assert time.monotonic() - pressed >= SPEECH_WAIT - 0.1
