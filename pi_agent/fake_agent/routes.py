"""The plain-HTTP side of the fake's one port, answered through websockets' ``process_request``.

- ``/v1/convai/conversation``: the WebSocket handshake, refused while a handshake fault is
  queued, and (with ``api_key``) without a valid, unused ``conversation_signature``;
- ``/v1/convai/conversation/get-signed-url`` (alias ``get_signed_url``): a signed URL with a
  fresh signature, or the next queued signed-URL fault;
- ``/_fake/conversations``, ``/_fake/received``, ``/_fake/sent``: the records, as JSON;
- ``/_fake/control?action=...``: the control API (:mod:`.control`).
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .faults import fault_body

if TYPE_CHECKING:
    from .server import FakeAgent

log = logging.getLogger("pi_agent.fake_agent")

WS_PATH = "/v1/convai/conversation"
SIGNED_URL_PATHS = ("/v1/convai/conversation/get-signed-url", "/v1/convai/conversation/get_signed_url")
OPEN_TIMEOUT = 60.0  # also caps how long a signed-URL "timeout" fault can hold a request


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


@dataclass
class Signature:
    """A conversation signature handed out with a signed URL; a handshake may use it once."""

    agent_id: str
    used: bool = False


class Routes:
    """Answers the fake's plain HTTP requests; holds the signatures it has handed out."""

    def __init__(self, agent: FakeAgent) -> None:
        self.agent = agent
        self._signatures: dict[str, Signature] = {}

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """websockets' ``process_request`` hook: the answer to a plain request, or None to let
        a WebSocket handshake go on."""
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
        if self.agent._handshake_faults:
            status = self.agent._handshake_faults.popleft()
            extra = (("Retry-After", "1"),) if status in (429, 503) else ()
            log.info("fake agent: rejecting a handshake with %d (fault)", status)
            return _text(status, f"{http.HTTPStatus(status).phrase} (fake fault)\n", extra)
        if self.agent.options.api_key is not None:
            signature = self._signatures.get(query.get("conversation_signature", ""))
            if signature is None or signature.used or signature.agent_id != query.get("agent_id"):
                log.info("fake agent: refusing a handshake without a valid, unused signature")
                return _text(403, "Forbidden: a valid, unused conversation_signature is required\n")
            signature.used = True
        return None

    async def _signed_url(self, request: Request, query: dict[str, str]) -> Response:
        fault = self.agent._url_faults.popleft() if self.agent._url_faults else None
        if fault is not None and fault["status"] is not None:
            status = fault["status"]
            extra = (("Retry-After", "1"),) if status == 429 else ()
            log.info("fake agent: signed URL request answered %d (fault)", status)
            return _json(status, fault_body(status), extra)
        if fault is not None and fault["kind"] == "timeout":
            log.info("fake agent: holding a signed URL request for %.1f s (fault)", fault["seconds"])
            await asyncio.sleep(fault["seconds"])
        if self.agent.options.api_key is not None and not secrets.compare_digest(
            request.headers.get("xi-api-key", ""), self.agent.options.api_key
        ):
            return _json(401, fault_body(401))
        agent_id = query.get("agent_id")
        if not agent_id:
            return _json(422, {"detail": [{"loc": ["query", "agent_id"], "msg": "field required", "type": "missing"}]})
        if fault is not None and fault["kind"] == "not_json":
            return _http(200, b"<html><body>Welcome to nginx!</body></html>", "text/html")
        signature = secrets.token_urlsafe(24)
        self._signatures[signature] = Signature(agent_id)
        host = request.headers.get("Host") or f"{self.agent._url_host}:{self.agent.port}"
        scheme = "http" if fault is not None and fault["kind"] == "not_ws_url" else "ws"
        qs = urlencode({"agent_id": agent_id, "conversation_signature": signature})
        return _json(200, {"signed_url": f"{scheme}://{host}{WS_PATH}?{qs}"})

    async def _fake_api(self, path: str, query: dict[str, str]) -> Response:
        if path == "/_fake/conversations":
            return _json(200, {"conversations": [r.summary() for r in self.agent.conversations]})
        if path in ("/_fake/received", "/_fake/sent"):
            try:
                record = self.agent.conversation(query.get("conversation", ""))
            except LookupError as exc:
                return _json(404, {"detail": str(exc)})
            return _json(200, record.received_json() if path == "/_fake/received" else record.sent_json())
        if path == "/_fake/control":
            action = query.pop("action", "")
            try:
                result = await self.agent.control(action, query)
            except LookupError as exc:
                return _json(404, {"ok": False, "detail": str(exc)})
            except ValueError as exc:
                return _json(400, {"ok": False, "detail": str(exc)})
            except ConnectionClosed:
                return _json(409, {"ok": False, "detail": "the conversation closed meanwhile"})
            return _json(200, {"ok": True, "action": action, **result})
        return _json(404, {"detail": "Not Found"})
