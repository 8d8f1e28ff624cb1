"""Fault suite, slow and lossy networks between the daemon and the agent.

- A proxy of the test's own adds delay, jitter and retransmission-like stalls both ways
  (runs everywhere): the conversation simply goes on.
- As root, a network namespace joined by a veth pair with the fake agent inside:
  ``tc netem`` delay, jitter and loss (skipped where the kernel has no ``sch_netem``),
  and a ``tbf`` uplink far slower than the audio stream, then lifted: the audio that
  cannot be sent in time is dropped and counted, no queue (nor the daemon's memory)
  grows without bound, and the conversation carries on afterwards.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_faults import (CANARY, FakeAgentProcess, Link, TcpProxy, agent_signatures, contains, fault_daemon,
                            fault_env, make_wav, metric, netns_or_skip, proc_stats, question_samples, voiced_core)

pytestmark = pytest.mark.faults


@pytest.mark.slow
async def test_delay_jitter_and_stalls_do_not_break_the_conversation(tmp_path: Path) -> None:
    question = question_samples()
    mic = make_wav(tmp_path / "mic.wav", 0.5, question, 2.0)
    bumpy = Link(delay=0.08, jitter=0.04, spike_prob=0.03, spike=0.25)
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY, ping_interval=0.5)) as agent,
                TcpProxy(agent.port, up=bumpy, down=Link(delay=0.08, jitter=0.04, spike_prob=0.03,
                                                          spike=0.25)) as proxy):
        env = fault_env(proxy.url, tmp_path, mic)
        async with fault_daemon(env, tmp_path, secrets=lambda: [*agent_signatures(agent),
                                                                *proxy.signatures]) as run:
            await run.events.wait_for(lambda e: e["type"] == "user_transcript", 20, "the transcript")
            # The whole reply, not its first stretch: the agent sends in real time here, so a stall
            # on the link may run the speaker dry (and end "speaking") before the reply is over.
            deadline = time.monotonic() + 20
            while not (agent.conversations and agent.latest.turns and agent.latest.turns[0].completed):
                assert time.monotonic() < deadline, "the agent did not get to send its whole reply"
                await asyncio.sleep(0.1)
            await run.wait_state("idle", 10)  # and it played
            metrics = await run.metrics()
            closes = run.connections(False)
    assert not closes and len(agent.conversations) == 1, closes  # no reconnect
    record = agent.latest
    assert contains(bytes(record.user_audio), voiced_core(question))
    assert record.pongs_received >= 3 and record.turns[0].completed
    assert metric(metrics, "pi_agent_audio_dropped_frames_total") == 0


@pytest.mark.slow
async def test_netem_delay_jitter_and_loss(tmp_path: Path) -> None:
    with netns_or_skip() as ns:
        for side in ("host", "ns"):
            refused = ns.qdisc(side, "netem", "delay", "80ms", "40ms", "loss", "3%")
            if refused:
                pytest.skip(f"tc netem unavailable here ({refused}); the kernel needs sch_netem")
        agent = FakeAgentProcess(tmp_path, "--api-key", CANARY, "--ping-interval", "0.5", host=ns.ns_ip,
                                 prefix=ns.prefix).start()
        try:
            mic = make_wav(tmp_path / "mic.wav", 0.5, "question", 2.0)
            async with fault_daemon(fault_env(agent.http_url, tmp_path, mic), tmp_path) as run:
                await run.events.wait_for(lambda e: e["type"] == "user_transcript", 25, "the transcript")
                await run.events.wait_for(lambda e: e.get("previous") == "speaking", 25, "the reply played")
                closes = run.connections(False)
            convs = await asyncio.to_thread(agent.conversations)
        finally:
            agent.stop()
    assert not closes and len(convs) == 1, closes
    assert convs[0]["user_audio_seconds"] >= len(question_samples()) / 16000
    assert convs[0]["transcripts"] and convs[0]["pongs_received"] >= 3


def _send_queue(ns_ip: str) -> int:
    """Bytes the kernel holds unsent (or unacknowledged) on the daemon's sockets to ``ns_ip``."""
    if shutil.which("ss") is None:
        return 0
    out = subprocess.run(["ss", "-tnH", "dst", ns_ip], capture_output=True, text=True, timeout=5).stdout
    return max([int(line.split()[2]) for line in out.splitlines() if len(line.split()) > 2] or [0])


@pytest.mark.slow
async def test_uplink_slower_than_the_audio_drops_late_audio_and_recovers(tmp_path: Path) -> None:
    """``always`` capture streams ~350 kbit/s of JSON audio; a 64 kbit/s uplink carries a
    fifth of it. The daemon must drop (and count) what it cannot send rather than queue
    it: its memory and the kernel's send queue stay bounded. Once the link is back the
    same conversation goes on and a question is answered. The shaper's queue is deep enough
    never to drop a packet, and the link comes back by changing its rate, so TCP has no
    retransmission timeout to wait out; the dead-peer timeout is raised because pings wait
    behind the socket's buffer on a link this slow."""
    with netns_or_skip() as ns:
        agent = FakeAgentProcess(tmp_path, "--api-key", CANARY, "--ping-interval", "1", host=ns.ns_ip,
                                 prefix=ns.prefix).start()
        try:
            mic = make_wav(tmp_path / "mic.wav", 11.0, "question", 3.0)
            env = fault_env(agent.http_url, tmp_path, mic, PI_AGENT_CAPTURE__MODE="always",
                            PI_AGENT_SESSION__PREBUFFER="1", PI_AGENT_SESSION__DEAD_PEER_TIMEOUT="60",
                            PI_AGENT_AUDIO__ECHO="full_duplex", PI_AGENT_LOG__LEVEL="info")
            async with fault_daemon(env, tmp_path) as run:
                await run.wait_connected(10)
                mic_open = run.logged_at("WAV microphone")
                assert mic_open is not None
                pid = run.daemon.proc.pid
                before = proc_stats(pid)
                refused = ns.qdisc("host", "tbf", "rate", "64kbit", "burst", "8kb", "limit", "256kb")
                if refused:
                    pytest.skip(f"tc tbf unavailable here ({refused})")
                squeezed_at = time.monotonic()
                peak, send_q = before.rss_kb, 0
                while time.monotonic() - squeezed_at < 8.0:
                    await asyncio.sleep(0.5)
                    peak = max(peak, proc_stats(pid).rss_kb)
                    send_q = max(send_q, await asyncio.to_thread(_send_queue, ns.ns_ip))
                late = metric(await run.metrics(), "pi_agent_audio_dropped_frames_total", reason="late")
                ns.qdisc("host", "tbf", "rate", "1gbit", "burst", "1mb", "limit", "256kb", verb="change")  # link back
                assert time.monotonic() < mic_open + 11.0, "the squeeze overlapped the question: too slow here"
                await run.events.wait_for(lambda e: e["type"] == "user_transcript", 25, "the question answered")
                late_after = metric(await run.metrics(), "pi_agent_audio_dropped_frames_total", reason="late")
                closes = run.connections(False)
            convs = await asyncio.to_thread(agent.conversations)
        finally:
            agent.stop()
    assert late > 10, (late, send_q)  # audio dropped, and counted
    assert late_after - late < 100, (late, late_after)  # dropping stopped soon after the link came back
    assert peak - before.rss_kb < 30_000, (before, peak)  # no unbounded queue in memory
    assert send_q < 160 * 1024, send_q  # nor in the kernel (the socket send buffer is capped)
    assert not closes and len(convs) == 1, (  # survived
        closes, [(c["close_code"], c["closed_by"], c["close_reason"], c["received"]) for c in convs])
    assert convs[0]["transcripts"]
