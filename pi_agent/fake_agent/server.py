"""A protocol-faithful fake ElevenLabs agent on loopback, for tests, demos and development.

One port serves the conversation WebSocket (``/v1/convai/conversation``), the signed-URL
endpoint (``/v1/convai/conversation/get-signed-url``, alias ``get_signed_url``) and a
small JSON test API (``/_fake/conversations``, ``/_fake/received``, ``/_fake/sent``,
``/_fake/control``), all plain HTTP GETs answered through websockets' ``process_request``.

A conversation: metadata, pings every ``ping_interval`` with increasing event ids, an
energy gate on the user's audio; at the end of an utterance one agent turn with a fresh
event id shared by its ``user_transcript``, ``agent_response`` and audio chunks (the
shipped reply clip in the announced format). User speech while a turn is still playing
at the client gets ``interruption`` (with a fresh id, newer than the turn's) and the rest of
that turn is not sent; text input gets an ``interruption`` carrying its reply's own id.
``docs/service-behaviour.md`` says which service behaviour each option imitates.

A conversation without ``agent_id`` is accepted, then gets ``error`` (1008,
``missing_fields``) and close 1008 "agent_id is required".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import http
import json
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .audio import REPLY_WAV, AudioFormat, EnergyGate, SpeechEnded, SpeechStarted, audio_format, decode, reply_audio
from .options import FakeAgentOptions
from .records import BINARY, NON_JSON, USER_AUDIO, ConversationRecord, McpCall, Received, Sent, Turn, message_kind

log = logging.getLogger("pi_agent.fake_agent")
ws_log = logging.getLogger("pi_agent.fake_agent.websockets")
"""websockets' own logger for the fake: one INFO line per HTTP request is noise, so
it starts at WARNING (lower it to see every request)."""
ws_log.setLevel(logging.WARNING)

WS_PATH = "/v1/convai/conversation"
SIGNED_URL_PATHS = ("/v1/convai/conversation/get-signed-url", "/v1/convai/conversation/get_signed_url")
MAX_INCOMING = 16 * 1024 * 1024
OPEN_TIMEOUT = 60.0  # also caps how long a signed-URL "timeout" fault can hold a request
QUEUE_INIT_WAIT = 2.0  # s a queued conversation waits for the client's initiation before the metadata

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


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def _error_message(code: int, error_type: str | None, message: str) -> dict[str, Any]:
    event: dict[str, Any] = {"code": code, "message": message, "reason": message}
    if error_type is not None:
        event["error_type"] = error_type
    return {"type": "error", "error_event": event}


def _client_error_message(code: int, error_name: str, message: str) -> dict[str, Any]:
    """1.1.0's ``client_error``: what the 1.0.0 contract's ``error`` says, named differently."""
    return {"type": "client_error", "error_event": {"code": code, "error_name": error_name, "message": message}}


def _timestamp() -> str:
    """Now as ISO 8601 in UTC (``mcp_tool_call.timestamp``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _close_code_ok(code: int) -> bool:
    """Whether ``code`` may be sent in a close frame."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _close_reason(text: str) -> str:
    """``text`` cut to the 123 bytes a close frame has room for."""
    return text.encode()[:123].decode(errors="ignore")


def _http(status: int, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            ("Cache-Control", "no-store"),
            *extra,
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


def _json(status: int, obj: Any, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    return _http(status, json.dumps(obj).encode(), "application/json", extra)


def _text(status: int, text: str, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    return _http(status, text.encode(), "text/plain; charset=utf-8", extra)


def _fault_body(status: int) -> dict[str, Any]:
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


@dataclass
class _Signature:
    agent_id: str
    used: bool = False


class _Session:
    """The live side of one conversation: its socket, gate, current turn and tasks."""

    def __init__(self, agent: FakeAgent, ws: ServerConnection, record: ConversationRecord) -> None:
        self.agent = agent
        self.options = agent.options
        self.ws = ws
        self.record = record
        self.out_fmt: AudioFormat = audio_format(record.output_format)
        self.in_fmt: AudioFormat = audio_format(record.input_format)
        o = self.options
        self.gate = EnergyGate(self.in_fmt.rate, o.gate_threshold_db, o.gate_min_speech_ms, o.gate_end_silence_ms)
        self._last_event_id = 0
        self.turn: Turn | None = None
        self._turn_task: asyncio.Task[None] | None = None
        self._turn_stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_tools: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._pending_mcp: dict[str, asyncio.Future[bool]] = {}
        self._mcp_service_id = _new_id("mcp_server")
        self._user_turns = 0
        self._completed_turns = 0
        self._rtt_ms: int | None = None
        self._last_input = time.monotonic()
        self._init = asyncio.Event()
        self._closing = False
        self._queued = False

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
        if self._closing:
            return
        self._closing = True
        self._turn_stop.set()
        await self.ws.close(code, _close_reason(reason))

    async def error_and_close(self, error_type: str | None, code: int, message: str) -> None:
        """Send ``error`` (when ``code`` is one the 1.0.0 contract allows in it), then, with
        the ``client_error`` option, 1.1.0's ``client_error``; then close with ``code``."""
        if self._closing:
            return
        if code in SPEC_CLOSE_CODES:
            await self.send(_error_message(code, error_type, message))
        if self.options.client_error:
            await self.send(_client_error_message(code, error_type or "unknown", message))
        await self.close(code, message)

    async def client_error_and_close(self, code: int, error_name: str, message: str) -> None:
        """Send ``client_error`` alone (whatever the option), then close with ``code``."""
        if self._closing:
            return
        await self.send(_client_error_message(code, error_name, message))
        await self.close(code, message)

    # --- lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except ConnectionClosed:
            pass
        finally:
            self._closing = True
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
        await self._read_loop()

    def _admit(self, *, metadata: bool = True) -> None:
        """Start the conversation proper: pings, timers, the metadata (unless already sent)."""
        o = self.options
        self._last_input = time.monotonic()
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
        self._queued = True
        rec.queued_at = time.monotonic()
        log.info("conversation %s: queued", rec.id)
        await self.send({"type": "queue_status", "queue_status_event": {"status": "waiting"}}, in_spec=False)
        if admit_after is not None and (timeout is None or admit_after <= timeout):
            await asyncio.sleep(admit_after)
            self._queued = False
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
        for fut in self._pending_tools.values():
            fut.cancel()
        for approval in self._pending_mcp.values():
            approval.cancel()
        rec.closed_at = time.monotonic()

    async def _open(self, *, metadata: bool = True) -> None:
        if metadata:
            await self._metadata()
        if self.options.first_message:
            await self.start_turn("first_message", text=self.options.first_message_text)

    async def _metadata(self, wait: float | None = None) -> None:
        """The metadata, after the client's initiation (up to ``wait``, else ``wait_for_init``, seconds)."""
        wait = self.options.wait_for_init if wait is None else wait
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._init.wait(), wait)
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
            if self._rtt_ms is not None:
                event["ping_ms"] = self._rtt_ms
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
            idle = time.monotonic() - self._last_input
            if idle >= seconds:
                break
            await asyncio.sleep(seconds - idle)
        await self.error_and_close("transport_receive_timeout", 1002, f"No user input received for {seconds:g} seconds")

    # --- input ----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        async for frame in self.ws:
            t = time.monotonic()
            self._last_input = t
            if self._closing:
                continue
            kind, message = self._note_received(frame, t, discarded=self._queued)
            if self._queued:
                self._count_discarded(kind, message)
                continue
            if message is None:
                await self._invalid("binary frame" if kind == BINARY else "non-JSON text frame")
                continue
            try:
                await self._handle(kind, message, t)
            except ConnectionClosed:
                raise
            except Exception:  # our bug: log it, keep the conversation going
                log.exception("conversation %s: failed to handle %s", self.record.id, kind)
                self.record.anomalies.append(f"internal error handling {kind}")

    def _receive(self, item: Received) -> None:
        self.record.received.append(item)
        self.agent._notify()

    def _note_received(self, frame: str | bytes, t: float, *, discarded: bool) -> tuple[str, dict[str, Any] | None]:
        """Record one client frame; its kind, and its JSON object (None: binary or not an object)."""
        if isinstance(frame, bytes):
            self._receive(Received(t, BINARY, None, f"<binary {len(frame)} bytes>", discarded=discarded))
            return BINARY, None
        try:
            message = json.loads(frame)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._receive(Received(t, NON_JSON, None, frame[:200], discarded=discarded))
            return NON_JSON, None
        kind = message_kind(message)
        if kind == USER_AUDIO and not self.options.record_audio:
            self._receive(Received(t, kind, None, "<audio not recorded>", discarded=discarded))
        else:
            self._receive(Received(t, kind, message, discarded=discarded))
        return kind, message

    def _count_discarded(self, kind: str, message: dict[str, Any] | None) -> None:
        """A frame that arrived while queued was dropped unread: how much user audio it held
        is counted, so a test can tell what a client lost."""
        if kind == USER_AUDIO and message is not None:
            with contextlib.suppress(binascii.Error, ValueError, TypeError):
                data = base64.b64decode(message["user_audio_chunk"], validate=True)
                self.record.discarded_audio_samples += len(decode(data, self.in_fmt))

    async def _invalid(self, what: str) -> None:
        self.record.anomalies.append(what)
        if self.options.strict_input:
            await self.error_and_close("invalid_message", 1008, "Invalid message received")

    async def _handle(self, kind: str, message: dict[str, Any], t: float) -> None:
        rec = self.record
        if kind == USER_AUDIO:
            await self._on_audio(message["user_audio_chunk"], t)
        elif kind == "pong":
            event_id = message.get("event_id")
            if type(event_id) is int and event_id in rec.pings and event_id not in rec.pongs:
                rec.pongs[event_id] = t
                self._rtt_ms = round((t - rec.pings[event_id]) * 1000)
            else:
                rec.stray_pongs.append(event_id)
        elif kind == "conversation_initiation_client_data":
            rec.init = message
            self._init.set()
        elif kind == "user_message":
            text = message.get("text")
            if text is not None and not isinstance(text, str):
                rec.anomalies.append("user_message text is not a string")
                return
            log.info("conversation %s: user message %r", rec.id, text)
            await self.start_turn("text")
        elif kind == "multimodal_message":  # text and a file: answered like text input
            log.info("conversation %s: multimodal message", rec.id)
            await self.start_turn("text")
        elif kind == "client_tool_result":
            rec.tool_results.append(message)  # a result to a call that expected none is kept too
            future = self._pending_tools.get(str(message.get("tool_call_id")))
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == "mcp_tool_approval_result":
            rec.mcp_approval_results.append(message)
            approved = message.get("is_approved")
            if not isinstance(approved, bool):
                rec.anomalies.append("mcp_tool_approval_result is_approved is not a boolean")
                return
            approval = self._pending_mcp.get(str(message.get("tool_call_id")))
            if approval is not None and not approval.done():
                approval.set_result(approved)
        elif kind in ("contextual_update", "user_activity", "feedback"):
            pass  # recorded above; the fake has no use for them
        else:
            rec.anomalies.append(f"unknown message type {kind!r}")

    async def _on_audio(self, payload: Any, t: float) -> None:
        rec = self.record
        if not isinstance(payload, str):
            rec.anomalies.append("user_audio_chunk is not a string")
            return
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            rec.anomalies.append("user_audio_chunk is not valid base64")
            return
        if self.in_fmt.encoding == "pcm" and len(data) % 2:
            rec.anomalies.append(f"odd-length PCM chunk ({len(data)} bytes)")
        samples = decode(data, self.in_fmt)
        if self.options.record_audio:
            rec.user_audio += samples.astype("<i2").tobytes()
        rec.user_audio_samples += len(samples)
        rec.audio_chunk_times.append(t)
        rec.audio_chunk_bytes.append(len(data))
        for event in self.gate.feed(samples):
            if isinstance(event, SpeechStarted):
                if self.turn_active():
                    await self.interrupt()
            elif isinstance(event, SpeechEnded):
                self._user_turns += 1
                heard = self.options.transcript or f"[{event.duration:.1f} s of speech]"
                first = self._user_turns == 1
                await self.start_turn("speech", heard=heard, tool=self.options.tool_call if first else None,
                                      mcp=self.options.mcp_approval if first else None)

    # --- agent turns ----------------------------------------------------------------

    def turn_active(self) -> bool:
        """True while the current turn is thinking, sending or still playing at the client."""
        return self._turn_task is not None and not self._turn_task.done()

    async def interrupt(self, wire_id: int | None = None) -> bool:
        """Barge-in: stop the current turn and send ``interruption``: with ``wire_id`` if
        given, else a fresh id newer than the turn (``interruption_ids="newer"``, as the
        service numbers it) or the turn's own id (``"same"``). Then ``stale_chunks`` more
        chunks of the cut reply, with its old id. False when there was nothing to interrupt."""
        turn = self.turn
        if turn is None or not self.turn_active() or turn.interrupted:
            return False
        turn.interrupted = True
        self._turn_stop.set()
        if wire_id is None:
            wire_id = self.next_event_id() if self.options.interruption_ids == "newer" else turn.event_id
        turn.interruption_id = wire_id
        self.record.interruptions.append(turn.event_id)
        log.info("conversation %s: turn %d interrupted (interruption %d)", self.record.id, turn.event_id, wire_id)
        turn.interrupted_at = time.monotonic()
        await self.send({"type": "interruption", "interruption_event": {"event_id": wire_id}})
        await self._send_stale(turn)
        return True

    async def _send_stale(self, turn: Turn) -> None:
        """Up to ``stale_chunks`` chunks of ``turn``'s unsent audio, with its old id: what was
        already on its way when the interruption was decided. None before its audio began."""
        count = self.options.stale_chunks
        if count <= 0 or turn.audio_started_at is None or turn.cause == "flood":
            return
        audio, chunk = self.agent._reply, self._chunk_bytes()
        offset = turn.sent_bytes + turn.stale_bytes
        while count > 0 and offset < len(audio):
            piece = audio[offset : offset + chunk]
            offset += len(piece)
            turn.stale_chunks_sent += 1
            turn.stale_bytes += len(piece)
            await self.send(self._audio_message(piece, turn, last=offset >= len(audio)), stale=True)
            count -= 1

    def _chunk_bytes(self) -> int:
        return self.out_fmt.bytes_for(self.options.chunk_ms / 1000)

    def _audio_message(self, piece: bytes, turn: Turn, *, last: bool) -> dict[str, Any]:
        """One ``audio`` message of ``turn``; its last chunk says ``is_final`` (1.1.0)."""
        event: dict[str, Any] = {"audio_base_64": base64.b64encode(piece).decode("ascii"), "event_id": turn.event_id}
        if last:
            turn.final_chunk_sent = True
            if self.options.final_chunk:
                event["is_final"] = True
        return {"type": "audio", "audio_event": event}

    async def start_turn(
        self, cause: str, *, heard: str | None = None, tool: str | None = None, text: str | None = None,
        mcp: str | None = None,
    ) -> int:
        """Start an agent turn (interrupting one still running); return its event id.

        Text input (``cause="text"``) with ``text_interruption``: one ``interruption`` carrying
        the new turn's own id goes first, whether or not a turn was playing (elevenlabs-python #829).
        """
        opening: int | None = None
        if cause == "text" and self.options.text_interruption:
            event_id = opening = self.next_event_id()
            if not await self.interrupt(wire_id=event_id):  # nothing playing: the interruption all the same
                await self.send({"type": "interruption", "interruption_event": {"event_id": event_id}})
        else:
            if self.turn_active():
                await self.interrupt()
            event_id = self.next_event_id()
        turn = Turn(event_id=event_id, cause=cause, started_at=time.monotonic(), heard=heard,
                    opening_interruption_id=opening)
        self.turn = turn
        self.record.turns.append(turn)
        self._turn_stop = asyncio.Event()
        self._turn_task = self.spawn(
            self._run_turn(turn, self._turn_stop, tool, mcp, text or self.options.reply_text), f"turn {turn.event_id}"
        )
        return turn.event_id

    async def flood(self, seconds: float) -> int:
        """An agent gone wrong: a turn of ``seconds`` of audio sent as fast as the connection
        takes it (one pre-encoded chunk again and again, recorded once). Returns its event id."""
        if self.turn_active():
            await self.interrupt()
        turn = Turn(event_id=self.next_event_id(), cause="flood", started_at=time.monotonic())
        self.turn = turn
        self.record.turns.append(turn)
        self._turn_stop = asyncio.Event()
        self._turn_task = self.spawn(self._flood(turn, self._turn_stop, seconds), f"flood {turn.event_id}")
        return turn.event_id

    async def _flood(self, turn: Turn, stop: asyncio.Event, seconds: float) -> None:
        chunk = self._chunk_bytes()
        clip = self.agent._reply
        middle = (len(clip) - chunk) // 4 * 2  # from the middle of the clip: speech, not a pause
        piece = (clip * (chunk // max(1, len(clip)) + 1))[max(0, middle):][:chunk]
        frame = json.dumps({"type": "audio", "audio_event": {
            "audio_base_64": base64.b64encode(piece).decode("ascii"), "event_id": turn.event_id}})
        count = max(1, round(self.out_fmt.bytes_for(seconds) / chunk))
        log.info("conversation %s: flooding %.0f s of audio in %d chunks", self.record.id, seconds, count)
        self.record.sent.append(Sent(time.monotonic(), "audio", {"type": "audio", "audio_event": {
            "audio_base_64": "", "event_id": turn.event_id}}, raw=f"<flood of {count} chunks>"))
        turn.audio_started_at = time.monotonic()
        for _ in range(count):
            if stop.is_set():
                return
            await self.ws.send(frame)
            turn.chunks_sent += 1
            turn.sent_bytes += len(piece)
        turn.play_until = turn.audio_started_at + seconds
        self.agent._notify()
        await self._pause(stop, turn.play_until - time.monotonic())

    async def _pause(self, stop: asyncio.Event, seconds: float) -> bool:
        """Wait ``seconds``; True if ``stop`` was set meanwhile."""
        if stop.is_set():
            return True
        if seconds <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        return stop.is_set()  # the timeout may win a race with a stop set meanwhile

    async def _run_turn(self, turn: Turn, stop: asyncio.Event, tool: str | None, mcp: str | None,
                        text: str) -> None:
        o, rec, eid = self.options, self.record, turn.event_id
        if await self._pause(stop, o.reply_delay):
            return
        if turn.heard is not None:
            rec.transcripts.append(turn.heard)
            await self.send({"type": "user_transcript",
                             "user_transcription_event": {"user_transcript": turn.heard, "event_id": eid}})
        if tool is not None:
            await self.call_tool(tool, o.tool_parameters, event_id=eid, stop=stop)
        if mcp is not None and not stop.is_set():
            await self.ask_mcp_approval(mcp, o.tool_parameters, stop=stop)
        if stop.is_set():
            return
        if o.response_events:  # 1.1.0's shape: {metadata, event_id}
            await self.send({"type": "agent_response_metadata", "agent_response_metadata_event": {
                "metadata": {"conversation_id": rec.id}, "event_id": eid}})
        if o.stream_text and await self._stream_text(text, eid, stop):
            return
        await self.send({"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": eid}})
        audio = self.agent._reply
        chunk = self._chunk_bytes()
        turn.audio_bytes = len(audio)
        log.info(
            "conversation %s: turn %d (%s)%s: %.1f s of audio",
            rec.id, eid, turn.cause, f" after {turn.heard!r}" if turn.heard else "", self.out_fmt.seconds(len(audio)),
        )
        start = time.monotonic()
        turn.audio_started_at = start
        for offset in range(0, len(audio), chunk):
            due = start + self.out_fmt.seconds(offset) / o.send_speed
            if await self._pause(stop, due - time.monotonic()):
                return
            piece = audio[offset : offset + chunk]
            # counted before the send: an interruption while it drains must not send this piece again as stale
            turn.sent_bytes += len(piece)
            turn.chunks_sent += 1
            turn.play_until = start + self.out_fmt.seconds(turn.sent_bytes)
            await self.send(self._audio_message(piece, turn, last=offset + len(piece) >= len(audio)))
        if o.response_events:  # "finished generating" (1.1.0): all of it sent, not yet all played
            await self.send({"type": "agent_response_complete", "agent_response_complete_event": {"event_id": eid}})
        if await self._pause(stop, (turn.play_until or 0) - time.monotonic()):
            return
        turn.completed = True
        self._completed_turns += 1
        self.agent._notify()
        if o.end_call_after is not None and self._completed_turns >= o.end_call_after:
            await self.end_call()

    async def _stream_text(self, text: str, eid: int, stop: asyncio.Event) -> bool:
        """The reply's text as it is "generated": start, a delta per word, stop. The contract
        types the id as an integer; ``text_part_ids="string"`` sends ``"evt_<n>"`` as the
        official docs show (then the parts are recorded as outside the contract).
        Returns True if the turn was stopped meanwhile."""
        o = self.options
        part_id: int | str = eid if o.text_part_ids == "integer" else f"evt_{eid}"
        in_spec = o.text_part_ids == "integer"
        words = text.split(" ")
        pieces = ["", *(w + (" " if n < len(words) - 1 else "") for n, w in enumerate(words)), ""]
        for n, piece in enumerate(pieces):
            kind = "start" if n == 0 else "stop" if n == len(pieces) - 1 else "delta"
            await self.send({"type": "agent_chat_response_part", "text_response_part": {
                "text": piece, "type": kind, "event_id": part_id}}, in_spec=in_spec)
            if kind == "delta" and await self._pause(stop, o.text_part_ms / 1000):
                return True
        return False

    async def call_tool(
        self,
        name: str,
        parameters: Mapping[str, object],
        *,
        event_id: int | None = None,
        stop: asyncio.Event | None = None,
        expects_response: bool | None = None,
    ) -> dict[str, Any] | None:
        """Send ``client_tool_call`` and wait (bounded) for its ``client_tool_result``; when
        it ``expects_response`` False (default: ``tool_expects_response``), go on at once."""
        expects = self.options.tool_expects_response if expects_response is None else expects_response
        call_id = _new_id("toolu")
        call = {
            "tool_name": name,
            "tool_call_id": call_id,
            "parameters": dict(parameters),
            "event_id": event_id if event_id is not None else self.next_event_id(),
            "expects_response": expects,
        }
        self.record.tool_calls.append(call)
        log.info("conversation %s: client tool call %s (%s)%s", self.record.id, name, call_id,
                 "" if expects else ", no result expected")
        if not expects:
            await self.send({"type": "client_tool_call", "client_tool_call": call})
            return None
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending_tools[call_id] = future
        try:
            await self.send({"type": "client_tool_call", "client_tool_call": call})
            stopped: asyncio.Future[Any] = asyncio.ensure_future((stop or asyncio.Event()).wait())
            try:
                done, _ = await asyncio.wait(
                    [future, stopped], timeout=self.options.tool_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                stopped.cancel()
            if future in done:
                return future.result()
            if not done:
                self.record.anomalies.append(
                    f"no client_tool_result for {call_id} within {self.options.tool_timeout:g} s")
            return None
        finally:
            self._pending_tools.pop(call_id, None)

    async def ask_mcp_approval(
        self, name: str, parameters: Mapping[str, object], *, stop: asyncio.Event | None = None
    ) -> McpCall:
        """An MCP tool call that needs the user's approval: ``mcp_tool_call`` in state
        ``awaiting_approval``, then wait for ``mcp_tool_approval_result`` (up to
        ``mcp_approval_timeout``); ``success`` when approved, ``failure`` when denied, timed
        out or cut short by an interruption. The outcome is recorded in ``record.mcp_calls``."""
        timeout = self.options.mcp_approval_timeout
        call_id = _new_id("toolu")
        base = {
            "service_id": self._mcp_service_id,
            "tool_call_id": call_id,
            "tool_name": name,
            "tool_description": f"{name} (a tool of the fake agent's MCP server)",
            "parameters": dict(parameters),
        }
        call = McpCall(call_id, name, dict(parameters), time.monotonic(), timeout)
        approval: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending_mcp[call_id] = approval
        self.record.mcp_calls.append(call)
        log.info("conversation %s: MCP tool call %s (%s) awaits approval", self.record.id, name, call_id)
        try:
            await self.send({"type": "mcp_tool_call", "mcp_tool_call": {
                **base, "timestamp": _timestamp(), "state": "awaiting_approval",
                "approval_timeout_secs": max(1, math.ceil(timeout))}})
            stopped: asyncio.Future[Any] = asyncio.ensure_future((stop or asyncio.Event()).wait())
            try:
                done, _ = await asyncio.wait([approval, stopped], timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
        finally:
            self._pending_mcp.pop(call_id, None)
        if approval in done:
            call.outcome = "approved" if approval.result() else "denied"
        else:
            call.outcome = "interrupted" if done else "timed_out"
        call.waited = time.monotonic() - call.asked_at
        log.info("conversation %s: MCP tool call %s %s after %.1f s", self.record.id, call_id, call.outcome,
                 call.waited)
        if self._closing:  # the conversation is ending: nobody to tell
            return call
        if call.outcome == "approved":
            final = {"state": "success", "result": [{"type": "text", "text": f"{name}: done"}]}
        else:
            final = {"state": "failure", "error_message": {
                "denied": "The user denied the tool call",
                "timed_out": f"No approval within {timeout:g} s",
                "interrupted": "The tool call was cancelled by an interruption",
            }[call.outcome]}
        await self.send({"type": "mcp_tool_call", "mcp_tool_call": {**base, "timestamp": _timestamp(), **final}})
        return call

    # --- endings and faults -----------------------------------------------------------

    async def end_call(self) -> None:
        """The agent ends the call: ``agent_tool_response`` for ``end_call``, then close 1000."""
        log.info("conversation %s: agent ends the call", self.record.id)
        await self.send(
            {
                "type": "agent_tool_response",
                "agent_tool_response": {
                    "tool_name": "end_call",
                    "tool_call_id": _new_id("toolu"),
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
        if self._closing:
            return
        await self.send({"type": "queue_status", "queue_status_event": {"status": "timed_out"}}, in_spec=False)
        await self.close(3008, "too many concurrent connections")

    async def garbage(self, kind: str, size: int | None = None) -> None:
        """Send malformed frames of ``kind`` (one of :data:`GARBAGE_KINDS`)."""
        eid = self.next_event_id()
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
            audio = self.agent._reply[: self.out_fmt.bytes_for(0.1)]
            if self.out_fmt.encoding == "pcm":
                blob = audio + b"\x00"  # a trailing half sample
            else:  # mu-law of any length is valid: send a WAV file instead of raw samples
                blob = b"RIFF" + (36 + len(audio)).to_bytes(4, "little") + b"WAVEfmt " + bytes(20) + b"data" + audio
            frames = [{"type": "audio",
                       "audio_event": {"audio_base_64": base64.b64encode(blob).decode("ascii"), "event_id": eid}}]
        else:
            raise ValueError(f"unknown garbage kind {kind!r}; expected one of {', '.join(GARBAGE_KINDS)}")
        log.info("conversation %s: sending garbage %s", self.record.id, kind)
        for frame in frames:
            if isinstance(frame, dict):
                await self.send(frame, in_spec=False)
            else:
                await self.send_raw(frame, f"<garbage {kind}>")


class FakeAgent:
    """The fake agent server. Use ``async with FakeAgent(FakeAgentOptions(port=0)) as agent:``.

    Records every conversation in :attr:`conversations`; the control methods act on the
    newest open conversation unless given ``conversation=<id>``. They raise
    ``LookupError`` when there is no such open conversation and ``ValueError`` for bad
    arguments.
    """

    def __init__(self, options: FakeAgentOptions | None = None) -> None:
        self.options = options or FakeAgentOptions()
        self.conversations: list[ConversationRecord] = []
        self.port: int = self.options.port
        self._reply = b""
        self._server: Server | None = None
        self._sessions: dict[str, _Session] = {}
        self._signatures: dict[str, _Signature] = {}
        self._url_faults: deque[dict[str, Any]] = deque()
        self._handshake_faults: deque[int] = deque()
        self._changed = asyncio.Event()
        self._stopped = False

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Listen; after this, :attr:`port` and :attr:`http_url` are final."""
        if self._server is not None:
            return
        o = self.options
        clip = Path(o.reply_wav) if o.reply_wav else REPLY_WAV
        self._reply = await asyncio.to_thread(reply_audio, audio_format(o.output_format), o.reply_seconds, clip)
        self._server = await ws_serve(
            self._handler,
            o.host,
            o.port,
            process_request=self._process_request,
            # The official JavaScript client offers the `convai` subprotocol (a browser fails a
            # connection whose offer is not selected); the Python SDK and pi-agent offer none.
            select_subprotocol=lambda _connection, offered: Subprotocol("convai") if "convai" in offered else None,
            max_size=MAX_INCOMING,
            ping_interval=None,
            open_timeout=OPEN_TIMEOUT,
            close_timeout=2.0,
            logger=ws_log,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("fake agent listening on %s (output %s, input %s)", self.http_url, o.output_format, o.input_format)

    async def stop(self) -> None:
        """Close every conversation (1001) and stop listening. Idempotent."""
        if self._server is None or self._stopped:
            return
        self._stopped = True
        self._server.close()
        await self._server.wait_closed()
        log.info("fake agent stopped")

    async def __aenter__(self) -> FakeAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def http_url(self) -> str:
        """``http://HOST:PORT``: the base URL an ElevenLabs client is given."""
        return f"http://{self._url_host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT/v1/convai/conversation`` (add ``?agent_id=...``)."""
        return f"ws://{self._url_host}:{self.port}{WS_PATH}"

    @property
    def _url_host(self) -> str:
        host = self.options.host
        return f"[{host}]" if ":" in host else host

    # --- records and waiting ----------------------------------------------------------

    @property
    def latest(self) -> ConversationRecord:
        """The newest conversation, open or closed; ``LookupError`` before the first one."""
        if not self.conversations:
            raise LookupError("no conversation yet")
        return self.conversations[-1]

    @property
    def reply_audio(self) -> bytes:
        """The reply clip every agent turn sends, in the output format (after :meth:`start`)."""
        return self._reply

    def conversation(self, conversation_id: str) -> ConversationRecord:
        for record in self.conversations:
            if record.id == conversation_id:
                return record
        raise LookupError(f"no conversation {conversation_id!r}")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
        """Wait until ``predicate()`` is true, re-checking whenever anything is recorded.

        A ``LookupError`` from the predicate (``agent.latest`` before the first
        conversation, ``turns[0]`` before the first turn) counts as "not yet".
        Raises ``TimeoutError`` naming ``what`` after ``timeout`` seconds.
        """

        def holds() -> bool:
            try:
                return bool(predicate())
            except LookupError:
                return False

        deadline = time.monotonic() + timeout
        while not holds():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"fake agent: timed out after {timeout:g} s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def wait_for_conversation(self, count: int = 1, timeout: float = 10.0) -> ConversationRecord:
        """Wait until ``count`` conversations have opened; return the ``count``-th."""
        await self.wait_for(lambda: len(self.conversations) >= count, timeout, f"conversation #{count}")
        return self.conversations[count - 1]

    async def wait_for_close(self, record: ConversationRecord, timeout: float = 10.0) -> ConversationRecord:
        """Wait until ``record``'s conversation has closed (close code recorded)."""
        await self.wait_for(lambda: not record.is_open, timeout, f"conversation {record.id} to close")
        return record

    async def wait_for_sent(self, record: ConversationRecord, kind: str, count: int = 1,
                            timeout: float = 10.0) -> list[Sent]:
        """Wait until the fake has sent ``count`` messages of ``kind`` in ``record``."""
        await self.wait_for(lambda: len(record.sent_of(kind)) >= count, timeout, f"{count} sent {kind}")
        return record.sent_of(kind)

    async def wait_for_received(
        self, record: ConversationRecord, kind: str, count: int = 1, timeout: float = 10.0
    ) -> list[Received]:
        """Wait until ``count`` messages of ``kind`` have arrived in ``record``."""
        await self.wait_for(lambda: len(record.received_of(kind)) >= count, timeout, f"{count} received {kind}")
        return record.received_of(kind)

    def _open_count(self) -> int:
        return len(self._sessions)

    def _session(self, conversation: str | None) -> _Session:
        if conversation is not None:
            session = self._sessions.get(conversation)
            if session is None:
                raise LookupError(f"no open conversation {conversation!r}")
            return session
        if not self._sessions:
            raise LookupError("no open conversation")
        return next(reversed(self._sessions.values()))

    # --- control (in-process) ----------------------------------------------------------

    async def close_conversation(
        self, code: int = 1000, reason: str = "", error_type: str | None = None, conversation: str | None = None
    ) -> str:
        """Close with ``code``; when ``error_type`` is given, first an ``error`` event (if the
        1.0.0 contract allows ``code`` in it) and, with the ``client_error`` option, a
        ``client_error``. Returns the conversation id."""
        if not _close_code_ok(code):
            raise ValueError(f"close code {code} cannot be sent in a close frame")
        if error_type is not None and error_type not in ERROR_CODES:
            raise ValueError(f"unknown error_type {error_type!r}")
        session = self._session(conversation)
        if error_type is not None:
            await session.error_and_close(error_type, code, reason or error_type)
        else:
            await session.close(code, reason)
        return session.record.id

    async def client_error(
        self, code: int = 1011, error_name: str = "unknown", message: str | None = None,
        conversation: str | None = None,
    ) -> str:
        """Send 1.1.0's ``client_error`` (alone, whatever the option), then close with ``code``."""
        if not _close_code_ok(code):
            raise ValueError(f"close code {code} cannot be sent in a close frame")
        if not error_name:
            raise ValueError("error_name must not be empty")
        session = self._session(conversation)
        await session.client_error_and_close(code, error_name, message or f"fake client_error: {error_name}")
        return session.record.id

    async def end_call(self, conversation: str | None = None) -> str:
        """The agent ends the call now (``end_call`` tool response, close 1000)."""
        session = self._session(conversation)
        await session.end_call()
        return session.record.id

    async def max_duration(self, conversation: str | None = None) -> str:
        """Act as if the maximum duration was reached (error 1000, close 1000)."""
        session = self._session(conversation)
        await session.error_and_close("max_duration_exceeded", 1000, "Maximum conversation duration exceeded")
        return session.record.id

    async def send_error(
        self, error_type: str = "unknown", code: int | None = None, message: str | None = None,
        conversation: str | None = None,
    ) -> str:
        """Send an ``error`` event, then close with its code, as the server does."""
        if error_type not in ERROR_CODES:
            raise ValueError(f"unknown error_type {error_type!r}; expected one of {', '.join(ERROR_CODES)}")
        code = ERROR_CODES[error_type] if code is None else code
        if code not in SPEC_CLOSE_CODES:
            raise ValueError(f"error code {code} is not one of the spec's {SPEC_CLOSE_CODES}")
        session = self._session(conversation)
        await session.error_and_close(error_type, code, message or f"fake error: {error_type}")
        return session.record.id

    async def send_garbage(self, kind: str, size: int | None = None, conversation: str | None = None) -> str:
        """Send malformed frames (see :data:`GARBAGE_KINDS`); ``size`` sets the ``huge`` padding."""
        if kind not in GARBAGE_KINDS:
            raise ValueError(f"unknown garbage kind {kind!r}; expected one of {', '.join(GARBAGE_KINDS)}")
        session = self._session(conversation)
        await session.garbage(kind, size)
        return session.record.id

    async def queue_status(self, conversation: str | None = None) -> str:
        """Send the in-the-wild ``queue_status`` and close 3008."""
        session = self._session(conversation)
        await session.queue_status()
        return session.record.id

    async def agent_speak(self, text: str | None = None, conversation: str | None = None) -> int:
        """Start an agent turn now; return its event id."""
        return await self._session(conversation).start_turn("control", text=text)

    async def tool_call(
        self, name: str, parameters: Mapping[str, object] | None = None, conversation: str | None = None,
        expects_response: bool | None = None,
    ) -> str:
        """Send ``client_tool_call`` now (the result is recorded when it comes); return the conversation id.
        ``expects_response`` defaults to the ``tool_expects_response`` option."""
        session = self._session(conversation)
        before = len(session.record.tool_calls)
        session.spawn(session.call_tool(name, parameters or {}, expects_response=expects_response), f"tool {name}")
        await self.wait_for(lambda: len(session.record.tool_calls) > before, 5.0, "the tool call")
        return session.record.id

    async def mcp_tool_call(
        self, name: str, parameters: Mapping[str, object] | None = None, conversation: str | None = None
    ) -> str:
        """Send ``mcp_tool_call`` awaiting approval now (the outcome is recorded in
        ``record.mcp_calls``); return its ``tool_call_id``."""
        session = self._session(conversation)
        before = len(session.record.mcp_calls)
        session.spawn(session.ask_mcp_approval(name, parameters or {}), f"mcp {name}")
        await self.wait_for(lambda: len(session.record.mcp_calls) > before, 5.0, "the MCP tool call")
        return session.record.mcp_calls[before].tool_call_id

    def signed_url_fault(
        self, status: int | None = None, kind: str | None = None, seconds: float = 5.0, count: int = 1
    ) -> None:
        """Make the next ``count`` signed-URL requests fail with HTTP ``status``, or with
        ``kind``: ``timeout`` (hold ``seconds``, then answer), ``not_json``, ``not_ws_url``."""
        if (status is None) == (kind is None):
            raise ValueError("give exactly one of status and kind")
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status")
        if kind is not None and kind not in SIGNED_URL_FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(SIGNED_URL_FAULT_KINDS)}")
        if not 0 <= seconds < OPEN_TIMEOUT - 5:
            raise ValueError(f"seconds must be in [0, {OPEN_TIMEOUT - 5:g})")
        if count < 1:
            raise ValueError("count must be >= 1")
        for _ in range(count):
            self._url_faults.append({"status": status, "kind": kind, "seconds": seconds})

    def reject_handshake(self, status: int = 403, count: int = 1) -> None:
        """Refuse the next ``count`` WebSocket handshakes with HTTP ``status``."""
        if not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status")
        if count < 1:
            raise ValueError("count must be >= 1")
        self._handshake_faults.extend([status] * count)

    async def control(self, action: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Run a control action named as in ``GET /_fake/control?action=...`` with string params."""

        def num(name: str, default: float | None = None, kind: type = int) -> Any:
            value = params.get(name)
            if value is None:
                if default is None:
                    raise ValueError(f"{action}: parameter {name!r} is required")
                return default
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"{action}: parameter {name!r} must be a number, got {value!r}") from None

        conv = params.get("conversation")
        if action == "close":
            cid = await self.close_conversation(num("code", 1000), params.get("reason", ""), params.get("error_type"),
                                                conv)
            return {"conversation": cid}
        if action == "end_call":
            return {"conversation": await self.end_call(conv)}
        if action == "max_duration":
            return {"conversation": await self.max_duration(conv)}
        if action == "error":
            code = num("code") if "code" in params else None
            cid = await self.send_error(params.get("error_type", "unknown"), code, params.get("message"), conv)
            return {"conversation": cid}
        if action == "garbage":
            size = num("size") if "size" in params else None
            return {"conversation": await self.send_garbage(params.get("kind", ""), size, conv)}
        if action == "queue_status":
            return {"conversation": await self.queue_status(conv)}
        if action == "signed_url_fault":
            status = num("status") if "status" in params else None
            self.signed_url_fault(status, params.get("kind"), num("seconds", 5.0, float), num("count", 1))
            return {"pending": len(self._url_faults)}
        if action == "reject_handshake":
            self.reject_handshake(num("status", 403), num("count", 1))
            return {"pending": len(self._handshake_faults)}
        if action == "agent_speak":
            return {"event_id": await self.agent_speak(params.get("text"), conv)}
        if action == "flood":
            return {"event_id": await self._session(conv).flood(num("seconds", 3600.0, float))}
        if action == "interrupt":
            session = self._session(conv)
            turn = session.turn
            await session.interrupt()
            return {"event_id": turn.event_id if turn is not None else None,
                    "interruption_id": turn.interruption_id if turn is not None else None}
        if action == "client_error":
            cid = await self.client_error(num("code", 1011), params.get("error_name", "unknown"),
                                          params.get("message"), conv)
            return {"conversation": cid}
        if action in ("tool_call", "mcp_tool_call"):
            name = params.get("name")
            if not name:
                raise ValueError(f"{action}: parameter 'name' is required")
            try:
                parameters = json.loads(params.get("parameters", "{}"))
            except ValueError:
                raise ValueError(f"{action}: 'parameters' must be a JSON object") from None
            if not isinstance(parameters, dict):
                raise ValueError(f"{action}: 'parameters' must be a JSON object")
            if action == "mcp_tool_call":
                return {"tool_call_id": await self.mcp_tool_call(name, parameters, conv)}
            expects = params.get("expects_response")
            if expects not in (None, "true", "false"):
                raise ValueError("tool_call: 'expects_response' must be true or false")
            return {"conversation": await self.tool_call(name, parameters, conv,
                                                         None if expects is None else expects == "true")}
        raise ValueError(f"unknown action {action!r}")

    # --- HTTP side ----------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = dict(parse_qsl(url.query))
        try:
            if url.path == WS_PATH:
                return self._check_handshake(query)
            if url.path in SIGNED_URL_PATHS:
                return await self._signed_url(request, query)
            if url.path.startswith("/_fake/"):
                return await self._fake_api(url.path, query)
        except Exception:  # our bug: answer 500, keep serving
            log.exception("fake agent: failed to answer %s", url.path)
            return _json(500, {"detail": {"status": "internal_server_error", "message": "fake agent bug"}})
        return _json(404, {"detail": "Not Found"})

    def _check_handshake(self, query: dict[str, str]) -> Response | None:
        if self._handshake_faults:
            status = self._handshake_faults.popleft()
            extra = (("Retry-After", "1"),) if status in (429, 503) else ()
            log.info("fake agent: rejecting a handshake with %d (fault)", status)
            return _text(status, f"{http.HTTPStatus(status).phrase} (fake fault)\n", extra)
        if self.options.api_key is not None:
            signature = self._signatures.get(query.get("conversation_signature", ""))
            if signature is None or signature.used or signature.agent_id != query.get("agent_id"):
                log.info("fake agent: refusing a handshake without a valid, unused signature")
                return _text(403, "Forbidden: a valid, unused conversation_signature is required\n")
            signature.used = True
        return None

    async def _signed_url(self, request: Request, query: dict[str, str]) -> Response:
        fault = self._url_faults.popleft() if self._url_faults else None
        if fault is not None and fault["status"] is not None:
            status = fault["status"]
            extra = (("Retry-After", "1"),) if status == 429 else ()
            log.info("fake agent: signed URL request answered %d (fault)", status)
            return _json(status, _fault_body(status), extra)
        if fault is not None and fault["kind"] == "timeout":
            log.info("fake agent: holding a signed URL request for %.1f s (fault)", fault["seconds"])
            await asyncio.sleep(fault["seconds"])
        if self.options.api_key is not None and not secrets.compare_digest(
            request.headers.get("xi-api-key", ""), self.options.api_key
        ):
            return _json(401, _fault_body(401))
        agent_id = query.get("agent_id")
        if not agent_id:
            return _json(422, {"detail": [{"loc": ["query", "agent_id"], "msg": "field required", "type": "missing"}]})
        if fault is not None and fault["kind"] == "not_json":
            return _http(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
        signature = secrets.token_urlsafe(24)
        self._signatures[signature] = _Signature(agent_id)
        host = request.headers.get("Host") or f"{self._url_host}:{self.port}"
        scheme = "http" if fault is not None and fault["kind"] == "not_ws_url" else "ws"
        qs = urlencode({"agent_id": agent_id, "conversation_signature": signature})
        return _json(200, {"signed_url": f"{scheme}://{host}{WS_PATH}?{qs}"})

    async def _fake_api(self, path: str, query: dict[str, str]) -> Response:
        if path == "/_fake/conversations":
            return _json(200, {"conversations": [r.summary() for r in self.conversations]})
        if path in ("/_fake/received", "/_fake/sent"):
            try:
                record = self.conversation(query.get("conversation", ""))
            except LookupError as exc:
                return _json(404, {"detail": str(exc)})
            return _json(200, record.received_json() if path == "/_fake/received" else record.sent_json())
        if path == "/_fake/control":
            action = query.pop("action", "")
            try:
                result = await self.control(action, query)
            except LookupError as exc:
                return _json(404, {"ok": False, "detail": str(exc)})
            except ValueError as exc:
                return _json(400, {"ok": False, "detail": str(exc)})
            except ConnectionClosed:
                return _json(409, {"ok": False, "detail": "the conversation closed meanwhile"})
            return _json(200, {"ok": True, "action": action, **result})
        return _json(404, {"detail": "Not Found"})

    # --- WebSocket side -------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        query = dict(parse_qsl(urlsplit(ws.request.path if ws.request else "").query))
        o = self.options
        record = ConversationRecord(
            id=_new_id("conv"),
            agent_id=query.get("agent_id") or None,
            query=query,
            output_format=o.output_format,
            input_format=o.input_format,
            input_rate=audio_format(o.input_format).rate,
            opened_at=time.monotonic(),
        )
        session = _Session(self, ws, record)
        self.conversations.append(record)
        self._sessions[record.id] = session
        log.info("conversation %s opened (agent %s, %s)", record.id, record.agent_id, ws.remote_address)
        self._notify()
        try:
            await session.run()
        finally:
            self._sessions.pop(record.id, None)
            log.info(
                "conversation %s closed by %s: %s %s (%d turns, %.1f s of user audio, %d/%d pings answered)",
                record.id, record.closed_by, record.close_code, record.close_reason or "",
                len(record.turns), record.user_audio_seconds, record.pongs_received, record.pings_sent,
            )
            self._notify()


async def serve(options: FakeAgentOptions, ready: Callable[[FakeAgent], object] | None = None) -> None:
    """Run a fake agent until cancelled.

    Prints ``fake agent listening on http://HOST:PORT`` (flushed) once it listens, then
    calls ``ready(agent)`` if given.
    """
    async with FakeAgent(options) as agent:
        print(f"fake agent listening on {agent.http_url}", flush=True)
        if ready is not None:
            ready(agent)
        await asyncio.Future()

