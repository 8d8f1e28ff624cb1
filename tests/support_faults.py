"""Fault injection for the reliability suite (``tests/test_faults_*.py``).

What is here, all driving or watching the real daemon process (``pi-agent run``):

- :func:`fault_env` and :func:`fault_daemon`: the daemon with short timings and the
  canary API key, its event API, and a secrets scan of everything it said at the end.
- :class:`SecretScan`: fails when the canary key or a signed URL's signature appears in
  a log line, an event-API message, ``/metrics``, ``/healthz`` or an exception's text.
- :class:`TcpProxy`: a TCP proxy of the test's own between the daemon and the agent
  that forwards, freezes (half-open), cuts (RST), stops listening, delays, jitters and
  throttles; it also notes every signature it sees go by, and its :class:`WsSniffer`
  reads what the daemon really put on the wire (the audio it sent, frame by frame).
- :class:`SignedUrlStub`: an HTTP server in front of the agent's signed-URL endpoint
  that answers what the test says (odd bodies, malformed URLs, redirects).
- :class:`FakeAgentProcess`: ``pi-agent fake-agent`` as a child process that can be
  killed (SIGKILL) and restarted on the same port; read through its ``/_fake`` API.
- :class:`NetNs`: a network namespace joined by a veth pair, for ``tc`` qdiscs
  (``netem``, ``tbf``) between the daemon and an agent; always cleaned up.
- WAV builders, Prometheus text parsing, ``/proc`` readings (RSS, fds, threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .support_daemon import QUESTION_WAV, DaemonProcess, EventClient, free_port
from .support_wait import wait_until

CANARY = "sk_canary_faults_7c1d9e2f4a6b8c0d"
"""The API key every fault case runs with; it must never be seen outside the daemon."""

AGENT_ID = "agent_faults"

FAST: dict[str, str] = {
    "PI_AGENT_SESSION__POLICY": "persistent",
    "PI_AGENT_SESSION__BACKOFF_INITIAL": "0.2",
    "PI_AGENT_SESSION__BACKOFF_MAX": "1",
    "PI_AGENT_SESSION__DEAD_PEER_TIMEOUT": "2",
    "PI_AGENT_SESSION__CONNECT_TIMEOUT": "2",
    "PI_AGENT_CAPTURE__MODE": "vad",
    "PI_AGENT_LOG__LEVEL": "debug",
}
"""Short timings: the whole fault suite must run in a few minutes."""


# --------------------------------------------------------------------------- audio files


def question_samples() -> np.ndarray:
    """The shipped question (16 kHz mono int16)."""
    with wave.open(str(QUESTION_WAV), "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def make_wav(path: Path, *parts: float | str | np.ndarray) -> Path:
    """A 16 kHz mono WAV of ``parts``: seconds of silence (float), ``"question"``, or samples.

    Silence is cut to whole 20 ms frames, so a question placed after it starts on a frame
    boundary of the daemon's WAV microphone.
    """
    chunks: list[np.ndarray] = []
    for part in parts:
        if isinstance(part, str):
            if part != "question":
                raise ValueError(f"unknown WAV part {part!r}")
            chunks.append(question_samples())
        elif isinstance(part, np.ndarray):
            chunks.append(part.astype(np.int16))
        else:
            chunks.append(np.zeros(round(part * 50) * 320, dtype=np.int16))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def voiced_core(samples: np.ndarray, threshold: int = 500) -> np.ndarray:
    """The samples from the first to the last whose magnitude reaches ``threshold``."""
    idx = np.nonzero(np.abs(samples.astype(np.int32)) >= threshold)[0]
    return samples[idx[0] : idx[-1] + 1] if len(idx) else samples[:0]


def contains(haystack: bytes, needle: np.ndarray) -> bool:
    """Whether the int16 samples ``needle`` occur, byte for byte, inside ``haystack``."""
    return needle.astype("<i2").tobytes() in haystack


# --------------------------------------------------------------------------- secrets


_UNMASKED_TOKEN = re.compile(r"(?i)\b(conversation_signature|signature|token)=(?!\*\*\*|%2A%2A%2A)([^&\s\"'<>\\]{6,})")


class SecretScan:
    """Collects everything the daemon said and fails if a secret is in any of it.

    Secrets are the canary key, every signature the test learned of (the fake agent's
    records, the proxy's sniffing), and, by pattern, any signed-URL token not masked.
    """

    def __init__(self, secrets: Iterable[str] = (CANARY,)) -> None:
        self.secrets: set[str] = {s for s in secrets if s}
        self.texts: list[tuple[str, str]] = []

    def add_secret(self, *values: str | None) -> None:
        self.secrets.update(v for v in values if v)

    def add(self, label: str, text: str) -> None:
        self.texts.append((label, text))

    def leaks(self) -> list[str]:
        found: list[str] = []
        for label, text in self.texts:
            for secret in self.secrets:
                variants = {secret, urllib.parse.quote(secret, safe=""), json.dumps(secret)[1:-1]}
                if any(v in text for v in variants):
                    at = min(text.find(v) for v in variants if v in text)
                    found.append(f"{label}: secret {secret[:6]}... at {text[max(0, at - 80):at + 20]!r}")
            for m in _UNMASKED_TOKEN.finditer(text):
                found.append(f"{label}: unmasked {m.group(1)}= at {text[max(0, m.start() - 80):m.end()]!r}")
        return found

    def check(self) -> None:
        leaks = self.leaks()
        assert not leaks, "secrets leaked:\n" + "\n".join(leaks[:10])


def agent_signatures(agent: Any) -> list[str]:
    """Every ``conversation_signature`` an in-process :class:`FakeAgent` was given."""
    return [c.query.get("conversation_signature", "") for c in agent.conversations]


# --------------------------------------------------------------------------- metrics, /proc


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


@dataclass(frozen=True)
class ProcStats:
    rss_kb: int
    fds: int
    threads: int


def proc_stats(pid: int) -> ProcStats:
    """Resident memory, open file descriptors and threads of process ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return ProcStats(rss, len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task")))


# --------------------------------------------------------------------------- the daemon


def fault_env(server_url: str, tmp: Path, mic: Path | None = None, **extra: str) -> dict[str, str]:
    """Settings for a daemon under test: canary key, short timings, WAV mic and speaker."""
    return {
        "PI_AGENT_AGENT_ID": AGENT_ID,
        "PI_AGENT_SERVER_URL": server_url,
        "PI_AGENT_API_KEY": CANARY,
        "PI_AGENT_AUDIO__INPUT_WAV": str(mic or make_wav(tmp / "silence.wav", 0.2)),
        "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp / "speaker.wav"),
        **FAST,
        **extra,
    }


class FaultRun:
    """A running daemon under a fault: its process, its event API, what it said."""

    def __init__(self, daemon: DaemonProcess, events: EventClient, scan: SecretScan) -> None:
        self.daemon = daemon
        self.events = events
        self.scan = scan
        self.t0 = time.monotonic()

    @property
    def log(self) -> str:
        return self.daemon.log

    async def http(self, path: str) -> tuple[int, str]:
        status, body = await asyncio.to_thread(self.daemon.http, path)
        self.scan.add(f"GET {path}", body)
        return status, body

    async def health(self) -> tuple[int, dict[str, Any]]:
        status, body = await self.http("/healthz")
        return status, json.loads(body)

    async def metrics(self) -> str:
        return (await self.http("/metrics"))[1]

    def logged_at(self, text: str) -> float | None:
        """``time.monotonic()`` of the first log line holding ``text`` (from its HH:MM:SS.mmm)."""
        for line in self.log.splitlines():
            if text in line:
                m = re.match(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) ", line)
                if not m:
                    return None
                h, mi, sec, ms = (int(x) for x in m.groups())
                now = time.time()
                midnight = time.mktime((*time.localtime(now)[:3], 0, 0, 0, 0, 0, -1))
                wall = midnight + h * 3600 + mi * 60 + sec + ms / 1000
                if wall > now + 60:  # logged before midnight, read after it
                    wall -= 86400
                return time.monotonic() - (now - wall)
        return None

    def failures_logged(self) -> list[str]:
        """The reason of every failed attempt, in order, from the log (events before the
        test subscribed to the event API are there too)."""
        found = []
        for line in self.log.splitlines():
            m = re.search(r"controller: (?:disconnected|cannot open a conversation): (.*?)"
                          r"(?:; retrying in [\d.]+ s)?$", line)
            if m:
                found.append(m.group(1))
        return found

    def connections(self, connected: bool | None = None) -> list[dict[str, Any]]:
        """The ``connection`` events so far (only opens or only closes if ``connected`` is given)."""
        return [e for e in self.events.events if e.get("type") == "connection"
                and (connected is None or e.get("connected") is connected)]

    def opened(self) -> list[str]:
        """Ids of the conversations opened so far (the snapshot's first, if it was open)."""
        snap = self.events.snapshot or {}
        ids = [str(snap["conversation_id"])] if snap.get("connected") and snap.get("conversation_id") else []
        return ids + [str(e["conversation_id"]) for e in self.connections(True)]

    async def wait_connected(self, timeout: float = 15.0, *, after: int = 0) -> str:
        """Wait until more than ``after`` conversations have opened; return the newest's id."""
        if len(self.opened()) <= after:
            await self.events.wait_for(lambda e: len(self.opened()) > after, timeout, "an open conversation")
        return self.opened()[after]

    async def wait_closed(self, timeout: float = 15.0, *, after: int = 0) -> dict[str, Any]:
        """Wait for the ``after``+1-th ``connection`` event with ``connected: false``."""
        if len(self.connections(False)) <= after:
            await self.events.wait_for(lambda e: e.get("type") == "connection" and not e.get("connected")
                                       and len(self.connections(False)) > after, timeout, "a connection close")
        return self.connections(False)[after]

    async def wait_state(self, state: str, timeout: float = 15.0) -> None:
        """Wait until the daemon's current state (the last one reported) is ``state``."""
        if self.state() != state:
            await self.events.wait_for(lambda e: self.state() == state, timeout, f"state {state}")

    def state(self) -> str:
        states = self.events.states()
        return states[-1] if states else str((self.events.snapshot or {}).get("state"))


@contextlib.asynccontextmanager
async def fault_daemon(env: dict[str, str], tmp: Path, *, secrets: Callable[[], Iterable[str]] = tuple,
                       expect_exit: int | None = 0, allow_traceback: bool = False) -> AsyncIterator[FaultRun]:
    """Run ``pi-agent run`` with ``env``; on a clean exit of the body, stop it (SIGTERM) and check:

    the exit code (``expect_exit``, None = any), no traceback in the log, and no secret
    (the canary, ``secrets()``, unmasked tokens) in the log, the events or the bodies read.
    """
    daemon = DaemonProcess(env, tmp).start()
    scan = SecretScan()
    try:
        await daemon.wait_api(30)  # generous: a loaded 2-core CI machine
        async with EventClient(daemon.api_socket) as events:
            run = FaultRun(daemon, events, scan)
            yield run
            with contextlib.suppress(Exception):
                await run.metrics()
                await run.http("/healthz")
            code = await asyncio.to_thread(daemon.stop)
        scan.add("event API", json.dumps([events.snapshot, *events.events]))
    finally:
        daemon.stop()
    log = daemon.log
    scan.add("daemon log", log)
    scan.add_secret(*secrets())
    if expect_exit is not None:
        assert code == expect_exit, f"daemon exited with {code}:\n{log[-3000:]}"
    if not allow_traceback:
        assert "Traceback" not in log, log[-4000:]
    scan.check()


# --------------------------------------------------------------------------- TCP proxy


@dataclass
class Link:
    """How one direction of the proxy treats the bytes it forwards."""

    delay: float = 0.0        # s added to every chunk
    jitter: float = 0.0       # +- s, uniform; order is kept
    rate: float | None = None  # bytes per second; None = unlimited
    spike_prob: float = 0.0   # chance that a chunk waits ``spike`` more (a lost segment's retransmission)
    spike: float = 0.2
    window: int = 64 * 1024   # bytes held in the "network" before the sender is pushed back


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.frozen = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.sniffer: WsSniffer | None = None

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            sock = w.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort()
        for t in self.tasks:
            t.cancel()


class WsSniffer:
    """Reads the client's side of one WebSocket connection off the wire: the text messages
    the daemon really sent (after the HTTP upgrade; masked frames, no compression)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._buf = bytearray()
        self._upgraded = False
        self._fragments = bytearray()

    def feed(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            del buf[:end + 4]
            self._upgraded = True
        while len(buf) >= 2:
            fin, opcode, length, pos = buf[0] & 0x80, buf[0] & 0x0F, buf[1] & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    return
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            mask = b""
            if buf[1] & 0x80:
                mask, pos = bytes(buf[pos:pos + 4]), pos + 4
            if len(buf) < pos + length:
                return
            payload = np.frombuffer(bytes(buf[pos:pos + length]), dtype=np.uint8)
            if mask:
                payload = payload ^ np.resize(np.frombuffer(mask, dtype=np.uint8), length)
            del buf[:pos + length]
            if opcode in (0, 1):
                self._fragments += payload.tobytes()
                if fin:
                    self.messages.append(self._fragments.decode("utf-8", errors="replace"))
                    self._fragments.clear()

    def user_audio(self) -> bytes:
        """The decoded ``user_audio_chunk`` payloads, in order."""
        import base64

        out = bytearray()
        for text in self.messages:
            if '"user_audio_chunk"' in text:
                out += base64.b64decode(json.loads(text)["user_audio_chunk"])
        return bytes(out)


class TcpProxy:
    """``127.0.0.1:port`` -> ``upstream``. Faults apply to every connection at once.

    :attr:`sniffers` holds a :class:`WsSniffer` per connection, in order of arrival.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", *, port: int = 0,
                 up: Link | None = None, down: Link | None = None, seed: int = 1,
                 rcvbuf: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rcvbuf = rcvbuf  # SO_RCVBUF of accepted sockets: how much the "network" holds before pushing back
        self.port = port
        self.up = up or Link()      # daemon -> agent
        self.down = down or Link()  # agent -> daemon
        self.conns: list[_Conn] = []
        self.accepted = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.signatures: set[str] = set()
        self.sniffers: list[WsSniffer] = []
        self._server: asyncio.base_events.Server | None = None
        self._rng = random.Random(seed)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        """Listen (again, on the same port after :meth:`stop_listening`)."""
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True,
                                                      limit=16384 if self.rcvbuf else 2 ** 16)
            self.port = self._server.sockets[0].getsockname()[1]
            if self.rcvbuf:  # inherited by accepted sockets, before the window is negotiated
                for sock in self._server.sockets:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        return self

    async def stop_listening(self) -> None:
        """New connections are refused (the server is gone); open ones are left alone.

        ``Server.close()`` closes the listening sockets at once. Its ``wait_closed()`` is not
        awaited: since Python 3.12 it also waits for every open connection to end, which a
        frozen (half-open) one never does.
        """
        if self._server is not None:
            self._server.close()
            self._server = None
            await asyncio.sleep(0)  # let the loop drop the listening sockets

    def cut(self) -> None:
        """Reset every open connection (TCP RST both ways)."""
        for conn in self.conns:
            conn.abort()
        self.conns.clear()

    def freeze(self) -> None:
        """Stop forwarding on every open connection, both ways, without closing it (half-open)."""
        for conn in self.conns:
            conn.frozen.set()

    async def close(self) -> None:
        self.cut()  # first: a frozen connection would otherwise be waited for (Python >= 3.12)
        await self.stop_listening()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        conn = _Conn(writer, up_writer)
        self.conns.append(conn)
        conn.sniffer = WsSniffer()
        self.sniffers.append(conn.sniffer)
        conn.tasks = [asyncio.ensure_future(self._pump(conn, reader, up_writer, self.up, True)),
                      asyncio.ensure_future(self._pump(conn, up_reader, writer, self.down, False))]
        await asyncio.gather(*conn.tasks, return_exceptions=True)
        for w in (writer, up_writer):
            w.close()
        if conn in self.conns:
            self.conns.remove(conn)

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: Link, upward: bool) -> None:
        queue: deque[tuple[float, bytes]] = deque()
        ready = asyncio.Event()
        held = 0
        room = asyncio.Event()
        room.set()
        last_due = 0.0
        eof = False

        async def deliver() -> None:
            nonlocal held
            while True:
                while not queue:
                    if eof:
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                        return
                    ready.clear()
                    await ready.wait()
                due, data = queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if conn.frozen.is_set():
                    await asyncio.Future()  # a black hole: never deliver, never close
                queue.popleft()
                held -= len(data)
                if held < link.window:
                    room.set()
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                await room.wait()
                if conn.frozen.is_set():
                    await asyncio.Future()
                data = await reader.read(16384)
                if conn.frozen.is_set():
                    await asyncio.Future()
                if not data:
                    break
                self._sniff(data)
                if upward:
                    self.bytes_up += len(data)
                    if conn.sniffer is not None:
                        conn.sniffer.feed(data)
                else:
                    self.bytes_down += len(data)
                now = time.monotonic()
                due = now + link.delay + (self._rng.uniform(-link.jitter, link.jitter) if link.jitter else 0.0)
                if link.spike_prob and self._rng.random() < link.spike_prob:
                    due += link.spike
                if link.rate:
                    due = max(due, last_due + len(data) / link.rate)
                due = max(due, last_due)
                last_due = due
                queue.append((due, data))
                held += len(data)
                if held >= link.window:
                    room.clear()
                ready.set()
            eof = True
            ready.set()
            await sender
        finally:
            sender.cancel()

    def _sniff(self, data: bytes) -> None:
        for m in re.finditer(rb"(?:conversation_signature|token)=([A-Za-z0-9_\-.~%]{6,})", data):
            self.signatures.add(urllib.parse.unquote(m.group(1).decode()))


# --------------------------------------------------------------------------- fake agent process


class FakeAgentProcess:
    """``pi-agent fake-agent`` as a child process: killable, restartable on the same port."""

    def __init__(self, tmp: Path, *args: str, host: str = "127.0.0.1", port: int | None = None,
                 prefix: tuple[str, ...] = ()) -> None:
        self.host = host
        self.port = port or free_port()
        self.args = args
        self.prefix = prefix
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> FakeAgentProcess:
        self.starts += 1
        log = self.tmp / f"fake-agent-{self.port}-{self.starts}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
        env["PYTHONUNBUFFERED"] = "1"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "pi_agent.cli", "fake-agent", "--host", self.host,
                 "--port", str(self.port), *self.args], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.log_path = log
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "fake agent listening on" in log.read_text(errors="replace"):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        text = log.read_text(errors="replace")
        self.kill()
        raise AssertionError(f"fake agent did not start:\n{text}")

    def kill(self) -> None:
        """SIGKILL: the server is gone at once, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        with urllib.request.urlopen(f"{self.http_url}{path}{'?' + query if query else ''}", timeout=5) as r:
            return json.loads(r.read())

    def conversations(self) -> list[dict[str, Any]]:
        return list(self.get("/_fake/conversations")["conversations"])

    def control(self, action: str, **params: Any) -> dict[str, Any]:
        try:
            return dict(self.get("/_fake/control", action=action, **params))
        except urllib.error.HTTPError as e:
            return {"ok": False, "status": e.code, "detail": e.read().decode(errors="replace")}

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], object], timeout: float = 15.0,
                       what: str = "condition") -> list[dict[str, Any]]:
        """Poll ``/_fake/conversations`` until ``predicate(conversations)`` holds."""
        convs: list[dict[str, Any]] = []

        async def holds() -> tuple[list[dict[str, Any]]] | None:  # a tuple: truthy even if the list is empty
            nonlocal convs
            convs = await asyncio.to_thread(self.conversations)
            return (convs,) if predicate(convs) else None

        (held,) = await wait_until(holds, timeout, f"the fake agent's {what}", poll=0.2,
                                   seen=lambda: f"conversations {convs[-3:]}")
        return held

    def __enter__(self) -> FakeAgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- network namespaces


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def netns_unavailable() -> str | None:
    """Why a namespace with a veth pair cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: iproute2)"
    return None


class NetNs:
    """A namespace ``pa<pid>`` joined to this one by a veth pair ``10.231.N.1`` <-> ``.2``.

    The host end is :attr:`host_dev` (egress = daemon -> agent when the agent is inside),
    the namespace end :attr:`ns_dev`. Everything is removed on exit, even after a failure.
    """

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(100):02d}"
        self.name = f"pafault{tag}"
        self.host_dev = f"paf{tag}h"
        self.ns_dev = f"paf{tag}n"
        net = random.randrange(1, 250)
        self.host_ip = f"10.231.{net}.1"
        self.ns_ip = f"10.231.{net}.2"

    def __enter__(self) -> NetNs:
        try:
            _ip("netns", "add", self.name)
            _ip("link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
            _ip("link", "set", self.ns_dev, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/24", "dev", self.host_dev)
            _ip("link", "set", self.host_dev, "up")
            self.exec_("ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_dev)
            self.exec_("ip", "link", "set", self.ns_dev, "up")
            self.exec_("ip", "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, OSError) as e:
            self.__exit__()
            detail = getattr(e, "stderr", "") or str(e)
            raise NetNsError(f"cannot set up a network namespace: {detail.strip()}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        _ip("link", "del", self.host_dev, check=False)
        _ip("netns", "del", self.name, check=False)

    @property
    def prefix(self) -> tuple[str, ...]:
        """Command prefix that runs a program inside the namespace."""
        return ("ip", "netns", "exec", self.name)

    def exec_(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.prefix, *args], capture_output=True, text=True, check=check, timeout=10)

    def qdisc(self, side: str, *spec: str, verb: str = "replace") -> str | None:
        """Set the root qdisc of one end (``"host"`` or ``"ns"``); the error text if refused.
        ``verb="change"`` alters it in place, keeping the packets it holds (a deleted qdisc
        drops them, and TCP then waits out a long retransmission timeout)."""
        cmd = ["tc", "qdisc", verb, "dev", self.host_dev if side == "host" else self.ns_dev, "root", *spec]
        r = subprocess.run(cmd if side == "host" else [*self.prefix, *cmd], capture_output=True, text=True, timeout=10)
        return None if r.returncode == 0 else (r.stderr.strip() or f"tc exited with {r.returncode}")

    def clear_qdisc(self, side: str) -> None:
        cmd = ["tc", "qdisc", "del", "dev", self.host_dev if side == "host" else self.ns_dev, "root"]
        subprocess.run(cmd if side == "host" else [*self.prefix, *cmd], capture_output=True, timeout=10)


class NetNsError(RuntimeError):
    pass


@contextlib.contextmanager
def netns_or_skip() -> Iterator[NetNs]:
    """A :class:`NetNs`, or ``pytest.skip`` with the reason it cannot be made here."""
    import pytest

    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        ns = NetNs().__enter__()
    except NetNsError as e:
        pytest.skip(str(e))
    try:
        yield ns
    finally:
        ns.__exit__()


__all__ = [
    "AGENT_ID", "CANARY", "FAST", "FakeAgentProcess", "FaultRun", "Link", "NetNs", "ProcStats", "SecretScan",
    "SignedUrlStub", "TcpProxy", "WsSniffer", "agent_signatures", "contains", "fault_daemon", "fault_env", "make_wav",
    "metric", "netns_or_skip", "proc_stats", "question_samples", "voiced_core",
]


# --------------------------------------------------------------------------- signed-URL stub


class SignedUrlStub:
    """An HTTP server in front of the agent's signed-URL endpoint that answers what it is told.

    Queued answers (:meth:`answer`, :meth:`redirect`) go out first, one per request; with
    none queued the request is forwarded, headers and all, to the agent. Every request's
    path and ``xi-api-key`` header are recorded in :attr:`requests`.
    """

    def __init__(self, agent_url: str) -> None:
        self.agent_url = agent_url.rstrip("/")
        self.port = 0
        self.requests: list[tuple[str, str | None]] = []
        self.times: list[float] = []  # time.monotonic() of each request
        self._answers: deque[tuple[int, bytes, tuple[tuple[str, str], ...]]] = deque()
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, status: int, body: bytes | str | dict[str, Any] | list[Any] | None,
               content_type: str = "application/json", count: int = 1) -> None:
        if isinstance(body, (dict, list)) or body is None:
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else body
        for _ in range(count):
            self._answers.append((status, data, (("Content-Type", content_type),)))

    def redirect(self, location: str, status: int = 302) -> None:
        self._answers.append((status, b"", (("Location", location),)))

    async def __aenter__(self) -> SignedUrlStub:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            self.requests.append((path, headers.get("xi-api-key")))
            self.times.append(time.monotonic())
            if self._answers:
                status, body, extra = self._answers.popleft()
            else:
                status, body, extra = await asyncio.to_thread(self._forward, path, headers)
            reason = "OK" if status == 200 else "Stub"
            out = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", "Connection: close",
                   *(f"{k}: {v}" for k, v in extra)]
            writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError, IndexError):
            pass
        finally:
            writer.close()

    def _forward(self, path: str, headers: dict[str, str]) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
        request = urllib.request.Request(self.agent_url + path, headers={
            k: v for k, v in headers.items() if k in ("xi-api-key", "accept", "user-agent")})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return r.status, r.read(), (("Content-Type", r.headers.get("Content-Type", "")),)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), (("Content-Type", e.headers.get("Content-Type", "")),)
