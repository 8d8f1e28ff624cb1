"""Small facts of the protocol that several parts of the fake use.

The spec's error types with their close codes, the ``error`` and ``client_error``
messages, which close codes a close frame may carry, and the ids and timestamps the fake
makes up. Pure: no I/O, no state.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

SPEC_CLOSE_CODES = (1000, 1002, 1008, 1011)
"""Close codes an ``error`` event may carry (the spec's WebSocketCloseCode)."""

ERROR_CODES: dict[str, int] = {
    **dict.fromkeys(
        [
            "invalid_message", "telephony_agent_error", "mcp_tool_error", "mcp_https_error", "value_error",
            "missing_fields", "override_error", "missing_dynamic_variable_transfer", "missing_dynamic_variable",
        ],
        1008,
    ),
    **dict.fromkeys(
        [
            "safety_violation", "llm_timeout", "transport_receive_timeout", "asyncio_timeout", "http_exception",
            "llm_error", "custom_llm_error", "cascade_brain_error", "asr_transcription_error", "vad_error",
            "turn_probability_error", "tts_cascade_error", "redis_timeout_error",
        ],
        1002,
    ),
    "max_duration_exceeded": 1000,
    "unknown": 1011,
    "websocket_disconnect": 1011,
    "unknown_websocket_crash": 1011,
}
"""Every ``error_type`` of the spec, with the close code the spec gives it."""


def new_id(prefix: str) -> str:
    """A fresh random id such as ``conv_<24 hex digits>``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def error_message(code: int, error_type: str | None, message: str) -> dict[str, Any]:
    """The 1.0.0 contract's ``error`` event."""
    event: dict[str, Any] = {"code": code, "message": message, "reason": message}
    if error_type is not None:
        event["error_type"] = error_type
    return {"type": "error", "error_event": event}


def client_error_message(code: int, error_name: str, message: str) -> dict[str, Any]:
    """1.1.0's ``client_error``: what the 1.0.0 contract's ``error`` says, named differently."""
    return {"type": "client_error", "error_event": {"code": code, "error_name": error_name, "message": message}}


def timestamp() -> str:
    """Now as ISO 8601 in UTC (``mcp_tool_call.timestamp``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def close_code_ok(code: int) -> bool:
    """Whether ``code`` may be sent in a close frame."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes a close frame has room for."""
    return text.encode()[:123].decode(errors="ignore")
