"""The session against the fake agent on loopback: real WebSocket connections, real reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import serve

from pi_agent import protocol as p
from pi_agent.audio import FRAME_BYTES
from pi_agent.backoff import Backoff, Outcome
from pi_agent.config import SessionSettings
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from pi_agent.metrics import Metrics
from pi_agent.session import CloseInfo, Session, conversation_url, redact_url
from support_faults import Link, TcpProxy
from support_spec import validate_client_message

KEY = "sk_canary_session_0123456789"


class Recorder:
    """A SessionListener that remembers everything."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.audio: list[tuple[bytes, str, bool]] = []
        self.closed: list[CloseInfo] = []
        self.opened: list[p.ConversationMetadata] = []
        self.changed = asyncio.Event()

    def _note(self, name: str, value: Any) -> None:
        self.calls.append((name, value))
        self.changed.set()

    def on_connecting(self, attempt: int) -> None:
        self._note("connecting", attempt)

    def on_open(self, metadata: p.ConversationMetadata) -> None:
        self.opened.append(metadata)
        self._note("open", metadata)

    def on_audio(self, audio: bytes, fmt: str, new_turn: bool) -> None:
        self.audio.append((audio, fmt, new_turn))
        self._note("audio", len(audio))

    def on_interruption(self, event_id: int) -> None:
        self._note("interruption", event_id)

    def on_event(self, event: p.ServerEvent) -> None:
        self._note("event", event)

    def on_closed(self, info: CloseInfo) -> None:
        self.closed.append(info)
        self._note("closed", info)

    async def until(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out; calls: {[c[0] for c in self.calls][-30:]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.2))


class FastSleep:
    """Injected sleep: records each delay and waits only a little."""

    def __init__(self, scale: float = 0.0) -> None:
        self.delays: list[float] = []
        self.scale = scale

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(seconds * self.scale)


def make_session(url: str, listener: Recorder, *, api_key: str | None = None, sleep=None,
                 rng=lambda: 1.0, **settings: Any) -> Session:
    s = SessionSettings(**{"policy": "persistent", "backoff_initial": 1.0, "backoff_max": 8.0,
                           "backoff_reset_after": 30.0, "connect_timeout": 3.0, **settings})
    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    return Session(s, agent_id="agent_test", server_url=url, api_key=api_key, listener=listener,
                   metrics=Metrics(), encoder_factory=lambda fmt: (lambda b: b),
                   backoff=Backoff(s.backoff_initial, s.backoff_max, s.backoff_reset_after, rng), **kwargs)


@contextlib.asynccontextmanager
async def running(session: Session):
    task = asyncio.create_task(session.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SPEECH = None


def speech_frames() -> list[bytes]:
    """question.wav as 20 ms frames (16 kHz mono s16le), then 1 s of silence."""
    global SPEECH
    if SPEECH is None:
        import wave
        from importlib import resources
        with wave.open(str(resources.files("pi_agent") / "assets" / "question.wav"), "rb") as w:
            data = w.readframes(w.getnframes())
        data += bytes(16000 * 2)
        data = data[: len(data) // FRAME_BYTES * FRAME_BYTES]
        SPEECH = [data[i:i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]
    return SPEECH


def test_urls() -> None:
    assert conversation_url("https://api.elevenlabs.io", "a b").startswith(
        "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a+b&source=pi_agent&version=")
    assert conversation_url("http://127.0.0.1:8765/", "x").startswith("ws://127.0.0.1:8765/v1/convai/conversation?")
    red = redact_url("wss://h/v1/convai/conversation?agent_id=a&conversation_signature=SECRET&token=T2")
    assert "SECRET" not in red and "T2" not in red and "agent_id=a" in red


async def test_conversation_and_every_message_sent_validates_against_the_spec() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, ping_interval=0.2, tool_call="get_weather")) as agent:
        rec = Recorder()
        session = make_session(agent.http_url, rec, user_id="kiosk-7", dynamic_variables={"room": "hall"},
                               overrides={"agent": {"first_message": "Hi"}})
        async with running(session):
            await rec.until(lambda: rec.opened)
            for frame in speech_frames():
                session.send_audio(frame, speech=True)
                await asyncio.sleep(0.02)
            await rec.until(lambda: any(isinstance(v, p.ClientToolCall) for k, v in rec.calls if k == "event"))
            call = next(v for k, v in rec.calls if k == "event" and isinstance(v, p.ClientToolCall))
            session.send_message("client_tool_result", p.encode_tool_result(call.tool_call_id, "sunny"))
            session.send_message("contextual_update", p.encode_contextual_update("door opened"))
            session.send_message("user_message", p.encode_user_message("and tomorrow?"))
            session.send_message("user_activity", p.encode_user_activity())
            await agent.wait_for(lambda: agent.latest.tool_results and len(agent.latest.received_of("user_message")) == 1)
            await rec.until(lambda: rec.audio)
        record = agent.latest
        assert record.init["user_id"] == "kiosk-7"
        assert record.init["dynamic_variables"] == {"room": "hall"}
        assert record.query["source"] == "pi_agent"
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


async def test_reconnect_delays_double_to_the_cap_when_the_server_is_gone() -> None:
    rec, sleep = Recorder(), FastSleep()
    session = make_session(f"http://127.0.0.1:{free_port()}", rec, sleep=sleep)
    async with running(session):
        await rec.until(lambda: len(rec.closed) >= 7)
    assert sleep.delays[:6] == [1, 2, 4, 8, 8, 8]
    assert all(c.outcome is Outcome.RETRY and "cannot connect" in c.reason for c in rec.closed)


async def test_jitter_is_full_and_capped() -> None:
    import random
    rnd = random.Random(7)
    rec, sleep = Recorder(), FastSleep()
    session = make_session(f"http://127.0.0.1:{free_port()}", rec, sleep=sleep, rng=rnd.random)
    async with running(session):
        await rec.until(lambda: len(rec.closed) >= 9)
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(0 <= d <= c for d, c in zip(sleep.delays, ceilings))
    assert len(set(sleep.delays)) == len(sleep.delays)  # jittered, not fixed


async def _open_then_close(code: int, reason: str, closes: int) -> tuple[Recorder, FastSleep]:
    """A server that opens every conversation (metadata) and closes it at once with ``code``."""
    async def handler(ws) -> None:
        await ws.recv()  # the initiation message
        await ws.send(json.dumps({"type": "conversation_initiation_metadata",
                                  "conversation_initiation_metadata_event": {
                                      "conversation_id": "c", "agent_output_audio_format": "pcm_16000",
                                      "user_input_audio_format": "pcm_16000"}}))
        await ws.close(code, reason)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        rec, sleep = Recorder(), FastSleep()
        session = make_session(f"http://127.0.0.1:{port}", rec, sleep=sleep)
        async with running(session):
            await rec.until(lambda: len(rec.closed) >= closes)
    return rec, sleep


async def test_accept_then_drop_does_not_reset_the_backoff() -> None:
    rec, sleep = await _open_then_close(1011, "internal error", closes=6)
    assert len(rec.opened) >= 5
    assert sleep.delays[:5] == [1, 2, 4, 8, 8]


async def test_auth_failure_is_not_hammered() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key="the-right-key")) as agent:
        rec, sleep = Recorder(), FastSleep()
        session = make_session(agent.http_url, rec, api_key=KEY, sleep=sleep)
        async with running(session):
            await rec.until(lambda: len(rec.closed) >= 4)
        assert [c.outcome for c in rec.closed[:3]] == [Outcome.FATAL] * 3
        assert sleep.delays[:3] == [8, 8, 8]  # only at the cap
        assert "401" in rec.closed[0].reason and KEY not in rec.closed[0].reason
        assert not agent.conversations


async def test_handshake_rejection_401_is_fatal() -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        agent.reject_handshake(401, count=5)
        rec, sleep = Recorder(), FastSleep()
        session = make_session(agent.http_url, rec, sleep=sleep)
        async with running(session):
            await rec.until(lambda: rec.closed)
        assert rec.closed[0].outcome is Outcome.FATAL and "401" in rec.closed[0].reason


async def test_signed_url_is_fetched_for_every_connection() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=KEY)) as agent:
        rec, sleep = Recorder(), FastSleep()
        session = make_session(agent.http_url, rec, api_key=KEY, sleep=sleep)
        async with running(session):
            await rec.until(lambda: rec.opened)
            await agent.end_call()
            await rec.until(lambda: len(rec.opened) >= 2)
        assert len(agent.conversations) >= 2
        assert all("conversation_signature" in c.query for c in agent.conversations)


async def test_persistent_session_starts_a_new_conversation_when_the_server_ends_one() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, max_duration=0.5)) as agent:
        rec, sleep = Recorder(), FastSleep()
        session = make_session(agent.http_url, rec, sleep=sleep)
        async with running(session):
            await rec.until(lambda: len(rec.opened) >= 3)
        assert rec.closed[0].outcome is Outcome.ENDED
        assert "maximum duration" in rec.closed[0].reason
        ids = {m.conversation_id for m in rec.opened}
        assert len(ids) == len(rec.opened)  # each a new conversation


async def test_on_demand_opens_on_request_and_closes_when_idle() -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        rec = Recorder()
        session = make_session(agent.http_url, rec, policy="on_demand", idle_timeout=0.6)
        async with running(session):
            await asyncio.sleep(0.3)
            assert not agent.conversations  # nothing until asked
            session.request()
            await rec.until(lambda: rec.opened)
            await rec.until(lambda: rec.closed, timeout=5)
            assert rec.closed[0].outcome is Outcome.CLOSED and rec.closed[0].retry_in is None
            await asyncio.sleep(0.5)
            assert len(agent.conversations) == 1  # not reopened by itself
        assert agent.latest.close_code == 1000 and agent.latest.closed_by == "client"


async def test_on_demand_stops_retrying_once_nobody_waits_and_tries_again_on_request(caplog) -> None:
    port = free_port()  # nothing listens there: every attempt fails
    rec, sleep = Recorder(), FastSleep(scale=0.1)
    session = make_session(f"http://127.0.0.1:{port}", rec, sleep=sleep, policy="on_demand", idle_timeout=0.5)

    def attempts() -> int:
        return sum(1 for name, _ in rec.calls if name == "connecting")

    async with running(session):
        session.request()
        for _ in range(10):  # 0.2 s of speech that waits for the conversation
            session.send_audio(b"\x01\x00" * 320, speech=True)
        await rec.until(lambda: any(c.retry_in is None for c in rec.closed), timeout=10)
        *retried, gave_up = rec.closed
        assert retried and all(c.outcome is Outcome.RETRY and c.retry_in for c in retried)  # while fresh
        assert gave_up.outcome is Outcome.CLOSED and gave_up.retry_in is None
        assert "nobody has asked for a conversation for 0.5 s" in gave_up.reason
        assert "cannot connect" in gave_up.reason  # why it failed stays in the line
        assert "dropped 0.2 s of speech that waited for a conversation which could not be opened" in caplog.text
        assert not session.wanted
        tried = attempts()
        await asyncio.sleep(1.0)
        assert attempts() == tried  # quiet while nobody asks
        session.request()
        await rec.until(lambda: attempts() > tried)


async def test_speech_while_connecting_reaches_the_agent() -> None:
    port = free_port()
    rec, sleep = Recorder(), FastSleep(scale=0.1)
    session = make_session(f"http://127.0.0.1:{port}", rec, sleep=sleep, policy="on_demand")
    frames = speech_frames()[:150]  # 3 s of speech, spoken before the server is there
    async with running(session):
        session.request()
        await rec.until(lambda: rec.closed)  # first attempt failed: server not up yet
        for f in frames:
            session.send_audio(f, speech=True)
        async with FakeAgent(FakeAgentOptions(port=port)) as agent:
            await rec.until(lambda: rec.opened, timeout=10)
            await agent.wait_for(lambda: agent.latest.user_audio_samples >= len(frames) * 320)
            received = bytes(agent.latest.user_audio)
    assert received[: len(frames) * FRAME_BYTES] == b"".join(frames)


async def test_frames_spoken_across_the_opening_arrive_once_each_and_in_order() -> None:
    """The first frames wait in the prebuffer; a burst that comes as the conversation opens
    (a loop that fell behind delivers its frames at once) queues behind them; the rest go
    straight to the socket. The agent must get every frame once, in the order spoken."""
    frames = [np.full(FRAME_BYTES // 2, i + 1, dtype="<i2").tobytes() for i in range(150)]

    class BurstOnOpen(Recorder):
        def on_open(self, metadata: p.ConversationMetadata) -> None:
            super().on_open(metadata)
            for frame in frames[50:100]:  # the prebuffer is still queued, not yet sent
                session.send_audio(frame, speech=True)

    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        rec = BurstOnOpen()
        session = make_session(agent.http_url, rec)
        for frame in frames[:50]:  # spoken before the connection exists
            session.send_audio(frame, speech=True)
        async with running(session):
            await rec.until(lambda: rec.opened)
            for frame in frames[100:]:
                session.send_audio(frame, speech=True)
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
    early = [np.full(FRAME_BYTES // 2, i + 1, dtype="<i2").tobytes() for i in range(100)]  # 2 s
    live = [np.full(FRAME_BYTES // 2, 1000 + i, dtype="<i2").tobytes() for i in range(600)]  # 12 s
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        async with TcpProxy(agent.port, up=Link(rate=4500, window=8 * 1024), rcvbuf=8 * 1024) as proxy:
            rec = Recorder()
            # pings wait behind the backlog on a link this slow: no dead-peer verdict here
            session = make_session(proxy.url, rec, prebuffer=5.0, dead_peer_timeout=60)
            for frame in early:
                session.send_audio(frame, speech=True)
            async with running(session):
                await rec.until(lambda: rec.opened)
                for frame in live:
                    session.send_audio(frame, speech=False)
                    await asyncio.sleep(0.02)
                dropped = session._metrics.audio_dropped.labels("late")._value.get()
                arrived = len(agent.latest.user_audio) // FRAME_BYTES
                proxy.up.rate = None  # the link is back: what is still queued drains
                await agent.wait_for(lambda: np.any(
                    np.frombuffer(bytes(agent.latest.user_audio), dtype="<i2") == 1000 + len(live) - 1), 30)
                received = np.frombuffer(bytes(agent.latest.user_audio), dtype="<i2")
    assert len(rec.opened) == 1 and not rec.closed  # the one conversation survived the squeeze
    values = received[received > 0][:: FRAME_BYTES // 2]  # one value per frame, keep-alive aside
    assert list(values[: len(early)]) == list(range(1, len(early) + 1))  # all the early speech, first
    got_live = values[len(early):]
    assert np.all(np.diff(got_live) > 0)  # in order, none twice
    assert dropped > 0 and len(got_live) == len(live) - dropped  # dropped = what did not arrive
    assert got_live[-1] == 1000 + len(live) - 1  # the newest audio was kept, the oldest dropped
    # How far behind the user the agent was when the link came back: the daemon's 2 s, plus
    # what the socket buffers and the proxy held (about 2.7 s of audio here; 4.7 s in all when
    # measured, against 9.7 s when the allowance also counted the 5 s prebuffer).
    behind = (len(received) // (FRAME_BYTES // 2) - arrived) * 0.02
    assert behind < 2.0 + 4.5, behind


async def test_half_open_connection_is_detected_within_the_bound() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, ping_interval=30)) as agent:
        frozen = asyncio.Event()
        conns: list[asyncio.StreamWriter] = []

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                if frozen.is_set():
                    await asyncio.sleep(3600)  # black hole: no close, no data
                writer.write(data)
                await writer.drain()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", agent.port)
            conns.extend([writer, up_w])
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)

        proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        rec, sleep = Recorder(), FastSleep()
        session = make_session(f"http://127.0.0.1:{port}", rec, sleep=sleep, dead_peer_timeout=1.0)
        async with running(session):
            await rec.until(lambda: rec.opened)
            frozen.set()
            t0 = time.monotonic()
            await rec.until(lambda: rec.closed, timeout=10)
            detected = time.monotonic() - t0
        proxy.close()
        for w in conns:
            w.close()
    assert rec.closed[0].outcome is Outcome.RETRY
    assert detected < 1.0 + 2.5, detected  # bound + the close handshake timeout, generous


async def test_interrupted_turn_audio_is_not_delivered() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, send_speed=1.0)) as agent:
        rec = Recorder()
        session = make_session(agent.http_url, rec)
        async with running(session):
            await rec.until(lambda: rec.opened)
            turn_id = await agent.agent_speak("a long answer")
            await rec.until(lambda: rec.audio)
            for f in speech_frames()[20:80]:  # talk over the agent
                session.send_audio(f, speech=True)
                await asyncio.sleep(0.02)
            await rec.until(lambda: any(k == "interruption" for k, _ in rec.calls))
            await asyncio.sleep(0.5)
        idx = next(i for i, (k, _) in enumerate(rec.calls) if k == "interruption")
        assert rec.calls[idx][1] == turn_id
        # Nothing more of the interrupted turn: audio after the interruption (if any) is a new turn.
        later = rec.audio[sum(k == "audio" for k, _ in rec.calls[:idx]):]
        assert not later or later[0][2], "audio of the interrupted turn was delivered"
        assert agent.latest.turns[0].interrupted


async def test_garbage_from_the_server_is_skipped_and_the_conversation_continues() -> None:
    async with FakeAgent(FakeAgentOptions(port=0, ping_interval=0.2)) as agent:
        rec = Recorder()
        session = make_session(agent.http_url, rec)
        async with running(session):
            await rec.until(lambda: rec.opened)
            for kind in ("non_json", "binary", "wrong_types", "bad_base64", "unknown_type", "missing_fields", "huge"):
                await agent.send_garbage(kind)
            pongs = agent.latest.pongs_received
            await agent.wait_for(lambda: agent.latest.pongs_received >= pongs + 2)
            assert session.is_open
        assert not rec.closed or rec.closed[-1].outcome is Outcome.CLOSED


async def test_server_that_ends_every_conversation_at_once_is_backed_off() -> None:
    rec, sleep = await _open_then_close(1000, "bye", closes=5)
    assert all(c.outcome is Outcome.ENDED for c in rec.closed)
    assert sleep.delays[:4] == [1, 2, 4, 8]  # a normal end right after opening is no reason to loop


async def test_a_request_cuts_the_wait_after_a_normal_end_but_not_after_a_failure() -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        rec = Recorder()
        session = make_session(agent.http_url, rec, sleep=FastSleep(scale=1.0), backoff_initial=30.0,
                               backoff_max=30.0)
        async with running(session):
            await rec.until(lambda: rec.opened)
            await agent.end_call()
            await rec.until(lambda: rec.closed)
            session.request()  # the user speaks: no 30 s wait
            await rec.until(lambda: len(rec.opened) == 2, timeout=5)
