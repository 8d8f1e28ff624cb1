"""The conversation engine, fed frames and time: no sockets, no clock, no sleeping.

Like websockets' own protocol tests: every case builds an engine, tells it what the
shell saw (a connection opened, a frame arrived, time passed) and checks what it hands
back (events, actions, text frames, the next deadline).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_agent.audio.formats import decode_pcm
from pi_agent.engine.settings import EngineSettings
from pi_agent.engine import events as ev
from pi_agent.engine.backoff import Backoff, Outcome
from pi_agent.engine.conversation import KEEPALIVE_AFTER, Engine
from pi_agent.engine.events import Phase
from .support_spec import validate_client_message

FRAME = b"\x01\x00" * 320


def make(**settings: Any) -> Engine:
    s = EngineSettings(**{"policy": "persistent", "backoff_initial": 1.0, "backoff_max": 8.0,
                           "backoff_reset_after": 30.0, "dead_peer_timeout": 20.0, "connect_timeout": 10.0,
                           "idle_timeout": 30.0, **settings})
    return Engine(s, encoder_factory=lambda fmt: lambda pcm: pcm, decode_audio=decode_pcm,
                  backoff=Backoff(s.backoff_initial, s.backoff_max, s.backoff_reset_after, lambda: 1.0))


def metadata(conversation_id: str = "c1", out: str = "pcm_16000", inp: str = "pcm_16000") -> str:
    return json.dumps({"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
        "conversation_id": conversation_id, "agent_output_audio_format": out, "user_input_audio_format": inp}})


def audio(event_id: int, pcm: bytes = FRAME) -> str:
    return json.dumps({"type": "audio", "audio_event": {"audio_base_64": base64.b64encode(pcm).decode(),
                                                         "event_id": event_id}})


def msg(kind: str, key: str, **payload: Any) -> str:
    return json.dumps({"type": kind, key: payload})


def opened(engine: Engine, now: float = 0.0, conversation_id: str = "c1") -> Engine:
    """Drive ``engine`` to an open conversation at ``now``; drain what it said on the way."""
    engine.request(now)
    engine.tick(now)
    assert ev.Connect() in engine.actions()
    engine.connection_open(now)
    engine.receive(metadata(conversation_id), now)
    engine.data_to_send(now)
    engine.events()
    return engine


def sent(engine: Engine, now: float) -> list[dict[str, Any]]:
    return [json.loads(t) for t in engine.data_to_send(now)]


def audio_sent(engine: Engine, now: float) -> list[bytes]:
    return [base64.b64decode(m["user_audio_chunk"]) for m in sent(engine, now) if "user_audio_chunk" in m]


# --- opening --------------------------------------------------------------------------------


def test_persistent_connects_at_once_on_demand_waits_to_be_asked() -> None:
    persistent = make()
    persistent.tick(0.0)
    assert persistent.actions() == [ev.Connect()] and persistent.events() == [ev.Connecting(1)]
    on_demand = make(policy="on_demand")
    on_demand.tick(0.0)
    assert on_demand.actions() == [] and on_demand.next_deadline() is None
    on_demand.request(5.0)
    assert on_demand.next_deadline() == 5.0
    on_demand.tick(5.0)
    assert on_demand.actions() == [ev.Connect()]


def test_initiation_goes_first_and_messages_wait_for_the_metadata() -> None:
    e = make(user_id="kiosk", dynamic_variables={"room": "hall"})
    e.tick(0.0)
    e.actions()
    e.send_message("contextual_update", '{"type":"contextual_update","text":"hi"}', 0.0)
    e.connection_open(0.1)
    first = sent(e, 0.1)
    assert [m["type"] for m in first] == ["conversation_initiation_client_data"]
    assert first[0]["user_id"] == "kiosk" and first[0]["dynamic_variables"] == {"room": "hall"}
    validate_client_message(first[0])
    e.receive(msg("ping", "ping_event", event_id=1, ping_ms=None), 0.2)
    assert sent(e, 0.2) == [{"type": "pong", "event_id": 1}]  # pongs before the metadata, nothing else
    e.receive(metadata(), 0.3)
    assert sent(e, 0.3) == [{"type": "contextual_update", "text": "hi"}]
    assert ev.Opened("c1", "pcm_16000", "pcm_16000") in e.events()


def test_speech_kept_while_connecting_goes_first_then_live_audio_in_order() -> None:
    e = make(policy="on_demand", prebuffer=1.0)
    e.request(0.0)
    frames = [bytes([i]) * 640 for i in range(1, 81)]
    for f in frames[:60]:  # 1.2 s of speech: only the last 1.0 s is kept
        e.send_audio(f, True, 0.0)
    e.send_audio(b"\x00" * 640, False, 0.0)  # not speech: not kept
    e.tick(0.0)
    e.connection_open(0.1)
    e.receive(metadata(), 0.2)
    for f in frames[60:]:
        e.send_audio(f, True, 0.3)
    got = audio_sent(e, 0.3)
    assert got == frames[10:]  # the oldest 0.2 s did not fit in the pre-buffer
    assert e.outbox.dropped["prebuffer_full"] == 10
    assert any(isinstance(n, ev.Notice) and "sending 1.0 s of speech" in n.text for n in e.events())


def test_no_metadata_within_the_connect_timeout_closes_and_retries() -> None:
    e = make()
    e.tick(0.0)
    e.actions()
    e.connection_open(0.0)
    assert e.next_deadline() == pytest.approx(20.0 / 3)  # a keepalive ping comes first
    e.heard(9.0)
    e.tick(10.0)
    assert ev.Close(1000, "no metadata") in e.actions()
    e.connection_closed(10.1, code=1000)
    closed = e.events()[-1]
    assert isinstance(closed, ev.Closed) and closed.outcome is Outcome.RETRY
    assert closed.reason == "no conversation metadata within 10 s" and closed.retry_in == 1.0


# --- server messages ------------------------------------------------------------------------


def test_pings_are_answered_and_the_pong_validates() -> None:
    e = opened(make())
    e.receive(msg("ping", "ping_event", event_id=7, ping_ms=42), 1.0)
    [pong] = sent(e, 1.0)
    assert pong == {"type": "pong", "event_id": 7}
    validate_client_message(pong)
    assert e.stats.ping_ms == 42


def test_interrupted_audio_is_dropped_and_later_turns_play() -> None:
    """The service numbers an interruption newer than the reply it cuts off: chunks of that
    reply still in flight (older ids) are dropped, the next reply plays."""
    e = opened(make())
    e.receive(audio(1), 1.0)
    e.receive(audio(1), 1.1)
    assert [a.new_turn for a in e.events() if isinstance(a, ev.AgentAudio)] == [True, False]
    e.receive(msg("interruption", "interruption_event", event_id=2), 1.2)
    e.receive(audio(1), 1.3)  # late audio of the interrupted turn
    e.receive(audio(3), 1.4)
    events = e.events()
    assert events[0] == ev.Interrupted(2)
    assert [(a.new_turn, a.pcm) for a in events if isinstance(a, ev.AgentAudio)] == [(True, FRAME)]
    assert e.stats.audio_dropped["interrupted"] == 1


def test_audio_carrying_the_interruptions_own_id_plays() -> None:
    """Text input: the service sends an interruption whose id the reply's audio then carries
    (elevenlabs-python #829). The official JavaScript client plays it; so do we."""
    e = opened(make())
    e.receive(audio(3), 1.0)
    e.receive(msg("interruption", "interruption_event", event_id=5), 1.1)
    e.receive(audio(3), 1.2)  # stale
    e.receive(audio(5), 1.3)
    e.receive(audio(5), 1.4)
    played = [a for a in e.events() if isinstance(a, ev.AgentAudio)]
    assert [a.new_turn for a in played] == [True, True, False]
    assert e.stats.audio_dropped["interrupted"] == 1


def test_a_local_interrupt_drops_the_rest_of_the_current_turn() -> None:
    e = opened(make())
    e.receive(audio(4), 1.0)
    e.interrupt_locally()
    e.receive(audio(4), 1.1)
    e.receive(msg("interruption", "interruption_event", event_id=4), 1.15)  # the server agrees late
    e.receive(audio(4), 1.18)
    e.receive(audio(5), 1.2)
    assert [a.new_turn for a in e.events() if isinstance(a, ev.AgentAudio)] == [True, True]
    assert e.stats.audio_dropped["interrupted"] == 2


def test_a_new_conversation_starts_a_new_interruption_filter() -> None:
    e = opened(make())
    e.receive(msg("interruption", "interruption_event", event_id=50), 1.0)
    e.connection_closed(2.0, code=1000)
    e.tick(3.0)
    e.connection_open(3.0)
    e.receive(metadata("c2"), 3.1)
    e.events()
    e.receive(audio(1), 3.2)
    assert any(isinstance(a, ev.AgentAudio) for a in e.events())


def test_audio_is_decoded_in_the_announced_format() -> None:
    e = make()
    e.request(0.0)
    e.tick(0.0)
    e.connection_open(0.0)
    e.receive(metadata(out="ulaw_8000"), 0.1)
    e.events()
    e.receive(audio(1, b"\xff" * 160), 0.2)  # 20 ms of mu-law silence
    [chunk] = [a for a in e.events() if isinstance(a, ev.AgentAudio)]
    assert chunk.rate == 8000 and chunk.pcm == b"\x00\x00" * 160


@pytest.mark.parametrize("frame", [
    "not json", b"\x00binary", json.dumps([1, 2]), msg("audio", "audio_event", audio_base_64="!!", event_id=1),
    msg("ping", "ping_event", event_id="x"), json.dumps({"type": "audio"}),
])
def test_a_malformed_frame_is_counted_noticed_and_skipped(frame: str | bytes) -> None:
    e = opened(make())
    e.receive(frame, 1.0)
    [notice] = e.events()
    assert isinstance(notice, ev.Notice) and notice.level == "warning" and "skipped" in notice.text
    assert e.stats.protocol_errors == 1 and e.is_open
    e.receive(audio(1), 1.1)
    assert any(isinstance(a, ev.AgentAudio) for a in e.events())  # the conversation goes on


def test_unknown_types_are_counted_not_errors() -> None:
    e = opened(make())
    e.receive(json.dumps({"type": "some_future_event", "x": 1}), 1.0)
    e.receive(msg("vad_score", "vad_score_event", vad_score=0.5), 1.0)
    assert e.stats.protocol_errors == 0
    assert e.stats.messages_in["Unknown"] == 1 and e.stats.messages_in["VadScore"] == 1
    assert [n.level for n in e.events()] == ["debug"]


def test_audio_before_the_metadata_is_dropped() -> None:
    e = make()
    e.tick(0.0)
    e.connection_open(0.0)
    e.receive(audio(1), 0.1)
    assert e.stats.audio_dropped["before_metadata"] == 1
    assert not any(isinstance(a, ev.AgentAudio) for a in e.events())


# --- dead peers, keepalive, idle ---------------------------------------------------------------


def test_a_ping_goes_out_after_a_third_of_the_timeout_of_silence_and_the_peer_is_dropped_after_all_of_it() -> None:
    e = opened(make(dead_peer_timeout=9.0))
    e.tick(2.9)
    assert ev.Ping() not in e.actions()
    e.tick(3.0)
    assert e.actions() == [ev.Ping()]
    e.heard(4.0)  # the pong: alive
    e.tick(8.9)
    assert ev.Abort() not in e.actions()
    e.tick(13.0)
    assert e.actions() == [ev.Abort()]
    e.connection_closed(13.0)
    closed = e.events()[-1]
    assert isinstance(closed, ev.Closed) and closed.outcome is Outcome.RETRY
    assert closed.reason == "the server stopped answering (nothing received for 9 s)"


def test_a_full_send_buffer_cannot_hide_a_dead_peer() -> None:
    """The transport is paused (nothing can be written) and the mic streams on: the dead-peer
    clock counts only what is received, and what waits stays bounded."""
    e = opened(make(dead_peer_timeout=6.0))
    e.pause_writing()
    t = 0.0
    while t < 6.1:
        e.send_audio(FRAME, False, t)
        assert e.data_to_send(t) == []
        e.tick(t)
        t += 0.02
    assert ev.Abort() in e.actions()
    assert len(e.outbox.live) == e.outbox.live.maxlen == 100  # 2 s of live audio, no more
    assert e.outbox.dropped["late"] > 0


def test_keepalive_silence_when_nothing_was_sent() -> None:
    e = opened(make())
    e.send_audio(FRAME, False, 1.0)
    assert len(audio_sent(e, 1.0)) == 1
    assert e.next_deadline() == pytest.approx(1.0 + KEEPALIVE_AFTER)
    e.tick(1.0 + KEEPALIVE_AFTER)
    [silence] = audio_sent(e, 1.5)
    assert silence == bytes(len(silence)) and len(silence) == 3200  # 100 ms at 16 kHz


def test_on_demand_is_not_idle_while_the_agent_answers_in_words() -> None:
    """A reply whose words stream for longer than idle_timeout before its voice keeps the
    conversation open; a ping does not."""
    e = opened(make(policy="on_demand", idle_timeout=5.0))
    e.send_audio(FRAME, True, 1.0)
    e.receive(msg("user_transcript", "user_transcription_event", user_transcript="hello", event_id=1), 2.0)
    for n in range(8):
        e.receive(msg("agent_chat_response_part", "text_response_part", text="word ", type="delta",
                      event_id=2), 3.0 + n)
    e.receive(msg("ping", "ping_event", event_id=3), 10.5)
    e.tick(14.9)
    assert ev.Close(1000, "idle") not in e.actions()  # the last words came at 10.0
    e.tick(15.0)
    assert e.actions() == [ev.Close(1000, "idle")]


def test_on_demand_closes_when_idle_and_does_not_reopen() -> None:
    e = opened(make(policy="on_demand", idle_timeout=5.0))
    e.send_audio(FRAME, True, 1.0)
    e.tick(5.9)
    assert ev.Close(1000, "idle") not in e.actions()
    e.tick(6.0)
    assert e.actions() == [ev.Close(1000, "idle")]
    e.connection_closed(6.1, code=1000)
    closed = e.events()[-1]
    assert isinstance(closed, ev.Closed) and closed.outcome is Outcome.CLOSED and closed.retry_in is None
    assert e.phase is Phase.IDLE and e.next_deadline() is None


def test_an_unanswered_close_is_dropped() -> None:
    e = opened(make(dead_peer_timeout=3.0))
    e.shutdown(1.0)
    assert e.actions() == [ev.Close(1000, "shutdown")]
    assert e.next_deadline() == pytest.approx(2.0)
    e.tick(2.0)
    assert e.actions() == [ev.Abort()]


def test_the_servers_close_frame_stops_sending_and_keeps_speech_for_the_next_conversation() -> None:
    e = opened(make())
    e.pause_writing()
    e.send_audio(b"\x01\x00" * 320, True, 1.0)  # queued, never written
    e.closing(1.0)  # the server's close frame arrived
    e.send_audio(b"\x02\x00" * 320, True, 1.02)  # spoken while the connection closes
    e.resume_writing()
    assert e.data_to_send(1.02) == []
    e.connection_closed(1.1, code=1000)
    e.tick(2.2)
    e.connection_open(2.2)
    e.receive(metadata("c2"), 2.3)
    assert audio_sent(e, 2.3) == [b"\x01\x00" * 320, b"\x02\x00" * 320]


# --- the reconnect decision -----------------------------------------------------------------


def closes(e: Engine) -> list[ev.Closed]:
    return [c for c in e.events() if isinstance(c, ev.Closed)]


def test_failures_back_off_and_a_healthy_exchange_resets() -> None:
    e = make()
    delays = []
    now = 0.0
    for _ in range(5):
        e.tick(now)
        e.actions()
        e.connect_failed(Outcome.RETRY, "cannot connect: refused", now)
        [closed] = closes(e)
        delays.append(closed.retry_in)
        now += closed.retry_in or 0.0
    assert delays == [1, 2, 4, 8, 8]
    e.tick(now)
    e.connection_open(now)
    e.receive(metadata(), now)
    e.send_audio(FRAME, True, now)
    e.data_to_send(now)  # the user's speech went out
    e.receive(msg("agent_response", "agent_response_event", agent_response="hi"), now + 1)
    e.receive(msg("agent_tool_response", "agent_tool_response", tool_name="end_call", tool_call_id="t",
                  tool_type="system", is_error=False), now + 2)
    e.connection_closed(now + 2, code=1000)
    [closed] = closes(e)
    assert closed.outcome is Outcome.ENDED and closed.reason == "the agent ended the call"
    assert closed.retry_in == 1.0  # healthy, however short: back to backoff_initial


def test_a_conversation_that_ends_before_anything_was_exchanged_grows_the_backoff() -> None:
    e = make()
    now, delays = 0.0, []
    for _ in range(4):
        e.tick(now)
        e.actions()
        e.connection_open(now)
        e.receive(metadata(), now)
        e.receive(audio(1), now)  # a greeting is not an exchange
        e.connection_closed(now + 1, code=1000)
        [closed] = closes(e)
        delays.append(closed.retry_in)
        now += 1 + (closed.retry_in or 0)
    assert delays == [1, 2, 4, 8]


def test_a_long_conversation_is_healthy_too() -> None:
    e = make()
    e.tick(0.0)
    e.actions()
    e.connect_failed(Outcome.RETRY, "refused", 0.0)
    e.events()
    e.tick(1.0)
    e.connection_open(1.0)
    e.receive(metadata(), 1.0)
    e.heard(30.0)
    e.connection_closed(31.0, code=1011)
    [closed] = closes(e)
    assert closed.outcome is Outcome.RETRY and closed.retry_in == 1.0  # lasted backoff_reset_after


def test_fatal_waits_the_cap_and_retry_after_is_honoured_within_it() -> None:
    e = make()
    e.tick(0.0)
    e.actions()
    e.connect_failed(Outcome.FATAL, "HTTP 401", 0.0)
    assert closes(e)[0].retry_in == 8.0
    e.tick(8.0)
    e.actions()
    e.connect_failed(Outcome.RETRY, "HTTP 429", 8.0, retry_after=5.0)
    assert closes(e)[0].retry_in == 5.0
    e.tick(13.0)
    e.actions()
    e.connect_failed(Outcome.RETRY, "HTTP 429", 13.0, retry_after=3600.0)
    assert closes(e)[0].retry_in == 8.0


def test_a_request_cuts_the_wait_after_a_normal_end_only() -> None:
    e = opened(make(backoff_initial=30.0, backoff_max=30.0))
    e.connection_closed(1.0, code=1000)
    closes(e)
    e.request(2.0)
    assert e.next_deadline() == 2.0
    e.tick(2.0)
    e.actions()
    e.connect_failed(Outcome.RETRY, "refused", 2.0)
    [closed] = closes(e)
    e.request(3.0)
    assert e.next_deadline() == pytest.approx(2.0 + (closed.retry_in or 0))


def test_on_demand_gives_up_when_nobody_asks_and_drops_what_waited() -> None:
    e = make(policy="on_demand", idle_timeout=5.0)
    e.request(0.0)
    for _ in range(10):
        e.send_audio(FRAME, True, 0.0)
    e.send_message("user_message", '{"type":"user_message","text":"hi"}', 0.0)
    now = 0.0
    while True:
        e.tick(now)
        e.actions()
        e.connect_failed(Outcome.RETRY, "cannot connect: refused", now)
        [closed] = closes(e)
        if closed.retry_in is None:
            break
        now += closed.retry_in
    assert now > 5.0 and closed.outcome is Outcome.CLOSED
    assert "nobody has asked for a conversation for 5 s" in closed.reason
    assert len(e.outbox) == 0 and e.stats.audio_dropped["gave_up"] == 10
    e.request(now + 10)
    e.tick(now + 10)
    assert e.actions() == [ev.Connect()]


# --- bounds -------------------------------------------------------------------------------------


def test_messages_waiting_for_a_conversation_are_bounded_oldest_dropped_noticed_once() -> None:
    e = make(policy="on_demand")
    text = "x" * 60_000
    for n in range(2000):
        e.send_message("contextual_update", json.dumps({"type": "contextual_update", "text": f"{n} {text}"}), 0.0)
    assert sum(len(m.text) for m in e.outbox.messages) <= 512 * 1024
    assert e.outbox.dropped_messages["contextual_update"] == 2000 - len(e.outbox.messages)
    assert [n.text[:30] for n in e.events() if isinstance(n, ev.Notice)] == ["more messages wait to be sent "]
    kept = [json.loads(m.text)["text"].split()[0] for m in e.outbox.messages]
    assert kept[-1] == "1999"  # the newest kept


def test_pongs_owed_are_bounded() -> None:
    e = opened(make())
    e.pause_writing()
    for n in range(100):
        e.receive(msg("ping", "ping_event", event_id=n, ping_ms=1), 1.0)
    assert len(e.outbox.control) == 8


# --- no busy loop ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["tick", "audio", "speech", "request", "open", "meta", "close", "fail", "heard",
                                 "pause", "resume", "end", "send"]), max_size=40),
       st.sampled_from(["persistent", "on_demand"]))
def test_after_a_tick_at_its_deadline_the_next_deadline_is_later(steps: list[str], policy: str) -> None:
    """Whatever happened before, ticking at the deadline moves it on: the shell never spins."""
    e = make(policy=policy, dead_peer_timeout=3.0, idle_timeout=2.0, connect_timeout=2.0)
    now = 0.0
    for step in steps:
        now += 0.05
        if step == "tick":
            e.tick(now)
        elif step in ("audio", "speech"):
            e.send_audio(FRAME, step == "speech", now)
        elif step == "request":
            e.request(now)
        elif step == "open" and e.phase is Phase.CONNECTING:
            e.connection_open(now)
        elif step == "meta":
            e.receive(metadata(), now)
        elif step == "close":
            e.connection_closed(now, code=1000)
        elif step == "fail" and e.phase is Phase.CONNECTING:
            e.connect_failed(Outcome.RETRY, "refused", now)
        elif step == "heard":
            e.heard(now)
        elif step == "pause":
            e.pause_writing()
        elif step == "resume":
            e.resume_writing()
        elif step == "end":
            e.end("idle", now)
        elif step == "send":
            e.data_to_send(now)
        e.actions()
        e.events()
    for _ in range(5):
        due = e.next_deadline()
        if due is None:
            return
        now = max(now, due)
        e.tick(now)
        e.data_to_send(now)
        actions = e.actions()
        after = e.next_deadline()
        if ev.Connect() in actions:
            e.connect_failed(Outcome.RETRY, "refused", now)
        elif ev.Abort() in actions or any(isinstance(a, ev.Close) for a in actions):
            e.connection_closed(now)
        else:
            assert after is None or after > now, (e.phase, due, after)


# --- the service's queue, client_error, the newer contract's fields ------------------------------


def queue(status: str) -> str:
    return msg("queue_status", "queue_status_event", status=status)


def test_while_queued_speech_and_messages_are_kept_and_sent_once_admitted() -> None:
    """The server discards what a queued client sends: nothing said meanwhile goes out
    (pongs still do), and all of it goes, in order, once the conversation is admitted."""
    e = opened(make())
    e.send_audio(b"\x02\x00" * 320, True, 0.5)  # live speech not yet written when the queue starts
    e.receive(queue("waiting"), 1.0)
    assert e.events() == [ev.Queued("waiting", True)]
    assert not e.is_open
    for n in range(3):
        e.send_audio(FRAME, True, 1.1 + n * 0.02)
    e.send_audio(b"\x00\x00" * 320, False, 1.2)  # silence between turns: not worth keeping
    e.send_message("user_message", '{"type":"user_message","text":"hi"}', 1.2)
    e.receive(msg("ping", "ping_event", event_id=7), 1.3)
    assert sent(e, 1.3) == [{"type": "pong", "event_id": 7}]
    assert e.next_deadline() is not None and e.next_deadline() > 1.3 + KEEPALIVE_AFTER  # no keepalive
    for t in (6.0, 12.0, 18.0, 24.0, 30.0):  # long in the queue, pinged: no metadata timeout, no keepalive
        e.tick(t)
        e.receive(msg("ping", "ping_event", event_id=int(t)), t)
        assert sent(e, t) == [{"type": "pong", "event_id": int(t)}]
    assert e.actions() == []
    e.receive(queue("admitted"), 31.0)
    events = e.events()
    assert ev.Queued("admitted", False) in events
    assert any(isinstance(x, ev.Notice) and "captured while queued" in x.text for x in events)
    assert e.is_open
    out = sent(e, 31.0)
    assert out[0] == {"type": "user_message", "text": "hi"}
    assert [base64.b64decode(m["user_audio_chunk"]) for m in out[1:]] == [b"\x02\x00" * 320] + [FRAME] * 3


def test_a_queue_before_the_metadata_holds_the_conversation_until_admitted() -> None:
    e = make()
    e.request(0.0)
    e.tick(0.0)
    e.connection_open(0.0)
    e.data_to_send(0.0)
    e.receive(queue("waiting"), 0.1)
    e.receive(metadata("c9"), 0.2)
    e.send_audio(FRAME, True, 0.3)
    assert not e.is_open and sent(e, 0.3) == []
    e.receive(queue("admitted"), 0.4)
    assert e.is_open and audio_sent(e, 0.4) == [FRAME]


def test_queue_timed_out_then_3008_is_retried_and_keeps_the_speech() -> None:
    e = opened(make())
    e.receive(queue("waiting"), 1.0)
    e.send_audio(FRAME, True, 1.1)
    e.receive(queue("timed_out"), 2.0)
    e.connection_closed(2.1, code=3008, reason="too many concurrent connections")
    closed = [x for x in e.events() if isinstance(x, ev.Closed)]
    assert closed and closed[0].outcome is Outcome.RETRY and closed[0].retry_in is not None
    assert e.outbox.early_seconds > 0  # kept for the next conversation


def test_client_error_gives_the_close_its_reason() -> None:
    e = opened(make())
    e.receive(msg("client_error", "error_event", code=1008, error_name="invalid_api_key",
                  message="Invalid API key"), 1.0)
    assert e.events() == [ev.ServerError("invalid_api_key", 1008, "Invalid API key", kind="client_error")]
    e.connection_closed(1.1, code=1008, reason="")
    [closed] = [x for x in e.events() if isinstance(x, ev.Closed)]
    assert closed.outcome is Outcome.FATAL
    assert "invalid_api_key: Invalid API key" in closed.reason


def test_the_final_chunk_and_tool_calls_that_expect_no_result_are_passed_on() -> None:
    e = opened(make())
    e.receive(json.dumps({"type": "audio", "audio_event": {"audio_base_64": base64.b64encode(FRAME).decode(),
                                                           "event_id": 2, "is_final": True}}), 1.0)
    e.receive(msg("client_tool_call", "client_tool_call", tool_name="lights", tool_call_id="t1",
                  parameters={}, event_id=2, expects_response=False), 1.1)
    events = e.events()
    assert [a.final for a in events if isinstance(a, ev.AgentAudio)] == [True]
    assert ev.ToolCall("lights", "t1", {}, False) in events


def test_the_initiation_names_a_source_the_newer_contract_accepts() -> None:
    e = make()
    e.request(0.0)
    e.tick(0.0)
    e.connection_open(0.0)
    [init] = sent(e, 0.0)
    assert init["source_info"]["source"] == "unknown"
    assert init["source_info"]["version"].startswith("pi-agent/")
    validate_client_message(init)


def test_what_went_out_between_the_metadata_and_the_queue_is_sent_again() -> None:
    """The service queues right after the metadata and discards what reaches it meanwhile:
    speech and a message written in that moment go out again once admitted."""
    e = make()
    e.request(0.0)
    e.tick(0.0)
    e.connection_open(0.0)
    e.send_message("user_message", '{"type":"user_message","text":"hi"}', 0.0)
    e.data_to_send(0.0)
    e.receive(metadata(), 0.1)
    e.send_audio(FRAME, True, 0.11)
    assert len(sent(e, 0.12)) == 2  # the message and the speech, into the void
    e.receive(msg("ping", "ping_event", event_id=1), 0.13)
    e.receive(queue("waiting"), 0.15)
    assert sent(e, 0.16) == [{"type": "pong", "event_id": 1}]
    e.receive(queue("admitted"), 3.0)
    out = sent(e, 3.0)
    assert out[0] == {"type": "user_message", "text": "hi"}
    assert [base64.b64decode(m["user_audio_chunk"]) for m in out[1:]] == [FRAME]


def test_without_a_queue_nothing_is_sent_twice() -> None:
    e = opened(make())
    e.send_audio(FRAME, True, 0.5)
    assert audio_sent(e, 0.5) == [FRAME]
    e.send_audio(FRAME, True, 2.5)
    assert audio_sent(e, 2.5) == [FRAME]  # the window has passed: nothing kept
    e.receive(queue("waiting"), 3.0)  # a queue much later (a server that queues mid-way)
    e.receive(queue("admitted"), 4.0)
    assert audio_sent(e, 4.0) == []
