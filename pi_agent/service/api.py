"""The local event API. Who may do what is decided here, at the edge, and nowhere else:

==========================================  =============================  ==================================
who                                         where                          what
==========================================  =============================  ==================================
members of the daemon's group (and root)    Unix socket ``api.socket``     the snapshot, every event
                                            (mode 0660, in the runtime     (transcripts included), every
                                            directory)                     command, client tools
any local process                           TCP ``127.0.0.1:api.port``     ``GET /healthz``, ``GET /metrics``
                                                                           (no transcripts, no secrets)
any local process, the daemon's own pages   ``ws://127.0.0.1:port/events``  a view: the snapshot and state,
                                                                           connection, mute and interruption
                                                                           events; no commands
any other web page                          TCP, with a foreign ``Origin``  nothing: 403
the network (a fleet's Prometheus), opt-in  ``api.metrics_listen``         ``GET /metrics``, ``GET /healthz``
                                            (:mod:`.scrape`)               only; no page, events or commands
==========================================  =============================  ==================================

Both listeners are ``websockets`` servers: plain HTTP GETs are answered in
``process_request`` before any WebSocket handshake. Every command is a JSON object
with a ``type`` and exactly the fields of its kind, of exactly their types; anything
else gets an ``error`` reply (never a closed connection or a traceback). Connections are
bounded: at most ``api.max_clients`` event subscribers (more are refused with 503 at
the handshake), at most :data:`MAX_OPEN` connections on each listener (past that, the one
that has waited longest in its handshake is closed, or the new one if none is waiting: a
flood of idle connections keeps cycling, a request still gets in, and a flood of the
loopback port never locks the admin's socket out),
and a connection that sends no request is dropped after :data:`OPEN_TIMEOUT`.

Here: the listeners, admission, the HTTP routes, the kiosk page and which connection may
send which commands. The commands themselves are checked and carried out by
:mod:`.commands`; where the Unix socket is, by :mod:`.socket_paths` (both re-exported here).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve, unix_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..config import ApiSettings
from ..controller import Controller
from ..events import EventHub, Level, Subscription
from ..metrics import Metrics
from .scrape import ScrapeListener
from .logging import redact
from .commands import ALL_COMMANDS, MAX_TEXT, PAGE_COMMANDS, CommandError, Commands, parse_command
from .socket_paths import client_socket_paths, prepare_socket_dir, server_socket_path

__all__ = ["HOST", "MAX_COMMAND", "MAX_OPEN", "MAX_TEXT", "OPEN_TIMEOUT", "ApiServer", "CommandError",
           "client_socket_paths", "parse_command", "server_socket_path"]

log = logging.getLogger("pi_agent.api")

HOST = "127.0.0.1"
MAX_COMMAND = 64 * 1024  # bytes in one command frame
MAX_OPEN = 1024  # connections at once, handshakes included; more are closed at once
OPEN_TIMEOUT = 3.0  # s for a connection to complete its request
REFUSED_LOG_INTERVAL = 60.0


# --- the kiosk page --------------------------------------------------------------------------------


@functools.cache
def _page_html() -> bytes:
    """page.html with each state's colour from the LED picture (one source for both)."""
    from ..decide.leds import state_colors

    text = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    return text.replace("/*LOOKS*/{}", json.dumps(state_colors())).encode()


def _script_hash(html: bytes) -> str:
    start = html.index(b"<script>") + len(b"<script>")
    script = html[start:html.index(b"</script>", start)]
    return "sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode()


@functools.cache
def _page_headers() -> dict[str, str]:
    """The page runs nothing but its own script, talks to nothing but its own origin, and
    no other site may frame it."""
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": (f"default-src 'none'; script-src '{_script_hash(_page_html())}'; "
                                    "style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"),
    }


# --- the server ----------------------------------------------------------------------------------


class ApiServer:
    """The Unix socket (full access) and the TCP port (health, metrics, a view)."""

    def __init__(self, settings: ApiSettings, controller: Controller, hub: EventHub, metrics: Metrics,
                 extra_snapshot: Callable[[], dict[str, Any]], *, socket_path: Path | None,
                 names: tuple[str, ...] = ()) -> None:
        self.port = settings.port
        self.socket_path = socket_path
        self._page = settings.page
        self._page_control = settings.page_control
        self._max_clients = settings.max_clients
        self._controller = controller
        self._hub = hub
        self._metrics = metrics
        self._extra = extra_snapshot
        self._servers: list[Server] = []
        # connections per listener, handshakes included, oldest first
        self._open: dict[str, dict[ServerConnection, None]] = {"unix": {}, "tcp": {}}
        self._commands = Commands(controller)
        self._refused = 0
        self._refused_logged_at = -REFUSED_LOG_INTERVAL
        self.scrape = (ScrapeListener(settings.metrics_listen, metrics, self.health, names=names,
                                      max_open=MAX_OPEN, open_timeout=OPEN_TIMEOUT)
                       if settings.metrics_listen else None)

    async def start(self) -> None:
        """Listen; raises OSError (port taken, socket directory unusable) with a clear message."""
        common: dict[str, Any] = {"max_size": MAX_COMMAND, "compression": None, "server_header": None,
                                  "open_timeout": OPEN_TIMEOUT}
        try:
            if self.socket_path is not None:
                prepare_socket_dir(self.socket_path)
                server = await unix_serve(self._handle_unix, str(self.socket_path), process_request=self._http_unix,
                                          create_connection=self._connection_class("unix"), **common)
                self._servers.append(server)
                os.chmod(self.socket_path, 0o660)
                log.info("event API on %s (commands and transcripts; mode 0660)", self.socket_path)
            if self.port:
                # the kernel queues a burst as large as MAX_OPEN (a healthz request behind a flood
                # waits for the loop, not for a dropped SYN's retry a second later)
                server = await serve(self._handle_tcp, HOST, self.port, process_request=self._http_tcp,
                                     backlog=MAX_OPEN, create_connection=self._connection_class("tcp"), **common)
                self._servers.append(server)
                self.port = server.sockets[0].getsockname()[1]
                log.info("health and metrics on http://%s:%d/healthz and /metrics; a view of the events on "
                         "ws://%s:%d/events", HOST, self.port, HOST, self.port)
            if self.scrape is not None:
                await self.scrape.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.scrape is not None:
            await self.scrape.close()
        servers, self._servers = self._servers, []
        for server in servers:
            server.close(close_connections=True)
        for server in servers:
            await server.wait_closed()
        if self.socket_path is not None and servers:
            with contextlib.suppress(OSError):
                self.socket_path.unlink()

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: 200 while healthy, 503 with the reason while not."""
        ok, reason = self._controller.health()
        body = {"status": "ok" if ok else "unhealthy", "state": self._controller.state.value,
                "reason": None if ok else reason}
        return (HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE).value, body

    def snapshot(self, level: Level = "full") -> dict[str, Any]:
        return self._controller.snapshot(self._extra(), captions=level != "status")

    # --- admission -------------------------------------------------------------------------

    def _connection_class(self, listener: str) -> type[ServerConnection]:
        api = self

        class Connection(ServerConnection):
            """Counts itself on its listener; past :data:`MAX_OPEN` the oldest connection still in
            its handshake is closed (this one if there is none), costing no fd for long."""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                open_here = api._open[listener]
                open_here[self] = None
                if len(open_here) > MAX_OPEN:
                    api._refuse(f"more than {MAX_OPEN} connections at once; the longest idle closed")
                    oldest = next((c for c in open_here if c.protocol.state is State.CONNECTING), self)
                    oldest.transport.abort()

            def connection_lost(self, exc: Exception | None) -> None:
                api._open[listener].pop(self, None)
                super().connection_lost(exc)

        return Connection

    def _refuse(self, why: str) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= REFUSED_LOG_INTERVAL:
            self._refused_logged_at = now
            log.warning("event API: refused %d connection(s) (%s; [api] max_clients = %d)", self._refused, why,
                        self._max_clients)
            self._refused = 0

    def _subscribers_full(self, connection: ServerConnection) -> Response | None:
        if self._hub.subscribers >= self._max_clients:
            self._refuse("too many event subscribers")
            return _json(connection, HTTPStatus.SERVICE_UNAVAILABLE,
                         {"error": f"too many event API clients (at most {self._max_clients})"})
        return None

    # --- HTTP ------------------------------------------------------------------------------

    def _http_tcp(self, connection: ServerConnection, request: Request) -> Response | None:
        host = request.headers.get("Host", "")
        own = {f"{HOST}:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}", HOST, "localhost"}
        if host not in own:  # DNS rebinding: a page of another site resolved to this machine
            return _json(connection, HTTPStatus.FORBIDDEN, {"error": f"unexpected Host {host[:80]!r}"})
        origin = request.headers.get("Origin")
        if origin is not None and origin not in {f"http://{h}" for h in own}:
            return _json(connection, HTTPStatus.FORBIDDEN, {"error": "this API serves no other web origin"})
        return self._http(connection, request, page=True)

    def _http_unix(self, connection: ServerConnection, request: Request) -> Response | None:
        return self._http(connection, request)

    def _http(self, connection: ServerConnection, request: Request, *, page: bool = False) -> Response | None:
        path = request.path.split("?", 1)[0]
        if page and path in ("/", "/index.html") and self._page != "off":
            page_html = _page_html()
            headers = Headers(_page_headers())
            headers["Content-Length"] = str(len(page_html))
            return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, page_html)
        if path == "/events":
            return self._subscribers_full(connection)
        if path == "/healthz":
            status, body = self.health()
            return _json(connection, HTTPStatus(status), body)
        if path == "/metrics":
            response = connection.respond(HTTPStatus.OK, self._metrics.render().decode())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        paths = ["/", "/events", "/healthz", "/metrics"] if page and self._page != "off" else [
            "/events", "/healthz", "/metrics"]
        return _json(connection, HTTPStatus.NOT_FOUND, {"error": "not found", "paths": paths})

    # --- WebSocket ---------------------------------------------------------------------------

    async def _handle_unix(self, ws: ServerConnection) -> None:
        await self._serve(ws, "full", ALL_COMMANDS)

    async def _handle_tcp(self, ws: ServerConnection) -> None:
        """The page (a browser at the daemon's own origin) gets captions, and with
        ``page_control`` its buttons; anything else on the port gets the status view."""
        page = ws.request is not None and ws.request.headers.get("Origin") is not None  # _http_tcp checked it
        if page and self._page == "captions":
            await self._serve(ws, "captions", PAGE_COMMANDS if self._page_control else frozenset())
        else:
            await self._serve(ws, "status", PAGE_COMMANDS if page and self._page_control else frozenset())

    async def _serve(self, ws: ServerConnection, level: Level, allowed: frozenset[str]) -> None:
        sub = self._hub.subscribe(level)
        forward = asyncio.create_task(self._forward(ws, sub))
        try:
            await ws.send(_text({**self.snapshot(level), "page_control": bool(allowed) and level != "full"}))
            async for message in ws:
                await ws.send(_text(self._commands.run(ws, message, allowed)))
        except websockets.ConnectionClosed:
            pass
        finally:
            self._hub.unsubscribe(sub)
            self._commands.forget(ws)
            forward.cancel()
            await asyncio.gather(forward, return_exceptions=True)

    async def _forward(self, ws: ServerConnection, sub: Subscription) -> None:
        try:
            while (text := await sub.queue.get()) is not None:
                await ws.send(text)
            await ws.close(1008, "event consumer too slow")
        except websockets.ConnectionClosed:
            pass


def _text(body: dict[str, Any]) -> str:
    """What a client gets: JSON with the secrets masked (the service's words, such as a close
    reason in /healthz, may echo the API key)."""
    return redact(json.dumps(body))


def _json(connection: ServerConnection, status: HTTPStatus, body: dict[str, Any]) -> Response:
    response = connection.respond(status, _text(body) + "\n")
    response.headers["Content-Type"] = "application/json"
    return response
