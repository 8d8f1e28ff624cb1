"""The speaker's volume (issue 23): the gain on what the speaker plays (the WAV speaker, the
playback buffer, earcons, the echo canceller's reference), the ``volume`` command, ``pi-agent
volume``, the volume buttons on gpiozero's mock pins, and the level kept across restarts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory
from pydantic import ValidationError

from pi_agent import cli
from pi_agent.audio.buffer import PlaybackBuffer, volume_gain
from pi_agent.audio.earcons import make_earcons
from pi_agent.audio.echo import FarEnd
from pi_agent.audio.files import WavFileOutput
from pi_agent.audio.playback import PyAudioOutput
from pi_agent.audio.volume import STEP, Volume, parse_change, state_path
from pi_agent.config import AudioSettings, ButtonSettings
from pi_agent.gpio import volume as volume_buttons
from pi_agent.gpio.volume import VolumeButtons
from pi_agent.service.client import summary
from pi_agent.service.commands import CommandError, Commands, parse_command

RATE = 16_000


def signal(seconds: float = 0.5, rate: int = RATE) -> np.ndarray:
    """A loud tone on an offset, never zero: 1000 + 20000 sin."""
    t = np.arange(round(seconds * rate)) / rate
    return (1000 + 20000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def scaled(x: np.ndarray, volume: int) -> np.ndarray:
    """What the speaker hands out of ``x`` at ``volume``: float32, rounded, clipped."""
    mix = x.astype(np.float32) * np.float32(volume_gain(volume))
    return np.clip(np.rint(mix), -32768, 32767).astype(np.int16)


def pulled(buf: PlaybackBuffer, n: int, period: int = 160) -> np.ndarray:
    return np.concatenate([buf.fill(period, i / RATE)[:, 0].copy() for i in range(0, n, period)])


# --- the gain -----------------------------------------------------------------------------------


def test_the_curve_is_in_decibels_from_silence_to_untouched() -> None:
    assert volume_gain(100) == 1.0 and volume_gain(0) == 0.0
    assert volume_gain(50) == pytest.approx(0.1)  # -20 dB
    assert 20 * np.log10(volume_gain(90)) == pytest.approx(-4.0)  # a step of 10 is 4 dB
    assert 20 * np.log10(volume_gain(1)) == pytest.approx(-39.6)
    gains = [volume_gain(v) for v in range(101)]
    assert gains == sorted(gains) and len(set(gains)) == 101
    for bad in (-1, 101):
        with pytest.raises(ValueError, match="from 0 to 100"):
            volume_gain(bad)


def test_at_100_the_buffer_hands_out_what_it_was_given_bit_for_bit() -> None:
    x = signal()
    buf = PlaybackBuffer(RATE, channels=2)
    buf.play(x, RATE)
    out = pulled(buf, len(x))
    assert np.array_equal(out, x)


@pytest.mark.parametrize("volume", [0, 1, 50, 90])
def test_below_100_every_sample_is_scaled_exactly(volume: int) -> None:
    x = signal()
    buf = PlaybackBuffer(RATE, channels=2, gain=volume_gain(volume))
    buf.play(x, RATE)
    period = buf.fill(160, 0.0)
    assert np.array_equal(period[:, 0], period[:, 1])  # every channel the same
    out = np.concatenate([period[:, 0].copy(), pulled(buf, len(x) - 160)])
    assert np.array_equal(out, scaled(x, volume))
    if volume == 50:
        assert np.abs(out).max() == round(21000 * volume_gain(50))


def test_a_change_applies_to_what_is_already_queued_from_the_next_period() -> None:
    """The next period moves from the old gain to the new one sample by sample (a step would
    click); every period after it is at the new gain exactly."""
    x = signal()
    buf = PlaybackBuffer(RATE)
    buf.play(x, RATE)
    first = pulled(buf, 1600)
    buf.set_gain(volume_gain(50))
    ramp, rest = pulled(buf, 160), pulled(buf, len(x) - 1760)
    assert np.array_equal(first, x[:1600]) and np.array_equal(rest, scaled(x[1760:], 50))
    gains = np.linspace(1.0, volume_gain(50), 160, endpoint=False, dtype=np.float32)
    assert np.array_equal(ramp, np.rint(x[1600:1760].astype(np.float32) * gains).astype(np.int16))
    step = np.abs(np.diff(np.concatenate([first, ramp, rest]).astype(np.int32)))
    assert step.max() <= np.abs(np.diff(x.astype(np.int32))).max()  # no jump bigger than the tone's own
    with pytest.raises(ValueError):
        buf.set_gain(1.5)


def test_earcons_are_scaled_too() -> None:
    earcons = make_earcons(RATE, ["listening"])
    tone = earcons["listening"]
    x = signal(len(tone) / RATE + 0.1)
    for volume in (100, 50):
        buf = PlaybackBuffer(RATE, earcons=earcons, gain=volume_gain(volume))
        buf.play(x, RATE)
        buf.play_earcon("listening")
        out = pulled(buf, len(x) // 160 * 160)
        mix = x[: len(out)].astype(np.float32)
        mix[: len(tone)] += tone
        if volume == 100:  # as before the volume existed: no rounding, truncated
            want = np.clip(mix, -32768, 32767).astype(np.int16)
        else:
            mix *= np.float32(volume_gain(volume))
            want = np.clip(np.rint(mix), -32768, 32767).astype(np.int16)
        assert np.array_equal(out, want), volume
    alone = PlaybackBuffer(RATE, earcons=earcons, gain=volume_gain(50))  # an earcon with no reply under it
    alone.play_earcon("listening")
    got = pulled(alone, len(tone) // 160 * 160)
    assert np.array_equal(got, np.rint(tone[: len(got)] * np.float32(volume_gain(50))).astype(np.int16))


class _RecordingFarEnd(FarEnd):
    def __init__(self) -> None:
        super().__init__()
        self.got: list[tuple[np.ndarray, float]] = []

    def played(self, pcm: np.ndarray, rate: int, start: float) -> None:
        self.got.append((pcm.copy(), start))
        super().played(pcm, rate, start)


def test_the_echo_cancellers_reference_is_what_the_device_gets_at_the_volume() -> None:
    out = PyAudioOutput("default", rate=RATE, channels=2, earcons=[])
    out.set_volume(50)
    buf = out._make_buffer(RATE, 2, latency=0.02, underrun_gap=1.0, quality="HQ")
    assert buf.gain == np.float32(volume_gain(50))  # a buffer made after the change has it
    out._cb_buffer = buf
    far = out.far_end = _RecordingFarEnd()
    x = signal()
    buf.play(x, RATE)
    handed: list[bytes] = []
    for i in range(len(x) // 320):
        data, _ = out._callback(None, 320, {"output_buffer_dac_time": 10.0 + i * 0.02, "current_time": 9.99}, 0)
        handed.append(data)
    device = np.frombuffer(b"".join(handed), "<i2").reshape(-1, 2)
    assert np.array_equal(device[:, 0], scaled(x, 50)[: len(device)])
    reference = np.concatenate([pcm for pcm, _ in far.got])
    assert np.array_equal(reference, device)  # the very periods the device got
    start = far.got[0][1]
    assert np.array_equal(far.read(start, len(device)), device[:, 0])  # kept at 16 kHz as played


def test_a_duck_lowers_what_plays_on_top_of_the_volume_and_the_reference_follows_it() -> None:
    """A voice over the reply (aec): everything plays ``gain`` times as loud as the volume says,
    ramped over one period each way; the echo canceller's reference is still exactly what the
    device got, so the canceller sees the echo drop with it."""
    out = PyAudioOutput("default", rate=RATE, channels=2, earcons=[])
    out.set_volume(90)
    buf = out._make_buffer(RATE, 2, latency=0.02, underrun_gap=1.0, quality="HQ")
    out._cb_buffer = out._buffer = buf
    far = out.far_end = _RecordingFarEnd()
    x = signal(1.0)
    buf.play(x, RATE)

    def periods(n: int, first: int) -> np.ndarray:
        data = [out._callback(None, 320, {"output_buffer_dac_time": 10.0 + i * 0.02, "current_time": 9.99}, 0)[0]
                for i in range(first, first + n)]
        return np.frombuffer(b"".join(data), "<i2").reshape(-1, 2)[:, 0]

    before = periods(5, 0)
    out.duck(0.25)
    assert buf.gain == pytest.approx(volume_gain(90) * 0.25) and out.volume == 90
    ramp, ducked = periods(1, 5), periods(10, 6)
    out.duck(1.0)
    up, after = periods(1, 16), periods(10, 17)
    assert np.array_equal(before, scaled(x[:1600], 90))
    lowered = np.clip(np.rint(x[1920:5120].astype(np.float32) * np.float32(volume_gain(90) * 0.25)), -32768, 32767)
    assert np.array_equal(ducked, lowered.astype(np.int16))
    assert np.array_equal(after, scaled(x[5440:8640], 90))
    assert np.abs(ramp).max() <= np.abs(before).max() and np.abs(up).max() <= np.abs(after).max()
    reference = np.concatenate([pcm for pcm, _ in far.got])[:, 0]
    assert np.array_equal(reference, np.concatenate([before, ramp, ducked, up, after]))
    with pytest.raises(ValueError):
        out.duck(1.5)


async def test_the_wav_speaker_records_the_reply_at_the_volume(tmp_path: Path) -> None:
    x = signal(0.2)

    async def record(volume: int | None) -> np.ndarray:
        out = WavFileOutput(tmp_path / f"spk-{volume}.wav", earcons=[])
        if volume is not None:
            out.set_volume(volume)  # before opening: the buffer it makes has it
        await out.open(lambda e: None)
        out.play(x.tobytes(), RATE)
        out.end_stream()
        await asyncio.sleep(0.35)
        await out.close()
        with wave.open(str(out.path), "rb") as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return pcm[np.flatnonzero(pcm)[0]:][: len(x)]  # from the reply's first sample on

    assert np.array_equal(await record(None), x)
    assert np.array_equal(await record(50), scaled(x, 50))


def test_the_output_keeps_its_volume_and_refuses_one_out_of_range() -> None:
    out = WavFileOutput("/nonexistent/spk.wav", earcons=[])
    assert out.volume == 100
    out.set_volume(30)
    assert out.volume == 30
    with pytest.raises(ValueError):
        out.set_volume(101)
    assert out.volume == 30


# --- the level: changes, kept across restarts ----------------------------------------------------


def test_up_and_down_go_by_a_step_within_0_and_100() -> None:
    applied: list[int] = []
    changed: list[int] = []
    v = Volume(95, apply=applied.append, on_change=changed.append)
    assert applied == [95]
    assert v.change("up") == 100 and v.change("up") == 100
    assert v.change("down") == 100 - STEP and v.change(0) == 0 and v.change("down") == 0
    assert applied == [95, 100, 90, 0] and changed == [100, 90, 0]  # no change: not applied, not published
    with pytest.raises(ValueError):
        v.change(101)
    with pytest.raises(ValueError):
        Volume(101)


def test_the_level_is_kept_across_restarts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "volume"
    Volume(100, path=path).change(40)
    assert json.loads(path.read_text()) == {"volume": 40, "configured": 100}
    assert Volume(100, path=path).level == 40
    with caplog.at_level(logging.INFO, "pi_agent.audio.volume"):
        assert Volume(70, path=path).level == 70  # audio.volume changed since: the config takes over
    assert "audio.volume is now 70" in caplog.text
    assert Volume(100, path=tmp_path / "none-yet").level == 100
    assert Volume(100, path=None).change(20) == 20  # not kept: nothing written anywhere


@pytest.mark.parametrize("content", ["", "loud", "{}", '{"volume": 300, "configured": 100}',
                                     '{"volume": "50", "configured": 100}', "[1]", "\udcff"])
def test_a_corrupt_kept_level_is_one_warning_and_the_setting(tmp_path: Path, content: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "volume"
    path.write_bytes(content.encode(errors="surrogateescape"))
    with caplog.at_level(logging.WARNING, "pi_agent.audio.volume"):
        assert Volume(80, path=path).level == 80
    assert len(caplog.records) == 1 and "starting at audio.volume = 80" in caplog.text


def test_a_state_directory_that_cannot_be_written_is_one_warning(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    v = Volume(100, path=tmp_path / "missing-dir" / "volume")
    with caplog.at_level(logging.WARNING, "pi_agent.audio.volume"):
        for level in (10, 20, 30):
            assert v.change(level) == level
    assert len(caplog.records) == 1 and "cannot keep the volume" in caplog.text


def test_the_level_is_kept_in_the_state_directory_under_systemd_only() -> None:
    assert state_path({"STATE_DIRECTORY": "/var/lib/pi-agent"}) == Path("/var/lib/pi-agent/volume")
    assert state_path({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == Path("/var/lib/a/volume")
    assert state_path({}) is None and state_path({"STATE_DIRECTORY": ""}) is None


# --- the command and the CLI ---------------------------------------------------------------------


@pytest.mark.parametrize("value, want", [(0, 0), (100, 100), (55, 55), ("up", "up"), ("down", "down"),
                                         ("Up", "up"), ("40", 40)])
def test_the_volume_command_takes_a_level_up_or_down(value: Any, want: Any) -> None:
    assert parse_command(json.dumps({"type": "volume", "value": value}))["value"] == want
    assert parse_change(value) == want


@pytest.mark.parametrize("command, message", [
    ({"type": "volume"}, "volume needs 'value'"),
    ({"type": "volume", "value": 101}, "not 101"),
    ({"type": "volume", "value": -1}, "not -1"),
    ({"type": "volume", "value": 50.5}, "not 50.5"),
    ({"type": "volume", "value": True}, "not True"),
    ({"type": "volume", "value": None}, "not NoneType"),
    ({"type": "volume", "value": [50]}, "not list"),
    ({"type": "volume", "value": "loud"}, "not 'loud'"),
    ({"type": "volume", "value": "9999"}, "not '9999'"),
    ({"type": "volume", "value": 50, "step": 5}, "volume takes no field 'step'"),
])
def test_a_bad_volume_command_says_what_is_wrong(command: dict[str, Any], message: str) -> None:
    with pytest.raises(CommandError) as e:
        parse_command(json.dumps(command))
    assert message in str(e.value)
    if "value" in command and "step" not in command:
        assert 'a whole number from 0 to 100, "up" or "down"' in str(e.value)


class _Controller:
    def __init__(self, volume: Volume | None) -> None:
        self.volume = volume


def test_the_command_changes_the_level_and_replies_with_it() -> None:
    volume = Volume(100)
    commands = Commands(_Controller(volume))  # type: ignore[arg-type]
    run = lambda text: commands.run("client", text, frozenset({"volume"}))  # noqa: E731
    assert run('{"type": "volume", "value": 30}') == {"type": "ack", "command": "volume", "volume": 30}
    assert run('{"type": "volume", "value": "up"}')["volume"] == 40 and volume.level == 40
    bad = run('{"type": "volume", "value": 300}')
    assert bad["type"] == "error" and "from 0 to 100" in bad["message"] and volume.level == 40
    page = commands.run("page", '{"type": "volume", "value": 0}', frozenset({"stop", "mute"}))
    assert page["type"] == "error" and volume.level == 40  # not one of the page's commands
    none = Commands(_Controller(None)).run("c", '{"type": "volume", "value": 3}', frozenset({"volume"}))  # type: ignore[arg-type]
    assert none["type"] == "error" and "no volume control" in none["message"]


def test_the_page_may_not_set_the_volume() -> None:
    from pi_agent.service.commands import ALL_COMMANDS, PAGE_COMMANDS
    assert "volume" in ALL_COMMANDS and "volume" not in PAGE_COMMANDS


def test_status_shows_the_volume() -> None:
    snap = {"state": "idle", "connected": False, "mode": "vad", "policy": "on_demand", "volume": 60}
    assert "volume 60" in summary(snap)


def test_the_cli_refuses_a_bad_level_before_looking_for_a_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("loud", "101", "-5", "5.5"):
        with pytest.raises(SystemExit) as e:
            cli.main(["volume", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert 'a whole number from 0 to 100, "up" or "down"' in err and "Traceback" not in err


def test_the_cli_says_when_no_daemon_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PI_AGENT_API__SOCKET", str(tmp_path / "none.sock"))
    (tmp_path / "empty.toml").write_text("")
    monkeypatch.setenv("PI_AGENT_CONFIG", str(tmp_path / "empty.toml"))
    monkeypatch.setenv("PI_AGENT_API__PORT", "0")
    assert cli.main(["volume", "up"]) == 1
    assert "pi-agent volume: cannot reach the daemon" in capsys.readouterr().err


def test_settings() -> None:
    assert AudioSettings().volume == 100
    with pytest.raises(ValidationError):
        AudioSettings(volume=101)
    ButtonSettings(pin=17, volume_up_pin=22, volume_down_pin=23)
    for bad in ({"pin": 17, "volume_up_pin": 17}, {"pin": 17, "volume_down_pin": 17},
                {"volume_up_pin": 22, "volume_down_pin": 22}):
        with pytest.raises(ValidationError, match="a pin of its own"):
            ButtonSettings(**bad)


# --- the buttons ------------------------------------------------------------------------------------


async def test_the_volume_buttons_step_per_press_and_repeat_while_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_buttons, "REPEAT", 0.1)
    factory = MockFactory()
    volume = Volume(50)
    buttons = VolumeButtons(22, 23, bounce_time=0.0, pin_factory=factory)
    buttons.start(asyncio.get_running_loop(), volume.change)
    up, down = factory.pin(22), factory.pin(23)
    try:
        async def press(pin: Any, held: float = 0.0) -> None:
            pin.drive_low()
            await asyncio.sleep(held or 0.02)
            pin.drive_high()
            await asyncio.sleep(0.05)

        await press(up)
        assert volume.level == 60
        await press(down)
        await press(down)
        assert volume.level == 40
        await press(down, held=0.35)  # a press, then a step every 0.1 s held
        assert 0 <= volume.level <= 20
    finally:
        buttons.close()
    level = volume.level
    up.drive_high()
    up.drive_low()
    await asyncio.sleep(0.05)
    assert volume.level == level  # closed: the pin is released, nothing steps
    buttons.close()  # idempotent


def test_a_volume_button_on_a_pin_in_use_is_a_clear_error() -> None:
    from pi_agent.errors import DeviceError
    factory = MockFactory()
    loop = asyncio.new_event_loop()
    held = VolumeButtons(22, None, pin_factory=factory)
    held.start(loop, lambda step: None)
    try:
        with pytest.raises(DeviceError, match="22"):
            VolumeButtons(None, 22, pin_factory=factory).start(loop, lambda step: None)
    finally:
        held.close()
        loop.close()


# --- the daemon (slow) ------------------------------------------------------------------------------


def _loudness(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    return float(np.abs(pcm).max())


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "pi-agent"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PI_AGENT_")}
    return subprocess.run([str(exe), *args], env={**base, **env}, capture_output=True, text=True, timeout=30)


@pytest.mark.slow
async def test_pi_agent_volume_against_the_daemon_kept_across_a_restart(tmp_path: Path) -> None:
    from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
    from .support_daemon import EventClient, daemon_running, free_port
    from .support_faults import make_wav

    state = tmp_path / "state"
    state.mkdir()
    mic = make_wav(tmp_path / "mic.wav", 4.0, "question", 8.0)
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        sock = tmp_path / "api.sock"
        env = {"PI_AGENT_AGENT_ID": "agent_volume", "PI_AGENT_SERVER_URL": agent.http_url,
               "PI_AGENT_AUDIO__INPUT_WAV": str(mic), "PI_AGENT_SESSION__POLICY": "persistent",
               "PI_AGENT_CAPTURE__MODE": "vad", "PI_AGENT_API__SOCKET": str(sock),
               "PI_AGENT_API__PORT": str(free_port()), "STATE_DIRECTORY": str(state)}
        loud: dict[int, float] = {}
        for run, (volume, command) in enumerate(((50, ("volume", "50")), (100, None))):
            spk = tmp_path / f"speaker-{run}.wav"
            async with daemon_running({**env, "PI_AGENT_AUDIO__OUTPUT_WAV": str(spk)}, tmp_path) as d, \
                    EventClient(sock) as events:
                assert events.snapshot is not None
                if command is not None:  # the first run: from 100, by the CLI, before the question
                    assert events.snapshot["volume"] == 100
                    r = _cli(*command, env={"PI_AGENT_API__SOCKET": str(sock)})
                    assert r.returncode == 0 and r.stdout.strip() == "volume 50", (r.stdout, r.stderr)
                    await events.wait_for(lambda e: e == {"type": "volume", "volume": 50}, 5, "the volume event")
                    r = _cli("status", "--json", env={"PI_AGENT_API__SOCKET": str(sock)})
                    assert json.loads(r.stdout)["volume"] == 50
                    r = _cli("volume", "loud", env={"PI_AGENT_API__SOCKET": str(sock)})
                    assert r.returncode == 2 and "Traceback" not in r.stderr
                else:  # the second: the kept 50, then 100 by the event API
                    assert events.snapshot["volume"] == 50
                    await events.send({"type": "volume", "value": 100})
                    ack = await events.wait_for(lambda e: e.get("type") == "ack", 5, "the ack")
                    assert ack == {"type": "ack", "command": "volume", "volume": 100}
                await events.wait_state("speaking", 20)
                await events.wait_for(lambda e: e.get("type") == "state" and e.get("previous") == "speaking",
                                      20, "the reply played out")
                log = d.log
            assert "Traceback" not in log
            loud[volume] = _loudness(spk)
        assert json.loads((state / "volume").read_text()) == {"volume": 100, "configured": 100}
    # The same reply and earcons: at 50, a tenth of the amplitude (-20 dB), to the rounding.
    assert loud[100] > 3000
    assert loud[50] == pytest.approx(loud[100] * volume_gain(50), abs=1.0), loud
