"""A CLI that fits a person's habits (issue 22): the common options before or after the
command, honoured or refused with a reason; a description for every command and flag; "did
you mean" for commands, flags and settings; an environment variable's mistake blamed on the
variable; ``status`` as a summary for a person; ``devices`` failing when it finds nothing.
Quick tests in process; the ``slow`` ones run the real console script."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pi_agent import cli
from pi_agent.config import load_section, load_settings
from pi_agent.config import loading
from pi_agent.config.sections import LedSettings
from pi_agent.errors import ConfigError, ConfigUnreadable
from pi_agent.service.client import summary

EXE = Path(sys.executable).parent / "pi-agent"
COMMANDS = ["run", "demo", "fake-agent", "status", "say", "volume", "devices", "check", "test-leds", "test-button",
            "test-speaker", "test-mic"]
ARGS = {"say": ["hi"], "volume": ["up"]}


@pytest.fixture(autouse=True)
def _no_settings_from_here(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PI_AGENT_") or name in ("CREDENTIALS_DIRECTORY", "ELEVENLABS_API_KEY"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(loading, "DEFAULT_CONFIG_PATH", Path("/nonexistent/pi-agent/config.toml"))


@pytest.mark.parametrize("command", COMMANDS)
def test_common_options_before_or_after_the_command(command: str) -> None:
    rest = ARGS.get(command, [])
    before = cli.parse(["--config", "a.toml", "--log-level", "warning", command, *rest])
    after = cli.parse([command, *rest, "--config", "a.toml", "--log-level", "warning"])
    for args in (before, after):
        assert (args.command, args.config, args.log_level) == (command, "a.toml", "warning")
    assert cli.parse([command, *rest, "-v"]).log_level == "debug"
    assert cli.parse(["-v", command, *rest, "--log-level", "error"]).log_level == "error"
    bare = cli.parse([command, *rest])
    assert (bare.config, bare.log_level, bare.verbose) == (None, None, False)


@pytest.mark.parametrize("command", ["demo", "fake-agent"])
def test_commands_without_settings_refuse_config_with_the_reason(command: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--config", "x.toml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--config is not used here" in err and "leave it out" in err


def test_every_command_and_flag_is_described() -> None:
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert sorted(commands.choices) == sorted(COMMANDS)
    listed = {c.dest: c.help for c in commands._choices_actions}
    for name, sub in commands.choices.items():
        assert listed[name] and len(listed[name]) <= 55, (name, listed[name])  # one line in the list
        assert sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.option_strings or action.dest)
    for action in parser._actions:
        assert action.help, action.option_strings


def test_did_you_mean_a_command_or_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.parse(["stauts"])
    assert e.value.code == 2 and "did you mean 'status'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse(["check", "--confg", "x.toml"])
    assert "did you mean --config" in capsys.readouterr().err


def test_an_unknown_variable_is_blamed_on_it_with_a_suggestion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_AGENT_AGENT_ID", "a")
    monkeypatch.setenv("PI_AGENT_SESSION__POLCY", "persistent")
    with pytest.raises(ConfigError) as e:
        load_settings()
    line = str(e.value)
    assert len(line.splitlines()) == 1
    assert "session.polcy is not a known setting" in line
    assert "PI_AGENT_SESSION__POLCY in the environment" in line
    assert "did you mean PI_AGENT_SESSION__POLICY?" in line and "config file" not in line


def test_a_bad_value_in_the_environment_is_blamed_on_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    toml = tmp_path / "config.toml"
    toml.write_text('agent_id = "a"\n[session]\npolicy = "persistent"\n')
    monkeypatch.setenv("PI_AGENT_SESSION__POLICY", "sometimes")
    with pytest.raises(ConfigError) as e:
        load_settings(toml)
    assert "fix PI_AGENT_SESSION__POLICY in the environment" in str(e.value)
    monkeypatch.delenv("PI_AGENT_SESSION__POLICY")
    toml.write_text('agent_id = "a"\n[session]\npolicy = "sometimes"\n')
    with pytest.raises(ConfigError) as e:
        load_settings(toml)
    assert f"[session] policy in {toml}" in str(e.value) and "in the environment" not in str(e.value)


def test_unknown_keys_in_the_file_get_a_suggestion(tmp_path: Path) -> None:
    toml = tmp_path / "config.toml"
    toml.write_text('agnt_id = "a"\n[sesion]\n[leds]\nconection_pin = 5\n')
    with pytest.raises(ConfigError) as e:
        load_settings(toml)
    text = str(e.value)
    assert "agnt_id is not a known setting; did you mean agent_id?" in text
    assert "sesion is not a known setting; did you mean session?" in text
    assert "leds.conection_pin is not a known setting; did you mean leds.connection_pin?" in text
    with pytest.raises(ConfigError, match=r"did you mean leds\.connection_pin"):
        load_section(toml, "leds", LedSettings)


@pytest.mark.parametrize(("variable", "suggestion"), [
    ("PI_AGENT_AGENTID", "PI_AGENT_AGENT_ID"), ("PI_AGENT_LEDZ__CONNECTION_PIN", "PI_AGENT_LEDS__CONNECTION_PIN")])
def test_unknown_variables_that_look_like_settings(variable: str, suggestion: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PI_AGENT_AGENT_ID", "a")
    monkeypatch.setenv(variable, "5")
    with pytest.raises(ConfigError, match=f"{variable} \\(in the environment\\) is not a known setting; "
                                          f"did you mean {suggestion}\\?"):
        load_settings()
    monkeypatch.delenv(variable)
    monkeypatch.setenv("PI_AGENT_SLOW_TESTS", "1")  # a variable of somebody else's: not ours to judge
    assert load_settings().agent_id == "a"


def test_an_unreadable_default_config_is_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """/etc/pi-agent is 0750 root:pi-agent: for a user outside the group even exists() fails."""
    default = Path("/etc/pi-agent-test-denied/config.toml")
    monkeypatch.setattr(loading, "DEFAULT_CONFIG_PATH", default)

    def denied(self: Path, *args: object, **kwargs: object) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", denied)
    monkeypatch.setattr(Path, "open", denied)
    assert loading.config_path(None, {}) == default
    with pytest.raises(ConfigUnreadable) as e:
        load_settings()
    assert len(str(e.value).splitlines()) == 1 and "permission denied" in str(e.value)


def test_status_summary_is_a_handful_of_lines() -> None:
    snap = {"type": "snapshot", "state": "listening", "connected": True, "conversation_id": "conv_1",
            "mode": "vad", "policy": "persistent", "muted": False, "queued": False, "problem": None,
            "counters": {"conversations": 3, "reconnects": 1, "audio_dropped": 0, "protocol_errors": 0,
                         "messages_in": 99, "capture_overflows": 0, "playback_underruns": 2},
            "leds": {}, "api": "/run/pi-agent/api.sock"}
    lines = summary(snap).splitlines()
    assert 4 <= len(lines) <= 8
    text = "\n".join(lines)
    for needle in ("state:", "listening", "connected:", "yes", "conversation:", "conv_1", "problem:", "none",
                   "conversations 3", "reconnects 1", "speaker underruns 2"):
        assert needle in text, needle
    assert "{" not in text


# --- the real console script ----------------------------------------------------------------------


def _run(*args: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    return subprocess.run([str(EXE), *args], env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60, **kw)  # type: ignore[call-overload]


@pytest.mark.slow
def test_config_after_the_command_is_honoured(tmp_path: Path) -> None:
    toml = tmp_path / "config.toml"
    toml.write_text('[leds]\nconection_pin = 5\n')
    r = _run("test-leds", "--config", str(toml), "--seconds", "0")
    assert r.returncode == 78, r.stderr
    assert r.stderr.strip() == (f"pi-agent: configuration error: leds.conection_pin is not a known setting; "
                                f"did you mean leds.connection_pin?: remove it (or check its spelling) in {toml}")


@pytest.mark.slow
def test_devices_fails_with_a_hint_when_there_is_none() -> None:
    # (An empty ALSA_CONFIG_PATH makes PortAudio abort: this runs where there is no card.)
    r = _run("devices", env={"PULSE_SERVER": "unix:/nonexistent"})
    if r.returncode == 0:
        pytest.skip("PortAudio finds an audio device on this machine")
    assert r.returncode == 69, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "no audio device found" in r.stderr
    assert "audio group" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_status_is_a_summary_on_a_terminal_and_json_when_asked(tmp_path: Path) -> None:
    """A stand-in event API on a Unix socket: one snapshot per connection."""
    sock = tmp_path / "api.sock"
    server = subprocess.Popen([sys.executable, "-c", _SNAPSHOT_SERVER, str(sock)])
    try:
        for _ in range(100):
            if sock.exists():
                break
            subprocess.run(["sleep", "0.05"], check=True)
        env = {"PI_AGENT_API__SOCKET": str(sock), "PI_AGENT_API__PORT": "0"}
        piped = _run("status", env=env)
        assert piped.returncode == 0 and json.loads(piped.stdout)["state"] == "listening", piped.stderr
        for extra, is_json in (([], False), (["--json"], True)):
            code, out = _on_a_terminal(["status", *extra], env)
            assert code == 0, out
            if is_json:
                assert json.loads(out)["conversation_id"] == "conv_tty"
            else:
                assert "state:" in out and "conv_tty" in out and len(out.strip().splitlines()) <= 8, out
    finally:
        server.terminate()
        server.wait(10)


def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    import pty
    main, secondary = pty.openpty()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    proc = subprocess.Popen([str(EXE), *args], env={**base, **env}, stdout=secondary, stderr=subprocess.PIPE)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    code = proc.wait(30)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return code, b"".join(chunks).decode().replace("\r\n", "\n") + err


_SNAPSHOT_SERVER = r'''
import asyncio, json, sys
from websockets.asyncio.server import unix_serve

SNAP = {"type": "snapshot", "state": "listening", "connected": True, "conversation_id": "conv_tty", "mode": "vad",
        "policy": "on_demand", "muted": False, "queued": False, "problem": None,
        "counters": {"conversations": 1, "reconnects": 0}}

async def handler(ws):
    await ws.send(json.dumps(SNAP))
    await ws.wait_closed()

async def main():
    async with unix_serve(handler, sys.argv[1]):
        await asyncio.Future()

asyncio.run(main())
'''
