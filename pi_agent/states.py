"""The conversation state machine: every state, every transition, in one table.

Pure: no I/O, no clock. The controller feeds it triggers; each accepted trigger
yields a :class:`Transition` that the controller logs and publishes. An illegal
trigger raises :class:`~pi_agent.errors.InternalError` and leaves the state as it
was (as ``h11`` does), so a bug can never leave the machine half-changed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import InternalError


class State(str, enum.Enum):
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


class Trigger(str, enum.Enum):
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
    **{(s, T.CLOSED): S.IDLE for s in (S.CONNECTING, *_ACTIVE, S.OFFLINE)},
    **{(s, T.LOST): S.OFFLINE for s in (S.STARTING, S.CONNECTING, *_ACTIVE, S.MUTED)},
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


class StateMachine:
    """Holds the current state and applies triggers through :data:`TRANSITIONS`."""

    def __init__(self, initial: State = State.STARTING) -> None:
        self._state = initial

    @property
    def state(self) -> State:
        return self._state

    def can(self, trigger: Trigger) -> bool:
        return (self._state, trigger) in TRANSITIONS

    def fire(self, trigger: Trigger) -> Transition:
        """Apply ``trigger``; raise :class:`InternalError` if it is illegal here."""
        try:
            new = TRANSITIONS[(self._state, trigger)]
        except KeyError:
            raise InternalError(f"trigger {trigger} is not allowed in state {self._state}") from None
        transition = Transition(self._state, trigger, new)
        self._state = new
        return transition
