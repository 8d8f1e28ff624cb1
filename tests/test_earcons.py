"""Earcons of one's own (issue 23): ``audio.earcon_sounds`` names a WAV file per earcon, of any
rate and channel count, read once at start, down-mixed and resampled to the device's rate; a
file that cannot be one is a configuration error (one line; exit 78 for ``run`` and ``check``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from pi_agent.audio.buffer import PlaybackBuffer
from pi_agent.audio.earcons import EarconName, make_earcon, make_earcons, read_sound, sound_names
from pi_agent.audio.files import WavFileOutput, read_wav
from pi_agent.config import AudioSettings, load_settings
from pi_agent.errors import ConfigError
from pi_agent.parts import make_audio_output

from .support_audio import dominant_frequency, loud_segments, tone

SECONDS = 0.4
PITCH = 523.25  # C5


def stereo_wav(path: Path, rate: int = 22_050, seconds: float = SECONDS, freq: float = PITCH) -> Path:
    """A stereo 16-bit WAV at ``rate``: the tone on the left, the same tone at half level on the right."""
    left = tone(freq, seconds, rate, amplitude=0.5)
    frames = np.stack([left, left // 2], axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.astype("<i2").tobytes())
    return path


def test_an_own_sound_is_down_mixed_and_resampled_to_the_device_rate(tmp_path: Path) -> None:
    sounds = {"listening": stereo_wav(tmp_path / "ding.wav")}
    names = sound_names(["listening", "done"], sounds)
    assert names == ["listening", "done"] and isinstance(names[0], EarconName)
    earcons = make_earcons(48_000, names)
    assert set(earcons) == {"listening", "done"} and all(type(k) is str for k in earcons)
    own = earcons["listening"]
    assert len(own) == pytest.approx(SECONDS * 48_000, abs=2)  # the length of the file, at the device's rate
    assert dominant_frequency(own, 48_000) == pytest.approx(PITCH, abs=2)  # the same pitch
    middle = own[len(own) // 4: 3 * len(own) // 4]  # (away from the ringing of the file's abrupt edges)
    assert np.abs(middle).max() == pytest.approx(0.75 * 0.5 * 32767, rel=0.02)  # the mean of both channels
    np.testing.assert_array_equal(earcons["done"], make_earcon("done", 48_000))  # without one: generated

    # Played by the speaker's buffer at its rate (stereo device): as long and as high.
    buf = PlaybackBuffer(48_000, channels=2, earcons=earcons)
    assert buf.play_earcon("listening")
    out = buf.fill(48_000, 0.0)
    assert out.shape[1] == 2
    ((start, end),) = loud_segments(out[:, 0], 48_000)
    assert (end - start) / 48_000 == pytest.approx(SECONDS, abs=0.015)
    assert dominant_frequency(out[start:end, 0], 48_000) == pytest.approx(PITCH, abs=2)


def test_wav_files_of_other_widths_and_channels_are_read(tmp_path: Path) -> None:
    x = tone(440, 0.1, 8000, amplitude=0.5)
    for width, data in ((1, ((x >> 8) + 128).astype(np.uint8).tobytes()),
                        (3, np.stack([np.zeros_like(x, dtype=np.uint8), *(x.view(np.uint8).reshape(-1, 2).T)],
                                     axis=1).tobytes())):
        path = tmp_path / f"w{width}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(width)
            w.setframerate(8000)
            w.writeframes(data)
        sound = read_sound(path)
        assert sound.rate == 8000 and len(sound.samples) == len(x)
        np.testing.assert_allclose(sound.samples, x, atol=256 if width == 1 else 0)


@pytest.mark.parametrize(("content", "why"), [
    (None, "no such file"),
    (b"", "not a PCM WAV file"),
    (b"RIFF....WAVEfmt nonsense", "not a PCM WAV file"),
    ("dir", "a directory"),
])
def test_a_sound_that_cannot_be_read_is_a_configuration_error(tmp_path: Path, content: bytes | str | None,
                                                                why: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "sound.wav"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    monkeypatch.setenv("PI_AGENT_AGENT_ID", "agent_x")
    monkeypatch.setenv("PI_AGENT_AUDIO__EARCON_SOUNDS", f'{{"done": "{path}"}}')
    with pytest.raises(ConfigError) as e:
        load_settings()
    (line,) = str(e.value).splitlines()
    assert line.startswith("audio.earcon_sounds: done: ") and why in line and str(path) in line, line
    # ... and if the file goes between the check and the start, the speaker's factory says the same.
    with pytest.raises(ConfigError, match=why):
        make_audio_output(AudioSettings.model_construct(**{**AudioSettings().__dict__,
                                                           "earcon_sounds": {"done": path}}))


def test_an_unknown_earcon_or_a_too_long_sound_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'fanfare' is not an earcon"):
        load_settings(agent_id="x", audio={"earcon_sounds": {"fanfare": str(stereo_wav(tmp_path / "a.wav"))}})
    long = stereo_wav(tmp_path / "long.wav", rate=8000, seconds=11.0)
    with pytest.raises(ConfigError, match="an earcon may last 10 s"):
        load_settings(agent_id="x", audio={"earcon_sounds": {"error": str(long)}})
    ok = load_settings(agent_id="x", audio={"earcon_sounds": {"error": str(tmp_path / "a.wav")}})
    assert ok.audio.earcon_sounds == {"error": tmp_path / "a.wav"}


@pytest.mark.slow
async def test_the_wav_speaker_plays_an_own_sound_at_its_rate(tmp_path: Path) -> None:
    settings = load_settings(agent_id="x", audio={"output_wav": str(tmp_path / "out.wav"), "output_rate": 44_100,
                                                  "earcon_sounds": {"done": str(stereo_wav(tmp_path / "d.wav"))}})
    out = make_audio_output(settings.audio)
    assert isinstance(out, WavFileOutput)
    await out.open(lambda e: None)
    now = time.monotonic()
    out.play_earcon("done")
    assert out.audible_until() - now == pytest.approx(SECONDS, abs=0.03)
    await asyncio.sleep(SECONDS + 0.3)
    await out.close()
    frames, rate = read_wav(tmp_path / "out.wav")
    assert rate == 44_100
    ((start, end),) = loud_segments(frames[:, 0], rate)
    assert (end - start) / rate == pytest.approx(SECONDS, abs=0.015)
    assert dominant_frequency(frames[start:end, 0], rate) == pytest.approx(PITCH, abs=2)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_missing_sound_stops_the_daemon_with_one_line_and_exit_78(tmp_path: Path, command: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text('agent_id = "agent_x"\nserver_url = "http://127.0.0.1:9"\n'
                      f'[audio]\noutput_wav = "{tmp_path / "out.wav"}"\ninput_wav = "{tmp_path / "in.wav"}"\n'
                      f'earcon_sounds = {{listening = "{tmp_path / "gone.wav"}"}}\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "pi_agent.cli", command, "--config", str(config)], env=env,
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 78, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "audio.earcon_sounds: listening: " in lines[0] and "gone.wav: no such file" in lines[0], lines[0]
