"""The mic frame's short way (issue 25): what it skips must not change what reaches the agent.

- ``Engine.audio_to_send`` hands out a frame's text at once only when nothing could go
  before it; in every other case it queues the frame as ``send_audio`` does, and the order on
  the wire is the same as through the queue.
- ``MicPipeline.feed`` cuts a 16 kHz mono read into frames without numpy: the same bytes as
  the numpy path.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from pi_agent.audio import FRAME_BYTES
from pi_agent.audio.formats import MicPipeline
from pi_agent.engine.conversation import Engine
from pi_agent.engine.connection import QUEUE_REPLAY_S

from .test_engine import make, opened


def pcm(value: int) -> bytes:
    return np.full(FRAME_BYTES // 2, value, dtype="<i2").tobytes()


def audio_of(text: str) -> bytes:
    return base64.b64decode(json.loads(text)["user_audio_chunk"])


def settled(now: float = 0.0) -> Engine:
    """Open, and past the moment the server may still queue the conversation."""
    engine = opened(make(), now)
    engine.send_audio(pcm(0), False, now + QUEUE_REPLAY_S + 0.1)
    engine.data_to_send(now + QUEUE_REPLAY_S + 0.1)
    return engine


def test_an_open_settled_conversation_gets_the_text_at_once() -> None:
    engine = settled()
    now = QUEUE_REPLAY_S + 1
    before = engine.stats.messages_out["audio"]
    text = engine.audio_to_send(pcm(7), True, now)
    assert text is not None and audio_of(text) == pcm(7)
    assert engine.stats.messages_out["audio"] == before + 1
    assert engine.data_to_send(now) == [] and not engine.outbox  # nothing queued besides


def test_within_the_replay_window_the_frame_takes_the_queue() -> None:
    engine = opened(make(), 0.0)
    assert engine.audio_to_send(pcm(1), True, 0.5) is None
    assert [audio_of(t) for t in engine.data_to_send(0.5)] == [pcm(1)]


def test_a_frame_never_overtakes_what_waits() -> None:
    engine = settled()
    now = QUEUE_REPLAY_S + 1
    engine.send_message("user_message", '{"type":"user_message","text":"hi"}', now)  # waits in the outbox
    assert engine.audio_to_send(pcm(2), True, now) is None
    out = engine.data_to_send(now)
    assert json.loads(out[0])["type"] == "user_message" and audio_of(out[1]) == pcm(2)


def test_a_paused_writer_or_a_closed_conversation_queues_or_keeps() -> None:
    engine = settled()
    now = QUEUE_REPLAY_S + 1
    engine.pause_writing()
    assert engine.audio_to_send(pcm(3), True, now) is None
    assert engine.data_to_send(now) == []
    engine.resume_writing()
    assert [audio_of(t) for t in engine.data_to_send(now)] == [pcm(3)]
    closed = make(policy="on_demand")
    closed.request(0.0)
    assert closed.audio_to_send(pcm(4), True, 0.0) is None  # speech kept for the conversation being opened
    assert len(closed.outbox.early) == 1


def test_the_numpy_free_cut_gives_the_same_frames() -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(-32768, 32767, 5 * FRAME_BYTES // 2, dtype=np.int16).astype("<i2").tobytes()
    fast = MicPipeline(16_000, 1)
    slow = MicPipeline(16_000, 2, channel=0)  # a channel picked: the numpy path, and the same samples
    stereo = np.repeat(np.frombuffer(data, "<i2").reshape(-1, 1), 2, axis=1).tobytes()
    assert fast.feed(data) == slow.feed(stereo)
    assert fast.feed(memoryview(data)[:FRAME_BYTES]) == [data[:FRAME_BYTES]]
    # a read that is not whole frames goes the numpy way, and what follows stays in order
    assert fast.feed(data[:100]) == []
    assert fast.feed(data[100:FRAME_BYTES + 100]) == [data[:FRAME_BYTES]]
