"""Fault suite, server side: the agent killed and restarted, a half-open connection.

Each case drives the real daemon process (``pi-agent run``) and asserts what it does
(states, reconnect timing), what the agent received, and what ``/healthz``, the event
API and the log show. Every case runs with the canary API key (see ``support_faults``).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_daemon import free_port
from .support_faults import CANARY, FakeAgentProcess, TcpProxy, agent_signatures, fault_daemon, fault_env, make_wav

pytestmark = pytest.mark.faults


def _retries(run, since: int) -> list[tuple[float, float]]:
    """(received at, retry_in) of every failed attempt reported after event index ``since``."""
    ev = run.events
    return [(ev.received_at[i], e["retry_in"]) for i, e in enumerate(ev.events)
            if i >= since and e.get("type") == "connection" and not e.get("connected")
            and e.get("retry_in") is not None]


def _check_backoff(retries: list[tuple[float, float]], initial: float, cap: float) -> None:
    """Delays: each within its doubling ceiling and the cap, jittered, and really waited."""
    delays = [d for _, d in retries]
    for k, delay in enumerate(delays):
        ceiling = min(cap, initial * 2 ** k)
        assert 0 <= delay <= ceiling + 1e-6, (k, delay, ceiling, delays)
    assert len(set(delays)) == len(delays), delays  # full jitter: no two alike
    assert any(d < 0.9 * min(cap, initial * 2 ** k) for k, d in enumerate(delays)), delays
    for (t_prev, d_prev), (t_next, _) in itertools.pairwise(retries):
        assert t_next - t_prev >= d_prev - 0.05, (t_next - t_prev, d_prev)  # no attempt before its time


@pytest.mark.slow
async def test_agent_killed_mid_reply_and_back_after_two_seconds(tmp_path: Path) -> None:
    """Killed while the agent speaks: offline at once (not stuck speaking), backs off,
    reconnects when the server is back and starts a new conversation."""
    mic = make_wav(tmp_path / "mic.wav", 0.4, "question")
    agent = FakeAgentProcess(tmp_path, "--api-key", CANARY, "--ping-interval", "0.5").start()
    try:
        env = fault_env(agent.http_url, tmp_path, mic, PI_AGENT_SESSION__BACKOFF_MAX="4")
        async with fault_daemon(env, tmp_path) as run:
            first = await run.wait_connected()
            await run.wait_state("speaking", 20)
            since = len(run.events.events)
            agent.kill()
            killed_at = time.monotonic()
            closed = await run.wait_closed(5)
            assert closed["outcome"] == "retry" and closed["retry_in"] is not None
            await run.wait_state("offline", 5)
            # With a 0.2 s initial backoff the next attempt (state connecting, healthy by
            # design) may begin before the request arrives: ask until the answer is about
            # the offline state, and check what /healthz says then.
            status, body = await run.health()
            for _ in range(50):
                if body["state"] == "offline":
                    break
                await asyncio.sleep(0.02)
                status, body = await run.health()
            assert status == 503 and body["state"] == "offline" and body["reason"].startswith("offline: ")
            await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - killed_at)))
            await asyncio.to_thread(agent.start)
            back_at = time.monotonic()
            second = await run.wait_connected(8, after=1)
            reconnect = time.monotonic() - back_at
            assert second != first
            await run.wait_state("idle", 5)
            assert (await run.health())[0] == 200
            convs = await agent.wait_for(lambda c: len(c) == 1, 5, "the new conversation")
            assert convs[0]["id"] == second and convs[0]["agent_id"] == "agent_faults"
        retries = _retries(run, since)
        log = run.log
    finally:
        agent.stop()
    states = run.events.states()
    i = states.index("speaking")
    assert "offline" in states[i + 1:i + 3], states  # the speaker stops; the LEDs do not stay on "speaking"
    assert len(retries) >= 3, retries
    _check_backoff(retries, 0.2, 4.0)
    assert reconnect < 3.2 + 1.5, reconnect  # within the next ceiling (<= 3.2 s) after the return
    assert log.count("-> offline") >= 1 and f"conversation {second} open" in log
    assert "disconnected: connection lost" in log


@pytest.mark.slow
async def test_agent_gone_longer_than_the_backoff_cap(tmp_path: Path) -> None:
    """Gone for 4 s with a 1 s cap: attempts keep coming at most a cap apart, delays never
    exceed the cap, the same failure is logged once at warning, the return is found fast."""
    agent = FakeAgentProcess(tmp_path, "--api-key", CANARY).start()
    try:
        async with fault_daemon(fault_env(agent.http_url, tmp_path), tmp_path) as run:
            first = await run.wait_connected()
            since = len(run.events.events)
            agent.kill()
            await run.wait_state("offline", 5)
            await asyncio.sleep(4.0)
            in_outage = _retries(run, since)
            await asyncio.to_thread(agent.start)
            back_at = time.monotonic()
            second = await run.wait_connected(5, after=1)
            reconnect = time.monotonic() - back_at
        log = run.log
    finally:
        agent.stop()
    assert second != first
    _check_backoff(in_outage, 0.2, 1.0)
    assert 4 <= len(in_outage) <= 40, in_outage  # keeps trying, but no tight loop
    times = [t for t, _ in in_outage]
    assert max(b - a for a, b in itertools.pairwise(times)) < 1.0 + 0.8  # never more than the cap apart
    assert reconnect < 1.0 + 1.0, reconnect
    lines = [line for line in log.splitlines() if "controller: disconnected: " in line]
    assert len(lines) >= len(in_outage), (len(lines), len(in_outage))  # each attempt says why it failed
    refused = [line for line in lines if "Connection refused" in line]
    assert refused, lines
    assert sum("WARN" in line for line in refused) <= 1, refused  # a repeated failure is not a warning each time


async def test_half_open_connection_is_dropped_within_dead_peer_timeout(tmp_path: Path) -> None:
    """The proxy stops forwarding both ways without closing: pings go unanswered, the
    daemon drops the connection within ``dead_peer_timeout`` and opens a new one."""
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY, ping_interval=30)) as agent,
                TcpProxy(agent.port) as proxy):
        env = fault_env(proxy.url, tmp_path, PI_AGENT_SESSION__DEAD_PEER_TIMEOUT="1.5")
        async with fault_daemon(env, tmp_path, secrets=lambda: [*agent_signatures(agent), *proxy.signatures]) as run:
            first = await run.wait_connected()
            await asyncio.sleep(1.0)  # some pings answered first
            proxy.freeze()
            frozen_at = time.monotonic()
            closed = await run.wait_closed(10)
            detected = time.monotonic() - frozen_at
            second = await run.wait_connected(5, after=1)
        log = run.log
    assert second != first
    assert closed["outcome"] == "retry", closed
    assert "stopped answering" in closed["reason"], closed
    assert detected <= 1.5 + 0.75, detected  # the configured bound, plus scheduling slack
    assert "state idle -> offline" in log or "-> offline" in log
    assert proxy.signatures  # the scan above had the real signatures to look for


async def test_on_demand_stops_retrying_once_nobody_asks_and_tries_again_when_asked(tmp_path: Path) -> None:
    """on_demand with the agent unreachable: retries while the user is there, then goes
    quiet (no hammering for months); the next request tries again at once."""
    mic = make_wav(tmp_path / "mic.wav", 0.4, "question")
    env = fault_env(f"http://127.0.0.1:{free_port()}", tmp_path, mic,
                    PI_AGENT_SESSION__POLICY="on_demand", PI_AGENT_SESSION__IDLE_TIMEOUT="2")
    async with fault_daemon(env, tmp_path) as run:
        gave_up = await run.events.wait_for(
            lambda e: e.get("type") == "connection" and not e.get("connected") and e.get("retry_in") is None,
            20, "the retries to stop")
        assert "no more retries until the next press or speech" in gave_up["reason"]
        assert "Connection refused" in gave_up["reason"]  # and why it failed
        assert len(run.connections(False)) >= 3  # it did retry while the user was speaking
        await run.wait_state("idle", 5)
        assert (await run.health())[0] == 200
        quiet = len(run.connections(False))
        await asyncio.sleep(2.0)
        assert len(run.connections(False)) == quiet
        await run.events.send({"type": "say", "text": "hello?"})
        asked_at = time.monotonic()
        await run.events.wait_for(lambda e: len(run.connections(False)) > quiet, 5, "a new attempt")
        assert time.monotonic() - asked_at < 2.0
    assert "s of speech that waited for a conversation which could not be opened" in run.log
    assert "stopped connecting: signed URL request failed" in run.log


@pytest.mark.slow
async def test_a_server_message_that_echoes_the_api_key_reaches_no_client_with_it(tmp_path: Path) -> None:
    """The service's error text is passed on to the event API's clients: a key it echoes
    is masked there as in the journal (the secret scan covers every event received)."""
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent,
                fault_daemon(fault_env(agent.http_url, tmp_path, PI_AGENT_SESSION__POLICY="persistent"), tmp_path,
                             secrets=lambda: agent_signatures(agent)) as run):
        await run.wait_connected(10)
        await agent.control("error", {"error_type": "llm_error", "code": "1011",
                                      "message": f"the key {CANARY} was refused"})
        event = await run.events.wait_for(lambda e: e.get("type") == "error" and "was refused" in str(e), 10,
                                          "the server's error on the event API")
    assert CANARY not in str(event) and "the key *** was refused" in str(event), event
