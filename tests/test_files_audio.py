"""WAV-file microphone and speaker, and the playback buffer every output shares."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from pi_agent.audio import FRAME_BYTES, MIC_RATE
from pi_agent.audio.earcons import make_earcon
from pi_agent.audio.files import WavFileInput, WavFileOutput, read_wav, write_wav
from pi_agent.audio.buffer import PlaybackBuffer
from pi_agent.errors import DeviceError
from .support_audio import dominant_frequency, loud_segments, tone


def riff(
    path: Path, payload: bytes, *, tag: int, channels: int, rate: int, bits: int, extensible: bool = False
) -> Path:
    """Write a WAV by hand (formats the stdlib ``wave`` module cannot write)."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block, block, bits)
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", tag) + guid_tail
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


# --------------------------------------------------------------------------- reading WAVs


def test_read_wav_handles_common_encodings(tmp_path: Path) -> None:
    x = np.array([0, 16384, -16384, 32767, -32768], dtype=np.int16)
    write_wav(tmp_path / "a.wav", x, 22050)
    frames, rate = read_wav(tmp_path / "a.wav")
    assert rate == 22050 and frames.shape == (5, 1) and np.array_equal(frames[:, 0], x)

    u8 = riff(tmp_path / "u8.wav", bytes([128, 192, 64]), tag=1, channels=1, rate=8000, bits=8)
    assert read_wav(u8)[0][:, 0].tolist() == [0, 16384, -16384]

    s24 = b"".join(int(v).to_bytes(3, "little", signed=True) for v in (0, 0x400000, -0x400000))
    assert read_wav(riff(tmp_path / "s24.wav", s24, tag=1, channels=1, rate=48000, bits=24))[0][:, 0].tolist() == [
        0,
        16384,
        -16384,
    ]

    s32 = np.array([0, 1 << 30, -(1 << 30)], dtype="<i4").tobytes()
    assert read_wav(riff(tmp_path / "s32.wav", s32, tag=1, channels=1, rate=48000, bits=32))[0][:, 0].tolist() == [
        0,
        16384,
        -16384,
    ]

    f32 = np.array([0.0, 0.5, -0.5, 2.0, 0.25, -0.25], dtype="<f4").tobytes()
    frames, rate = read_wav(riff(tmp_path / "f32.wav", f32, tag=3, channels=2, rate=44100, bits=32, extensible=True))
    assert rate == 44100 and frames.tolist() == [[0, 16384], [-16384, 32767], [8192, -8192]]


def test_read_wav_rejects_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "x.wav").write_bytes(b"not a wav at all")
    with pytest.raises(ValueError, match="RIFF"):
        read_wav(tmp_path / "x.wav")
    with pytest.raises(ValueError, match="unsupported"):
        read_wav(riff(tmp_path / "alaw.wav", b"\x00\x00", tag=6, channels=1, rate=8000, bits=8))


# --------------------------------------------------------------------------- WAV microphone


@pytest.mark.slow
async def test_wav_input_delivers_paced_16k_frames_then_silence(tmp_path: Path) -> None:
    stereo = np.stack([tone(800, 0.5, 44100), tone(800, 0.5, 44100)], axis=1)
    write_wav(tmp_path / "in.wav", stereo, 44100)
    mic = WavFileInput(tmp_path / "in.wav")
    got: list[tuple[float, bytes]] = []
    opened = time.monotonic()
    await mic.open(lambda f: got.append((time.monotonic(), f)), lambda e: None)
    finished = await asyncio.wait_for(mic.wait_finished(), 5.0)
    await asyncio.sleep(0.5)
    await mic.close()
    count = len(got)
    await asyncio.sleep(0.1)
    assert len(got) == count  # closed: no more frames
    assert mic.duration == pytest.approx(0.5, abs=0.02)
    assert finished - opened == pytest.approx(0.5, abs=0.1)
    assert all(len(f) == FRAME_BYTES for _, f in got)
    # Real-time pacing: about one frame per 20 ms over the whole run.
    span = got[-1][0] - opened
    assert abs(len(got) - span / 0.020) <= 3
    audio = np.frombuffer(b"".join(f for _, f in got), dtype="<i2")
    segments = loud_segments(audio, MIC_RATE)
    assert len(segments) == 1
    start, end = segments[0]
    assert start < 160 and abs((end - start) / MIC_RATE - 0.5) <= 0.011
    assert abs(dominant_frequency(audio[start:end], MIC_RATE) - 800) < 4
    assert not np.any(audio[end + 320 :])  # then silence, like a quiet room


@pytest.mark.slow
async def test_wav_input_loops_and_leads_in(tmp_path: Path) -> None:
    write_wav(tmp_path / "in.wav", tone(500, 0.1, 16000), 16000)
    mic = WavFileInput(tmp_path / "in.wav", loop=True, lead_in=0.1)
    got: list[bytes] = []
    await mic.open(got.append, lambda e: None)
    await asyncio.sleep(0.45)
    await mic.close()
    audio = np.frombuffer(b"".join(got), dtype="<i2")
    assert not np.any(audio[:1600])  # the lead-in
    assert len(loud_segments(audio, MIC_RATE, min_gap_ms=1)) == 1  # back to back: one long sound
    assert np.array_equal(audio[1600:3200], audio[3200:4800])  # looping
    assert mic.finished


@pytest.mark.slow
async def test_wav_input_catches_up_after_a_blocked_loop_without_drift(tmp_path: Path) -> None:
    write_wav(tmp_path / "in.wav", tone(500, 2.0, 16000), 16000)
    mic = WavFileInput(tmp_path / "in.wav")
    got: list[bytes] = []
    opened = time.monotonic()
    await mic.open(got.append, lambda e: None)
    await asyncio.sleep(0.3)
    time.sleep(0.25)  # the event loop is blocked (a slow handler somewhere)
    await asyncio.sleep(0.4)
    elapsed = time.monotonic() - opened
    await mic.close()
    assert abs(len(got) - elapsed / 0.020) <= 3
    assert mic.overflows == 0
    audio = np.frombuffer(b"".join(got), dtype="<i2")
    assert np.array_equal(audio, tone(500, 2.0, 16000)[: len(audio)])  # nothing lost or repeated


async def test_wav_input_missing_file_is_a_device_error(tmp_path: Path) -> None:
    mic = WavFileInput(tmp_path / "nope.wav")
    with pytest.raises(DeviceError, match=r"nope\.wav"):
        await mic.open(lambda f: None, lambda e: None)
    await mic.close()


# --------------------------------------------------------------------------- WAV speaker


@pytest.mark.slow
async def test_wav_output_records_what_it_played_in_real_time(tmp_path: Path) -> None:
    out = WavFileOutput(tmp_path / "out.wav", rate=16000)
    await out.open(lambda e: None)
    await asyncio.sleep(0.2)
    played_at = time.monotonic()
    for chunk in np.array_split(tone(1000, 0.6, 24000), 12):  # 24 kHz agent audio in 50 ms chunks
        out.play(chunk.tobytes(), 24000)
    until = out.audible_until()
    assert until - played_at == pytest.approx(0.6, abs=0.05)
    await asyncio.sleep(until - time.monotonic() + 0.2)
    assert out.audible_until() <= time.monotonic()
    await out.close()
    await out.close()
    frames, rate = read_wav(tmp_path / "out.wav")
    x = frames[:, 0]
    assert rate == 16000
    segments = loud_segments(x, 16000)
    assert len(segments) == 1
    start, end = segments[0]
    assert abs((end - start) / 16000 - 0.6) <= 0.012  # resampler tail included: nothing cut off
    assert abs(start / 16000 - (played_at - out.opened_at)) <= 0.05  # the file is a timeline
    assert abs(dominant_frequency(x[start:end], 16000) - 1000) < 4
    assert out.underruns == 0


@pytest.mark.slow
async def test_wav_output_flush_stops_within_a_period(tmp_path: Path) -> None:
    out = WavFileOutput(tmp_path / "out.wav", rate=16000)
    await out.open(lambda e: None)
    played_at = time.monotonic()
    out.play(tone(440, 2.0, 16000).tobytes(), 16000)
    await asyncio.sleep(0.5)
    flushed_at = time.monotonic()
    out.flush()
    assert out.audible_until() <= flushed_at + 0.021
    await asyncio.sleep(0.2)
    await out.close()
    x = read_wav(tmp_path / "out.wav")[0][:, 0]
    ((start, end),) = loud_segments(x, 16000)
    assert abs((end - start) / 16000 - (flushed_at - played_at)) <= 0.03


@pytest.mark.slow
async def test_wav_output_counts_only_mid_stream_underruns(tmp_path: Path) -> None:
    out = WavFileOutput(tmp_path / "out.wav", rate=16000)
    await out.open(lambda e: None)
    await asyncio.sleep(0.1)
    assert out.underruns == 0  # silence with nothing queued is no underrun
    out.play(tone(440, 0.1, 16000).tobytes(), 16000)
    await asyncio.sleep(0.3)  # the network is late: the speaker runs dry mid-stream
    out.play(tone(440, 0.1, 16000).tobytes(), 16000)
    assert out.underruns == 1
    out.end_stream()
    await asyncio.sleep(0.3)
    out.play(tone(440, 0.1, 16000).tobytes(), 16000)  # a new turn after the end: fine
    assert out.underruns == 1
    await out.close()
    assert out.underruns == 1  # still reported after close


@pytest.mark.slow
async def test_wav_output_earcons(tmp_path: Path) -> None:
    out = WavFileOutput(tmp_path / "out.wav", rate=16000, earcons=("done",))
    await out.open(lambda e: None)
    now = time.monotonic()
    out.play_earcon("done")
    assert out.audible_until() - now == pytest.approx(len(make_earcon("done", 16000)) / 16000, abs=0.03)
    out.play_earcon("offline")  # switched off
    with pytest.raises(ValueError):
        out.play_earcon("fanfare")
    await asyncio.sleep(0.4)
    await out.close()
    x = read_wav(tmp_path / "out.wav")[0][:, 0]
    ((start, end),) = loud_segments(x, 16000, min_gap_ms=50)
    assert abs((end - start) / 16000 - 0.18) <= 0.02
    with pytest.raises(ValueError):
        WavFileOutput(tmp_path / "x.wav", earcons=("fanfare",))


async def test_wav_output_bad_path_is_a_device_error(tmp_path: Path) -> None:
    out = WavFileOutput(tmp_path / "no" / "such" / "dir.wav")
    with pytest.raises(DeviceError):
        await out.open(lambda e: None)
    out.play(b"\x00\x00", 16000)  # not open: dropped
    assert out.dropped_chunks == 1
    assert out.audible_until() == 0.0
    await out.close()


# --------------------------------------------------------------------------- the shared buffer


def test_buffer_hands_out_queued_audio_across_chunks_on_every_channel() -> None:
    buf = PlaybackBuffer(16000, channels=3)
    x = np.arange(1, 1001, dtype=np.int16)
    buf.play(x[:300].tobytes(), 16000)
    buf.play(x[300:].tobytes(), 16000)
    a = buf.fill(640, start=10.0).copy()
    b = buf.fill(640, start=10.04).copy()
    assert a.shape == (640, 3) and np.array_equal(a[:, 0], a[:, 2])
    assert np.array_equal(np.concatenate([a[:, 1], b[:360, 1]]), x)
    assert not np.any(b[360:])
    assert buf.played_frames == 1000 and buf.queued_frames == 0


def test_buffer_output_clock() -> None:
    buf = PlaybackBuffer(16000, latency=0.05)
    assert buf.audible_until(now=5.0) <= 5.0  # nothing queued
    buf.play(np.zeros(16000, dtype=np.int16) + 100, 16000)
    # Not pulled yet: starts after the latency estimate.
    assert buf.audible_until(now=5.0) == pytest.approx(6.05)
    buf.fill(320, start=5.1)  # the device says this period is heard from 5.1 s
    assert buf.audible_until(now=5.05) == pytest.approx(6.1)
    buf.flush()
    # What the device already holds is still heard; nothing after it.
    assert buf.audible_until(now=5.06) == pytest.approx(5.12)


def test_buffer_mixes_earcons_with_clipping() -> None:
    loud = np.full(4000, 32000, dtype=np.int16)
    buf = PlaybackBuffer(16000, earcons={"done": np.full(100, 5000.0, dtype=np.float32)})
    buf.play(loud, 16000)
    assert buf.play_earcon("done") and not buf.play_earcon("error")
    out = buf.fill(320, start=0.0)[:, 0]
    assert np.all(out[:100] == 32767)  # clipped, not wrapped around
    assert np.all(out[100:] == 32000)


def test_buffer_resamples_each_stream_and_resets_on_format_change() -> None:
    buf = PlaybackBuffer(48000)
    buf.play(tone(1000, 0.2, 16000), 16000)
    buf.play(tone(1000, 0.2, 8000), 8000)  # format change: the old stream's tail is kept
    buf.drain_tail()
    assert buf.queued_frames == pytest.approx(0.4 * 48000, abs=4)
    x = buf.fill(int(0.4 * 48000), start=0.0)[:, 0].copy()
    assert abs(dominant_frequency(x[:9000], 48000) - 1000) < 5
    assert abs(dominant_frequency(x[10500:], 48000) - 1000) < 5


def test_buffer_underruns_only_after_a_stream_started_playing() -> None:
    buf = PlaybackBuffer(48000)
    chunks = np.array_split(tone(500, 0.6, 8000), 15)  # 40 ms chunks
    buf.play(chunks[0], 8000)  # soxr holds all of it back for now
    assert buf.queued_frames == 0
    buf.fill(960, start=1.0)  # the device finds nothing yet: that is no underrun
    for chunk in chunks[1:8]:
        buf.play(chunk, 8000)
    assert buf.underruns == 0
    t = 1.02
    while buf.queued_frames:
        buf.fill(960, start=t)
        t += 0.02
    buf.fill(960, start=t)  # ran dry mid-stream ...
    buf.play(chunks[8], 8000)  # ... and the stream goes on: one underrun
    assert buf.underruns == 1


def test_buffer_is_audible_only_while_sound_plays_or_is_due() -> None:
    """What decides whether a device underflow could be heard (and is counted)."""
    buf = PlaybackBuffer(16000, earcons={"done": np.full(200, 5000.0, dtype=np.float32)})
    assert not buf.audible  # silence: a gap now is inaudible
    buf.play(np.full(320, 1000, dtype=np.int16), 16000)
    assert buf.audible
    buf.fill(4000, 0.0)  # everything played, but the stream goes on: more is due
    assert buf.audible
    buf.end_stream()
    buf.fill(4000, 0.25)
    assert not buf.audible
    buf.play_earcon("done")
    assert buf.audible
    buf.fill(320, 0.5)
    assert not buf.audible
    buf.play(np.full(320, 1000, dtype=np.int16), 16000)
    buf.flush()
    assert not buf.audible
