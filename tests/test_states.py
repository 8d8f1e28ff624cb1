"""The state machine, tested as a table."""

from __future__ import annotations

import pytest

from pi_agent.errors import InternalError
from pi_agent.decide.states import TRANSITIONS, State, Trigger, can, fire

S, T = State, Trigger

EXPECTED = [
    (S.STARTING, T.READY, S.IDLE),
    (S.IDLE, T.CONNECT, S.CONNECTING),
    (S.CONNECTING, T.OPENED, S.IDLE),
    (S.CONNECTING, T.LISTEN, S.LISTENING),
    (S.IDLE, T.LISTEN, S.LISTENING),
    (S.LISTENING, T.SPEECH_END, S.THINKING),
    (S.THINKING, T.AGENT_SPEAKS, S.SPEAKING),
    (S.SPEAKING, T.AGENT_DONE, S.IDLE),
    (S.SPEAKING, T.LISTEN, S.LISTENING),  # barge-in
    (S.SPEAKING, T.STOP, S.IDLE),
    (S.IDLE, T.LOST, S.OFFLINE),          # a reply cut by a failure was stopped first: see test_decide
    (S.OFFLINE, T.CONNECT, S.CONNECTING),
    (S.CONNECTING, T.FAIL, S.ERROR),
    (S.ERROR, T.CONNECT, S.CONNECTING),
    (S.ERROR, T.RECOVER, S.IDLE),
    (S.IDLE, T.MUTE, S.MUTED),
    (S.MUTED, T.UNMUTE, S.IDLE),
    (S.MUTED, T.LOST, S.OFFLINE),
    (S.LISTENING, T.CLOSED, S.IDLE),
]


@pytest.mark.parametrize(("state", "trigger", "new"), EXPECTED)
def test_transition(state: State, trigger: Trigger, new: State) -> None:
    t = fire(state, trigger)
    assert (t.previous, t.trigger, t.state) == (state, trigger, new)


ILLEGAL = [
    (S.STARTING, T.LISTEN),
    (S.CONNECTING, T.AGENT_DONE),
    (S.OFFLINE, T.LISTEN),
    (S.MUTED, T.LISTEN),
    (S.ERROR, T.AGENT_SPEAKS),
    (S.IDLE, T.UNMUTE),
    (S.ERROR, T.FAIL),
]


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL)
def test_illegal_transition_raises(state: State, trigger: Trigger) -> None:
    assert not can(state, trigger)
    with pytest.raises(InternalError, match=trigger.value):
        fire(state, trigger)


def test_every_state_can_be_left_and_reached() -> None:
    sources = {s for s, _ in TRANSITIONS}
    targets = set(TRANSITIONS.values())
    assert sources == set(State)
    assert targets | {S.STARTING} == set(State)


def test_every_state_but_error_reaches_offline_or_error_on_failure() -> None:
    for state in State:
        if state is S.ERROR:
            continue
        assert can(state, T.FAIL), state
