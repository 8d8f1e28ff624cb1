"""The client-to-server messages of the agent protocol, encoded.

The ``encode_*`` functions build every client-to-server message the daemon sends. Only
JSON text goes out: a non-JSON frame makes the server close with 1008.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any


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
