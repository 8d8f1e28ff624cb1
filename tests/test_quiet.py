"""Silence is cheap (issue 25): under ``persistent`` with ``session.quiet_keepalive`` set, once
the microphone has heard no voice for a few seconds and nothing is being answered, the
daemon sends no microphone audio; the conversation is kept open by 100 ms of silence every
``quiet_keepalive`` seconds (the service closes a conversation after 60 s without input).
The first voiced frame sends the second before it, so a user who starts to talk is heard
from before their first syllable. (Off by default: 0 sends every frame, as before.)

The engine's part in-process (quick; the gate's is in ``test_gate.py``); the daemon's on the
virtual card against the fake agent with a receive timeout and no pings of its own (a pong
is input too), so that only what the daemon sends on its own keeps the conversation open
(slow).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from pi_agent.audio.gate import HOLD, QUIET_AFTER
from pi_agent.engine.connection import QUEUE_REPLAY_S
from pi_agent.engine.conversation import KEEPALIVE_AFTER, KEEPALIVE_PCM, Engine
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions

from .support_audio import VirtualAudio
from .test_engine import audio_sent, make, opened, sent


def settled(**settings: float) -> tuple[float, Engine]:
    engine = opened(make(**settings), 0.0)
    now = QUEUE_REPLAY_S + 0.1
    engine.send_audio(b"\x01\x00" * 320, False, now)
    engine.data_to_send(now)
    return now, engine


def test_hushed_the_keepalive_comes_every_quiet_keepalive_seconds() -> None:
    now, engine = settled(quiet_keepalive=10.0)
    engine.hush(True)
    assert engine.quiet
    for t in (now + KEEPALIVE_AFTER + 0.1, now + 5.0, now + 9.9):
        engine.tick(t)
        assert audio_sent(engine, t) == [], t
    engine.tick(now + 10.0)
    assert audio_sent(engine, now + 10.0) == [KEEPALIVE_PCM]
    engine.hush(False)  # someone talks: the keepalive's interval is short again
    later = now + 10.0 + KEEPALIVE_AFTER
    engine.tick(later)
    assert audio_sent(engine, later) == [KEEPALIVE_PCM]


def test_pongs_do_not_keep_a_quiet_conversation_open() -> None:
    """The service counts user input; what the keepalive waits for is audio, not any message."""
    now, engine = settled(quiet_keepalive=10.0)
    engine.hush(True)
    for k in range(1, 5):  # the server pings every 2 s and is answered
        t = now + 2.0 * k
        engine.receive(json.dumps({"type": "ping", "ping_event": {"event_id": k}}), t)
        engine.tick(t)
        assert [m["type"] for m in sent(engine, t)] == ["pong"]
    engine.tick(now + 10.0)
    assert audio_sent(engine, now + 10.0) == [KEEPALIVE_PCM]


def test_zero_is_never_quiet() -> None:
    now, engine = settled(quiet_keepalive=0.0)
    engine.hush(True)
    assert not engine.quiet
    engine.tick(now + KEEPALIVE_AFTER)
    assert audio_sent(engine, now + KEEPALIVE_AFTER) == [KEEPALIVE_PCM]


@pytest.mark.slow
@pytest.mark.audio
async def test_a_quiet_room_costs_a_keepalive_and_the_next_question_arrives_whole(
        virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    from .test_audio_e2e import (MIC_RATE, audio_daemon, connected, daemon_env, locate, noise, play_into_mic,
                                 question, report, user_audio)

    # A room with a little noise (webrtcvad takes an odd frame of it for voice, which starts no turn;
    # never zeros: held back, not dropped), 14 s of it, then the question, then a moment of room.
    q = question()
    lead, tail = 14.0, 1.0
    track = noise(lead + len(q) / MIC_RATE + tail, 30.0, seed=3)
    at = int(lead * MIC_RATE)
    track[at:at + len(q)] = np.clip(track[at:at + len(q)].astype(np.int32) + q, -32767, 32767)
    opts = FakeAgentOptions(port=0, receive_timeout=3.0, ping_interval=600.0, transcript="What is the weather like?")
    async with FakeAgent(opts) as agent:
        env = daemon_env(virtual_audio, agent, PI_AGENT_SESSION__QUIET_KEEPALIVE="1.5",
                         PI_AGENT_AUDIO__ECHO="full_duplex")
        async with audio_daemon(env, tmp_path) as (_d, events):
            record = await connected(agent, events)
            player = play_into_mic(virtual_audio, track, tmp_path)
            t_play = time.monotonic()
            await asyncio.sleep(QUIET_AFTER + 2.0)  # no turn for QUIET_AFTER: held back since
            t0, n0 = time.monotonic(), len(record.audio_chunk_times)
            await asyncio.sleep(7.0)  # more than twice the agent's receive timeout
            t1, n1 = time.monotonic(), len(record.audio_chunk_times)
            assert t1 - t_play < lead, "the question began before the quiet room was measured"
            assert record.closed_at is None, "the conversation was closed while the room was quiet"
            await events.wait_for(lambda e: e.get("type") == "user_transcript", 25, "the user transcript")
            await asyncio.to_thread(player.wait, 10)
    assert len(agent.conversations) == 1  # kept open all along: no second conversation
    got = user_audio(record)
    # The question as it was played, from HOLD - 0.2 s before its first syllable: all of it arrived,
    # in one piece, the room before it included.
    before = int((HOLD - 0.2) * MIC_RATE)
    played = track[at - before:at + len(q)]
    _, score = locate(got, played)
    quiet_chunks = n1 - n0
    report("quiet_room", audio_messages_in_7s=quiet_chunks, seconds=round(t1 - t0, 2),
           question_correlation=round(score, 4), received_s=round(len(got) / MIC_RATE, 2))
    assert quiet_chunks <= 7, quiet_chunks  # a keepalive every 1.5 s (350 frames would have gone before)
    assert score > 0.99, score
    assert len(got) < (lead + 2.0) * MIC_RATE  # the room's 14 s were not all sent


def test_the_mic_may_be_held_back_only_in_an_open_persistent_conversation_where_nothing_happens() -> None:
    from dataclasses import replace

    from pi_agent.config import Settings
    from pi_agent.decide.model import Config, Link, Model, may_hold_mic
    from pi_agent.decide.states import State

    base = Model(config=Config(persistent=True, quiet=True), state=State.IDLE, link=Link.OPEN)
    assert may_hold_mic(base)
    assert may_hold_mic(replace(base, state=State.THINKING))  # a reply awaited: the turn start releases it
    for state in (State.LISTENING, State.SPEAKING, State.MUTED, State.CONNECTING, State.OFFLINE, State.ERROR):
        assert not may_hold_mic(replace(base, state=state)), state
    assert not may_hold_mic(replace(base, link=Link.CONNECTING))
    assert not may_hold_mic(replace(base, config=Config(persistent=True)))
    quiet = {"policy": "persistent", "quiet_keepalive": 10}
    assert Settings(agent_id="a", session=quiet).decide_config().quiet  # type: ignore[call-arg]
    assert not Settings(agent_id="a", session={**quiet, "policy": "on_demand"}).decide_config().quiet  # type: ignore[call-arg]
    assert not Settings(agent_id="a", session={"policy": "persistent"}).decide_config().quiet  # type: ignore[call-arg]
