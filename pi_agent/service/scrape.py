"""The scrape listener (``[api] metrics_listen``, off by default): ``GET /metrics`` and
``GET /healthz`` on an address of the network, for a fleet's Prometheus, and nothing else.

A plain HTTP/1.x server of a few lines (no WebSocket code behind it at all): no events, no
page, no commands. Every other path is 404, every other method 405 (``Allow: GET``), what is
not an HTTP request 400; one request per connection, its body never read. Bounded like the
event API's port: at most ``max_open`` connections at once (past that, the one that has
waited longest without sending its request is closed, so a flood of idle connections keeps
cycling and a scrape still gets in; the kernel queues as many before they are accepted, so
a burst waits for a busy event loop instead of its SYNs being dropped and retried seconds
later), a
request line and headers of at most :data:`MAX_HEAD` bytes, and a connection that has not
sent them within ``open_timeout`` (or does not take its answer within it) is dropped.

The Host/Origin rules are the TCP port's, for a listener reached by other names: a web page
of another site (DNS rebinding) names its own host, so ``Host`` must be an IP address (any:
a page cannot make a browser send its own origin as an IP address it does not hold),
``localhost``, this machine's host name or ``device_name`` (alone or with a domain:
``kiosk-1.museum.lan``); any ``Origin`` is refused (no page is served here, so no page may
read it), and so is a request a browser marks as sent by a page's script
(``Sec-Fetch-Site`` other than ``none``, which is an address typed by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from ..config.sections import listen_address
from ..metrics import Metrics
from .logging import redact

log = logging.getLogger("pi_agent.api")

PATHS = ("/healthz", "/metrics")
MAX_HEAD = 8 * 1024  # bytes of request line and headers
MAX_HEADERS = 64
REFUSED_LOG_INTERVAL = 60.0
BROWSER_SCRIPT = frozenset({"same-origin", "same-site", "cross-site"})  # Sec-Fetch-Site of a page's request

Health = Callable[[], tuple[int, dict[str, Any]]]  # (HTTP status, JSON body)


class _BadRequest(Exception):
    pass


class ScrapeListener:
    """One read-only listener on ``address`` (``"0.0.0.0:9766"``, ``"[::]:9766"``...)."""

    def __init__(self, address: str, metrics: Metrics, health: Health, *, names: tuple[str, ...],
                 max_open: int, open_timeout: float) -> None:
        self.host, self.port = listen_address(address)
        self._metrics = metrics
        self._health = health
        self._names = frozenset(n.lower() for n in (*names, socket.gethostname(), "localhost") if n)
        self._max_open = max_open
        self._open_timeout = open_timeout
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # yet to send their request, oldest first
        self._open = 0
        self._refused = 0
        self._refused_logged_at = -REFUSED_LOG_INTERVAL

    @property
    def open_connections(self) -> int:
        return self._open

    async def start(self) -> None:
        """Listen; raises OSError naming the setting when the address cannot be used."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD,
                                                      backlog=self._max_open)
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)  # asyncio's own text repeats the address
            raise OSError(e.errno, f"[api] metrics_listen {self.host}:{self.port}: {why}") from None
        self.port = self._server.sockets[0].getsockname()[1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        log.info("metrics for scraping on http://%s:%d/metrics and /healthz (read-only; [api] metrics_listen)",
                 shown, self.port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    # --- a connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        self._writers.add(writer)
        try:
            if self._open > self._max_open and not self._make_room():
                return
            self._waiting[writer] = None
            try:
                async with asyncio.timeout(self._open_timeout):
                    extra: dict[str, str] = {}
                    try:
                        method, target, headers = await _read_head(reader)
                    except _BadRequest as e:
                        status, body = HTTPStatus.BAD_REQUEST, f"{e}\n"
                    else:
                        status, extra, body = self._answer(method, target, headers)
                    self._waiting.pop(writer, None)
                    writer.write(_response(status, extra, body))
                    await writer.drain()
            except (TimeoutError, ConnectionError):
                return
        finally:
            self._open -= 1
            self._writers.discard(writer)
            self._waiting.pop(writer, None)
            writer.transport.abort()  # one request per connection; nothing to linger for

    def _make_room(self) -> bool:
        """Past ``max_open``: close the connection that has waited longest without sending its
        request; False (and the new one is closed) when every one is being answered."""
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged_at >= REFUSED_LOG_INTERVAL:
            self._refused_logged_at = now
            log.warning("metrics listener: more than %d connections at once: closed %d (the longest idle first)",
                        self._max_open, self._refused)
            self._refused = 0
        for oldest in self._waiting:
            del self._waiting[oldest]
            oldest.transport.abort()
            return True
        return False

    # --- HTTP ------------------------------------------------------------------------------

    def host_allowed(self, host: str) -> bool:
        """Whether a ``Host`` header names this machine in a way no other site's page can."""
        name = host.strip().lower()
        if name.startswith("["):  # [IPv6]:port
            end = name.find("]")
            rest = name[end + 1:]
            return end > 0 and _is_ip(name[1:end]) and (rest == "" or (rest[:1] == ":" and rest[1:].isdigit()))
        if name.count(":") == 1:
            name, _, port = name.partition(":")
            if not port.isdigit():
                return False
        if _is_ip(name):
            return True
        return bool(name) and (name in self._names or name.partition(".")[0] in self._names)

    def _answer(self, method: str, target: str, headers: dict[str, str]) -> tuple[HTTPStatus, dict[str, str], str]:
        """(status, extra headers, body) for one request."""
        if method != "GET":
            return HTTPStatus.METHOD_NOT_ALLOWED, {"Allow": "GET"}, "this listener serves GET /metrics and /healthz\n"
        host = headers.get("host")
        if host is not None and not self.host_allowed(host):  # no Host: HTTP/1.0, not a browser
            return HTTPStatus.FORBIDDEN, {}, (f"unexpected Host {host[:80]!r}: scrape this device by its IP address, "
                                              "or by a name that starts with its host name or device_name\n")
        if "origin" in headers or headers.get("sec-fetch-site", "none").lower() in BROWSER_SCRIPT:
            return HTTPStatus.FORBIDDEN, {}, "no web page may read this listener\n"
        path = target.split("?", 1)[0]
        if path == "/metrics":
            return HTTPStatus.OK, {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}, \
                self._metrics.render().decode()
        if path == "/healthz":
            status, body = self._health()
            # the reason may echo the API key (a server's close reason): masked as on the API port
            return HTTPStatus(status), {"Content-Type": "application/json"}, redact(json.dumps(body)) + "\n"
        return HTTPStatus.NOT_FOUND, {}, "not found: this listener serves GET /metrics and /healthz\n"


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
    """The request line and headers; raises _BadRequest for what is not HTTP/1.x, and
    ConnectionError when the peer is gone or sent too much."""
    lines: list[bytes] = []
    total = 0
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # longer than MAX_HEAD
            raise _BadRequest("request too large") from None
        if not line.endswith(b"\n"):
            raise ConnectionError("the peer closed the connection")
        total += len(line)
        if total > MAX_HEAD or len(lines) > MAX_HEADERS:
            raise _BadRequest("request too large")
        line = line.rstrip(b"\r\n")
        if not line:
            if lines:
                break
            continue  # a blank line before the request line is tolerated (RFC 9112 2.2)
        lines.append(line)
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest("not an HTTP request") from None
    if not version.startswith("HTTP/1.") or not method.isalpha() or not target.startswith("/"):
        raise _BadRequest("not an HTTP/1.x request")
    headers: dict[str, str] = {}
    for raw in lines[1:]:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest("malformed header line")
        headers[name.lower()] = value.strip()
    return method, target, headers


def _response(status: HTTPStatus, extra: dict[str, str], body: str) -> bytes:
    data = body.encode()
    head = {"Content-Type": "text/plain; charset=utf-8", **extra, "Content-Length": str(len(data)),
            "Cache-Control": "no-store", "Connection": "close"}
    lines = [f"HTTP/1.1 {status.value} {status.phrase}", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1") + data


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
