"""The ElevenLabs agent WebSocket protocol, with no I/O.

:func:`decode` turns one server frame into one typed event; every server-to-client
message of the AsyncAPI contract has its class. A frame of a type we do not know
becomes :class:`Unknown` (logged at debug, ignored). A frame that breaks the
contract (not JSON, binary, a required field missing or of the wrong type, bad
base64) raises :class:`~pi_agent.errors.ProtocolError`: the caller logs it once and
skips it; it never ends the conversation.

The ``encode_*`` functions build every client-to-server message the daemon sends.
Only JSON text goes out: a non-JSON frame makes the server close with 1008.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ProtocolError
from .formats import FORMATS


# --- server-to-client events -------------------------------------------------------------


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
Decoder = Callable[[Mapping[str, Any]], ServerEvent]


# --- decoding ----------------------------------------------------------------------------

_MISSING = object()


class _Fields:
    """Typed access to one payload object; every failure names the message and field."""

    __slots__ = ("_obj", "_where")

    def __init__(self, msg: Mapping[str, Any], key: str | None, mtype: str) -> None:
        if key is None:
            self._obj, self._where = msg, mtype
            return
        obj = msg.get(key, _MISSING)
        if obj is _MISSING:
            raise ProtocolError(f"{mtype}: missing field {key!r}")
        if not isinstance(obj, dict):
            raise ProtocolError(f"{mtype}: field {key!r} must be an object, got {type(obj).__name__}")
        self._obj, self._where = obj, f"{mtype}.{key}"

    def _get(self, name: str, required: bool) -> Any:
        value = self._obj.get(name, _MISSING)
        if value is _MISSING or (value is None and required):
            if required:
                raise ProtocolError(f"{self._where}: missing field {name!r}")
            return None
        return value

    def text(self, name: str, required: bool = True) -> Any:
        v = self._get(name, required)
        if v is not None and not isinstance(v, str):
            raise ProtocolError(f"{self._where}.{name} must be a string, got {type(v).__name__}")
        return v

    def integer(self, name: str, required: bool = True) -> Any:
        """An integer; numeric strings are accepted too (the official SDK coerces with int())."""
        v = self._get(name, required)
        if v is None:
            return None
        if isinstance(v, bool):
            raise ProtocolError(f"{self._where}.{name} must be an integer, got bool")
        if isinstance(v, int):
            return v
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            return int(v)
        if isinstance(v, float) and v.is_integer():
            return int(v)
        raise ProtocolError(f"{self._where}.{name} must be an integer, got {v!r:.40}")

    def identifier(self, name: str, required: bool = True) -> Any:
        """An id that may be an integer (the contract) or a string (``"evt_123"``, the docs)."""
        v = self._get(name, required)
        if v is None or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
            return v
        raise ProtocolError(f"{self._where}.{name} must be an integer or a string, got {type(v).__name__}")

    def number(self, name: str, required: bool = True) -> Any:
        v = self._get(name, required)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ProtocolError(f"{self._where}.{name} must be a number, got {type(v).__name__}")
        return v

    def flag(self, name: str, required: bool = True) -> Any:
        v = self._get(name, required)
        if v is not None and not isinstance(v, bool):
            raise ProtocolError(f"{self._where}.{name} must be a boolean, got {type(v).__name__}")
        return v

    def obj(self, name: str, required: bool = True) -> Any:
        v = self._get(name, required)
        if v is not None and not isinstance(v, dict):
            raise ProtocolError(f"{self._where}.{name} must be an object, got {type(v).__name__}")
        return v

    def array(self, name: str, required: bool = True) -> Any:
        v = self._get(name, required)
        if v is not None and not isinstance(v, list):
            raise ProtocolError(f"{self._where}.{name} must be an array, got {type(v).__name__}")
        return v

    def format(self, name: str) -> str:
        v = self.text(name)
        if v not in FORMATS:
            raise ProtocolError(f"{self._where}.{name}: unknown audio format {v!r:.40}")
        return str(v)

    def raw(self) -> Mapping[str, Any]:
        return self._obj


def _b64(f: _Fields, name: str) -> bytes:
    text = f.text(name)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(f"{f._where}.{name}: invalid base64 ({e})") from None


def _metadata(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "conversation_initiation_metadata_event", "conversation_initiation_metadata")
    return ConversationMetadata(f.text("conversation_id"), f.format("agent_output_audio_format"),
                                f.format("user_input_audio_format"))


def _audio(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "audio_event", "audio")
    event_id = f.integer("event_id")
    return Audio(event_id, _b64(f, "audio_base_64"), f.obj("alignment", required=False),
                 bool(f.flag("is_final", required=False)))


def _user_transcript(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "user_transcription_event", "user_transcript")
    return UserTranscript(f.text("user_transcript"), f.integer("event_id", False))


def _tentative(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "tentative_user_transcription_event", "tentative_user_transcript")
    return TentativeUserTranscript(f.text("user_transcript"), f.integer("event_id", False))


def _agent_response(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_response_event", "agent_response")
    return AgentResponse(f.text("agent_response"), f.integer("event_id", False))


def _correction(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_response_correction_event", "agent_response_correction")
    return AgentResponseCorrection(f.text("original_agent_response"),
                                   f.text("corrected_agent_response"), f.integer("event_id", False))


def _chat_part(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "text_response_part", "agent_chat_response_part")
    return AgentChatResponsePart(f.text("text"), f.text("type"), f.identifier("event_id", False))


def _response_event(mtype: str, cls: Callable[[Any, Mapping[str, Any]], ServerEvent]) -> Decoder:
    """A decoder for a message outside the copied contract: its payload object (under
    ``<type>_event`` or ``<type>``, else the message itself) is kept as it came."""
    def decode(m: Mapping[str, Any]) -> ServerEvent:
        for key in (f"{mtype}_event", mtype):
            if key in m:
                f = _Fields(m, key, mtype)
                break
        else:
            f = _Fields(m, None, mtype)
        return cls(f.identifier("event_id", False), f.raw())
    return decode


def _response_metadata(m: Mapping[str, Any]) -> ServerEvent:
    event = _response_event("agent_response_metadata", AgentResponseMetadata)(m)
    assert isinstance(event, AgentResponseMetadata)
    inner = event.data.get("metadata")
    if isinstance(inner, dict):
        return AgentResponseMetadata(event.event_id, inner)
    return AgentResponseMetadata(event.event_id, {k: v for k, v in event.data.items() if k != "event_id"})


def _reasoning_part(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "reasoning_response_part", "agent_reasoning_response_part")
    event_id = f._get("event_id", False)
    return AgentReasoningResponsePart(f.text("text"), f.text("type"),
                                      None if event_id is None else str(event_id))


def _interruption(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "interruption_event", "interruption")
    return Interruption(f.integer("event_id"))


def _ping(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "ping_event", "ping")
    return Ping(f.integer("event_id"), f.integer("ping_ms", False))


def _client_tool_call(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "client_tool_call", "client_tool_call")
    return ClientToolCall(f.text("tool_name"), f.text("tool_call_id"),
                          f.obj("parameters", False) or {}, f.integer("event_id", False),
                          f.flag("expects_response", False) is not False)


def _rich_content(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "rich_content", "rich_content")
    return RichContent(f.text("rich_content_id"), f.text("component"), f.obj("props", False) or {},
                       f.integer("event_id", False))


def _tool_request(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_tool_request", "agent_tool_request")
    return AgentToolRequest(f.text("tool_name"), f.text("tool_call_id"), f.text("tool_type"),
                            f.integer("event_id", False))


def _tool_response(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_tool_response", "agent_tool_response")
    return AgentToolResponse(f.text("tool_name"), f.text("tool_call_id"), f.text("tool_type", False) or "",
                             bool(f.flag("is_error", False)), f.flag("is_called", False),
                             f.integer("event_id", False))


def _tool_response_full(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_tool_response_full_payload", "agent_tool_response_full_payload")
    return AgentToolResponseFullPayload(f.text("tool_name"), f.text("tool_call_id"),
                                        f.text("tool_type", False) or "", bool(f.flag("is_error", False)),
                                        f.text("full_tool_result", False) or "", f.integer("event_id", False))


def _mcp_tool_call(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "mcp_tool_call", "mcp_tool_call")
    return McpToolCall(f.text("tool_name"), f.text("tool_call_id"), f.text("state", False) or "",
                       f.obj("parameters", False) or {}, f.text("tool_description", False),
                       f.integer("approval_timeout_secs", False), f.raw())


def _mcp_status(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "mcp_connection_status", "mcp_connection_status")
    return McpConnectionStatus(tuple(f.array("integrations")))


def _vad_score(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "vad_score_event", "vad_score")
    return VadScore(float(f.number("vad_score")))


def _context_usage(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "context_usage_event", "context_usage")
    return ContextUsage(f.text("model"), f.integer("context_tokens"), f.integer("context_limit_tokens"),
                        f.integer("event_id", False))


def _asr_metadata(m: Mapping[str, Any]) -> ServerEvent:
    return AsrInitiationMetadata(_Fields(m, "asr_initiation_metadata_event", "asr_initiation_metadata").raw())


def _turn_probability(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "turn_probability_internal_event", "internal_turn_probability")
    return InternalTurnProbability(float(f.number("turn_probability")))


def _tentative_agent(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "tentative_agent_response_internal_event", "internal_tentative_agent_response")
    return InternalTentativeAgentResponse(f.text("tentative_agent_response"))


def _agent_typing(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_typing_event", "agent_typing")
    return AgentTyping(f.flag("is_typing"), f.integer("duration_ms", False))


def _error(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "error_event", "error")
    return ErrorEvent(f.integer("code", False), f.text("message", False), f.text("error_type", False),
                      f.text("reason", False))


def _client_error(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "error_event", "client_error")
    return ClientError(f.integer("code", False), f.text("error_name", False), f.text("message", False))


def _queue_status(m: Mapping[str, Any]) -> ServerEvent:
    return QueueStatus(_Fields(m, "queue_status_event", "queue_status").text("status"))


_DECODERS: dict[str, Decoder] = {
    "conversation_initiation_metadata": _metadata,
    "audio": _audio,
    "user_transcript": _user_transcript,
    "tentative_user_transcript": _tentative,
    "agent_response": _agent_response,
    "agent_response_correction": _correction,
    "agent_chat_response_part": _chat_part,
    "agent_response_metadata": _response_metadata,
    "agent_response_complete": _response_event("agent_response_complete", AgentResponseComplete),
    "agent_reasoning_response_part": _reasoning_part,
    "interruption": _interruption,
    "ping": _ping,
    "client_tool_call": _client_tool_call,
    "rich_content": _rich_content,
    "agent_tool_request": _tool_request,
    "agent_tool_response": _tool_response,
    "agent_tool_response_full_payload": _tool_response_full,
    "mcp_tool_call": _mcp_tool_call,
    "mcp_connection_status": _mcp_status,
    "vad_score": _vad_score,
    "context_usage": _context_usage,
    "asr_initiation_metadata": _asr_metadata,
    "guardrail_triggered": lambda m: GuardrailTriggered(),
    "internal_turn_probability": _turn_probability,
    "internal_tentative_agent_response": _tentative_agent,
    "agent_typing": _agent_typing,
    "external_agent_connected": lambda m: ExternalAgentConnected(),
    "external_agent_disconnected": lambda m: ExternalAgentDisconnected(),
    "error": _error,
    "client_error": _client_error,
    "queue_status": _queue_status,
}

SERVER_MESSAGE_TYPES = frozenset(_DECODERS)


def decode(frame: str | bytes) -> ServerEvent:
    """Decode one WebSocket frame from the server (``bytes`` = a binary frame)."""
    if not isinstance(frame, str):
        raise ProtocolError(f"binary frame of {len(frame)} bytes (the protocol is JSON text only)")
    try:
        msg = json.loads(frame)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"frame is not JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"frame is JSON {type(msg).__name__}, not an object")
    mtype = msg.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError("message has no string 'type' field")
    decoder = _DECODERS.get(mtype)
    if decoder is None:
        return Unknown(mtype, msg)
    return decoder(msg)


# --- client-to-server messages -----------------------------------------------------------


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def encode_user_audio(chunk: bytes) -> str:
    """``{"user_audio_chunk": "<base64>"}``, built without a JSON encoder (base64 needs no escaping)."""
    return '{"user_audio_chunk":"' + base64.b64encode(chunk).decode("ascii") + '"}'


def encode_pong(event_id: int) -> str:
    return f'{{"type":"pong","event_id":{event_id:d}}}'


def encode_initiation(
    *,
    dynamic_variables: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    user_id: str | None = None,
    source: str = "unknown",
    version: str = "",
) -> str:
    msg: dict[str, Any] = {"type": "conversation_initiation_client_data"}
    if overrides:
        msg["conversation_config_override"] = dict(overrides)
    if dynamic_variables:
        msg["dynamic_variables"] = dict(dynamic_variables)
    if user_id:
        msg["user_id"] = user_id
    msg["source_info"] = {"source": source, "version": version}
    return _dumps(msg)


def encode_tool_result(tool_call_id: str, result: str, *, is_error: bool = False) -> str:
    return _dumps({"type": "client_tool_result", "tool_call_id": tool_call_id,
                   "result": str(result), "is_error": bool(is_error)})


def encode_contextual_update(text: str, context_id: str | None = None) -> str:
    """Background information for the agent; with ``context_id`` only the latest update
    of that id stays in the agent's context."""
    msg = {"type": "contextual_update", "text": text}
    if context_id is not None:
        msg["context_id"] = context_id
    return _dumps(msg)


def encode_mcp_approval(tool_call_id: str, approved: bool) -> str:
    return _dumps({"type": "mcp_tool_approval_result", "tool_call_id": tool_call_id, "is_approved": bool(approved)})


def encode_user_message(text: str) -> str:
    return _dumps({"type": "user_message", "text": text})


def encode_user_activity() -> str:
    return '{"type":"user_activity"}'
