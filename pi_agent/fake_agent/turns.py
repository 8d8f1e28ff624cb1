"""The agent's turns in one fake conversation: what it says, and how it is cut short.

A turn: the transcript of what was heard, tool calls if configured, the reply's text
(whole, or streamed word by word), then the reply clip in chunks paced as it would play,
each chunk carrying the turn's event id. A turn stays active until its audio has played
at the client. Speech or text meanwhile interrupts it (``interruption``, then up to
``stale_chunks`` chunks that were already on their way). A flood is a turn gone wrong:
audio as fast as the connection takes it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from .records import Sent, Turn

if TYPE_CHECKING:
    from .conversation import Conversation

log = logging.getLogger("pi_agent.fake_agent")


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds``; True if ``stop`` was set meanwhile."""
    if stop.is_set():
        return True
    if seconds <= 0:
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()  # the timeout may win a race with a stop set meanwhile


class Turns:
    """The current agent turn of one conversation, its task, and how many turns completed."""

    def __init__(self, conv: Conversation) -> None:
        self.conv = conv
        self.turn: Turn | None = None
        self._turn_task: asyncio.Task[None] | None = None
        self._turn_stop = asyncio.Event()
        self._completed_turns = 0

    def stop(self) -> None:
        """Stop the current turn where it is, without an interruption (the conversation is closing)."""
        self._turn_stop.set()

    def turn_active(self) -> bool:
        """True while the current turn is thinking, sending or still playing at the client."""
        return self._turn_task is not None and not self._turn_task.done()

    async def interrupt(self, wire_id: int | None = None) -> bool:
        """Barge-in: stop the current turn and send ``interruption``: with ``wire_id`` if
        given, else a fresh id newer than the turn (``interruption_ids="newer"``, as the
        service numbers it) or the turn's own id (``"same"``). Then ``stale_chunks`` more
        chunks of the cut reply, with its old id. False when there was nothing to interrupt."""
        conv, turn = self.conv, self.turn
        if turn is None or not self.turn_active() or turn.interrupted:
            return False
        turn.interrupted = True
        self._turn_stop.set()
        if wire_id is None:
            wire_id = conv.next_event_id() if conv.options.interruption_ids == "newer" else turn.event_id
        turn.interruption_id = wire_id
        conv.record.interruptions.append(turn.event_id)
        log.info("conversation %s: turn %d interrupted (interruption %d)", conv.record.id, turn.event_id, wire_id)
        turn.interrupted_at = time.monotonic()
        await conv.send({"type": "interruption", "interruption_event": {"event_id": wire_id}})
        await self._send_stale(turn)
        return True

    async def _send_stale(self, turn: Turn) -> None:
        """Up to ``stale_chunks`` chunks of ``turn``'s unsent audio, with its old id: what was
        already on its way when the interruption was decided. None before its audio began."""
        count = self.conv.options.stale_chunks
        if count <= 0 or turn.audio_started_at is None or turn.cause == "flood":
            return
        audio, chunk = self.conv.agent.reply_audio, self._chunk_bytes()
        offset = turn.sent_bytes + turn.stale_bytes
        while count > 0 and offset < len(audio):
            piece = audio[offset : offset + chunk]
            offset += len(piece)
            turn.stale_chunks_sent += 1
            turn.stale_bytes += len(piece)
            await self.conv.send(self._audio_message(piece, turn, last=offset >= len(audio)), stale=True)
            count -= 1

    def _chunk_bytes(self) -> int:
        return self.conv.out_fmt.bytes_for(self.conv.options.chunk_ms / 1000)

    def _audio_message(self, piece: bytes, turn: Turn, *, last: bool) -> dict[str, Any]:
        """One ``audio`` message of ``turn``; its last chunk says ``is_final`` (1.1.0)."""
        event: dict[str, Any] = {"audio_base_64": base64.b64encode(piece).decode("ascii"), "event_id": turn.event_id}
        if last:
            turn.final_chunk_sent = True
            if self.conv.options.final_chunk:
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
        conv = self.conv
        opening: int | None = None
        if cause == "text" and conv.options.text_interruption:
            event_id = opening = conv.next_event_id()
            if not await self.interrupt(wire_id=event_id):  # nothing playing: the interruption all the same
                await conv.send({"type": "interruption", "interruption_event": {"event_id": event_id}})
        else:
            if self.turn_active():
                await self.interrupt()
            event_id = conv.next_event_id()
        turn = Turn(event_id=event_id, cause=cause, started_at=time.monotonic(), heard=heard,
                    opening_interruption_id=opening)
        self.turn = turn
        conv.record.turns.append(turn)
        self._turn_stop = asyncio.Event()
        self._turn_task = conv.spawn(
            self._run_turn(turn, self._turn_stop, tool, mcp, text or conv.options.reply_text), f"turn {turn.event_id}"
        )
        return turn.event_id

    async def flood(self, seconds: float) -> int:
        """An agent gone wrong: a turn of ``seconds`` of audio sent as fast as the connection
        takes it (one pre-encoded chunk again and again, recorded once). Returns its event id."""
        conv = self.conv
        if self.turn_active():
            await self.interrupt()
        turn = Turn(event_id=conv.next_event_id(), cause="flood", started_at=time.monotonic())
        self.turn = turn
        conv.record.turns.append(turn)
        self._turn_stop = asyncio.Event()
        self._turn_task = conv.spawn(self._flood(turn, self._turn_stop, seconds), f"flood {turn.event_id}")
        return turn.event_id

    async def _flood(self, turn: Turn, stop: asyncio.Event, seconds: float) -> None:
        conv = self.conv
        chunk = self._chunk_bytes()
        clip = conv.agent.reply_audio
        middle = (len(clip) - chunk) // 4 * 2  # from the middle of the clip: speech, not a pause
        piece = (clip * (chunk // max(1, len(clip)) + 1))[max(0, middle):][:chunk]
        frame = json.dumps({"type": "audio", "audio_event": {
            "audio_base_64": base64.b64encode(piece).decode("ascii"), "event_id": turn.event_id}})
        count = max(1, round(conv.out_fmt.bytes_for(seconds) / chunk))
        log.info("conversation %s: flooding %.0f s of audio in %d chunks", conv.record.id, seconds, count)
        conv.record.sent.append(Sent(time.monotonic(), "audio", {"type": "audio", "audio_event": {
            "audio_base_64": "", "event_id": turn.event_id}}, raw=f"<flood of {count} chunks>"))
        turn.audio_started_at = time.monotonic()
        for _ in range(count):
            if stop.is_set():
                return
            await conv.ws.send(frame)
            turn.chunks_sent += 1
            turn.sent_bytes += len(piece)
        turn.play_until = turn.audio_started_at + seconds
        conv.agent._notify()
        await pause(stop, turn.play_until - time.monotonic())

    async def _run_turn(self, turn: Turn, stop: asyncio.Event, tool: str | None, mcp: str | None,
                        text: str) -> None:
        conv = self.conv
        o, rec, eid = conv.options, conv.record, turn.event_id
        if await pause(stop, o.reply_delay):
            return
        if turn.heard is not None:
            rec.transcripts.append(turn.heard)
            await conv.send({"type": "user_transcript",
                             "user_transcription_event": {"user_transcript": turn.heard, "event_id": eid}})
        if tool is not None:
            await conv.tools.call_tool(tool, o.tool_parameters, event_id=eid, stop=stop)
        if mcp is not None and not stop.is_set():
            await conv.tools.ask_mcp_approval(mcp, o.tool_parameters, stop=stop)
        if stop.is_set():
            return
        if o.response_events:  # 1.1.0's shape: {metadata, event_id}
            await conv.send({"type": "agent_response_metadata", "agent_response_metadata_event": {
                "metadata": {"conversation_id": rec.id}, "event_id": eid}})
        if o.stream_text and await self._stream_text(text, eid, stop):
            return
        await conv.send({"type": "agent_response", "agent_response_event": {"agent_response": text, "event_id": eid}})
        audio = conv.agent.reply_audio
        chunk = self._chunk_bytes()
        turn.audio_bytes = len(audio)
        log.info(
            "conversation %s: turn %d (%s)%s: %.1f s of audio",
            rec.id, eid, turn.cause, f" after {turn.heard!r}" if turn.heard else "", conv.out_fmt.seconds(len(audio)),
        )
        start = time.monotonic()
        turn.audio_started_at = start
        for offset in range(0, len(audio), chunk):
            due = start + conv.out_fmt.seconds(offset) / o.send_speed
            if await pause(stop, due - time.monotonic()):
                return
            piece = audio[offset : offset + chunk]
            # counted before the send: an interruption while it drains must not send this piece again as stale
            turn.sent_bytes += len(piece)
            turn.chunks_sent += 1
            turn.play_until = start + conv.out_fmt.seconds(turn.sent_bytes)
            await conv.send(self._audio_message(piece, turn, last=offset + len(piece) >= len(audio)))
        if o.response_events:  # "finished generating" (1.1.0): all of it sent, not yet all played
            await conv.send({"type": "agent_response_complete", "agent_response_complete_event": {"event_id": eid}})
        if await pause(stop, (turn.play_until or 0) - time.monotonic()):
            return
        turn.completed = True
        self._completed_turns += 1
        conv.agent._notify()
        if o.end_call_after is not None and self._completed_turns >= o.end_call_after:
            await conv.end_call()

    async def _stream_text(self, text: str, eid: int, stop: asyncio.Event) -> bool:
        """The reply's text as it is "generated": start, a delta per word, stop. The contract
        types the id as an integer; ``text_part_ids="string"`` sends ``"evt_<n>"`` as the
        official docs show (then the parts are recorded as outside the contract).
        Returns True if the turn was stopped meanwhile."""
        o = self.conv.options
        part_id: int | str = eid if o.text_part_ids == "integer" else f"evt_{eid}"
        in_spec = o.text_part_ids == "integer"
        words = text.split(" ")
        pieces = ["", *(w + (" " if n < len(words) - 1 else "") for n, w in enumerate(words)), ""]
        for n, piece in enumerate(pieces):
            kind = "start" if n == 0 else "stop" if n == len(pieces) - 1 else "delta"
            await self.conv.send({"type": "agent_chat_response_part", "text_response_part": {
                "text": piece, "type": kind, "event_id": part_id}}, in_spec=in_spec)
            if kind == "delta" and await pause(stop, o.text_part_ms / 1000):
                return True
        return False
