"""Fault suite, nothing lost: user speech survives reconnects and conversation renewals.

The daemon's WAV microphone speaks the shipped question; the fake agent records every
sample it receives, so the test checks byte for byte that the question's voiced part
arrived whole, in one piece, even when it was spoken while the daemon was offline, or
while a persistent session was renewing its conversation (several times) under it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_faults import (CANARY, TcpProxy, agent_signatures, contains, fault_daemon, fault_env, make_wav,
                            metric, question_samples, voiced_core)

pytestmark = pytest.mark.faults

LEAD = 4.0  # s of silence before the question


@pytest.mark.slow
async def test_speech_spoken_while_reconnecting_reaches_the_agent_in_full(tmp_path: Path) -> None:
    """The server vanishes before the user speaks and is back 1.5 s into the question (within
    the 5 s pre-buffer): the new conversation gets the whole question, first thing."""
    question = question_samples()
    mic = make_wav(tmp_path / "mic.wav", LEAD, question, 2.0)
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY, ping_interval=0.5)) as agent,
                TcpProxy(agent.port) as proxy):
        env = fault_env(proxy.url, tmp_path, mic)
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            first = await run.wait_connected()
            mic_open = run.logged_at("WAV microphone")
            assert mic_open is not None
            assert time.monotonic() - mic_open < LEAD - 1.0, "the daemon took too long to start"
            await proxy.stop_listening()
            proxy.cut()  # the server is gone
            await run.wait_state("offline", 5)
            await asyncio.sleep(max(0.0, mic_open + LEAD + 1.5 - time.monotonic()))
            await proxy.start()  # back, 1.5 s into the question
            second = await run.wait_connected(5, after=1)
            await run.events.wait_for(lambda e: e["type"] == "user_transcript", 15, "the transcript")
            metrics = await run.metrics()
            log = run.log
    assert second != first
    conv1, conv2 = agent.conversations[0], agent.conversations[-1]
    assert np.abs(np.frombuffer(bytes(conv1.user_audio), dtype="<i2")).max(initial=0) < 500  # none of it before
    assert contains(bytes(conv2.user_audio), voiced_core(question)), "the question did not arrive whole"
    assert conv2.transcripts and "sending" in log and "speech captured while connecting" in log
    assert metric(metrics, "pi_agent_audio_dropped_frames_total", reason="prebuffer_full") == 0


@pytest.mark.slow
async def test_no_speech_is_lost_across_persistent_renewals(tmp_path: Path) -> None:
    """The server ends each conversation after 0.6 s (max duration) while the user talks:
    the question spans several conversations, and what the daemon put on the wire, joined,
    holds all of it. (Audio in flight when the server closes is the server's to drop: the
    agent may miss a frame or two of it at a renewal, never more.)"""
    question = question_samples()
    mic = make_wav(tmp_path / "mic.wav", 0.6, question, 1.0)
    opts = FakeAgentOptions(port=0, api_key=CANARY, max_duration=0.6, gate_end_silence_ms=5000)
    async with FakeAgent(opts) as agent, TcpProxy(agent.port) as proxy:
        env = fault_env(proxy.url, tmp_path, mic, PI_AGENT_SESSION__BACKOFF_RESET_AFTER="0")
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_connected()
            mic_open = run.logged_at("WAV microphone")
            assert mic_open is not None
            await asyncio.sleep(max(0.0, mic_open + 0.6 + len(question) / 16000 + 0.5 - time.monotonic()))
            metrics = await run.metrics()
    core = voiced_core(question)
    spoken_in = [c for c in agent.conversations
                 if np.abs(np.frombuffer(bytes(c.user_audio), dtype="<i2")).max(initial=0) >= 500]
    assert len(spoken_in) >= 3, [c.user_audio_seconds for c in agent.conversations]  # renewed under the speech
    on_the_wire = b"".join(sniffer.user_audio() for sniffer in proxy.sniffers)
    assert contains(on_the_wire, core), "the daemon dropped speech: " + _where_lost(on_the_wire, core)
    heard = b"".join(bytes(c.user_audio) for c in agent.conversations)
    lost = _missing(heard, core)
    assert len(lost) <= 2 * (len(spoken_in) - 1), _where_lost(heard, core)
    assert all(c.close_code == 1000 and c.closed_by == "server" for c in agent.conversations[:-1])
    assert metric(metrics, "pi_agent_audio_dropped_frames_total") == 0


def _missing(joined: bytes, core: np.ndarray) -> list[int]:
    frames = [core[i:i + 320] for i in range(0, len(core) - 319, 320)]
    return [i for i, f in enumerate(frames) if f.astype("<i2").tobytes() not in joined]


def _where_lost(joined: bytes, core: np.ndarray) -> str:
    """Which 20 ms frames of ``core`` are missing from ``joined`` (for the failure message)."""
    missing = _missing(joined, core)
    return f"{len(missing)} of {len(core) // 320} frames of the question missing: {missing[:20]}"
