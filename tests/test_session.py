"""The engine in its I/O shell against the fake agent on loopback: real WebSocket
connections through :mod:`pi_agent.net.link`, real reconnects, real time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from pi_agent.audio import FRAME_BYTES
from pi_agent.audio.formats import decode_pcm
from pi_agent.engine.settings import EngineSettings
from pi_agent.engine import events as ev
from pi_agent.engine import protocol as p
from pi_agent.engine.backoff import Backoff, Outcome
from pi_agent.engine.conversation import Engine
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from pi_agent.net.session import Session
from pi_agent.net.signed_url import conversation_url, redact_url, url_for
from .support_daemon import QUESTION_WAV, free_port
from .support_faults import Link, TcpProxy
from .support_spec import validate_client_message
from .support_wait import wait_until

KEY = "sk_canary_session_0123456789"
FAST = {"backoff_initial": 0.05, "backoff_max": 0.4}  # delays 0.05, 0.1, 0.2, 0.4, 0.4, ... with rng=1


class Harness:
    """An engine and its session, recording every event; the test drives it like the controller."""

    def __init__(self, server_url: str, *, api_key: str | None = None, rng: Callable[[], float] = lambda: 1.0,
                 on_event: Callable[[Harness, ev.Event], None] | None = None, **settings: Any) -> None:
        s = EngineSettings(**{"policy": "persistent", "backoff_initial": 1.0, "backoff_max": 8.0,
                               "backoff_reset_after": 30.0, "connect_timeout": 3.0, **settings})
        self.engine = Engine(s, encoder_factory=lambda fmt: lambda pcm: pcm, decode_audio=decode_pcm,
                             backoff=Backoff(s.backoff_initial, s.backoff_max, s.backoff_reset_after, rng))
        self.session = Session(self.engine, url=lambda: url_for(server_url, "agent_test", api_key, s.connect_timeout),
                               on_event=self._note, connect_timeout=s.connect_timeout)
        self.events: list[ev.Event] = []
        self._hook = on_event
        self._changed = asyncio.Event()

    def _note(self, event: ev.Event) -> None:
        self.events.append(event)
        self._changed.set()
        if self._hook is not None:
            self._hook(self, event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def opened(self) -> list[ev.Opened]:
        return self.of(ev.Opened)

    @property
    def closed(self) -> list[ev.Closed]:
        return self.of(ev.Closed)

    def request(self) -> None:
        self.engine.request(time.monotonic())
        self.session.pump()

    def send_audio(self, frame: bytes, speech: bool = True) -> None:
        self.engine.send_audio(frame, speech, time.monotonic())
        self.session.pump()

    def send_message(self, kind: str, text: str) -> None:
        self.engine.send_message(kind, text, time.monotonic())
        self.session.pump()

    async def until(self, predicate: Callable[[], object], timeout: float = 10.0) -> None:
        await wait_until(predicate, timeout, "the condition", changed=self._changed, poll=0.2,
                         seen=lambda: f"events {[type(e).__name__ for e in self.events][-30:]}")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Harness]:
        task = asyncio.create_task(self.session.run())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def speech_frames() -> list[bytes]:
    """question.wav as 20 ms frames (16 kHz mono s16le), then 1 s of silence."""
    import wave
    with wave.open(str(QUESTION_WAV), "rb") as w:
        data = w.readframes(w.getnframes())
    data += bytes(16000 * 2)
    data = data[: len(data) // FRAME_BYTES * FRAME_BYTES]
    return [data[i:i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def numbered(count: int, start: int = 1) -> list[bytes]:
    """Frames whose every sample is the frame's number: order and loss can be read back."""
    return [np.full(FRAME_BYTES // 2, start + i, dtype="<i2").tobytes() for i in range(count)]


def test_urls() -> None:
    assert conversation_url("https://api.elevenlabs.io", "a b").startswith(
        "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a+b&source=unknown&version=pi-agent%2F")
    assert conversation_url("http://127.0.0.1:8765/", "x").startswith("ws://127.0.0.1:8765/v1/convai/conversation?")
    red = redact_url("wss://h/v1/convai/conversation?agent_id=a&conversation_signature=SECRET&token=T2")
    assert "SECRET" not in red and "T2" not in red and "agent_id=a" in red


@pytest.mark.slow
async def test_conversation_and_every_message_sent_validates_against_the_spec() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, ping_interval=0.2, tool_call="get_weather")) as agent:
        h = Harness(agent.http_url, user_id="kiosk-7", dynamic_variables={"room": "hall"},
                    overrides={"agent": {"first_message": "Hi"}})
        async with h.running():
            await h.until(lambda: h.opened)
            for frame in speech_frames():
                h.send_audio(frame)
                await asyncio.sleep(0.02)
            await h.until(lambda: h.of(ev.ToolCall))
            call = h.of(ev.ToolCall)[0]
            h.send_message("client_tool_result", p.encode_tool_result(call.tool_call_id, "sunny"))
            h.send_message("contextual_update", p.encode_contextual_update("door opened"))
            h.send_message("user_message", p.encode_user_message("and tomorrow?"))
            h.send_message("user_activity", p.encode_user_activity())
            await agent.wait_for(lambda: agent.latest.tool_results
                                 and len(agent.latest.received_of("user_message")) == 1)
            await h.until(lambda: h.of(ev.AgentAudio))
        record = agent.latest
        assert record.init["user_id"] == "kiosk-7"
        assert record.init["dynamic_variables"] == {"room": "hall"}
        assert record.query["source"] == "unknown" and record.query["version"].startswith("pi-agent/")
        assert record.pings_sent >= 2 and record.unanswered_pings <= 1  # the last may be in flight
        assert record.user_audio_seconds > 4.0
        kinds = set()
        for item in record.received:
            assert item.message is not None, f"non-JSON frame sent: {item.raw!r:.80}"
            validate_client_message(item.message)
            kinds.add(item.kind)
        assert {"conversation_initiation_client_data", "user_audio_chunk", "pong", "client_tool_result",
                "contextual_update", "user_message", "user_activity"} <= kinds, kinds
        assert not record.anomalies, record.anomalies


@pytest.mark.slow
async def test_reconnect_delays_double_to_the_cap_when_the_server_is_gone() -> None:
    h = Harness(f"http://127.0.0.1:{free_port()}", **FAST)
    async with h.running():
        await h.until(lambda: len(h.closed) >= 7)
    assert [c.retry_in for c in h.closed[:6]] == [0.05, 0.1, 0.2, 0.4, 0.4, 0.4]
    assert all(c.outcome is Outcome.RETRY and "cannot connect" in c.reason for c in h.closed)


async def test_jitter_is_full_and_capped() -> None:
    h = Harness(f"http://127.0.0.1:{free_port()}", rng=random.Random(7).random, **FAST)
    async with h.running():
        await h.until(lambda: len(h.closed) >= 9)
    delays = [c.retry_in or 0.0 for c in h.closed[:8]]
    assert all(0 <= d <= c for d, c in zip(delays, [0.05, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4], strict=False))
    assert len(set(delays)) == len(delays)  # jittered, not fixed


async def _open_then_close(code: int, reason: str, closes: int) -> Harness:
    """A server that opens every conversation (metadata) and closes it at once with ``code``."""
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # the initiation message
        await ws.send(json.dumps({"type": "conversation_initiation_metadata",
                                  "conversation_initiation_metadata_event": {
                                      "conversation_id": "c", "agent_output_audio_format": "pcm_16000",
                                      "user_input_audio_format": "pcm_16000"}}))
        await ws.close(code, reason)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        h = Harness(f"http://127.0.0.1:{port}", **FAST)
        async with h.running():
            await h.until(lambda: len(h.closed) >= closes)
    return h


@pytest.mark.slow
async def test_accept_then_drop_does_not_reset_the_backoff() -> None:
    h = await _open_then_close(1011, "internal error", closes=6)
    assert len(h.opened) >= 5
    assert [c.retry_in for c in h.closed[:5]] == [0.05, 0.1, 0.2, 0.4, 0.4]


@pytest.mark.slow
async def test_server_that_ends_every_conversation_at_once_is_backed_off() -> None:
    h = await _open_then_close(1000, "bye", closes=5)
    assert all(c.outcome is Outcome.ENDED for c in h.closed)
    # a normal end right after opening, with nothing exchanged, is no reason to loop
    assert [c.retry_in for c in h.closed[:4]] == [0.05, 0.1, 0.2, 0.4]


@pytest.mark.slow
async def test_agent_ended_conversations_after_an_exchange_are_followed_at_once() -> None:
    """A conversation that completed an exchange is healthy, however short: when the agent
    ends it, the next one opens within backoff_initial, every time."""
    question = speech_frames()[:200]
    async with FakeAgent(FakeAgentOptions(port=0, end_call_after=1, reply_seconds=0.4, send_speed=8.0)) as agent:
        h = Harness(agent.http_url, backoff_initial=0.3, backoff_max=8.0)
        async with h.running():
            for n in range(1, 6):
                await h.until(lambda n=n: len(h.opened) >= n)
                for frame in question:  # the user asks; the agent answers, then ends the call
                    h.send_audio(frame)
                    if h.closed and len(h.closed) >= n:
                        break
                    await asyncio.sleep(0.005)
                await h.until(lambda n=n: len(h.closed) >= n, timeout=15)
            await h.until(lambda: len(h.opened) >= 6)
    ended = h.closed[:5]
    assert all(c.outcome is Outcome.ENDED and c.reason == "the agent ended the call" for c in ended), ended
    assert all(c.retry_in is not None and c.retry_in <= 0.3 for c in ended), [c.retry_in for c in ended]


@pytest.mark.slow
async def test_auth_failure_is_not_hammered() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key="the-right-key")) as agent:
        h = Harness(agent.http_url, api_key=KEY, **FAST)
        async with h.running():
            await h.until(lambda: len(h.closed) >= 4)
        assert [c.outcome for c in h.closed[:3]] == [Outcome.FATAL] * 3
        assert [c.retry_in for c in h.closed[:3]] == [0.4] * 3  # only at the cap
        assert "401" in h.closed[0].reason and KEY not in h.closed[0].reason
        assert not agent.conversations


@pytest.mark.slow
async def test_handshake_rejection_401_is_fatal() -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        agent.reject_handshake(401, count=5)
        h = Harness(agent.http_url, **FAST)
        async with h.running():
            await h.until(lambda: h.closed)
        assert h.closed[0].outcome is Outcome.FATAL and "401" in h.closed[0].reason


@pytest.mark.slow
async def test_handshake_rejection_429_waits_for_retry_after() -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        agent.reject_handshake(429)  # answered with Retry-After: 1
        h = Harness(agent.http_url, **FAST)
        async with h.running():
            await h.until(lambda: h.opened)
        assert h.closed[0].outcome is Outcome.RETRY and h.closed[0].retry_in == 0.4  # 1 s, within the cap


@pytest.mark.slow
async def test_signed_url_is_fetched_for_every_connection() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=KEY)) as agent:
        h = Harness(agent.http_url, api_key=KEY, **FAST)
        async with h.running():
            await h.until(lambda: h.opened)
            await agent.end_call()
            await h.until(lambda: len(h.opened) >= 2)
        assert len(agent.conversations) >= 2
        assert all("conversation_signature" in c.query for c in agent.conversations)


@pytest.mark.slow
async def test_persistent_session_starts_a_new_conversation_when_the_server_ends_one() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, max_duration=0.5)) as agent:
        h = Harness(agent.http_url, **FAST)
        async with h.running():
            await h.until(lambda: len(h.opened) >= 3)
        assert h.closed[0].outcome is Outcome.ENDED
        assert "maximum duration" in h.closed[0].reason
        ids = {m.conversation_id for m in h.opened}
        assert len(ids) == len(h.opened)  # each a new conversation


@pytest.mark.slow
async def test_on_demand_opens_on_request_and_closes_when_idle() -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        h = Harness(agent.http_url, policy="on_demand", idle_timeout=0.6)
        async with h.running():
            await asyncio.sleep(0.3)
            assert not agent.conversations  # nothing until asked
            h.request()
            await h.until(lambda: h.opened)
            await h.until(lambda: h.closed, timeout=5)
            assert h.closed[0].outcome is Outcome.CLOSED and h.closed[0].retry_in is None
            await asyncio.sleep(0.5)
            assert len(agent.conversations) == 1  # not reopened by itself
        assert agent.latest.close_code == 1000 and agent.latest.closed_by == "client"


@pytest.mark.slow
async def test_on_demand_stops_retrying_once_nobody_waits_and_tries_again_on_request() -> None:
    h = Harness(f"http://127.0.0.1:{free_port()}", policy="on_demand", idle_timeout=0.5, **FAST)

    def attempts() -> int:
        return len(h.of(ev.Connecting))

    async with h.running():
        h.request()
        for frame in numbered(10):  # 0.2 s of speech that waits for the conversation
            h.send_audio(frame)
        await h.until(lambda: any(c.retry_in is None for c in h.closed), timeout=10)
        *retried, gave_up = h.closed
        assert retried and all(c.outcome is Outcome.RETRY and c.retry_in for c in retried)  # while fresh
        assert gave_up.outcome is Outcome.CLOSED and gave_up.retry_in is None
        assert "nobody has asked for a conversation for 0.5 s" in gave_up.reason
        assert "cannot connect" in gave_up.reason  # why it failed stays in the line
        notices = [n.text for n in h.of(ev.Notice)]
        assert any("dropped 0.2 s of speech that waited for a conversation which could not be opened" in t
                   for t in notices), notices
        assert not h.engine.wanted
        tried = attempts()
        await asyncio.sleep(1.0)
        assert attempts() == tried  # quiet while nobody asks
        h.request()
        await h.until(lambda: attempts() > tried)


@pytest.mark.slow
async def test_speech_while_connecting_reaches_the_agent() -> None:
    port = free_port()
    h = Harness(f"http://127.0.0.1:{port}", policy="on_demand", **FAST)
    frames = speech_frames()[:150]  # 3 s of speech, spoken before the server is there
    async with h.running():
        h.request()
        await h.until(lambda: h.closed)  # first attempt failed: server not up yet
        for f in frames:
            h.send_audio(f)
        async with FakeAgent(FakeAgentOptions(port=port)) as agent:
            await h.until(lambda: h.opened, timeout=10)
            await agent.wait_for(lambda: agent.latest.user_audio_samples >= len(frames) * 320)
            received = bytes(agent.latest.user_audio)
    assert received[: len(frames) * FRAME_BYTES] == b"".join(frames)


@pytest.mark.slow
async def test_frames_spoken_across_the_opening_arrive_once_each_and_in_order() -> None:
    """The first frames wait in the pre-buffer; a burst that comes as the conversation opens
    (a loop that fell behind delivers its frames at once) queues behind them; the rest go
    straight to the socket. The agent must get every frame once, in the order spoken."""
    frames = numbered(150)

    def burst_on_open(h: Harness, event: ev.Event) -> None:
        if isinstance(event, ev.Opened):
            for frame in frames[50:100]:
                h.send_audio(frame)

    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        h = Harness(agent.http_url, on_event=burst_on_open)
        for frame in frames[:50]:  # spoken before the connection exists
            h.send_audio(frame)
        async with h.running():
            await h.until(lambda: h.opened)
            for frame in frames[100:]:
                h.send_audio(frame)
                await asyncio.sleep(0.02)
            await agent.wait_for(lambda: agent.latest.user_audio_samples >= len(frames) * FRAME_BYTES // 2)
            received = np.frombuffer(bytes(agent.latest.user_audio), dtype="<i2")
    values = received[received > 0]  # keep-alive silence aside, the frames' own values
    assert np.array_equal(values, np.repeat(np.arange(1, len(frames) + 1), FRAME_BYTES // 2))


@pytest.mark.slow
async def test_on_a_slow_link_late_live_audio_is_dropped_but_speech_kept_from_before_the_opening_is_not() -> None:
    """The link carries a tenth of the audio. Live audio that falls more than ~2 s behind
    is dropped (oldest first, counted); the speech kept from before the conversation
    opened is the start of the user's turn and all of it arrives."""
    early = numbered(100)  # 2 s
    live = numbered(600, start=1000)  # 12 s
    async with (FakeAgent(FakeAgentOptions(port=0)) as agent,
                TcpProxy(agent.port, up=Link(rate=4500, window=8 * 1024), rcvbuf=8 * 1024) as proxy):
        # pings wait behind the backlog on a link this slow: no dead-peer verdict here
        h = Harness(proxy.url, prebuffer=5.0, dead_peer_timeout=60)
        for frame in early:
            h.send_audio(frame)
        async with h.running():
            await h.until(lambda: h.opened)
            for frame in live:
                h.send_audio(frame, speech=False)
                await asyncio.sleep(0.02)
            dropped = h.engine.outbox.dropped["late"]
            arrived = len(agent.latest.user_audio) // FRAME_BYTES
            proxy.up.rate = None  # the link is back: what is still queued drains
            await agent.wait_for(lambda: np.any(
                np.frombuffer(bytes(agent.latest.user_audio), dtype="<i2") == 1000 + len(live) - 1), 30)
            received = np.frombuffer(bytes(agent.latest.user_audio), dtype="<i2")
            assert len(h.opened) == 1 and not h.closed  # the one conversation survived the squeeze
    values = received[received > 0][:: FRAME_BYTES // 2]  # one value per frame, keep-alive aside
    assert list(values[: len(early)]) == list(range(1, len(early) + 1))  # all the early speech, first
    got_live = values[len(early):]
    assert np.all(np.diff(got_live) > 0)  # in order, none twice
    assert dropped > 0 and len(got_live) == len(live) - dropped  # dropped = what did not arrive
    assert got_live[-1] == 1000 + len(live) - 1  # the newest audio was kept, the oldest dropped
    # How far behind the user the agent was when the link came back: the daemon's 2 s, plus
    # what the socket buffers and the proxy held.
    behind = (len(received) // (FRAME_BYTES // 2) - arrived) * 0.02
    assert behind < 2.0 + 4.5, behind


@pytest.mark.slow
@pytest.mark.parametrize("streaming", [False, True], ids=["quiet", "streaming"])
async def test_half_open_connection_is_dropped_within_the_dead_peer_timeout(streaming: bool) -> None:
    """The peer stops reading and writing without closing. Found by what is *received*
    (nothing, for dead_peer_timeout), so a send buffer that fills up cannot hide it: also
    while the mic streams at full rate into the frozen connection."""
    async with FakeAgent(FakeAgentOptions(port=0, ping_interval=30)) as agent, TcpProxy(agent.port) as proxy:
        h = Harness(proxy.url, dead_peer_timeout=1.5, **FAST)
        async with h.running():
            await h.until(lambda: h.opened)
            proxy.freeze()
            t0 = time.monotonic()
            frames = numbered(50) * 10
            while not h.closed and time.monotonic() - t0 < 10:
                if streaming:
                    for frame in frames[:5]:  # faster than real time: the buffers fill at once
                        h.send_audio(frame, speech=False)
                await asyncio.sleep(0.02)
            detected = time.monotonic() - t0
            await h.until(lambda: len(h.opened) >= 2)  # and a new conversation opens
    closed = h.closed[0]
    assert closed.outcome is Outcome.RETRY and "stopped answering" in closed.reason, closed
    assert detected < 1.5 + 0.5, detected
    assert len(h.engine.outbox.live) <= h.engine.outbox.live.maxlen  # what waited stayed bounded


@pytest.mark.slow
async def test_interrupted_turn_audio_is_not_delivered() -> None:
    """The interruption is numbered newer than the turn it cuts (as the service does), and
    chunks of that turn still in flight follow it with the turn's own, older id."""
    async with FakeAgent(FakeAgentOptions(port=0, send_speed=1.0, stale_chunks=3)) as agent:
        h = Harness(agent.http_url)
        async with h.running():
            await h.until(lambda: h.opened)
            turn_id = await agent.agent_speak("a long answer")
            await h.until(lambda: h.of(ev.AgentAudio))
            for f in speech_frames()[20:80]:  # talk over the agent
                h.send_audio(f)
                await asyncio.sleep(0.02)
            await h.until(lambda: h.of(ev.Interrupted))
            await asyncio.sleep(0.5)
        idx = next(n for n, e in enumerate(h.events) if isinstance(e, ev.Interrupted))
        turn = agent.latest.turns[0]
        assert turn.interrupted and turn.event_id == turn_id
        assert turn.interruption_id is not None and turn.interruption_id > turn_id
        assert h.events[idx] == ev.Interrupted(turn.interruption_id)
        assert len(agent.latest.stale_audio) == 3
        # Nothing more of the interrupted turn: audio after the interruption (if any) is a new turn.
        later = [e for e in h.events[idx:] if isinstance(e, ev.AgentAudio)]
        assert not later or later[0].new_turn, "audio of the interrupted turn was delivered"
        assert h.engine.stats.audio_dropped["interrupted"] == 3


@pytest.mark.slow
async def test_garbage_from_the_server_is_skipped_and_the_conversation_continues() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, ping_interval=0.2)) as agent:
        h = Harness(agent.http_url)
        async with h.running():
            await h.until(lambda: h.opened)
            for kind in ("non_json", "binary", "wrong_types", "bad_base64", "unknown_type", "missing_fields", "huge"):
                await agent.send_garbage(kind)
            pongs = agent.latest.pongs_received
            await agent.wait_for(lambda: agent.latest.pongs_received >= pongs + 2)
            assert h.engine.is_open and not h.closed
        assert h.engine.stats.protocol_errors >= 5


@pytest.mark.slow
async def test_a_request_cuts_the_wait_after_a_normal_end_but_not_after_a_failure() -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        h = Harness(agent.http_url, backoff_initial=30.0, backoff_max=30.0)
        async with h.running():
            await h.until(lambda: h.opened)
            await agent.end_call()
            await h.until(lambda: h.closed)
            h.request()  # the user speaks: no 30 s wait
            await h.until(lambda: len(h.opened) == 2, timeout=5)
            await agent.close_conversation(1011, "internal error")
            await h.until(lambda: len(h.closed) == 2)
            h.request()  # after a failure the wait stands: no hammering
            await asyncio.sleep(1.0)
            assert len(h.opened) == 2
