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
==========================================  =============================  ==================================

Both listeners are ``websockets`` servers: plain HTTP GETs are answered in
``process_request`` before any WebSocket handshake. Every command is a JSON object
with a ``type`` and exactly the fields of its kind, of exactly their types; anything
else gets an ``error`` reply (never a closed connection or a traceback). Connections are
bounded: at most ``api.max_clients`` event subscribers (more are refused with 503 at
the handshake), at most :data:`MAX_OPEN` connections at all (more are closed at once),
and a connection that sends no request is dropped after :data:`OPEN_TIMEOUT`.
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
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve, unix_serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..config import ApiSettings
from ..controller import Controller
from ..decide import inputs as i
from ..events import EventHub, Level, Subscription
from ..metrics import Metrics

log = logging.getLogger("pi_agent.api")

HOST = "127.0.0.1"
MAX_COMMAND = 64 * 1024  # bytes in one command frame
MAX_TEXT = 60_000  # characters of a say / contextual_update text
MAX_OPEN = 1024  # connections at once, handshakes included; more are closed at once
OPEN_TIMEOUT = 3.0  # s for a connection to complete its request
REFUSED_LOG_INTERVAL = 60.0


# --- where the socket is -------------------------------------------------------------------


def _user_runtime_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "pi-agent" if base else Path(tempfile.gettempdir()) / f"pi-agent-{os.getuid()}"


def server_socket_path(setting: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the daemon listens: ``api.socket``, or (``auto``) the systemd runtime directory
    (``RuntimeDirectory=pi-agent``: ``/run/pi-agent/api.sock``), else the user's own."""
    if setting == "off":
        return None
    if setting != "auto":
        return Path(setting)
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return (Path(runtime) if runtime else _user_runtime_dir(environ)) / "api.sock"


def client_socket_paths(setting: str, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a CLI command looks for the daemon, in order: the configured socket, else the
    service's (``/run/pi-agent/api.sock``), else one of this user's own."""
    if setting == "off":
        return []
    if setting != "auto":
        return [Path(setting)]
    paths = [server_socket_path("auto", environ), Path("/run/pi-agent/api.sock"),
             _user_runtime_dir(environ) / "api.sock"]
    return list(dict.fromkeys(p for p in paths if p is not None))


def _prepare_socket_dir(path: Path) -> None:
    """Make the socket's directory (0700 when we create it); refuse one owned by somebody
    else (another user's /tmp directory could hand our commands to their process)."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as e:
        raise OSError(e.errno, f"cannot make the directory for the API socket {directory}: {e.strerror}") from None
    if info.st_uid not in (os.getuid(), 0) or (info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX):
        raise OSError(f"the API socket directory {directory} belongs to another user or is writable by anyone")
    if path.is_socket():
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a daemon that is gone
            else:
                raise OSError(f"another pi-agent answers on {path} (set [api] socket to a path of its own)")


# --- commands ---------------------------------------------------------------------------------


class CommandError(ValueError):
    """A command the API refuses; the message goes back to the client."""


@dataclass(frozen=True)
class _Field:
    kind: type
    required: bool = True


_COMMANDS: dict[str, dict[str, _Field]] = {
    "start_listening": {}, "stop_listening": {}, "stop": {}, "mute": {}, "unmute": {},
    "say": {"text": _Field(str)},
    "contextual_update": {"text": _Field(str), "context_id": _Field(str, False)},
    "tool_result": {"tool_call_id": _Field(str), "result": _Field(str), "is_error": _Field(bool, False)},
    "handle_tools": {"tools": _Field(list)},
    "mcp_tool_approval": {"tool_call_id": _Field(str), "approved": _Field(bool)},
}


def parse_command(message: str | bytes) -> dict[str, Any]:
    """The command in ``message``, checked field by field; :class:`CommandError` says what is wrong."""
    try:
        cmd = json.loads(message)
    except (ValueError, RecursionError):
        raise CommandError('commands are JSON objects with a "type", e.g. {"type": "stop"}') from None
    if not isinstance(cmd, dict):
        raise CommandError(f'a command is a JSON object with a "type", not {type(cmd).__name__}')
    name = cmd.get("type")
    if not isinstance(name, str) or name not in _COMMANDS:
        raise CommandError(f"unknown command {str(name)[:40]!r}; known: {', '.join(_COMMANDS)}")
    fields = _COMMANDS[name]
    extra = sorted(set(cmd) - set(fields) - {"type"})
    if extra:
        raise CommandError(f"{name} takes no field {', '.join(repr(k[:40]) for k in extra)}"
                           f" (its fields: {', '.join(fields) or 'none'})")
    for key, spec in fields.items():
        if key not in cmd:
            if spec.required:
                raise CommandError(f"{name} needs {key!r} ({spec.kind.__name__})")
            continue
        value = cmd[key]
        if type(value) is not spec.kind:  # exactly: true is no number, "false" no boolean
            raise CommandError(f"{name}.{key} must be a {spec.kind.__name__}, got {type(value).__name__}")
    for key in ("text",):
        if key in cmd and (not cmd[key].strip() or len(cmd[key]) > MAX_TEXT):
            raise CommandError(f"{name} needs a non-empty {key!r} of at most {MAX_TEXT} characters")
    if name == "handle_tools" and not all(isinstance(t, str) and 0 < len(t) <= 200 for t in cmd["tools"]):
        raise CommandError('handle_tools.tools must be a list of tool names (or ["*"] for every tool)')
    return cmd


_ALL_COMMANDS = frozenset(_COMMANDS)
_PAGE_COMMANDS = frozenset({"start_listening", "stop_listening", "stop", "mute", "unmute"})


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
                 extra_snapshot: Callable[[], dict[str, Any]], *, socket_path: Path | None) -> None:
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
        self._open = 0  # connections, handshakes included
        self._tools: dict[ServerConnection, frozenset[str]] = {}
        self._refused = 0
        self._refused_logged_at = -REFUSED_LOG_INTERVAL

    async def start(self) -> None:
        """Listen; raises OSError (port taken, socket directory unusable) with a clear message."""
        common: dict[str, Any] = {"max_size": MAX_COMMAND, "compression": None, "server_header": None,
                                  "open_timeout": OPEN_TIMEOUT, "create_connection": self._connection_class()}
        try:
            if self.socket_path is not None:
                _prepare_socket_dir(self.socket_path)
                server = await unix_serve(self._handle_unix, str(self.socket_path), process_request=self._http_unix,
                                          **common)
                self._servers.append(server)
                os.chmod(self.socket_path, 0o660)
                log.info("event API on %s (commands and transcripts; mode 0660)", self.socket_path)
            if self.port:
                server = await serve(self._handle_tcp, HOST, self.port, process_request=self._http_tcp, **common)
                self._servers.append(server)
                self.port = server.sockets[0].getsockname()[1]
                log.info("health and metrics on http://%s:%d/healthz and /metrics; a view of the events on "
                         "ws://%s:%d/events", HOST, self.port, HOST, self.port)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close(close_connections=True)
        for server in servers:
            await server.wait_closed()
        if self.socket_path is not None and servers:
            with contextlib.suppress(OSError):
                self.socket_path.unlink()

    def snapshot(self) -> dict[str, Any]:
        return self._controller.snapshot(self._extra())

    # --- admission -------------------------------------------------------------------------

    def _connection_class(self) -> type[ServerConnection]:
        api = self

        class Connection(ServerConnection):
            """Counts itself; past :data:`MAX_OPEN` it is closed at once, costing no fd for long."""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                api._open += 1
                if api._open > MAX_OPEN:
                    api._refuse("too many connections")
                    self.transport.abort()

            def connection_lost(self, exc: Exception | None) -> None:
                api._open -= 1
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
            ok, reason = self._controller.health()
            body = {"status": "ok" if ok else "unhealthy", "state": self._controller.state.value,
                    "reason": None if ok else reason}
            return _json(connection, HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
        if path == "/metrics":
            response = connection.respond(HTTPStatus.OK, self._metrics.render().decode())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        paths = ["/", "/events", "/healthz", "/metrics"] if page and self._page != "off" else [
            "/events", "/healthz", "/metrics"]
        return _json(connection, HTTPStatus.NOT_FOUND, {"error": "not found", "paths": paths})

    # --- WebSocket ---------------------------------------------------------------------------

    async def _handle_unix(self, ws: ServerConnection) -> None:
        await self._serve(ws, "full", _ALL_COMMANDS)

    async def _handle_tcp(self, ws: ServerConnection) -> None:
        """The page (a browser at the daemon's own origin) gets captions, and with
        ``page_control`` its buttons; anything else on the port gets the status view."""
        page = ws.request is not None and ws.request.headers.get("Origin") is not None  # _http_tcp checked it
        if page and self._page == "captions":
            await self._serve(ws, "captions", _PAGE_COMMANDS if self._page_control else frozenset())
        else:
            await self._serve(ws, "status", _PAGE_COMMANDS if page and self._page_control else frozenset())

    async def _serve(self, ws: ServerConnection, level: Level, allowed: frozenset[str]) -> None:
        sub = self._hub.subscribe(level)
        forward = asyncio.create_task(self._forward(ws, sub))
        try:
            await ws.send(json.dumps({**self.snapshot(), "page_control": bool(allowed) and level != "full"}))
            async for message in ws:
                await ws.send(json.dumps(self._command(ws, message, allowed)))
        except websockets.ConnectionClosed:
            pass
        finally:
            self._hub.unsubscribe(sub)
            if self._tools.pop(ws, None) is not None:
                self._tools_changed()
            forward.cancel()
            await asyncio.gather(forward, return_exceptions=True)

    async def _forward(self, ws: ServerConnection, sub: Subscription) -> None:
        try:
            while (text := await sub.queue.get()) is not None:
                await ws.send(text)
            await ws.close(1008, "event consumer too slow")
        except websockets.ConnectionClosed:
            pass

    def _command(self, ws: ServerConnection, message: str | bytes, allowed: frozenset[str]) -> dict[str, Any]:
        if not allowed:
            return _api_error("this connection is a view: commands are taken on the Unix socket "
                              "(pi-agent status shows where)")
        try:
            cmd = parse_command(message)
        except CommandError as e:
            return _api_error(str(e))
        name: str = cmd["type"]
        if name not in allowed:
            return _api_error(f"the page may send only {', '.join(sorted(allowed))}")
        c = self._controller
        simple: dict[str, i.Input] = {
            "start_listening": i.StartListening(), "stop_listening": i.StopListening(),
            "stop": i.Stop(), "mute": i.SetMuted(True), "unmute": i.SetMuted(False),
        }
        if name in simple:
            c.dispatch(simple[name])
        elif name == "say":
            c.dispatch(i.Say(cmd["text"]))
        elif name == "contextual_update":
            c.dispatch(i.ContextualUpdate(cmd["text"], cmd.get("context_id")))
        elif name == "tool_result":
            if not c.tool_result(cmd["tool_call_id"], cmd["result"], cmd.get("is_error", False)):
                return _api_error(f"no pending tool call {cmd['tool_call_id'][:80]!r}")
        elif name == "mcp_tool_approval":
            if not c.mcp_approval(cmd["tool_call_id"], cmd["approved"]):
                return _api_error(f"no MCP tool call awaiting approval {cmd['tool_call_id'][:80]!r}")
        else:  # handle_tools
            self._tools[ws] = frozenset(cmd["tools"])
            self._tools_changed()
        return {"type": "ack", "command": name}

    def _tools_changed(self) -> None:
        handled = frozenset().union(*self._tools.values()) if self._tools else frozenset()
        self._controller.dispatch(i.ToolHandlers(handled))


def _api_error(message: str) -> dict[str, Any]:
    return {"type": "error", "source": "api", "message": message}


def _json(connection: ServerConnection, status: HTTPStatus, body: dict[str, Any]) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    response.headers["Content-Type"] = "application/json"
    return response
