"""Fault suite: the three field faults a kiosk meets, on the real ``pi-agent run`` process.

1. A half-open connection (a Wi-Fi drop, a dead NAT entry) while the microphone streams
   at full rate: the send buffers fill long before ``dead_peer_timeout`` (the default
   20 s) runs out, and the dead peer must be found all the same.
2. ``persistent``, and the agent ends each call after an exchange: every next
   conversation opens within ``backoff_initial``.
3. Floods: an agent that sends an hour of audio at once; thousands of large contextual
   updates, or of ``say`` texts, while the agent is unreachable. Memory stays bounded,
   what was dropped is logged once and counted, and an interruption after the flood
   still silences the speaker at once.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import unix_connect

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_faults import (CANARY, TcpProxy, agent_signatures, fault_daemon, fault_env, make_wav, metric,
                            proc_stats)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

RSS_BOUND_MB = 40


@pytest.mark.parametrize("mode", ["always", "vad"])
async def test_half_open_while_the_mic_streams_is_dropped_within_the_default_timeout(tmp_path: Path,
                                                                                     mode: str) -> None:
    """``always`` capture, and ``vad`` in a silent room under ``persistent`` (an open
    conversation gets zero-filled audio): the proxy stops forwarding both ways without
    closing; its small receive buffer fills within a second or two."""
    mic = make_wav(tmp_path / "mic.wav", 0.5, "question", 60.0) if mode == "always" else None
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY, ping_interval=30)) as agent,
                TcpProxy(agent.port, rcvbuf=8 * 1024) as proxy):
        env = fault_env(proxy.url, tmp_path, mic, PI_AGENT_CAPTURE__MODE=mode,
                        PI_AGENT_SESSION__DEAD_PEER_TIMEOUT="20", PI_AGENT_LOG__LEVEL="info")
        async with fault_daemon(env, tmp_path, secrets=lambda: [*agent_signatures(agent),
                                                                *proxy.signatures]) as run:
            first = await run.wait_connected()
            await asyncio.sleep(1.0)
            up_before = proxy.bytes_up
            proxy.freeze()
            frozen_at = time.monotonic()
            closed = await run.wait_closed(30)
            detected = time.monotonic() - frozen_at
            second = await run.wait_connected(10, after=1)
            stats = proc_stats(run.daemon.proc.pid)  # type: ignore[union-attr]
    assert up_before > 16_000, "the mic was not streaming"
    assert second != first
    assert closed["outcome"] == "retry" and "stopped answering" in closed["reason"], closed
    assert 18.0 <= detected <= 20.0 + 1.5, detected  # nothing heard since shortly before the freeze
    assert stats.rss_kb < 200 * 1024


async def test_agent_ended_calls_are_each_followed_by_the_next_within_backoff_initial(tmp_path: Path) -> None:
    """Five exchanges in a row, each ended by the agent (``end_call``) after its reply:
    healthy conversations, however short, so no backoff grows between them."""
    opts = FakeAgentOptions(port=0, api_key=CANARY, end_call_after=1, reply_seconds=0.5, send_speed=4.0)
    async with FakeAgent(opts) as agent:
        env = fault_env(agent.http_url, tmp_path, PI_AGENT_SESSION__BACKOFF_INITIAL="1",
                        PI_AGENT_SESSION__BACKOFF_MAX="60", PI_AGENT_LOG__LEVEL="info")
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            for n in range(5):
                await run.wait_connected(10, after=n)
                await run.events.send({"type": "say", "text": f"question {n + 1}"})
                await run.wait_closed(15, after=n)
            await run.wait_connected(10, after=5)
            events = list(run.events.events)
    opened = [t for t, e in zip(run.events.received_at, events, strict=False)
              if e.get("type") == "connection" and e["connected"]]
    closed = [(t, e) for t, e in zip(run.events.received_at, events, strict=False)
              if e.get("type") == "connection" and not e["connected"]]
    assert len(closed) >= 5
    for n, (t_closed, e) in enumerate(closed[:5]):
        assert e["outcome"] == "ended" and e["reason"] == "the agent ended the call", e
        assert e["retry_in"] <= 1.0, e
        next_open = next(t for t in opened if t > t_closed)
        assert next_open - t_closed <= 1.0 + 0.5, (n, next_open - t_closed)
    assert all(c.turns and c.turns[0].completed for c in agent.conversations[:5])


async def _rss_mb(run_pid: int) -> float:
    return proc_stats(run_pid).rss_kb / 1024


async def test_an_hour_of_agent_audio_at_once_keeps_memory_bounded_and_an_interruption_still_cuts_it(
        tmp_path: Path) -> None:
    speaker = tmp_path / "speaker.wav"
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        env = fault_env(agent.http_url, tmp_path, PI_AGENT_AUDIO__OUTPUT_WAV=str(speaker),
                        PI_AGENT_AUDIO__ECHO="full_duplex", PI_AGENT_LOG__LEVEL="info")
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_connected()
            pid = run.daemon.proc.pid  # type: ignore[union-attr]
            await asyncio.sleep(1.5)
            before = await _rss_mb(pid)
            peak = before
            result = await agent.control("flood", {"seconds": "3600"})
            turn = agent.latest.turns[-1]
            while turn.play_until is None:  # the fake sends as fast as the daemon reads
                peak = max(peak, await _rss_mb(pid))
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # the reply is playing
            interrupted_at = time.monotonic()
            await agent.control("interrupt", {})
            cut = await run.events.wait_for(lambda e: e.get("type") == "interruption", 5, "the interruption")
            cut_seen = run.events.received_at[run.events.events.index(cut)]
            await asyncio.sleep(1.0)
            after = await _rss_mb(pid)
            metrics = await run.metrics()
            wav_open = run.logged_at("WAV speaker")
            log = run.log
    assert result["event_id"] == turn.event_id and turn.chunks_sent >= 3600 * 5  # 200 ms chunks
    assert after - before <= RSS_BOUND_MB, (before, after)
    assert peak - before <= RSS_BOUND_MB, (before, peak)
    assert metric(metrics, "pi_agent_audio_dropped_frames_total", reason="playback_full") > 0
    assert log.count("the agent sent more audio than the speaker holds") == 1
    assert cut_seen - interrupted_at < 0.5, cut_seen - interrupted_at
    # The speaker: sound until the interruption, silence from just after it.
    assert wav_open is not None
    with wave.open(str(speaker), "rb") as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    cut_at = int((interrupted_at - wav_open + 0.25) * rate)  # the log's ms clock, and the barge-in bound
    assert np.abs(pcm[int((interrupted_at - wav_open - 0.8) * rate):
                      int((interrupted_at - wav_open) * rate)]).max() > 500
    assert np.abs(pcm[cut_at:]).max(initial=0) < 50, "the speaker kept playing after the interruption"


@pytest.mark.parametrize(("command", "count", "size"), [("contextual_update", 2000, 60_000), ("say", 1000, 200)])
async def test_messages_queued_while_offline_are_bounded(tmp_path: Path, command: str, count: int, size: int) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent, TcpProxy(agent.port) as proxy:
        await proxy.stop_listening()  # the agent is unreachable
        env = fault_env(proxy.url, tmp_path, PI_AGENT_LOG__LEVEL="info")
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_state("offline", 10)
            pid = run.daemon.proc.pid  # type: ignore[union-attr]
            before = await _rss_mb(pid)
            async with unix_connect(str(run.daemon.api_socket), uri="ws://localhost/events", max_size=None) as ws:
                await ws.recv()  # the snapshot

                async def acks() -> int:
                    n = 0
                    while n < count:
                        n += json.loads(await ws.recv()).get("type") == "ack"
                    return n

                reader = asyncio.create_task(acks())
                for n in range(count):
                    await ws.send(json.dumps({"type": command, "text": f"{n:05d} " + "x" * (size - 6)}))
                assert await asyncio.wait_for(reader, 60) == count
            after = await _rss_mb(pid)
            await proxy.start()  # the agent is back
            await run.wait_connected(15)
            kind = "contextual_update" if command == "contextual_update" else "user_message"
            await agent.wait_for(lambda: agent.latest is not None and agent.latest.received_of(kind), 10)
            await asyncio.sleep(1.0)
            metrics = await run.metrics()
            log = run.log
    received = [r.message["text"] for r in agent.latest.received_of(kind)]
    assert after - before <= RSS_BOUND_MB, (before, after)
    assert 1 <= len(received) <= 64 and sum(map(len, received)) <= 512 * 1024 + size
    assert received[-1].startswith(f"{count - 1:05d}")  # the newest kept, in order
    assert [int(t[:5]) for t in received] == sorted(int(t[:5]) for t in received)
    assert metric(metrics, "pi_agent_messages_dropped_total", type=kind) == count - len(received)
    assert log.count("more messages wait to be sent than the queue holds") == 1
