"""One fake conversation: its socket, what it sends, its timers, and how it begins and ends.

The server makes a :class:`Conversation` for each WebSocket. It owns what every part
uses (``send`` and its record, ``close``, the ``error`` that comes before a close,
``spawn``, event ids) and the lifecycle: the ``agent_id`` check, the queue, the metadata,
pings, the duration and silence timers, the agent ending the call, and the close recorded
at the end. Its parts: :class:`~.inbox.Inbox` acts on what the client sends,
:class:`~.turns.Turns` plays the agent's turns, :class:`~.tools.Tools` makes tool calls.

A conversation without ``agent_id`` is accepted, then gets ``error`` (1008,
``missing_fields``) and close 1008 "agent_id is required".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .audio import AudioFormat, audio_format
from .faults import garbage_frames
from .inbox import Inbox
from .records import ConversationRecord, Sent, message_kind
from .tools import Tools
from .turns import Turns
from .wire import SPEC_CLOSE_CODES, client_error_message, close_reason, error_message, new_id

if TYPE_CHECKING:
    from .server import FakeAgent

log = logging.getLogger("pi_agent.fake_agent")

QUEUE_INIT_WAIT = 2.0  # s a queued conversation waits for the client's initiation before the metadata


class Conversation:
    """The live side of one conversation: its socket, its parts and its tasks."""

    def __init__(self, agent: FakeAgent, ws: ServerConnection, record: ConversationRecord) -> None:
        self.agent = agent
        self.options = agent.options
        self.ws = ws
        self.record = record
        self.out_fmt: AudioFormat = audio_format(record.output_format)
        self.in_fmt: AudioFormat = audio_format(record.input_format)
        self._last_event_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.rtt_ms: int | None = None
        """The last round trip measured from a pong (sent in the next pings)."""
        self.last_input = time.monotonic()
        """When the client last sent anything (for ``receive_timeout``)."""
        self.init_received = asyncio.Event()
        """Set when the client's ``conversation_initiation_client_data`` has come."""
        self.closing = False
        self.queued = False
        self.inbox = Inbox(self)
        self.turns = Turns(self)
        self.tools = Tools(self)

    # --- plumbing -----------------------------------------------------------------

    def next_event_id(self) -> int:
        self._last_event_id += 1
        return self._last_event_id

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this conversation; it is cancelled when the conversation ends."""
        task = asyncio.ensure_future(coro)
        task.set_name(f"fake-agent {self.record.id} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, ConnectionClosed):
            log.error("conversation %s: task %s failed", self.record.id, task.get_name(), exc_info=exc)

    async def send(self, message: dict[str, Any], *, in_spec: bool = True, stale: bool = False) -> None:
        """Send one JSON message and record it (audio payloads elided unless ``record_audio``)."""
        kept = message
        if (not self.options.record_audio and message.get("type") == "audio"
                and isinstance(message.get("audio_event"), dict)):
            kept = {**message, "audio_event": {**message["audio_event"], "audio_base_64": ""}}
        item = Sent(time.monotonic(), message_kind(message), kept, in_spec, stale=stale)
        await self._send_recorded(json.dumps(message), item)

    async def send_raw(self, frame: str | bytes, kind: str) -> None:
        """Send a frame that is not a JSON object (garbage); recorded as outside the spec."""
        raw = f"<binary {len(frame)} bytes>" if isinstance(frame, bytes) else frame[:200]
        await self._send_recorded(frame, Sent(time.monotonic(), kind, None, in_spec=False, raw=raw))

    async def _send_recorded(self, frame: str | bytes, item: Sent) -> None:
        # Recorded before the await: websockets writes the frame before it first yields,
        # so the record keeps wire order even when another task sends meanwhile.
        sent = self.record.sent
        sent.append(item)
        try:
            await self.ws.send(frame)
        except ConnectionClosed:  # never reached the client
            for i in range(len(sent) - 1, -1, -1):
                if sent[i] is item:
                    del sent[i]
                    break
            raise
        finally:
            self.agent._notify()

    async def close(self, code: int, reason: str = "") -> None:
        """Close the socket (once); the close is recorded when the handshake is over."""
        if self.closing:
            return
        self.closing = True
        self.turns.stop()
        await self.ws.close(code, close_reason(reason))

    async def error_and_close(self, error_type: str | None, code: int, message: str) -> None:
        """Send ``error`` (when ``code`` is one the 1.0.0 contract allows in it), then, with
        the ``client_error`` option, 1.1.0's ``client_error``; then close with ``code``."""
        if self.closing:
            return
        if code in SPEC_CLOSE_CODES:
            await self.send(error_message(code, error_type, message))
        if self.options.client_error:
            await self.send(client_error_message(code, error_type or "unknown", message))
        await self.close(code, message)

    async def client_error_and_close(self, code: int, error_name: str, message: str) -> None:
        """Send ``client_error`` alone (whatever the option), then close with ``code``."""
        if self.closing:
            return
        await self.send(client_error_message(code, error_name, message))
        await self.close(code, message)

    # --- lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except ConnectionClosed:
            pass
        finally:
            self.closing = True
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._finish_record()

    async def _run(self) -> None:
        o = self.options
        if not self.record.agent_id:
            await self.error_and_close("missing_fields", 1008, "agent_id is required")
            return
        if o.max_concurrent is not None and self.agent._open_count() > o.max_concurrent:
            await self.queue_status()
            return
        if o.queue_seconds is not None or o.queue_timeout is not None:
            self.spawn(self._queue(o.queue_seconds, o.queue_timeout), "queue")
        else:
            self._admit()
        await self.inbox.read_loop()

    def _admit(self, *, metadata: bool = True) -> None:
        """Start the conversation proper: pings, timers, the metadata (unless already sent)."""
        o = self.options
        self.last_input = time.monotonic()
        self.spawn(self._ping_loop(), "pings")
        if o.max_duration is not None:
            self.spawn(self._max_duration(o.max_duration), "max-duration")
        if o.receive_timeout is not None:
            self.spawn(self._receive_watchdog(o.receive_timeout), "receive-timeout")
        self.spawn(self._open(metadata=metadata), "open")

    async def _queue(self, admit_after: float | None, timeout: float | None) -> None:
        """The metadata, then ``waiting`` (the order of the official widget's mock of the
        service; the JS client wants the metadata first); then ``admitted`` and the
        conversation, or ``timed_out`` and close 3008, whichever comes first (a tie admits).
        Client messages meanwhile are discarded."""
        rec = self.record
        await self._metadata(max(self.options.wait_for_init, QUEUE_INIT_WAIT))  # the init is not discarded
        self.queued = True
        rec.queued_at = time.monotonic()
        log.info("conversation %s: queued", rec.id)
        await self.send({"type": "queue_status", "queue_status_event": {"status": "waiting"}}, in_spec=False)
        if admit_after is not None and (timeout is None or admit_after <= timeout):
            await asyncio.sleep(admit_after)
            self.queued = False
            rec.queue_outcome, rec.queue_left_at = "admitted", time.monotonic()
            log.info("conversation %s: admitted after %.1f s in the queue (%d messages discarded)",
                     rec.id, rec.queue_left_at - rec.queued_at, len(rec.discarded))
            await self.send({"type": "queue_status", "queue_status_event": {"status": "admitted"}}, in_spec=False)
            self._admit(metadata=False)
            return
        assert timeout is not None
        await asyncio.sleep(timeout)
        rec.queue_outcome, rec.queue_left_at = "timed_out", time.monotonic()
        log.info("conversation %s: timed out in the queue after %.1f s", rec.id, timeout)
        await self.queue_status()

    def _finish_record(self) -> None:
        rec, protocol = self.record, self.ws.protocol
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        if rcvd is not None and (sent is None or protocol.close_rcvd_then_sent):
            rec.closed_by, rec.close_code, rec.close_reason = "client", rcvd.code, rcvd.reason
        elif sent is not None:
            rec.closed_by, rec.close_code, rec.close_reason = "server", sent.code, sent.reason
        else:
            rec.closed_by, rec.close_code, rec.close_reason = "client", 1006, "connection lost"
        self.tools.cancel_pending()
        rec.closed_at = time.monotonic()

    async def _open(self, *, metadata: bool = True) -> None:
        if metadata:
            await self._metadata()
        if self.options.first_message:
            await self.turns.start_turn("first_message", text=self.options.first_message_text)

    async def _metadata(self, wait: float | None = None) -> None:
        """The metadata, after the client's initiation (up to ``wait``, else ``wait_for_init``, seconds)."""
        wait = self.options.wait_for_init if wait is None else wait
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.init_received.wait(), wait)
        await self.send(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": self.record.id,
                    "agent_output_audio_format": self.out_fmt.name,
                    "user_input_audio_format": self.in_fmt.name,
                },
            }
        )

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.ping_interval)
            event_id = self.next_event_id()
            event: dict[str, Any] = {"event_id": event_id}
            in_spec = True
            if self.rtt_ms is not None:
                event["ping_ms"] = self.rtt_ms
            elif self.options.ping_ms_unmeasured == "null":  # 1.0.0 allows it, 1.1.0 does not
                event["ping_ms"] = None
                in_spec = False
            self.record.pings[event_id] = time.monotonic()  # before sending: the pong may beat us back
            await self.send({"type": "ping", "ping_event": event}, in_spec=in_spec)

    async def _max_duration(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        log.info("conversation %s: max duration (%.1f s) reached", self.record.id, seconds)
        await self.error_and_close("max_duration_exceeded", 1000, "Maximum conversation duration exceeded")

    async def _receive_watchdog(self, seconds: float) -> None:
        while True:
            idle = time.monotonic() - self.last_input
            if idle >= seconds:
                break
            await asyncio.sleep(seconds - idle)
        await self.error_and_close("transport_receive_timeout", 1002, f"No user input received for {seconds:g} seconds")

    # --- endings and faults -----------------------------------------------------------

    async def end_call(self) -> None:
        """The agent ends the call: ``agent_tool_response`` for ``end_call``, then close 1000."""
        log.info("conversation %s: agent ends the call", self.record.id)
        await self.send(
            {
                "type": "agent_tool_response",
                "agent_tool_response": {
                    "tool_name": "end_call",
                    "tool_call_id": new_id("toolu"),
                    "tool_type": "system",
                    "is_error": False,
                    "is_called": True,
                    "event_id": self.next_event_id(),
                },
            }
        )
        await self.close(1000, "the agent ended the call")

    async def queue_status(self) -> None:
        """What busy accounts see in the wild: ``queue_status`` timed out, then close 3008
        (the shape the official widget reads; in neither contract)."""
        if self.closing:
            return
        await self.send({"type": "queue_status", "queue_status_event": {"status": "timed_out"}}, in_spec=False)
        await self.close(3008, "too many concurrent connections")

    async def garbage(self, kind: str, size: int | None = None) -> None:
        """Send malformed frames of ``kind`` (one of :data:`~.faults.GARBAGE_KINDS`)."""
        frames = garbage_frames(kind, self.next_event_id(), self.agent.reply_audio, self.out_fmt, size)
        log.info("conversation %s: sending garbage %s", self.record.id, kind)
        for frame in frames:
            if isinstance(frame, dict):
                await self.send(frame, in_spec=False)
            else:
                await self.send_raw(frame, f"<garbage {kind}>")
