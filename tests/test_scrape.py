"""The scrape listener (``[api] metrics_listen``, issue 24) on the real daemon process: off by
default, GET /metrics and /healthz only, the Host/Origin rules, and 1,100 idle connections
that harm neither the conversation nor the event API's port."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import connect

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions

from .support_daemon import EventClient, daemon_running, free_port, raise_open_files
from .support_faults import make_wav

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def env_for(agent: FakeAgent, tmp: Path, **extra: str) -> dict[str, str]:
    return {"PI_AGENT_AGENT_ID": "agent_scrape", "PI_AGENT_SERVER_URL": agent.http_url,
            "PI_AGENT_AUDIO__INPUT_WAV": str(make_wav(tmp / "silence.wav", 0.2)),
            "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp / "speaker.wav"),
            "PI_AGENT_SESSION__POLICY": "persistent", "PI_AGENT_CAPTURE__MODE": "vad", **extra}


def raw_request(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], str]:
    """Send ``request`` as is; the status, headers and body of the answer (status 0: none)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, {}, ""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split(" ")[1]), headers, body.decode(errors="replace")


def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def tcp_listeners(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets in /proc/net/tcp{,6} in state LISTEN)."""
    return {port for port, state in tcp_sockets(pid) if state == "0A"}


def tcp_sockets(pid: int) -> list[tuple[int, str]]:
    """(local port, state) of every TCP socket process ``pid`` holds ("0A" LISTEN, "01" ESTABLISHED)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    found.append((int(fields[1].rsplit(":", 1)[1], 16), fields[3]))
    return found


# --- off by default ---------------------------------------------------------------------------------


async def test_off_by_default_the_daemon_listens_on_the_api_port_alone(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent, daemon_running(env_for(agent, tmp_path), tmp_path) as d:
        assert d.proc is not None
        ports = tcp_listeners(d.proc.pid)
        log = d.log
    assert ports == {d.api_port}, ports
    assert "metrics_listen" not in log


# --- what it serves -------------------------------------------------------------------------------


async def test_it_serves_get_metrics_and_healthz_and_refuses_everything_else(tmp_path: Path) -> None:
    port = free_port()
    async with FakeAgent(FakeAgentOptions(port=0, transcript="my secret question")) as agent:
        question = make_wav(tmp_path / "q.wav", 0.5, "question")
        env = env_for(agent, tmp_path, PI_AGENT_API__METRICS_LISTEN=f"127.0.0.1:{port}",
                      PI_AGENT_AUDIO__INPUT_WAV=str(question), PI_AGENT_DEVICE_NAME="kiosk-7")
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            assert d.proc is not None
            assert tcp_listeners(d.proc.pid) == {d.api_port, port}
            await events.wait_for(lambda e: e["type"] == "user_transcript", 20, "the question")
            status, headers, metrics = await asyncio.to_thread(get, port, "/metrics")
            assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
            assert 'pi_agent_info{device="kiosk-7",location=""' in metrics
            assert "my secret question" not in metrics
            status, headers, health = await asyncio.to_thread(get, port, "/healthz?x=1")
            assert status == 200 and json.loads(health)["status"] == "ok"
            for path in ("/", "/index.html", "/events", "/metrics/", "/healthz/../events", "/api.sock"):
                status, _, _ = await asyncio.to_thread(get, port, path)
                assert status == 404, path
            upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
            status, _, _ = await asyncio.to_thread(get, port, "/events", **upgrade)
            assert status == 404
            with pytest.raises(websockets.InvalidStatus) as no_events:
                await connect(f"ws://127.0.0.1:{port}/events", open_timeout=5)
            assert no_events.value.response.status_code == 404
            for method in ("POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT"):
                request = (f"{method} /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 13\r\n\r\n"
                           '{"type":"say"}').encode()
                status, headers, _ = await asyncio.to_thread(raw_request, port, request)
                assert (status, headers.get("allow")) == (405, "GET"), method
            # A web page: of another site rebound to this address, or any page's script.
            for headers_ in ({"Host": "evil.example"}, {"Host": "kiosk-7.evil.example.:80x"},
                             {"Origin": f"http://127.0.0.1:{port}"}, {"Origin": "null"},
                             {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "cross-site"}):
                lines = [f"{k}: {v}" for k, v in {"Host": f"127.0.0.1:{port}", **headers_}.items()]
                request = ("GET /metrics HTTP/1.1\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
                status, _, body = await asyncio.to_thread(raw_request, port, request)
                assert status == 403 and "pi_agent" not in body, headers_
            # Names that only this machine answers to, and a browser's address bar.
            for host in (f"localhost:{port}", "kiosk-7", "kiosk-7.museum.lan:9766", f"{socket.gethostname()}:1",
                         "[::1]:9766", "192.0.2.7"):
                request = f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Site: none\r\n\r\n".encode()
                status, _, _ = await asyncio.to_thread(raw_request, port, request)
                assert status == 200, host
            # Not HTTP, too large, HTTP/1.0 without a Host.
            for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"GET\r\n\r\n",
                         b"GET /metrics HTTP/2.0\r\n\r\n", b"GET /metrics HTTP/1.1\r\nbad header\r\n\r\n",
                         b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
                         b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n"):
                status, _, _ = await asyncio.to_thread(raw_request, port, junk)
                assert status == 400, junk[:30]
            status, _, _ = await asyncio.to_thread(raw_request, port, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert status == 200
            status, _ = await asyncio.to_thread(d.http, "/healthz")  # the API port is as it was
            assert status == 200
            log = d.log
    assert "Traceback" not in log and "exception" not in log.lower(), log[-3000:]
    assert f"metrics for scraping on http://127.0.0.1:{port}/metrics" in log
    assert not agent.latest.received_of("user_message")  # nothing sent here reached the agent


async def test_an_address_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with FakeAgent(FakeAgentOptions(port=0)) as agent:
            from .support_daemon import DaemonProcess

            d = DaemonProcess(env_for(agent, tmp_path, PI_AGENT_API__METRICS_LISTEN=f"127.0.0.1:{port}"),
                              tmp_path).start()
            code = await asyncio.to_thread(d.wait, 20)
            log = d.log
            d.stop()
    assert code == 1, log
    assert f"[api] metrics_listen 127.0.0.1:{port}: Address already in use" in log, log
    assert "Traceback" not in log


# --- floods ---------------------------------------------------------------------------------------


IDLE_CONNECTIONS = 1100
FLOOD_FILES = IDLE_CONNECTIONS + 400  # the flood's sockets, and what the processes hold anyway


@pytest.fixture
def enough_open_files() -> Iterator[None]:
    with raise_open_files(FLOOD_FILES):
        yield


@pytest.mark.alone  # 1,000 accepted within 2 s: no neighbour's load (tests/conftest.py)
@pytest.mark.usefixtures("enough_open_files")
async def test_1100_idle_connections_leave_the_conversation_scrapes_and_the_api_port_working(
        tmp_path: Path) -> None:
    port = free_port()
    question = make_wav(tmp_path / "q.wav", 6.0, "question", 2.0)
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = env_for(agent, tmp_path, PI_AGENT_AUDIO__INPUT_WAV=str(question),
                      PI_AGENT_API__METRICS_LISTEN=f"127.0.0.1:{port}")
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            assert d.proc is not None
            pid = d.proc.pid
            idle: list[socket.socket] = []
            try:
                for _ in range(IDLE_CONNECTIONS):  # raw TCP connections that never send a request
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", port))
                    idle.append(s)
                held, since = 0, time.monotonic()
                # The daemon's end of them, each for at most OPEN_TIMEOUT (3 s) after its accept: look
                # often, until it holds 1,000 at once or the first may have been dropped.
                while held < 1000 and time.monotonic() - since < 2.9:
                    await asyncio.sleep(0.05)
                    held = max(held, sum(1 for p, state in tcp_sockets(pid) if p == port and state == "01"))
                # a scrape during the flood: the longest idle connection makes room for it
                flood_status, _, _ = await asyncio.to_thread(get, port, "/metrics")
                slowest = 0.0
                for _ in range(5):
                    t0 = time.monotonic()
                    status, _ = await asyncio.to_thread(d.http, "/healthz")
                    assert status == 200
                    slowest = max(slowest, time.monotonic() - t0)
                    await asyncio.sleep(0.3)
                transcript = await events.wait_for(lambda e: e["type"] == "user_transcript", 20, "the transcript")
                await events.wait_for(lambda e: e["type"] == "agent_response", 10, "the answer")
            finally:
                for s in idle:
                    s.close()
            await asyncio.sleep(0.5)
            status, _, metrics = await asyncio.to_thread(get, port, "/metrics")  # the listener is back
            log = d.log
    assert held >= 1000, held
    assert flood_status == 200
    assert slowest < 1.0, slowest
    assert transcript and agent.latest.user_audio_seconds > 3.0
    assert status == 200 and 'pi_agent_audio_device_events{event="capture_overflows"} 0.0' in metrics
    assert "Too many open files" not in log and "Traceback" not in log
    assert log.count("metrics listener: more than 1024 connections at once") <= 1, log  # said, not shouted
