"""The event API on the real daemon process: who may do what, bad commands, floods of
connections, client tools by opt-in, and the CLI commands that use it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect, unix_connect

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions

from .support_daemon import DaemonProcess, EventClient, daemon_running, raise_open_files
from .support_faults import make_wav

pytestmark = pytest.mark.faults


def env_for(agent: FakeAgent, tmp: Path, **extra: str) -> dict[str, str]:
    return {"PI_AGENT_AGENT_ID": "agent_api", "PI_AGENT_SERVER_URL": agent.http_url,
            "PI_AGENT_AUDIO__INPUT_WAV": str(make_wav(tmp / "silence.wav", 0.2)),
            "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp / "speaker.wav"),
            "PI_AGENT_SESSION__POLICY": "persistent", "PI_AGENT_CAPTURE__MODE": "vad", **extra}


async def connected(events: EventClient) -> None:
    if not (events.snapshot or {}).get("connected"):
        await events.wait_for(lambda e: e["type"] == "connection" and e["connected"], 15, "a conversation")


def cli(*args: str, env: dict[str, str], timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pi_agent.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


# --- who may do what ------------------------------------------------------------------------


async def test_a_web_page_of_another_origin_is_refused_and_the_tcp_view_takes_no_commands(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent, daemon_running(env_for(agent, tmp_path), tmp_path) as d:
        port = d.api_port
        for origin in ("http://evil.example", "http://127.0.0.1:1", "null"):
            with pytest.raises(websockets.InvalidStatus) as refused:
                await connect(f"ws://127.0.0.1:{port}/events", origin=origin, open_timeout=5)
            assert refused.value.response.status_code == 403, origin
        # DNS rebinding: a page of another site that resolved to this machine.
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Host": f"evil.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as rebound:
            urllib.request.urlopen(req, timeout=5)
        assert rebound.value.code == 403
        async with connect(f"ws://127.0.0.1:{port}/events", origin=f"http://127.0.0.1:{port}",
                           open_timeout=5) as view:
            snapshot = json.loads(await view.recv())
            assert snapshot["type"] == "snapshot" and "state" in snapshot
            for command in ({"type": "say", "text": "hello"}, {"type": "mute"}, {"type": "start_listening"}):
                await view.send(json.dumps(command))
                reply = json.loads(await view.recv())
                while reply.get("type") != "error":  # state events may come first
                    reply = json.loads(await view.recv())
                assert reply["source"] == "api" and "Unix socket" in reply["message"]
        async with EventClient(d.api_socket) as events:
            await connected(events)
            await asyncio.sleep(0.5)
            assert not events.snapshot["muted"] and events.snapshot["state"] != "muted"
        status, _ = d.http("/healthz")
        assert status == 200
    assert not agent.latest.received_of("user_message")  # nothing the view sent reached the agent


async def test_the_view_shows_states_but_never_what_was_said(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, transcript="my secret question")) as agent:
        env = env_for(agent, tmp_path, PI_AGENT_AUDIO__INPUT_WAV=str(make_wav(tmp_path / "q.wav", 1.0, "question")))
        async with (daemon_running(env, tmp_path) as d, EventClient(d.api_port) as view,
                    EventClient(d.api_socket) as full):
            await full.wait_for(lambda e: e["type"] == "agent_response", 20, "the answer")
            await full.wait_for(lambda e: e.get("previous") == "speaking", 20, "the reply played")
            await asyncio.sleep(0.3)
    kinds = {e["type"] for e in view.events}
    assert {"listening", "thinking", "speaking"} <= set(view.states()), view.states()
    assert not kinds & {"user_transcript", "agent_response", "client_tool_call"}, kinds
    assert "my secret question" not in json.dumps(view.events)
    assert any(e["type"] == "user_transcript" and e["text"] == "my secret question" for e in full.events)


async def test_the_socket_is_for_the_daemons_group_only(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        async with daemon_running(env_for(agent, tmp_path), tmp_path) as d:
            mode = stat.S_IMODE(os.stat(d.api_socket).st_mode)
            assert stat.S_ISSOCK(os.stat(d.api_socket).st_mode)
            assert mode == 0o660, oct(mode)
        assert not d.api_socket.exists()  # removed on the way out


async def test_another_daemon_on_the_same_socket_is_refused_with_one_line(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = env_for(agent, tmp_path)
        async with daemon_running(env, tmp_path) as first:
            second = DaemonProcess({**env, "PI_AGENT_API__SOCKET": str(first.api_socket)}, tmp_path).start()
            code = await asyncio.to_thread(second.wait, 20)
            log = second.log
            assert first.proc is not None and first.proc.poll() is None  # the first goes on
    assert code == 1, log
    assert "another pi-agent answers on" in log and "Traceback" not in log


# --- bad commands ----------------------------------------------------------------------------


BAD_COMMANDS: list[tuple[str | bytes, str]] = [
    ("[1, 2]", "not list"),
    ("42", "not int"),
    ('"stop"', "not str"),
    ("{" * 30_000 + "}" * 30_000, "JSON objects"),
    ("[" * 30_000 + "]" * 30_000, "JSON objects"),
    ("not json", "JSON objects"),
    (b"\x00\x01binary", "JSON objects"),
    ('{"no": "type"}', "unknown command"),
    ('{"type": 7}', "unknown command"),
    ('{"type": "say"}', "needs 'text'"),
    ('{"type": "say", "text": ""}', "non-empty"),
    ('{"type": "say", "text": 5}', "must be a str"),
    ('{"type": "say", "text": "hi", "loud": true}', "takes no field 'loud'"),
    ('{"type": "tool_result", "tool_call_id": "t1", "result": "x", "is_error": "false"}', "must be a bool"),
    ('{"type": "tool_result", "tool_call_id": "t1", "result": {"a": 1}}', "must be a str"),
    ('{"type": "tool_result", "tool_call_id": "t1", "result": "x"}', "no pending tool call"),
    ('{"type": "handle_tools", "tools": "weather"}', "must be a list"),
    ('{"type": "handle_tools", "tools": [1]}', "list of tool names"),
    ('{"type": "mute", "now": 1}', "takes no field"),
]


async def test_every_malformed_command_gets_an_error_reply_and_the_connection_stays(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent, daemon_running(env_for(agent, tmp_path), tmp_path) as d:
        async with unix_connect(str(d.api_socket), uri="ws://localhost/events", max_size=None) as ws:
            json.loads(await ws.recv())
            for message, expected in BAD_COMMANDS:
                await ws.send(message)
                while True:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if reply.get("source") == "api" or reply.get("type") == "ack":
                        break
                assert reply["type"] == "error", (message[:40], reply)
                assert expected in reply["message"], (message[:40], reply["message"])
            await ws.send(json.dumps({"type": "contextual_update", "text": "still here"}))
            while (reply := json.loads(await ws.recv())).get("type") != "ack":
                pass
        log = d.log
    assert "Traceback" not in log and "connection handler failed" not in log
    await_update = [r.message["text"] for r in agent.latest.received_of("contextual_update")]
    assert await_update == ["still here"]
    assert not agent.latest.received_of("user_message")


# --- client tools -------------------------------------------------------------------------------


async def test_client_tools_are_answered_by_the_client_that_handles_them_and_refused_at_once_otherwise(
        tmp_path: Path) -> None:
    async with (FakeAgent(FakeAgentOptions(port=0, tool_timeout=20)) as agent,
                daemon_running(env_for(agent, tmp_path), tmp_path) as d,
                EventClient(d.api_socket) as passive, EventClient(d.api_socket) as handler):
        await connected(passive)
        t0 = time.monotonic()
        await agent.tool_call("get_weather", {"city": "Lisbon"})
        await agent.wait_for(lambda: agent.latest.tool_results, 5, "the refusal")
        refused_after = time.monotonic() - t0
        [refusal] = agent.latest.tool_results
        await handler.send({"type": "handle_tools", "tools": ["get_weather"]})
        await handler.wait_for(lambda e: e.get("type") == "ack", 5)
        await agent.tool_call("get_weather", {"city": "Porto"})
        call = await handler.wait_for(lambda e: e["type"] == "client_tool_call"
                                      and e["parameters"] == {"city": "Porto"}, 5, "the call")
        await handler.send({"type": "tool_result", "tool_call_id": call["tool_call_id"], "result": "sunny"})
        await agent.wait_for(lambda: len(agent.latest.tool_results) == 2, 5, "the answer")
        answer = agent.latest.tool_results[1]
    assert refused_after < 1.0, refused_after  # not 10 s for an answer nobody gives
    assert refusal["is_error"] is True and "not available" in refusal["result"]
    assert answer == {**answer, "result": "sunny", "is_error": False}


# --- floods ---------------------------------------------------------------------------------------


IDLE_CONNECTIONS = 1100
SUBSCRIBERS = 60
# The flood's sockets, plus what the test process and the daemon (which inherits the
# limit) hold anyway: the interpreter, the fake agent, logs, the event API's own sockets.
FLOOD_FILES = IDLE_CONNECTIONS + SUBSCRIBERS + 400


@pytest.fixture
def enough_open_files() -> Iterator[None]:
    with raise_open_files(FLOOD_FILES):
        yield


@pytest.mark.slow
@pytest.mark.usefixtures("enough_open_files")
async def test_1100_connections_leave_the_conversation_and_healthz_working(tmp_path: Path) -> None:
    question = make_wav(tmp_path / "q.wav", 6.0, "question", 2.0)
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = env_for(agent, tmp_path, PI_AGENT_AUDIO__INPUT_WAV=str(question), PI_AGENT_API__MAX_CLIENTS="32")
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            await connected(events)
            idle: list[socket.socket] = []
            subscribers: list[Any] = []
            refused = 0
            try:
                for _ in range(IDLE_CONNECTIONS):  # raw TCP connections that never send a request
                    s = socket.socket()
                    s.setblocking(False)
                    s.connect_ex(("127.0.0.1", d.api_port))
                    idle.append(s)
                for _ in range(SUBSCRIBERS):  # more event subscribers than allowed
                    try:
                        subscribers.append(await unix_connect(str(d.api_socket), uri="ws://localhost/events",
                                                              open_timeout=5))
                    except websockets.InvalidStatus as e:
                        assert e.response.status_code == 503
                        refused += 1
                slowest = 0.0
                for _ in range(5):
                    t0 = time.monotonic()
                    status, _ = await asyncio.to_thread(d.http, "/healthz")
                    slowest = max(slowest, time.monotonic() - t0)
                    assert status == 200
                    await asyncio.sleep(0.3)
                transcript = await events.wait_for(lambda e: e["type"] == "user_transcript", 20, "the transcript")
                await events.wait_for(lambda e: e["type"] == "agent_response", 10, "the answer")
            finally:
                for s in idle:
                    s.close()
                for ws in subscribers:  # they read nothing, so a closing handshake may wait out its 10 s
                    ws.transport.abort()
            status, metrics = d.http("/metrics")
            log = d.log
    assert refused >= SUBSCRIBERS - 32 + 1 - 1, refused  # the test's EventClient holds one place
    assert slowest < 1.0, slowest
    assert transcript and agent.latest.user_audio_seconds > 3.0
    assert 'pi_agent_audio_device_events{event="capture_overflows"} 0.0' in metrics
    assert "Too many open files" not in log and "Traceback" not in log
    assert log.count("event API: refused") <= 2  # said, not shouted


# --- the CLI ----------------------------------------------------------------------------------------


async def test_status_and_say_use_the_socket_and_need_no_agent_id(tmp_path: Path) -> None:
    async with (FakeAgent(FakeAgentOptions(port=0, reply_text="Hello from the fake agent.")) as agent,
                daemon_running(env_for(agent, tmp_path), tmp_path) as d, EventClient(d.api_socket) as events):
        await connected(events)
        bare = {k: v for k, v in d.env.items() if k not in ("PI_AGENT_AGENT_ID", "PI_AGENT_SERVER_URL")}
        r = await asyncio.to_thread(cli, "status", env=bare)
        assert r.returncode == 0, r.stderr
        snapshot = json.loads(r.stdout)
        assert snapshot["connected"] and snapshot["api"] == str(d.api_socket)
        r = await asyncio.to_thread(cli, "say", "hello there", env=bare, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "Hello from the fake agent."
        # `status --follow | head -1`: the reader goes away; no error, no "cannot reach".
        follow = await asyncio.to_thread(
            subprocess.run, f"{sys.executable} -m pi_agent.cli status --follow | head -1", shell=True,
            env=bare, capture_output=True, text=True, timeout=30)
        assert json.loads(follow.stdout)["type"] == "snapshot"  # JSON lines: the snapshot first
        assert follow.returncode == 0 and "cannot reach" not in follow.stderr
        assert "Traceback" not in follow.stderr
    assert [r.message["text"] for r in agent.latest.received_of("user_message")] == ["hello there"]
    gone = cli("status", env=bare)
    assert gone.returncode == 1 and "cannot reach the daemon" in gone.stderr and "Traceback" not in gone.stderr


def test_diagnostics_need_only_the_settings_they_use(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    env.update({"GPIOZERO_PIN_FACTORY": "mock", "PI_AGENT_LEDS__CONNECTION_PIN": "5",
                "PI_AGENT_SESSION__POLICY": "bogus"})  # another command's mistake
    r = cli("test-leds", "--seconds", "0.01", env=env)
    assert r.returncode == 0, r.stderr
    assert "all LEDs off" in r.stdout
    env["PI_AGENT_LEDS__CONNECTION_PIN"] = "99"
    r = cli("test-leds", "--seconds", "0.01", env=env)
    assert r.returncode == 78 and r.stderr.count("\n") == 1 and "leds.connection_pin" in r.stderr


# --- configuration and signals ----------------------------------------------------------------------


@pytest.mark.parametrize(("content", "extra", "expected"), [
    (b'agent_id = "x"\n\xff\xfe = 1\n', {}, "is not UTF-8 text"),
    (b'agent_id = "x"\nserver_url = "http://h:99999"\n', {}, "server_url: has a port"),
    (b'agent_id = "x"\nserver_url = "http://h:abc"\n', {}, "server_url: has a port"),
    (b'agent_id = "x"\n[session]\nconnect_timeout = inf\n', {}, "finite number"),
    (b'agent_id = "x"\n[session]\nbackoff_max = nan\n', {}, "finite number"),
    (b'agent_id = "x"\n[capture]\nmode = "wake"\n', {}, "capture.mode"),
    (b'agent_id = "x"\n', {"credential": b"\xff\xfe"}, "api_key: credential"),
])
def test_a_bad_config_is_exit_78_with_one_line_and_no_traceback(tmp_path: Path, content: bytes,
                                                                 extra: dict[str, bytes], expected: str) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    if "credential" in extra:
        (tmp_path / "creds").mkdir()
        (tmp_path / "creds" / "api_key").write_bytes(extra["credential"])
        env["CREDENTIALS_DIRECTORY"] = str(tmp_path / "creds")
    r = cli("--config", str(path), "run", env=env)
    assert r.returncode == 78, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert "Traceback" not in r.stderr


async def test_sighup_reloads_a_valid_config_and_keeps_the_old_one_when_the_new_is_bad(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        config = tmp_path / "config.toml"
        config.write_text('[capture]\nmode = "vad"\n')
        env = {**env_for(agent, tmp_path), "PI_AGENT_CONFIG": str(config), "PI_AGENT_LOG__LEVEL": "info"}
        del env["PI_AGENT_CAPTURE__MODE"]
        async with daemon_running(env, tmp_path) as d:
            async with EventClient(d.api_socket) as events:
                await connected(events)
                assert events.snapshot["mode"] == "vad"
            config.write_text('[capture]\nmode = "sometimes"\n')
            d.signal(__import__("signal").SIGHUP)
            await asyncio.sleep(1.5)
            assert d.proc is not None and d.proc.poll() is None
            async with EventClient(d.api_socket) as events:
                assert events.snapshot["mode"] == "vad" and events.snapshot["connected"]  # the old one goes on
            config.write_text('[capture]\nmode = "always"\n')
            d.signal(__import__("signal").SIGHUP)
            deadline = time.monotonic() + 15
            mode = None
            while time.monotonic() < deadline and mode != "always":
                await asyncio.sleep(0.3)
                try:
                    async with EventClient(d.api_socket) as events:
                        mode = events.snapshot["mode"]
                except OSError:
                    continue
            assert mode == "always"
            code = d.stop()
            log = d.log
    assert code == 0, log
    assert "reload refused, the configuration in use stays: capture.mode" in log
    assert "reload: restarting with the new configuration" in log
    assert "Traceback" not in log
    assert len(agent.conversations) >= 2 and agent.conversations[0].close_code == 1000
