"""What the fake sends when a test asks it to misbehave.

The malformed frames of each :data:`GARBAGE_KINDS` (sent into a conversation by
``FakeAgent.send_garbage``), and the kinds and JSON bodies of the signed-URL faults
(queued by ``FakeAgent.signed_url_fault``, answered in :mod:`.routes`). Pure: the control
API checks the arguments and the conversation or the routes send the result.
"""

from __future__ import annotations

import base64
import http
from typing import Any

from .audio import AudioFormat

GARBAGE_KINDS = (
    "non_json",
    "binary",
    "huge",
    "wrong_types",
    "bad_base64",
    "unknown_type",
    "missing_fields",
    "unannounced_format",
)

SIGNED_URL_FAULT_KINDS = ("timeout", "not_json", "not_ws_url")


def garbage_frames(kind: str, eid: int, reply: bytes, out_fmt: AudioFormat,
                   size: int | None = None) -> list[str | bytes | dict[str, Any]]:
    """The malformed frames of ``kind``: a dict is sent as JSON, anything else as it is.

    ``eid`` is the event id they carry, ``reply`` the reply clip in ``out_fmt`` (for
    ``unannounced_format``), ``size`` the ``huge`` padding (default 2 MiB).
    """
    frames: list[str | bytes | dict[str, Any]]
    if kind == "non_json":
        frames = ["this is not JSON {"]
    elif kind == "binary":
        frames = [b"\x00\xffnot a text frame\x00"]
    elif kind == "huge":
        n = size if size is not None else 2 * 1024 * 1024
        frames = [{"type": "huge_unknown_event", "huge_unknown_event": {"event_id": eid}, "padding": "x" * n}]
    elif kind == "wrong_types":
        frames = [
            {"type": "audio", "audio_event": {"audio_base_64": 12345, "event_id": str(eid)}},
            {"type": "ping", "ping_event": {"event_id": "soon", "ping_ms": "fast"}},
            {"type": "interruption", "interruption_event": {"event_id": [eid]}},
            {"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": []},
        ]
    elif kind == "bad_base64":
        frames = [{"type": "audio", "audio_event": {"audio_base_64": "!!not*base64!!", "event_id": eid}}]
    elif kind == "unknown_type":
        frames = [{"type": "some_future_event", "some_future_event": {"event_id": eid, "value": 42}}]
    elif kind == "missing_fields":
        frames = [
            {"type": "audio"},
            {"type": "audio", "audio_event": {"event_id": eid}},
            {"type": "ping", "ping_event": {}},
            {"type": "agent_response", "agent_response_event": {}},
            {"audio_event": {"audio_base_64": "AAAA", "event_id": eid}},
        ]
    elif kind == "unannounced_format":
        audio = reply[: out_fmt.bytes_for(0.1)]
        if out_fmt.encoding == "pcm":
            blob = audio + b"\x00"  # a trailing half sample
        else:  # mu-law of any length is valid: send a WAV file instead of raw samples
            blob = b"RIFF" + (36 + len(audio)).to_bytes(4, "little") + b"WAVEfmt " + bytes(20) + b"data" + audio
        frames = [{"type": "audio",
                   "audio_event": {"audio_base_64": base64.b64encode(blob).decode("ascii"), "event_id": eid}}]
    else:
        raise ValueError(f"unknown garbage kind {kind!r}; expected one of {', '.join(GARBAGE_KINDS)}")
    return frames


def fault_body(status: int) -> dict[str, Any]:
    """The JSON body the service gives with HTTP error ``status`` on the signed-URL endpoint."""
    if status == 422:
        return {"detail": [{"loc": ["query", "agent_id"], "msg": "invalid request (fake fault)",
                            "type": "value_error"}]}
    names = {
        401: ("invalid_api_key", "Invalid API key"),
        403: ("forbidden", "You do not have access to this agent"),
        404: ("agent_not_found", "Agent not found"),
        429: ("too_many_concurrent_requests", "Too many requests"),
        500: ("internal_server_error", "Internal server error"),
    }
    status_name, message = names.get(status, ("error", http.HTTPStatus(status).phrase))
    return {"detail": {"status": status_name, "message": message}}
