"""Log lines for journald and terminals: prefixes, format, redaction, rate limiting."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pi_agent.errors import ConfigError
from pi_agent.service.logging import redact, register_secret, setup_logging

SECRET = "sk_test_4f1d9a0c7e2b58d3"  # unique enough to mask nothing else


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("pi_agent")
    saved = (root.level, ours.level, list(root.handlers))
    yield
    for handler in root.handlers:
        if handler not in saved[2]:
            root.removeHandler(handler)
    root.setLevel(saved[0])
    ours.setLevel(saved[1])
    logging.captureWarnings(False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _journal_env(path: Path) -> dict[str, str]:
    st = os.stat(path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def _emit_all_levels(name: str = "pi_agent.session") -> None:
    log = logging.getLogger(name)
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line")
    log.error("error line")
    log.critical("critical line")


def test_journald_lines_carry_the_syslog_priority_and_no_time(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as stream:
        # What systemd does: JOURNAL_STREAM names the very stream we write to.
        setup_logging("debug", stream=stream, environ=_journal_env(path))
        _emit_all_levels()
    assert path.read_text().splitlines() == [
        "<7>session: debug line",
        "<6>session: info line",
        "<4>session: warning line",
        "<3>session: error line",
        "<3>session: critical line",
    ]


def test_journal_stream_of_another_file_means_terminal_format(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.touch()
    path = tmp_path / "out"
    with path.open("w") as stream:
        # Inherited from a parent run by systemd, but our stderr goes elsewhere.
        setup_logging("info", stream=stream, environ=_journal_env(other))
        logging.getLogger("pi_agent.session").info("hello")
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} INFO  session: hello\n", path.read_text())


def test_journald_detection_from_the_real_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "journal"
    path.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _journal_env(path)["JOURNAL_STREAM"])
    with path.open("a") as stream:
        setup_logging(stream=stream)
        logging.getLogger("pi_agent").warning("from the environment")
    assert path.read_text() == "<4>pi_agent: from the environment\n"


def test_a_stream_without_a_descriptor_trusts_journal_stream_alone() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, environ={"JOURNAL_STREAM": "1:2"})
    logging.getLogger("pi_agent.x").info("hi")
    assert stream.getvalue() == "<6>x: hi\n"
    stream = io.StringIO()
    setup_logging(stream=stream, environ={})
    logging.getLogger("pi_agent.x").info("hi")
    assert stream.getvalue().endswith(" INFO  x: hi\n")


def test_terminal_format() -> None:
    stream = io.StringIO()
    setup_logging("debug", stream=stream, journald=False)
    _emit_all_levels("pi_agent.audio.capture")
    logging.getLogger("websockets.client").warning("not ours")
    lines = stream.getvalue().splitlines()
    pattern = (r"\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO |WARN |ERROR|CRIT ) "
               r"(audio\.capture|websockets\.client): \w+ \w+( \w+)?")
    assert [re.fullmatch(pattern, line) is not None for line in lines] == [True] * 6, lines
    assert [line[13:18] for line in lines] == ["DEBUG", "INFO ", "WARN ", "ERROR", "CRIT ", "WARN "]


def test_traceback_lines_each_keep_the_priority_prefix() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, journald=True)
    try:
        raise ValueError("device vanished")
    except ValueError:
        logging.getLogger("pi_agent.audio").exception("capture failed")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "<3>audio: capture failed"
    assert lines[1] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: device vanished"
    assert all(line.startswith("<3>") for line in lines)


def test_level_applies_to_our_loggers_and_libraries_stay_quiet_below_info() -> None:
    stream = io.StringIO()
    setup_logging("debug", stream=stream, journald=True)
    logging.getLogger("pi_agent.session").debug("ours")
    logging.getLogger("websockets.client").debug("< TEXT '{\"audio_event\": ...}' [40000 bytes]")
    logging.getLogger("websockets.client").info("library info")
    assert stream.getvalue().splitlines() == ["<7>session: ours", "<6>websockets.client: library info"]

    stream = io.StringIO()
    setup_logging("warning", stream=stream, journald=True)
    logging.getLogger("pi_agent.session").info("hidden")
    logging.getLogger("pi_agent.session").warning("shown")
    assert stream.getvalue() == "<4>session: shown\n"


@pytest.mark.parametrize("level", ["verbose", "", "7"])
def test_unknown_level_is_a_config_error(level: str) -> None:
    with pytest.raises(ConfigError, match="log level"):
        setup_logging(level, stream=io.StringIO())


def test_calling_setup_twice_installs_one_handler() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, journald=True)
    setup_logging(stream=stream, journald=True)
    logging.getLogger("pi_agent").info("once")
    assert stream.getvalue() == "<6>pi_agent: once\n"
    assert [h.get_name() for h in logging.getLogger().handlers].count("pi-agent") == 1


def test_registered_secret_is_masked_in_message_args_and_exception_text() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, journald=True)
    register_secret(SECRET)
    log = logging.getLogger("pi_agent.session")
    log.info(f"key in the message {SECRET}")
    log.info("key in the args %s and %r", SECRET, {"xi-api-key": SECRET})
    try:
        raise PermissionError(f"refused key {SECRET}")
    except PermissionError:
        log.exception("connect failed")
    out = stream.getvalue()
    assert SECRET not in out
    assert "<6>session: key in the message ***" in out
    assert "<6>session: key in the args *** and {'xi-api-key': '***'}" in out
    assert "<3>PermissionError: refused key ***" in out


def test_secrets_given_to_setup_are_masked() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, journald=True, secrets=["agent-key-0123456789"])
    logging.getLogger("pi_agent").warning("using agent-key-0123456789 now")
    assert stream.getvalue() == "<4>pi_agent: using *** now\n"


@pytest.mark.parametrize("value", ["", "  ", "abc"])
def test_blank_or_tiny_secrets_mask_nothing(value: str) -> None:
    register_secret(value)
    assert redact("a plain abc sentence") == "a plain abc sentence"


SIGNED_URL = ("wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_123"
              "&conversation_signature=cs_9f8e7d6c5b4a")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SIGNED_URL, "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_123&conversation_signature=***"),
        ("https://h/x?token=tk_abc&agent_id=a", "https://h/x?token=***&agent_id=a"),
        ("GET /p?signature=s1g#frag", "GET /p?signature=***#frag"),
        ('{"signed_url": "wss://h/p?agent_id=a&conversation_signature=cs_1"}',
         '{"signed_url": "wss://h/p?agent_id=a&conversation_signature=***"}'),
        ('{"token": "eyJhbGciOi.abc"}', '{"token": "***"}'),
        ("> xi-api-key: sk_live_123\n> Host: api", "> xi-api-key: ***\n> Host: api"),
        ("XI-API-KEY=sk_live_123 more", "XI-API-KEY=*** more"),
        ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
        ("agent_id=agent_123 mode=vad", "agent_id=agent_123 mode=vad"),
    ],
)
def test_signed_url_tokens_and_key_headers_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_tokens_are_masked_in_args_and_exception_text() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, journald=False)
    log = logging.getLogger("pi_agent.session")
    log.info("opening %s", SIGNED_URL)
    try:
        raise ConnectionError(f"handshake with {SIGNED_URL} failed")
    except ConnectionError:
        log.warning("retrying", exc_info=True)
    out = stream.getvalue()
    assert "cs_9f8e7d6c5b4a" not in out
    assert out.count("conversation_signature=***") == 2
    assert "agent_id=agent_123" in out


def test_repeated_failures_are_rate_limited_with_a_count() -> None:
    stream = io.StringIO()
    clock = Clock()
    setup_logging(stream=stream, journald=True, clock=clock, rate_window=60.0)
    log = logging.getLogger("pi_agent.session")
    for attempt in range(5):  # same template, different arguments: the same failure
        log.warning("connect failed (attempt %d): %s", attempt, "timeout")
        clock.now += 10
    log.error("connect failed (attempt %d): %s", 99, "timeout")  # another level: its own key
    log.warning("other failure")  # another template: its own key
    for _ in range(3):
        log.info("info is never limited")
    clock.now = 1000.0 + 61  # the window since the first one shown has passed
    log.warning("connect failed (attempt %d): %s", 6, "timeout")
    log.warning("connect failed (attempt %d): %s", 7, "timeout")  # a new window: held back again
    assert stream.getvalue().splitlines() == [
        "<4>session: connect failed (attempt 0): timeout",
        "<3>session: connect failed (attempt 99): timeout",
        "<4>session: other failure",
        "<6>session: info is never limited",
        "<6>session: info is never limited",
        "<6>session: info is never limited",
        "<4>session: connect failed (attempt 6): timeout (repeated 4 times)",
    ]


def test_rate_limit_is_per_logger() -> None:
    stream = io.StringIO()
    setup_logging(stream=stream, journald=True, clock=Clock())
    for name in ("pi_agent.audio", "pi_agent.gpio", "pi_agent.audio"):
        logging.getLogger(name).error("device missing")
    assert stream.getvalue().splitlines() == ["<3>audio: device missing", "<3>gpio: device missing"]


def test_python_warnings_go_through_the_handler() -> None:
    import warnings

    stream = io.StringIO()
    setup_logging(stream=stream, journald=True)
    warnings.warn("old option", DeprecationWarning, stacklevel=1)
    assert stream.getvalue().startswith("<4>py.warnings: ")


NATIVE_SCRIPT = r"""
import ctypes, logging, sys, time
from pi_agent.service.logging import route_native_stderr, setup_logging

assert route_native_stderr()
assert not route_native_stderr()  # once per process
setup_logging("info", journald=True)
logging.getLogger("pi_agent.probe").info("python line")
asound = ctypes.CDLL("libasound.so.2")
pcm = ctypes.c_void_p()
for _ in range(3):  # ALSA itself prints "ALSA lib ... Unknown PCM ..." to fd 2 each time
    assert asound.snd_pcm_open(ctypes.byref(pcm), b"pi_agent_no_such_pcm", 0, 0) < 0
time.sleep(0.5)
print("the end", file=sys.stderr)
"""


@pytest.mark.slow
def test_what_c_libraries_print_to_stderr_becomes_rate_limited_warnings(tmp_path: Path) -> None:
    """A dying device makes ALSA print straight to fd 2: those lines reach journald with a
    warning priority and the rate limit, not as raw unprioritised lines."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "ALSA_CONFIG_PATH": "/usr/share/alsa/alsa.conf"})
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert "<6>probe: python line" in lines
    native = [line for line in lines if "pi_agent_no_such_pcm" in line]
    assert len(native) == 1, lines  # three identical failures: one line in the window
    assert native[0].startswith("<4>native: ALSA lib "), native
    assert lines[-1] == "the end"  # Python's own stderr still writes straight through
