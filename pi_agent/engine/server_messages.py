"""The server-to-client messages of the ElevenLabs agent protocol, as typed values.

Every server-to-client message of the AsyncAPI contract has its class here (and a few
outside it, as the official clients read them); :mod:`.decoding` builds them from
frames. A message type this version does not know becomes :class:`Unknown`.
Plain frozen data; nothing here does anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ConversationMetadata:
    conversation_id: str
    agent_output_audio_format: str
    user_input_audio_format: str


@dataclass(frozen=True, slots=True)
class Audio:
    event_id: int
    audio: bytes = field(repr=False)
    alignment: Mapping[str, Any] | None = field(default=None, repr=False)
    final: bool = False  # 1.1.0 ``is_final``: the last chunk of this agent response


@dataclass(frozen=True, slots=True)
class UserTranscript:
    text: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class TentativeUserTranscript:
    text: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentResponse:
    text: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentResponseCorrection:
    original: str
    corrected: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentChatResponsePart:
    """A piece of the agent's text as it is generated (``start``, ``delta``, ``stop``).

    The contract types the id as an integer; the official docs show strings such as
    ``"evt_123456"``: both are accepted and kept as they came (the id only groups parts)."""

    text: str
    part_type: str
    event_id: int | str | None


@dataclass(frozen=True, slots=True)
class AgentResponseMetadata:
    """1.1.0: metadata about an agent response, ``{metadata: object, event_id}``; the
    ``metadata`` object is kept as it came (from a server without it: the rest of the event)."""

    event_id: int | str | None
    data: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class AgentResponseComplete:
    """Newer servers: the agent's response is complete (its text and audio all sent)."""

    event_id: int | str | None
    data: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class AgentReasoningResponsePart:
    text: str
    part_type: str
    event_id: str | None


@dataclass(frozen=True, slots=True)
class Interruption:
    event_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    event_id: int
    ping_ms: int | None


@dataclass(frozen=True, slots=True)
class ClientToolCall:
    tool_name: str
    tool_call_id: str
    parameters: Mapping[str, Any]
    event_id: int | None
    expects_response: bool = True  # 1.1.0: False = the agent awaits no client_tool_result


@dataclass(frozen=True, slots=True)
class RichContent:
    rich_content_id: str
    component: str
    props: Mapping[str, Any]
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentToolRequest:
    tool_name: str
    tool_call_id: str
    tool_type: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentToolResponse:
    tool_name: str
    tool_call_id: str
    tool_type: str
    is_error: bool
    is_called: bool | None
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AgentToolResponseFullPayload:
    tool_name: str
    tool_call_id: str
    tool_type: str
    is_error: bool
    full_tool_result: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class McpToolCall:
    """A call of an MCP tool by the agent, in one of its states (``loading``,
    ``awaiting_approval``, ``success``, ``failure``). In ``awaiting_approval`` the agent
    waits up to ``approval_timeout`` seconds for ``mcp_tool_approval_result``."""

    tool_name: str
    tool_call_id: str
    state: str
    parameters: Mapping[str, Any] = field(repr=False)
    description: str | None = None
    approval_timeout: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class McpConnectionStatus:
    integrations: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True, slots=True)
class VadScore:
    score: float


@dataclass(frozen=True, slots=True)
class ContextUsage:
    model: str
    context_tokens: int
    context_limit_tokens: int
    event_id: int | None


@dataclass(frozen=True, slots=True)
class AsrInitiationMetadata:
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class GuardrailTriggered:
    pass


@dataclass(frozen=True, slots=True)
class InternalTurnProbability:
    probability: float


@dataclass(frozen=True, slots=True)
class InternalTentativeAgentResponse:
    text: str


@dataclass(frozen=True, slots=True)
class AgentTyping:
    is_typing: bool
    duration_ms: int | None


@dataclass(frozen=True, slots=True)
class ExternalAgentConnected:
    pass


@dataclass(frozen=True, slots=True)
class ExternalAgentDisconnected:
    pass


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """Sent by the server just before it closes for an error."""

    code: int | None
    message: str | None
    error_type: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class ClientError:
    """1.1.0 ``client_error``: the server's reason, sent before it closes for an error."""

    code: int | None
    name: str | None
    message: str | None


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """The server holds the conversation in its queue (``waiting``), lets it in
    (``admitted``) or gives up (``timed_out``, then close 3008). Outside both contracts: as
    the official widget reads it; while ``waiting`` the server discards client messages."""

    status: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message type this version does not know (new server features): ignored."""

    type: str
    data: Mapping[str, Any] = field(repr=False)


ServerEvent = (
    ConversationMetadata | Audio | UserTranscript | TentativeUserTranscript | AgentResponse
    | AgentResponseCorrection | AgentChatResponsePart | AgentReasoningResponsePart | Interruption
    | Ping | ClientToolCall | RichContent | AgentToolRequest | AgentToolResponse
    | AgentToolResponseFullPayload | McpToolCall | McpConnectionStatus | VadScore | ContextUsage
    | AsrInitiationMetadata | GuardrailTriggered | InternalTurnProbability
    | InternalTentativeAgentResponse | AgentTyping | ExternalAgentConnected
    | ExternalAgentDisconnected | ErrorEvent | AgentResponseMetadata | AgentResponseComplete | ClientError
    | QueueStatus | Unknown
)
