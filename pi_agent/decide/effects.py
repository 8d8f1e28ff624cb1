"""What :func:`~pi_agent.decide.decide.decide` asks the controller to do. Plain data."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .states import Transition

Level = Literal["debug", "info", "warning", "error"]


class GateCommand(enum.StrEnum):
    """What the decisions tell the capture gate (:meth:`pi_agent.audio.gate.CaptureGate.apply`). Whether
    the user's turn is on is not a command: the model holds it and the gate is told it with each frame."""

    PRESS = "press"            # push_to_talk: the button is held (or toggled on)
    RELEASE = "release"        # push_to_talk: released (the turn ends on the next frame)
    START_TURN = "start_turn"  # vad/wake_word/always: a turn starts now (button, API); sent only while none is on
    END_TURN = "end_turn"      # the turn is over (server transcript, stop, mute, closed)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class StateChange:
    """A trigger the table accepted: a new state is logged and published (the same state
    again, as a muted daemon whose conversation closed, is not)."""

    transition: Transition


@dataclass(frozen=True, slots=True)
class Flush:
    """Silence the speaker now, and drop the rest of the agent's turn."""

    barge_in: bool = False  # the server's interruption: the flush time is measured


@dataclass(frozen=True, slots=True)
class Earcon:
    name: str


@dataclass(frozen=True, slots=True)
class Play:
    """Queue agent audio (16-bit mono PCM at ``rate``) on the speaker."""

    pcm: bytes = field(repr=False)
    rate: int
    new_turn: bool


@dataclass(frozen=True, slots=True)
class Request:
    """A conversation is wanted (open one if none is)."""


@dataclass(frozen=True, slots=True)
class Send:
    """A JSON message to the agent (``kind`` for the metrics, ``text`` encoded)."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class Gate:
    command: GateCommand


@dataclass(frozen=True, slots=True)
class Publish:
    """An event for the event API's subscribers."""

    event: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Log:
    level: Level
    text: str
    transcript: bool = False  # a transcript line (its own logger, so it can be filtered)


@dataclass(frozen=True, slots=True)
class Observe:
    """A duration for a metrics histogram: ``response_latency`` (end of the user's speech
    to the agent's first audio) or ``conversation_seconds`` (how long one stayed open)."""

    metric: Literal["response_latency", "conversation_seconds"]
    seconds: float


Effect = StateChange | Flush | Earcon | Play | Request | Send | Gate | Publish | Log | Observe
