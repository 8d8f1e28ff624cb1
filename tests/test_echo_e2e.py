"""Full duplex on a plain speaker (issue 13): the daemon on a virtual card whose microphone hears its speaker.

``vespk`` plays into ``vemic`` through PulseAudio's loopback with a device-like latency
and an attenuation (:meth:`VirtualAudio.echo_room`). The fake agent speaks first (a long
espeak-ng reply); the daemon runs ``audio.echo = "aec"``, ``vad`` capture, a persistent
conversation, so everything the microphone hears, cleaned, reaches the fake agent, which
records it and interrupts its own reply when it hears the user (its gate: -40 dBFS).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pi_agent.audio.echo import unavailable
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_audio import EchoRoom, VirtualAudio
from .test_audio_e2e import MIC_RATE, audio_daemon, daemon_env, locate, report, samples_between, write_wav
from .test_wake_word import speak

pytestmark = [pytest.mark.audio, pytest.mark.slow,
              pytest.mark.skipif(unavailable() is not None, reason=f"{unavailable()}")]

REPLY = ("Our opening hours are from nine in the morning until six in the evening, every day except Monday. "
         "Tickets can be bought at the entrance or online, and children under twelve go in for free. ") * 2
USER = "Wait, how much is a ticket for an adult?"
CONVERGE = 1.0  # s the canceller may take to find the echo at the start of the reply


def power_db(x: np.ndarray) -> float:
    return 10 * float(np.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2) + 1e-9) - 2 * np.log10(32768))


def aec_env(va: VirtualAudio, agent: FakeAgent, **settings: str) -> dict[str, str]:
    return daemon_env(va, agent, PI_AGENT_AUDIO__INPUT_DEVICE=EchoRoom.MIC,
                      PI_AGENT_AUDIO__OUTPUT_DEVICE=EchoRoom.SPEAKER, PI_AGENT_AUDIO__ECHO="aec",
                      PI_AGENT_AUDIO__EARCONS="[]", **settings)


def reply_agent(tmp: Path) -> FakeAgent:
    reply = write_wav(tmp / "reply.wav", speak(REPLY), MIC_RATE)
    return FakeAgent(FakeAgentOptions(port=0, first_message=True, reply_wav=str(reply), gate_end_silence_ms=700))


@pytest.mark.alone  # the echo through the canceller for 20 s: in one full run of the suite at 532522a the
# echo leaked (12.9 dB) and the fake agent, hearing it, cut the reply at 11 s; 6 runs beside two busy
# loops gave 51-57 dB. The daemon logs at debug, so that a failure shows the echo reference's moves.
async def test_the_agent_does_not_hear_itself(virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """The reply plays, the user is silent: what reaches the agent is >= 20 dB below the echo
    at the microphone, and no user turn starts (the reply is not interrupted)."""
    with virtual_audio.echo_room(latency_ms=60, volume=0.5) as room:
        mic = room.record_mic()
        async with (reply_agent(tmp_path) as agent,
                    audio_daemon(aec_env(virtual_audio, agent, PI_AGENT_LOG__LEVEL="debug"), tmp_path) as (d, events)):
            spoke = await events.wait_state("speaking", 20)
            began = events.received_at[next(n for n, e in enumerate(events.events) if e is spoke)]
            done = await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking", 40,
                                         "the end of the reply")
            ended = events.received_at[next(n for n, e in enumerate(events.events) if e is done)]
            states = events.states()
            status, metrics = await asyncio.to_thread(d.http, "/metrics")
        heard = mic.stop()[:, 0]
    record = agent.conversations[0]
    sent = samples_between(record, began + CONVERGE, ended - 0.3)
    loud = heard.astype(np.float64)
    frames = loud[: len(loud) // 320 * 320].reshape(-1, 320)
    echo_frames = frames[np.sqrt(np.mean(frames**2, axis=1)) > 32768 * 10 ** (-50 / 20)]  # where the echo is
    echo_db, sent_db = power_db(echo_frames), power_db(sent)
    report("aec_echo_only", echo_at_mic_dbfs=round(echo_db, 1), sent_to_agent_dbfs=round(sent_db, 1),
           attenuation_db=round(echo_db - sent_db, 1), reply_s=round(ended - began, 1))
    assert ended - began > 8, f"the reply did not play to its end: {states}, {record.interruptions}\n{d.log}"
    assert len(echo_frames) > 200, "the microphone did not hear the speaker: no echo path"
    assert echo_db - sent_db >= 20, (echo_db, sent_db, d.log)
    assert "listening" not in states, (states, d.log)  # no user turn
    assert record.interruptions == []
    assert status == 200 and "pi_agent_echo_attenuation_db" in metrics


@pytest.mark.alone  # a voice heard through the canceller while a reply plays: no neighbour's load
async def test_the_user_interrupts_the_reply_by_voice(virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """The user talks over the reply: the agent hears the user, not itself (correlation >= 0.6
    with the clean words), interrupts, and the speaker is flushed."""
    words = speak(USER, "en-gb-x-rp")
    with virtual_audio.echo_room(latency_ms=60, volume=0.5) as room:
        async with (reply_agent(tmp_path) as agent,
                    audio_daemon(aec_env(virtual_audio, agent), tmp_path) as (_d, events)):
            await events.wait_state("speaking", 20)
            await asyncio.sleep(3.0)  # well into the reply
            talk_at = time.monotonic()
            user = room.play_into_mic(words)
            stop = await events.wait_for(lambda e: e.get("type") == "interruption", 10, "the interruption")
            interrupted_at = events.received_at[next(n for n, e in enumerate(events.events) if e is stop)]
            await asyncio.to_thread(user.wait, 10)
            await asyncio.sleep(1.0)
            states = events.states()
    record = agent.conversations[0]
    got = samples_between(record, talk_at - 0.5, talk_at + len(words) / MIC_RATE + 1.0)
    _, score = locate(got, words)
    report("aec_barge_in", interrupted_after_s=round(interrupted_at - talk_at, 3), correlation=round(score, 3))
    assert record.interruptions, "the agent did not hear the user over its reply"
    assert interrupted_at - talk_at < 1.5
    assert score >= 0.6, score
    assert "speaking" in states and states[states.index("speaking") + 1] == "listening", states


def run_test_echo(va: VirtualAudio, mic: str, speaker: str) -> subprocess.CompletedProcess[str]:
    env = {**va.server.env, "ALSA_CONFIG_PATH": str(va.alsa_conf), "PI_AGENT_AUDIO__INPUT_DEVICE": mic,
           "PI_AGENT_AUDIO__OUTPUT_DEVICE": speaker, "PI_AGENT_AUDIO__OUTPUT_RATE": "48000"}
    return subprocess.run([sys.executable, "-m", "pi_agent.cli", "test-mic", "--echo"], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("latency_ms", "volume", "works"), [(60, 0.5, True), (700, 0.5, False), (120, 2.0, True)])
def test_test_mic_echo_says_whether_aec_will_work(virtual_audio: VirtualAudio, latency_ms: int, volume: float,
                                                  works: bool) -> None:
    """A verdict per figure: the delay, the attenuation, and double talk (a stand-in voice at -26 dBFS
    run through the canceller with the recording, the echo lowered by ``audio.duck_db`` once the
    daemon would have heard the voice). The loud echo (x2.0, 11 dB above the voice) is cancelled and
    the voice kept only because of that duck: 23-24 % of its energy at a correlation of 0.40 without
    it, 69-72 % at 0.71 with it (the matrix's x2.0 cells: 12 % / 0.46 against 57-59 % / 0.78)."""
    with virtual_audio.echo_room(latency_ms=latency_ms, volume=volume):
        r = run_test_echo(virtual_audio, EchoRoom.MIC, EchoRoom.SPEAKER)
    print(r.stdout)
    delay = re.search(r"echo delay (-?\d+) ms", r.stdout)
    assert delay, r.stdout + r.stderr
    assert abs(int(delay.group(1)) - latency_ms) < 60  # the loopback's latency, give or take the devices'
    talk = re.search(r"\[(....)\] double talk: a voice at -26 dBFS keeps (\d+)% of its energy, correlation ([\d.]+)",
                     r.stdout)
    assert talk, r.stdout
    if works:
        assert r.returncode == 0 and "aec will work" in r.stdout, r.stdout
        m = re.search(r"with cancellation: -?\d+ dBFS, (\d+) dB below the echo", r.stdout)
        assert m and int(m.group(1)) >= 25, r.stdout
        assert "[ ok ] delay" in r.stdout and "[ ok ] attenuation" in r.stdout, r.stdout
    else:
        assert r.returncode == 1 and "aec will not work" in r.stdout, r.stdout
        assert "[FAIL] delay" in r.stdout, r.stdout
    if works:
        assert "the reply lowered by 20 dB once it is heard" in r.stdout, r.stdout
        assert int(talk.group(2)) >= 50, r.stdout  # the correlation, 0.71-0.74 here, is reported


def test_test_mic_echo_on_a_headset_says_no_cancellation_is_needed(virtual_audio: VirtualAudio) -> None:
    r = run_test_echo(virtual_audio, "vmic", "vspk")  # this microphone never hears this speaker
    assert r.returncode == 0 and "does not hear the speaker" in r.stdout, r.stdout + r.stderr


@pytest.mark.alone  # a voice heard through the canceller while a reply plays: no neighbour's load
async def test_the_wake_word_stops_the_reply_on_a_plain_speaker(virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """wake_word + aec: the reply itself never wakes the device; "okay nabu" said once over it
    (heard through the echo) stops it. The reply is lowered while the voice is heard
    (``audio.duck_db``): without that, the canceller took so much of the word with the echo
    that it was missed in 5 of 14 runs on this rig (the model's score 0.72-0.98 against its
    cutoff of 0.85)."""
    with virtual_audio.echo_room(latency_ms=60, volume=0.5) as room:
        async with reply_agent(tmp_path) as agent:
            env = aec_env(virtual_audio, agent, PI_AGENT_CAPTURE__MODE="wake_word", PI_AGENT_LOG__LEVEL="debug")
            async with audio_daemon(env, tmp_path) as (d, events):
                await events.wait_state("speaking", 20)
                await asyncio.sleep(3.0)
                assert not any(e.get("type") == "wake_word" for e in events.events)  # the reply does not wake it
                _, metrics = await asyncio.to_thread(d.http, "/metrics")
                assert "pi_agent_reply_ducks_total 0.0" in metrics, d.log  # the reply's own echo lowered nothing
                said = time.monotonic()
                room.play_into_mic(speak("okay nabu", "en-gb-x-rp"))
                stop = await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking", 10,
                                             "the reply stopped")
                stopped = events.received_at[next(n for n, e in enumerate(events.events) if e is stop)]
                _, metrics = await asyncio.to_thread(d.http, "/metrics")
    report("aec_stop_word", stopped_after_s=round(stopped - said, 3))
    assert stopped - said < 2.5
    assert "pi_agent_reply_ducks_total 1.0" in metrics, d.log  # the word lowered the reply once
