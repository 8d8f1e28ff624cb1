"""What the conversation engine does with what it receives from the server.

:meth:`Receiver.receive` decodes a frame (:mod:`.decoding`) and is the one dispatch over
the server's messages in the project (:data:`_HANDLERS`, a dict by type): one handler per
message that means something here. They keep the pongs owed, the interruption filter
(agent audio of an interrupted turn is dropped), which agent turn is playing, whether the
user and the agent exchanged anything (a healthy conversation), the server's queue, and
the error a close will be explained by; each hands the decision function its event.

:class:`Receiver` is the receiving half of :class:`~.conversation.Engine` (a mixin): the
state it reads and changes is the engine's, declared below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ProtocolError
from . import events as ev
from . import protocol as p
from .connection import QUEUE_REPLAY_S, Connection, Encoder
from .outbox import Message, Outbox

if TYPE_CHECKING:
    from .conversation import Stats

EncoderFactory = Callable[[str], Encoder]
AudioDecoder = Callable[[str, bytes], tuple[bytes, int]]


class Receiver:
    """The engine's receiving half: see the module docstring."""

    stats: Stats
    outbox: Outbox
    phase: ev.Phase
    _conn: Connection | None
    _events: list[ev.Event]
    _last_activity: float
    _encoder_factory: EncoderFactory
    _decode_audio: AudioDecoder

    def heard(self, now: float) -> None:
        """Bytes arrived (any frame, pongs too): the peer is alive."""
        if self._conn is not None:
            self._conn.last_received = now

    def receive(self, frame: str | bytes, now: float) -> None:
        """One data frame from the server."""
        conn = self._conn
        if conn is None:
            return
        conn.last_received = now
        try:
            event = p.decode(frame)
        except ProtocolError as e:
            self._protocol_error(f"skipped a malformed server frame: {e}")
            return
        self.stats.messages_in[type(event).__name__] += 1
        if type(event) in _EXCHANGE:
            self._last_activity = now  # the agent answering in words: the conversation is in use
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, conn, event, now)

    def _protocol_error(self, text: str) -> None:
        self.stats.protocol_errors += 1
        self._events.append(ev.Notice("warning", text))

    # --- one handler per server message that means something here ----------------------------

    def _on_ping(self, conn: Connection, event: p.Ping, now: float) -> None:
        self.outbox.push_control(Message("pong", p.encode_pong(event.event_id)))
        if event.ping_ms is not None:
            self.stats.ping_ms = event.ping_ms

    def _on_metadata(self, conn: Connection, event: p.ConversationMetadata, now: float) -> None:
        if conn.opened_at is not None:
            self._events.append(ev.Notice("warning", "second conversation metadata ignored"))
            return
        if self.phase is not ev.Phase.OPENING:
            return  # we are closing it already
        conn.opened_at = now
        conn.sent_since_open = []
        conn.conversation_id = event.conversation_id
        conn.output_format = event.agent_output_audio_format
        conn.encode = self._encoder_factory(event.user_input_audio_format)
        self.phase = ev.Phase.OPEN
        self.stats.conversations += 1
        self._last_activity = now
        self._events.append(ev.Opened(event.conversation_id, event.agent_output_audio_format,
                                      event.user_input_audio_format))
        if self.outbox.early:
            self._events.append(ev.Notice("info", f"sending {self.outbox.early_seconds:.1f} s of speech "
                                          "captured while connecting"))

    def _on_audio(self, conn: Connection, event: p.Audio, now: float) -> None:
        if conn.opened_at is None:
            self.stats.audio_dropped["before_metadata"] += 1
            self._events.append(ev.Notice("warning", "agent audio arrived before the conversation metadata; dropped"))
            return
        if event.event_id < conn.drop_below:
            self.stats.audio_dropped["interrupted"] += 1
            return
        try:
            pcm, rate = self._decode_audio(conn.output_format, event.audio)
        except ProtocolError as e:
            self._protocol_error(f"skipped agent audio: {e}")
            return
        new_turn = event.event_id != conn.current_turn_id
        conn.current_turn_id = event.event_id
        conn.exchanged = conn.exchanged or conn.user_spoke
        self._last_activity = now
        self._events.append(ev.AgentAudio(pcm, rate, new_turn, event.final))

    def _on_interruption(self, conn: Connection, event: p.Interruption, now: float) -> None:
        # The service numbers an interruption newer than the audio it cuts off, and answers
        # text input with an interruption whose id the reply's own audio then carries
        # (elevenlabs-python #829): only strictly older audio is stale, as the official
        # JavaScript client has it (docs/service-behaviour.md).
        conn.drop_below = max(conn.drop_below, event.event_id)
        self._events.append(ev.Interrupted(event.event_id))

    def _on_user_transcript(self, conn: Connection, event: p.UserTranscript, now: float) -> None:
        self._events.append(event)

    def _on_agent_response(self, conn: Connection, event: p.AgentResponse, now: float) -> None:
        conn.exchanged = conn.exchanged or conn.user_spoke
        self._events.append(event)

    def _on_correction(self, conn: Connection, event: p.AgentResponseCorrection, now: float) -> None:
        self._events.append(ev.AgentCorrection(event.original, event.corrected, event.event_id))

    def _on_text_part(self, conn: Connection, event: p.AgentChatResponsePart, now: float) -> None:
        self._events.append(ev.AgentTextPart(event.part_type, event.text, event.event_id))

    def _on_response_complete(self, conn: Connection, event: p.AgentResponseComplete, now: float) -> None:
        self._events.append(ev.AgentResponseComplete(event.event_id))

    def _on_response_metadata(self, conn: Connection, event: p.AgentResponseMetadata, now: float) -> None:
        self._events.append(event)

    def _on_tool_call(self, conn: Connection, event: p.ClientToolCall, now: float) -> None:
        self._events.append(ev.ToolCall(event.tool_name, event.tool_call_id, dict(event.parameters),
                                        event.expects_response))

    def _on_mcp_tool_call(self, conn: Connection, event: p.McpToolCall, now: float) -> None:
        self._events.append(ev.McpToolCall(event.tool_name, event.tool_call_id, event.state,
                                           dict(event.parameters), event.description, event.approval_timeout))

    def _on_queue_status(self, conn: Connection, event: p.QueueStatus, now: float) -> None:
        """``waiting``: what we send would be discarded, so speech is kept (the pre-buffer) and
        messages wait until ``admitted``; ``timed_out``: the server closes (3008) and we retry."""
        queued, was = event.status == "waiting", conn.queued
        if queued and not was:
            self.outbox.hold()
            if conn.opened_at is not None and now - conn.opened_at <= QUEUE_REPLAY_S:
                self.outbox.requeue(conn.sent_since_open or [])
        conn.queued = queued
        conn.sent_since_open = None
        self._events.append(ev.Queued(event.status, queued))
        if was and not queued and self.outbox.early and self.phase is ev.Phase.OPEN:
            self._events.append(ev.Notice("info", f"sending {self.outbox.early_seconds:.1f} s of speech "
                                          "captured while queued"))

    def _on_tool_response(self, conn: Connection, event: p.AgentToolResponse, now: float) -> None:
        if event.tool_name == "end_call":
            conn.ended_by_agent = True
        self._events.append(ev.AgentToolResponse(event.tool_name, event.is_error))

    def _on_error(self, conn: Connection, event: p.ErrorEvent, now: float) -> None:
        conn.last_error = event
        self._events.append(ev.ServerError(event.error_type, event.code, event.message or event.reason))

    def _on_client_error(self, conn: Connection, event: p.ClientError, now: float) -> None:
        if conn.last_error is None:  # the reason of the close that follows
            conn.last_error = p.ErrorEvent(event.code, event.message, event.name, None)
        self._events.append(ev.ServerError(event.name, event.code, event.message, kind="client_error"))

    def _on_unknown(self, conn: Connection, event: p.Unknown, now: float) -> None:
        self._events.append(ev.Notice("debug", f"ignored server message of unknown type {event.type[:60]!r}"))


_Handler = Callable[[Receiver, Connection, Any, float], None]
# What the exchange is made of besides audio (which counts where it is played): while these
# come, an on_demand conversation is not idle, e.g. a reply whose words stream before its voice.
_EXCHANGE = frozenset({p.UserTranscript, p.AgentResponse, p.AgentResponseCorrection, p.AgentChatResponsePart,
                       p.ClientToolCall, p.McpToolCall, p.AgentToolResponse, p.Interruption})

_HANDLERS: dict[type, _Handler] = {  # the one dispatch over protocol events
    p.Ping: Receiver._on_ping,
    p.ConversationMetadata: Receiver._on_metadata,
    p.Audio: Receiver._on_audio,
    p.Interruption: Receiver._on_interruption,
    p.UserTranscript: Receiver._on_user_transcript,
    p.AgentResponse: Receiver._on_agent_response,
    p.AgentResponseCorrection: Receiver._on_correction,
    p.AgentChatResponsePart: Receiver._on_text_part,
    p.AgentResponseComplete: Receiver._on_response_complete,
    p.AgentResponseMetadata: Receiver._on_response_metadata,
    p.ClientToolCall: Receiver._on_tool_call,
    p.AgentToolResponse: Receiver._on_tool_response,
    p.ErrorEvent: Receiver._on_error,
    p.ClientError: Receiver._on_client_error,
    p.QueueStatus: Receiver._on_queue_status,
    p.McpToolCall: Receiver._on_mcp_tool_call,
    p.Unknown: Receiver._on_unknown,
}  # every other message (vad_score, chat parts, unknown types, ...) is counted and ignored
