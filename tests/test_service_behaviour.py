"""The real daemon against the fake agent doing what the service does (issue 19).

Each test drives one behaviour of the real service (``docs/service-behaviour.md`` says
where each is from) through the whole daemon process: the reply to text input that the
service precedes with an interruption of its own id, the queue, ``client_error``, tool
calls that expect no result, MCP tools awaiting approval, the last chunk of a reply on a
slow link, and the official SDKs' API key variable.
"""

from __future__ import annotations

import asyncio
import base64
import json
import wave
from pathlib import Path
import numpy as np
import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_audio import SPK_RATE, TimedRecording, VirtualAudio, loud_segments
from .support_daemon import QUESTION_WAV, EventClient, daemon_running
from .test_api import cli
from .test_audio_e2e import audio_daemon, connected, daemon_env

pytestmark = pytest.mark.slow

CANARY = "sk_canary_service_0c0ffee1d"


def wav_env(agent: FakeAgent, tmp: Path, *, mic: Path | None = QUESTION_WAV, **extra: str) -> dict[str, str]:
    """The daemon with a WAV file for a microphone and one for a speaker."""
    env = {"PI_AGENT_AGENT_ID": "agent_service", "PI_AGENT_SERVER_URL": agent.http_url,
           "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp / "speaker.wav"),
           "PI_AGENT_SESSION__POLICY": "on_demand", "PI_AGENT_CAPTURE__MODE": "vad", **extra}
    if mic is not None:
        env["PI_AGENT_AUDIO__INPUT_WAV"] = str(mic)
    return env


def silent_mic(tmp: Path) -> Path:
    path = tmp / "silence.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(3200))
    return path


def speaker_seconds(tmp: Path) -> float:
    """Seconds of sound (not silence) the daemon's WAV speaker played."""
    with wave.open(str(tmp / "speaker.wav"), "rb") as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels())[:, 0]
    return sum(end - start for start, end in loud_segments(x, rate)) / rate


# --- text input: the service's interruption of the reply's own id -------------------------------


@pytest.mark.audio
async def test_the_reply_to_pi_agent_say_is_heard(virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """elevenlabs-python #829: the service answers text input with an ``interruption`` whose
    id the reply's own audio carries. The Python SDK's rule (drop ``<=``) silences that reply;
    the JavaScript client's (drop only older) plays it, and so does the daemon."""
    opts = FakeAgentOptions(port=0, reply_text="It is nine o'clock.", reply_seconds=2.0)
    async with FakeAgent(opts) as agent, audio_daemon(daemon_env(virtual_audio, agent), tmp_path) as (d, events):
        record = await connected(agent, events)
        recording = TimedRecording(virtual_audio.server, "spk.monitor", tmp_path)
        try:
            env = {k: v for k, v in d.env.items() if k not in ("PI_AGENT_AGENT_ID", "PI_AGENT_SERVER_URL")}
            said = await asyncio.to_thread(cli, "say", "what time is it", env=env, timeout=60)
            await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking", 15,
                                  "the reply to play")
            await asyncio.sleep(0.2)
        finally:
            recorded = recording.stop()
    assert said.returncode == 0, said.stderr
    [turn] = [t for t in record.turns if t.cause == "text"]
    assert turn.opening_interruption_id == turn.event_id  # the sequence of #829 was sent
    assert record.sent_of("interruption")[0].message["interruption_event"]["event_id"] == turn.event_id
    heard = sum(end - start for start, end in loud_segments(recorded[:, 0], SPK_RATE)) / SPK_RATE
    assert heard >= 1.5, (heard, d.log)  # the 2 s reply, not silence
    assert "interrupted by the user" not in d.log


# --- the service's queue -------------------------------------------------------------------------


async def test_speech_while_queued_is_kept_and_answered_once_admitted(tmp_path: Path) -> None:
    """While the service holds the conversation in its queue it discards what the client
    sends: the daemon shows "waiting for the agent", keeps the question, and sends it once
    admitted; nothing the user said reaches the void."""
    opts = FakeAgentOptions(port=0, queue_seconds=3.0, transcript="Are you there?")
    async with FakeAgent(opts) as agent:
        env = wav_env(agent, tmp_path, PI_AGENT_SESSION__PREBUFFER="8")
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            waiting = await events.wait_for(lambda e: e.get("type") == "queue_status", 15, "queue_status")
            health = json.loads((await asyncio.to_thread(d.http, "/healthz"))[1])
            status = await events.wait_for(lambda e: e.get("type") == "status" and e.get("queued"), 5, "status")
            await events.wait_for(lambda e: e.get("type") == "user_transcript", 20, "the question's transcript")
            await events.wait_for(lambda e: e.get("type") == "agent_response", 10, "the answer")
        log = d.log
    record = agent.latest
    assert waiting["status"] == "waiting" and status["state"] in ("connecting", "listening", "thinking")
    assert health["status"] == "ok"
    assert record.queue_outcome == "admitted"
    # What went out between the metadata and the queue was discarded by the service, and sent
    # again once admitted: every discarded piece of speech reached the agent after all.
    lost = [r for r in record.discarded if r.kind not in ("pong", "user_audio_chunk")]
    assert lost == []
    heard = bytes(record.user_audio)
    for r in record.discarded:
        if r.kind == "user_audio_chunk":
            assert base64.b64decode(r.message["user_audio_chunk"]) in heard
    assert record.user_audio_seconds >= 3.0  # the whole question arrived after admission
    assert "waiting for the agent" in log and "captured while queued" in log


async def test_a_queue_that_times_out_is_retried(tmp_path: Path) -> None:
    opts = FakeAgentOptions(port=0, queue_timeout=1.0)
    async with FakeAgent(opts) as agent:
        env = wav_env(agent, tmp_path, mic=silent_mic(tmp_path), PI_AGENT_SESSION__POLICY="persistent",
                      PI_AGENT_SESSION__BACKOFF_INITIAL="0.2")
        async with daemon_running(env, tmp_path) as d:
            await agent.wait_for_conversation(2, 15)
        log = d.log
    first = agent.conversations[0]
    assert first.queue_outcome == "timed_out" and first.close_code == 3008
    assert "gave up" in log and "3008" in log
    assert "Traceback" not in log


# --- client_error --------------------------------------------------------------------------------


async def test_client_error_words_reach_the_log_healthz_and_status(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = wav_env(agent, tmp_path, mic=silent_mic(tmp_path), PI_AGENT_SESSION__POLICY="persistent")
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            await agent.wait_for_conversation(1, 15)
            if not (events.snapshot or {}).get("connected"):
                await events.wait_for(lambda e: e.get("type") == "connection" and e["connected"], 15, "connected")
            await agent.control("client_error", {"code": "1008", "error_name": "invalid_api_key",
                                                 "message": "Invalid API key"})
            await events.wait_for(lambda e: e.get("type") == "state" and e["state"] == "error", 10, "error state")
            code, body = await asyncio.to_thread(d.http, "/healthz")
            r = await asyncio.to_thread(cli, "status", env=d.env)
        log = d.log
    assert code == 503 and "invalid_api_key" in json.loads(body)["reason"], body
    assert "Invalid API key" in json.loads(r.stdout)["problem"], r.stdout
    assert log.count("Invalid API key (code 1008)") == 1, log  # the client_error, said once


# --- tools ---------------------------------------------------------------------------------------


async def test_a_tool_call_that_expects_no_response_waits_for_nothing(tmp_path: Path) -> None:
    opts = FakeAgentOptions(port=0, tool_call="set_lights", tool_expects_response=False, tool_timeout=30.0)
    async with (FakeAgent(opts) as agent, daemon_running(wav_env(agent, tmp_path), tmp_path) as d,
                EventClient(d.api_socket) as events):
        await events.send({"type": "handle_tools", "tools": ["*"]})
        call = await events.wait_for(lambda e: e.get("type") == "client_tool_call", 20, "the tool call")
        await events.wait_for(lambda e: e.get("type") == "agent_response", 10, "the answer")
        await asyncio.sleep(0.3)
        before = len(events.events)
        await events.send({"type": "tool_result", "tool_call_id": call["tool_call_id"], "result": "ok"})
        answer = await events.wait_for(lambda e: e.get("type") in ("ack", "error")
                                       and events.events.index(e) >= before, 5, "the API's answer")
    record = agent.latest
    assert call["expects_response"] is False
    assert record.tool_results == []  # the daemon sent no client_tool_result
    assert answer["type"] == "error" and "no pending tool call" in answer["message"]  # nothing was pending
    assert record.turns[0].completed or record.turns[0].chunks_sent > 0


@pytest.mark.parametrize(("settings", "outcome"), [
    ({}, "denied"),
    ({"PI_AGENT_SESSION__MCP_ALLOW": '["book_room"]'}, "approved"),
])
async def test_an_mcp_tool_awaiting_approval_is_answered_at_once(
        tmp_path: Path, settings: dict[str, str], outcome: str) -> None:
    opts = FakeAgentOptions(port=0, mcp_approval="book_room", mcp_approval_timeout=60.0)
    async with FakeAgent(opts) as agent:
        async with daemon_running(wav_env(agent, tmp_path, **settings), tmp_path) as d:
            await agent.wait_for(lambda: agent.latest is not None and agent.latest.mcp_calls
                                 and agent.latest.mcp_calls[0].outcome is not None, 25, "the approval")
        log = d.log
    [call] = agent.latest.mcp_calls
    assert call.outcome == outcome and call.waited is not None and call.waited < 2.0
    assert "book_room" in log


async def test_an_mcp_approval_can_be_asked_of_a_local_program(tmp_path: Path) -> None:
    opts = FakeAgentOptions(port=0, mcp_approval="book_room", mcp_approval_timeout=60.0)
    async with FakeAgent(opts) as agent:
        env = wav_env(agent, tmp_path, PI_AGENT_SESSION__MCP_APPROVAL="ask", PI_AGENT_API__TOOL_TIMEOUT="20")
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            ask = await events.wait_for(lambda e: e.get("type") == "mcp_tool_approval_request", 25, "the request")
            await events.send({"type": "mcp_tool_approval", "tool_call_id": ask["tool_call_id"], "approved": True})
            await agent.wait_for(lambda: agent.latest.mcp_calls[0].outcome is not None, 10, "the approval")
    assert ask["tool_name"] == "book_room" and ask["timeout"] == 20
    assert agent.latest.mcp_calls[0].outcome == "approved"


# --- the reply's last chunk on a slow link -------------------------------------------------------


async def test_a_reply_on_a_slow_link_is_one_speaking_state_until_its_final_chunk(tmp_path: Path) -> None:
    """The service marks a reply's last chunk (``is_final``). On a link slower than real
    time the speaker runs dry between chunks; "speaking" lasts until the final chunk has
    played instead of flapping with every gap (half duplex: the mic stays shut meanwhile)."""
    opts = FakeAgentOptions(port=0, send_speed=0.6, chunk_ms=400, reply_seconds=3.0)
    async with FakeAgent(opts) as agent:
        env = wav_env(agent, tmp_path, PI_AGENT_AUDIO__ECHO="half_duplex")
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            await events.wait_state("speaking", 20)
            await agent.wait_for(lambda: agent.latest.turns[0].final_chunk_sent, 15, "the final chunk")
            await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking", 10)
            await asyncio.sleep(0.3)
            states = events.states()
    assert states.count("speaking") == 1, states
    assert speaker_seconds(tmp_path) >= 1.5  # the 3 s clip (with its pauses) was heard


# --- identity --------------------------------------------------------------------------------------


async def test_the_official_sdks_key_variable_opens_a_private_agent(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        env = wav_env(agent, tmp_path, mic=silent_mic(tmp_path), PI_AGENT_SESSION__POLICY="persistent",
                      ELEVENLABS_API_KEY=CANARY)
        async with daemon_running(env, tmp_path) as d:
            record = await agent.wait_for_conversation(1, 15)
            await agent.wait_for(lambda: record.init is not None, 10, "the initiation")
        log = d.log
    assert record.init is not None and record.init["source_info"]["source"] == "unknown"
    assert CANARY not in log

