"""One WebSocket connection to the agent, the conversation on it, and what its end means.

The :class:`~.conversation.Engine` keeps one :class:`Connection` while a socket is open
(event ids restart with each); when it closes, :meth:`Connection.verdict` says whether
that was a normal end, a failure to retry or a fatal one (:mod:`.backoff`), in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .backoff import CONFIG_ERROR_TYPES, Outcome, classify_close
from .outbox import Frame, Message
from .server_messages import ErrorEvent

MAX_FRAME = 16 * 1024 * 1024  # largest server frame accepted (agent audio frames of 1.25 MB are seen)
QUEUE_REPLAY_S = 2.0  # s after the metadata in which what we write is kept, in case the server queues us
DEFAULT_FORMAT = "pcm_16000"  # what the SDKs stream before the metadata names the format

Encoder = Callable[[bytes], bytes]


@dataclass
class Connection:
    """One WebSocket connection and the conversation on it (event ids restart with each)."""

    started: float
    last_received: float
    last_sent: float
    last_ping: float
    last_audio: float = 0.0  # when user audio was last written (the service's input timeout counts audio)
    init_pending: bool = True
    opened_at: float | None = None
    conversation_id: str | None = None
    output_format: str = DEFAULT_FORMAT
    encode: Encoder | None = None
    drop_below: int = 0  # agent audio with an event_id below this is dropped (interrupted)
    current_turn_id: int | None = None
    queued: bool = False  # the server holds the conversation in its queue: it discards what we send
    sent_since_open: list[Message | Frame] | None = None  # written just after the metadata, not yet known heard
    ended_by_agent: bool = False  # end_call seen: the close that follows is a normal end
    last_error: ErrorEvent | None = None
    user_spoke: bool = False  # speech or a user message went out on this connection
    exchanged: bool = False  # ... and the agent answered it: a healthy conversation
    close_reason: str | None = None  # we closed on purpose (idle, shutdown)
    failure: str | None = None  # we closed because the server misbehaved
    close_deadline: float | None = None
    noticed: set[str] = field(default_factory=set)  # drop notices already given

    def verdict(self, code: int | None, reason: str, sent_code: int | None) -> tuple[Outcome, str]:
        """What this connection's end means, and one line saying why it ended. ``code``/``reason``:
        the server's close frame (None: there was none); ``sent_code``: the code of a close we sent."""
        if self.close_reason is not None:
            return Outcome.CLOSED, self.close_reason
        if self.failure is not None:
            return Outcome.RETRY, self.failure
        err = self.last_error
        outcome = classify_close(code, reason, err, ended_by_agent=self.ended_by_agent)
        if sent_code == 1009:  # the WebSocket layer refused an oversized frame
            text = f"the server sent a frame over the {MAX_FRAME >> 20} MiB limit"
        elif self.ended_by_agent:
            text = "the agent ended the call"
        elif err is not None and err.error_type == "max_duration_exceeded":
            text = "the conversation reached its maximum duration"
        elif code is None or code == 1006:
            text = "connection lost" + ("" if self.opened_at is not None else " before the conversation opened")
        else:
            text = f"server closed with {code}" + (f" {reason!r}" if reason else "")
            if err is not None and (err.error_type or err.message):
                text += f" ({err.error_type or 'error'}: {(err.message or err.reason or '')[:160]})"
        if outcome is Outcome.FATAL:
            if err is not None and err.error_type in CONFIG_ERROR_TYPES:
                text += " (check [session] overrides and dynamic_variables against what the agent allows)"
            else:
                text += " (check the API key and agent_id)"
        return outcome, text
