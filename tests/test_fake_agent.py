"""The fake ElevenLabs agent, driven by a plain ``websockets`` client on loopback.

Every message the fake sends in these tests is checked against the spec's
server-to-client schemas when the test ends (except garbage and in-the-wild ones).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pi_agent.errors import ConfigError
from pi_agent.fake_agent import GARBAGE_KINDS, FakeAgent, FakeAgentOptions, add_arguments, options_from_args, serve
from pi_agent.fake_agent.audio import (
    FORMATS,
    REPLY_WAV,
    EnergyGate,
    SpeechEnded,
    SpeechStarted,
    audio_format,
    decode,
    encode,
    read_wav,
    resample,
    ulaw_decode,
    ulaw_encode,
)
from .support_spec import validate_client_message, validate_server_message
from .support_wait import wait_until

QUESTION_WAV = Path(__file__).resolve().parents[1] / "pi_agent" / "assets" / "question.wav"
QUESTION, QUESTION_RATE = read_wav(QUESTION_WAV)
REPLY, REPLY_RATE = read_wav(REPLY_WAV)
REPLY_SECONDS = len(REPLY) / REPLY_RATE
SILENCE = np.zeros(QUESTION_RATE // 2, dtype=np.int16)


# --- helpers --------------------------------------------------------------------------


class Client:
    """A plain websockets client that records what it receives and answers pings."""

    def __init__(self, ws: ClientConnection, auto_pong: bool = True) -> None:
        self.ws = ws
        self.auto_pong = auto_pong
        self.messages: list[Any] = []  # dicts, or {"<raw>": frame} for non-JSON frames
        self.times: list[float] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, *, init: bool = True, auto_pong: bool = True, **kw: Any) -> Client:
        ws = await connect(url, max_size=16 * 1024 * 1024, open_timeout=5, close_timeout=2, **kw)
        client = cls(ws, auto_pong)
        if init:
            await client.send({"type": "conversation_initiation_client_data", "dynamic_variables": {}})
        return client

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                try:
                    message = json.loads(frame)
                except ValueError:
                    message = {"<raw>": frame}
                if not isinstance(message, dict):
                    message = {"<raw>": frame}
                self.messages.append(message)
                self.times.append(time.monotonic())
                if self.auto_pong and message.get("type") == "ping":
                    event_id = (message.get("ping_event") or {}).get("event_id")
                    if type(event_id) is int:  # garbage pings get no answer
                        await self.send({"type": "pong", "event_id": event_id})
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
        await wait_until(predicate, timeout, f"the client to see {what}", changed=lambda: self._changed, poll=0.2,
                         seen=lambda: f"last received {[m.get('type', '<raw>') for m in self.messages][-20:]}")

    async def wait_type(self, kind: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        await self.wait_for(lambda: len(self.of(kind)) >= count, timeout, f"{count} x {kind}")
        return self.of(kind)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def send(self, message: dict[str, Any]) -> None:
        validate_client_message(message)  # the test client itself speaks the protocol
        await self.ws.send(json.dumps(message))

    async def send_audio(self, samples: np.ndarray, fmt: str = "pcm_16000", chunk_ms: int = 20) -> int:
        """Send samples (already at the format's rate) as ``user_audio_chunk`` frames; return bytes sent."""
        f = audio_format(fmt)
        step = f.rate * chunk_ms // 1000
        total = 0
        for i in range(0, len(samples), step):
            data = encode(samples[i : i + step], f)
            total += len(data)
            await self.send({"user_audio_chunk": base64.b64encode(data).decode()})
        return total

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


def audio_bytes(messages: list[dict[str, Any]], event_id: int | None = None) -> bytes:
    return b"".join(
        base64.b64decode(m["audio_event"]["audio_base_64"])
        for m in messages
        if m.get("type") == "audio" and (event_id is None or m["audio_event"]["event_id"] == event_id)
    )


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def aget(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(http_get, url, headers)


async def control(agent: FakeAgent, **params: Any) -> tuple[int, dict[str, Any]]:
    query = urlencode({k: str(v) for k, v in params.items()})
    status, _, body = await aget(f"{agent.http_url}/_fake/control?{query}")
    return status, json.loads(body)


def assert_spec_clean(agent: FakeAgent) -> int:
    """Validate every in-spec message the fake sent; return how many were checked."""
    checked = 0
    for record in agent.conversations:
        for sent in record.sent:
            if sent.in_spec:
                assert sent.message is not None
                validate_server_message(sent.message)
                checked += 1
    return checked


MakeAgent = Callable[..., Awaitable[FakeAgent]]


@pytest.fixture
async def make_agent() -> AsyncIterator[MakeAgent]:
    """Start fake agents on free ports; stop them, check spec conformance and that no
    task failed unnoticed when the test ends."""
    loop = asyncio.get_running_loop()
    problems: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    agents: list[FakeAgent] = []

    async def factory(**options: Any) -> FakeAgent:
        options.setdefault("port", 0)
        agent = FakeAgent(FakeAgentOptions(**options))
        await agent.start()
        agents.append(agent)
        return agent

    try:
        yield factory
        for agent in agents:
            await agent.stop()
        gc.collect()
        await asyncio.sleep(0)
        assert not problems, f"unhandled errors in the event loop: {problems}"
        for agent in agents:
            assert_spec_clean(agent)
    finally:
        for agent in agents:
            await agent.stop()
        loop.set_exception_handler(previous)


def speech(rate: int = 16000) -> np.ndarray:
    """question.wav plus half a second of silence, at ``rate``."""
    return resample(np.concatenate([QUESTION, SILENCE]), QUESTION_RATE, rate)


# --- pure parts --------------------------------------------------------------------------


def test_ulaw_matches_the_g711_reference_where_available() -> None:
    audioop = pytest.importorskip("audioop")  # gone in 3.13; the round-trip test below still runs
    x = np.arange(-32768, 32768, dtype=np.int16)
    assert ulaw_encode(x) == audioop.lin2ulaw(x.tobytes(), 2)
    codes = bytes(range(256))
    assert np.array_equal(ulaw_decode(codes), np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16))


def test_ulaw_round_trip_error_is_within_g711_steps() -> None:
    x = np.arange(-32768, 32768, 7, dtype=np.int16)
    y = ulaw_decode(ulaw_encode(x)).astype(np.int32)
    wide = x.astype(np.int32)
    err, magnitude = np.abs(y - wide), np.abs(wide)
    # half a mu-law step is at most ~3.2 % of the magnitude (plus a few LSB near zero);
    # magnitudes above 32124 clip
    inside = magnitude < 32000
    assert np.all(err[inside] <= magnitude[inside] * 0.035 + 8)
    assert np.all(np.abs(y[~inside]) >= 31000)
    assert ulaw_encode(np.array([0], dtype=np.int16)) == b"\xff"
    assert ulaw_encode(np.array([-32768, 32767], dtype=np.int16)) == b"\x00\x80"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_format_conversions_keep_duration(fmt: str) -> None:
    f = audio_format(fmt)
    one_second = resample(REPLY[:REPLY_RATE], REPLY_RATE, f.rate)
    data = encode(one_second, f)
    assert f.seconds(len(data)) == pytest.approx(1.0, abs=0.002)
    assert len(decode(data, f)) == len(one_second)
    with pytest.raises(ValueError, match="unknown audio format"):
        audio_format("mp3_44100")


def test_energy_gate_finds_one_utterance_in_question_wav() -> None:
    gate = EnergyGate(QUESTION_RATE)
    events = []
    for i in range(0, len(QUESTION), 320):
        events += gate.feed(QUESTION[i : i + 320])
    events += gate.feed(SILENCE)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    start, end = events
    assert isinstance(end, SpeechEnded)
    assert start.at == pytest.approx(0.3, abs=0.05)  # 0.3 s of leading silence
    assert 2.0 < end.duration < 3.6
    # the same audio fed in one piece gives the same answer: time is counted in samples
    again = EnergyGate(QUESTION_RATE).feed(np.concatenate([QUESTION, SILENCE]))
    assert again == events


def test_energy_gate_ignores_clicks_and_quiet_noise() -> None:
    gate = EnergyGate(16000)
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(16000 * 2) * 30).astype(np.int16)  # about -60 dBFS
    click = np.zeros(16000, dtype=np.int16)
    click[8000:8000 + 1600] = 8000  # 100 ms: shorter than min_speech_ms
    assert gate.feed(noise) == []
    assert gate.feed(click) == []
    assert not gate.in_speech


def test_options_validation_and_cli_flags() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        ["--port", "0", "--api-key", "k", "--output-format", "ulaw_8000", "--input-format", "pcm_44100",
         "--tool-call", "get_weather", "--end-call-after", "2", "--max-duration", "30", "--transcript", "hi",
         "--ping-interval", "0.5", "--first-message"]
    )
    o = options_from_args(ns)
    assert (o.port, o.api_key, o.output_format, o.input_format) == (0, "k", "ulaw_8000", "pcm_44100")
    assert (o.tool_call, o.end_call_after, o.max_duration, o.transcript) == ("get_weather", 2, 30.0, "hi")
    assert (o.ping_interval, o.first_message) == (0.5, True)
    assert options_from_args(parser.parse_args([])) == FakeAgentOptions()
    ns = parser.parse_args(
        ["--interruption-ids", "same", "--stale-chunks", "3", "--no-text-interruption", "--no-final-chunk",
         "--client-error", "--queue-seconds", "2", "--queue-timeout", "5", "--no-tool-expects-response",
         "--mcp-approval", "create_ticket", "--mcp-approval-timeout", "30", "--ping-ms-unmeasured", "null"]
    )
    o = options_from_args(ns)
    assert (o.interruption_ids, o.stale_chunks, o.text_interruption, o.final_chunk) == ("same", 3, False, False)
    assert (o.client_error, o.queue_seconds, o.queue_timeout) == (True, 2.0, 5.0)
    assert (o.tool_expects_response, o.mcp_approval, o.mcp_approval_timeout) == (False, "create_ticket", 30.0)
    assert o.ping_ms_unmeasured == "null"
    d = FakeAgentOptions()  # the defaults are what the service does (docs/service-behaviour.md)
    assert (d.interruption_ids, d.stale_chunks, d.text_interruption, d.final_chunk) == ("newer", 0, True, True)
    assert (d.client_error, d.queue_seconds, d.queue_timeout, d.tool_expects_response) == (False, None, None, True)
    assert (d.mcp_approval, d.mcp_approval_timeout, d.ping_ms_unmeasured) == (None, 300.0, "omit")
    for bad in ({"interruption_ids": "older"}, {"stale_chunks": -1}, {"queue_seconds": -1.0},
                {"mcp_approval_timeout": 0}, {"ping_ms_unmeasured": "zero"}):
        with pytest.raises(ConfigError):
            FakeAgentOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="output_format"):
        FakeAgentOptions(output_format="pcm_11025")
    with pytest.raises(ConfigError, match="ping_interval"):
        FakeAgentOptions(ping_interval=0)


# --- conversations ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
async def test_metadata_and_reply_audio_in_every_output_format(make_agent: MakeAgent, fmt: str) -> None:
    agent = await make_agent(output_format=fmt, send_speed=100.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=agent_x")
    [meta] = await client.wait_type("conversation_initiation_metadata")
    event = meta["conversation_initiation_metadata_event"]
    assert event["agent_output_audio_format"] == fmt
    assert event["user_input_audio_format"] == "pcm_16000"
    assert event["conversation_id"] == agent.latest.id

    event_id = await agent.agent_speak()
    f = audio_format(fmt)
    total = len(agent.reply_audio)
    await client.wait_for(lambda: len(audio_bytes(client.messages, event_id)) >= total, what="the whole reply")
    data = audio_bytes(client.messages, event_id)
    assert len(data) == total
    assert f.seconds(len(data)) == pytest.approx(REPLY_SECONDS, abs=0.01)
    # it is the reply speech, not noise: compare with the WAV taken to that rate
    got = decode(data, f).astype(np.float64)
    want = resample(REPLY, REPLY_RATE, f.rate).astype(np.float64)
    n = min(len(got), len(want))
    assert np.corrcoef(got[:n], want[:n])[0, 1] > 0.95
    [response] = client.of("agent_response")
    assert response["agent_response_event"] == {"agent_response": agent.options.reply_text, "event_id": event_id}
    await client.close()


async def test_conversation_ids_are_unique_and_event_ids_restart(make_agent: MakeAgent) -> None:
    agent = await make_agent(ping_interval=0.1)
    ids, first_pings = set(), []
    for _ in range(3):
        client = await Client.connect(f"{agent.ws_url}?agent_id=a")
        [meta] = await client.wait_type("conversation_initiation_metadata")
        ids.add(meta["conversation_initiation_metadata_event"]["conversation_id"])
        first_pings.append((await client.wait_type("ping"))[0]["ping_event"]["event_id"])
        await client.close()
    assert len(ids) == 3
    assert first_pings == [1, 1, 1]


async def test_pings_have_increasing_ids_and_pongs_are_matched(make_agent: MakeAgent) -> None:
    agent = await make_agent(ping_interval=0.1)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a", auto_pong=False)
    pings = await client.wait_type("ping", 3)
    for ping in pings[:3]:
        await client.send({"type": "pong", "event_id": ping["ping_event"]["event_id"]})
    await client.send({"type": "pong", "event_id": 9999})  # matches no ping
    pings = await client.wait_type("ping", 6)
    record = agent.latest
    await agent.wait_for(lambda: record.pongs_received == 3 and record.stray_pongs, 5, "the pongs")
    await client.close()
    await agent.wait_for_close(record)

    ids = [p["ping_event"]["event_id"] for p in client.of("ping")]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and ids[0] == 1
    assert "ping_ms" not in pings[0]["ping_event"]  # nothing measured yet: 1.1.0 types it an integer
    assert all(isinstance(p["ping_event"]["ping_ms"], int) for p in pings[4:6])  # measured from a pong
    assert record.pings_sent == len(ids)
    assert record.pongs_received == 3
    assert record.unanswered_pings == record.pings_sent - 3
    assert record.stray_pongs == [9999]


async def test_spoken_turn_shares_one_event_id_and_audio_arrives_intact(make_agent: MakeAgent) -> None:
    agent = await make_agent(send_speed=50.0, ping_interval=0.3)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    samples = speech()
    sent_bytes = await client.send_audio(samples)
    [transcript] = await client.wait_type("user_transcript")
    event_id = transcript["user_transcription_event"]["event_id"]
    await client.wait_for(lambda: len(audio_bytes(client.messages, event_id)) >= len(agent.reply_audio),
                          what="the reply")

    text = transcript["user_transcription_event"]["user_transcript"]
    assert re.fullmatch(r"\[\d+\.\d s of speech\]", text), text
    [response] = client.of("agent_response")
    assert response["agent_response_event"]["event_id"] == event_id
    turn_kinds = [m["type"] for m in client.messages if m.get("type") in ("user_transcript", "agent_response", "audio")]
    assert turn_kinds[:2] == ["user_transcript", "agent_response"] and set(turn_kinds[2:]) == {"audio"}
    assert {m["audio_event"]["event_id"] for m in client.of("audio")} == {event_id}
    ping_ids = [p["ping_event"]["event_id"] for p in client.of("ping")]
    assert event_id not in ping_ids  # turns and pings draw from one increasing sequence

    record = agent.latest
    assert bytes(record.user_audio) == samples.astype("<i2").tobytes()  # intact and complete
    assert record.user_audio_seconds == pytest.approx(len(samples) / 16000)
    assert len(record.audio_chunk_times) == len(record.audio_chunk_bytes) == -(-len(samples) // 320)
    assert sum(record.audio_chunk_bytes) == sent_bytes
    assert record.audio_chunk_times == sorted(record.audio_chunk_times)
    assert record.transcripts == [text]
    await client.close()


@pytest.mark.parametrize("fmt", ["ulaw_8000", "pcm_44100"])
async def test_user_audio_is_decoded_in_the_announced_input_format(make_agent: MakeAgent, fmt: str) -> None:
    agent = await make_agent(input_format=fmt, transcript="what is the weather", send_speed=50.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    [meta] = await client.wait_type("conversation_initiation_metadata")
    assert meta["conversation_initiation_metadata_event"]["user_input_audio_format"] == fmt
    f = audio_format(fmt)
    samples = speech(f.rate)
    await client.send_audio(samples, fmt)
    [transcript] = await client.wait_type("user_transcript")
    assert transcript["user_transcription_event"]["user_transcript"] == "what is the weather"
    record = agent.latest
    expected = decode(encode(samples, f), f)
    assert np.array_equal(np.frombuffer(bytes(record.user_audio), dtype="<i2"), expected)
    assert record.input_rate == f.rate
    await client.close()


@pytest.mark.parametrize("send_speed", [1.0, 50.0])
async def test_barge_in_interrupts_the_playing_turn(make_agent: MakeAgent, send_speed: float) -> None:
    """User speech while the reply still plays at the client (still being sent, or all
    sent but not yet heard) gets ``interruption``; then the speech is a new turn. The
    interruption's id is newer than the reply it cuts off, as the service numbers it (the
    official JS client plays audio with ``event_id >= interruption id``); older fakes sent
    the cut reply's own id."""
    agent = await make_agent(send_speed=send_speed, chunk_ms=100)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    first = await agent.agent_speak()
    await client.wait_type("audio")
    await client.send_audio(speech())
    [interruption] = await client.wait_type("interruption")
    interruption_id = interruption["interruption_event"]["event_id"]
    assert interruption_id > first
    [transcript] = await client.wait_type("user_transcript")
    second = transcript["user_transcription_event"]["event_id"]
    assert second > interruption_id  # the next reply is not dropped by a client keeping "> N" only
    await client.wait_type("agent_response", 2)

    cut = client.messages.index(interruption)
    assert not [m for m in client.messages[cut:] if m.get("type") == "audio" and m["audio_event"]["event_id"] == first]
    turn = agent.latest.turns[0]
    assert turn.interrupted and not turn.completed
    assert agent.latest.interruptions == [first]  # the cut turn's id
    assert turn.interruption_id == interruption_id  # the id on the wire
    [sent] = agent.latest.sent_of("interruption")
    assert turn.interrupted_at is not None and abs(turn.interrupted_at - sent.t) < 0.05
    if send_speed == 1.0:  # the rest of the turn was never sent
        assert len(audio_bytes(client.messages, first)) < len(agent.reply_audio) / 2
    await client.close()


async def test_speech_after_the_reply_has_played_does_not_interrupt(make_agent: MakeAgent) -> None:
    agent = await make_agent(send_speed=10.0, reply_seconds=0.3)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await agent.agent_speak()
    await agent.wait_for(lambda: agent.latest.turns[0].completed, 5, "the turn to finish playing")
    await client.send_audio(speech())
    await client.wait_type("agent_response", 2)
    assert client.of("interruption") == []
    await client.close()


async def test_user_message_gets_a_turn_without_transcript(make_agent: MakeAgent) -> None:
    agent = await make_agent(send_speed=50.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.send({"type": "contextual_update", "text": "the user is in Lisbon"})
    await client.send({"type": "user_activity"})
    await client.send({"type": "user_message", "text": "What is the weather like?"})
    [response] = await client.wait_type("agent_response")
    await client.wait_type("audio")
    assert client.of("user_transcript") == []
    record = agent.latest
    assert record.received_counts()["contextual_update"] == 1
    assert record.received_counts()["user_activity"] == 1
    assert record.turns[0].cause == "text"
    assert response["agent_response_event"]["event_id"] == record.turns[0].event_id
    assert record.anomalies == []
    await client.close()


async def test_first_message_and_wait_for_init(make_agent: MakeAgent) -> None:
    agent = await make_agent(first_message=True, wait_for_init=10.0, send_speed=50.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a", init=False)
    await asyncio.sleep(0.3)
    assert client.messages == []  # the metadata waits for the client's initiation data
    await client.send({"type": "conversation_initiation_client_data", "user_id": "u1"})
    await client.wait_type("conversation_initiation_metadata", timeout=2)
    [response] = await client.wait_type("agent_response")
    assert client.messages[0]["type"] == "conversation_initiation_metadata"
    assert response["agent_response_event"] == {"agent_response": agent.options.first_message_text, "event_id": 1}
    assert agent.latest.init == {"type": "conversation_initiation_client_data", "user_id": "u1"}
    await client.close()


async def test_client_tool_call_round_trip(make_agent: MakeAgent) -> None:
    agent = await make_agent(tool_call="get_weather", send_speed=50.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.send_audio(speech())
    [call] = await client.wait_type("client_tool_call")
    body = call["client_tool_call"]
    [transcript] = client.of("user_transcript")
    assert body["tool_name"] == "get_weather" and body["parameters"] == {"city": "Lisbon"}
    assert body["expects_response"] is True  # required by 1.1.0
    assert body["event_id"] == transcript["user_transcription_event"]["event_id"]
    assert client.of("agent_response") == []  # the agent waits for the result
    await client.send({"type": "client_tool_result", "tool_call_id": body["tool_call_id"], "result": "22 C, sunny",
                       "is_error": False})
    await client.wait_type("agent_response")
    assert agent.latest.tool_results[0]["result"] == "22 C, sunny"
    assert agent.latest.anomalies == []  # the result was matched to the call, no tool timeout

    # a second utterance gets no tool call; a control-made one does
    await client.send_audio(speech())
    await client.wait_type("agent_response", 2)
    assert len(client.of("client_tool_call")) == 1
    status, body2 = await control(agent, action="tool_call", name="open_door", parameters='{"door": "front"}')
    assert status == 200 and body2["ok"]
    [_, call2] = await client.wait_type("client_tool_call", 2)
    assert call2["client_tool_call"]["tool_name"] == "open_door"
    assert call2["client_tool_call"]["parameters"] == {"door": "front"}
    await client.close()


# --- what the service does (docs/service-behaviour.md) ---------------------------------------


def kept_audio(messages: list[dict[str, Any]], rule: str) -> list[int]:
    """Event ids of the audio chunks a client keeps: ``js`` plays ``event_id >= last
    interruption`` (the official JS client), ``python`` drops ``event_id <= last interruption``
    (the official Python SDK, elevenlabs-python #829)."""
    last, kept = 0, []
    for m in messages:
        if m.get("type") == "interruption":
            last = m["interruption_event"]["event_id"]
        elif m.get("type") == "audio":
            event_id = m["audio_event"]["event_id"]
            if (event_id >= last) if rule == "js" else (event_id > last):
                kept.append(event_id)
    return kept


@pytest.mark.parametrize("ids", ["newer", "same"])
async def test_stale_chunks_after_an_interruption_carry_the_cut_replys_id(make_agent: MakeAgent, ids: str) -> None:
    """Audio of the cut reply that was in flight arrives after the interruption with its old
    id; with the service's numbering (newer interruption ids) a client keeping
    ``event_id >= interruption`` drops it, with the old fake's numbering it would play it."""
    agent = await make_agent(send_speed=1.0, chunk_ms=100, stale_chunks=2, interruption_ids=ids)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    first = await agent.agent_speak()
    await client.wait_type("audio", 2)
    status, body = await control(agent, action="interrupt")
    assert status == 200 and body["event_id"] == first
    [interruption] = await client.wait_type("interruption")
    wire_id = interruption["interruption_event"]["event_id"]
    assert body["interruption_id"] == wire_id
    cut = client.messages.index(interruption)
    await client.wait_for(lambda: len([m for m in client.messages[cut:] if m.get("type") == "audio"]) >= 2,
                          what="the stale chunks")
    stale = [m for m in client.messages[cut:] if m.get("type") == "audio"]
    assert len(stale) == 2 and {m["audio_event"]["event_id"] for m in stale} == {first}

    record = agent.latest
    turn = record.turns[0]
    assert turn.interrupted and turn.interruption_id == wire_id and record.interruptions == [first]
    assert turn.stale_chunks_sent == 2 and [s.message for s in record.stale_audio] == stale
    assert all(s.in_spec for s in record.stale_audio)
    # they go on where the reply was cut: the client got one unbroken stretch of the clip
    assert audio_bytes(client.messages, first) == agent.reply_audio[: turn.sent_bytes + turn.stale_bytes]
    assert not any(m["audio_event"].get("is_final") for m in client.of("audio"))  # the reply never ended

    second = await agent.agent_speak()
    await client.wait_type("agent_response", 2)
    await client.wait_for(lambda: second in kept_audio(client.messages, "python"), what="the next reply")
    assert second > wire_id  # both official clients play the next reply
    if ids == "newer":
        assert wire_id > first
        assert kept_audio(client.messages, "js").count(first) == turn.chunks_sent  # the stale chunks dropped
    else:
        assert wire_id == first
        assert kept_audio(client.messages, "js").count(first) == turn.chunks_sent + 2  # they would play
    await client.close()


async def test_text_input_is_answered_with_an_interruption_carrying_the_replys_id(make_agent: MakeAgent) -> None:
    """elevenlabs-python #829: text input gets an ``interruption`` whose id the reply then
    carries (so the Python SDK's ``<=`` rule loses the reply, the JS client's ``>=`` plays it)."""
    agent = await make_agent(send_speed=50.0, reply_seconds=1.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.send({"type": "user_message", "text": "What is the weather like?"})
    [response] = await client.wait_type("agent_response")
    reply_id = response["agent_response_event"]["event_id"]
    await client.wait_for(lambda: len(audio_bytes(client.messages, reply_id)) >= len(agent.reply_audio),
                          what="the reply")
    [interruption] = client.of("interruption")
    assert interruption["interruption_event"]["event_id"] == reply_id
    assert client.messages.index(interruption) < client.messages.index(response)
    assert client.of("user_transcript") == []
    assert {m["audio_event"]["event_id"] for m in client.of("audio")} == {reply_id}
    assert set(kept_audio(client.messages, "js")) == {reply_id}
    assert kept_audio(client.messages, "python") == []

    record = agent.latest
    turn = record.turns[0]
    assert (turn.cause, turn.opening_interruption_id, turn.interrupted) == ("text", reply_id, False)
    assert record.interruptions == []  # nothing was cut

    # while a reply plays, the one interruption both cuts it and announces the text's reply
    await agent.wait_for(lambda: turn.completed, 5, "the first reply to play out")
    playing = await agent.agent_speak()
    await client.send({"type": "user_message", "text": "And tomorrow?"})
    await agent.wait_for(lambda: len(record.turns) == 3, 5, "the answer")
    await client.wait_for(lambda: record.turns[2].event_id in kept_audio(client.messages, "js"), what="the answer")
    assert len(client.of("interruption")) == 2
    cut, answer = record.turns[1], record.turns[2]
    assert record.interruptions == [playing] and cut.interruption_id == answer.event_id
    assert cut.interrupted_at is not None and cut.interrupted_at > record.sent_of("interruption")[0].t
    assert answer.opening_interruption_id == answer.event_id == client.of("interruption")[1]["interruption_event"][
        "event_id"]
    await client.close()

    plain = await make_agent(send_speed=50.0, text_interruption=False)
    client = await Client.connect(f"{plain.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.send({"type": "multimodal_message", "text": {"type": "user_message", "text": "What is this?"},
                       "file": {"type": "file_input", "file_id": "file_1"}})
    await client.wait_type("agent_response")
    await client.wait_type("audio")
    assert client.of("interruption") == [] and plain.latest.turns[0].opening_interruption_id is None
    await client.close()


async def test_response_events_have_the_1_1_0_shape(make_agent: MakeAgent) -> None:
    agent = await make_agent(send_speed=50.0, reply_seconds=1.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    event_id = await agent.agent_speak()
    [complete] = await client.wait_type("agent_response_complete")
    record = agent.latest
    [meta] = client.of("agent_response_metadata")
    assert meta == {"type": "agent_response_metadata", "agent_response_metadata_event": {
        "metadata": {"conversation_id": record.id}, "event_id": event_id}}
    assert complete == {"type": "agent_response_complete", "agent_response_complete_event": {"event_id": event_id}}
    kinds = [m["type"] for m in client.messages if m.get("type") != "ping"]
    assert kinds.index("agent_response_metadata") < kinds.index("agent_response")
    assert kinds.index("agent_response_complete") == len(kinds) - 1  # after the last audio chunk
    assert all(s.in_spec for s in record.sent if s.kind.startswith("agent_response_"))  # 1.1.0 defines both
    # sent once it is all generated (sent), not once it has all played
    turn = record.turns[0]
    assert turn.play_until is not None and record.sent_of("agent_response_complete")[0].t < turn.play_until
    await agent.wait_for(lambda: turn.completed, 5, "the reply to play out")
    assert len(client.of("agent_response_complete")) == 1
    await client.close()


@pytest.mark.parametrize("final", [True, False])
async def test_the_last_audio_chunk_of_a_reply_is_final(make_agent: MakeAgent, final: bool) -> None:
    agent = await make_agent(send_speed=50.0, reply_seconds=1.0, chunk_ms=200, final_chunk=final)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await agent.agent_speak()
    await client.wait_for(lambda: len(audio_bytes(client.messages)) >= len(agent.reply_audio), what="the reply")
    events = [m["audio_event"] for m in client.of("audio")]
    assert len(events) == 5 and not any("is_final" in e for e in events[:-1])  # 1.1.0: absent means false
    assert events[-1].get("is_final") is (True if final else None)
    assert agent.latest.turns[0].final_chunk_sent
    await client.close()


async def test_client_error_before_an_error_close(make_agent: MakeAgent) -> None:
    agent = await make_agent(client_error=True, max_duration=0.5)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_closed()
    assert [m["type"] for m in client.messages if "error" in m.get("type", "")] == ["error", "client_error"]
    [error] = client.of("client_error")
    assert error == {"type": "client_error", "error_event": {
        "code": 1000, "error_name": "max_duration_exceeded", "message": "Maximum conversation duration exceeded"}}
    assert client.ws.close_code == 1000
    assert [s.in_spec for s in agent.latest.sent_of("client_error")] == [True]

    # a close code outside the 1.0.0 error event's: client_error alone
    agent = await make_agent(client_error=True)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    assert (await control(agent, action="close", code=3000, error_type="http_exception", reason="Request error"))[
        0] == 200
    await client.wait_closed()
    assert client.of("error") == []
    assert client.of("client_error")[0]["error_event"] == {"code": 3000, "error_name": "http_exception",
                                                           "message": "Request error"}

    # the control action sends client_error alone, option or not; without the option, errors have none
    plain = await make_agent()
    client = await Client.connect(f"{plain.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    status, body = await control(plain, action="client_error", code=1002, error_name="llm_timeout",
                                 message="The LLM took too long")
    assert status == 200 and body["conversation"] == plain.latest.id
    await client.wait_closed()
    assert client.of("error") == []
    assert (client.ws.close_code, client.ws.close_reason) == (1002, "The LLM took too long")
    assert client.of("client_error")[0]["error_event"] == {"code": 1002, "error_name": "llm_timeout",
                                                           "message": "The LLM took too long"}
    client = await Client.connect(f"{plain.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await plain.max_duration()
    await client.wait_closed()
    assert client.of("error") and client.of("client_error") == []


async def test_queue_admits_after_queue_seconds_and_discards_what_came_meanwhile(make_agent: MakeAgent) -> None:
    """As the official widget's mock of the service: the metadata (after the client's init),
    then ``waiting``; what the client sends while waiting is discarded; ``admitted`` starts
    the conversation proper."""
    agent = await make_agent(queue_seconds=0.6, send_speed=50.0, ping_interval=0.2)
    # a client that streams at once, as the Python SDK does: its audio is lost
    eager = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await eager.wait_type("queue_status")
    second = speech()[:16000]
    await eager.send_audio(second)
    await eager.wait_type("ping", timeout=5)  # the conversation proper runs from the admission
    statuses = [m["queue_status_event"]["status"] for m in eager.of("queue_status")]
    assert statuses == ["waiting", "admitted"]
    kinds = [m["type"] for m in eager.messages]
    assert kinds[:3] == ["conversation_initiation_metadata", "queue_status", "queue_status"]
    record = agent.latest
    assert record.queue_outcome == "admitted" and record.queued_at is not None and record.queue_left_at is not None
    assert record.queue_left_at - record.queued_at >= 0.55
    assert [r.kind for r in record.discarded] == ["user_audio_chunk"] * 50
    assert record.discarded_audio_seconds == pytest.approx(1.0)
    assert record.init is not None  # the init came before the queue
    assert record.user_audio_samples == 0 and record.turns == []
    assert record.received_of("user_audio_chunk", discarded=False) == []
    assert [s.in_spec for s in record.sent_of("queue_status")] == [False, False]  # in neither contract
    await eager.close()

    # a client that waits for the admission loses nothing
    careful = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await careful.wait_for(lambda: [m["queue_status_event"]["status"] for m in careful.of("queue_status")]
                           == ["waiting", "admitted"], timeout=5)
    samples = speech()
    await careful.send_audio(samples)
    await careful.wait_type("user_transcript")
    record = agent.latest
    assert record.discarded == [] and record.discarded_audio_seconds == 0
    assert record.init is not None and bytes(record.user_audio) == samples.astype("<i2").tobytes()
    await careful.close()


async def test_queue_timeout_gets_timed_out_and_3008(make_agent: MakeAgent) -> None:
    agent = await make_agent(queue_seconds=5.0, queue_timeout=0.4)  # the timeout comes first
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_closed()
    assert [m["queue_status_event"]["status"] for m in client.of("queue_status")] == ["waiting", "timed_out"]
    assert client.messages[0]["type"] == "conversation_initiation_metadata"
    assert (client.ws.close_code, client.ws.close_reason) == (3008, "too many concurrent connections")
    record = await agent.wait_for_close(agent.latest)
    assert record.queue_outcome == "timed_out" and record.pings_sent == 0
    assert record.queue_left_at is not None and record.queued_at is not None
    assert record.queue_left_at - record.queued_at >= 0.35
    assert record.discarded == [] and record.init is not None


async def test_tool_call_that_expects_no_response_goes_on_at_once(make_agent: MakeAgent) -> None:
    agent = await make_agent(tool_call="log_visit", tool_expects_response=False, tool_timeout=30.0,
                             send_speed=50.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.send_audio(speech())
    [call] = await client.wait_type("client_tool_call")
    body = call["client_tool_call"]
    assert body["expects_response"] is False
    await client.wait_type("agent_response", timeout=5)  # no result sent, no tool_timeout waited
    record = agent.latest
    assert record.tool_calls[0]["expects_response"] is False
    await client.send({"type": "client_tool_result", "tool_call_id": body["tool_call_id"], "result": "logged",
                       "is_error": False})  # a result anyway: recorded, not an anomaly
    await agent.wait_for(lambda: record.tool_results, 5, "the result")
    assert record.tool_results[0]["result"] == "logged" and record.anomalies == []

    status, _ = await control(agent, action="tool_call", name="get_weather", expects_response="true")
    assert status == 200
    [_, call2] = await client.wait_type("client_tool_call", 2)
    assert call2["client_tool_call"]["expects_response"] is True
    await client.close()


@pytest.mark.parametrize("answer", ["approve", "deny", "none"])
async def test_mcp_tool_call_awaits_approval(make_agent: MakeAgent, answer: str) -> None:
    agent = await make_agent(mcp_approval="create_ticket", mcp_approval_timeout=0.5 if answer == "none" else 30.0,
                             send_speed=50.0, tool_parameters={"title": "Broken lamp"})
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.send_audio(speech())
    [ask] = await client.wait_type("mcp_tool_call")
    body = ask["mcp_tool_call"]
    assert (body["state"], body["tool_name"], body["parameters"]) == ("awaiting_approval", "create_ticket",
                                                                      {"title": "Broken lamp"})
    assert body["approval_timeout_secs"] == (1 if answer == "none" else 30)  # whole seconds on the wire
    assert body["service_id"] and body["tool_call_id"] and body["tool_description"] and body["timestamp"]
    await asyncio.sleep(0.2)
    assert client.of("agent_response") == []  # the reply waits for the approval
    if answer != "none":
        await client.send({"type": "mcp_tool_approval_result", "tool_call_id": body["tool_call_id"],
                           "is_approved": answer == "approve"})
    [_, done] = await client.wait_type("mcp_tool_call", 2)
    outcome = done["mcp_tool_call"]
    assert outcome["tool_call_id"] == body["tool_call_id"] and outcome["service_id"] == body["service_id"]
    if answer == "approve":
        assert outcome["state"] == "success" and isinstance(outcome["result"], list)
    else:
        assert outcome["state"] == "failure" and outcome["error_message"]
    await client.wait_type("agent_response")  # then the reply goes on
    record = agent.latest
    [call] = record.mcp_calls
    assert call.tool_call_id == body["tool_call_id"]
    assert call.outcome == {"approve": "approved", "deny": "denied", "none": "timed_out"}[answer]
    assert call.waited is not None and call.waited >= (0.5 if answer == "none" else 0.2)
    assert record.anomalies == []
    if answer == "approve":  # and one made by the control action
        status, made = await control(agent, action="mcp_tool_call", name="open_door")
        assert status == 200
        [*_, asked] = await client.wait_type("mcp_tool_call", 3)
        assert asked["mcp_tool_call"]["tool_call_id"] == made["tool_call_id"]
        assert asked["mcp_tool_call"]["state"] == "awaiting_approval"
        await client.send({"type": "mcp_tool_approval_result", "tool_call_id": made["tool_call_id"],
                           "is_approved": True})
        await agent.wait_for(lambda: record.mcp_calls[1].outcome == "approved", 5, "the approval")
        assert len(record.mcp_approval_results) == 2
    await client.close()


async def test_ping_ms_null_before_a_measurement_is_recorded_outside_the_contract(make_agent: MakeAgent) -> None:
    agent = await make_agent(ping_interval=0.1, ping_ms_unmeasured="null")
    client = await Client.connect(f"{agent.ws_url}?agent_id=a", auto_pong=False)
    [ping] = await client.wait_type("ping")
    assert ping["ping_event"]["ping_ms"] is None
    assert agent.latest.sent_of("ping")[0].in_spec is False  # 1.0.0 allows null, 1.1.0 (which defines ping) not
    await client.close()


# --- endings -------------------------------------------------------------------------------


async def test_end_call_after_n_turns(make_agent: MakeAgent) -> None:
    agent = await make_agent(end_call_after=1, send_speed=20.0, reply_seconds=0.3)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.send_audio(speech())
    await client.wait_closed()
    [tool] = client.of("agent_tool_response")
    body = tool["agent_tool_response"]
    assert (body["tool_name"], body["tool_type"], body["is_error"]) == ("end_call", "system", False)
    assert client.messages.index(tool) > max(i for i, m in enumerate(client.messages) if m.get("type") == "audio")
    assert client.ws.close_code == 1000
    record = await agent.wait_for_close(agent.latest)
    assert (record.close_code, record.closed_by) == (1000, "server")


async def test_max_duration_option(make_agent: MakeAgent) -> None:
    agent = await make_agent(max_duration=0.5)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_closed()
    [error] = client.of("error")
    assert error["error_event"]["code"] == 1000
    assert error["error_event"]["error_type"] == "max_duration_exceeded"
    assert client.ws.close_code == 1000


async def test_receive_timeout_option(make_agent: MakeAgent) -> None:
    agent = await make_agent(receive_timeout=0.5)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_closed()
    [error] = client.of("error")
    assert (error["error_event"]["code"], error["error_event"]["error_type"]) == (1002, "transport_receive_timeout")
    assert client.ws.close_code == 1002


async def test_max_concurrent_gets_queue_status_and_3008(make_agent: MakeAgent) -> None:
    agent = await make_agent(max_concurrent=1)
    first = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await first.wait_type("conversation_initiation_metadata")
    second = await Client.connect(f"{agent.ws_url}?agent_id=a", init=False)
    await second.wait_closed()
    assert second.of("queue_status") and second.ws.close_code == 3008
    assert not first.closed.is_set()
    await first.close()


async def test_missing_agent_id_gets_error_and_1008(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    client = await Client.connect(agent.ws_url, init=False)
    await client.wait_closed()
    [error] = client.of("error")
    assert (error["error_event"]["code"], error["error_event"]["error_type"]) == (1008, "missing_fields")
    assert client.ws.close_code == 1008
    assert client.of("conversation_initiation_metadata") == []


# --- signed URL and handshake ------------------------------------------------------------------


async def test_signed_url_with_and_without_key(make_agent: MakeAgent) -> None:
    agent = await make_agent(api_key="sk_test")
    url = f"{agent.http_url}/v1/convai/conversation/get-signed-url?agent_id=agent_1"
    status, _, body = await aget(url)
    assert status == 401 and json.loads(body)["detail"]["status"] == "invalid_api_key"
    status, _, _ = await aget(url, {"xi-api-key": "wrong"})
    assert status == 401
    status, headers, body = await aget(url, {"xi-api-key": "sk_test"})
    assert status == 200 and headers["Content-Type"] == "application/json"
    signed = json.loads(body)["signed_url"]
    parts = urlsplit(signed)
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == ("ws", "127.0.0.1", agent.port,
                                                                      "/v1/convai/conversation")
    query = parse_qs(parts.query)
    assert query["agent_id"] == ["agent_1"] and len(query["conversation_signature"][0]) >= 20
    alias = url.replace("get-signed-url", "get_signed_url")
    status, _, body = await aget(alias, {"xi-api-key": "sk_test"})
    assert status == 200 and json.loads(body)["signed_url"] != signed

    public = await make_agent()
    status, _, body = await aget(f"{public.http_url}/v1/convai/conversation/get-signed-url?agent_id=b")
    assert status == 200 and json.loads(body)["signed_url"].startswith(f"ws://127.0.0.1:{public.port}/")
    status, _, _ = await aget(f"{public.http_url}/v1/convai/conversation/get-signed-url")
    assert status == 422
    status, _, _ = await aget(f"{public.http_url}/nowhere")
    assert status == 404


async def test_private_agent_handshake_needs_a_fresh_signature(make_agent: MakeAgent) -> None:
    agent = await make_agent(api_key="sk_test")
    with pytest.raises(InvalidStatus) as info:
        await connect(f"{agent.ws_url}?agent_id=agent_1")
    assert info.value.response.status_code == 403
    _, _, body = await aget(
        f"{agent.http_url}/v1/convai/conversation/get-signed-url?agent_id=agent_1", {"xi-api-key": "sk_test"}
    )
    signed = json.loads(body)["signed_url"]
    with pytest.raises(InvalidStatus):  # a signature is bound to its agent
        await connect(signed.replace("agent_id=agent_1", "agent_id=agent_2"))
    client = await Client.connect(signed + "&source=test&version=1")
    await client.wait_type("conversation_initiation_metadata")
    with pytest.raises(InvalidStatus) as info:  # used once already
        await connect(signed)
    assert info.value.response.status_code == 403
    await client.close()

    public = await make_agent()
    client = await Client.connect(f"{public.ws_url}?agent_id=anything")
    await client.wait_type("conversation_initiation_metadata")
    await client.close()


@pytest.mark.parametrize("status", [401, 403, 404, 422, 429, 500])
async def test_signed_url_fault_statuses(make_agent: MakeAgent, status: int) -> None:
    agent = await make_agent(api_key="k")
    code, body = await control(agent, action="signed_url_fault", status=status, count=2)
    assert code == 200 and body["pending"] == 2
    url = f"{agent.http_url}/v1/convai/conversation/get-signed-url?agent_id=a"
    for _ in range(2):
        got, headers, payload = await aget(url, {"xi-api-key": "k"})
        assert got == status
        assert "detail" in json.loads(payload)
        if status == 429:
            assert headers["Retry-After"] == "1"
    got, _, _ = await aget(url, {"xi-api-key": "k"})
    assert got == 200


async def test_signed_url_fault_kinds(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    url = f"{agent.http_url}/v1/convai/conversation/get-signed-url?agent_id=a"
    agent.signed_url_fault(kind="timeout", seconds=0.6)
    started = time.monotonic()
    status, _, _ = await aget(url)
    assert status == 200 and time.monotonic() - started >= 0.5
    agent.signed_url_fault(kind="not_json")
    status, headers, body = await aget(url)
    assert status == 200 and not headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        json.loads(body)
    agent.signed_url_fault(kind="not_ws_url")
    status, _, body = await aget(url)
    assert json.loads(body)["signed_url"].startswith("http://")
    with pytest.raises(ValueError):
        agent.signed_url_fault(kind="slow")
    code, _ = await control(agent, action="signed_url_fault", status=200)
    assert code == 400


async def test_reject_handshake(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    code, _ = await control(agent, action="reject_handshake", status=503, count=2)
    assert code == 200
    for _ in range(2):
        with pytest.raises(InvalidStatus) as info:
            await connect(f"{agent.ws_url}?agent_id=a")
        assert info.value.response.status_code == 503
        assert info.value.response.headers["Retry-After"] == "1"
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.close()
    assert len(agent.conversations) == 1


# --- control actions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error_type"),
    [(1000, None), (1002, "llm_error"), (1008, "invalid_message"), (1011, "unknown_websocket_crash"), (3000, None),
     (3008, None)],
)
async def test_control_close_codes(make_agent: MakeAgent, code: int, error_type: str | None) -> None:
    agent = await make_agent()
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    params: dict[str, Any] = {"action": "close", "code": code, "reason": "bye now"}
    if error_type:
        params["error_type"] = error_type
    status, body = await control(agent, **params)
    assert status == 200 and body["conversation"] == agent.latest.id
    await client.wait_closed()
    assert (client.ws.close_code, client.ws.close_reason) == (code, "bye now")
    errors = client.of("error")
    if error_type:
        assert [e["error_event"]["code"] for e in errors] == [code]
        assert errors[0]["error_event"]["error_type"] == error_type
    else:
        assert errors == []
    record = await agent.wait_for_close(agent.latest)
    assert (record.close_code, record.close_reason, record.closed_by) == (code, "bye now", "server")


async def test_control_end_call_max_duration_and_error(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    assert (await control(agent, action="end_call"))[0] == 200
    await client.wait_closed()
    assert client.of("agent_tool_response")[0]["agent_tool_response"]["tool_name"] == "end_call"
    assert client.ws.close_code == 1000

    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await agent.max_duration()
    await client.wait_closed()
    assert client.of("error")[0]["error_event"]["error_type"] == "max_duration_exceeded"
    assert client.ws.close_code == 1000

    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    status, _ = await control(agent, action="error", error_type="tts_cascade_error", message="All TTS models failed")
    assert status == 200
    await client.wait_closed()
    [error] = client.of("error")
    assert error["error_event"] == {
        "code": 1002, "error_type": "tts_cascade_error", "message": "All TTS models failed",
        "reason": "All TTS models failed",
    }
    assert client.ws.close_code == 1002

    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await agent.send_error("value_error")
    await client.wait_closed()
    assert client.ws.close_code == 1008


async def test_control_agent_speak_and_queue_status(make_agent: MakeAgent) -> None:
    agent = await make_agent(send_speed=50.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    status, body = await control(agent, action="agent_speak", text="Good morning!")
    assert status == 200
    [response] = await client.wait_type("agent_response")
    assert response["agent_response_event"] == {"agent_response": "Good morning!", "event_id": body["event_id"]}
    await client.wait_type("audio")
    status, _ = await control(agent, action="queue_status")
    assert status == 200
    await client.wait_closed()
    [queue] = client.of("queue_status")
    assert queue == {"type": "queue_status", "queue_status_event": {"status": "timed_out"}}
    assert (client.ws.close_code, client.ws.close_reason) == (3008, "too many concurrent connections")
    assert [s.in_spec for s in agent.latest.sent_of("queue_status")] == [False]


async def test_control_errors(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    with pytest.raises(TimeoutError, match="the first turn"):  # LookupError inside counts as "not yet"
        await agent.wait_for(lambda: agent.latest.turns[0], 0.2, "the first turn")
    with pytest.raises(LookupError):
        _ = agent.latest
    assert (await control(agent, action="agent_speak"))[0] == 404  # no open conversation
    with pytest.raises(LookupError):
        await agent.end_call()
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    for params in (
        {"action": "fly"},
        {"action": "close", "code": 1006},
        {"action": "close", "code": "x"},
        {"action": "error", "error_type": "no_such_error"},
        {"action": "error", "error_type": "llm_error", "code": 3000},
        {"action": "garbage", "kind": "spaghetti"},
        {"action": "tool_call"},
        {"action": "tool_call", "name": "x", "expects_response": "maybe"},
        {"action": "mcp_tool_call"},
        {"action": "client_error", "code": 1006},
        {"action": "client_error", "code": "x"},
        {"action": "reject_handshake", "status": 200},
    ):
        status, body = await control(agent, **params)
        assert status == 400 and body["ok"] is False, params
    assert (await control(agent, action="end_call", conversation="conv_nope"))[0] == 404
    assert not client.closed.is_set()
    await client.close()


@pytest.mark.parametrize("kind", GARBAGE_KINDS)
async def test_control_garbage(make_agent: MakeAgent, kind: str) -> None:
    agent = await make_agent(output_format="ulaw_8000" if kind == "unannounced_format" else "pcm_16000")
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    before = len(client.messages)
    status, _ = await control(agent, action="garbage", kind=kind)
    assert status == 200
    sent = [s for s in agent.latest.sent if not s.in_spec]
    assert sent, "garbage is recorded as outside the spec"
    await client.wait_for(lambda: len(client.messages) >= before + len(sent), what="the garbage")
    got = client.messages[before:]
    if kind == "non_json":
        assert isinstance(got[0]["<raw>"], str)
    elif kind == "binary":
        assert isinstance(got[0]["<raw>"], bytes)
    elif kind == "huge":
        assert len(json.dumps(got[0])) > 2 * 1024 * 1024
    elif kind == "unannounced_format":
        data = base64.b64decode(got[0]["audio_event"]["audio_base_64"])
        assert data.startswith(b"RIFF")  # a WAV file where raw mu-law was announced
    if kind == "bad_base64":  # 1.1.0 types audio_base_64 as a plain string: check the payload itself
        with pytest.raises(ValueError):
            base64.b64decode(got[0]["audio_event"]["audio_base_64"], validate=True)
    elif kind not in ("non_json", "binary", "unannounced_format"):
        failures = 0
        for message in got:
            try:
                validate_server_message(message)
            except AssertionError:
                failures += 1
        assert failures >= 1, f"{kind} garbage should break the spec"
    assert not client.closed.is_set()  # garbage alone does not end the conversation
    await client.close()


async def test_unannounced_pcm_chunk_is_odd_length(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await agent.send_garbage("unannounced_format")
    [audio] = await client.wait_type("audio")
    assert len(base64.b64decode(audio["audio_event"]["audio_base_64"])) % 2 == 1
    await client.close()


async def test_huge_garbage_over_16_mib_breaks_a_16_mib_client(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    status, _ = await control(agent, action="garbage", kind="huge", size=17 * 1024 * 1024)
    assert status == 200
    await client.wait_closed()
    close_sent = client.ws.protocol.close_sent
    assert close_sent is not None and close_sent.code == 1009  # the client refused a frame over its 16 MiB limit


# --- recording over HTTP ---------------------------------------------------------------------------


async def test_http_conversations_and_received(make_agent: MakeAgent) -> None:
    agent = await make_agent(send_speed=50.0, ping_interval=0.2)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    samples = speech()
    await client.send_audio(samples)
    await client.wait_type("user_transcript")
    await client.wait_type("ping")
    await agent.wait_for(lambda: agent.latest.pongs_received >= 1, 5, "a pong")
    record = agent.latest

    status, _, body = await aget(f"{agent.http_url}/_fake/conversations")
    assert status == 200
    [summary] = json.loads(body)["conversations"]
    assert summary["id"] == record.id and summary["closed_at"] is None
    assert summary["received"]["user_audio_chunk"] == len(record.audio_chunk_times)
    assert summary["sent"]["conversation_initiation_metadata"] == 1
    assert summary["pongs_received"] >= 1 and summary["user_audio_seconds"] == pytest.approx(len(samples) / 16000)
    assert summary["transcripts"] == record.transcripts

    status, _, body = await aget(f"{agent.http_url}/_fake/received?conversation={record.id}")
    received = json.loads(body)
    assert base64.b64decode(received["audio_base64"]) == samples.astype("<i2").tobytes()
    assert received["audio_rate"] == 16000
    kinds = [m["kind"] for m in received["messages"]]
    assert kinds[0] == "conversation_initiation_client_data" and "user_audio_chunk" in kinds and "pong" in kinds
    for m in received["messages"]:
        validate_client_message(m["message"])

    status, _, body = await aget(f"{agent.http_url}/_fake/sent?conversation={record.id}")
    assert next(m["kind"] for m in json.loads(body)["messages"]) == "conversation_initiation_metadata"
    status, _, _ = await aget(f"{agent.http_url}/_fake/received?conversation=conv_nope")
    assert status == 404

    await client.close()
    await agent.wait_for_close(record)
    status, _, body = await aget(f"{agent.http_url}/_fake/conversations")
    [summary] = json.loads(body)["conversations"]
    assert (summary["close_code"], summary["closed_by"]) == (1000, "client") and summary["closed_at"] is not None


# --- robustness ---------------------------------------------------------------------------------------


async def test_bad_client_input_is_recorded_and_survived(make_agent: MakeAgent) -> None:
    agent = await make_agent(ping_interval=0.1)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    for message in (
        {"user_audio_chunk": "!!not base64!!"},
        {"user_audio_chunk": 12},
        {"user_audio_chunk": base64.b64encode(b"\x01\x02\x03").decode()},
        {"type": "pong", "event_id": "one"},
        {"type": "pong"},
        {"type": "user_message", "text": 5},
        {"type": "client_tool_result"},
        {"type": "teleport", "to": "mars"},
        {"no_type": True},
    ):
        await client.ws.send(json.dumps(message))
    pings_before = len(client.of("ping"))
    await client.wait_type("ping", pings_before + 2)  # still alive and pinging
    record = agent.latest
    await agent.wait_for(lambda: len(record.anomalies) >= 6, 5, "anomalies")
    text = " | ".join(record.anomalies)
    for needle in ("not valid base64", "not a string", "odd-length", "unknown message type 'teleport'"):
        assert needle in text
    assert record.stray_pongs[:2] == ["one", None]
    await client.close()


async def test_non_json_frame_closes_1008_when_strict(make_agent: MakeAgent) -> None:
    agent = await make_agent()
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.ws.send(" ")  # the "keep-alive" seen in the wild
    await client.wait_closed()
    [error] = client.of("error")
    assert (error["error_event"]["code"], error["error_event"]["error_type"]) == (1008, "invalid_message")
    assert client.ws.close_code == 1008
    record = await agent.wait_for_close(agent.latest)
    assert record.received[-1].kind == "<non_json>" and record.received[-1].raw == " "

    lenient = await make_agent(strict_input=False, ping_interval=0.1)
    client = await Client.connect(f"{lenient.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await client.ws.send(b"\x00binary")
    await client.ws.send("[1, 2]")
    await client.wait_type("ping", 2)
    assert not client.closed.is_set()
    kinds = [r.kind for r in lenient.latest.received if r.kind not in ("pong", "conversation_initiation_client_data")]
    assert kinds == ["<binary>", "<non_json>"]
    await client.close()


async def test_abrupt_disconnect_mid_turn_ends_cleanly(make_agent: MakeAgent, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pi_agent.fake_agent")
    agent = await make_agent(send_speed=1.0, ping_interval=0.1, tool_call="slow_tool")
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    await agent.agent_speak()
    await client.wait_type("audio")
    client.ws.transport.abort()  # no close frame
    record = await agent.wait_for_close(agent.latest)
    assert (record.close_code, record.closed_by) == (1006, "client")

    client = await Client.connect(f"{agent.ws_url}?agent_id=a")  # and while a tool call is pending
    await client.wait_type("conversation_initiation_metadata")
    await client.send_audio(speech())
    await client.wait_type("client_tool_call")
    client.ws.transport.abort()
    await agent.wait_for_close(agent.latest)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("opened" in r.getMessage() for r in caplog.records)
    assert any("closed by client: 1006" in r.getMessage() for r in caplog.records)


async def test_record_audio_off_keeps_counts_only(make_agent: MakeAgent) -> None:
    agent = await make_agent(record_audio=False, send_speed=50.0)
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    samples = speech()
    await client.send_audio(samples)
    await client.wait_type("user_transcript")
    record = agent.latest
    assert record.user_audio == bytearray() and record.user_audio_seconds == pytest.approx(len(samples) / 16000)
    assert all(r.message is None for r in record.received_of("user_audio_chunk"))
    await client.close()


@pytest.mark.slow
async def test_serve_runs_until_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    ready: asyncio.Future[FakeAgent] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(FakeAgentOptions(port=0), ready=ready.set_result))
    agent = await asyncio.wait_for(ready, 10)
    assert capsys.readouterr().out == f"fake agent listening on {agent.http_url}\n"
    client = await Client.connect(f"{agent.ws_url}?agent_id=a")
    await client.wait_type("conversation_initiation_metadata")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.wait_closed()
    assert client.ws.close_code == 1001  # going away
    assert (agent.latest.close_code, agent.latest.closed_by) == (1001, "server")


@pytest.mark.slow
def test_module_entry_point_prints_ready_line_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pi_agent.fake_agent", "--port", "0", "--output-format", "pcm_22050"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"fake agent listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        status, _, body = http_get(f"{match.group(1)}/_fake/conversations")
        assert status == 200 and json.loads(body) == {"conversations": []}
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
