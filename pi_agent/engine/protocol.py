"""The ElevenLabs agent WebSocket protocol, with no I/O, as one namespace.

Three owners, one name to import them by (``from pi_agent.engine import protocol as p``):

- :mod:`.server_messages`: every server-to-client message, a typed value;
- :mod:`.decoding`: :func:`decode`, one server frame to one message (a frame that breaks
  the contract raises :class:`~pi_agent.errors.ProtocolError`; an unknown type is
  :class:`Unknown`);
- :mod:`.client_messages`: the ``encode_*`` functions, every client-to-server message the
  daemon sends (JSON text only).

The audio formats the protocol names are :mod:`.formats`'.
Nothing is defined here; the names are re-exported.
"""

from __future__ import annotations

from .client_messages import (
    encode_contextual_update, encode_initiation, encode_mcp_approval, encode_pong, encode_tool_result,
    encode_user_activity, encode_user_audio, encode_user_message,
)
from .decoding import SERVER_MESSAGE_TYPES, decode
from .server_messages import (
    AgentChatResponsePart, AgentReasoningResponsePart, AgentResponse, AgentResponseComplete,
    AgentResponseCorrection, AgentResponseMetadata, AgentToolRequest, AgentToolResponse,
    AgentToolResponseFullPayload, AgentTyping, AsrInitiationMetadata, Audio, ClientError, ClientToolCall,
    ContextUsage, ConversationMetadata, ErrorEvent, ExternalAgentConnected, ExternalAgentDisconnected,
    GuardrailTriggered, InternalTentativeAgentResponse, InternalTurnProbability, Interruption,
    McpConnectionStatus, McpToolCall, Ping, QueueStatus, RichContent, ServerEvent, TentativeUserTranscript,
    Unknown, UserTranscript, VadScore,
)

__all__ = [
    "SERVER_MESSAGE_TYPES", "AgentChatResponsePart", "AgentReasoningResponsePart", "AgentResponse",
    "AgentResponseComplete", "AgentResponseCorrection", "AgentResponseMetadata", "AgentToolRequest",
    "AgentToolResponse", "AgentToolResponseFullPayload", "AgentTyping", "AsrInitiationMetadata", "Audio",
    "ClientError", "ClientToolCall", "ContextUsage", "ConversationMetadata", "ErrorEvent",
    "ExternalAgentConnected", "ExternalAgentDisconnected", "GuardrailTriggered",
    "InternalTentativeAgentResponse", "InternalTurnProbability", "Interruption", "McpConnectionStatus",
    "McpToolCall", "Ping", "QueueStatus", "RichContent", "ServerEvent", "TentativeUserTranscript", "Unknown",
    "UserTranscript", "VadScore", "decode", "encode_contextual_update", "encode_initiation",
    "encode_mcp_approval", "encode_pong", "encode_tool_result", "encode_user_activity", "encode_user_audio",
    "encode_user_message",
]
