"""Fault suite, devices: a speaker or microphone that vanishes from the sound server and
comes back under the same name (a USB device pulled out and plugged in again on a box
with a sound server).

The rig: the device under test is a null sink on a private PulseAudio server of its own
(``vgone_spk`` plays into it, ``vgone_mic`` records its monitor); the other device is on
the virtual card's main server. The sink is unloaded for 3 s and loaded again with the
same name, while the speaker is in standby (nothing played for a while) and while a reply
plays. Each time the daemon must use the device again within 5 s of its return, settle
(no flapping between ``idle`` and ``error``), and answer the next spoken question so that
the reply is heard.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_audio import SPK_CHANNELS, SPK_RATE, PulseServer, Recorder, VirtualAudio, started_card
from .support_faults import CANARY, agent_signatures, fault_daemon, fault_env, question_samples

pytestmark = [pytest.mark.faults, pytest.mark.audio, pytest.mark.slow]

GONE_FOR = 3.0  # s the sink is away
BACK_WITHIN = 5.0  # s after its return, the device is in use again
SETTLE = 6.0  # s after that, no state may be error


@pytest.fixture(scope="module")
def vcard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualAudio]:
    with started_card(tmp_path_factory.mktemp("vaudio-replug")) as card:
        yield card


def _sink_module(server: PulseServer, sink: str) -> str:
    for line in server.pactl("list", "short", "modules").stdout.splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "module-null-sink" and f"sink_name={sink}" in fields[2]:
            return fields[0]
    raise AssertionError(f"no null sink {sink!r} on the server")


def _speak(server: PulseServer, sink: str, samples: np.ndarray, tmp: Path) -> subprocess.Popen[bytes]:
    """Play 16 kHz mono ``samples`` into ``sink`` (the microphone hears its monitor)."""
    path = tmp / f"speech-{time.monotonic_ns()}.raw"
    np.asarray(samples, dtype="<i2").tofile(path)
    return subprocess.Popen(["pacat", "-p", "-d", sink, "--raw", "--format=s16le", "--rate=16000", "--channels=1",
                             "--latency-msec=200", str(path)],
                            env=server.env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _question() -> np.ndarray:
    return np.concatenate([question_samples(), np.zeros(16_000, dtype=np.int16)])


def _states_after(run: Any, t: float) -> list[str]:
    return [e["state"] for e, at in zip(run.events.events, run.events.received_at, strict=True)
            if e.get("type") == "state" and at >= t]


@pytest.mark.parametrize(("device", "when"), [("speaker", "standby"), ("speaker", "mid_reply"),
                                               ("microphone", "standby"), ("microphone", "mid_reply")])
async def test_device_pulled_out_and_plugged_in_again(device: str, when: str, tmp_path: Path,
                                                      vcard: VirtualAudio) -> None:
    gone = vcard.gone_server()
    gone.start()
    try:
        if device == "speaker":  # the speaker on the server that loses its sink; the mic on the main one
            mic_server, mic_sink, spk_server, spk_source = vcard.server, "mic", gone, "gone.monitor"
            devices = {"PI_AGENT_AUDIO__INPUT_DEVICE": "vmic", "PI_AGENT_AUDIO__OUTPUT_DEVICE": "vgone_spk"}
        else:
            mic_server, mic_sink, spk_server, spk_source = gone, "gone", vcard.server, "spk.monitor"
            devices = {"PI_AGENT_AUDIO__INPUT_DEVICE": "vgone_mic", "PI_AGENT_AUDIO__OUTPUT_DEVICE": "vspk"}
        long_reply = tmp_path / "long.wav"
        _write_tone(long_reply, seconds=6.0)
        opts = FakeAgentOptions(port=0, api_key=CANARY, reply_wav=str(long_reply))
        async with FakeAgent(opts) as agent:
            env = fault_env(agent.http_url, tmp_path, **vcard.env, **devices,
                            PI_AGENT_AUDIO__OUTPUT_RATE=str(SPK_RATE), PI_AGENT_SESSION__POLICY="persistent",
                            PI_AGENT_AUDIO__STANDBY_AFTER="0.5")
            del env["PI_AGENT_AUDIO__INPUT_WAV"], env["PI_AGENT_AUDIO__OUTPUT_WAV"]
            async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
                await run.wait_connected(15)
                await agent.wait_for(lambda: len(agent.latest.audio_chunk_bytes) >= 10, 10, "mic frames")
                if when == "mid_reply":
                    _speak(mic_server, mic_sink, _question(), tmp_path)
                    await run.wait_state("speaking", 15)
                    await asyncio.sleep(0.5)
                else:
                    await run.wait_state("idle", 10)
                    await asyncio.sleep(1.5)  # the speaker has gone to standby
                module = _sink_module(gone, "gone")
                gone.pactl("unload-module", module)  # pulled out
                await asyncio.sleep(GONE_FOR)
                gone.pactl("load-module", "module-null-sink", "sink_name=gone", "rate=48000", "channels=2")
                back_at = time.monotonic()
                await run.wait_state("idle", 15)  # a reply cut by the loss may finish first
                await asyncio.sleep(max(0.0, back_at + BACK_WITHIN - time.monotonic()))
                back_status, back_health = await run.health()  # in use again
                recorder = Recorder(spk_server, spk_source, tmp_path / "heard.raw", SPK_RATE, SPK_CHANNELS)
                try:
                    recorder.wait_started()
                    replies = len([e for e in run.events.events if e.get("type") == "agent_response"])
                    _speak(mic_server, mic_sink, _question(), tmp_path)
                    await run.events.wait_for(
                        lambda e: len([x for x in run.events.events if x.get("type") == "agent_response"])
                        > replies, 20, "the answer to the question asked after the replug")
                    await run.wait_state("speaking", 10)
                    await asyncio.sleep(1.0)
                finally:
                    heard = recorder.stop()
                await asyncio.sleep(max(0.0, back_at + BACK_WITHIN + SETTLE - time.monotonic()))
                states = _states_after(run, back_at + BACK_WITHIN)
                status, health = await run.health()
                log = run.log
    finally:
        gone.stop()
    noun = "speaker 'vgone_spk'" if device == "speaker" else "microphone 'vgone_mic'"
    assert back_status == 200, (back_health, log[-3000:])
    assert "error" not in states, (states, log[-3000:])  # no flapping
    assert status == 200, health
    assert np.abs(heard.astype(np.int32)).max() > 1000, "the reply was not heard after the replug"
    failures = re.findall(rf"ERROR audio\.\w+: {re.escape(noun)} failed", log)
    assert len(failures) <= 1, log[-3000:]  # once when it went, never again


def _write_tone(path: Path, seconds: float) -> None:
    import wave

    t = np.arange(int(seconds * 16_000)) / 16_000
    samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(samples.tobytes())
