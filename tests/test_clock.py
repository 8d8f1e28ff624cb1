"""A connection refused because the system clock is not set yet (a Pi without an RTC before
NTP answers: the server's certificate is "not yet valid" by its clock) is reported as such,
"the system clock is not set yet (...); waiting for time sync", not as a TLS failure: on the
real ssl exception (quick), and against a real TLS server on loopback whose certificate
starts tomorrow, for the WebSocket and for the signed URL request (slow)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.error import URLError

import pytest

from pi_agent.engine import events as ev
from pi_agent.engine.backoff import Backoff, Outcome
from pi_agent.engine.conversation import Engine
from pi_agent.engine.settings import EngineSettings
from pi_agent.errors import ConnectError
from pi_agent.net.session import Session
from pi_agent.net.signed_url import CLOCK_FLOOR, clock_error, url_for

KEY = "sk_canary_clock_0123456789"
DAY = 86400.0


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    """The exception as the ssl module raises it (_ssl.c sets these attributes on it)."""
    e = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {message} "
                                        "(_ssl.c:1006)")
    e.verify_code, e.verify_message = code, message
    return e


def test_a_certificate_not_yet_valid_is_the_clock() -> None:
    not_yet = _verify_error(9, "certificate is not yet valid")
    assert clock_error(not_yet, now=0.0) == ("the system clock is not set yet (it reads 1970-01-01, by which the "
                                             "server's TLS certificate is not valid yet); waiting for time sync")
    # behind, but past the floor: a clock restored from the last shutdown (fake-hwclock)
    assert clock_error(not_yet, now=CLOCK_FLOOR + 400 * DAY) is not None


def test_an_expired_certificate_is_the_clock_only_when_the_clock_is_unset() -> None:
    expired = _verify_error(10, "certificate has expired")
    assert clock_error(expired, now=CLOCK_FLOOR - DAY) == (
        "the system clock is not set yet (it reads 2023-12-31, by which the server's TLS certificate is expired); "
        "waiting for time sync")
    assert clock_error(expired, now=CLOCK_FLOOR + DAY) is None  # a set clock: the server's certificate is at fault


def test_other_failures_are_not_the_clock() -> None:
    assert clock_error(_verify_error(18, "self-signed certificate"), now=0.0) is None
    assert clock_error(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), now=0.0) is None
    assert clock_error(ConnectionRefusedError(111, "Connection refused"), now=0.0) is None
    assert clock_error(URLError("no"), now=0.0) is None
    assert clock_error(None) is None


# --- a real TLS server on loopback --------------------------------------------------------------

def _stamp(t: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(t))


@pytest.fixture
def future_cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 valid from tomorrow (made with the openssl
    command: ``cryptography`` is not a dependency). Returns (certificate, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a certificate that is not yet valid")
    cnf = tmp_path / "ca.cnf"
    cnf.write_text("[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
                   "default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n"
                   "[ext]\nsubjectAltName = IP:127.0.0.1,DNS:localhost\nbasicConstraints = critical,CA:TRUE\n")
    (tmp_path / "index.txt").write_text("")
    (tmp_path / "serial").write_text("01\n")
    now = time.time()

    def openssl(*args: str) -> None:
        r = subprocess.run(["openssl", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr

    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "key.pem", "-subj", "/CN=localhost", "-out", "req.pem")
    openssl("ca", "-batch", "-config", "ca.cnf", "-selfsign", "-keyfile", "key.pem", "-in", "req.pem",
            "-out", "cert.pem", "-startdate", _stamp(now + DAY), "-enddate", _stamp(now + 2 * DAY),
            "-extensions", "ext", "-notext")
    return tmp_path / "cert.pem", tmp_path / "key.pem"


@pytest.fixture
async def tls_server(future_cert: tuple[Path, Path]) -> AsyncIterator[str]:
    """https://127.0.0.1:PORT serving that certificate (nothing gets past the handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*future_cert)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.close()


def _trust(cert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The certificate as a trusted root (ssl.create_default_context reads $SSL_CERT_FILE), so
    that its dates are all that is wrong with it."""
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


async def _first_failure(server_url: str) -> ev.Closed:
    """The engine and session of the daemon, one attempt at a public agent's WebSocket."""
    s = EngineSettings(policy="persistent", backoff_initial=5.0, backoff_max=5.0, connect_timeout=5.0)
    engine = Engine(s, encoder_factory=lambda fmt: lambda pcm: pcm, decode_audio=lambda b: b,
                    backoff=Backoff(s.backoff_initial, s.backoff_max, s.backoff_reset_after, lambda: 1.0))
    closed: asyncio.Future[ev.Closed] = asyncio.get_running_loop().create_future()

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.Closed) and not closed.done():
            closed.set_result(event)

    session = Session(engine, url=lambda: url_for(server_url, "agent_clock", None, s.connect_timeout),
                      on_event=on_event, connect_timeout=s.connect_timeout)
    runner = asyncio.create_task(session.run())
    try:
        return await asyncio.wait_for(closed, 10)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


def _expected() -> str:
    return (f"the system clock is not set yet (it reads {time.strftime('%Y-%m-%d', time.gmtime())}, by which the "
            "server's TLS certificate is not valid yet); waiting for time sync")


@pytest.mark.slow
async def test_the_websocket_refused_on_the_clock_says_so(tls_server: str, future_cert: tuple[Path, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _trust(future_cert[0], monkeypatch)
    closed = await _first_failure(tls_server)
    assert closed.outcome is Outcome.RETRY and closed.retry_in is not None
    assert closed.reason == _expected()


@pytest.mark.slow
async def test_the_signed_url_request_refused_on_the_clock_says_so(tls_server: str, future_cert: tuple[Path, Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _trust(future_cert[0], monkeypatch)
    with pytest.raises(ConnectError) as e:
        await url_for(tls_server, "agent_clock", KEY, 5.0)
    assert str(e.value) == _expected() and e.value.retryable
    assert KEY not in str(e.value)


@pytest.mark.slow
async def test_an_untrusted_certificate_is_still_a_tls_failure(tls_server: str, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))  # trust nothing
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    closed = await _first_failure(tls_server)
    assert closed.reason.startswith("cannot connect: [SSL: CERTIFICATE_VERIFY_FAILED]"), closed.reason
    assert "clock" not in closed.reason
