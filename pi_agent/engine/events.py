"""What the conversation engine hands out: events for the decision function, actions for
the I/O shell. Plain frozen data; nothing here does anything.

A server message the engine hands on as it came is its event (:class:`UserTranscript`,
:class:`AgentResponse`, :class:`AgentResponseMetadata`: the classes of
:mod:`.server_messages`); an event that is a server message under the engine's own name
subclasses it (:class:`Opened`, :class:`Interrupted`, :class:`AgentCorrection`), so its
fields are written once. The other events are the engine's own."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .backoff import Outcome
from .server_messages import AgentResponseCorrection, ConversationMetadata, Interruption

# server messages handed on as they came: their classes are these events (re-exported)
from .server_messages import AgentResponse as AgentResponse
from .server_messages import AgentResponseMetadata as AgentResponseMetadata
from .server_messages import UserTranscript as UserTranscript

Level = Literal["debug", "info", "warning", "error"]


# --- events: what happened in the conversation ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Connecting:
    """An attempt to open a conversation starts (1 = the first since the last success or end)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Opened(ConversationMetadata):
    """The server sent the conversation metadata: the conversation is open."""


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """A chunk of the agent's reply to play: 16-bit mono PCM at ``rate``."""

    pcm: bytes = field(repr=False)
    rate: int
    new_turn: bool  # the first chunk of a new agent turn
    final: bool = False  # the server says this is the reply's last chunk (1.1.0 is_final)


@dataclass(frozen=True, slots=True)
class Interrupted(Interruption):
    """The server says the user barged in: flush what plays of turn ``event_id``."""


@dataclass(frozen=True, slots=True)
class AgentTextPart:
    """The agent's text as it is generated: ``start``, then ``delta`` pieces, then ``stop``."""

    part: str
    text: str
    event_id: int | str | None


@dataclass(frozen=True, slots=True)
class AgentResponseComplete:
    """Newer servers: the agent's response is complete."""

    event_id: int | str | None


@dataclass(frozen=True, slots=True)
class AgentCorrection(AgentResponseCorrection):
    """The server corrected the text of the agent's response (``original`` -> ``corrected``)."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The agent calls a client tool; it waits for a ``client_tool_result`` unless
    ``expects_response`` is False."""

    tool_name: str
    tool_call_id: str
    parameters: Mapping[str, Any]
    expects_response: bool = True


@dataclass(frozen=True, slots=True)
class McpToolCall:
    """The agent calls an MCP tool; in state ``awaiting_approval`` it waits up to
    ``approval_timeout`` seconds for our approval or denial."""

    tool_name: str
    tool_call_id: str
    state: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None
    approval_timeout: int | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """The server's queue: ``waiting`` (it discards what we send; speech is kept meanwhile),
    ``admitted``, ``timed_out`` (a close follows), or a status this version does not know."""

    status: str
    waiting: bool


@dataclass(frozen=True, slots=True)
class AgentToolResponse:
    tool_name: str
    is_error: bool


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` (or 1.1.0 ``client_error``) message from the server (a close usually follows)."""

    error_type: str | None
    code: int | None
    message: str | None
    kind: str = "error"  # the message type it came as


@dataclass(frozen=True, slots=True)
class Notice:
    """Something an admin should read: a skipped frame, dropped audio, an idle close."""

    level: Level
    text: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection ended (or could not be opened), and what happens next."""

    outcome: Outcome
    reason: str                # one line for the log, never holding a secret
    retry_in: float | None     # seconds until the next attempt; None = none planned
    code: int | None = None    # WebSocket close code, if there was one
    was_open: bool = False     # a conversation had opened on this connection
    lasted: float = 0.0        # seconds the conversation was open


Event = (Connecting | Opened | AgentAudio | Interrupted | UserTranscript | AgentResponse | AgentTextPart
         | AgentResponseComplete | AgentResponseMetadata | AgentCorrection | ToolCall | McpToolCall
         | AgentToolResponse | Queued | ServerError | Notice | Closed)


# --- actions: what the I/O shell must do ---------------------------------------------------


class Phase(enum.StrEnum):
    """Where the engine is in the life of a connection."""

    IDLE = "idle"              # no conversation wanted
    WAITING = "waiting"        # wanted: waiting out a backoff delay
    CONNECTING = "connecting"  # the shell fetches the URL and opens the socket
    OPENING = "opening"        # the socket is open; waiting for the conversation metadata
    OPEN = "open"              # the conversation is open
    CLOSING = "closing"        # we closed (or dropped) the socket; waiting for it to go


@dataclass(frozen=True, slots=True)
class Connect:
    """Fetch the URL and open the WebSocket; then call ``connection_open`` or ``connect_failed``."""


@dataclass(frozen=True, slots=True)
class Ping:
    """Send a WebSocket ping: nothing has been heard for a while (the answer proves the peer alive)."""


@dataclass(frozen=True, slots=True)
class Close:
    """Start the WebSocket closing handshake."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the connection at once (dead peer, close handshake not answered)."""


Action = Connect | Ping | Close | Abort
