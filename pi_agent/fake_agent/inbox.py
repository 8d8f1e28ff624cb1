"""What one fake conversation does with each frame the client sends.

Every frame is recorded first (audio payloads elided unless ``record_audio``), then
handled by kind: pongs measure the round trip, the initiation lets the metadata go, text
starts a turn, tool results go to the call waiting for them, and user audio goes through
the energy gate, whose start of speech interrupts a playing turn and whose end of speech
starts the next one. Frames outside the protocol are counted as anomalies.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed

from .audio import EnergyGate, SpeechEnded, SpeechStarted, decode
from .records import BINARY, NON_JSON, USER_AUDIO, Received, message_kind

if TYPE_CHECKING:
    from .conversation import Conversation

log = logging.getLogger("pi_agent.fake_agent")


class Inbox:
    """Reads one conversation's socket until it closes, and acts on each client message."""

    def __init__(self, conv: Conversation) -> None:
        self.conv = conv
        o = conv.options
        self.gate = EnergyGate(conv.in_fmt.rate, o.gate_threshold_db, o.gate_min_speech_ms, o.gate_end_silence_ms)
        self._user_turns = 0

    async def read_loop(self) -> None:
        conv = self.conv
        async for frame in conv.ws:
            t = time.monotonic()
            conv.last_input = t
            if conv.closing:
                continue
            kind, message = self._note_received(frame, t, discarded=conv.queued)
            if conv.queued:
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
                log.exception("conversation %s: failed to handle %s", conv.record.id, kind)
                conv.record.anomalies.append(f"internal error handling {kind}")

    def _receive(self, item: Received) -> None:
        self.conv.record.received.append(item)
        self.conv.agent._notify()

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
        if kind == USER_AUDIO and not self.conv.options.record_audio:
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
                self.conv.record.discarded_audio_samples += len(decode(data, self.conv.in_fmt))

    async def _invalid(self, what: str) -> None:
        self.conv.record.anomalies.append(what)
        if self.conv.options.strict_input:
            await self.conv.error_and_close("invalid_message", 1008, "Invalid message received")

    async def _handle(self, kind: str, message: dict[str, Any], t: float) -> None:
        conv = self.conv
        rec = conv.record
        if kind == USER_AUDIO:
            await self._on_audio(message["user_audio_chunk"], t)
        elif kind == "pong":
            event_id = message.get("event_id")
            if type(event_id) is int and event_id in rec.pings and event_id not in rec.pongs:
                rec.pongs[event_id] = t
                conv.rtt_ms = round((t - rec.pings[event_id]) * 1000)
            else:
                rec.stray_pongs.append(event_id)
        elif kind == "conversation_initiation_client_data":
            rec.init = message
            conv.init_received.set()
        elif kind == "user_message":
            text = message.get("text")
            if text is not None and not isinstance(text, str):
                rec.anomalies.append("user_message text is not a string")
                return
            log.info("conversation %s: user message %r", rec.id, text)
            await conv.turns.start_turn("text")
        elif kind == "multimodal_message":  # text and a file: answered like text input
            log.info("conversation %s: multimodal message", rec.id)
            await conv.turns.start_turn("text")
        elif kind == "client_tool_result":
            conv.tools.on_tool_result(message)
        elif kind == "mcp_tool_approval_result":
            conv.tools.on_approval_result(message)
        elif kind in ("contextual_update", "user_activity", "feedback"):
            pass  # recorded above; the fake has no use for them
        else:
            rec.anomalies.append(f"unknown message type {kind!r}")

    async def _on_audio(self, payload: Any, t: float) -> None:
        conv = self.conv
        rec = conv.record
        if not isinstance(payload, str):
            rec.anomalies.append("user_audio_chunk is not a string")
            return
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            rec.anomalies.append("user_audio_chunk is not valid base64")
            return
        if conv.in_fmt.encoding == "pcm" and len(data) % 2:
            rec.anomalies.append(f"odd-length PCM chunk ({len(data)} bytes)")
        samples = decode(data, conv.in_fmt)
        if conv.options.record_audio:
            rec.user_audio += samples.astype("<i2").tobytes()
        rec.user_audio_samples += len(samples)
        rec.audio_chunk_times.append(t)
        rec.audio_chunk_bytes.append(len(data))
        for event in self.gate.feed(samples):
            if isinstance(event, SpeechStarted):
                if conv.turns.turn_active():
                    await conv.turns.interrupt()
            elif isinstance(event, SpeechEnded):
                self._user_turns += 1
                heard = conv.options.transcript or f"[{event.duration:.1f} s of speech]"
                first = self._user_turns == 1
                await conv.turns.start_turn("speech", heard=heard, tool=conv.options.tool_call if first else None,
                                            mcp=conv.options.mcp_approval if first else None)
