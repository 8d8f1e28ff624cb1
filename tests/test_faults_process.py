"""Fault suite, the process: SIGTERM/SIGINT in every awkward moment, and bad configuration.

A signal must end ``pi-agent run`` with exit 0 within 2 s whatever the daemon is doing:
the agent speaking, the user speaking, backing off, stuck on a half-open connection, a
signed-URL request or a WebSocket handshake that never answers, a missing microphone.
A bad configuration ends it with 78 and one line per invalid setting, before any socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_daemon import free_port
from .support_faults import (CANARY, FaultRun, SignedUrlStub, TcpProxy, agent_signatures, fault_daemon, fault_env,
                            make_wav)

pytestmark = pytest.mark.faults


async def _signal_and_time(run: FaultRun, sig: int) -> float:
    t0 = time.monotonic()
    run.daemon.signal(sig)
    code = await asyncio.to_thread(run.daemon.wait, 10)
    elapsed = time.monotonic() - t0
    assert code == 0, run.log[-2000:]
    return elapsed


async def test_sigterm_while_the_agent_speaks(tmp_path: Path) -> None:
    mic = make_wav(tmp_path / "mic.wav", 0.2, "question")
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY, send_speed=1.0)) as agent:
        async with fault_daemon(fault_env(agent.http_url, tmp_path, mic), tmp_path,
                                secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_state("speaking", 20)
            elapsed = await _signal_and_time(run, signal.SIGTERM)
        await agent.wait_for(lambda: not agent.latest.is_open, 5)
    assert elapsed < 2.0, elapsed
    assert len(agent.conversations) == 1
    assert agent.latest.close_code == 1000 and agent.latest.closed_by == "client"
    assert "shutting down" in run.log


@pytest.mark.parametrize(("sig", "mode"), [(signal.SIGINT, "vad"), (signal.SIGTERM, "always")])
async def test_signal_while_the_user_speaks(sig: int, mode: str, tmp_path: Path) -> None:
    """Mid-sentence: the conversation is closed with 1000, and the speech still coming in
    must not open a new one on the way out."""
    mic = make_wav(tmp_path / "mic.wav", 0.2, "question")
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        env = fault_env(agent.http_url, tmp_path, mic, PI_AGENT_CAPTURE__MODE=mode)
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_state("listening", 15)
            await asyncio.sleep(1.0)
            elapsed = await _signal_and_time(run, sig)
        await agent.wait_for(lambda: not agent.latest.is_open, 5)
        await asyncio.sleep(0.2)
    assert elapsed < 2.0, elapsed
    assert len(agent.conversations) == 1, [(c.close_code, c.close_reason) for c in agent.conversations]
    assert agent.latest.user_audio_seconds > 0.3 and agent.latest.close_code == 1000


async def test_sigterm_while_backing_off(tmp_path: Path) -> None:
    env = fault_env(f"http://127.0.0.1:{free_port()}", tmp_path, PI_AGENT_SESSION__BACKOFF_INITIAL="5",
                    PI_AGENT_SESSION__BACKOFF_MAX="30")
    async with fault_daemon(env, tmp_path) as run:
        await run.wait_state("offline", 10)
        await asyncio.sleep(0.3)
        elapsed = await _signal_and_time(run, signal.SIGTERM)
    assert elapsed < 2.0, elapsed


async def test_sigint_on_a_half_open_connection(tmp_path: Path) -> None:
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY, ping_interval=30)) as agent,
                TcpProxy(agent.port) as proxy):
        env = fault_env(proxy.url, tmp_path, PI_AGENT_SESSION__DEAD_PEER_TIMEOUT="30")
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_connected()
            proxy.freeze()  # the close handshake can never complete
            await asyncio.sleep(0.3)
            elapsed = await _signal_and_time(run, signal.SIGINT)
    assert elapsed < 2.0, elapsed


async def test_sigterm_during_a_signed_url_request_that_hangs(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        agent.signed_url_fault(kind="timeout", seconds=8)
        env = fault_env(agent.http_url, tmp_path, PI_AGENT_SESSION__CONNECT_TIMEOUT="10")
        async with fault_daemon(env, tmp_path) as run:
            await asyncio.sleep(1.0)  # the request is in flight
            assert run.state() == "connecting"
            elapsed = await _signal_and_time(run, signal.SIGTERM)
    assert elapsed < 2.0, elapsed


async def test_sigterm_during_a_handshake_that_hangs(tmp_path: Path) -> None:
    black_hole = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        port = black_hole.getsockname()[1]
        async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent, SignedUrlStub(agent.http_url) as stub:
            stub.answer(200, {"signed_url": f"ws://127.0.0.1:{port}/v1/convai/conversation?agent_id=x"})
            env = fault_env(stub.url, tmp_path, PI_AGENT_SESSION__CONNECT_TIMEOUT="10")
            async with fault_daemon(env, tmp_path) as run:
                await asyncio.sleep(1.0)
                assert run.state() == "connecting"
                elapsed = await _signal_and_time(run, signal.SIGTERM)
    finally:
        black_hole.close()
    assert elapsed < 2.0, elapsed


async def test_sigterm_while_the_microphone_is_missing(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        env = fault_env(agent.http_url, tmp_path, tmp_path / "unplugged.wav")
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_state("error", 10)
            elapsed = await _signal_and_time(run, signal.SIGTERM)
    assert elapsed < 2.0, elapsed


# --------------------------------------------------------------------------- configuration

# (environment, the setting named in the one line it gets)
BAD_SETTINGS: list[tuple[dict[str, str], str]] = [
    ({"PI_AGENT_SESSION__BACKOFF_INITIAL": "0"}, "session.backoff_initial"),
    ({"PI_AGENT_SESSION__DEAD_PEER_TIMEOUT": "-1"}, "session.dead_peer_timeout"),
    ({"PI_AGENT_SESSION__CONNECT_TIMEOUT": "soon"}, "session.connect_timeout"),
    ({"PI_AGENT_SESSION__PREBUFFER": "-2"}, "session.prebuffer"),
    ({"PI_AGENT_SESSION__IDLE_TIMEOUT": "0"}, "session.idle_timeout"),
    ({"PI_AGENT_SESSION__DYNAMIC_VARIABLES": "not json"}, "session.dynamic_variables"),
    ({"PI_AGENT_CAPTURE__PREROLL": "9"}, "capture.preroll"),
    ({"PI_AGENT_CAPTURE__HANGOVER": "0"}, "capture.hangover"),
    ({"PI_AGENT_AUDIO__PERIOD_MS": "1"}, "audio.period_ms"),
    ({"PI_AGENT_AUDIO__OUTPUT_RATE": "100"}, "audio.output_rate"),
    ({"PI_AGENT_AUDIO__EARCONS": '["beep"]'}, "audio.earcons"),
    ({"PI_AGENT_AUDIO__INPUT_DEVICE": ""}, "audio.input_device"),
    ({"PI_AGENT_API__PORT": "70000"}, "api.port"),
    ({"PI_AGENT_LEDS__CONNECTION_PIN": "99"}, "leds.connection_pin"),
    ({"PI_AGENT_LEDS__RGB_PINS": "[1, 2]"}, "leds.rgb_pins"),
    ({"PI_AGENT_BUTTON__HOLD_TIME": "-1"}, "button.hold_time"),
    ({"PI_AGENT_LOG__LEVEL": "loud"}, "log.level"),
    ({"PI_AGENT_SERVER_URL": "wss://api.elevenlabs.io"}, "server_url"),
    ({"PI_AGENT_API_KEY": f"{CANARY} {CANARY}"}, "api_key"),  # the value must not be shown
]


async def test_a_pasted_key_with_a_trailing_newline_still_works(tmp_path: Path) -> None:
    """A key copied with its line break (a TOML triple-quoted string, an editor) is trimmed,
    not a crash in the middle of the HTTP request."""
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        env = fault_env(agent.http_url, tmp_path, PI_AGENT_API_KEY=f" {CANARY}\n")
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_connected(10)


def _run_cli(env: dict[str, str], *args: str, port: int) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    full = {**base, "PI_AGENT_AGENT_ID": "agent_faults", "PI_AGENT_API_KEY": CANARY,
            "PI_AGENT_API__PORT": str(port), **env}
    return subprocess.run([sys.executable, "-m", "pi_agent.cli", *args, "run"], env=full, capture_output=True,
                          text=True, timeout=30)


def _check_78(r: subprocess.CompletedProcess[str], names: list[str]) -> None:
    assert r.returncode == 78, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(names), lines  # one line per bad setting, nothing else
    for name in names:
        matching = [line for line in lines if line.startswith(f"pi-agent: configuration error: {name}")]
        assert len(matching) == 1, (name, lines)
        assert "fix PI_AGENT_" in matching[0] or "remove it" in matching[0] or "set PI_AGENT_" in matching[0], matching
    assert "Traceback" not in r.stderr and CANARY not in r.stderr + r.stdout and not r.stdout


@pytest.mark.parametrize(("env", "name"), BAD_SETTINGS, ids=[n for _, n in BAD_SETTINGS])
def test_each_bad_setting_exits_78_with_one_line_naming_it(env: dict[str, str], name: str) -> None:
    port = free_port()
    r = _run_cli(env, port=port)
    _check_78(r, [name])


def test_every_bad_setting_at_once_is_one_line_each_and_nothing_is_opened(tmp_path: Path) -> None:
    """All mistakes in one go (environment and TOML): all reported, before any socket or file."""
    toml = tmp_path / "config.toml"
    toml.write_text('[session]\npolicy = "sometimes"\n[capture]\nmode = "clap"\nvad_aggressiveness = 9\n'
                    '[audio]\necho = "cancel"\n[leds]\nactive_high = "maybe"\n[button]\npull_up = 3\n')
    env: dict[str, str] = {"PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp_path / "must-not-exist.wav")}
    names = ["session.policy", "capture.mode", "capture.vad_aggressiveness", "audio.echo",
             "leds.active_high", "button.pull_up"]
    for e, n in BAD_SETTINGS:
        env.update(e)
        names.append(n)
    env["PI_AGENT_AUDIO__EARCONS"] = "listening,done"  # not JSON either, and in another section
    port = free_port()
    with socket.socket() as probe:
        r = _run_cli(env, "--config", str(toml), port=port)
        _check_78(r, names)
        probe.bind(("127.0.0.1", port))  # the event API port was never taken
    assert not (tmp_path / "must-not-exist.wav").exists()
