"""Where to connect: the conversation URL, and the signed URL of a private agent.

A public agent's URL needs no credentials. A private agent needs a signed URL, fetched
with the API key for every conversation (it is valid only to *start* one). The key is
sent only in the ``xi-api-key`` header of that request: never in a URL, a log line or an
error message; a redirect is refused, so the key cannot follow it to another host.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import websockets
from websockets.uri import parse_uri

from .. import __version__
from ..engine.backoff import Outcome, classify_http_status
from ..engine.conversation import SOURCE, SOURCE_VERSION
from ..errors import AuthError, ConnectError
from ..threads import run_blocking
from .tls import tls_context

_REDACT = {"conversation_signature", "token", "signature"}

SignedUrlFetcher = Callable[[str, str, str, float], str]

# A clock before this has not been set (a Pi has no RTC: it boots at its last saved time, or 1970).
CLOCK_FLOOR = 1704067200.0  # 2024-01-01 00:00 UTC
_NOT_YET_VALID, _EXPIRED = 9, 10  # OpenSSL's X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED


def conversation_url(server_url: str, agent_id: str) -> str:
    """``https://host`` -> ``wss://host/v1/convai/conversation?agent_id=..&source=..&version=..``."""
    parts = urllib.parse.urlsplit(server_url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    query = urllib.parse.urlencode({"agent_id": agent_id, "source": SOURCE, "version": SOURCE_VERSION})
    path = parts.path.rstrip("/") + "/v1/convai/conversation"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, query, ""))


def with_source(signed_url: str) -> str:
    parts = urllib.parse.urlsplit(signed_url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query += [("source", SOURCE), ("version", SOURCE_VERSION)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def redact_url(url: str) -> str:
    """The URL with its signature/token parameters replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, "***" if k.lower() in _REDACT else v)
             for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="*")))


async def url_for(server_url: str, agent_id: str, api_key: str | None, timeout: float,
                  fetch: SignedUrlFetcher | None = None) -> str:
    """The URL to open one conversation: public, or freshly signed (in a daemon thread, so
    a request stuck until ``timeout`` cannot delay SIGTERM)."""
    if not api_key:
        return conversation_url(server_url, agent_id)
    fetcher = fetch or fetch_signed_url
    signed = await run_blocking(lambda: fetcher(server_url, agent_id, api_key, timeout),
                                timeout=timeout + 1.0, what="the signed URL request", error=ConnectError)
    return with_source(signed)


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
        with _opener().open(request, timeout=timeout) as response:
            body = response.read(1 << 20)
    except urllib.error.HTTPError as e:
        detail = _error_detail(e)
        retry_after = parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
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
        raise ConnectError(clock_error(e.reason) or f"signed URL request failed: {reason_text(e.reason)}") from None
    except OSError as e:
        raise ConnectError(clock_error(e) or f"signed URL request failed: {reason_text(e)}") from None
    try:
        signed = json.loads(body)["signed_url"]
    except (ValueError, KeyError, TypeError):
        raise ConnectError("signed URL response is not JSON with a 'signed_url' field") from None
    if not isinstance(signed, str) or not is_ws_url(signed):
        raise ConnectError("signed URL response holds no ws:// or wss:// URL")
    return signed


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an error: the key must not follow a redirect to another host (a captive portal)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener() -> urllib.request.OpenerDirector:
    """Redirects refused, with :func:`tls_context` (Python 3.13's urllib would otherwise keep
    the trust store it read when the opener was built, whatever ``SSL_CERT_FILE`` says later)."""
    return urllib.request.build_opener(_RefuseRedirects, urllib.request.HTTPSHandler(context=tls_context()))



def is_ws_url(url: str) -> bool:
    """Whether the WebSocket client can use ``url`` (ws/wss scheme, a host, a numeric port)."""
    try:
        parse_uri(url)
    except (websockets.InvalidURI, ValueError):
        return False
    return True


def reason_text(e: object) -> str:
    """A short reason for a network failure (the OS's words when there are some)."""
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)[:120]


def clock_error(e: object, now: float | None = None) -> str | None:
    """The reason for a TLS failure that is the system clock's (None for any other failure):
    a server certificate not yet valid by it (the clock is behind: not set yet, or restored
    from the last shutdown), or expired by a clock before :data:`CLOCK_FLOOR`."""
    if not isinstance(e, ssl.SSLCertVerificationError):
        return None
    now = time.time() if now is None else now
    code = e.verify_code
    if code == _NOT_YET_VALID:
        what = "not valid yet"
    elif code == _EXPIRED and now < CLOCK_FLOOR:
        what = "expired"
    else:
        return None
    # The date alone: the same reason on every attempt, so that it is logged once, not each time.
    reads = time.strftime("%Y-%m-%d", time.gmtime(now))
    return (f"the system clock is not set yet (it reads {reads}, by which the server's TLS certificate is "
            f"{what}); waiting for time sync")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (the number form), or None."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(e.read(4096) or b"null")
    except (ValueError, OSError):
        return ""
    detail = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("status")
    return str(detail)[:160] if detail else ""
