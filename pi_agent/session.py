"""The agent connection: signed URL, WebSocket, pings, reconnects, session policy.

I/O lives here; every decision is taken by the pure modules (:mod:`protocol`,
:mod:`conversation`, :mod:`backoff`). The controller drives a :class:`Session`
through a few methods and hears back through a :class:`SessionListener`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.protocol import State as WsState
from websockets.uri import parse_uri

from . import __version__
from . import protocol as p
from .audio import FRAME_BYTES
from .backoff import CONFIG_ERROR_TYPES, Backoff, Outcome, classify_close, classify_http_status
from .config import SessionSettings
from .conversation import Conversation
from .errors import AuthError, ConnectError, ProtocolError
from .metrics import Metrics

log = logging.getLogger("pi_agent.session")

MAX_FRAME = 16 * 1024 * 1024
SOURCE = "pi_agent"
KEEPALIVE_AFTER = 0.5  # s without any audio sent -> send silence (server input timeout is 60 s)
KEEPALIVE_CHUNK = b"\x00" * (FRAME_BYTES * 5)  # 100 ms of 16 kHz silence
SEND_BUFFER = 32 * 1024  # socket send buffer asked for; the kernel doubles it: ~1.5 s of audio
MAX_BACKLOG_S = 2.0  # live audio older than this in the send queue is dropped, not buffered forever
_REDACT = {"conversation_signature", "token", "signature"}


# --- URLs ------------------------------------------------------------------------------------


def conversation_url(server_url: str, agent_id: str) -> str:
    """``https://host`` -> ``wss://host/v1/convai/conversation?agent_id=..&source=..&version=..``."""
    parts = urllib.parse.urlsplit(server_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    query = urllib.parse.urlencode({"agent_id": agent_id, "source": SOURCE, "version": __version__})
    path = parts.path.rstrip("/") + "/v1/convai/conversation"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, query, ""))


def with_source(signed_url: str) -> str:
    parts = urllib.parse.urlsplit(signed_url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query += [("source", SOURCE), ("version", __version__)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def redact_url(url: str) -> str:
    """The URL with its signature/token parameters replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, "***" if k.lower() in _REDACT else v)
             for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="*")))


def fetch_signed_url(server_url: str, agent_id: str, api_key: str, timeout: float) -> str:
    """GET the signed URL for one conversation (blocking; run it in a thread).

    Raises :class:`AuthError` for 401/403 (and other answers retrying cannot fix),
    :class:`ConnectError` for everything else, with messages that never hold the key.
    """
    url = (server_url.rstrip("/") + "/v1/convai/conversation/get-signed-url?"
           + urllib.parse.urlencode({"agent_id": agent_id}))
    request = urllib.request.Request(url, headers={"xi-api-key": api_key, "Accept": "application/json",
                                                   "User-Agent": f"pi-agent/{__version__}"})
    try:
        with _NO_REDIRECTS.open(request, timeout=timeout) as response:
            body = response.read(1 << 20)
    except urllib.error.HTTPError as e:
        detail = _error_detail(e)
        retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
        e.close()
        what = {401: "the API key was refused", 403: "the API key may not use this agent",
                404: "no such agent", 422: "the request was refused (check agent_id)",
                429: "rate limited"}.get(e.code, "redirect refused" if 300 <= e.code < 400 else "server error")
        message = f"signed URL request failed: HTTP {e.code} ({what}{': ' + detail if detail else ''})"
        if classify_http_status(e.code) is Outcome.FATAL:
            raise AuthError(message, status=e.code) from None
        raise ConnectError(message, status=e.code, retry_after=retry_after) from None
    except TimeoutError:
        raise ConnectError(f"signed URL request timed out after {timeout:g} s") from None
    except urllib.error.URLError as e:
        raise ConnectError(f"signed URL request failed: {_reason(e.reason)}") from None
    except OSError as e:
        raise ConnectError(f"signed URL request failed: {_reason(e)}") from None
    try:
        signed = json.loads(body)["signed_url"]
    except (ValueError, KeyError, TypeError):
        raise ConnectError("signed URL response is not JSON with a 'signed_url' field") from None
    if not isinstance(signed, str) or not _is_ws_url(signed):
        raise ConnectError("signed URL response holds no ws:// or wss:// URL")
    return signed


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an error: the key must not follow a redirect to another host (a captive portal)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


def _is_ws_url(url: str) -> bool:
    """Whether the WebSocket client can use ``url`` (ws/wss scheme, a host, a numeric port)."""
    try:
        parse_uri(url)
    except (websockets.InvalidURI, ValueError):
        return False
    return True


async def _in_daemon_thread(fn: Callable[..., str], *args: Any) -> str:
    """``fn(*args)`` in a daemon thread. Unlike ``asyncio.to_thread`` (whose worker the
    interpreter joins at exit), a request stuck until ``connect_timeout`` cannot delay SIGTERM."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def settle(result: str | None, error: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled (shutdown)
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or "")

    def work() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # handed to the awaiting task
            result, error = None, e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is closed: the daemon is gone, nobody waits
            pass

    threading.Thread(target=work, name="pi-agent-signed-url", daemon=True).start()
    return await future


def _limit_send_buffer(ws: Any) -> None:
    """Keep the kernel's send queue short: on a link slower than the audio the backlog then
    builds in the outbox, where audio too late to matter is dropped (and counted), instead of
    seconds of it waiting in the socket, ahead of every ping."""
    transport = getattr(ws, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass


def _reason(e: object) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)[:120]


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(e.read(4096) or b"null")
    except (ValueError, OSError):
        return ""
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("status")
    return str(detail)[:160] if detail else ""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


# --- the session -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CloseInfo:
    """How a connection ended and what happens next."""

    outcome: Outcome
    reason: str                # one line for the log, never holding a secret
    retry_in: float | None     # seconds until the next attempt; None = none planned
    code: int | None = None    # WebSocket close code, if there was one


class SessionListener(Protocol):
    """What the session tells its owner. Called on the event loop."""

    def on_connecting(self, attempt: int) -> None: ...
    def on_open(self, metadata: p.ConversationMetadata) -> None: ...
    def on_audio(self, audio: bytes, fmt: str, new_turn: bool) -> None: ...
    def on_interruption(self, event_id: int) -> None: ...
    def on_event(self, event: p.ServerEvent) -> None: ...
    def on_closed(self, info: CloseInfo) -> None: ...


Connector = Callable[..., Any]  # websockets.asyncio.client.connect or a test double with its signature
SignedUrlFetcher = Callable[[str, str, str, float], str]


class Session:
    """Keeps a conversation open when wanted, and re-opens it with backoff when it drops."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        agent_id: str,
        server_url: str,
        api_key: str | None,
        listener: SessionListener,
        metrics: Metrics,
        encoder_factory: Callable[[str], Callable[[bytes], bytes]],
        connect: Connector = ws_connect,
        fetch_url: SignedUrlFetcher = fetch_signed_url,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._agent_id = agent_id
        self._server_url = server_url
        self._api_key = api_key
        self._listener = listener
        self._metrics = metrics
        self._encoder_factory = encoder_factory
        self._connect = connect
        self._fetch_url = fetch_url
        self._sleep = sleep
        self._clock = clock
        self.backoff = backoff or Backoff(settings.backoff_initial, settings.backoff_max,
                                          settings.backoff_reset_after)
        self.persistent = settings.policy == "persistent"
        self._wanted = asyncio.Event()
        if self.persistent:
            self._wanted.set()
        self._wake = asyncio.Event()  # cuts a backoff sleep short (user asked for a conversation)
        self._ws: ClientConnection | None = None
        self.conversation: Conversation | None = None
        self._encode: Callable[[bytes], bytes] | None = None
        self._outbox: deque[tuple[str, str]] = deque()  # (kind, text), kind "audio" or a message type
        self._outbox_ready = asyncio.Event()
        self._audio_queued = 0  # audio messages in the outbox ...
        self._early_queued = 0  # ... of which speech kept from before the conversation opened (first in line)
        self._audio_sent = metrics.messages_out.labels("audio")
        frames = int(settings.prebuffer * 1000 / 20)
        self._prebuffer: deque[bytes] = deque(maxlen=max(frames, 1))
        self._pending_texts: list[tuple[str, str]] = []  # sent once the next conversation opens
        self._last_sent = 0.0
        self._last_activity = 0.0
        self._closing_reason: str | None = None  # we closed on purpose (idle, shutdown)
        self._failure: str | None = None  # we closed because the server misbehaved
        self._closers: set[asyncio.Task[None]] = set()
        self.attempt = 0

    # --- controller-facing API --------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.conversation is not None and self.conversation.is_open and self._ws is not None

    @property
    def wanted(self) -> bool:
        return self._wanted.is_set()

    def request(self) -> None:
        """Ask for a conversation (on_demand: button press or speech). Idempotent."""
        self._last_activity = self._clock()
        self._wanted.set()
        self._wake.set()

    def touch(self) -> None:
        """Something happened in the conversation (agent audio playing): not idle."""
        self._last_activity = self._clock()

    def end(self, reason: str) -> None:
        """End the current conversation on purpose (on_demand idle, user stop, shutdown)."""
        if not self.persistent:
            self._wanted.clear()
        self._prebuffer.clear()
        if self._ws is not None:
            self._closing_reason = reason
            task = asyncio.get_running_loop().create_task(self._ws.close(1000, reason[:120]))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    def send_audio(self, frame: bytes, *, speech: bool) -> None:
        """One 20 ms, 16 kHz mic frame (zeros when the user is not speaking).

        ``speech`` marks frames of a user turn: while no conversation is open they are
        kept (bounded by ``prebuffer``) and sent first once one opens.
        """
        now = self._clock()
        if speech:
            self._last_activity = now
        # While the connection closes, queued audio would never be sent: pre-buffer it instead.
        if not self.is_open or self._ws is None or self._ws.state is not WsState.OPEN:
            if speech and self._wanted.is_set():
                if len(self._prebuffer) == self._prebuffer.maxlen:
                    self._metrics.audio_dropped.labels("prebuffer_full").inc()
                self._prebuffer.append(frame)
            return
        self._queue_audio(frame)

    def send_message(self, kind: str, text: str) -> None:
        """A JSON message (contextual_update, user_message, client_tool_result, user_activity).

        Sent now when a conversation is open; otherwise a conversation is requested and the
        message goes first once it opens (so ``pi-agent say`` works from idle).
        """
        self._last_activity = self._clock()
        if self.is_open:
            self._outbox.append((kind, text))
            self._outbox_ready.set()
        else:
            self._pending_texts.append((kind, text))
            self.request()

    # --- main loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled: open conversations when wanted, re-open them when they drop."""
        while True:
            await self._wanted.wait()
            self.attempt += 1
            if self.attempt > 1:
                self._metrics.reconnects.inc()
            self._listener.on_connecting(self.attempt)
            info = await self._connect_and_converse()
            if info.outcome is Outcome.CLOSED or (info.outcome is Outcome.ENDED and not self.persistent):
                self._wanted.clear()
            elif info.outcome is Outcome.RETRY and not self.persistent and self._nobody_waiting():
                info = self._give_up(info)
            if not self._wanted.is_set():
                self.attempt = 0
                self._listener.on_closed(CloseInfo(info.outcome, info.reason, None, info.code))
                continue
            # After a healthy conversation the backoff has been reset, so a normal end is
            # followed by a new conversation within backoff_initial; one that ended right
            # after opening backs off like any failure (no tight loop).
            delay = self.backoff.fatal_delay() if info.outcome is Outcome.FATAL else self.backoff.next_delay()
            if info.retry_in:  # the server asked for a pause (Retry-After): honour it, within the cap
                delay = max(delay, min(info.retry_in, self.settings.backoff_max))
            self._listener.on_closed(CloseInfo(info.outcome, info.reason, delay, info.code))
            await self._pause(delay, wakeable=info.outcome is Outcome.ENDED)

    def _nobody_waiting(self) -> bool:
        return self._clock() - self._last_activity > self.settings.idle_timeout

    def _give_up(self, info: CloseInfo) -> CloseInfo:
        """on_demand, failing, and nobody has asked for a while: stop retrying until the next
        request. What waited for the conversation is too old to send by then: it is dropped."""
        self._wanted.clear()
        waited = [f"{len(self._prebuffer) * 0.02:.1f} s of speech"] if self._prebuffer else []
        if self._pending_texts:
            waited.append(f"{len(self._pending_texts)} message(s)")
        if waited:
            log.warning("dropped %s that waited for a conversation which could not be opened (last asked "
                        "%.0f s ago)", " and ".join(waited), self._clock() - self._last_activity)
            self._metrics.audio_dropped.labels("gave_up").inc(len(self._prebuffer))
        self._prebuffer.clear()
        self._pending_texts.clear()
        return CloseInfo(Outcome.CLOSED, f"{info.reason}; nobody has asked for a conversation for "
                         f"{self.settings.idle_timeout:g} s: no more retries until the next press or speech",
                         None, info.code)

    async def _pause(self, delay: float, *, wakeable: bool) -> None:
        """Sleep ``delay``. After a normal end, the user speaking or pressing the button
        (:meth:`request`) cuts the wait short; after a failure it does not (no hammering)."""
        self._wake.clear()
        sleeper = asyncio.ensure_future(self._sleep(delay))
        if not wakeable:
            try:
                await sleeper
            finally:
                sleeper.cancel()
            return
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _connect_and_converse(self) -> CloseInfo:
        try:
            url = await self._url()
        except ConnectError as e:
            outcome = Outcome.FATAL if not e.retryable else Outcome.RETRY
            return CloseInfo(outcome, str(e), e.retry_after)  # retry_in: the server's Retry-After
        log.debug("connecting to %s", redact_url(url))
        timeout = self.settings.connect_timeout
        try:
            ws = await self._connect(
                # ping every d/3, pong due within d/3, close handshake cut at d/3 (2 s at most):
                # a peer that stops answering is dropped within d = dead_peer_timeout in all.
                url, max_size=MAX_FRAME, open_timeout=timeout,
                close_timeout=min(2.0, self.settings.dead_peer_timeout / 3),
                ping_interval=self.settings.dead_peer_timeout / 3,
                ping_timeout=self.settings.dead_peer_timeout / 3,
                compression=None, user_agent_header=f"pi-agent/{__version__}")
        except websockets.InvalidStatus as e:
            status = e.response.status_code
            outcome = classify_http_status(status)
            hint = " (check the API key and agent_id)" if outcome is Outcome.FATAL else ""
            return CloseInfo(outcome, f"handshake refused: HTTP {status}{hint}",
                             _retry_after(e.response.headers.get("Retry-After")))
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as e:
            return CloseInfo(Outcome.RETRY, f"cannot connect: {_reason(e)}", None)
        _limit_send_buffer(ws)
        return await self._converse(ws)

    async def _url(self) -> str:
        if not self._api_key:
            return conversation_url(self._server_url, self._agent_id)
        signed = await _in_daemon_thread(self._fetch_url, self._server_url, self._agent_id,
                                         self._api_key, self.settings.connect_timeout)
        return with_source(signed)

    async def _converse(self, ws: ClientConnection) -> CloseInfo:
        conversation = self.conversation = Conversation()
        self._ws = ws
        self._closing_reason = None
        self._failure = None
        self._outbox.clear()
        self._audio_queued = self._early_queued = 0
        opened_at = self._clock()
        sender = asyncio.create_task(self._sender(ws), name="pi-agent-sender")
        watcher = asyncio.create_task(self._watch(ws, conversation, opened_at), name="pi-agent-watch")
        try:
            s = self.settings
            await ws.send(p.encode_initiation(dynamic_variables=s.dynamic_variables,
                                              overrides=s.overrides, user_id=s.user_id,
                                              source=SOURCE, version=__version__))
            self._metrics.messages_out.labels("conversation_initiation_client_data").inc()
            async for frame in ws:
                await self._receive(ws, conversation, frame)
        except websockets.ConnectionClosed:
            pass
        except Exception:  # a bug of ours must not end the daemon: log it and treat as a drop
            log.exception("unexpected error in the conversation loop; reconnecting")
            await ws.close(1011, "client error")
        finally:
            sender.cancel()
            watcher.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            self._ws = None
            self._encode = None
            was_open = conversation.is_open
            self.conversation = None
        lasted = self._clock() - opened_at
        self.backoff.connection_lasted(lasted if was_open else 0.0)
        if was_open:
            self._metrics.connected.set(0)
            self._metrics.conversation_seconds.observe(lasted)
        return self._close_info(ws, conversation, was_open)

    def _close_info(self, ws: ClientConnection, conversation: Conversation, was_open: bool) -> CloseInfo:
        code = ws.close_code
        reason = ws.close_reason or ""
        if self._closing_reason is not None:
            return CloseInfo(Outcome.CLOSED, self._closing_reason, None, code)
        if self._failure is not None:
            return CloseInfo(Outcome.RETRY, self._failure, None, code)
        err = conversation.last_error
        outcome = classify_close(code, reason, err, ended_by_agent=conversation.ended_by_agent)
        if conversation.ended_by_agent:
            text = "the agent ended the call"
        elif err is not None and err.error_type == "max_duration_exceeded":
            text = "the conversation reached its maximum duration"
        elif code in (None, 1006):
            text = "connection lost" + ("" if was_open else " before the conversation opened")
        else:
            text = f"server closed with {code}" + (f" {reason!r}" if reason else "")
            if err is not None and (err.error_type or err.message):
                text += f" ({err.error_type or 'error'}: {(err.message or err.reason or '')[:160]})"
        sent = ws.protocol.close_sent  # a keepalive timeout is our 1011 that the peer never answers
        if sent is not None and sent.code == 1011 and "keepalive" in sent.reason:
            text = "the server stopped answering (no pong within the dead-peer timeout)"
        elif sent is not None and sent.code == 1009:  # websockets refused an oversized frame
            text = f"the server sent a frame over the {MAX_FRAME >> 20} MiB limit"
        if outcome is Outcome.FATAL:
            if err is not None and err.error_type in CONFIG_ERROR_TYPES:
                text += " (check [session] overrides and dynamic_variables against what the agent allows)"
            else:
                text += " (check the API key and agent_id)"
        return CloseInfo(outcome, text, None, code)

    async def _receive(self, ws: ClientConnection, conversation: Conversation, frame: str | bytes) -> None:
        try:
            event = p.decode(frame)
        except ProtocolError as e:
            self._metrics.protocol_errors.inc()
            log.warning("skipped a malformed server frame: %s", e)
            return
        kind = type(event).__name__
        self._metrics.messages_in.labels(kind).inc()
        if isinstance(event, p.Ping):
            conversation.on_ping(event)
            for event_id in conversation.take_pongs():
                await ws.send(p.encode_pong(event_id))
                self._metrics.messages_out.labels("pong").inc()
            if event.ping_ms is not None:
                self._metrics.ping_ms.set(event.ping_ms)
        elif isinstance(event, p.Audio):
            if not conversation.is_open:
                self._metrics.audio_dropped.labels("before_metadata").inc()
                log.warning("agent audio arrived before the conversation metadata; dropped")
                return
            verdict = conversation.on_audio(event)
            if not verdict.play:
                self._metrics.audio_dropped.labels("interrupted").inc()
                return
            self._last_activity = self._clock()
            self._listener.on_audio(event.audio, conversation.output_format or "pcm_16000", verdict.new_turn)
        elif isinstance(event, p.ConversationMetadata):
            if conversation.is_open:
                log.warning("second conversation metadata ignored")
                return
            conversation.on_metadata(event)
            self._open(conversation)
            self._listener.on_open(event)
        elif isinstance(event, p.Interruption):
            conversation.on_interruption(event)
            self._listener.on_interruption(event.event_id)
        else:
            if isinstance(event, p.AgentToolResponse):
                conversation.on_tool_response(event)
            elif isinstance(event, p.ErrorEvent):
                conversation.on_error(event)
            elif isinstance(event, p.Unknown):
                log.debug("ignored server message of unknown type %r", event.type[:60])
                return
            self._listener.on_event(event)

    def _open(self, conversation: Conversation) -> None:
        """Metadata received: the conversation is open; send what waited for it."""
        self._encode = self._encoder_factory(conversation.input_format)
        self._metrics.conversations.inc()
        self._metrics.connected.set(1)
        self._last_activity = self._clock()
        for kind, text in self._pending_texts:
            self._outbox.append((kind, text))
        self._pending_texts.clear()
        if self._prebuffer:
            log.info("sending %.1f s of speech captured while connecting", len(self._prebuffer) * 0.02)
        while self._prebuffer:
            self._queue_audio(self._prebuffer.popleft(), live=False)
        self._outbox_ready.set()

    def _queue_audio(self, frame: bytes, live: bool = True) -> None:
        assert self._encode is not None
        text = p.encode_user_audio(self._encode(frame))
        if live and not self._outbox and self._write_now(text):
            return
        self._outbox.append(("audio", text))
        self._audio_queued += 1
        if not live:
            self._early_queued += 1
        elif self._audio_queued - self._early_queued > MAX_BACKLOG_S * 50:
            self._drop_oldest_live_audio()
        self._outbox_ready.set()

    def _drop_oldest_live_audio(self) -> None:
        """The network cannot keep up: drop the oldest live audio rather than buffer forever.
        Speech kept from before the conversation opened is the user's turn: it stays."""
        skip = self._early_queued
        for i, (kind, _) in enumerate(self._outbox):
            if kind != "audio":
                continue
            if skip:
                skip -= 1
                continue
            del self._outbox[i]
            self._audio_queued -= 1
            self._metrics.audio_dropped.labels("late").inc()
            return

    def _write_now(self, text: str) -> bool:
        """Send a live mic frame straight from the caller, without a hop through the sender task.

        Only when nothing waits ahead of it (the outbox is empty and the transport's write
        buffer is drained, so order and flow control are kept) and the connection is open;
        otherwise False and the frame goes through the outbox. Fifty frames a second make the
        saved task wake-up worth it (see docs/benchmarks.md). Uses websockets' sans-I/O layer:
        ``protocol.send_text`` frames the message, ``data_to_send`` hands over the bytes.
        """
        ws = self._ws
        transport = getattr(ws, "transport", None)
        if ws is None or transport is None or ws.protocol.state is not WsState.OPEN:
            return False
        if transport.is_closing() or transport.get_write_buffer_size():
            return False
        ws.protocol.send_text(text.encode("ascii"))
        for data in ws.protocol.data_to_send():
            if data:  # b"" would mean end of stream, which only a closing handshake sends
                transport.write(data)
        self._last_sent = self._clock()
        self._audio_sent.inc()
        return True

    async def _sender(self, ws: ClientConnection) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                kind, text = self._outbox.popleft()
                if kind == "audio":
                    self._audio_queued -= 1
                    if self._early_queued:  # the early ones are first in line
                        self._early_queued -= 1
                await ws.send(text)
                self._last_sent = self._clock()
                (self._audio_sent if kind == "audio" else self._metrics.messages_out.labels(kind)).inc()

    async def _watch(self, ws: ClientConnection, conversation: Conversation, opened_at: float) -> None:
        """Per-connection timers: metadata deadline, silence keep-alive, on_demand idle close."""
        s = self.settings
        while True:
            await asyncio.sleep(0.25)
            now = self._clock()
            if not conversation.is_open:
                if now - opened_at > s.connect_timeout:
                    self._failure = f"no conversation metadata within {s.connect_timeout:g} s"
                    await ws.close(1000, "no metadata")
                    return
                continue
            if now - self._last_sent > KEEPALIVE_AFTER and not self._outbox and self._encode is not None:
                self._outbox.append(("audio", p.encode_user_audio(self._encode(KEEPALIVE_CHUNK))))
                self._audio_queued += 1
                self._outbox_ready.set()
            if not self.persistent and now - self._last_activity > s.idle_timeout:
                log.info("no speech and no agent audio for %g s: closing the conversation", s.idle_timeout)
                self.end("idle")
                return
