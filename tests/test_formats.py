"""The pure audio layer: formats, mu-law, streaming resampling, channels, levels, frames."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_agent.audio import FRAME_BYTES, MIC_RATE
from pi_agent.audio import formats as F
from pi_agent.audio.earcons import EARCON_NAMES, make_earcon, make_earcons
from pi_agent.errors import ProtocolError
from .support_audio import dominant_frequency, tone

ALL_FORMATS = ["pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000"]


def test_format_table_names_every_agent_format() -> None:
    assert sorted(F.FORMATS) == sorted(ALL_FORMATS)
    for name, fmt in F.FORMATS.items():
        assert fmt.name == name
        assert fmt.rate == int(name.split("_")[1])
        assert fmt.encoding == ("ulaw" if name.startswith("ulaw") else "pcm")


def test_unknown_format_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="pcm_96000"):
        F.decode("pcm_96000", b"\x00\x00")


@pytest.mark.parametrize("name", [n for n in ALL_FORMATS if n.startswith("pcm")])
def test_decode_pcm(name: str) -> None:
    x = np.array([0, 1, -1, 32767, -32768, 1234], dtype="<i2")
    samples, rate = F.decode(name, x.tobytes())
    assert rate == F.FORMATS[name].rate
    assert samples.dtype == np.int16
    assert np.array_equal(samples, x)
    pcm, rate2 = F.decode_pcm(name, x.tobytes())
    assert pcm == x.tobytes() and rate2 == rate


@pytest.mark.parametrize("name", [n for n in ALL_FORMATS if n.startswith("pcm")])
def test_odd_pcm_length_is_a_protocol_error(name: str) -> None:
    with pytest.raises(ProtocolError, match="3 bytes"):
        F.decode(name, b"\x00\x01\x02")


def test_decode_empty_chunk() -> None:
    samples, rate = F.decode("pcm_16000", b"")
    assert len(samples) == 0 and rate == 16000


def _audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop  # removed in Python 3.13
        except ImportError:
            return None
    return audioop


def test_ulaw_matches_the_reference_codec_on_every_value() -> None:
    audioop = _audioop()
    if audioop is None:
        pytest.skip("audioop (the reference) is gone in this Python")
    every = np.arange(-32768, 32768, dtype=np.int16)
    assert F.ulaw_encode(every) == audioop.lin2ulaw(every.tobytes(), 2)
    codes = bytes(range(256))
    assert np.array_equal(F.ulaw_decode(codes), np.frombuffer(audioop.ulaw2lin(codes, 2), dtype="<i2"))


def test_ulaw_known_values() -> None:
    # G.711: 0xFF and 0x7F are the two zeros, 0x80/0x00 the extremes.
    assert F.ulaw_decode(b"\xff\x7f\x80\x00").tolist() == [0, 0, 32124, -32124]
    assert F.ulaw_encode(np.array([0, 32767, -32768], dtype=np.int16)) == b"\xff\x80\x00"


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=200))
@settings(max_examples=200, deadline=None)
def test_ulaw_round_trip_error_is_bounded(values: list[int]) -> None:
    x = np.array(values, dtype=np.int16)
    y = F.ulaw_decode(F.ulaw_encode(x)).astype(np.int32)
    err = np.abs(y - x.astype(np.int32))
    # mu-law keeps ~13 bits of relative precision: the step is at most 1/16 of the magnitude + a small floor.
    assert np.all(err <= np.abs(x.astype(np.int32)) // 16 + 36)


def test_ulaw_decode_gives_a_tone_at_8k() -> None:
    x = tone(1000, 0.5, 8000)
    samples, rate = F.decode("ulaw_8000", F.ulaw_encode(x))
    assert rate == 8000 and len(samples) == len(x)
    assert abs(dominant_frequency(samples, rate) - 1000) < 5


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize(
    "src,dst", [(16000, 48000), (8000, 48000), (22050, 48000), (48000, 16000), (44100, 16000), (24000, 44100)]
)
def test_streaming_resampler_is_seamless_across_chunks(src: int, dst: int) -> None:
    x = tone(440, 1.0, src)
    rng = np.random.default_rng(1)
    r = F.Resampler(src, dst)
    out, pos = [], 0
    while pos < len(x):
        n = int(rng.integers(1, 900))
        out.append(r.process(x[pos : pos + n]))
        pos += n
    out.append(r.flush())
    chunked = np.concatenate(out)
    whole = F.resample(x, src, dst)
    assert abs(len(chunked) - len(x) * dst / src) <= 2
    n = min(len(chunked), len(whole))
    # Same signal as a one-shot conversion: no clicks or gaps at chunk joins.
    middle = slice(n // 10, n - n // 10)
    assert np.max(np.abs(chunked[middle].astype(int) - whole[middle].astype(int))) <= 40
    assert abs(dominant_frequency(chunked, dst) - 440) < 2
    # The signal stays smooth: sample-to-sample steps no bigger than the sine's own slope allows.
    max_step = 2 * np.pi * 440 / dst * 0.3 * 32767 * 1.1 + 2
    assert np.max(np.abs(np.diff(chunked[middle].astype(int)))) <= max_step


def test_resampler_holds_a_tail_until_flush_and_reports_it() -> None:
    r = F.Resampler(8000, 48000)
    y = r.process(tone(300, 0.1, 8000))
    assert r.pending and r.held == 4800 - len(y) > 0
    tail = r.flush()
    assert len(y) + len(tail) == 4800
    assert not r.pending and r.held == 0


def test_resampler_passthrough_and_validation() -> None:
    r = F.Resampler(16000, 16000)
    x = tone(440, 0.01, 16000)
    assert r.passthrough and np.array_equal(r.process(x), x) and len(r.flush()) == 0
    with pytest.raises(ValueError):
        F.Resampler(0, 16000)


# --------------------------------------------------------------------------- channels, levels


def test_channel_helpers() -> None:
    stereo = F.deinterleave(np.array([100, -100, 200, 0, 300, 100, 7], dtype="<i2").tobytes(), 2)
    assert stereo.tolist() == [[100, -100], [200, 0], [300, 100]]  # the partial frame is dropped
    assert F.mix_down(stereo).tolist() == [0, 100, 200]
    assert F.pick_channel(stereo, 1).tolist() == [-100, 0, 100]
    assert F.to_mono(stereo, 0).tolist() == [100, 200, 300]
    assert F.upmix(np.array([1, 2], dtype=np.int16), 3).tolist() == [[1, 1, 1], [2, 2, 2]]
    with pytest.raises(ValueError):
        F.pick_channel(stereo, 2)


def test_levels() -> None:
    assert F.dbfs(np.zeros(100, dtype=np.int16)) == F.SILENCE_DBFS
    assert F.dbfs(b"") == F.SILENCE_DBFS
    full = tone(1000, 0.1, 16000, amplitude=1.0)
    assert abs(F.dbfs(full) - (-3.01)) < 0.1
    assert abs(F.dbfs(tone(1000, 0.1, 16000, amplitude=0.1)) - (-23.01)) < 0.1
    assert abs(F.dbfs(full.tobytes()) - F.dbfs(full)) < 1e-9


# --------------------------------------------------------------------------- frames


def test_frame_slicer_cuts_exact_frames_and_keeps_the_rest() -> None:
    s = F.FrameSlicer(320)
    x = np.arange(1000, dtype=np.int16)
    frames = s.push(x[:700]) + s.push(x[700:])
    assert [len(f) for f in frames] == [640, 640, 640]
    assert np.array_equal(np.frombuffer(b"".join(frames), "<i2"), x[:960])
    assert s.pending == 40
    big = s.push(np.zeros(5000, dtype=np.int16))  # grows beyond its initial buffer
    assert len(big) == (40 + 5000) // 320


@pytest.mark.parametrize(
    "rate,channels,channel", [(16000, 1, None), (48000, 1, None), (44100, 2, None), (16000, 2, 1), (48000, 4, 3)]
)
def test_mic_pipeline_delivers_16k_mono_frames(rate: int, channels: int, channel: int | None) -> None:
    wanted = tone(500, 1.0, rate)
    other = tone(1700, 1.0, rate)
    data = np.zeros((len(wanted), channels), dtype=np.int16)
    for c in range(channels):
        data[:, c] = wanted if channel is None or c == channel else other
    p = F.MicPipeline(rate, channels, channel=channel)
    frames: list[bytes] = []
    block = rate // 50
    raw = data.astype("<i2").tobytes()
    step = block * channels * 2
    for i in range(0, len(raw), step):
        frames += p.feed(raw[i : i + step])
    assert all(len(f) == FRAME_BYTES for f in frames)
    assert abs(len(frames) - 50) <= 2
    mono = np.frombuffer(b"".join(frames), "<i2")
    assert abs(dominant_frequency(mono[800:], MIC_RATE) - 500) < 3


def test_mic_pipeline_rejects_a_missing_channel() -> None:
    with pytest.raises(ValueError):
        F.MicPipeline(16000, 2, channel=2)


# --------------------------------------------------------------------------- encoder


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_mic_encoder_produces_every_input_format(name: str) -> None:
    fmt = F.FORMATS[name]
    enc = F.MicEncoder(name)
    x = tone(700, 1.0, MIC_RATE)
    wire = b"".join(enc.encode(x[i : i + 320].tobytes()) for i in range(0, len(x), 320))
    decoded, rate = F.decode(name, wire)
    assert rate == fmt.rate
    # Streaming resamplers hold back a little; the rest is there at the right pitch.
    assert fmt.rate * 0.8 <= len(decoded) <= fmt.rate
    assert abs(dominant_frequency(decoded, rate) - 700) < 4
    if name == "pcm_16000":
        assert wire == x.tobytes()


def test_mic_encoder_rejects_half_samples() -> None:
    with pytest.raises(ValueError):
        F.MicEncoder("pcm_16000").encode(b"\x00")


# --------------------------------------------------------------------------- earcons


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_earcons_are_short_soft_and_click_free(rate: int) -> None:
    sounds = make_earcons(rate)
    assert set(sounds) == set(EARCON_NAMES)
    for name, x in sounds.items():
        assert x.dtype == np.float32
        assert 0.1 <= len(x) / rate <= 0.5, name
        assert np.max(np.abs(x)) <= 0.3 * 32767
        assert abs(x[0]) < 50 and abs(x[-1]) < 50  # faded in and out
    assert not np.array_equal(sounds["listening"], sounds["done"])
    with pytest.raises(ValueError):
        make_earcon("fanfare", rate)
