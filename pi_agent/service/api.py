"""The local event API on 127.0.0.1: a JSON WebSocket at ``/events``, ``/healthz``, ``/metrics``.

One port, one server (``websockets``): plain HTTP GETs are answered in
``process_request`` before any WebSocket handshake.

``/events`` sends a snapshot on connect, then one JSON object per event; it accepts
commands: ``start_listening``, ``stop_listening``, ``stop``, ``mute``, ``unmute``,
``say`` (``text``), ``contextual_update`` (``text``) and ``tool_result``
(``tool_call_id``, ``result``, ``is_error``). Each command is answered with
``{"type": "ack", "command": ...}`` or an ``error`` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any, Callable

import websockets
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from ..controller import Controller
from ..decide import inputs as i
from ..events import EventHub
from ..metrics import Metrics

log = logging.getLogger("pi_agent.api")

HOST = "127.0.0.1"
MAX_COMMAND = 64 * 1024


class ApiServer:
    def __init__(self, port: int, controller: Controller, hub: EventHub, metrics: Metrics,
                 extra_snapshot: Callable[[], dict[str, Any]]) -> None:
        self.port = port
        self._controller = controller
        self._hub = hub
        self._metrics = metrics
        self._extra = extra_snapshot
        self._server: Server | None = None

    async def start(self) -> None:
        self._server = await serve(self._handle, HOST, self.port, process_request=self._http,
                                   max_size=MAX_COMMAND, compression=None, server_header=None)
        if self.port == 0:
            self.port = self._server.sockets[0].getsockname()[1]
        log.info("event API on ws://%s:%d/events (also /healthz, /metrics)", HOST, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

    def snapshot(self) -> dict[str, Any]:
        return self._controller.snapshot(self._extra())

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/events":
            return None
        if path == "/healthz":
            ok, reason = self._controller.health()
            body = {"status": "ok" if ok else "unhealthy", "state": self._controller.state.value,
                    "reason": None if ok else reason}
            return _json(connection, HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
        if path == "/metrics":
            response = connection.respond(HTTPStatus.OK, self._metrics.render().decode())
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        return _json(connection, HTTPStatus.NOT_FOUND, {"error": "not found",
                                                        "paths": ["/events", "/healthz", "/metrics"]})

    async def _handle(self, ws: ServerConnection) -> None:
        queue = self._hub.subscribe()
        self._controller.dispatch(i.Subscribers(self._hub.subscribers))
        forward = asyncio.create_task(self._forward(ws, queue))
        try:
            await ws.send(json.dumps(self.snapshot()))
            async for message in ws:
                reply = self._command(message)
                await ws.send(json.dumps(reply))
        except websockets.ConnectionClosed:
            pass
        finally:
            self._hub.unsubscribe(queue)
            self._controller.dispatch(i.Subscribers(self._hub.subscribers))
            forward.cancel()
            await asyncio.gather(forward, return_exceptions=True)

    async def _forward(self, ws: ServerConnection, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        try:
            while (event := await queue.get()) is not None:
                await ws.send(json.dumps(event))
            await ws.close(1008, "event consumer too slow")
        except websockets.ConnectionClosed:
            pass

    def _command(self, message: str | bytes) -> dict[str, Any]:
        try:
            cmd = json.loads(message)
            name = cmd["type"] if isinstance(cmd, dict) else None
        except (ValueError, KeyError, TypeError):
            return _api_error("commands are JSON objects with a 'type', e.g. {\"type\": \"stop\"}")
        c = self._controller
        text = cmd.get("text")
        simple: dict[str, i.Input] = {
            "start_listening": i.StartListening(), "stop_listening": i.StopListening(),
            "stop": i.Stop(), "mute": i.SetMuted(True), "unmute": i.SetMuted(False),
        }
        if name in simple:
            c.dispatch(simple[name])
        elif name in ("say", "contextual_update"):
            if not isinstance(text, str) or not text.strip():
                return _api_error(f"{name} needs a non-empty 'text'")
            c.dispatch(i.Say(text) if name == "say" else i.ContextualUpdate(text))
        elif name == "tool_result":
            call_id, result = cmd.get("tool_call_id"), cmd.get("result", "")
            if not isinstance(call_id, str):
                return _api_error("tool_result needs 'tool_call_id'")
            if not c.tool_result(call_id, result if isinstance(result, str) else json.dumps(result),
                                 bool(cmd.get("is_error", False))):
                return _api_error(f"no pending tool call {call_id!r}")
        else:
            return _api_error(f"unknown command {str(name)[:40]!r}; known: "
                              + ", ".join([*simple, "say", "contextual_update", "tool_result"]))
        return {"type": "ack", "command": name}


def _api_error(message: str) -> dict[str, Any]:
    return {"type": "error", "source": "api", "message": message}


def _json(connection: ServerConnection, status: HTTPStatus, body: dict[str, Any]) -> Response:
    response = connection.respond(status, json.dumps(body) + "\n")
    response.headers["Content-Type"] = "application/json"
    return response
