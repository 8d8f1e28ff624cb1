"""Log records as journald entries with fields, over the journal's native protocol.

Under systemd the daemon's stderr is a stream to journald: each line becomes an entry
with a priority and nothing else. Sent as datagrams to ``/run/systemd/journal/socket``
instead (the protocol of ``sd_journal_send``, https://systemd.io/JOURNAL_NATIVE_PROTOCOL/),
an entry carries fields an admin can filter on::

    journalctl -u pi-agent PI_AGENT_EVENT=reconnect
    journalctl -u pi-agent PI_AGENT_STATE=error -p warning

Each entry has ``MESSAGE`` (``logger: message``, redacted; a traceback stays in the same
entry), ``PRIORITY`` (as the stream's ``<N>`` prefix), ``SYSLOG_IDENTIFIER=pi-agent``,
``CODE_FILE``/``CODE_LINE``/``CODE_FUNC``, ``PI_AGENT_LOGGER``, and, when known,
``PI_AGENT_STATE`` (the daemon's state when the line was logged),
``PI_AGENT_CONVERSATION_ID`` (while a conversation is open) and ``PI_AGENT_EVENT``
(``reconnect``, ``disconnected``, ``device_lost``, ``interruption``, ``state``, ...: see
``EVENTS`` in :mod:`pi_agent.controller`). A record carries those as attributes
(``extra={"pi_agent_state": ...}`` on the logging call); records of other modules get the
state and conversation last logged by the controller while its info lines are enabled
(at level warning they would be stale, so they are left out).

The socket is non-blocking: a full journal drops the entry (counted, said in the next
entry that gets through) and never stalls the event loop. An unreachable journal makes
the records go to the stream form again (said once), and the socket is tried again now
and then. Entries are bounded (:data:`MAX_MESSAGE`), so no memfd passing is needed.

``PI_AGENT_JOURNAL_SOCKET`` (environment, for tests and diagnostics) overrides: a path
sends there whatever stderr is; ``off`` keeps the stream form under systemd too.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SOCKET_VARIABLE = "PI_AGENT_JOURNAL_SOCKET"
OFF = "off"
IDENTIFIER = "pi-agent"
MAX_MESSAGE = 48 * 1024  # characters of MESSAGE in one datagram (well below the socket's send buffer)
SHORT_MESSAGE = 4 * 1024  # what is kept of a message the socket still refuses as too large
RETRY_AFTER = 10.0  # s between attempts to reach a journal found unreachable

#: Record attributes (``extra=``) and the journal fields they become.
RECORD_FIELDS = (("pi_agent_state", "PI_AGENT_STATE"), ("pi_agent_conversation_id", "PI_AGENT_CONVERSATION_ID"),
                 ("pi_agent_event", "PI_AGENT_EVENT"))
_CONTEXT_LOGGER = "pi_agent.controller"
_PACKAGE_PREFIX = "pi_agent."

_LENGTH = struct.Struct("<Q")


def valid_field_name(name: str) -> bool:
    """What journald accepts as a field name: A-Z, 0-9 and ``_``, not starting with ``_``
    (trusted fields) or a digit, at most 64 characters."""
    return (0 < len(name) <= 64 and not name[0].isdigit() and name[0] != "_"
            and all("A" <= c <= "Z" or "0" <= c <= "9" or c == "_" for c in name))


def encode(fields: Iterable[tuple[str, str | bytes]]) -> bytes:
    """One native-protocol entry: ``KEY=value\\n`` per field, or, for a value holding a
    newline, ``KEY\\n`` + its length (64-bit little-endian) + the value + ``\\n``.
    Raises ValueError for a field name journald would refuse."""
    out = bytearray()
    for name, value in fields:
        if not valid_field_name(name):
            raise ValueError(f"invalid journal field name {name!r}")
        data = value.encode("utf-8", errors="replace") if isinstance(value, str) else value
        key = name.encode("ascii")
        if b"\n" in data:
            out += key + b"\n" + _LENGTH.pack(len(data)) + data + b"\n"
        else:
            out += key + b"=" + data + b"\n"
    return bytes(out)


def stream_is_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the socket systemd connected to journald (``$JOURNAL_STREAM``
    names its device and inode). A file or a pipe never is, whatever the variable says."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
        dev, ino = (int(part) for part in value.split(":"))
    except (AttributeError, ValueError, OSError):
        return False
    return stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (dev, ino)


def socket_path(stream: TextIO, environ: Mapping[str, str], explicit: str | None = None) -> str | None:
    """Where to send native entries, or None for the stream form: ``explicit`` or
    ``$PI_AGENT_JOURNAL_SOCKET`` when set (``off``: None), else the journal's own socket
    when ``stream`` is the journal stream."""
    chosen = explicit if explicit is not None else environ.get(SOCKET_VARIABLE, "").strip()
    if chosen:
        return None if chosen.lower() == OFF else chosen
    return JOURNAL_SOCKET if stream_is_journal(stream, environ) else None


class JournalHandler(logging.Handler):
    """Sends each record to the journal socket as one native entry; falls back to
    ``fallback`` (a handler of the stream form) while the socket cannot be reached.

    ``body(record)`` gives the redacted ``logger: message`` text, ``redact`` masks the
    other field values, ``priority`` maps a level to its syslog priority. ``clock`` is
    monotonic seconds (when to try the socket again).
    """

    def __init__(self, path: str, *, body: Callable[[logging.LogRecord], str], redact: Callable[[str], str],
                 priority: Callable[[int], int], fallback: logging.Handler,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.path = path
        self._priority = priority
        self.fallback = fallback
        self.dropped = 0  # entries dropped because the journal's socket was full
        self.failed = 0  # entries that went to the stream form instead
        self._body = body
        self._redact = redact
        self._clock = clock
        self._sock: socket.socket | None = None
        self._down_until = 0.0  # no new attempt before this (monotonic s)
        self._said_down = False
        self._unsaid_drops = 0
        self._context: dict[str, str] = {}
        self._connect()

    # --- the socket ---------------------------------------------------------------------------

    def _connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.path)
        except OSError as e:
            sock.close()
            self._went_down(e)
            return False
        self._sock = sock
        return True

    def _went_down(self, error: OSError) -> None:
        self._close_socket()
        self._down_until = self._clock() + RETRY_AFTER
        if not self._said_down:
            self._said_down = True
            self._say(logging.WARNING, f"cannot send to {self.path} ({error.strerror or error}); "
                                       "logging to stderr instead")

    def _close_socket(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _say(self, level: int, text: str) -> None:
        """A line of this handler's own, on the stream form (never through the logging tree)."""
        record = logging.LogRecord("pi_agent.journal", level, __file__, 0, "%s", (text,), None)
        self.fallback.handle(record)

    def _send(self, data: bytes) -> str:
        """Send one entry: "sent", "dropped" (the socket is full), "too_large" or "down"."""
        if self._sock is None and (self._clock() < self._down_until or not self._connect()):
            return "down"
        for attempt in (1, 2):
            sock = self._sock
            if sock is None:
                return "down"
            try:
                sock.send(data)
            except BlockingIOError:
                return "dropped"
            except OSError as e:
                if e.errno in (errno.EMSGSIZE, errno.ENOBUFS):
                    return "too_large"
                if attempt == 2:
                    self._went_down(e)
                    return "down"
                # journald restarted (a new socket at the same path) or went away: once more, afresh.
                self._close_socket()
                if not self._connect():
                    return "down"
            else:
                return "sent"
        return "down"

    # --- records ------------------------------------------------------------------------------

    def fields(self, record: logging.LogRecord, *, limit: int = MAX_MESSAGE) -> list[tuple[str, str]]:
        """The journal fields of ``record`` (``MESSAGE`` cut to ``limit`` characters)."""
        message = self._body(record)
        if len(message) > limit:
            message = message[:limit] + f" ... ({len(message) - limit} more characters cut)"
        out = [("MESSAGE", message), ("PRIORITY", str(self._priority(record.levelno))),
               ("SYSLOG_IDENTIFIER", IDENTIFIER), ("PI_AGENT_LOGGER", record.name.removeprefix(_PACKAGE_PREFIX))]
        if record.pathname:
            out += [("CODE_FILE", record.pathname), ("CODE_LINE", str(record.lineno)),
                    ("CODE_FUNC", record.funcName or "")]
        repeated = getattr(record, "repeated", 0)
        if repeated:
            out.append(("PI_AGENT_REPEATED", str(repeated)))
        context = self._context_of(record)
        out += [(name, self._redact(context[name])) for _, name in RECORD_FIELDS if context.get(name)]
        return out

    def _context_of(self, record: logging.LogRecord) -> dict[str, str]:
        own = {name: str(value) for attr, name in RECORD_FIELDS
               if (value := getattr(record, attr, None)) is not None}
        if "PI_AGENT_STATE" in own:  # the controller's line: the context from now on
            self._context = {k: v for k, v in own.items() if k != "PI_AGENT_EVENT"}
            return own
        if logging.getLogger(_CONTEXT_LOGGER).isEnabledFor(logging.INFO):
            return {**self._context, **own}
        return own

    def emit(self, record: logging.LogRecord) -> None:
        try:
            outcome = self._send(encode(self.fields(record)))
            if outcome == "too_large":
                outcome = self._send(encode(self.fields(record, limit=SHORT_MESSAGE)))
                if outcome == "too_large":
                    outcome = "dropped"
            if outcome == "dropped":
                self.dropped += 1
                self._unsaid_drops += 1
            elif outcome == "down":
                self.failed += 1
                self.fallback.handle(record)
            elif self._unsaid_drops or self._said_down:
                self._catch_up()
        except Exception:
            self.handleError(record)

    def _catch_up(self) -> None:
        """After drops or an outage, say so in the journal (once each)."""
        if self._said_down:
            self._said_down = False
            self._say_in_journal(logging.INFO, f"sending to {self.path} again")
        if self._unsaid_drops:
            count, self._unsaid_drops = self._unsaid_drops, 0
            self._say_in_journal(logging.WARNING, f"{count} log entries were dropped (the journal's "
                                                  "socket was full)")

    def _say_in_journal(self, level: int, text: str) -> None:
        record = logging.LogRecord("pi_agent.journal", level, __file__, 0, "%s", (text,), None)
        if self._send(encode(self.fields(record))) != "sent":
            self.fallback.handle(record)

    def close(self) -> None:
        self.acquire()
        try:
            self._close_socket()
        finally:
            self.release()
        self.fallback.close()
        super().close()
