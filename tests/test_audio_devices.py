"""The real PyAudio -> PortAudio -> ALSA path, on virtual devices (see support_audio).

Every test initialises PortAudio itself (through the backends) after the
``alsa_devices`` fixture has pointed ALSA at the private configuration, and
closes what it opened, so the tests do not see each other's devices.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest

from pi_agent.audio import FRAME_BYTES, MIC_RATE, listing, native
from pi_agent.audio import portaudio as pa_direct
from pi_agent.audio import formats as F
from pi_agent.audio.capture import PyAudioInput
from pi_agent.audio.playback import PyAudioOutput
from pi_agent.errors import DeviceError
from .support_audio import (
    SPK_RATE,
    TimedRecording,
    VirtualAudio,
    dominant_frequency,
    loud_segments,
    speech,
    tone,
)
from .support_wait import wait_until

pytestmark = pytest.mark.audio

ALL_NAMES = ["vmic", "vspk", "pi_test_mic", "pi_test_mic48", "pi_test_mic_stereo", "pi_test_spk"]


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` on the loop until true; fail the test after ``timeout`` seconds."""
    await wait_until(condition, timeout, what, poll=0.01)


async def capture(mic: PyAudioInput, frames: int, timeout: float = 10.0) -> tuple[list[bytes], list[DeviceError]]:
    got: list[bytes] = []
    errors: list[DeviceError] = []
    await mic.open(got.append, errors.append)
    try:
        await wait_for(lambda: len(got) >= frames or bool(errors), timeout, f"{frames} mic frames")
    finally:
        await mic.close()
    return got, errors


async def wait_until_heard(out: PyAudioOutput, extra: float = 0.0) -> None:
    await wait_for(lambda: out.audible_until() <= time.monotonic(), 10.0, "queued audio to be heard")
    if extra:
        await asyncio.sleep(extra)


# --------------------------------------------------------------------------- lookup


def test_listing_shows_every_device_and_its_16k_ability(alsa_devices: VirtualAudio) -> None:
    listed = {d.name: d for d in listing.list_devices()}
    assert set(ALL_NAMES) <= set(listed)
    assert listed["vmic"].input_16k is True
    assert listed["vspk"].output_16k is True
    assert listed["vmic"].output_16k is False  # a monitor source cannot be played into
    table = listing.format_device_table(list(listed.values()))
    for name in ALL_NAMES:
        assert name in table
    assert "16k in" in table and "index" in table


def test_lookup_by_exact_name_part_and_default(alsa_devices: VirtualAudio) -> None:
    with native.portaudio() as pa:
        # An exact name wins even though it is also part of other names.
        assert listing.resolve("pi_test_mic", "input", pa=pa).name == "pi_test_mic"
        assert listing.resolve("mic48", "input", pa=pa).name == "pi_test_mic48"
        assert listing.resolve("VSPK", "output", pa=pa).name == "vspk"
        default = listing.resolve("default", "input", pa=pa)
        assert default.default_input


def test_ambiguous_name_fails_with_the_device_list(alsa_devices: VirtualAudio) -> None:
    with pytest.raises(DeviceError) as err:
        listing.resolve("test_mic", "input")
    message = str(err.value)
    assert "ambiguous" in message
    for name in ALL_NAMES:
        assert name in message


def test_unknown_name_fails_with_the_device_list(alsa_devices: VirtualAudio) -> None:
    with pytest.raises(DeviceError) as err:
        listing.resolve("USB PnP Sound Device", "output")
    message = str(err.value)
    assert "no output device matches 'USB PnP Sound Device'" in message
    for name in ALL_NAMES:
        assert name in message
    assert "16k out" in message


async def test_opening_a_missing_device_raises_device_error(alsa_devices: VirtualAudio) -> None:
    mic = PyAudioInput("no such mic")
    with pytest.raises(DeviceError, match="no input device matches 'no such mic'"):
        await mic.open(lambda frame: None, lambda error: None)
    await mic.close()  # safe after a failed open
    await mic.close()


# --------------------------------------------------------------------------- capture


async def test_speech_reaches_the_loop_as_exact_16k_frames(alsa_devices: VirtualAudio, tmp_path) -> None:
    spoken = speech("Turn on the kitchen lights, please.", tmp_path)
    if spoken is None:  # no espeak-ng: a chirp is as good for sample integrity
        t = np.arange(MIC_RATE) / MIC_RATE
        signal = np.round(8000 * np.sin(2 * np.pi * (200 + 1500 * t) * t)).astype(np.int16)
    else:
        signal = F.resample(spoken[0], spoken[1], MIC_RATE)
    signal = signal[: 2 * MIC_RATE]
    alsa_devices.set_mic_samples("pi_test_mic", signal)
    mic = PyAudioInput("pi_test_mic")
    frames_needed = len(signal) // 320 + 5
    started = time.monotonic()
    got, errors = await capture(mic, frames_needed)
    elapsed = time.monotonic() - started
    assert not errors
    assert mic.rate == MIC_RATE and mic.channels == 1  # the device accepts 16 kHz: no resampling
    assert all(len(frame) == FRAME_BYTES for frame in got)
    received = np.frombuffer(b"".join(got), dtype="<i2")
    assert np.array_equal(received[: len(signal)], signal)
    assert mic.overflows == 0
    # Paced like a real microphone, not delivered in a burst.
    assert elapsed >= 0.8 * len(got) * 0.020


async def test_48k_capture_is_resampled_to_16k_at_the_right_pitch_and_length(alsa_devices: VirtualAudio) -> None:
    # The pulse-backed device would accept 16 kHz; force its native-rate path as a 48 kHz-only USB mic needs.
    source = np.concatenate([tone(1000, 0.5, 48000), np.zeros(24000, dtype=np.int16)])
    alsa_devices.set_mic_samples("pi_test_mic48", source)
    mic = PyAudioInput("pi_test_mic48", rate=48000)
    got, errors = await capture(mic, 60)
    assert not errors and mic.rate == 48000
    x = np.frombuffer(b"".join(got), dtype="<i2")
    segments = loud_segments(x, MIC_RATE)
    assert len(segments) == 1
    start, end = segments[0]
    assert abs((end - start) / MIC_RATE - 0.5) <= 0.011
    assert abs(dominant_frequency(x[start:end], MIC_RATE) - 1000) < 5


async def test_stereo_mic_picks_a_channel_or_mixes_both(alsa_devices: VirtualAudio) -> None:
    left, right = tone(440, 1.0, MIC_RATE), tone(1500, 1.0, MIC_RATE)
    alsa_devices.set_mic_samples("pi_test_mic_stereo", np.stack([left, right], axis=1))
    results = {}
    for channel in (0, 1, None):
        mic = PyAudioInput("pi_test_mic_stereo", channel=channel, channels=2)
        got, errors = await capture(mic, 40)
        assert not errors and mic.channels == 2
        results[channel] = np.frombuffer(b"".join(got), dtype="<i2")[:12000]
    assert np.array_equal(results[0], left[:12000])
    assert np.array_equal(results[1], right[:12000])
    mixed = results[None].astype(np.int32)
    assert np.max(np.abs(mixed - (left[:12000].astype(np.int32) + right[:12000]) / 2)) <= 1


async def test_channel_that_does_not_exist_is_a_device_error(alsa_devices: VirtualAudio) -> None:
    mic = PyAudioInput("pi_test_mic_stereo", channel=1, channels=1)
    with pytest.raises(DeviceError):
        await mic.open(lambda frame: None, lambda error: None)
    await mic.close()


async def test_pulse_mic_hears_what_is_played_into_it(alsa_devices: VirtualAudio) -> None:
    signal = np.concatenate([tone(600, 0.4, MIC_RATE), np.zeros(3200, np.int16), tone(900, 0.4, MIC_RATE)])
    mic = PyAudioInput("vmic")
    got: list[bytes] = []
    errors: list[DeviceError] = []
    await mic.open(got.append, errors.append)
    try:
        await wait_for(lambda: mic.callbacks > 10, 5.0, "the capture to run")
        player = alsa_devices.play_into_mic(signal)
        await wait_for(lambda: player.poll() is not None, 10.0, "pacat to finish")
        await asyncio.sleep(0.3)
    finally:
        await mic.close()
    assert not errors
    x = np.frombuffer(b"".join(got), dtype="<i2")
    segments = loud_segments(x, MIC_RATE)
    assert len(segments) == 2
    for (start, end), freq in zip(segments, (600, 900), strict=False):
        assert abs((end - start) / MIC_RATE - 0.4) <= 0.011
        assert abs(dominant_frequency(x[start:end], MIC_RATE) - freq) < 5


# --------------------------------------------------------------------------- playback

FORMAT_TONES = {
    "pcm_8000": 500,
    "pcm_16000": 700,
    "pcm_22050": 900,
    "pcm_24000": 1100,
    "pcm_44100": 1300,
    "pcm_48000": 1500,
    "ulaw_8000": 600,
}


def wire_bytes(fmt: str, samples: np.ndarray) -> bytes:
    return F.ulaw_encode(samples) if fmt.startswith("ulaw") else samples.astype("<i2").tobytes()


async def test_every_agent_format_plays_at_the_right_pitch_and_duration(alsa_devices: VirtualAudio) -> None:
    recorder = alsa_devices.record_speaker()
    recorder.wait_started()
    out = PyAudioOutput("vspk", rate=SPK_RATE)
    errors: list[DeviceError] = []
    await out.open(errors.append)
    try:
        assert out.rate == SPK_RATE and out.channels == 2
        await wait_for(lambda: out.callbacks > 10, 5.0, "the output to run")
        for fmt, freq in FORMAT_TONES.items():
            rate = F.FORMATS[fmt].rate
            wire = wire_bytes(fmt, tone(freq, 0.3, rate))
            step = F.FORMATS[fmt].bytes_per_sample * rate // 25  # 40 ms chunks, as a server sends them
            for i in range(0, len(wire), step):
                samples, samples_rate = F.decode(fmt, wire[i : i + step])
                out.play(samples.tobytes(), samples_rate)
            out.end_stream()  # this "turn" is complete: the gap after it is no underrun
            await wait_until_heard(out, extra=0.12)
    finally:
        await out.close()
        recorded = recorder.stop()
    assert not errors
    assert np.array_equal(recorded[:, 0], recorded[:, 1])  # the same signal on both channels
    x = recorded[:, 0]
    segments = loud_segments(x, SPK_RATE)
    assert len(segments) == len(FORMAT_TONES), segments
    for (start, end), (fmt, freq) in zip(segments, FORMAT_TONES.items(), strict=False):
        duration = (end - start) / SPK_RATE
        assert abs(duration - 0.3) <= 0.012, (fmt, duration)
        body = x[start + 480 : end - 480]
        assert abs(dominant_frequency(body, SPK_RATE) - freq) < freq * 0.005, fmt
        # No clicks at the 40 ms chunk joins: every step fits a sine of this pitch and level.
        max_step = 2 * np.pi * freq / SPK_RATE * 0.3 * 32767 * 1.15 + 30
        assert np.max(np.abs(np.diff(body.astype(np.int32)))) <= max_step, fmt
    assert out.underruns == 0


async def test_file_speaker_receives_the_exact_samples(alsa_devices: VirtualAudio) -> None:
    rng = np.random.default_rng(7)
    signal = rng.integers(1000, 20000, 16000).astype(np.int16) * rng.choice([-1, 1], 16000).astype(np.int16)
    out = PyAudioOutput("pi_test_spk", rate=16000, channels=1)
    await out.open(lambda error: None)
    try:
        assert out.channels == 1
        pos = 0
        for size in rng.integers(50, 2000, 100):
            out.play(signal[pos : pos + size].tobytes(), 16000)
            pos += int(size)
            if pos >= len(signal):
                break
        await wait_until_heard(out, extra=0.1)
    finally:
        await out.close()
    written = alsa_devices.speaker_file_samples(1)[:, 0]
    first = int(np.nonzero(written)[0][0])
    assert np.array_equal(written[first : first + len(signal)], signal)
    assert not np.any(written[first + len(signal) :])


async def test_flush_silences_the_speaker_within_one_period(alsa_devices: VirtualAudio) -> None:
    recorder = alsa_devices.record_speaker()
    recorder.wait_started()
    out = PyAudioOutput("vspk", rate=SPK_RATE)  # the default period
    await out.open(lambda error: None)
    try:
        await wait_for(lambda: out.callbacks > 10, 5.0, "the output to run")
        played_at = time.monotonic()
        out.play(tone(440, 3.0, 16000).tobytes(), 16000)
        await asyncio.sleep(0.6)
        flushed_at = time.monotonic()
        out.flush()
        assert out.audible_until() <= flushed_at + (out.latency or 0.0) + 0.08
        await asyncio.sleep(0.4)
    finally:
        await out.close()
        recorded = recorder.stop()[:, 0]
    segments = loud_segments(recorded, SPK_RATE)
    assert len(segments) == 1
    heard = (segments[0][1] - segments[0][0]) / SPK_RATE
    # Start and end reach the speaker through the same device latency, so the tone lasts
    # as long as it was queued, give or take one period (plus scheduling slack).
    print("FLUSH heard", heard, "expected", flushed_at - played_at)
    assert abs(heard - (flushed_at - played_at)) <= 0.05, heard


async def test_earcons_mix_over_speech_and_count_as_audible(alsa_devices: VirtualAudio) -> None:
    recorder = alsa_devices.record_speaker()
    recorder.wait_started()
    out = PyAudioOutput("vspk", rate=SPK_RATE, earcons=("listening", "done"))
    await out.open(lambda error: None)
    try:
        await wait_for(lambda: out.callbacks > 10, 5.0, "the output to run")
        now = time.monotonic()
        out.play_earcon("listening")  # alone: it alone keeps the speaker busy
        until = out.audible_until()
        assert now + 0.15 <= until <= now + 0.6
        await wait_until_heard(out, extra=0.2)
        out.play(tone(300, 0.8, 16000).tobytes(), 16000)
        await asyncio.sleep(0.3)
        out.play_earcon("done")
        out.play_earcon("error")  # not enabled: silently skipped
        await wait_until_heard(out, extra=0.1)
    finally:
        await out.close()
        recorded = recorder.stop()[:, 0]
    segments = loud_segments(recorded, SPK_RATE, min_gap_ms=100)
    assert len(segments) == 2, segments
    alone = recorded[segments[0][0] : segments[0][1]]
    assert 0.15 <= len(alone) / SPK_RATE <= 0.25
    assert dominant_frequency(alone[: int(0.06 * SPK_RATE)], SPK_RATE) == pytest.approx(660, rel=0.02)
    speech_part = recorded[segments[1][0] : segments[1][1]]
    assert abs(len(speech_part) / SPK_RATE - 0.8) <= 0.03  # the earcon did not lengthen or cut the speech
    spectrum = np.abs(np.fft.rfft(speech_part.astype(np.float64)))
    freqs = np.fft.rfftfreq(len(speech_part), 1 / SPK_RATE)

    def energy(f: float) -> float:
        return float(spectrum[(freqs > f - 15) & (freqs < f + 15)].max())

    assert energy(300) > 0 and energy(990) > 0.05 * energy(300) and energy(660) > 0.05 * energy(300)
    assert energy(220) < 0.01 * energy(300)  # no "error" buzz: it is disabled


# --------------------------------------------------------------------------- device trouble


async def test_vanished_speaker_is_reported_once_and_can_be_reopened(alsa_devices: VirtualAudio) -> None:
    server = alsa_devices.gone_server()
    server.start()
    errors: list[DeviceError] = []
    out = PyAudioOutput("vgone_spk", stall_timeout=0.5)
    try:
        await out.open(errors.append)
        out.play(tone(440, 4.0, 16000).tobytes(), 16000)  # the stream runs while something plays
        await wait_for(lambda: out.callbacks > 15, 5.0, "the output to run")
        server.kill()  # the USB speaker is pulled out
        await wait_for(lambda: bool(errors), 3.0, "the failure report")
        await asyncio.sleep(0.6)
        assert len(errors) == 1 and isinstance(errors[0], DeviceError)
        assert "vgone_spk" in str(errors[0])
        await out.close()
        out.play(tone(440, 0.1, 16000).tobytes(), 16000)  # while closed: dropped, no error
        with pytest.raises(DeviceError, match="vgone_spk"):
            await out.open(errors.append)  # the device is gone from the list now
        server.start()  # plugged in again
        await out.open(errors.append)
        out.play(tone(440, 4.0, 16000).tobytes(), 16000)
        await wait_for(lambda: out.callbacks > 5, 5.0, "the reopened output to run")
        assert len(errors) == 1
    finally:
        await out.close()
        server.stop()


async def test_stalled_microphone_is_caught_by_the_watchdog(alsa_devices: VirtualAudio) -> None:
    server = alsa_devices.gone_server()
    server.start()
    errors: list[DeviceError] = []
    frames: list[bytes] = []
    mic = PyAudioInput("vgone_mic", stall_timeout=0.5, close_timeout=1.0)
    try:
        await mic.open(frames.append, errors.append)
        await wait_for(lambda: mic.callbacks > 15, 5.0, "the capture to run")
        server.freeze()  # callbacks stop coming, and PortAudio reports nothing
        frozen_at = time.monotonic()
        await wait_for(lambda: bool(errors), 3.0, "the watchdog")
        assert time.monotonic() - frozen_at < 2.0
        assert "stalled" in str(errors[0])
        started = time.monotonic()
        await mic.close()  # must not hang on the frozen server
        assert time.monotonic() - started < 2.5
        assert len(errors) == 1
    finally:
        server.kill()
        await mic.close()


async def test_microphone_and_speaker_open_and_close_concurrently(alsa_devices: VirtualAudio) -> None:
    mic, out = PyAudioInput("vmic"), PyAudioOutput("vspk")
    frames: list[bytes] = []
    errors: list[DeviceError] = []
    await asyncio.gather(mic.open(frames.append, errors.append), out.open(errors.append))
    try:
        out.play(tone(440, 0.3, 16000).tobytes(), 16000)
        await wait_for(lambda: len(frames) >= 25 and out.callbacks > 25, 5.0, "both streams to run")
        assert out.rate == 44100  # the device's default rate: 16 kHz agent audio is resampled
    finally:
        await asyncio.gather(mic.close(), out.close())
    assert not errors
    await asyncio.gather(mic.close(), out.close())  # idempotent


# --------------------------------------------------------------------------- standby, restart, lead-in, idle reads


def first_loud(recording: TimedRecording, samples: np.ndarray, after: float, threshold: int = 300) -> float:
    """When the first sample louder than ``threshold`` after ``after`` (monotonic) was played."""
    start = max(0, recording.index_at(after) - SPK_RATE // 100)
    loud = np.nonzero(np.abs(samples[start:].astype(np.int32)) > threshold)[0]
    assert len(loud), "nothing loud was played"
    return float(recording.time_of(start + int(loud[0])))


def last_loud(recording: TimedRecording, samples: np.ndarray, threshold: int = 100) -> float:
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > threshold)[0]
    assert len(loud), "nothing loud was played"
    return float(recording.time_of(int(loud[-1])))


async def test_a_stopped_speaker_makes_no_callbacks_and_its_first_sound_starts_it_at_once(
    alsa_devices: VirtualAudio, tmp_path
) -> None:
    """Nothing plays: the stream stops and nothing wakes for it. A sound starts it again,
    and its first sample reaches the sink at once (it waits behind no queue), every time."""
    recording = TimedRecording(alsa_devices.server, "spk.monitor", tmp_path)
    out = PyAudioOutput("vspk", rate=SPK_RATE, period_ms=20, standby_after=0.3)
    errors: list[DeviceError] = []
    onsets, lengths = [], []
    try:
        await out.open(errors.append)
        for _ in range(2):
            await wait_for(lambda: not out.running, 3.0, "the stream to stop")
            before = out.callbacks
            await asyncio.sleep(1.0)
            assert out.callbacks == before  # stopped: not a single callback
            played_at = time.monotonic()
            out.play(tone(440, 0.3, 16000).tobytes(), 16000)
            assert out.running
            await wait_until_heard(out, extra=0.1)
            onsets.append(played_at)
    finally:
        await out.close()
        recorded = recording.stop()[:, 0]
    assert not errors
    segments = loud_segments(recorded, SPK_RATE)
    assert len(segments) == 2, segments
    for (start, end), played_at in zip(segments, onsets, strict=True):
        lengths.append((end - start) / SPK_RATE)
        onset = float(recording.time_of(start)) - played_at
        print(f"ONSET after a stop: {1000 * onset:.1f} ms")
        assert onset < 0.012, onset  # a running stream's queue (2 periods = 40 ms here) is not waited for
    assert all(abs(length - 0.3) <= 0.012 for length in lengths), lengths  # the start is not clipped
    assert out.starts == 2


async def test_a_sound_does_not_wait_behind_the_silence_a_running_stream_holds(
    alsa_devices: VirtualAudio, tmp_path
) -> None:
    """Within the standby time the stream runs on silence: a new sound restarts it instead
    of queueing behind what the device holds (four 40 ms periods would be 80-160 ms). (0.4 s:
    at 40 ms periods a shorter first sound waits for the device's read-ahead, issue 25.)"""
    recording = TimedRecording(alsa_devices.server, "spk.monitor", tmp_path)
    out = PyAudioOutput("vspk", rate=SPK_RATE, period_ms=40, standby_after=30.0)
    try:
        await out.open(lambda error: None)
        await wait_for(lambda: out.callbacks > 10, 5.0, "the output to run")
        assert out.running
        played_at = time.monotonic()
        out.play(tone(440, 0.4, 16000).tobytes(), 16000)
        await wait_until_heard(out, extra=0.1)
    finally:
        await out.close()
        recorded = recording.stop()[:, 0]
    onset = first_loud(recording, recorded, played_at) - played_at
    print(f"ONSET on a running stream: {1000 * onset:.1f} ms")
    assert onset < 0.012, onset


@pytest.mark.parametrize("period_ms", [10, 40])
async def test_flush_drops_what_the_device_holds_whatever_the_period(
    alsa_devices: VirtualAudio, tmp_path, period_ms: int
) -> None:
    """An interruption aborts the stream: the speaker is silent at once, not a period or
    two later; the next sound starts it again."""
    recording = TimedRecording(alsa_devices.server, "spk.monitor", tmp_path)
    out = PyAudioOutput("vspk", rate=SPK_RATE, period_ms=period_ms)
    try:
        await out.open(lambda error: None)
        out.play(tone(440, 3.0, 16000).tobytes(), 16000)
        await asyncio.sleep(0.6)
        flushed_at = time.monotonic()
        out.flush()
        assert out.audible_until() <= flushed_at + 0.002
        assert not out.running
        await asyncio.sleep(0.4)
        recorded = recording.stop()[:, 0]
        again_at = time.monotonic()
        out.play(tone(660, 0.2, 16000).tobytes(), 16000)  # and it plays again
        await wait_until_heard(out, extra=0.05)
    finally:
        await out.close()
    silent_after = last_loud(recording, recorded) - flushed_at
    print(f"FLUSH with {period_ms} ms periods: last sound {1000 * silent_after:.1f} ms after the flush")
    assert silent_after < 0.012, silent_after
    assert out.starts >= 1 and time.monotonic() > again_at


async def test_the_lead_in_plays_silence_first_after_a_stop_and_only_then(alsa_devices: VirtualAudio,
                                                                            tmp_path) -> None:
    """audio.lead_in: after a stop, the sink gets that much silence before the sound (a sink
    that wakes slowly swallows it instead of the first syllable); the sound is whole, and
    audible_until() counts the lead-in. A sound while the stream runs gets none."""
    recording = TimedRecording(alsa_devices.server, "spk.monitor", tmp_path)
    out = PyAudioOutput("vspk", rate=SPK_RATE, standby_after=0.3, lead_in=0.25)
    try:
        await out.open(lambda error: None)
        await wait_for(lambda: not out.running, 3.0, "the stream to stop")
        first_at = time.monotonic()
        out.play(tone(440, 0.3, 16000).tobytes(), 16000)
        until = out.audible_until()
        await asyncio.sleep(0.7)  # heard, and the stream still runs (standby 0.3 s after it)
        assert out.running
        second_at = time.monotonic()
        out.play(tone(660, 0.3, 16000).tobytes(), 16000)
        await wait_until_heard(out, extra=0.1)
    finally:
        await out.close()
        recorded = recording.stop()[:, 0]
    segments = loud_segments(recorded, SPK_RATE, min_gap_ms=100)
    assert len(segments) == 2, segments
    first = float(recording.time_of(segments[0][0])) - first_at
    second = float(recording.time_of(segments[1][0])) - second_at
    print(f"LEAD-IN: first sound {1000 * first:.1f} ms after play (lead-in 250), next {1000 * second:.1f} ms")
    assert 0.23 <= first <= 0.27, first  # the null sink mixes up to 10 ms ahead of its clock
    assert abs(until - (first_at + 0.25 + 0.3)) <= 0.03, until - first_at
    assert second < 0.012, second  # the stream ran: no lead-in
    for start, end in segments:
        assert abs((end - start) / SPK_RATE - 0.3) <= 0.012  # whole


@pytest.mark.parametrize("how", ["killed", "frozen"])
async def test_a_speaker_that_vanishes_while_stopped_is_reported(alsa_devices: VirtualAudio, how: str) -> None:
    """Nothing plays, so no callback shows the speaker is gone: the start-and-stop it gets
    every probe_every seconds fails (or never returns: a frozen sound server) and says so,
    once; closing does not hang; it opens again when the device is back."""
    server = alsa_devices.gone_server()
    server.start()
    errors: list[DeviceError] = []
    out = PyAudioOutput("vgone_spk", standby_after=0.2, probe_every=0.5)
    try:
        await out.open(errors.append)
        await wait_for(lambda: not out.running, 5.0, "the stream to stop")
        await asyncio.sleep(1.2)  # a few probes while the device is there: no error
        assert not errors
        if how == "killed":
            server.kill()
        else:
            server.freeze()
        gone_at = time.monotonic()
        await wait_for(lambda: bool(errors), 3.0, "the failure report")
        reported_after = time.monotonic() - gone_at
        await asyncio.sleep(0.6)
        assert len(errors) == 1 and "vgone_spk" in str(errors[0]), errors
        started = time.monotonic()
        await out.close()
        assert time.monotonic() - started < 2.5
        print(f"VANISHED while stopped ({how}): reported after {reported_after:.2f} s")
        server.kill()
        server.start()  # plugged in again
        await out.open(errors.append)
        out.play(tone(440, 1.0, 16000).tobytes(), 16000)
        await wait_for(lambda: out.callbacks > 5, 5.0, "the reopened output to run")
        assert len(errors) == 1
    finally:
        await out.close()
        server.kill()
        server.stop()


async def test_idle_reads_bring_several_frames_at_once_and_lose_none(alsa_devices: VirtualAudio) -> None:
    """Not at low latency the microphone is read every idle_read_ms, several frames at a
    time; switched to low latency, what piled up comes at once, then a frame every 20 ms.
    Every sample arrives, in order, across both switches."""
    t = np.arange(4 * MIC_RATE) / MIC_RATE
    signal = np.round(8000 * np.sin(2 * np.pi * (300 + 200 * t) * t)).astype(np.int16)
    alsa_devices.set_mic_samples("pi_test_mic", signal)
    mic = PyAudioInput("pi_test_mic", idle_read_ms=200)
    mic.set_low_latency(False)
    got: list[tuple[float, bytes]] = []
    errors: list[DeviceError] = []
    await mic.open(lambda frame: got.append((time.monotonic(), frame)), errors.append)
    try:
        assert mic.batched
        await asyncio.sleep(1.5)
        switched_at = time.monotonic()
        mic.set_low_latency(True)
        await asyncio.sleep(1.0)
        mic.set_low_latency(False)
        await wait_for(lambda: len(got) * 320 >= len(signal) + 1600, 6.0, "the whole signal")
    finally:
        await mic.close()
    assert not errors and mic.overflows == 0
    received = np.frombuffer(b"".join(frame for _, frame in got), dtype="<i2")
    assert np.array_equal(received[: len(signal)], signal)  # nothing lost at either switch
    times = np.array([at for at, _ in got])
    idle = times[(times > times[0] + 0.3) & (times < switched_at)]
    batches = np.split(idle, np.nonzero(np.diff(idle) > 0.005)[0] + 1)
    print(f"IDLE: {len(idle)} frames in {len(batches)} deliveries")
    assert np.median([len(b) for b in batches]) >= 8  # ~10 frames a read, not one
    fast = times[(times > switched_at) & (times < switched_at + 1.0)]
    assert fast[0] - switched_at < 0.03  # the frames that piled up, at once
    steady = fast[fast > fast[0] + 0.1]
    gaps = np.diff(steady)
    print(f"LOW LATENCY: first delivery {1000 * (fast[0] - switched_at):.1f} ms after the switch, "
          f"median gap {1000 * np.median(gaps):.1f} ms")
    assert 0.015 <= float(np.median(gaps)) <= 0.025  # a frame every 20 ms


async def test_a_microphone_that_refuses_a_long_buffer_is_read_every_period(
    alsa_devices: VirtualAudio, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Some device will not open with a second of buffer: the microphone still works, read
    every period through PyAudio's own stream, and the log says so."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise pa_direct.PortAudioError(-9986, "Pa_OpenStream: Invalid number of periods (stand-in)")

    monkeypatch.setattr(pa_direct, "BlockingInput", refuse)
    signal = tone(500, 1.0, MIC_RATE)
    alsa_devices.set_mic_samples("pi_test_mic", signal)
    mic = PyAudioInput("pi_test_mic", idle_read_ms=200)
    mic.set_low_latency(False)
    frames, errors = await capture(mic, 40)
    assert not errors and not mic.batched
    received = np.frombuffer(b"".join(frames), dtype="<i2")
    assert np.array_equal(received[: len(signal)], signal[: len(received)])
    assert "reading it every period instead" in caplog.text
