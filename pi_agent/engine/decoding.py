"""Decoding a server frame of the agent protocol into one typed message.

:func:`decode` turns one server frame into one of :mod:`.server_messages`. A frame of a
type we do not know becomes :class:`~.server_messages.Unknown` (logged at debug,
ignored). A frame that breaks the contract (not JSON, binary, a required field missing
or of the wrong type, bad base64, an audio format not in :mod:`.formats`) raises
:class:`~pi_agent.errors.ProtocolError`: the caller logs it once and skips it; it never
ends the conversation.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ProtocolError
from . import server_messages as sm
from .formats import FORMATS
from .server_messages import ServerEvent

Decoder = Callable[[Mapping[str, Any]], ServerEvent]

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
    return sm.ConversationMetadata(f.text("conversation_id"), f.format("agent_output_audio_format"),
                                   f.format("user_input_audio_format"))


def _audio(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "audio_event", "audio")
    event_id = f.integer("event_id")
    return sm.Audio(event_id, _b64(f, "audio_base_64"), f.obj("alignment", required=False),
                    bool(f.flag("is_final", required=False)))


def _user_transcript(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "user_transcription_event", "user_transcript")
    return sm.UserTranscript(f.text("user_transcript"), f.integer("event_id", False))


def _tentative(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "tentative_user_transcription_event", "tentative_user_transcript")
    return sm.TentativeUserTranscript(f.text("user_transcript"), f.integer("event_id", False))


def _agent_response(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_response_event", "agent_response")
    return sm.AgentResponse(f.text("agent_response"), f.integer("event_id", False))


def _correction(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_response_correction_event", "agent_response_correction")
    return sm.AgentResponseCorrection(f.text("original_agent_response"),
                                      f.text("corrected_agent_response"), f.integer("event_id", False))


def _chat_part(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "text_response_part", "agent_chat_response_part")
    return sm.AgentChatResponsePart(f.text("text"), f.text("type"), f.identifier("event_id", False))


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
    event = _response_event("agent_response_metadata", sm.AgentResponseMetadata)(m)
    assert isinstance(event, sm.AgentResponseMetadata)
    inner = event.data.get("metadata")
    if isinstance(inner, dict):
        return sm.AgentResponseMetadata(event.event_id, inner)
    return sm.AgentResponseMetadata(event.event_id, {k: v for k, v in event.data.items() if k != "event_id"})


def _reasoning_part(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "reasoning_response_part", "agent_reasoning_response_part")
    event_id = f._get("event_id", False)
    return sm.AgentReasoningResponsePart(f.text("text"), f.text("type"),
                                         None if event_id is None else str(event_id))


def _interruption(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "interruption_event", "interruption")
    return sm.Interruption(f.integer("event_id"))


def _ping(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "ping_event", "ping")
    return sm.Ping(f.integer("event_id"), f.integer("ping_ms", False))


def _client_tool_call(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "client_tool_call", "client_tool_call")
    return sm.ClientToolCall(f.text("tool_name"), f.text("tool_call_id"),
                             f.obj("parameters", False) or {}, f.integer("event_id", False),
                             f.flag("expects_response", False) is not False)


def _rich_content(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "rich_content", "rich_content")
    return sm.RichContent(f.text("rich_content_id"), f.text("component"), f.obj("props", False) or {},
                          f.integer("event_id", False))


def _tool_request(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_tool_request", "agent_tool_request")
    return sm.AgentToolRequest(f.text("tool_name"), f.text("tool_call_id"), f.text("tool_type"),
                               f.integer("event_id", False))


def _tool_response(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_tool_response", "agent_tool_response")
    return sm.AgentToolResponse(f.text("tool_name"), f.text("tool_call_id"), f.text("tool_type", False) or "",
                                bool(f.flag("is_error", False)), f.flag("is_called", False),
                                f.integer("event_id", False))


def _tool_response_full(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_tool_response_full_payload", "agent_tool_response_full_payload")
    return sm.AgentToolResponseFullPayload(f.text("tool_name"), f.text("tool_call_id"),
                                           f.text("tool_type", False) or "", bool(f.flag("is_error", False)),
                                           f.text("full_tool_result", False) or "", f.integer("event_id", False))


def _mcp_tool_call(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "mcp_tool_call", "mcp_tool_call")
    return sm.McpToolCall(f.text("tool_name"), f.text("tool_call_id"), f.text("state", False) or "",
                          f.obj("parameters", False) or {}, f.text("tool_description", False),
                          f.integer("approval_timeout_secs", False), f.raw())


def _mcp_status(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "mcp_connection_status", "mcp_connection_status")
    return sm.McpConnectionStatus(tuple(f.array("integrations")))


def _vad_score(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "vad_score_event", "vad_score")
    return sm.VadScore(float(f.number("vad_score")))


def _context_usage(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "context_usage_event", "context_usage")
    return sm.ContextUsage(f.text("model"), f.integer("context_tokens"), f.integer("context_limit_tokens"),
                           f.integer("event_id", False))


def _asr_metadata(m: Mapping[str, Any]) -> ServerEvent:
    return sm.AsrInitiationMetadata(_Fields(m, "asr_initiation_metadata_event", "asr_initiation_metadata").raw())


def _turn_probability(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "turn_probability_internal_event", "internal_turn_probability")
    return sm.InternalTurnProbability(float(f.number("turn_probability")))


def _tentative_agent(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "tentative_agent_response_internal_event", "internal_tentative_agent_response")
    return sm.InternalTentativeAgentResponse(f.text("tentative_agent_response"))


def _agent_typing(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "agent_typing_event", "agent_typing")
    return sm.AgentTyping(f.flag("is_typing"), f.integer("duration_ms", False))


def _error(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "error_event", "error")
    return sm.ErrorEvent(f.integer("code", False), f.text("message", False), f.text("error_type", False),
                         f.text("reason", False))


def _client_error(m: Mapping[str, Any]) -> ServerEvent:
    f = _Fields(m, "error_event", "client_error")
    return sm.ClientError(f.integer("code", False), f.text("error_name", False), f.text("message", False))


def _queue_status(m: Mapping[str, Any]) -> ServerEvent:
    return sm.QueueStatus(_Fields(m, "queue_status_event", "queue_status").text("status"))


_DECODERS: dict[str, Decoder] = {
    "conversation_initiation_metadata": _metadata,
    "audio": _audio,
    "user_transcript": _user_transcript,
    "tentative_user_transcript": _tentative,
    "agent_response": _agent_response,
    "agent_response_correction": _correction,
    "agent_chat_response_part": _chat_part,
    "agent_response_metadata": _response_metadata,
    "agent_response_complete": _response_event("agent_response_complete", sm.AgentResponseComplete),
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
    "guardrail_triggered": lambda m: sm.GuardrailTriggered(),
    "internal_turn_probability": _turn_probability,
    "internal_tentative_agent_response": _tentative_agent,
    "agent_typing": _agent_typing,
    "external_agent_connected": lambda m: sm.ExternalAgentConnected(),
    "external_agent_disconnected": lambda m: sm.ExternalAgentDisconnected(),
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
        return sm.Unknown(mtype, msg)
    return decoder(msg)
