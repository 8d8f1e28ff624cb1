"""journald's native protocol (issue 24): entries with fields an admin can filter on.

No journald here: a stand-in journal is a unix datagram socket bound in a tmp dir, and
the daemon (``$PI_AGENT_JOURNAL_SOCKET``) or the logging set-up in process sends to it.
:func:`parse_entry` reads a datagram as journald does (``KEY=value`` lines and the
binary ``KEY\\n<le64 length><value>\\n`` form), written here from the protocol's
description, not from the encoder under test.

Quick: the encoder, the fields of a record, the event names of the decisions' lines,
the fallback to the stream form. Slow (a bound socket): in process, and the real daemon
against the fake agent (a reconnect after the agent drops the connection, a state
change, the conversation id, priorities, a multi-line message, the canary masked).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pi_agent.controller import EVENTS, event_of
from pi_agent.decide import effects as fx
from pi_agent.decide import inputs as i
from pi_agent.decide.decide import decide
from pi_agent.decide.model import Config, Link, Model
from pi_agent.decide.states import State
from pi_agent.engine import events as ev
from pi_agent.engine.backoff import Outcome
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from pi_agent.service import journal
from pi_agent.service.logging import priority, redact, register_secret, setup_logging
from .support_daemon import DaemonProcess, EventClient
from .support_faults import CANARY, FaultRun, SecretScan, fault_env

Entry = dict[str, list[bytes]]


def parse_entry(data: bytes) -> list[tuple[str, bytes]]:
    """One native-protocol datagram as (field, value) pairs, in order."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields.append((key.decode("ascii"), value))
            pos = end + 1
        else:
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 9
            value = data[start:start + size]
            assert len(value) == size and data[start + size:start + size + 1] == b"\n", data
            fields.append((line.decode("ascii"), value))
            pos = start + size + 1
    return fields


def as_entry(data: bytes) -> Entry:
    entry: Entry = {}
    for key, value in parse_entry(data):
        entry.setdefault(key, []).append(value)
    return entry


def field(entry: Entry, name: str) -> str | None:
    values = entry.get(name)
    return None if not values else values[-1].decode()


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    setup_logging(stream=io.StringIO(), journald=False)  # the journal handler closed, no socket left


# --------------------------------------------------------------------------- quick: the encoder


def test_encoder_writes_simple_and_binary_fields() -> None:
    data = journal.encode([("MESSAGE", "one\ntwo"), ("PRIORITY", "6"), ("PI_AGENT_STATE", "idle"),
                           ("EMPTY", ""), ("RAW", b"a=b")])
    assert data == (b"MESSAGE\n" + struct.pack("<Q", 7) + b"one\ntwo\n"
                    b"PRIORITY=6\nPI_AGENT_STATE=idle\nEMPTY=\nRAW=a=b\n")
    assert parse_entry(data) == [("MESSAGE", b"one\ntwo"), ("PRIORITY", b"6"), ("PI_AGENT_STATE", b"idle"),
                                 ("EMPTY", b""), ("RAW", b"a=b")]
    text = "caf\u00e9 \u2615\nline"
    assert parse_entry(journal.encode([("MESSAGE", text)])) == [("MESSAGE", text.encode())]


@pytest.mark.parametrize("name", ["", "_PID", "1ABC", "lower", "WITH-DASH", "A" * 65, "MESSAGE=X"])
def test_encoder_refuses_what_journald_would_drop(name: str) -> None:
    with pytest.raises(ValueError, match="field name"):
        journal.encode([(name, "x")])


def test_where_native_entries_go(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    path.touch()
    st = path.stat()
    matching = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    with path.open("a") as stream:
        # A file (the tests' JOURNAL_STREAM trick) is the stream form, never native.
        assert journal.socket_path(stream, matching) is None
        assert journal.socket_path(stream, {**matching, "PI_AGENT_JOURNAL_SOCKET": "/x/sock"}) == "/x/sock"
        assert journal.socket_path(stream, {"PI_AGENT_JOURNAL_SOCKET": "off"}) is None
        assert journal.socket_path(stream, {}, "/y") == "/y"
    a, b = socket.socketpair()  # what systemd connects stderr to: a stream socket
    with a, b, a.makefile("w") as sock_stream:
        st = Path(f"/proc/self/fd/{a.fileno()}").stat()
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal.socket_path(sock_stream, env) == journal.JOURNAL_SOCKET
        assert journal.socket_path(sock_stream, {**env, "PI_AGENT_JOURNAL_SOCKET": "off"}) is None
        assert journal.socket_path(sock_stream, {"JOURNAL_STREAM": "1:2"}) is None


def _handler(path: str = "/nonexistent/journal.sock") -> tuple[journal.JournalHandler, io.StringIO]:
    from pi_agent.service.logging import ServiceFormatter

    out = io.StringIO()
    fallback = logging.StreamHandler(out)
    formatter = ServiceFormatter(journald=True, redact=redact)
    fallback.setFormatter(formatter)
    handler = journal.JournalHandler(path, body=formatter.body, redact=redact, priority=priority,
                                     fallback=fallback)
    return handler, out


def test_fields_of_a_record() -> None:
    register_secret(CANARY)
    handler, _ = _handler()
    try:
        raise RuntimeError(f"refused {CANARY}")
    except RuntimeError:
        import sys
        exc = sys.exc_info()
    record = logging.LogRecord("pi_agent.controller", logging.WARNING, "/x/controller.py", 42, "disconnected: %s",
                               (f"key {CANARY}",), exc, func="_log")
    record.pi_agent_state = "offline"
    record.pi_agent_conversation_id = None
    record.pi_agent_event = "disconnected"
    fields = dict(handler.fields(record))
    message = fields.pop("MESSAGE")
    assert message.startswith("controller: disconnected: key ***\nTraceback (most recent call last):")
    assert message.endswith("RuntimeError: refused ***") and CANARY not in message
    assert fields == {"PRIORITY": "4", "SYSLOG_IDENTIFIER": "pi-agent", "PI_AGENT_LOGGER": "controller",
                      "CODE_FILE": "/x/controller.py", "CODE_LINE": "42", "CODE_FUNC": "_log",
                      "PI_AGENT_STATE": "offline", "PI_AGENT_EVENT": "disconnected"}
    # Another module's line gets the state the controller logged last; no event of its own.
    other = logging.LogRecord("pi_agent.audio.capture", logging.ERROR, "/x/capture.py", 7, "overflow", (), None)
    controller = logging.getLogger("pi_agent.controller")
    try:
        controller.setLevel(logging.INFO)
        assert dict(handler.fields(other))["PI_AGENT_STATE"] == "offline"
        assert "PI_AGENT_EVENT" not in dict(handler.fields(other))
        controller.setLevel(logging.WARNING)  # its state changes no longer logged: the context would be stale
        assert "PI_AGENT_STATE" not in dict(handler.fields(other))
    finally:
        controller.setLevel(logging.NOTSET)
    long = logging.LogRecord("pi_agent", logging.INFO, "", 0, "%s", ("x" * 100_000,), None)
    assert len(dict(handler.fields(long))["MESSAGE"]) < journal.MAX_MESSAGE + 100
    handler.close()


def test_an_unreachable_journal_means_the_stream_form_said_once() -> None:
    stream = io.StringIO()
    setup_logging("info", stream=stream, journald=None, environ={"JOURNAL_STREAM": "1:2"},
                  journal_socket="/nonexistent/journal.sock")
    log = logging.getLogger("pi_agent.session")
    log.info("first")
    log.warning("second")
    lines = stream.getvalue().splitlines()
    assert lines == ["<4>journal: cannot send to /nonexistent/journal.sock (No such file or directory); "
                     "logging to stderr instead", "<6>session: first", "<4>session: second"]


def test_decisions_lines_get_their_event_names() -> None:
    """The texts are the decisions' own (run here), so a reworded line fails this test."""
    config = Config("vad", True, False)
    open_ = {"link": Link.OPEN, "conversation_id": "c1"}
    cases: list[tuple[Model, object, str]] = [
        (Model(config=config, state=State.OFFLINE, link=Link.BACKING_OFF), ev.Connecting(2), "reconnect"),
        (Model(config=config, state=State.IDLE, **open_), ev.Closed(Outcome.RETRY, "gone", 1.0, None, True, 3.0),
         "disconnected"),
        (Model(config=config, state=State.CONNECTING), ev.Opened("c2", "pcm_16000", "pcm_16000"),
         "conversation_open"),
        (Model(config=config, state=State.IDLE), i.DeviceFailed("microphone", "gone"), "device_lost"),
        (Model(config=config, state=State.ERROR, device_errors=(("microphone", "microphone: gone"),)),
         i.DeviceRecovered("microphone"), "device_back"),
        (Model(config=config, state=State.SPEAKING, **open_), ev.Interrupted(7), "interruption"),
    ]
    for model, event, name in cases:
        _, effects = decide(model, event, 100.0)  # type: ignore[arg-type]
        texts = [e.text for e in effects if isinstance(e, fx.Log)]
        assert name in [event_of(t) for t in texts], (name, texts)
    assert event_of("connecting to the agent") is None  # the first attempt is no reconnect
    assert len({name for _, name in EVENTS}) == len(EVENTS)


# --------------------------------------------------------------------------- slow: a stand-in journal


@contextlib.contextmanager
def stand_in_journal(capacity: int | None = None) -> Iterator[tuple[str, socket.socket]]:
    """A unix datagram socket bound in a short tmp dir (a socket path holds 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="pj-") as tmp:
        path = str(Path(tmp) / "socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if capacity is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, capacity)
        sock.bind(path)
        try:
            yield path, sock
        finally:
            sock.close()


def received(sock: socket.socket, timeout: float = 0.0) -> list[Entry]:
    entries = []
    sock.settimeout(timeout)
    with contextlib.suppress(TimeoutError, BlockingIOError):
        while True:
            entries.append(as_entry(sock.recv(1 << 20)))
            sock.settimeout(0.0)
    return entries


@pytest.mark.slow
def test_in_process_entries_carry_fields_priorities_and_no_secret() -> None:
    with stand_in_journal() as (path, sock):
        out = io.StringIO()
        setup_logging("debug", stream=out, journal_socket=path, secrets=[CANARY])
        log = logging.getLogger("pi_agent.controller")
        log.info("state idle -> listening", extra={"pi_agent_state": "listening", "pi_agent_event": "state",
                                                   "pi_agent_conversation_id": "conv_1"})
        log.debug("a debug line")
        logging.getLogger("pi_agent.session").warning("first line\nsecond line with %s", CANARY)
        logging.getLogger("pi_agent.audio").error("the speaker failed")
        entries = received(sock, 1.0)
    assert out.getvalue() == ""  # nothing on the stream: all in the journal
    assert [field(e, "PRIORITY") for e in entries] == ["6", "7", "4", "3"]
    assert all(field(e, "SYSLOG_IDENTIFIER") == "pi-agent" for e in entries)
    first = entries[0]
    assert field(first, "MESSAGE") == "controller: state idle -> listening"
    assert (field(first, "PI_AGENT_STATE"), field(first, "PI_AGENT_EVENT"),
            field(first, "PI_AGENT_CONVERSATION_ID")) == ("listening", "state", "conv_1")
    assert field(entries[2], "MESSAGE") == "session: first line\nsecond line with ***"
    assert field(entries[3], "PI_AGENT_STATE") == "listening"  # the context, for other modules' lines
    assert field(entries[3], "PI_AGENT_CONVERSATION_ID") == "conv_1"
    assert "PI_AGENT_EVENT" not in entries[3]


@pytest.mark.slow
def test_a_full_journal_drops_and_counts_without_blocking() -> None:
    with stand_in_journal(capacity=4096) as (path, sock):
        setup_logging("info", stream=io.StringIO(), journal_socket=path)
        handler = next(h for h in logging.getLogger().handlers if h.get_name() == "pi-agent")
        assert isinstance(handler, journal.JournalHandler)
        log = logging.getLogger("pi_agent.session")
        started = time.monotonic()
        for n in range(3000):
            log.info("line %d %s", n, "x" * 200)
        assert time.monotonic() - started < 5.0  # never waits for the reader
        assert handler.dropped > 0
        got = received(sock, 0.5)
        assert got and len(got) < 3000
        log.info("after the flood")
        later = [field(e, "MESSAGE") for e in received(sock, 1.0)]
    assert "session: after the flood" in later
    assert any(m and re.fullmatch(r"journal: \d+ log entries were dropped \(the journal's socket was full\)", m)
               for m in later), later


@pytest.mark.slow
async def test_daemon_fields_for_a_reconnect_state_conversation_and_secrets(tmp_path: Path) -> None:
    with stand_in_journal() as (path, sock):
        sock.setblocking(False)
        entries: list[Entry] = []
        raw: list[bytes] = []

        async def read() -> None:
            loop = asyncio.get_running_loop()
            while True:
                data = await loop.sock_recv(sock, 1 << 20)
                raw.append(data)
                entries.append(as_entry(data))

        reader = asyncio.create_task(read())
        try:
            async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
                env = fault_env(agent.http_url, tmp_path, PI_AGENT_JOURNAL_SOCKET=path)
                # Not fault_daemon: its scan would (rightly) find the canary the server echoes below in
                # the event API's error event, which passes the server's message on as it came.
                daemon = DaemonProcess(env, tmp_path).start()
                try:
                    await daemon.wait_api(30)
                    async with EventClient(daemon.api_socket) as events:
                        run = FaultRun(daemon, events, SecretScan())
                        first = await run.wait_connected()
                        await run.wait_state("idle", 10)
                        # A server error with a newline and the key in its message; the agent then drops the line.
                        await agent.control("error", {"error_type": "llm_error", "code": "1011",
                                                      "message": f"first line\nsecond line {CANARY}"})
                        second = await run.wait_connected(15, after=1)
                        await run.wait_state("idle", 10)
                        await asyncio.sleep(0.3)
                    assert await asyncio.to_thread(daemon.stop) == 0
                finally:
                    daemon.stop()
                stderr = daemon.log
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    assert first != second
    assert "Traceback" not in stderr and CANARY not in stderr
    assert not [line for line in stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line)], stderr[-2000:]
    assert not any(CANARY.encode() in data for data in raw)
    assert all(field(e, "SYSLOG_IDENTIFIER") == "pi-agent" for e in entries)

    def having(**wanted: str) -> list[Entry]:
        return [e for e in entries if all(field(e, k) == v for k, v in wanted.items())]

    opened = having(PI_AGENT_EVENT="conversation_open", PI_AGENT_CONVERSATION_ID=first)
    assert opened and field(opened[0], "PRIORITY") == "6"
    assert having(PI_AGENT_EVENT="state", PI_AGENT_STATE="idle", PI_AGENT_CONVERSATION_ID=first)
    dropped = having(PI_AGENT_EVENT="disconnected")
    assert dropped and field(dropped[0], "PRIORITY") == "4", [field(e, "MESSAGE") for e in entries]
    assert "***" in (field(dropped[0], "MESSAGE") or "")
    assert field(dropped[0], "PI_AGENT_STATE") == "offline" and "PI_AGENT_CONVERSATION_ID" not in dropped[0]
    reconnect = having(PI_AGENT_EVENT="reconnect")
    assert reconnect and field(reconnect[0], "PRIORITY") == "6"
    assert (field(reconnect[0], "MESSAGE") or "").startswith("controller: connecting to the agent (attempt 2)")
    assert having(PI_AGENT_EVENT="conversation_open", PI_AGENT_CONVERSATION_ID=second)
    assert having(PRIORITY="7")  # debug lines (the fault env logs at debug)
    server = having(PI_AGENT_EVENT="server_error")
    assert server, [field(e, "MESSAGE") for e in entries]
    message = field(server[0], "MESSAGE") or ""
    assert "first line\nsecond line ***" in message and field(server[0], "PRIORITY") == "4"
    # Lines of other modules carry the state too (the session's, the API's).
    assert any(field(e, "PI_AGENT_LOGGER") != "controller" and field(e, "PI_AGENT_STATE") for e in entries)
