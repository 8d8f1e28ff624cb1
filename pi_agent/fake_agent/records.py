"""What the fake agent records per conversation: frames in and out, user audio, turns, close.

Times are ``time.monotonic()`` values taken by the server when a frame arrived or was sent.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

NON_JSON = "<non_json>"
"""``kind`` of a received text frame that is not a JSON object."""
BINARY = "<binary>"
"""``kind`` of a received binary frame."""
USER_AUDIO = "user_audio_chunk"
"""``kind`` of a received mic message (it has no ``type``)."""


def message_kind(message: Any) -> str:
    """The ``type`` of a message, ``user_audio_chunk`` for mic audio, else a marker."""
    if not isinstance(message, dict):
        return NON_JSON
    kind = message.get("type")
    if isinstance(kind, str):
        return kind
    if "user_audio_chunk" in message:
        return USER_AUDIO
    return "<no_type>"


@dataclass
class Received:
    """One frame from the client."""

    t: float
    kind: str
    message: dict[str, Any] | None
    """The parsed JSON object; None for non-JSON and binary frames."""
    raw: str | None = None
    """For non-JSON/binary frames: the text (cut to 200 chars) or ``<binary N bytes>``."""
    discarded: bool = False
    """It arrived while the conversation was queued: the fake dropped it unread, as the service does."""


@dataclass
class Sent:
    """One frame the fake sent."""

    t: float
    kind: str
    message: dict[str, Any] | None
    """The JSON object sent; None when the frame was not a JSON object."""
    in_spec: bool = True
    """False for garbage and in-the-wild messages that the spec does not describe."""
    raw: str | None = None
    stale: bool = False
    """Audio of a reply sent after that reply's ``interruption`` (it was in flight)."""


@dataclass
class Turn:
    """One agent turn: its event id, what it sent and whether the user cut it short."""

    event_id: int
    cause: str  # "speech", "text", "first_message", "control"
    started_at: float
    heard: str | None = None  # the user_transcript sent, if any
    audio_bytes: int = 0  # size of the whole reply
    sent_bytes: int = 0
    chunks_sent: int = 0
    audio_started_at: float | None = None
    play_until: float | None = None  # when the client finishes playing what was sent
    interrupted: bool = False
    completed: bool = False
    interruption_id: int | None = None
    """Event id of the ``interruption`` that cut this turn, as sent: newer than ``event_id``
    unless ``interruption_ids="same"``; for text input, the id of the reply that cut it."""
    interrupted_at: float | None = None
    """When that ``interruption`` was sent (not the first ``interruption`` of the conversation:
    text input is preceded by one of its own)."""
    opening_interruption_id: int | None = None
    """Event id of the ``interruption`` sent just before this turn began (text input: its own id)."""
    stale_chunks_sent: int = 0
    """Audio chunks of this turn sent after its interruption, with its old id (``stale_chunks``)."""
    stale_bytes: int = 0
    final_chunk_sent: bool = False
    """Its last audio chunk went out (with ``is_final: true`` when ``final_chunk``)."""


@dataclass
class McpCall:
    """One MCP tool call that asked the user for approval."""

    tool_call_id: str
    tool_name: str
    parameters: dict[str, Any]
    asked_at: float
    timeout: float
    outcome: str | None = None
    """``approved``, ``denied``, ``timed_out``, or ``interrupted`` (the turn was cut while
    waiting); None while it waits."""
    waited: float | None = None
    """Seconds from the ``awaiting_approval`` message to the outcome."""


@dataclass
class ConversationRecord:
    """Everything the fake saw and did in one WebSocket conversation."""

    id: str
    agent_id: str | None
    query: dict[str, str]
    output_format: str
    input_format: str
    input_rate: int
    opened_at: float
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None  # "server" or "client"
    received: list[Received] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    user_audio: bytearray = field(default_factory=bytearray)
    """All user audio decoded to s16le PCM at ``input_rate``, in arrival order."""
    user_audio_samples: int = 0
    audio_chunk_times: list[float] = field(default_factory=list)
    audio_chunk_bytes: list[int] = field(default_factory=list)
    pings: dict[int, float] = field(default_factory=dict)  # event_id -> sent at
    pongs: dict[int, float] = field(default_factory=dict)  # event_id -> answered at
    stray_pongs: list[Any] = field(default_factory=list)  # pongs that match no ping
    turns: list[Turn] = field(default_factory=list)
    transcripts: list[str] = field(default_factory=list)
    interruptions: list[int] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_results: list[dict[str, Any]] = field(default_factory=list)
    """Every ``client_tool_result`` received, matched to a call or not (a result to a call
    that expected none is recorded here, not as an anomaly)."""
    mcp_calls: list[McpCall] = field(default_factory=list)
    mcp_approval_results: list[dict[str, Any]] = field(default_factory=list)
    """Every ``mcp_tool_approval_result`` received, late or unmatched ones included."""
    queued_at: float | None = None
    """When the conversation was put in the queue (``queue_seconds`` / ``queue_timeout``)."""
    queue_outcome: str | None = None
    """``admitted`` or ``timed_out`` once the queue let it go; None if it never was queued."""
    queue_left_at: float | None = None
    discarded_audio_samples: int = 0
    """User audio (samples at ``input_rate``) that arrived while queued and was dropped."""
    init: dict[str, Any] | None = None
    anomalies: list[str] = field(default_factory=list)
    """Bad input noticed (bad base64, odd PCM length, unknown types, ...)."""

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def pings_sent(self) -> int:
        return len(self.pings)

    @property
    def pongs_received(self) -> int:
        return len(self.pongs)

    @property
    def unanswered_pings(self) -> int:
        return len(self.pings) - len(self.pongs)

    @property
    def user_audio_seconds(self) -> float:
        return self.user_audio_samples / self.input_rate

    @property
    def discarded(self) -> list[Received]:
        """Client messages that arrived while queued and were dropped unread."""
        return [r for r in self.received if r.discarded]

    @property
    def discarded_audio_seconds(self) -> float:
        return self.discarded_audio_samples / self.input_rate

    @property
    def stale_audio(self) -> list[Sent]:
        """Audio chunks sent after their reply's interruption."""
        return [s for s in self.sent if s.stale]

    def received_of(self, kind: str, *, discarded: bool | None = None) -> list[Received]:
        """Messages of ``kind``; ``discarded=False`` only those the fake acted on, True only dropped ones."""
        return [r for r in self.received if r.kind == kind and (discarded is None or r.discarded == discarded)]

    def sent_of(self, kind: str) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind]

    def received_counts(self) -> dict[str, int]:
        return dict(Counter(r.kind for r in self.received))

    def sent_counts(self) -> dict[str, int]:
        return dict(Counter(s.kind for s in self.sent))

    def summary(self) -> dict[str, Any]:
        """A JSON-ready overview (``GET /_fake/conversations``)."""
        return {
            "id": self.id,
            "agent_id": self.agent_id,
            "output_format": self.output_format,
            "input_format": self.input_format,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "closed_by": self.closed_by,
            "received": self.received_counts(),
            "sent": self.sent_counts(),
            "pings_sent": self.pings_sent,
            "pongs_received": self.pongs_received,
            "unanswered_pings": self.unanswered_pings,
            "stray_pongs": len(self.stray_pongs),
            "user_audio_seconds": self.user_audio_seconds,
            "transcripts": list(self.transcripts),
            "interruptions": list(self.interruptions),
            "interruption_ids": [t.interruption_id for t in self.turns if t.interruption_id is not None],
            "stale_chunks": len(self.stale_audio),
            "turns": len(self.turns),
            "tool_results": list(self.tool_results),
            "mcp_calls": [{"tool_name": c.tool_name, "tool_call_id": c.tool_call_id, "outcome": c.outcome,
                           "waited": c.waited} for c in self.mcp_calls],
            "queue_outcome": self.queue_outcome,
            "discarded_messages": len(self.discarded),
            "discarded_audio_seconds": self.discarded_audio_seconds,
            "anomalies": list(self.anomalies),
        }

    def received_json(self) -> dict[str, Any]:
        """Every received frame and the user audio (``GET /_fake/received``)."""
        return {
            "id": self.id,
            "messages": [{"t": r.t, "kind": r.kind, "message": r.message, "raw": r.raw, "discarded": r.discarded}
                         for r in self.received],
            "audio_rate": self.input_rate,
            "audio_base64": base64.b64encode(bytes(self.user_audio)).decode("ascii"),
            "audio_chunk_times": list(self.audio_chunk_times),
            "audio_chunk_bytes": list(self.audio_chunk_bytes),
        }

    def sent_json(self) -> dict[str, Any]:
        """Every sent frame (``GET /_fake/sent``)."""
        return {
            "id": self.id,
            "messages": [
                {"t": s.t, "kind": s.kind, "message": s.message, "in_spec": s.in_spec, "raw": s.raw, "stale": s.stale}
                for s in self.sent
            ],
        }
