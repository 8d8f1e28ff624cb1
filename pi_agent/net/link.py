"""One WebSocket connection: websockets' sans-I/O client protocol on an asyncio transport.

websockets does the WebSocket work (handshake, framing, masking, size limits, close
frames, answering pings) in its sans-I/O layer (``websockets.client.ClientProtocol``);
this module is the thin I/O around it, as websockets documents for other event loops.
Owning it buys three things the library's asyncio connection cannot give here:

- **writing never waits**: a frame goes to the transport at once, on the caller's
  stack (no task, no ``await drain()``); flow control comes back as
  ``pause``/``resume`` calls, and the engine keeps what waits, bounded;
- **reading never stops**: every byte received is reported (``heard``), pongs
  included, so dead-peer detection does not depend on being able to write;
- **nothing queues in between**: frames go to the handler as they are parsed;
- **a text message costs little**: the daemon sends one every 20 ms, so :meth:`Link.send_text`
  frames it itself (RFC 6455 section 5.2: one final, masked text frame; no extension is
  negotiated) and writes it at once, instead of going through websockets' ``Frame`` and
  its write queue; the masks come from ``os.urandom`` 4 KiB at a time, not one system call
  per frame. Everything else (handshake, control frames, closing, all of reading) stays
  websockets'.

Everything here runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from typing import Protocol

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from .tls import tls_context

try:  # websockets' C masking (a wheel has it), else its pure-Python one
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a websockets built without its C extension
    from websockets.utils import apply_mask

log = logging.getLogger("pi_agent.session")

SEND_BUFFER = 32 * 1024  # socket send buffer asked for; the kernel doubles it: ~1.5 s of audio
WRITE_HIGH = 32 * 1024  # the transport's own buffer: above this, the writer is paused
WRITE_LOW = 8 * 1024
MASK_POOL = 4096  # bytes of os.urandom drawn at once for the frames' masking keys


class _Masks:
    """Masking keys for client frames (RFC 6455 5.3: from a strong source of entropy, a new
    one per frame): os.urandom, drawn :data:`MASK_POOL` bytes at a time."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = MASK_POOL

    def next(self) -> bytes:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(MASK_POOL), 0
        self._at = at + 4
        return self._pool[at:at + 4]


_MASKS = _Masks()


def text_frame(payload: bytes, mask: bytes) -> bytes:
    """One final text frame of ``payload``, masked with ``mask`` (4 bytes), as a client sends it."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 0xFE, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0xFF, n)
    return head + mask + apply_mask(payload, mask)


class LinkHandler(Protocol):
    """What a :class:`Link` reports. Called on the event loop."""

    def link_open(self, link: Link) -> None: ...
    def link_closing(self) -> None: ...
    def link_heard(self) -> None: ...
    def link_frame(self, data: str | bytes) -> None: ...
    def link_closed(self, code: int | None, reason: str, sent_code: int | None) -> None: ...
    def link_pause(self) -> None: ...
    def link_resume(self) -> None: ...


class Link(asyncio.Protocol):
    """The transport side of one connection. Build it with :func:`open_link`."""

    def __init__(self, protocol: ClientProtocol, handler: LinkHandler, *, send_buffer: int = SEND_BUFFER) -> None:
        self._proto = protocol
        self._handler = handler
        self._send_buffer = send_buffer
        self._transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._closing = False
        self.is_open = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.opened.add_done_callback(_retrieve)  # a failure nobody waits for any more is no error

    # --- commands ---------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        proto = self._proto
        if proto.state is not State.OPEN:
            return
        transport = self._transport
        if proto.extensions or proto.expect_continuation_frame or transport is None or transport.is_closing():
            proto.send_text(text.encode())  # websockets' own way (not reached by this client)
            self._flush()
            return
        transport.write(text_frame(text.encode(), _MASKS.next()))

    def ping(self) -> None:
        if self._proto.state is State.OPEN:
            self._proto.send_ping(os.urandom(4))
            self._flush()

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (the engine aborts if it is not answered in time)."""
        if self._proto.state is State.OPEN:
            self._proto.send_close(code, reason)
            self._flush()
        self._check_closing()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # keep the kernel's queue short: a backlog then builds where it is bounded
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        self._flush()  # the opening handshake request

    def data_received(self, data: bytes) -> None:
        proto = self._proto
        proto.receive_data(data)
        events = proto.events_received()
        self._flush()  # automatic answers: pongs, the close frame
        try:
            if self.is_open:
                self._handler.link_heard()
            for event in events:
                if isinstance(event, Frame):
                    self._frame(event)
                elif isinstance(event, Response):
                    self._response()
        except Exception:  # a bug of ours must not end the daemon: drop this connection
            log.exception("unexpected error while handling what the server sent; reconnecting")
            if proto.state is State.OPEN:
                proto.fail(1011, "client error")
                self._flush()
            self.abort()
        self._check_closing()

    def eof_received(self) -> None:
        self._proto.receive_eof()
        self._flush()
        # returning None closes the transport: after EOF there is nothing left to say

    def connection_lost(self, exc: Exception | None) -> None:
        proto = self._proto
        proto.receive_eof()  # idempotent; the protocol is CLOSED from here
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection closed during the handshake ({exc or 'EOF'})"))
            return
        if self.is_open:
            self.is_open = False
            rcvd, sent = proto.close_rcvd, proto.close_sent
            self._handler.link_closed(rcvd.code if rcvd is not None else None, rcvd.reason if rcvd is not None else "",
                                      sent.code if sent is not None else None)

    def pause_writing(self) -> None:
        self._handler.link_pause()

    def resume_writing(self) -> None:
        self._handler.link_resume()

    # --- inside ---------------------------------------------------------------------------------

    def _check_closing(self) -> None:
        """Once the closing handshake has begun (either side) nothing more can be sent: say
        so at once, so that speech from now on is kept for the next conversation."""
        if self.is_open and not self._closing and self._proto.state is not State.OPEN:
            self._closing = True
            self._handler.link_closing()

    def _response(self) -> None:
        if self.opened.done():
            return
        if self._proto.handshake_exc is not None:
            self.opened.set_exception(self._proto.handshake_exc)
            self.abort()
            return
        self.is_open = True
        self.opened.set_result(None)
        self._handler.link_open(self)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:  # the first of a fragmented message (websockets bounds the whole)
                self._fragments, self._fragment_text = [bytes(frame.data)], opcode is Opcode.TEXT
                return
            self._deliver(bytes(frame.data), opcode is Opcode.TEXT)
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._deliver(data, self._fragment_text)

    def _deliver(self, data: bytes, text: bool) -> None:
        # websockets has checked that text frames are UTF-8 (or failed the connection: 1007).
        self._handler.link_frame(data.decode() if text else data)

    def _flush(self) -> None:
        transport = self._transport
        for data in self._proto.data_to_send():
            if transport is None or transport.is_closing():
                continue
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:  # TLS: no half-close
                transport.close()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


async def open_link(url: str, handler: LinkHandler, *, timeout: float, max_size: int,
                    user_agent: str, send_buffer: int = SEND_BUFFER) -> Link:
    """Connect to ``url`` (ws:// or wss://) and complete the opening handshake within
    ``timeout``; ``handler.link_open`` is called the moment it completes.

    Raises ``websockets.InvalidURI``, ``websockets.InvalidStatus`` (the server refused:
    its response holds the status and headers), other ``websockets.InvalidHandshake``,
    ``OSError`` (DNS, refused, reset, TLS) or ``TimeoutError``. A server certificate refused
    on its dates is ``ssl.SSLCertVerificationError`` (an ``OSError``): when the system clock
    is at fault, :func:`~pi_agent.net.signed_url.clock_error` says so.
    """
    uri = parse_uri(url)
    protocol = ClientProtocol(uri, max_size=max_size)
    request = protocol.connect()
    request.headers["User-Agent"] = user_agent
    protocol.send_request(request)
    loop = asyncio.get_running_loop()
    context = tls_context() if uri.secure else None
    link: Link | None = None

    def factory() -> Link:
        nonlocal link
        link = Link(protocol, handler, send_buffer=send_buffer)
        return link

    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(factory, uri.host, uri.port, ssl=context,
                                         server_hostname=uri.host if context else None)
            assert link is not None
            await link.opened
    except TimeoutError:
        if link is not None and link.is_open:  # opened just as the time ran out: it stands
            return link
        if link is not None:
            link.abort()
        raise
    except BaseException:
        if link is not None and not link.is_open:  # an open one belongs to the handler now
            link.abort()
        raise
    return link
