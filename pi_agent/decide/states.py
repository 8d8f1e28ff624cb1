"""The conversation state machine: every state, every transition, in one table.

Pure: no I/O, no clock, no state of its own. The decision function fires triggers
(:func:`fire`); each accepted trigger yields a :class:`Transition`, which the
controller logs and publishes. An illegal trigger raises
:class:`~pi_agent.errors.InternalError` (as ``h11`` does); the decision function asks
:func:`can` first and ignores what the current state does not allow.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import InternalError


class State(enum.StrEnum):
    """What the daemon is doing, as a user would describe it."""

    STARTING = "starting"      # config read, devices and API coming up
    IDLE = "idle"              # nothing in progress (a conversation may be open)
    CONNECTING = "connecting"  # a conversation is being opened
    LISTENING = "listening"    # the user's speech is being streamed to the agent
    THINKING = "thinking"      # the user's turn ended; waiting for the agent
    SPEAKING = "speaking"      # the agent's reply is playing
    OFFLINE = "offline"        # connection lost; waiting to retry (backoff)
    ERROR = "error"            # a failure retrying cannot fix soon (auth, device)
    MUTED = "muted"            # the user muted the microphone

    def __str__(self) -> str:
        return self.value


class Trigger(enum.StrEnum):
    """Inputs to the state machine."""

    READY = "ready"                # start-up finished
    CONNECT = "connect"            # start opening a conversation
    OPENED = "opened"              # conversation open (metadata received)
    LISTEN = "listen"              # user speech starts (button, VAD, always-on stream)
    SPEECH_END = "speech_end"      # user speech ended; the agent's turn
    AGENT_SPEAKS = "agent_speaks"  # agent audio starts playing
    AGENT_DONE = "agent_done"      # agent audio played out
    STOP = "stop"                  # user asked to stop; back to idle
    CLOSED = "closed"              # conversation ended on purpose (idle timeout, on_demand end)
    LOST = "lost"                  # connection lost or refused; retry after backoff
    FAIL = "fail"                  # non-retryable failure or device trouble
    RECOVER = "recover"            # the failure cleared (device back)
    MUTE = "mute"
    UNMUTE = "unmute"

    def __str__(self) -> str:
        return self.value


S, T = State, Trigger
_ACTIVE = (S.IDLE, S.LISTENING, S.THINKING, S.SPEAKING)

# (state, trigger) -> next state. Anything not listed is illegal.
TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.STARTING, T.READY): S.IDLE,
    (S.STARTING, T.CONNECT): S.CONNECTING,
    **{(s, T.CONNECT): S.CONNECTING for s in (S.IDLE, S.OFFLINE, S.ERROR)},
    (S.CONNECTING, T.OPENED): S.IDLE,
    (S.CONNECTING, T.LISTEN): S.LISTENING,
    **{(s, T.LISTEN): S.LISTENING for s in (S.IDLE, S.THINKING, S.SPEAKING)},
    (S.LISTENING, T.SPEECH_END): S.THINKING,
    **{(s, T.AGENT_SPEAKS): S.SPEAKING for s in (S.IDLE, S.LISTENING, S.THINKING)},
    (S.SPEAKING, T.AGENT_DONE): S.IDLE,
    **{(s, T.STOP): S.IDLE for s in (S.LISTENING, S.THINKING, S.SPEAKING)},
    # Not from SPEAKING: a reply still playing when the conversation ends plays out
    # (AGENT_DONE); one cut by a failure is stopped first (STOP), then the daemon is offline.
    **{(s, T.CLOSED): S.IDLE for s in (S.CONNECTING, S.IDLE, S.LISTENING, S.THINKING, S.OFFLINE)},
    **{(s, T.LOST): S.OFFLINE for s in (S.CONNECTING, S.IDLE, S.LISTENING, S.THINKING, S.MUTED)},
    **{(s, T.FAIL): S.ERROR for s in (S.STARTING, S.CONNECTING, *_ACTIVE, S.OFFLINE, S.MUTED)},
    (S.ERROR, T.RECOVER): S.IDLE,
    **{(s, T.MUTE): S.MUTED for s in _ACTIVE},
    (S.MUTED, T.UNMUTE): S.IDLE,
    (S.MUTED, T.CLOSED): S.MUTED,
}


@dataclass(frozen=True, slots=True)
class Transition:
    previous: State
    trigger: Trigger
    state: State


def can(state: State, trigger: Trigger) -> bool:
    """Whether the table allows ``trigger`` in ``state``."""
    return (state, trigger) in TRANSITIONS


def fire(state: State, trigger: Trigger) -> Transition:
    """The transition ``trigger`` makes from ``state``; :class:`InternalError` if the table
    does not allow it (the caller's state is a value: nothing is left half-changed)."""
    try:
        return Transition(state, trigger, TRANSITIONS[(state, trigger)])
    except KeyError:
        raise InternalError(f"trigger {trigger} is not allowed in state {state}") from None
