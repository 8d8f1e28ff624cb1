"""The TLS client context the agent's connections use (the signed-URL request and the WebSocket)."""

from __future__ import annotations

import functools
import os
import ssl


def tls_context() -> ssl.SSLContext:
    """The system's default TLS client context, made once per trust store: reading the CA bundle
    took 17 ms a time on the project's 2-core x86 test machine, so it is not read again for
    each conversation (the signed URL and the WebSocket share it); a changed
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` gets a context of its own."""
    return _context_for(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))


@functools.lru_cache(maxsize=4)
def _context_for(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    return ssl.create_default_context()
