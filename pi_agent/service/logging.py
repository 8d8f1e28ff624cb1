"""Log lines for journald and for a terminal, with secrets redacted and repeats rate-limited.

Under systemd (``$JOURNAL_STREAM`` names our stderr) every line starts with the syslog
priority journald understands (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>``
debug) and carries no time, since journald stamps each entry; a traceback keeps the
prefix on each of its lines. In a terminal lines read ``12:34:56.789 INFO  session: ...``.
When stderr is the journal's own socket, records go to journald as native entries
instead, with fields to filter on (``PI_AGENT_EVENT``, ``PI_AGENT_STATE``, ...: see
:mod:`.journal`); the stream form is their fallback.

Every line is formatted first and redacted after, so the API key and signed-URL tokens
are caught wherever they hide: in the message, its arguments or an exception's text.
Failures (warning and above) that repeat with the same logger, level and message
template are shown once per window; the next one shown says how many were held back.

Call :func:`setup_logging` once at start-up (calling it again replaces the handler),
then :func:`register_secret` with the API key once the settings are read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TextIO

from ..errors import ConfigError
from . import journal

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}

#: syslog priorities journald reads from the ``<N>`` line prefix.
PRIORITIES = {logging.CRITICAL: 3, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

_SHORT_LEVEL = {logging.CRITICAL: "CRIT", logging.ERROR: "ERROR", logging.WARNING: "WARN",
                logging.INFO: "INFO", logging.DEBUG: "DEBUG"}

MASK = "***"
RATE_WINDOW = 60.0
_MIN_SECRET_LEN = 4  # shorter "secrets" would mask ordinary words

# Signed-URL query parameters and credential headers, in URLs, header dumps and dict reprs.
_TOKEN_NAMES = r"(?:conversation_signature|signature|token|api_key|xi_api_key)"
_TOKEN_PATTERNS = (
    re.compile(rf"(?i)({_TOKEN_NAMES}=)[^&\s\"'#<>]+"),
    re.compile(rf"(?i)([\"']{_TOKEN_NAMES}[\"']\s*:\s*[\"'])[^\"']+"),
    re.compile(r"(?i)(xi-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+"),
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic)\s+)[^\s\"',;}]+"),
)

_PACKAGE_PREFIX = "pi_agent."
_DIGITS = re.compile(r"\d+")


class Redactor:
    """Replaces registered secrets and signed-URL tokens with ``***``. Thread-safe."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Mask ``secret`` from now on. Blank or very short values are ignored."""
        secret = secret.strip() if isinstance(secret, str) else ""
        if len(secret) < _MIN_SECRET_LEN:
            return
        with self._lock:
            if secret in self._secrets:
                return
            self._secrets.add(secret)
            # Longest first, so a secret that contains another is masked whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def __call__(self, text: str) -> str:
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        for token in _TOKEN_PATTERNS:
            text = token.sub(lambda m: m.group(1) + MASK, text)
        return text


@dataclass(slots=True)
class _Seen:
    shown_at: float  # when the last record of this kind was let through
    held: int = 0  # how many were held back since


class RateLimitFilter(logging.Filter):
    """Lets the first of identical failures through, then holds repeats back for ``window`` s.

    "Identical" means the same logger, level and message template (``record.msg``, before
    its arguments are filled in) and the same first argument once its numbers are masked.
    The first record let through after a suppressed run gets ``repeated`` set to the
    number held back; the formatter shows it. Records below WARNING always pass. ``clock`` is
    monotonic seconds, injectable for tests.
    """

    _MAX_KEYS = 512

    def __init__(self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str, str], _Seen] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.window <= 0:
            return True
        # The first argument, numbers masked, is part of the key: "disconnected: %s" for a
        # refused key and for a lost connection are two failures, attempt 3 and 4 are one.
        args = record.args if isinstance(record.args, tuple) else ()
        what = _DIGITS.sub("#", str(args[0]))[:120] if args else ""
        key = (record.name, record.levelno, str(record.msg), what)
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and 0 <= now - entry.shown_at < self.window:
                entry.held += 1
                return False
            if entry is not None and entry.held:
                record.repeated = entry.held
            self._seen[key] = _Seen(now)
            if len(self._seen) > self._MAX_KEYS:
                self._forget_older_than(now - self.window)
        return True

    def _forget_older_than(self, cutoff: float) -> None:
        for key in [k for k, entry in self._seen.items() if entry.shown_at < cutoff]:
            del self._seen[key]


class ServiceFormatter(logging.Formatter):
    """Formats for journald (``<prio>logger: message``) or a terminal, then redacts."""

    def __init__(self, *, journald: bool, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.journald = journald
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        line = self.body(record)
        if self.journald:
            prefix = f"<{priority(record.levelno)}>"
            return "\n".join(prefix + part for part in line.splitlines() or [""])
        return f"{self._clock_text(record)} {_SHORT_LEVEL.get(record.levelno, record.levelname):<5} {line}"

    def body(self, record: logging.LogRecord) -> str:
        """``logger: message`` (with a traceback, if any, on the lines after), redacted: the
        line without its prefix, and the journal's ``MESSAGE``."""
        name = record.name.removeprefix(_PACKAGE_PREFIX)
        message = record.getMessage()
        repeated = getattr(record, "repeated", 0)
        if repeated:
            message += f" (repeated {repeated} times)"
        # Not cached on the record (as logging.Formatter does): other handlers must not
        # pick up an unredacted copy.
        exc_text = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        if exc_text:
            message += "\n" + exc_text
        if record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        return self._redact(f"{name}: {message}")

    @staticmethod
    def _clock_text(record: logging.LogRecord) -> str:
        return time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (custom levels round down to the next known)."""
    for threshold in (logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return PRIORITIES[threshold]
    return PRIORITIES[logging.DEBUG]


_redactor = Redactor()  # process-wide, like the logging tree it serves


def register_secret(value: str) -> None:
    """Mask ``value`` in every later log line (call with the API key once it is read)."""
    _redactor.add(value)


def redact(text: str) -> str:
    """``text`` with registered secrets and signed-URL tokens masked (for other outputs too)."""
    return _redactor(text)


def journal_stream_matches(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM``).

    systemd sets ``JOURNAL_STREAM=<st_dev>:<st_ino>`` of the stream it connected; a child
    that inherited the variable but writes elsewhere must not use prefixes. A stream
    without a file descriptor cannot be checked, so the variable alone decides.
    """
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return True
    try:
        dev, ino = (int(part) for part in value.split(":"))
    except ValueError:
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(
    level: str = "info",
    *,
    stream: TextIO | None = None,
    journald: bool | None = None,
    secrets: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    rate_window: float = RATE_WINDOW,
    clock: Callable[[], float] = time.monotonic,
    journal_socket: str | None = None,
) -> None:
    """Send log records to ``stream`` (default ``sys.stderr``) in journald or terminal form,
    or to the journal's socket as native entries with fields (:mod:`.journal`).

    ``journald=None`` detects it (:func:`journal_stream_matches`). ``level`` applies to
    pi-agent's own loggers; other libraries stay at INFO or above so that a debug run
    does not log every WebSocket frame. Calling again replaces the handler (never two).
    Native entries go to ``journal_socket`` or ``$PI_AGENT_JOURNAL_SOCKET`` if set (``off``:
    never), else to journald's socket when ``stream`` is the socket systemd connected
    (``journald`` left to detection); the stream form stays the fallback.
    Raises :class:`~pi_agent.errors.ConfigError` for an unknown level name.
    """
    try:
        levelno = LEVELS[level.strip().lower()]
    except (KeyError, AttributeError):
        raise ConfigError(f"log level {level!r} is not one of debug, info, warning, error") from None
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    native = journal.socket_path(out, env, journal_socket) if journald is None or journal_socket else None
    if journald is None:
        journald = journal_stream_matches(out, environ)
    for secret in secrets:
        register_secret(secret)

    formatter = ServiceFormatter(journald=journald, redact=_redactor)
    handler: logging.Handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    if native is not None:
        handler = journal.JournalHandler(native, body=formatter.body, redact=_redactor, priority=priority,
                                         fallback=handler, clock=clock)
    handler.set_name("pi-agent")
    handler.addFilter(RateLimitFilter(rate_window, clock))

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "pi-agent"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(max(levelno, logging.INFO))
    logging.getLogger(_PACKAGE_PREFIX.rstrip(".")).setLevel(levelno)
    logging.captureWarnings(True)


NATIVE_LOGGER = "pi_agent.native"
_native_routed = False


def route_native_stderr() -> bool:
    """Turn what C libraries write to fd 2 (ALSA, PortAudio) into ``pi_agent.native`` warnings.

    A dying USB device makes ALSA and PortAudio print straight to fd 2, bypassing logging:
    under systemd those lines reach the journal with no priority and no rate limit. Here
    fd 2 becomes a pipe read by a thread that logs each line, so they get the journal
    priority, the redaction and the rate limit of every other failure. Python's own
    ``sys.stderr`` (the log handler, tracebacks) moves to a copy of the original stream
    first, so it never goes through the pipe. The pipe does not block its writers: if the
    reader ever falls behind, a C library loses a line rather than stalling an audio
    thread. Call it before :func:`setup_logging`. Returns False, changing nothing, when
    there is no fd 2 to take over (or it was taken over already).
    """
    global _native_routed
    if _native_routed:
        return False
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        return False
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        os.close(saved)
        return False
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = os.fdopen(saved, "w", buffering=1, encoding=encoding, errors="backslashreplace")
    os.set_blocking(write_fd, False)
    os.dup2(write_fd, 2)
    os.close(write_fd)
    _native_routed = True
    threading.Thread(target=_log_native_lines, args=(read_fd,), name="pi-agent-native-stderr",
                     daemon=True).start()
    return True


def _log_native_lines(fd: int) -> None:
    log = logging.getLogger(NATIVE_LOGGER)
    with os.fdopen(fd, "rb") as pipe:
        for raw in pipe:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line.strip():
                with contextlib.suppress(Exception):  # never let this thread die: fd 2 would fill up and lose lines
                    log.warning("%s", line)
