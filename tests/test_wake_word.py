"""The wake_word capture mode (issue 12): the real microWakeWord model, real speech, the real sound path.

The speech is espeak-ng's, resampled to 16 kHz. The first tests run the shipped
``okay_nabu`` model on it directly; the rest run ``pi-agent run`` on the PulseAudio
virtual sound card (as ``test_audio_e2e``) against the in-process fake agent, which
records everything it receives: before the wake word nothing may arrive, after it the
whole question must.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from pi_agent.audio import FRAME_BYTES
from pi_agent.audio.wakeword import WakeWordDetector, manifest_path, unavailable
from pi_agent.errors import ConfigError
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_audio import VirtualAudio, exact_edges
from .support_daemon import DaemonProcess, EventClient
from .support_faults import metric
from .test_audio_e2e import (
    MIC_RATE,
    TimedRecording,
    audio_daemon,
    daemon_env,
    locate,
    play_into_mic,
    question,
    report,
    user_audio,
    write_wav,
)

pytestmark = [
    pytest.mark.skipif(unavailable() is not None, reason=f"{unavailable()}"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]

WAKE = "okay nabu"
ORDINARY = (  # what people say near a kiosk: none of it is the wake word
    "What time does the museum close today?",
    "Okay, now a bit louder please.",
    "Could you tell me where the nearest bus stop is?",
    "I think we should order another coffee.",
)
VOICES = ("en-us", "en", "en-gb-x-rp")
SPEEDS = (150, 175)  # words per minute


def speak(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
    """espeak-ng saying ``text``, as 16 kHz mono int16, from its first sample to its last."""
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True,
                         capture_output=True, timeout=30).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    y = np.clip(np.round(soxr.resample(x, rate, MIC_RATE) * 32767), -32767, 32767).astype(np.int16)
    edges = exact_edges(y, 200)  # without espeak's silence around it: timings count from the words
    assert edges is not None
    return y[edges[0] : edges[1]]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * MIC_RATE), np.int16)


def detections(detector: WakeWordDetector, samples: np.ndarray) -> list[tuple[float, float]]:
    """(seconds into ``samples``, probability) of each detection, frame by frame as the daemon feeds it."""
    pcm = np.asarray(samples, dtype="<i2").tobytes()
    found = []
    for n in range(len(pcm) // FRAME_BYTES):
        p = detector(pcm[n * FRAME_BYTES : (n + 1) * FRAME_BYTES])
        if p is not None:
            found.append(((n + 1) * FRAME_BYTES / 2 / MIC_RATE, p))
    return found


# ------------------------------------------------------------------------------ the model itself


@pytest.mark.slow
def test_okay_nabu_is_heard_in_three_voices_at_two_speeds_and_ordinary_talk_is_not() -> None:
    detector = WakeWordDetector("okay_nabu")
    for voice in VOICES:
        for speed in SPEEDS:
            heard = detections(detector, np.concatenate([silence(0.5), speak(WAKE, voice, speed), silence(0.5)]))
            assert len(heard) == 1, (voice, speed, heard)  # once: one utterance is one detection
    talk = np.concatenate([np.concatenate([speak(s, v), silence(0.7)]) for s in ORDINARY for v in VOICES])
    assert detections(detector, talk) == []


@pytest.mark.slow
def test_the_threshold_is_the_sensitivity() -> None:
    word = np.concatenate([silence(0.5), speak(WAKE), silence(0.5)])
    strict = WakeWordDetector("okay_nabu", threshold=0.999)
    assert strict.model_threshold == 0.85 and strict.threshold == 0.999
    assert detections(strict, word) == []
    (_, p), = detections(WakeWordDetector("okay_nabu", threshold=0.5), word)
    assert p >= 0.5


@pytest.mark.slow
def test_a_custom_model_by_its_manifest(tmp_path: Path) -> None:
    """A model of one's own: the JSON manifest beside its .tflite (here a copy of a shipped one)."""
    shipped = manifest_path("okay_nabu")
    shutil.copy(shipped, tmp_path / "mine.json")
    shutil.copy(shipped.with_suffix(".tflite"), tmp_path / "okay_nabu.tflite")
    detector = WakeWordDetector(str(tmp_path / "mine.json"))
    assert detector.phrase == "Okay Nabu"
    assert len(detections(detector, np.concatenate([silence(0.5), speak(WAKE), silence(0.5)]))) == 1


BAD_MANIFESTS = {
    "missing": (None, "no such file"),
    "not json": ("{model: x", "not a JSON manifest"),
    "no micro section": ('{"model": "m.tflite"}', "not a microWakeWord manifest"),
    "cutoff out of range": ('{"model": "m.tflite", "micro": {"probability_cutoff": 3, "sliding_window_size": 5}}',
                            "probability_cutoff"),
    "version 1": ('{"model": "m.tflite", "micro": {"probability_cutoff": 0.5, "sliding_window_size": 5, '
                  '"feature_step_size": 20}}', "version 1"),
    "model file missing": ('{"model": "gone.tflite", "micro": {"probability_cutoff": 0.5, '
                           '"sliding_window_size": 5}}', "cannot be read"),
    "model file not TFLite": ('{"model": "m.tflite", "micro": {"probability_cutoff": 0.5, "sliding_window_size": 5}}',
                              "not a TensorFlow Lite model"),
}


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_a_bad_custom_model_is_a_clear_config_error(tmp_path: Path, case: str) -> None:
    text, message = BAD_MANIFESTS[case]
    path = tmp_path / "model.json"
    if text is not None:
        path.write_text(text)
    (tmp_path / "m.tflite").write_bytes(b"\x00" * 64)  # garbage: TFLite itself must never see it
    with pytest.raises(ConfigError, match=message):
        WakeWordDetector(str(path))


@pytest.mark.slow
def test_the_daemon_refuses_a_bad_model_with_exit_78_and_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "PI_AGENT_AGENT_ID": "a", "PI_AGENT_CAPTURE__MODE": "wake_word",
           "PI_AGENT_CAPTURE__WAKE_WORD": str(tmp_path / "nope.json"), "PI_AGENT_API__PORT": "0",
           "PI_AGENT_API__SOCKET": "off"}
    r = subprocess.run([sys.executable, "-m", "pi_agent.cli", "run"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 78, r.stderr
    assert "configuration error: capture.wake_word:" in r.stderr and "no such file" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_without_the_engine_the_other_modes_run_and_check_says_which_are_available(tmp_path: Path) -> None:
    """32-bit ARM has no wheel: as if pymicro-wakeword were not installed."""
    hide = ("import sys; sys.modules['pymicro_wakeword'] = None; from pi_agent.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PI_AGENT_AGENT_ID": "a", "PI_AGENT_SERVER_URL": "http://127.0.0.1:9",
           "PI_AGENT_AUDIO__INPUT_WAV": str(write_wav(tmp_path / "mic.wav", silence(1.0), MIC_RATE)),
           "PI_AGENT_AUDIO__OUTPUT_WAV": str(tmp_path / "out.wav")}
    check = subprocess.run([sys.executable, "-c", hide, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert "[ ok ] capture: vad; modes available here: push_to_talk, vad, always (not wake_word:" in check.stdout
    assert "not installed" in check.stdout
    env["PI_AGENT_CAPTURE__MODE"] = "wake_word"
    check = subprocess.run([sys.executable, "-c", hide, "check"], env=env, capture_output=True, text=True, timeout=60)
    assert "[FAIL] capture: capture.mode = wake_word: the wake-word engine (pymicro-wakeword) is not installed" \
        in check.stdout, check.stdout
    run = subprocess.run([sys.executable, "-c", hide, "run"], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 78 and "is not installed" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_test_mic_prints_each_detection_with_its_probability(tmp_path: Path) -> None:
    mic = np.concatenate([silence(0.5), speak(WAKE), silence(1.0), speak(ORDINARY[0]), silence(0.5),
                          speak(WAKE, "en-gb-x-rp"), silence(0.5)])
    env = {**os.environ, "PI_AGENT_AUDIO__INPUT_WAV": str(write_wav(tmp_path / "mic.wav", mic, MIC_RATE))}
    seconds = len(mic) / MIC_RATE + 0.3
    r = subprocess.run([sys.executable, "-m", "pi_agent.cli", "test-mic", "--wake-word", "--seconds", f"{seconds:.2f}"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    heard = [line for line in r.stdout.splitlines() if "wake word heard: probability" in line]
    assert len(heard) == 2, r.stdout
    assert "wake word 'Okay Nabu': 2 detection(s)" in r.stdout


# ------------------------------------------------------------------------------ the daemon on the sound card


def wake_env(va: VirtualAudio, agent: FakeAgent, **settings: str) -> dict[str, str]:
    return daemon_env(va, agent, PI_AGENT_SESSION__POLICY="on_demand", PI_AGENT_CAPTURE__MODE="wake_word",
                      **settings)


async def speak_into_mic(va: VirtualAudio, samples: np.ndarray, tmp: Path) -> float:
    """Play ``samples`` into the mic and wait until they have played; when they started."""
    started = time.monotonic()
    player = play_into_mic(va, samples, tmp)
    await asyncio.to_thread(player.wait, len(samples) / MIC_RATE + 10)
    return started


async def next_event(events: EventClient, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                     what: str) -> dict[str, Any]:
    """The first event from now on that matches ``predicate``."""
    seen = {id(e) for e in events.events}
    return await events.wait_for(lambda e: id(e) not in seen and predicate(e), timeout, what)


def leds_show(top: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("type") == "status" and e["leds"]["top"] == top


async def wake_words_counted(d: DaemonProcess) -> float:
    status, text = await asyncio.to_thread(d.http, "/metrics")
    assert status == 200
    return metric(text, "pi_agent_wake_word_detections_total")


@pytest.mark.audio
@pytest.mark.slow
async def test_ordinary_talk_opens_no_conversation_and_sends_nothing(virtual_audio: VirtualAudio,
                                                                     tmp_path: Path) -> None:
    talk = np.concatenate([np.concatenate([speak(s), silence(0.8)]) for s in ORDINARY])
    async with (FakeAgent(FakeAgentOptions(port=0)) as agent,
                audio_daemon(wake_env(virtual_audio, agent), tmp_path) as (d, events)):
        assert events.snapshot is not None and events.snapshot["leds"]["top"] == "wake_word"
        await speak_into_mic(virtual_audio, talk, tmp_path)
        await asyncio.sleep(1.0)
        counted = await wake_words_counted(d)
        log = d.log
    assert agent.conversations == [], "a conversation was opened"
    assert events.states() == [] and not any(e.get("type") == "wake_word" for e in events.events)
    assert counted == 0
    assert "listening for the wake word 'Okay Nabu'" in log


@pytest.mark.audio
@pytest.mark.slow
async def test_the_wake_word_opens_a_conversation_and_the_whole_question_follows_then_a_follow_up(
        virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """on_demand, half_duplex: "okay nabu", a short pause, the question: the conversation opens
    within 3 s of the wake word and the agent gets the question from its first syllable, and
    none of the wake word. After the reply, an answer within ``follow_up`` needs no wake word;
    one after it is not sent."""
    wake, q = speak(WAKE), question()
    follow_up = 4.0
    async with FakeAgent(FakeAgentOptions(port=0, reply_seconds=1.5)) as agent:
        env = wake_env(virtual_audio, agent, PI_AGENT_CAPTURE__FOLLOW_UP=str(follow_up))
        async with audio_daemon(env, tmp_path) as (d, events):
            started = await speak_into_mic(virtual_audio, np.concatenate([wake, silence(0.25), q, silence(0.3)]),
                                           tmp_path)
            wake_end = started + len(wake) / MIC_RATE
            heard = await events.wait_for(lambda e: e.get("type") == "wake_word", 10, "the wake word")
            record = await agent.wait_for_conversation(1, 5)
            await agent.wait_for(lambda: len(record.transcripts) >= 1, 20, "the question's transcript")
            first = user_audio(record).copy()
            await next_event(events, leds_show("follow_up"), 20, "the follow-up window after the reply")
            await speak_into_mic(virtual_audio, q, tmp_path)  # no wake word
            await agent.wait_for(lambda: len(record.transcripts) >= 2, 20, "the follow-up's transcript")
            await next_event(events, leds_show("follow_up"), 20, "the follow-up window after the second reply")
            await next_event(events, leds_show("wake_word"), follow_up + 5, "the window closing")
            await speak_into_mic(virtual_audio, q, tmp_path)  # too late: not sent
            await asyncio.sleep(1.5)
            late = len(record.transcripts)
            counted = await wake_words_counted(d)
    _, score = locate(first, q)
    _, wake_score = locate(first, wake)
    report("wake_word", probability=heard["probability"],
           opened_after_wake_word_s=round(record.opened_at - wake_end, 3), question_correlation=round(score, 4),
           wake_word_correlation=round(wake_score, 3))
    assert 0 < heard["probability"] <= 1
    assert record.opened_at - wake_end <= 3.0, record.opened_at - wake_end
    assert score > 0.99, score  # the whole question, from its first syllable
    assert wake_score < 0.5, wake_score  # and none of the wake word
    assert late == 2, record.transcripts  # the answer after the window went nowhere
    assert counted == 1


@pytest.mark.audio
@pytest.mark.slow
async def test_the_wake_word_over_the_reply_stops_it_where_the_mic_hears_past_the_speaker(
        virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """full_duplex (a headset: the virtual mic does not hear the speaker): the wake word during
    the agent's reply flushes the speaker at once, and the question after it is a new turn."""
    reply = (np.sin(2 * np.pi * 440 * np.arange(8 * MIC_RATE) / MIC_RATE) * 8000).astype(np.int16)
    reply_wav = write_wav(tmp_path / "long-reply.wav", reply, MIC_RATE)
    wake, q = speak(WAKE), question()
    async with FakeAgent(FakeAgentOptions(port=0, reply_wav=str(reply_wav))) as agent:
        # No earcons: what the speaker plays after the stop must be nothing at all.
        env = wake_env(virtual_audio, agent, PI_AGENT_AUDIO__ECHO="full_duplex", PI_AGENT_AUDIO__EARCONS="[]")
        async with audio_daemon(env, tmp_path) as (_d, events):
            await speak_into_mic(virtual_audio, np.concatenate([wake, silence(0.25), q]), tmp_path)
            record = await agent.wait_for_conversation(1, 5)
            await events.wait_state("speaking", 20)
            speaker = TimedRecording(virtual_audio.server, "spk.monitor", tmp_path)
            try:
                await asyncio.sleep(1.0)  # a second into the eight-second reply
                stopping = asyncio.ensure_future(next_event(
                    events, lambda e: e.get("type") == "state" and e["previous"] == "speaking", 10,
                    "the reply stopped"))
                started = await speak_into_mic(virtual_audio, np.concatenate([wake, silence(0.25), q]), tmp_path)
                stop = await stopping
                stopped_at = events.received_at[next(n for n, e in enumerate(events.events) if e is stop)]
                await agent.wait_for(lambda: len(record.transcripts) >= 2, 20, "the new question's transcript")
            finally:
                played = speaker.stop()
    wake_end = started + len(wake) / MIC_RATE
    report("stop_word", stopped_after_wake_word_s=round(stopped_at - wake_end, 3))
    assert stop["state"] in ("idle", "listening") and stopped_at - wake_end < 1.0, (stop, stopped_at - wake_end)
    level = np.abs(played[:, 0].astype(np.int32))
    before = level[: speaker.index_at(stopped_at)]
    after = level[speaker.index_at(stopped_at + 0.15) : speaker.index_at(stopped_at + 1.0)]
    assert before.max(initial=0) > 4000, "the reply was not playing"
    assert after.max(initial=0) < 100, after.max(initial=0)  # quiet at once, and the rest of the reply dropped
