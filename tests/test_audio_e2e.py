"""The whole daemon process on the PulseAudio virtual sound card (issue 3's audio "Done when").

``pi-agent run`` runs as a child process with its microphone and speaker chosen by
name (``vmic``: the monitor of the 16 kHz mono null sink ``mic``; ``vspk``: the
48 kHz stereo null sink ``spk``; ``vgone_*`` on a second server that is killed and
restarted), so audio takes the real PyAudio -> PortAudio -> ALSA ``pulse`` plugin ->
PulseAudio path, through the capture gate, the session and the WebSocket, to the
in-process fake agent, which records what it receives. Speech is played into the
microphone with ``pacat``; what the speaker played is recorded from ``spk.monitor``.

Clocks: the fake agent, the event-API client and :class:`~.support_audio.TimedRecording` all run in
this process and use ``time.monotonic()`` (system-wide, so also the daemon's clock).
A recording's samples are placed on that axis from when they reached the file, which
can only make a measured delay longer, never shorter.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from pi_agent.audio.files import read_wav
from pi_agent.fake_agent import ConversationRecord, FakeAgent, FakeAgentOptions
from .support_audio import (
    SPK_RATE,
    TimedRecording,
    VirtualAudio,
    dominant_frequency,
    exact_edges,
    loud_segments,
    tone,
)
from .support_daemon import QUESTION_WAV, DaemonProcess, EventClient

pytestmark = [pytest.mark.audio, pytest.mark.slow]

MIC_RATE = 16_000
FRAME = 320  # samples in one 20 ms mic frame
BARGE_IN_BOUND = 0.03  # s from interruption to silence (the README's target is 15 ms; slack for a busy machine)
PULSE_VARS = ("PULSE_SERVER", "PULSE_RUNTIME_PATH", "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")


def question() -> np.ndarray:
    """The shipped question, cut to start 20 ms before its first syllable."""
    frames, rate = read_wav(QUESTION_WAV)
    assert rate == MIC_RATE
    x = frames[:, 0].copy()
    edges = exact_edges(x, 300)
    assert edges is not None
    return x[max(0, edges[0] - FRAME) :]


def noise(seconds: float, std: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(0.0, std, int(seconds * MIC_RATE)))
    x[x == 0] = 1  # never a frame of exact zeros: those mean "the gate sent silence"
    return np.clip(x, -32767, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return path


def report(name: str, **figures: object) -> None:
    """Print what a test measured (shown with ``pytest -s``)."""
    print(f"\nMEASURED {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# ------------------------------------------------------------------------------ the daemon


def daemon_env(va: VirtualAudio, agent: FakeAgent, **settings: str) -> dict[str, str]:
    """Environment for ``pi-agent run`` on the virtual card, talking to ``agent``."""
    env = {"ALSA_CONFIG_PATH": str(va.alsa_conf), **{k: va.server.env[k] for k in PULSE_VARS}}
    env.update(
        PI_AGENT_AGENT_ID="agent_audio_e2e",
        PI_AGENT_SERVER_URL=agent.http_url,
        PI_AGENT_AUDIO__INPUT_DEVICE="vmic",
        PI_AGENT_AUDIO__OUTPUT_DEVICE="vspk",
        PI_AGENT_AUDIO__OUTPUT_RATE=str(SPK_RATE),  # the pulse plugin would default to 44.1 kHz
        PI_AGENT_SESSION__POLICY="persistent",
        PI_AGENT_CAPTURE__MODE="vad",
    )
    env.update(settings)
    return env


async def wait_log(d: DaemonProcess, pattern: str, timeout: float = 15.0, count: int = 1) -> re.Match[str]:
    """Wait until the daemon's log holds ``count`` matches of ``pattern``; return the last."""
    deadline = time.monotonic() + timeout
    while True:
        matches = list(re.finditer(pattern, d.log))
        if len(matches) >= count:
            return matches[count - 1]
        assert d.proc is not None
        if d.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {d.proc.returncode}:\n{d.log}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {pattern!r} (x{count}) in the daemon log within {timeout} s:\n{d.log}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def audio_daemon(env: dict[str, str], tmp: Path) -> AsyncIterator[tuple[DaemonProcess, EventClient]]:
    """Run the daemon until its microphone and speaker are open; yield it and an event client."""
    d = DaemonProcess(env, tmp).start()
    try:
        await d.wait_api()
        mic, spk = env["PI_AGENT_AUDIO__INPUT_DEVICE"], env["PI_AGENT_AUDIO__OUTPUT_DEVICE"]
        await wait_log(d, rf"microphone '{mic}' open")
        await wait_log(d, rf"speaker '{spk}' open")
        async with EventClient(d.api_socket) as events:
            yield d, events
    finally:
        d.stop()


async def connected(agent: FakeAgent, events: EventClient) -> ConversationRecord:
    """Wait for the persistent conversation and for mic frames to flow into it."""
    record = await agent.wait_for_conversation(1, 15)
    if not (events.snapshot or {}).get("connected"):
        await events.wait_for(lambda e: e.get("type") == "connection" and e["connected"], 15, "the connection")
    await agent.wait_for(lambda: record.audio_chunk_bytes.count(2 * FRAME) >= 10, 10, "mic frames")
    return record


def play_into_mic(va: VirtualAudio, samples: np.ndarray, tmp: Path) -> subprocess.Popen[bytes]:
    """Start ``pacat`` playing 16 kHz mono ``samples`` into the ``mic`` sink.

    From a file: a pipe would block this (the fake agent's) event loop until pacat had
    read most of it. With a 200 ms buffer: with 20 ms, a busy machine starves pacat and
    the "user" stutters (a gap in what the mic hears, not the daemon's doing)."""
    path = tmp / f"mic-{time.monotonic_ns()}.raw"
    np.asarray(samples, dtype="<i2").tofile(path)
    return subprocess.Popen(
        ["pacat", "-p", "-d", "mic", "--raw", "--format=s16le", f"--rate={MIC_RATE}", "--channels=1",
         "--latency-msec=200", str(path)],
        env=va.server.env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def snapshot_counters(d: DaemonProcess) -> dict[str, int]:
    async with EventClient(d.api_socket) as fresh:
        assert fresh.snapshot is not None
        return fresh.snapshot["counters"]


def speaker_latency(d: DaemonProcess) -> float:
    m = re.search(r"speaker '[^']+' open: .* latency (\d+) ms", d.log)
    assert m, d.log
    return int(m.group(1)) / 1000


# ------------------------------------------------------------------------------ audio records


def user_audio(record: ConversationRecord) -> np.ndarray:
    """Everything the fake agent received from the microphone (16 kHz mono)."""
    assert record.input_rate == MIC_RATE
    return np.frombuffer(bytes(record.user_audio), dtype="<i2").copy()


def chunk_starts(record: ConversationRecord) -> tuple[np.ndarray, np.ndarray]:
    """Sample offset of every received audio chunk in :func:`user_audio`, and its arrival time."""
    sizes = np.asarray(record.audio_chunk_bytes, dtype=np.int64) // 2
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return starts, np.asarray(record.audio_chunk_times)


def samples_between(record: ConversationRecord, t0: float, t1: float) -> np.ndarray:
    """The received samples of the chunks that arrived between ``t0`` and ``t1``."""
    x = user_audio(record)
    starts, times = chunk_starts(record)
    sizes = np.asarray(record.audio_chunk_bytes, dtype=np.int64) // 2
    parts = [x[s : s + n] for s, n, t in zip(starts, sizes, times, strict=True) if t0 <= t <= t1]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


def locate(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Offset of ``needle`` in ``haystack`` by FFT cross-correlation, and the normalised
    correlation there (1.0 = identical)."""
    h = haystack.astype(np.float64)
    n = needle.astype(np.float64)
    size = 1 << int(np.ceil(np.log2(len(h) + len(n))))
    corr = np.fft.irfft(np.fft.rfft(h, size) * np.conj(np.fft.rfft(n, size)), size)[: len(h) - len(n) + 1]
    lag = int(np.argmax(corr))
    window = h[lag : lag + len(n)]
    score = float(np.dot(window, n) / (np.linalg.norm(window) * np.linalg.norm(n) + 1e-9))
    return lag, score


def nonzero_frames(x: np.ndarray) -> np.ndarray:
    """Indices of the 20 ms frames of ``x`` that hold anything but exact zeros."""
    n = len(x) // FRAME
    return np.nonzero(np.any(x[: n * FRAME].reshape(n, FRAME) != 0, axis=1))[0]


def runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs ``(first, last + 1)`` in sorted ``indices``."""
    out: list[tuple[int, int]] = []
    for i in indices.tolist():
        if out and i == out[-1][1]:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


# ------------------------------------------------------------------------------ 1. vad onset


async def test_vad_speech_reaches_the_agent_complete_with_its_onset(
    virtual_audio: VirtualAudio, tmp_path: Path
) -> None:
    """on_demand + vad: speech into the silent mic opens the conversation, and the agent
    gets all of it, bit for bit, from before the first syllable (pre-roll + prebuffer)."""
    speech = question()
    last_loud = exact_edges(speech, 300)[1]  # type: ignore[index]
    async with FakeAgent(FakeAgentOptions(port=0, transcript="What is the weather like?")) as agent:
        env = daemon_env(virtual_audio, agent, PI_AGENT_SESSION__POLICY="on_demand")
        async with audio_daemon(env, tmp_path) as (_d, events):
            await asyncio.sleep(0.5)  # the mic runs; nothing is sent (no conversation yet)
            assert agent.conversations == [] and events.snapshot["state"] == "idle"
            played_at = time.monotonic()
            player = play_into_mic(virtual_audio, speech, tmp_path)
            await events.wait_for(lambda e: e.get("type") == "user_transcript", 20, "the user transcript")
            await asyncio.to_thread(player.wait, 10)
            states = events.states()
    record = agent.conversations[0]
    got = user_audio(record)
    lag, score = locate(got, speech[:last_loud])
    aligned = got[lag : lag + last_loud]
    diff = int(np.max(np.abs(aligned[80:].astype(np.int32) - speech[80:last_loud])))  # see test_always_...
    onset = FRAME  # the first syllable starts 20 ms into ``speech``
    first = slice(onset, onset + int(0.15 * MIC_RATE))
    energy_ratio = float(np.sqrt(np.mean(aligned[first].astype(np.float64) ** 2))
                         / np.sqrt(np.mean(speech[first].astype(np.float64) ** 2)))
    before_onset = (lag + onset) / MIC_RATE
    report("vad_onset", correlation=round(score, 5), max_sample_diff=diff,
           audio_before_first_syllable_s=round(before_onset, 3),
           first_150ms_energy_ratio=round(energy_ratio, 4),
           conversation_opened_after_s=round(record.opened_at - played_at, 3))
    assert states[:2] == ["connecting", "listening"], states  # the speech itself opened the conversation
    assert score > 0.999, score  # the whole question, in order, undistorted
    assert diff <= 2, diff  # 16 kHz all the way: the samples themselves arrive
    assert 0.9 <= energy_ratio <= 1.1, energy_ratio  # the first syllable is not cut or faded
    # The pre-roll went out before the first syllable: 0.3 s minus the VAD's reaction time.
    assert 0.1 <= before_onset <= 0.45, before_onset
    assert not np.any(got[:lag])  # what came before the speech is the mic's silence


# ------------------------------------------------------------------------------ 2. formats

TONES = ((700.0, 0.5), (None, 0.25), (1900.0, 0.5))  # (Hz or silence, seconds): the reply "speech"


def tone_reply(tmp: Path) -> Path:
    """The fake's reply clip: two tones with a gap, at 48 kHz (the fake converts it)."""
    parts = [tone(f, s, 48_000) if f else np.zeros(int(s * 48_000), np.int16) for f, s in TONES]
    return write_wav(tmp / "tones.wav", np.concatenate(parts), 48_000)


@pytest.mark.parametrize("fmt", ["pcm_44100", "ulaw_8000"])
async def test_agent_audio_format_plays_at_the_right_pitch_and_length_on_48k(
    virtual_audio: VirtualAudio, tmp_path: Path, fmt: str
) -> None:
    opts = FakeAgentOptions(port=0, output_format=fmt, reply_wav=str(tone_reply(tmp_path)))
    async with FakeAgent(opts) as agent, audio_daemon(daemon_env(virtual_audio, agent), tmp_path) as (d, events):
        await connected(agent, events)
        recording = TimedRecording(virtual_audio.server, "spk.monitor", tmp_path)
        try:
            await events.send({"type": "say", "text": "play the tones"})
            await events.wait_state("speaking", 10)
            await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking", 10)
            await asyncio.sleep(0.2)
        finally:
            recorded = recording.stop()
        counters = await snapshot_counters(d)
    assert "48000 Hz x2" in d.log
    assert np.array_equal(recorded[:, 0], recorded[:, 1])  # both speaker channels carry it
    x = recorded[:, 0]
    segments = loud_segments(x, SPK_RATE)
    assert len(segments) == 2, segments
    found = []
    for (start, end), (freq, seconds) in zip(segments, (TONES[0], TONES[2]), strict=True):
        length = (end - start) / SPK_RATE
        pitch = dominant_frequency(x[start + 480 : end - 480], SPK_RATE)
        found.append((round(pitch, 2), round(length, 4)))
        assert freq is not None
        assert abs(pitch - freq) < freq * 0.003, (fmt, pitch, freq)
        assert abs(length - seconds) <= 0.015, (fmt, length, seconds)
    gap = (segments[1][0] - segments[0][1]) / SPK_RATE
    report(f"format_{fmt}", tones_hz_s=found, gap_s=round(gap, 4), underruns=counters["playback_underruns"])
    assert abs(gap - TONES[1][1]) <= 0.015, gap


# ------------------------------------------------------------------------------ 3. barge-in


@pytest.mark.alone  # a 30 ms bound: with parallel workers, no other test beside it (tests/conftest.py)
@pytest.mark.parametrize("stale_chunks", [0, 4])
async def test_barge_in_silences_the_speaker_at_once(
        virtual_audio: VirtualAudio, tmp_path: Path, stale_chunks: int) -> None:
    """full_duplex: the user talks over a long reply; the fake agent sends ``interruption``;
    what the speaker sink played stops at once: the stream is aborted, so what the device
    held is dropped, whatever its period and latency. As the service does, the interruption
    is numbered newer than the reply it cuts, and chunks of that reply still in flight
    (``stale_chunks``, with the reply's older id) follow it: they are not played either."""
    long_tone = write_wav(tmp_path / "long.wav", tone(600, 4.0, 16_000), 16_000)
    opts = FakeAgentOptions(port=0, reply_wav=str(long_tone), reply_delay=1.5, stale_chunks=stale_chunks)
    async with FakeAgent(opts) as agent:
        env = daemon_env(virtual_audio, agent, PI_AGENT_AUDIO__ECHO="full_duplex")
        async with audio_daemon(env, tmp_path) as (d, events):
            record = await connected(agent, events)
            recording = TimedRecording(virtual_audio.server, "spk.monitor", tmp_path)
            player = None
            try:
                await events.send({"type": "say", "text": "tell me a long story"})
                await events.wait_state("speaking", 10)
                await asyncio.sleep(1.0)
                before = len(events.events)  # the text reply's own interruption came before its audio
                player = play_into_mic(virtual_audio, question(), tmp_path)
                event = await events.wait_for(lambda e: e.get("type") == "interruption"
                                              and events.events.index(e) >= before, 10, "the interruption")
                event_at = events.received_at[events.events.index(event)]
                await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking"
                                      and e["state"] == "listening", 5, "speaking -> listening")
                await asyncio.sleep(1.0)
            finally:
                recorded = recording.stop()
                if player is not None:
                    await asyncio.to_thread(player.wait, 10)
            latency = speaker_latency(d)
    turn = record.turns[0]
    [barge_in] = [s for s in record.sent_of("interruption")
                  if s.message["interruption_event"]["event_id"] == turn.interruption_id]
    sent_at = barge_in.t
    assert event["event_id"] == turn.interruption_id
    assert turn.interrupted and record.interruptions == [turn.event_id]
    assert turn.interruption_id is not None and turn.interruption_id > turn.event_id
    assert len(record.stale_audio) == stale_chunks
    x = recorded[:, 0]
    window_end = recording.index_at(sent_at + 1.0)  # the next reply is >= 2 s later (reply_delay)
    loud = np.nonzero(np.abs(x[:window_end].astype(np.int32)) > 100)[0]
    assert len(loud) > 0
    first_heard = float(recording.time_of(loud[0]))
    last_heard = float(recording.time_of(loud[-1]))
    after_sent = last_heard - sent_at
    after_event = last_heard - event_at
    # A check of the recording's clock: the tone cannot be heard before its first chunk was sent.
    start_delay = first_heard - record.sent_of("audio")[0].t
    bound = BARGE_IN_BOUND
    report("barge_in", speaker_latency_s=latency, silent_after_interruption_sent_s=round(after_sent, 4),
           silent_after_event_api_s=round(after_event, 4), tone_played_s=round(last_heard - first_heard, 3),
           heard_after_first_chunk_sent_s=round(start_delay, 4), bound_s=round(bound, 3),
           recorder_typical_delay_s=round(recording.typical_delay, 4))
    assert 0.0 < start_delay < 0.5, start_delay
    assert last_heard - first_heard >= 0.8  # the reply was playing ...
    assert last_heard - first_heard < 3.0  # ... and was cut, not played out
    assert after_sent <= bound, (after_sent, latency)
    assert not np.any(x[recording.index_at(sent_at + bound) : window_end])  # silent, not just quieter


# ------------------------------------------------------------------------------ 4. echo


@contextlib.contextmanager
def speaker_heard_by_mic(va: VirtualAudio, latency_ms: int = 30) -> Iterator[None]:
    """A PulseAudio loopback from ``spk.monitor`` into the ``mic`` sink: the mic hears the speaker."""
    loaded = va.server.pactl("load-module", "module-loopback", "source=spk.monitor", "sink=mic",
                             f"latency_msec={latency_ms}", "source_dont_move=true", "sink_dont_move=true")
    module = loaded.stdout.strip()
    try:
        yield
    finally:
        va.server.pactl("unload-module", module, check=False)


def frame_levels_db(x: np.ndarray) -> np.ndarray:
    n = len(x) // FRAME
    rms = np.sqrt(np.mean(x[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2, axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-3) / 32768)


@pytest.mark.parametrize("echo", ["half_duplex", "full_duplex"])
async def test_half_duplex_sends_the_agent_none_of_its_own_voice(
    virtual_audio: VirtualAudio, tmp_path: Path, echo: str
) -> None:
    """The speaker is routed into the mic. half_duplex: the agent receives only zeros while
    its reply plays (+ tail); full_duplex (the control): the reply comes back to it."""
    opts = FakeAgentOptions(port=0, reply_seconds=2.0)
    async with FakeAgent(opts) as agent:
        env = daemon_env(virtual_audio, agent, PI_AGENT_AUDIO__ECHO=echo)
        with speaker_heard_by_mic(virtual_audio):
            async with audio_daemon(env, tmp_path) as (_d, events):
                record = await connected(agent, events)
                said_at = time.monotonic()
                await events.send({"type": "say", "text": "say something"})
                await events.wait_state("speaking", 10)
                await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking", 10)
                await asyncio.sleep(1.0)  # the echo tail and beyond
                done_at = time.monotonic()
    during = samples_between(record, said_at, done_at)
    levels = frame_levels_db(during)
    reply = np.frombuffer(agent.reply_audio, dtype="<i2")  # pcm_16000, as the mic hears it
    _, score = locate(during, reply[: int(0.2 * MIC_RATE)]) if len(during) > 0.2 * MIC_RATE else (0, 0.0)
    report(f"echo_{echo}", loudest_frame_dbfs=round(float(levels.max()), 1),
           max_sample=int(np.max(np.abs(during.astype(np.int32)))), reply_correlation=round(score, 3),
           interruptions=len(record.interruptions), seconds_checked=round(len(during) / MIC_RATE, 2))
    assert len(during) >= 0.8 * (done_at - said_at) * MIC_RATE  # the mic kept streaming all along
    if echo == "half_duplex":
        assert np.max(np.abs(during.astype(np.int32))) <= 30
        assert record.turns[0].completed and not record.interruptions  # the agent did not cut itself off
    else:
        assert levels.max() > -30  # the speaker was heard ...
        assert score > 0.8, score  # ... and it was the reply


# ------------------------------------------------------------------------------ 5. capture modes


async def test_push_to_talk_sends_audio_only_between_start_and_stop_with_preroll(
    virtual_audio: VirtualAudio, tmp_path: Path
) -> None:
    """push_to_talk (the API's start/stop_listening do what the button does): zeros before
    and after; between them the mic's own samples, led by the pre-roll."""
    signal = noise(5.0, 3000, seed=11)
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = daemon_env(virtual_audio, agent, PI_AGENT_CAPTURE__MODE="push_to_talk")
        async with audio_daemon(env, tmp_path) as (_d, events):
            record = await connected(agent, events)
            played_at = time.monotonic()
            player = play_into_mic(virtual_audio, signal, tmp_path)
            await asyncio.sleep(1.5)
            pressed_at = time.monotonic()
            await events.send({"type": "start_listening"})
            await asyncio.sleep(1.5)
            released_at = time.monotonic()
            await events.send({"type": "stop_listening"})
            await asyncio.to_thread(player.wait, 10)
            await asyncio.sleep(0.3)
            acks = [e["command"] for e in events.events if e.get("type") == "ack"]
    got = user_audio(record)
    blocks = runs(nonzero_frames(got))
    assert len(blocks) == 1, blocks  # one stretch of real audio, zeros all around it
    start, end = blocks[0][0] * FRAME, blocks[0][1] * FRAME
    sent = got[start:end]
    lag, score = locate(signal, sent)
    sent_s = len(sent) / MIC_RATE
    held_s = released_at - pressed_at
    preroll = 0.5  # push_to_talk keeps max(preroll, hold_time + 0.1) = 0.5 s by default
    # Where the stretch starts in the signal, against when the press came (pacat starts a bit late).
    began_before_press_s = (pressed_at - played_at) - lag / MIC_RATE
    report("push_to_talk", held_s=round(held_s, 3), sent_s=round(sent_s, 3),
           began_before_press_s=round(began_before_press_s, 3), correlation=round(score, 5))
    assert acks == ["start_listening", "stop_listening"]
    assert score > 0.999, score  # the mic's own samples, in order
    assert abs(sent_s - (held_s + preroll)) <= 0.12, (sent_s, held_s)
    assert 0.3 <= began_before_press_s <= 0.8, began_before_press_s


async def test_always_streams_the_mic_continuously(virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """always: every mic sample goes to the agent, with no gap and nothing held back."""
    signal = noise(2.5, 3000, seed=12)
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = daemon_env(virtual_audio, agent, PI_AGENT_CAPTURE__MODE="always")
        async with audio_daemon(env, tmp_path) as (_d, events):
            record = await connected(agent, events)
            started = time.monotonic()
            player = play_into_mic(virtual_audio, signal, tmp_path)
            await asyncio.to_thread(player.wait, 10)
            await asyncio.sleep(0.3)
            ended = time.monotonic()
    got = user_audio(record)
    lag, score = locate(got, signal)
    aligned = got[lag : lag + len(signal)]
    # PulseAudio may render a newly connected pacat stream a millisecond or two late (the
    # very first samples are lost before they reach the mic sink): compare from 5 ms on.
    diff = int(np.max(np.abs(aligned[80:].astype(np.int32) - signal[80:])))
    streamed = samples_between(record, started, ended)
    _starts, times = chunk_starts(record)
    window = (times >= started) & (times <= ended)
    largest_gap = float(np.max(np.diff(times[window])))
    report("always", correlation=round(score, 5), max_sample_diff=diff,
           streamed_s=round(len(streamed) / MIC_RATE, 3), wall_s=round(ended - started, 3),
           largest_gap_between_chunks_s=round(largest_gap, 3))
    assert score > 0.999 and diff <= 2, (score, diff)  # all of it, sample for sample
    assert len(streamed) / MIC_RATE >= 0.9 * (ended - started)  # real time, continuously
    assert largest_gap < 0.25, largest_gap


async def test_vad_privacy_sends_zeros_outside_speech(virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """vad + privacy: room noise before and after the speech goes out as zeros; the speech
    (with its pre-roll and hangover) goes out as it was heard."""
    speech = question()[: int(2.5 * MIC_RATE)]
    # A quiet mic's noise floor (-78 dBFS): never exact zeros, and not voice to webrtcvad. (Louder
    # white noise, from about -66 dBFS, counts as voice to it for seconds after speech.)
    lead, tail = noise(1.5, 4, seed=13), noise(2.0, 4, seed=14)
    signal = np.concatenate([lead, speech, tail])
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        env = daemon_env(virtual_audio, agent, PI_AGENT_CAPTURE__PRIVACY="true",
                         PI_AGENT_AUDIO__ECHO="full_duplex")  # only privacy may zero the tail
        async with audio_daemon(env, tmp_path) as (d, events):
            record = await connected(agent, events)
            player = play_into_mic(virtual_audio, signal, tmp_path)
            await asyncio.to_thread(player.wait, 10)
            await asyncio.sleep(0.3)
            counters = await snapshot_counters(d)
    got = user_audio(record)
    lag, score = locate(got, speech)
    blocks = runs(nonzero_frames(got))
    assert len(blocks) == 1, blocks
    start, end = blocks[0][0] * FRAME, blocks[0][1] * FRAME
    before_s = (lag - start) / MIC_RATE  # real audio sent ahead of the speech (pre-roll)
    after_s = (end - (lag + len(speech))) / MIC_RATE  # ... and after it (hangover, until the transcript)
    report("vad_privacy", correlation=round(score, 5), sent_before_speech_s=round(before_s, 3),
           sent_after_speech_s=round(after_s, 3), noise_lead_s=len(lead) / MIC_RATE,
           noise_tail_s=len(tail) / MIC_RATE, capture_overflows=counters["capture_overflows"])
    assert score > 0.999, score
    assert 0.0 <= before_s <= 0.35, before_s  # <= the 0.3 s pre-roll (+ a frame): not the 1.5 s of noise
    assert 0.0 <= after_s <= 1.0, after_s  # <= the 0.8 s hangover: not the 2 s of noise


# ------------------------------------------------------------------------------ 6. devices vanish


async def test_devices_that_vanish_and_return_are_reopened(virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """The sound server behind both devices dies (a USB headset pulled out): the daemon goes
    to ``error`` (event API, /healthz, one log line) and keeps running; when the server is
    back it reopens both devices by name and works again, with no restart."""
    gone = virtual_audio.gone_server()
    gone.start()
    try:
        async with FakeAgent(FakeAgentOptions(port=0, reply_seconds=1.0)) as agent:
            env = daemon_env(virtual_audio, agent, PI_AGENT_AUDIO__INPUT_DEVICE="vgone_mic",
                             PI_AGENT_AUDIO__OUTPUT_DEVICE="vgone_spk")
            async with audio_daemon(env, tmp_path) as (d, events):
                await connected(agent, events)
                pid = d.proc.pid if d.proc else None
                gone.kill()
                killed_at = time.monotonic()
                await events.wait_state("error", 5)
                failed_after = time.monotonic() - killed_at
                errors = [e for e in events.events if e.get("type") == "error"]
                status, body = d.http("/healthz")
                assert status == 503, body
                await asyncio.sleep(2.0)  # a few failed reopen attempts
                assert events.states()[-1] == "error", events.states()
                gone.start()
                back_at = time.monotonic()
                await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "error", 20,
                                      "leaving error")
                recovered_after = time.monotonic() - back_at
                await wait_log(d, r"microphone 'vgone_mic' open", count=2)
                await wait_log(d, r"speaker 'vgone_spk' open", count=2)
                assert d.http("/healthz")[0] == 200
                # Back to normal: the reopened speaker plays a reply, the reopened mic streams.
                recording = TimedRecording(gone, "gone.monitor", tmp_path)
                try:
                    record = agent.latest
                    frames_before = record.audio_chunk_bytes.count(2 * FRAME)
                    await events.send({"type": "say", "text": "are you back?"})
                    await events.wait_state("speaking", 10)
                    await events.wait_for(lambda e: e.get("type") == "state" and e["previous"] == "speaking", 10)
                finally:
                    recorded = recording.stop()
                frames_after = agent.latest.audio_chunk_bytes.count(2 * FRAME)
                assert d.proc is not None and d.proc.poll() is None and d.proc.pid == pid
            log = d.log
    finally:
        gone.stop()
    heard = loud_segments(recorded[:, 0], SPK_RATE)
    report("device_vanish", error_after_kill_s=round(failed_after, 3),
           back_after_server_restart_s=round(recovered_after, 3), error_events=len(errors),
           reply_heard_s=round(sum(b - a for a, b in heard) / SPK_RATE, 2))
    assert {e["source"] for e in errors} <= {"microphone", "speaker"} and errors
    for which in ("microphone", "speaker"):  # one line per device and outage, not one per retry
        assert log.count(f"{which} device failed") <= 1, log
    assert "device failed" in log
    assert "device is back" in log
    assert heard, "nothing played after the speaker came back"
    assert frames_after - frames_before >= 25, (frames_before, frames_after)  # the mic streams again


async def test_error_lasts_until_every_vanished_device_is_back(virtual_audio: VirtualAudio, tmp_path: Path) -> None:
    """The speaker (on one server) vanishes; later the mic (on another) vanishes and comes
    straight back: the daemon stays in ``error``, unhealthy, while the speaker is missing.
    (It used to keep one device error: the mic's return cleared it and the daemon reported
    itself healthy, until the speaker's next reopen attempt failed.)"""
    mic_server, spk_server = virtual_audio.gone_server(), virtual_audio.second_gone_server()
    mic_server.start()
    spk_server.start()
    try:
        async with FakeAgent(FakeAgentOptions(port=0)) as agent:
            env = daemon_env(virtual_audio, agent, PI_AGENT_AUDIO__INPUT_DEVICE="vgone_mic",
                             PI_AGENT_AUDIO__OUTPUT_DEVICE="vgone2_spk")
            async with audio_daemon(env, tmp_path) as (d, events):
                await connected(agent, events)
                spk_server.kill()
                await events.wait_state("error", 5)
                # The speaker's reopen attempts come 1, 3 and 7 s after it failed: the mic
                # fails and is back in between, while the speaker is still missing.
                await asyncio.sleep(4.5)
                mic_server.kill()
                await events.wait_for(lambda e: e.get("type") == "error" and e.get("source") == "microphone", 5)
                mic_server.start()
                await wait_log(d, r"microphone 'vgone_mic' open", count=2, timeout=10)
                await asyncio.sleep(0.2)
                states = events.states()
                status, body = d.http("/healthz")
                log = d.log
    finally:
        mic_server.stop()
        spk_server.stop()
    assert states[-1] == "error", (states, log)
    assert status == 503 and "speaker" in body, (status, body)
    assert "microphone device is back" in log


async def test_a_speaker_that_appears_while_the_mic_is_open_is_opened(
    virtual_audio: VirtualAudio, tmp_path: Path
) -> None:
    """Boot with the USB speaker still off: the daemon runs in ``error`` with the mic open;
    when the speaker appears, it is opened and the daemon is back to normal."""
    spk_server = virtual_audio.gone_server()
    try:
        async with FakeAgent(FakeAgentOptions(port=0)) as agent:
            env = daemon_env(virtual_audio, agent, PI_AGENT_AUDIO__OUTPUT_DEVICE="vgone_spk")
            d = DaemonProcess(env, tmp_path).start()
            try:
                await d.wait_api()
                await wait_log(d, r"microphone 'vmic' open")
                await wait_log(d, r"speaker device failed")
                spk_server.start()
                await wait_log(d, r"speaker 'vgone_spk' open", timeout=10)  # attempts 3 and 7 s in
                assert d.http("/healthz")[0] == 200
            finally:
                d.stop()
    finally:
        spk_server.stop()
