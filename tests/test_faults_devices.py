"""Fault suite, devices: microphone or speaker missing at start, vanishing mid-run, returning.

- In the daemon process: the WAV microphone's file, or the WAV speaker's directory,
  does not exist at start (the daemon resolves the device again on every reopen), and
  a real PortAudio microphone on the virtual sound card whose server is killed mid-run.
- In process, through the audio seams: a microphone and a speaker (test doubles around
  the WAV backends) that fail through ``on_error`` mid-conversation and refuse to
  reopen for a while.

Each time: the daemon goes to ``error`` with one log line and ``/healthz`` 503 naming the
device, keeps the conversation, and comes back by itself when the device does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pi_agent.audio.files import WavFileInput, WavFileOutput
from pi_agent.config import load_settings
from pi_agent.daemon import Daemon, Parts
from pi_agent.errors import DeviceError
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_audio import started_card
from .support_daemon import EventClient, free_port
from .support_faults import (CANARY, SecretScan, agent_signatures, fault_daemon, fault_env, make_wav,
                             proc_stats)

pytestmark = pytest.mark.faults


def _speaker_samples(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


@pytest.mark.slow
async def test_microphone_missing_at_start_then_plugged_in(tmp_path: Path) -> None:
    mic = tmp_path / "usb-mic.wav"  # not there yet
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent,
                fault_daemon(fault_env(agent.http_url, tmp_path, mic), tmp_path,
                             secrets=lambda: agent_signatures(agent)) as run):
        await run.wait_state("error", 10)
        status, health = await run.health()
        assert status == 503 and health["reason"].startswith("microphone: cannot use"), health
        await run.wait_connected(10)  # the conversation does not wait for the microphone
        assert run.state() == "error"
        await asyncio.sleep(1.2)  # a retry or two fail
        make_wav(mic, 0.5, "question", 2.0)  # plugged in
        await run.events.wait_for(lambda e: e["type"] == "user_transcript", 20, "the question heard")
        assert (await run.health())[0] == 200
        log = run.log
    assert len([line for line in log.splitlines() if "microphone device failed" in line]) == 1
    assert "microphone device is back" in log
    assert agent.latest.transcripts


@pytest.mark.slow
async def test_speaker_missing_at_start_then_plugged_in(tmp_path: Path) -> None:
    out_dir = tmp_path / "usb-speaker"  # not there yet
    mic = make_wav(tmp_path / "mic.wav", 3.0, "question", 1.0)
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        env = fault_env(agent.http_url, tmp_path, mic, PI_AGENT_AUDIO__OUTPUT_WAV=str(out_dir / "speaker.wav"))
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_state("error", 10)
            status, health = await run.health()
            assert status == 503 and health["reason"].startswith("speaker: cannot record"), health
            out_dir.mkdir()  # plugged in
            await run.events.wait_for(lambda e: e["type"] == "agent_response", 20, "the reply")
            await run.events.wait_for(lambda e: e.get("previous") == "speaking", 20, "the reply played")
            log = run.log
    assert "speaker device is back" in log
    assert np.abs(_speaker_samples(out_dir / "speaker.wav")).max() > 1000  # the reply was heard


# --------------------------------------------------------------------------- the virtual sound card


@pytest.fixture(scope="module")
def vcard(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The virtual sound card (support_audio), for this module only: stopped when it ends."""
    with started_card(tmp_path_factory.mktemp("vaudio-faults")) as card:
        yield card


@pytest.mark.slow
@pytest.mark.parametrize("speaker", ["wav", "portaudio"])
async def test_real_microphone_vanishes_mid_run_and_returns(speaker: str, tmp_path: Path, vcard: Any) -> None:
    """A PortAudio microphone on a PulseAudio server that is killed (the USB mic pulled
    out) and restarted. With the speaker on PortAudio too, PortAudio must list devices
    afresh for the microphone to be found again."""
    gone = vcard.gone_server()
    gone.start()
    try:
        async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
            env = fault_env(agent.http_url, tmp_path, **vcard.env, PI_AGENT_AUDIO__INPUT_DEVICE="vgone_mic")
            del env["PI_AGENT_AUDIO__INPUT_WAV"]
            if speaker == "portaudio":
                del env["PI_AGENT_AUDIO__OUTPUT_WAV"]
                env["PI_AGENT_AUDIO__OUTPUT_DEVICE"] = "vspk"
            async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
                await run.wait_connected(15)
                await _mic_streaming(agent)
                assert run.state() == "idle", run.events.events[-5:]
                gone.kill()  # pulled out
                await run.wait_state("error", 10)
                status, health = await run.health()
                assert status == 503 and health["reason"].startswith("microphone:"), health
                await asyncio.sleep(1.0)
                gone.start()  # plugged in again
                t0 = time.monotonic()
                await run.wait_state("idle", 12)
                back_after = time.monotonic() - t0
                log = run.log
    finally:
        gone.stop()
    assert len([line for line in log.splitlines() if "microphone device failed" in line]) == 1
    assert "microphone device is back" in log
    assert back_after < 10, back_after
    assert log.count("Expression '") < 50, "PortAudio's error lines flood the journal"
    raw = [line for line in log.splitlines() if line.strip() and not re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line)]
    assert not raw, raw[:5]  # what ALSA and PortAudio printed came through logging (level, rate limit)


@pytest.mark.slow
async def test_sigterm_while_the_sound_server_is_frozen(tmp_path: Path, vcard: Any) -> None:
    """The sound server stops answering (stopped, swapped out, wedged): closing its streams
    would hang. SIGTERM still ends the daemon within 2 s, exit 0, the conversation closed."""
    async with _daemon_on_a_server_to_freeze(vcard, tmp_path) as (agent, run, server):
        server.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            run.daemon.signal(signal.SIGTERM)
            code = await asyncio.to_thread(run.daemon.wait, 10)
            elapsed = time.monotonic() - t0
        finally:
            server.send_signal(signal.SIGCONT)
        await agent.wait_for(lambda: not agent.latest.is_open, 5)
    assert code == 0, run.log[-2000:]
    assert elapsed < 2.0, (elapsed, run.log[-1500:])
    assert agent.latest.close_code == 1000 and agent.latest.closed_by == "client"
    closed_at = agent.latest.closed_at
    assert closed_at is not None and closed_at - t0 < 0.6, closed_at - t0  # not held up by the frozen mic
    assert "shutdown budget; abandoned them" in run.log


@pytest.mark.slow
async def test_a_sound_server_frozen_for_long_costs_a_bounded_number_of_threads_and_audio_comes_back(
        tmp_path: Path, vcard: Any) -> None:
    """The sound server stops answering for good (here 40 s, retried every few seconds):
    every open the daemon tries hangs in it. The calls left stuck are bounded (a kiosk's
    sound server wedged for a night must not cost a thread per retry), the journal says
    why audio stays down, and once the server answers again the microphone streams."""
    async with _daemon_on_a_server_to_freeze(vcard, tmp_path) as (agent, run, server):
        pid = run.daemon.proc.pid  # type: ignore[union-attr]
        threads_before = proc_stats(pid).threads
        server.send_signal(signal.SIGSTOP)
        threads = []
        try:
            for _ in range(40):
                await asyncio.sleep(1.0)
                threads.append(proc_stats(pid).threads)
            # The daemon itself never froze with the sound server: it answers at once
            # and kept the agent's conversation (unanswered pings would have ended it).
            status, health = await asyncio.wait_for(run.health(), 2.0)
            assert status == 503 and health["reason"].startswith(("speaker:", "microphone:")), health
            assert agent.latest.is_open and len(agent.conversations) == 1
        finally:
            server.send_signal(signal.SIGCONT)
        await _mic_streaming(agent, 30)
        log = run.log
    assert max(threads) <= threads_before + 5, (threads_before, threads, log[-3000:])
    assert max(threads[-10:]) <= max(threads[10:20]) + 1, threads  # not one more at every retry
    assert re.search(r"WARN  controller: (speaker|microphone) device still down: opening \1 'vgone_\w+': an "
                     r"earlier call into PortAudio never returned \(sound server stuck\?\)", log), log[-3000:]


@contextlib.asynccontextmanager
async def _daemon_on_a_server_to_freeze(vcard: Any, tmp_path: Path) -> AsyncIterator[tuple[FakeAgent, Any, Any]]:
    """The daemon with both devices on a sound server of their own (``vgone_mic``/``vgone_spk``),
    its conversation open and the microphone streaming: yields the agent, the run and the
    server's process (a test stops and continues it)."""
    frozen = vcard.gone_server()
    frozen.start()
    try:
        async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
            env = fault_env(agent.http_url, tmp_path, **vcard.env, PI_AGENT_AUDIO__INPUT_DEVICE="vgone_mic",
                            PI_AGENT_AUDIO__OUTPUT_DEVICE="vgone_spk")
            del env["PI_AGENT_AUDIO__INPUT_WAV"], env["PI_AGENT_AUDIO__OUTPUT_WAV"]
            async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
                await run.wait_connected(15)
                await _mic_streaming(agent)
                assert frozen.proc is not None
                yield agent, run, frozen.proc
    finally:
        frozen.stop()


async def _mic_streaming(agent: FakeAgent, timeout: float = 10.0) -> None:
    """Wait until the daemon's microphone delivers audio in real time (the agent gets a
    second of it within a second): frames flow, not just keep-alive silence."""
    deadline = time.monotonic() + timeout
    while True:
        before, t0 = agent.latest.user_audio_samples, time.monotonic()
        await asyncio.sleep(1.0)
        rate = (agent.latest.user_audio_samples - before) / 16000 / (time.monotonic() - t0)
        if rate > 0.8:
            return
        assert time.monotonic() < deadline, f"the microphone does not stream ({rate:.2f} s of audio a second)"


# --------------------------------------------------------------------------- in process, through the seams


class FlakyMic:
    """A WAV microphone that can be "pulled out": it reports the failure through
    ``on_error`` once, stops delivering, and refuses to open until plugged in again."""

    def __init__(self, path: Path) -> None:
        self.inner = WavFileInput(path)
        self.present = True
        self.opens = 0
        self._on_error: Any = None

    @property
    def overflows(self) -> int:
        return self.inner.overflows

    async def open(self, on_frame: Any, on_error: Any) -> None:
        if not self.present:
            raise DeviceError("no such device: usb-mic")
        self.opens += 1
        self._on_error = on_error
        await self.inner.open(on_frame, on_error)

    async def close(self) -> None:
        await self.inner.close()

    def pull_out(self) -> None:
        self.present = False
        asyncio.get_running_loop().create_task(self.inner.close())
        self._on_error(DeviceError("usb-mic: device disconnected"))


class FlakySpeaker(WavFileOutput):
    """A WAV speaker that can be pulled out mid-playback and plugged in again."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.present = True
        self.opens = 0

    async def open(self, on_error: Any) -> None:
        if not self.present:
            raise DeviceError("no such device: usb-speaker")
        self.opens += 1
        await super().open(on_error)

    def pull_out(self) -> None:
        self.present = False
        self._fail(DeviceError("usb-speaker: device disconnected"))


@contextlib.asynccontextmanager
async def _daemon_in_process(agent: FakeAgent, tmp_path: Path, mic: Any, speaker: Any):
    settings = load_settings(None, agent_id="agent_faults", server_url=agent.http_url, api_key=CANARY,
                             session={"policy": "persistent", "backoff_initial": 0.2, "backoff_max": 1.0},
                             api={"port": free_port(), "socket": str(tmp_path / "api.sock")})
    daemon = Daemon(settings, Parts(audio_in=mic, audio_out=speaker))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        while daemon.controller.state.value == "starting":  # the event API is up before "ready"
            if task.done():
                raise AssertionError(f"the daemon ended early: {task.result()!r}")
            await asyncio.sleep(0.05)
        async with EventClient(tmp_path / "api.sock") as events:
            yield daemon, events
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 5) == 0


async def _state(daemon: Daemon, state: str, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while daemon.controller.state.value != state:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no {state} within {timeout} s (state {daemon.controller.state.value})")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.slow
async def test_microphone_and_speaker_vanish_mid_conversation_and_return(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pi_agent")
    mic = FlakyMic(make_wav(tmp_path / "mic.wav", 0.5, "question", 3.0))
    speaker = FlakySpeaker(tmp_path / "speaker.wav")
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY, send_speed=1.0)) as agent,
                _daemon_in_process(agent, tmp_path, mic, speaker) as (daemon, events)):
        # The microphone goes while the user speaks.
        await _state(daemon, "listening", 10)
        record = agent.latest
        mic.pull_out()
        await _state(daemon, "error", 2)
        ok, reason = daemon.controller.health()
        assert not ok and reason == "microphone: usb-mic: device disconnected"
        await asyncio.sleep(0.3)
        heard = record.user_audio_samples
        await asyncio.sleep(1.6)  # reopen attempts fail meanwhile
        assert mic.opens == 1
        assert record.user_audio_samples > heard  # the conversation is kept alive (silence)
        mic.present = True
        await _state(daemon, "idle", 5)
        assert daemon.controller.health()[0] and record.is_open and mic.opens == 2
        # The reopened microphone speaks the question again; the speaker goes mid-reply.
        await _state(daemon, "speaking", 20)
        speaker.pull_out()
        await _state(daemon, "error", 2)
        assert daemon.controller.health() == (False, "speaker: usb-speaker: device disconnected")
        await asyncio.sleep(1.2)
        speaker.present = True
        await _state(daemon, "idle", 5)
        assert speaker.opens == 2 and record.is_open
        await events.send({"type": "say", "text": "are you back?"})
        await _state(daemon, "speaking", 10)
        errors = [e for e in events.events if e["type"] == "error"]
    assert len(agent.conversations) == 1  # one conversation through it all
    assert {e["source"] for e in errors} == {"microphone", "speaker"}
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([m for m in lines if "microphone device failed" in m]) == 1, lines
    assert len([m for m in lines if "speaker device failed" in m]) == 1, lines
    scan = SecretScan()
    scan.add_secret(*agent_signatures(agent))
    scan.add("log", caplog.text)
    scan.add("events", str(events.events))
    scan.check()
