"""What goes into :func:`~pi_agent.decide.decide.decide` besides the engine's events.

The engine's events (:mod:`pi_agent.engine.events`) say what happened in the
conversation; these say what happened everywhere else: the capture gate, the button,
the event API, the devices, the speaker and the clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..engine import events as ev
from .button import ButtonEvent


@dataclass(frozen=True, slots=True)
class Ready:
    """Start-up finished (devices and API up)."""


@dataclass(frozen=True, slots=True)
class TurnStarted:
    """The capture gate started a user turn (speech, a held button, always-on audio)."""


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """The capture gate ended the user turn (VAD hangover, button released, mute)."""

    nothing_said: bool = False  # a turn begun by a press or the wake word, and then silence


@dataclass(frozen=True, slots=True)
class WakeWord:
    """The capture gate heard the wake word."""

    probability: float


@dataclass(frozen=True, slots=True)
class PlayedOut:
    """The speaker has played everything queued."""


@dataclass(frozen=True, slots=True)
class Tick:
    """A deadline of the model (:func:`~pi_agent.decide.model.deadline`) has come."""


@dataclass(frozen=True, slots=True)
class Button:
    event: ButtonEvent
    heard_speech: bool = False  # push-to-talk: the VAD heard the user during this hold


@dataclass(frozen=True, slots=True)
class StartListening:
    pass


@dataclass(frozen=True, slots=True)
class StopListening:
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class SetMuted:
    muted: bool


@dataclass(frozen=True, slots=True)
class Say:
    text: str


@dataclass(frozen=True, slots=True)
class ContextualUpdate:
    text: str
    context_id: str | None = None  # only the latest update of an id stays in the agent's context


@dataclass(frozen=True, slots=True)
class ToolResult:
    tool_call_id: str
    result: str
    is_error: bool


@dataclass(frozen=True, slots=True)
class McpApproval:
    """An event-API client approves (or denies) an MCP tool call awaiting approval."""

    tool_call_id: str
    approved: bool


@dataclass(frozen=True, slots=True)
class DeviceFailed:
    which: str  # "microphone" or "speaker"
    message: str


@dataclass(frozen=True, slots=True)
class DeviceRecovered:
    which: str


@dataclass(frozen=True, slots=True)
class ToolHandlers:
    """The client tools that event-API clients have said they answer (``"*"``: every tool)."""

    tools: frozenset[str]


@dataclass(frozen=True, slots=True)
class OpenConversation:
    """Open a conversation now, with nothing said yet (``pi-agent say`` waits for a greeting)."""


@dataclass(frozen=True, slots=True)
class ShuttingDown:
    """The daemon stops: speech may no longer ask for a conversation."""


Input = (
    ev.Event | Ready | TurnStarted | TurnEnded | WakeWord | PlayedOut | Tick | Button | StartListening | StopListening
    | Stop | SetMuted | Say | ContextualUpdate | ToolResult | McpApproval | DeviceFailed | DeviceRecovered
    | ToolHandlers | OpenConversation | ShuttingDown
)
