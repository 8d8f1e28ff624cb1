"""The real daemon process against the fake agent: a whole exchange, the API, signals, secrets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_daemon import QUESTION_WAV, DaemonProcess, EventClient, daemon_running

CANARY = "sk_canary_daemon_9f8e7d6c5b4a"


def base_env(agent: FakeAgent, tmp: Path, **extra: str) -> dict[str, str]:
    return {"PI_AGENT_AGENT_ID": "agent_e2e", "PI_AGENT_SERVER_URL": agent.http_url,
            "PI_AGENT_AUDIO__INPUT_WAV": str(QUESTION_WAV),
            "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp / "speaker.wav"),
            "PI_AGENT_SESSION__POLICY": "on_demand", "PI_AGENT_CAPTURE__MODE": "vad", **extra}


@pytest.mark.slow
async def test_spoken_question_gets_a_spoken_answer(tmp_path: Path) -> None:
    opts = FakeAgentOptions(port=0, api_key=CANARY, transcript="What is the weather like?",
                            output_format="pcm_24000")
    async with FakeAgent(opts) as agent:
        env = base_env(agent, tmp_path, PI_AGENT_API_KEY=CANARY, PI_AGENT_AUDIO__OUTPUT_RATE="48000")
        async with daemon_running(env, tmp_path) as d:
            async with EventClient(d.api_socket) as events:
                assert events.snapshot["type"] == "snapshot"
                assert {"state", "connected", "conversation_id", "mode", "leds", "counters"} <= set(events.snapshot)
                await events.wait_for(lambda e: e["type"] == "user_transcript", 20, "user transcript")
                await events.wait_for(lambda e: e["type"] == "agent_response", 10, "agent response")
                await events.wait_state("speaking", 10)
                await events.wait_for(lambda e: e["type"] == "state" and e["previous"] == "speaking", 15)
                states = events.states()
                status, body = d.http("/healthz")
                assert status == 200 and json.loads(body)["status"] == "ok"
                status, metrics = d.http("/metrics")
                assert status == 200 and "pi_agent_conversations_total 1.0" in metrics
            code = d.stop()
        log = d.log
    assert code == 0, log
    for state in ("listening", "thinking", "speaking"):
        assert state in states, states
    assert states.index("listening") < states.index("thinking") < states.index("speaking")
    record = agent.latest
    assert record.user_audio_seconds >= 3.0  # the whole question, onset included
    assert record.close_code == 1000 and record.closed_by == "client"
    with wave.open(str(tmp_path / "speaker.wav"), "rb") as w:
        assert w.getframerate() == 48000
        played = w.getnframes() / 48000
    assert played >= 4.0, played  # the 4.7 s reply, resampled from 24 kHz
    assert CANARY not in log and "conversation_signature=" not in log.replace("conversation_signature=***", "")
    assert "state idle -> connecting" in log and "agent: It is sunny" in log


async def test_sigterm_mid_speech_exits_0_within_2_s_and_closes_with_1000(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = base_env(agent, tmp_path, PI_AGENT_SESSION__POLICY="persistent")
        async with daemon_running(env, tmp_path) as d:
            await agent.wait_for(lambda: agent.latest is not None and agent.latest.user_audio_seconds > 0.5, 15)
            t0 = time.monotonic()
            d.signal(signal.SIGTERM)
            code = d.wait(5)
            elapsed = time.monotonic() - t0
        await agent.wait_for(lambda: agent.latest.closed_at is not None, 5)
    assert code == 0, d.log
    assert elapsed < 2.0, elapsed
    assert agent.latest.close_code == 1000


async def test_sigint_exits_0(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent, daemon_running(base_env(agent, tmp_path), tmp_path) as d:
        await asyncio.sleep(0.5)
        d.signal(signal.SIGINT)
        assert d.wait(5) == 0, d.log


async def test_bad_api_key_goes_to_error_is_not_hammered_and_never_logged(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key="the-real-key")) as agent:
        env = base_env(agent, tmp_path, PI_AGENT_API_KEY=CANARY, PI_AGENT_SESSION__POLICY="persistent",
                       PI_AGENT_SESSION__BACKOFF_MAX="3")
        async with daemon_running(env, tmp_path) as d:
            async with EventClient(d.api_socket) as events:
                await events.wait_state("error", 10)
                status, body = d.http("/healthz")
                assert status == 503 and "401" in json.loads(body)["reason"]
                await asyncio.sleep(4)  # one more attempt at the cap, no more
            d.stop()
            log = d.log
            messages = json.dumps(events.events)
    attempts = log.count("-> connecting")
    assert 2 <= attempts <= 3, log
    assert log.count("HTTP 401") == 1, log  # the same failure is logged once
    assert CANARY not in log and CANARY not in messages


async def test_sd_notify_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    got: list[str] = []

    async def collect(until: float) -> None:
        while time.monotonic() < until:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.2)
                got.extend(data.decode().splitlines())
            except TimeoutError:
                pass

    try:
        async with FakeAgent(FakeAgentOptions(port=0)) as agent:
            env = base_env(agent, tmp_path, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="400000")
            d = DaemonProcess(env, tmp_path).start()
            await collect(time.monotonic() + 3)
            d.signal(signal.SIGTERM)
            code = d.wait(5)
            await collect(time.monotonic() + 0.3)
    finally:
        sock.close()
    assert code == 0, d.log
    assert "READY=1" in got, got
    assert got.count("WATCHDOG=1") >= 5, got  # every 200 ms for ~2.5 s
    assert any(line.startswith("STATUS=state: ") for line in got)
    assert "STOPPING=1" in got
    assert got.index("READY=1") < got.index("STOPPING=1")


def _own_runtime_dir(tmp_path: Path) -> str:
    """An XDG_RUNTIME_DIR of the test's own: the event API's default socket
    (``$XDG_RUNTIME_DIR/pi-agent/api.sock``) is then no other test's (tests run in
    parallel) nor a daemon's the user runs."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    return str(run)


def test_demo_runs_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "reply.wav"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_") and k != "VIRTUAL_ENV"}
    env["XDG_RUNTIME_DIR"] = _own_runtime_dir(tmp_path)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pi_agent.cli", "demo", "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert "user: What is the weather like in Lisbon today?" in r.stderr
    assert "agent: It is sunny in Lisbon" in r.stderr
    assert "state speaking -> idle" in r.stderr
    assert str(out) in r.stdout and out.exists()
    assert elapsed < 30, elapsed
    assert "PI_AGENT_AGENT_ID=dev pi-agent run" in r.stdout  # the README's recipe
    assert "bin/activate" in r.stdout  # pi-agent is on no PATH yet: say how to get it there


def test_demo_says_at_once_when_it_cannot_write_the_reply(tmp_path: Path) -> None:
    """A reply file it may not write (left by an earlier sudo run, say): one line naming the
    file and --out, before anything runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pi_agent.cli", "demo", "--out", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 73, r.stdout + r.stderr
    assert time.monotonic() - t0 < 10
    assert f"cannot write the reply to {tmp_path}" in r.stderr and "--out PATH" in r.stderr
    assert "Traceback" not in r.stderr


async def _say(agent: FakeAgent, tmp_path: Path, text: str, **extra: str | None) -> tuple[int | None, str, str]:
    """``pi-agent say TEXT`` against ``agent`` (speaker: a WAV file, unless ``extra`` says
    otherwise; None unsets a variable); exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    env.update({"PI_AGENT_AGENT_ID": "agent_say", "PI_AGENT_SERVER_URL": agent.http_url,
                "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp_path / "say.wav"), "XDG_RUNTIME_DIR": _own_runtime_dir(tmp_path)})
    env.update({k: v for k, v in extra.items() if v is not None})
    env = {k: v for k, v in env.items() if extra.get(k, "") is not None}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pi_agent.cli", "say", text, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    return proc.returncode, out.decode(), err.decode()


async def test_say_sends_a_user_message_and_prints_the_reply(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, reply_text="Hello from the fake agent.")) as agent:
        code, out, err = await _say(agent, tmp_path, "hello there")
    assert code == 0, err
    assert out.strip() == "Hello from the fake agent."
    assert [r.message["text"] for r in agent.latest.received_of("user_message")] == ["hello there"]
    assert (tmp_path / "say.wav").exists()


async def test_say_waits_for_the_agents_greeting_and_prints_only_the_reply(tmp_path: Path) -> None:
    """Most agents speak a first message; `say` lets it play, then asks, and prints the answer."""
    opts = FakeAgentOptions(port=0, reply_text="Hello from the fake agent.", first_message=True,
                            first_message_text="Hi, I am the greeting.")
    async with FakeAgent(opts) as agent:
        code, out, err = await _say(agent, tmp_path, "hello there")
    assert code == 0, err
    assert out.strip() == "Hello from the fake agent."
    record = agent.latest
    assert [t.cause for t in record.turns] == ["first_message", "text"]
    assert not record.turns[0].interrupted  # the question waited for the greeting to end
    assert [r.message["text"] for r in record.received_of("user_message")] == ["hello there"]


async def test_say_without_a_speaker_prints_the_reply_at_once(tmp_path: Path) -> None:
    """No sound card: the reply is printed as soon as it arrives, exit 0, one clear line."""
    async with FakeAgent(FakeAgentOptions(port=0, reply_text="Hello from the fake agent.")) as agent:
        t0 = time.monotonic()
        code, out, err = await _say(agent, tmp_path, "hello there", PI_AGENT_AUDIO__OUTPUT_WAV=None,
                                    PI_AGENT_AUDIO__OUTPUT_DEVICE="no-such-speaker")
        elapsed = time.monotonic() - t0
    assert code == 0, err
    assert out.strip() == "Hello from the fake agent."
    assert elapsed < 10, elapsed
    assert "no speaker" in err and "the reply is printed, not played" in err
    assert "reopens it" not in err and "ERROR" not in err and "Traceback" not in err


async def test_status_prints_the_snapshot_and_follows(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent, daemon_running(base_env(agent, tmp_path), tmp_path) as d:
        env = {**d.env}
        r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "pi_agent.cli", "status"],
                                    env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        assert snap["type"] == "snapshot" and snap["mode"] == "vad"
    r = subprocess.run([sys.executable, "-m", "pi_agent.cli", "status"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "cannot reach the daemon" in r.stderr and "Traceback" not in r.stderr


def _two_questions(tmp: Path, gap: float) -> Path:
    """question.wav, ``gap`` seconds of silence, question.wav again (talking over the reply)."""
    with wave.open(str(QUESTION_WAV), "rb") as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    path = tmp / "two.wav"
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(frames + bytes(int(gap * params.framerate) * 2) + frames)
    return path


async def test_voice_barge_in_full_duplex_flushes_the_speaker(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, send_speed=1.5)) as agent:
        env = base_env(agent, tmp_path, PI_AGENT_AUDIO__ECHO="full_duplex",
                       PI_AGENT_AUDIO__INPUT_WAV=str(_two_questions(tmp_path, 1.0)))
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            await events.wait_state("speaking", 20)
            await events.wait_for(lambda e: e["type"] == "interruption", 15, "interruption")
            await events.wait_for(lambda e: e["type"] == "state" and e["previous"] == "speaking"
                                  and e["state"] == "listening", 5, "speaking -> listening")
    turn = agent.latest.turns[0]
    assert turn.interrupted
    assert agent.latest.interruptions == [turn.event_id]


async def test_event_api_commands(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = base_env(agent, tmp_path, PI_AGENT_SESSION__POLICY="persistent",
                       PI_AGENT_AUDIO__INPUT_WAV=str(tmp_path / "silence.wav"))
        with wave.open(env["PI_AGENT_AUDIO__INPUT_WAV"], "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(bytes(3200))
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            if not events.snapshot["connected"]:
                await events.wait_for(lambda e: e["type"] == "connection" and e["connected"], 10)
            await events.send({"type": "mute"})
            await events.wait_state("muted")
            status, _body = d.http("/healthz")
            assert status == 200
            await events.send({"type": "unmute"})
            await events.wait_state("idle")
            await events.send({"type": "contextual_update", "text": "the lights are on"})
            await events.send({"type": "say", "text": "hello"})
            await events.wait_state("speaking", 10)
            await events.send({"type": "stop"})
            await events.wait_for(lambda e: e["type"] == "state" and e["previous"] == "speaking"
                                  and e["state"] == "idle", 5)
            await events.send({"type": "dance"})
            err = await events.wait_for(lambda e: e["type"] == "error" and e.get("source") == "api", 5)
            assert "unknown command" in err["message"]
            await events.send({"type": "say"})
            await events.wait_for(lambda e: e["type"] == "error" and "text" in e.get("message", ""), 5)
            acks = [e["command"] for e in events.events if e["type"] == "ack"]
            assert acks == ["mute", "unmute", "contextual_update", "say", "stop"]
        rec = agent.latest
        assert [r.message["text"] for r in rec.received_of("contextual_update")] == ["the lights are on"]
        assert [r.message["text"] for r in rec.received_of("user_message")] == ["hello"]


async def test_journald_priorities_and_no_key_across_startup_auth_failure_and_shutdown(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key="the-real-key")) as agent:
        env = base_env(agent, tmp_path, PI_AGENT_API_KEY=CANARY, PI_AGENT_SESSION__POLICY="persistent",
                       PI_AGENT_LOG__LEVEL="debug")
        d = DaemonProcess(env, tmp_path)
        d.log_path.touch()
        st = d.log_path.stat()
        d.env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        d.start()
        await d.wait_api()
        await asyncio.sleep(1.5)
        assert d.stop() == 0
    lines = [line for line in d.log.splitlines() if line.strip()]
    assert lines and all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines[:5]
    assert any(line.startswith("<3>") and "401" in line for line in lines)
    assert any(line.startswith("<6>") and "state starting -> idle" in line for line in lines)
    assert any(line.startswith("<7>") for line in lines)
    assert CANARY not in d.log
