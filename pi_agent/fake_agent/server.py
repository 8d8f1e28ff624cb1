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

This module is the server: :class:`FakeAgent` listens, keeps the records and lets a test
wait on them. The rest has a module each:

- :mod:`.conversation`: one conversation (its socket, timers, beginning and end), with its
  parts :mod:`.inbox` (what the client sends), :mod:`.turns` (the agent speaking) and
  :mod:`.tools` (tool calls);
- :mod:`.control`: the control API (the methods of :class:`FakeAgent` that make it act);
- :mod:`.routes`: the HTTP requests; :mod:`.faults`: garbage frames and signed-URL faults;
- :mod:`.wire`: error codes and close rules; :mod:`.records`: what is recorded;
  :mod:`.options`: the options; :mod:`.audio`: formats, the reply clip, the energy gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.typing import Subprotocol

from .audio import REPLY_WAV, audio_format, reply_audio
from .control import Controls
from .conversation import Conversation
from .options import FakeAgentOptions
from .records import ConversationRecord, Received, Sent
from .routes import OPEN_TIMEOUT, WS_PATH, Routes
from .wire import new_id

log = logging.getLogger("pi_agent.fake_agent")
ws_log = logging.getLogger("pi_agent.fake_agent.websockets")
"""websockets' own logger for the fake: one INFO line per HTTP request is noise, so
it starts at WARNING (lower it to see every request)."""
ws_log.setLevel(logging.WARNING)

MAX_INCOMING = 16 * 1024 * 1024


class FakeAgent(Controls):
    """The fake agent server. Use ``async with FakeAgent(FakeAgentOptions(port=0)) as agent:``.

    Records every conversation in :attr:`conversations`; the control methods (from
    :class:`~.control.Controls`) act on the newest open conversation unless given
    ``conversation=<id>``. They raise ``LookupError`` when there is no such open
    conversation and ``ValueError`` for bad arguments.
    """

    def __init__(self, options: FakeAgentOptions | None = None) -> None:
        self.options = options or FakeAgentOptions()
        self.conversations: list[ConversationRecord] = []
        self.port: int = self.options.port
        self._reply = b""
        self._server: Server | None = None
        self._sessions: dict[str, Conversation] = {}
        self._routes = Routes(self)
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
            process_request=self._routes.process_request,
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

    # --- WebSocket side -------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        query = dict(parse_qsl(urlsplit(ws.request.path if ws.request else "").query))
        o = self.options
        record = ConversationRecord(
            id=new_id("conv"),
            agent_id=query.get("agent_id") or None,
            query=query,
            output_format=o.output_format,
            input_format=o.input_format,
            input_rate=audio_format(o.input_format).rate,
            opened_at=time.monotonic(),
        )
        session = Conversation(self, ws, record)
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

