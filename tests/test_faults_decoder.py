"""Fault suite, bad frames, property-based: the daemon's whole receive path, without I/O.

``test_protocol.py`` fuzzes the decoder with arbitrary bytes, text and JSON; random JSON
seldom gets past the first checks. Here every example starts from a well-formed server
message of the spec (one of each type) and is then mutated: a field removed, a value
swapped for one of another type, an extra key, a changed ``type``. The result goes
through what the daemon does with a frame, minus the I/O (the engine: decode, the
conversation state, the audio decoder for the announced format, the pong it owes; then
the decision function) and nothing may escape: a malformed frame is counted and skipped.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pi_agent.engine import protocol as p
from pi_agent.audio.formats import decode_pcm
from pi_agent.engine.settings import EngineSettings
from pi_agent.net.conversation import mic_encoder as encoder_for
from pi_agent.decide.decide import decide
from pi_agent.decide.model import Model
from pi_agent.engine.conversation import Engine
from pi_agent.errors import ProtocolError
from .test_protocol import SERVER_EXAMPLES

pytestmark = pytest.mark.faults

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=12) | st.sampled_from(["", "pcm_16000", "ulaw_8000", "pcm_44100", "AAAA", "!!", "-1"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside ``obj`` (dict keys and list indexes)."""
    out: list[tuple[Any, ...]] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in items:
        out.append((*prefix, key))
        out.extend(_paths(value, (*prefix, key)))
    return out


@st.composite
def mutated_messages(draw: st.DrawFn) -> str | bytes:
    message = copy.deepcopy(draw(st.sampled_from([m for m, _ in SERVER_EXAMPLES])))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(message)
        how = draw(st.sampled_from(["replace", "replace", "delete", "add", "retype"]))
        if how == "retype":  # another type's name over this payload, now and then not a name at all
            message["type"] = draw(st.sampled_from(sorted(p.SERVER_MESSAGE_TYPES)) if draw(st.integers(0, 4))
                                   else scalars)
            continue
        paths = [path for path in paths if path != ("type",)]
        if not paths:
            continue
        path = draw(st.sampled_from(paths))
        parent = message
        for key in path[:-1]:
            parent = parent[key]
        if how == "replace":
            parent[path[-1]] = draw(values)
        elif how == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif how == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(values)
    text = json.dumps(message, allow_nan=True)
    return text.encode() if draw(st.integers(0, 9)) == 0 else text  # now and then as a binary frame


def _receive_path(fmt: str) -> tuple[Engine, list[Model]]:
    """The engine with a conversation open in ``fmt``, and the model the decisions keep."""
    engine = Engine(EngineSettings(policy="persistent"), encoder_factory=encoder_for, decode_audio=decode_pcm)
    engine.tick(0.0)
    engine.connection_open(0.0)
    opening = {"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
        "conversation_id": "c", "agent_output_audio_format": fmt, "user_input_audio_format": "pcm_16000"}}
    models = [Model()]
    _feed(engine, models, json.dumps(opening), 0.1)
    return engine, models


def _feed(engine: Engine, models: list[Model], frame: str | bytes, now: float) -> None:
    """What the daemon does with one frame, minus the I/O: the engine, then the decisions."""
    engine.receive(frame, now)
    for text in engine.data_to_send(now):
        json.loads(text)
    for event in engine.events():
        model, _ = decide(models[-1], event, now)
        models.append(model)


@pytest.mark.slow
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_messages(), min_size=1, max_size=6), st.sampled_from(["pcm_16000", "pcm_44100", "ulaw_8000"]))
def test_mutated_server_messages_never_raise_and_are_counted(frames: list[str | bytes], fmt: str) -> None:
    engine, models = _receive_path(fmt)
    errors_before = engine.stats.protocol_errors
    for i, frame in enumerate(frames):
        try:
            p.decode(frame)
            bad = False
        except ProtocolError:
            bad = True
        before = engine.stats.protocol_errors
        _feed(engine, models, frame, 0.2 + i * 0.01)  # nothing may escape, whatever the frame
        if bad:
            assert engine.stats.protocol_errors == before + 1
    assert engine.stats.protocol_errors >= errors_before
    assert engine.conversation_id == "c" or engine.phase.value != "open"


def test_the_mutations_reach_past_the_first_checks() -> None:
    """The strategy is useful only if many examples decode, or fail deep inside a payload."""
    outcomes: dict[str, int] = {"decoded": 0, "deep": 0, "shallow": 0}

    @settings(max_examples=300, deadline=None, database=None)
    @given(mutated_messages())
    def probe(frame: str | bytes) -> None:
        try:
            p.decode(frame)
            outcomes["decoded"] += 1
        except ProtocolError as e:
            shallow = "no string 'type'" in str(e) or "binary frame" in str(e) or "not JSON" in str(e)
            outcomes["shallow" if shallow else "deep"] += 1

    probe()
    total = sum(outcomes.values())
    assert outcomes["decoded"] + outcomes["deep"] > total // 2, outcomes
