"""Fault suite, bad frames: the fake agent sends garbage to the real daemon process.

Random text, binary frames, a 2 MiB frame, wrong types, invalid base64, unknown and
incomplete messages, audio in a format the metadata did not announce: the daemon stays
up, the conversation goes on (pongs keep coming, a question is still answered), every
bad frame is counted in ``/metrics`` and each kind of problem is logged once, even when
it comes again. A frame over the 16 MiB limit costs the connection, not the daemon.
(The decoder itself is property-tested in ``test_protocol.py``.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pi_agent.fake_agent import GARBAGE_KINDS, FakeAgent, FakeAgentOptions
from .support_faults import CANARY, agent_signatures, fault_daemon, fault_env, metric

pytestmark = pytest.mark.faults

# Each problem the garbage holds, as the one warning line that reports it says it.
PROBLEMS = [
    "frame is not JSON",
    "binary frame of 19 bytes",
    "audio.audio_event.audio_base_64 must be a string",
    "ping.ping_event.event_id must be an integer",
    "interruption.interruption_event.event_id must be an integer",
    "conversation_initiation_metadata: field 'conversation_initiation_metadata_event' must be an object",
    "invalid base64",
    "audio: missing field 'audio_event'",
    "audio.audio_event: missing field 'audio_base_64'",
    "ping.ping_event: missing field 'event_id'",
    "agent_response.agent_response_event: missing field 'agent_response'",
    "message has no string 'type' field",
    "not a whole number of 16-bit samples",
]
BAD_FRAMES_PER_ROUND = 13  # frames the garbage kinds above send, all counted as protocol errors


@pytest.mark.slow
async def test_garbage_from_the_agent_is_counted_logged_once_and_survived(tmp_path: Path) -> None:
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY, ping_interval=0.3)) as agent,
                fault_daemon(fault_env(agent.http_url, tmp_path), tmp_path,
                             secrets=lambda: agent_signatures(agent)) as run):
        conversation = await run.wait_connected()
        record = agent.latest
        for _ in range(2):  # the second round must not add a single warning
            for kind in GARBAGE_KINDS:
                await agent.send_garbage(kind)
                await asyncio.sleep(0.05)
        pongs = record.pongs_received
        await agent.wait_for(lambda: record.pongs_received >= pongs + 3, 5, "pongs after the garbage")
        await run.events.send({"type": "say", "text": "are you still there?"})
        await run.wait_state("speaking", 10)
        assert [r.message["text"] for r in record.received_of("user_message")] == ["are you still there?"]
        metrics = await run.metrics()
        status, _ = await run.health()
        opened, closed = run.opened(), run.connections(False)
        log = run.log
    assert status == 200
    assert opened == [conversation] and not closed  # one conversation all along
    assert record.is_open is False and record.closed_by == "client" and record.close_code == 1000
    assert metric(metrics, "pi_agent_protocol_errors_total") == 2 * BAD_FRAMES_PER_ROUND
    warnings = [line for line in log.splitlines() if " WARN " in line]
    for problem in PROBLEMS:
        lines = [line for line in warnings if problem in line]
        assert len(lines) == 1, (problem, lines, warnings)
    assert len(warnings) == len(PROBLEMS), warnings  # nothing else: unknown types and the big frame are fine
    assert "ignored server message of unknown type 'some_future_event'" in log  # at debug level


async def test_a_frame_over_the_size_limit_costs_the_connection_not_the_daemon(tmp_path: Path) -> None:
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent,
                fault_daemon(fault_env(agent.http_url, tmp_path), tmp_path,
                             secrets=lambda: agent_signatures(agent)) as run):
        first = await run.wait_connected()
        await agent.send_garbage("huge", size=17 * 1024 * 1024)
        closed = await run.wait_closed(10)
        second = await run.wait_connected(10, after=1)
        log = run.log
    assert second != first
    assert closed["outcome"] == "retry" and "a frame over the 16 MiB limit" in closed["reason"], closed
    assert agent.conversations[0].close_code == 1009 and agent.conversations[0].closed_by == "client"
    assert len([line for line in log.splitlines() if "over the 16 MiB limit" in line]) == 1
