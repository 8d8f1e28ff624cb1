"""The metrics a fleet's alerts need (issue 24), scraped from the real daemon process after a
conversation: which device, its state, its audio devices, its turns and exchanges, when the
microphone last heard anything, and the process's own figures."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pi_agent import __version__
from pi_agent.decide.states import State
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions

from .support_daemon import EventClient, daemon_running
from .support_faults import make_wav

pytestmark = [pytest.mark.slow, pytest.mark.faults]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def env_for(agent: FakeAgent, tmp: Path, **extra: str) -> dict[str, str]:
    return {"PI_AGENT_AGENT_ID": "agent_fleet", "PI_AGENT_SERVER_URL": agent.http_url,
            "PI_AGENT_AUDIO__INPUT_WAV": str(make_wav(tmp / "silence.wav", 0.2)),
            "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp / "speaker.wav"),
            "PI_AGENT_SESSION__POLICY": "persistent", "PI_AGENT_CAPTURE__MODE": "vad", **extra}


def states(s: Samples) -> dict[str, float]:
    return {dict(labels)["state"]: v for (name, labels), v in s.items() if name == "pi_agent_state"}


async def test_after_a_conversation_every_fleet_metric_has_its_value(tmp_path: Path) -> None:
    question = make_wav(tmp_path / "q.wav", 1.0, "question")
    started = time.time()
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = env_for(agent, tmp_path, PI_AGENT_AUDIO__INPUT_WAV=str(question), PI_AGENT_DEVICE_NAME="kiosk-hall-2",
                      PI_AGENT_LOCATION="museum/hall 2")
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            await events.wait_for(lambda e: e["type"] == "user_transcript", 20, "the question")
            await events.wait_for(lambda e: e.get("previous") == "speaking" and e["state"] == "idle", 20,
                                  "the reply played out")
            status, text = d.http("/metrics")
            heard_by = time.time()
            time.sleep(1.0)  # digital silence since the question: the timestamp stays
            _, later = d.http("/metrics")
    assert status == 200
    m = samples(text)
    assert m[("pi_agent_info", (("device", "kiosk-hall-2"), ("location", "museum/hall 2"),
                                ("version", __version__)))] == 1.0
    assert states(m) == {s.value: 1.0 if s is State.IDLE else 0.0 for s in State}
    assert m[("pi_agent_device_up", (("device", "microphone"),))] == 1.0
    assert m[("pi_agent_device_up", (("device", "speaker"),))] == 1.0
    assert m[("pi_agent_turns_total", ())] == 1.0
    assert m[("pi_agent_exchanges_total", ())] == 1.0
    sound = m[("pi_agent_microphone_last_sound_timestamp_seconds", ())]
    assert started + 1.0 <= sound <= heard_by, (started, sound, heard_by)  # not the lead-in's zeros
    assert samples(later)[("pi_agent_microphone_last_sound_timestamp_seconds", ())] == sound
    assert started - 1.0 <= m[("process_start_time_seconds", ())] <= heard_by
    assert m[("process_open_fds", ())] > 0 and m[("process_resident_memory_bytes", ())] > 0
    # The metrics that were there before stay as they were.
    assert m[("pi_agent_connected", ())] == 1.0
    assert ("pi_agent_reconnects_total", ()) in m
    assert ("pi_agent_audio_device_events", (("event", "capture_overflows"),)) in m
    assert m[("pi_agent_response_latency_seconds_count", ())] == 1.0


async def test_a_missing_microphone_and_digital_silence_show_as_such(tmp_path: Path) -> None:
    """device_up is 0 for a microphone that cannot be opened (and the state is error); a
    microphone that only ever gave zero samples has no last-sound time (0); the device name
    defaults to the host name and the location to nothing; no turn, no exchange."""
    import socket

    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = env_for(agent, tmp_path, PI_AGENT_AUDIO__INPUT_WAV=str(tmp_path / "absent.wav"))
        async with daemon_running(env, tmp_path) as d, EventClient(d.api_socket) as events:
            if (events.snapshot or {}).get("state") != "error":
                await events.wait_state("error", 15)
            _, missing = d.http("/metrics")
        async with daemon_running(env_for(agent, tmp_path), tmp_path) as d, EventClient(d.api_socket) as events:
            if not (events.snapshot or {}).get("connected"):
                await events.wait_for(lambda e: e["type"] == "connection" and e["connected"], 15, "a conversation")
            time.sleep(0.5)
            _, silent = d.http("/metrics")
    m = samples(missing)
    assert m[("pi_agent_device_up", (("device", "microphone"),))] == 0.0
    assert m[("pi_agent_device_up", (("device", "speaker"),))] == 1.0
    assert states(m)["error"] == 1.0 and sum(states(m).values()) == 1.0
    s = samples(silent)
    assert s[("pi_agent_info", (("device", socket.gethostname()), ("location", ""), ("version", __version__)))] == 1
    assert s[("pi_agent_microphone_last_sound_timestamp_seconds", ())] == 0.0
    assert s[("pi_agent_device_up", (("device", "microphone"),))] == 1.0
    assert s[("pi_agent_turns_total", ())] == 0.0 and s[("pi_agent_exchanges_total", ())] == 0.0
