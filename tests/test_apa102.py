"""APA102 LEDs (issue 23): the frames (pure), and the exact bytes sent through gpiozero's SPI
interface to gpiozero's mock SPI device, frame by frame, for every state and both HAT presets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockSPIDevice

from pi_agent.config import LedSettings
from pi_agent.decide.apa102 import HAT_PRESETS, PULSE_FPS, encode, end_frame, frame, level, next_change
from pi_agent.decide.leds import DEMO_SEQUENCE, TIMINGS, LedInputs, LedPicture, Look, Pattern, Timing, picture
from pi_agent.decide.states import State
from pi_agent.errors import DeviceError
from pi_agent.gpio.apa102 import Apa102Driver
from pi_agent.gpio.leds import LedDriver, open_leds

P = Pattern
SCLK, MOSI, MISO, CE0, CE1 = 11, 10, 9, 8, 7


class Recorder(MockSPIDevice):
    """The LEDs' side of the bus: every transfer (select low ... select high) as bytes."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.frames: list[bytes] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def on_select(self) -> None:
        if self.select_pin.state == self.select_high:
            self.on_start()
        elif self.rx_buf:
            bits = [int(b) for b in self.rx_buf]
            assert len(bits) % 8 == 0, len(bits)
            self.frames.append(bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8)))
            self.rx_buf = []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def hexes(frames: list[bytes]) -> list[str]:
    return [f.hex(" ", 4) for f in frames]


def expected(rgb: tuple[int, int, int], count: int, brightness: int) -> bytes:
    """Written out by the datasheet, independently of encode(): 32 zero bits; per LED
    111 + 5-bit brightness, blue, green, red; 32 one bits (enough for up to 64 LEDs)."""
    r, g, b = rgb
    return bytes(4) + bytes([0b11100000 | brightness, b, g, r]) * count + b"\xff\xff\xff\xff"


# --------------------------------------------------------------------------- pure


def test_frame_layout_by_hand() -> None:
    assert encode([(255, 0, 0), (0, 255, 0), (1, 2, 3)], 31).hex(" ", 4) == (
        "00000000 ff0000ff ff00ff00 ff030201 ffffffff")
    assert encode([], 0) == bytes(4) + b"\xff" * 4
    with pytest.raises(ValueError, match="0-31"):
        encode([(0, 0, 0)], 32)


def test_end_frame_has_at_least_half_a_bit_per_led() -> None:
    for count in (1, 3, 12, 64, 65, 100, 1024):
        bits = len(end_frame(count)) * 8
        assert bits >= max(32, count / 2) and end_frame(count) == b"\xff" * (bits // 8)
    assert len(end_frame(64)) == 4 and len(end_frame(65)) == 5


def test_levels_follow_the_patterns_timing() -> None:
    blink = Timing(on=0.4, off=0.4)
    assert [level(P.BLINK, blink, t) for t in (0, 0.39, 0.4, 0.79, 0.8, 1.2)] == [1, 1, 0, 0, 1, 0]
    assert [next_change(P.BLINK, blink, t) for t in (0, 0.2, 0.4, 0.8)] == pytest.approx([0.4, 0.4, 0.8, 1.2])
    assert next_change(P.ON, blink, 3) is None and next_change(P.OFF, blink, 3) is None
    pulse = Timing(fade_in=1.0, fade_out=1.0)
    assert level(P.PULSE, pulse, 0) == 0 and level(P.PULSE, pulse, 0.52) == pytest.approx(0.52)
    assert level(P.PULSE, pulse, 1.0) == 1 and level(P.PULSE, pulse, 1.52) == pytest.approx(0.48)
    assert level(P.PULSE, pulse, 0.5) == pytest.approx(0.48)  # 0.5 s is within the 13th step
    assert level(P.PULSE, pulse, 0.039) == 0  # steps of 1/25 s
    assert next_change(P.PULSE, pulse, 0) == pytest.approx(1 / PULSE_FPS)


# --------------------------------------------------------------------------- every state on the bus

# Every look: its pattern and the colour at full level (the RGB LED's, as 8-bit RGB).
LOOKS = {
    Look.ERROR: (P.FAST_BLINK, (255, 0, 0)),
    Look.OFFLINE: (P.ON, (255, 128, 0)),
    Look.MUTED: (P.ON, (255, 0, 255)),
    Look.SPEAKING: (P.BLINK, (0, 0, 255)),
    Look.THINKING: (P.PULSE, (0, 255, 255)),
    Look.LISTENING: (P.ON, (0, 255, 0)),
    Look.CONNECTING: (P.BLINK, (255, 255, 255)),
    Look.FOLLOW_UP: (P.PULSE, (0, 255, 0)),
    Look.WAKE_WORD: (P.ON, (38, 38, 38)),
    Look.IDLE: (P.OFF, (0, 0, 0)),
}

INPUTS = {picture(i).top: i for i in DEMO_SEQUENCE}


def one_cycle(pattern: Pattern, rgb: tuple[int, int, int], count: int, brightness: int) -> list[tuple[float, bytes]]:
    """(time, frame) of one cycle of ``pattern`` and the start of the next, by hand."""
    t = TIMINGS[pattern]
    dark = expected((0, 0, 0), count, brightness)
    lit = expected(rgb, count, brightness)
    if pattern in (P.ON, P.OFF):
        return [(0.0, lit if pattern is P.ON else dark)]
    if pattern is P.PULSE:
        steps = round(t.fade_in * PULSE_FPS)
        ramp = [k / steps for k in range(steps)] + [1 - k / steps for k in range(steps)]
        return [(k / PULSE_FPS, expected(tuple(round(c * v) for c in rgb), count, brightness))  # type: ignore[arg-type]
                for k, v in enumerate([*ramp, 0.0])]
    return [(0.0, lit), (t.on, dark), (t.on + t.off, lit)]


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.mark.parametrize("preset", sorted(HAT_PRESETS))
def test_every_state_frame_by_frame_on_each_hat(preset: str, factory: MockFactory) -> None:
    settings = LedSettings(preset=preset)  # type: ignore[arg-type]
    count, brightness = settings.apa102_count(), settings.brightness
    assert (count, settings.apa102_spi_device()) == {"respeaker_2mic": (3, 1), "respeaker_4mic": (12, 1)}[preset]
    bus = Recorder(SCLK, MOSI, MISO, CE1, pin_factory=factory)
    other = Recorder(SCLK, MOSI, MISO, CE0, pin_factory=factory)  # nothing is sent to SPI0.0
    clock = Clock()
    power = settings.apa102_power_pin()
    with Apa102Driver(count, brightness, spi_device=settings.apa102_spi_device(), power_pin=power,
                      pin_factory=factory, animate=False, clock=clock) as leds:
        if power is not None:
            assert factory.pin(power).state  # the 4-Mic Array's LED power is on
        assert set(LOOKS) == set(INPUTS)
        for look, (pattern, rgb) in LOOKS.items():
            pic = picture(INPUTS[look])
            assert (pic.top, pic.rgb) == (look, pattern)
            prev = bus.frames[-1] if bus.frames else None
            bus.frames.clear()
            start = clock.now
            leds.apply(pic)
            for t, _ in one_cycle(pattern, rgb, count, brightness)[1:]:
                clock.now = start + t
                leds.tick()
            want, last = [], prev
            for _, f in one_cycle(pattern, rgb, count, brightness):
                if f != last:  # a frame equal to the one before is not sent again
                    want.append(f)
                last = f
            assert hexes(bus.frames) == hexes(want), look
            clock.now += 10
        leds.off()
        assert bus.frames[-1] == expected((0, 0, 0), count, brightness)
    assert bus.frames[-1] == expected((0, 0, 0), count, brightness)
    assert other.frames == []
    if power is not None:
        assert factory.pin(power).function == "input"  # released


def test_a_2mic_frame_written_out(factory: MockFactory) -> None:
    bus = Recorder(SCLK, MOSI, MISO, CE1, pin_factory=factory)
    with Apa102Driver(3, 8, spi_device=1, pin_factory=factory, animate=False) as leds:
        leds.apply(picture(LedInputs(State.LISTENING, connected=True)))
        leds.apply(picture(LedInputs(State.OFFLINE, connected=False)))
    assert hexes(bus.frames) == [
        "00000000 e800ff00 e800ff00 e800ff00 ffffffff",  # listening: green
        "00000000 e80080ff e80080ff e80080ff ffffffff",  # offline: amber
        "00000000 e8000000 e8000000 e8000000 ffffffff",  # closed: dark
    ]


def test_unchanged_pattern_is_not_restarted_nor_resent(factory: MockFactory) -> None:
    bus = Recorder(SCLK, MOSI, MISO, CE0, pin_factory=factory)
    clock = Clock()
    speaking = picture(LedInputs(State.SPEAKING, connected=True))
    with Apa102Driver(3, 8, pin_factory=factory, animate=False, clock=clock) as leds:
        leds.apply(speaking)
        clock.now += 0.5  # into the dark half of the blink
        leds.apply(speaking)  # the same picture again: no restart
        assert len(bus.frames) == 1
        leds.tick()
        assert bus.frames[-1] == expected((0, 0, 0), 3, 8) and len(bus.frames) == 2


def test_software_spi_and_thread_animates(factory: MockFactory) -> None:
    bus = Recorder(20, 21, None, 16, pin_factory=factory)
    fast = {P.BLINK: Timing(on=0.03, off=0.03)}
    with Apa102Driver(2, 31, clock_pin=20, mosi_pin=21, select_pin=16, pin_factory=factory, timings=fast) as leds:
        leds.apply(picture(LedInputs(State.SPEAKING, connected=True)))
        deadline = time.monotonic() + 2
        while len(bus.frames) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        leds.apply(picture(LedInputs(State.LISTENING, connected=True)))
        n = len(bus.frames)
        time.sleep(0.1)
        assert len(bus.frames) == n  # steady: the thread sends nothing more
    blue, dark, green = (expected(c, 2, 31) for c in ((0, 0, 255), (0, 0, 0), (0, 255, 0)))
    assert set(bus.frames[:-2]) == {blue, dark} and bus.frames[-2:] == [green, dark]
    assert all(a != b for a, b in zip(bus.frames, bus.frames[1:], strict=False))


def test_open_leds_follows_the_settings(factory: MockFactory) -> None:
    bus = Recorder(SCLK, MOSI, MISO, CE1, pin_factory=factory)
    driver = open_leds(LedSettings(preset="respeaker_2mic", brightness=3), factory)
    assert isinstance(driver, Apa102Driver) and driver.count == 3
    with driver:
        driver.apply(picture(LedInputs(State.MUTED, connected=True)))
    assert bus.frames[0] == expected((255, 0, 255), 3, 3)
    gpio = open_leds(LedSettings(connection_pin=5), factory)
    assert isinstance(gpio, LedDriver)
    gpio.close()
    assert open_leds(LedSettings(), factory) is None
    many = open_leds(LedSettings(kind="apa102", count=100, spi_device=0), factory)
    assert isinstance(many, Apa102Driver) and many.count == 100
    many.close()


def test_a_busy_pin_is_a_device_error(factory: MockFactory) -> None:
    with LedDriver(7, None, pin_factory=factory), pytest.raises(DeviceError, match=r"SPI0\.1"):
        Apa102Driver(3, 8, spi_device=1, pin_factory=factory)
    with LedDriver(5, None, pin_factory=factory), pytest.raises(DeviceError, match=r"GPIO 5 \(APA102 LED power"):
        Apa102Driver(12, 8, spi_device=1, power_pin=5, pin_factory=factory)
    Apa102Driver(12, 8, spi_device=1, power_pin=5, pin_factory=factory).close()  # nothing left open
    with pytest.raises(DeviceError, match="clock pin, a data"):
        Apa102Driver(3, 8, clock_pin=20, pin_factory=factory)


def test_after_close_nothing_is_sent(factory: MockFactory) -> None:
    bus = Recorder(SCLK, MOSI, MISO, CE0, pin_factory=factory)
    leds = Apa102Driver(3, 8, pin_factory=factory)
    leds.close()
    leds.close()
    n = len(bus.frames)
    leds.apply(LedPicture(Look.LISTENING, P.ON, P.ON, P.ON, (0.0, 1.0, 0.0)))
    assert leds.closed and len(bus.frames) == n and leds.tick() is None


def test_frame_of_nothing_is_dark() -> None:
    assert frame(None, count=3, brightness=8) == expected((0, 0, 0), 3, 8)


# --------------------------------------------------------------------------- the daemon


@pytest.mark.slow
async def test_the_daemon_shows_its_states_on_the_2mic_hat_and_takes_its_button(tmp_path: Path) -> None:
    """The whole daemon with ``preset = "respeaker_2mic"`` on the mock pins: the HAT's button
    (GPIO17, from the preset) starts listening, and the LEDs' bytes follow the states."""
    from pi_agent.audio.files import WavFileInput, WavFileOutput
    from pi_agent.daemon import Daemon, Parts
    from pi_agent.demo import DemoSettings
    from pi_agent.fake_agent import FakeAgent, FakeAgentOptions

    from .support_daemon import QUESTION_WAV

    factory = MockFactory()
    bus = Recorder(SCLK, MOSI, MISO, CE1, pin_factory=factory)
    async with FakeAgent(FakeAgentOptions(port=0)) as agent:
        settings = DemoSettings(
            agent_id="agent_hat", server_url=agent.http_url, session={"policy": "persistent"},
            capture={"mode": "push_to_talk"}, audio={"echo": "half_duplex", "earcons": []}, api={"port": 0},
            leds={"preset": "respeaker_2mic", "brightness": 5}, button={"hold_time": 0.15, "bounce_time": 0.0})
        daemon = Daemon(settings, Parts(audio_in=WavFileInput(QUESTION_WAV, loop=True),
                                        audio_out=WavFileOutput(tmp_path / "spk.wav"), pin_factory=factory))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        try:
            async with asyncio.timeout(10):
                while daemon.controller.state.value != "idle":
                    await asyncio.sleep(0.01)
            assert isinstance(daemon.leds, Apa102Driver)
            assert bus.frames[-1] == expected((0, 0, 0), 3, 5)  # idle: dark
            button = factory.pin(17)
            button.drive_low()  # held: push-to-talk
            async with asyncio.timeout(3):
                while daemon.controller.state.value != "listening":
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert expected((0, 255, 0), 3, 5) in bus.frames  # listening: green
            button.drive_high()
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 5) == 0
    assert bus.frames[-1] == expected((0, 0, 0), 3, 5)  # closed: dark


@pytest.mark.slow
def test_test_button_listens_on_the_presets_button(tmp_path: Path) -> None:
    """`pi-agent test-button` with a voice HAT preset and no [button] pin uses the HAT's button."""
    import os
    import subprocess
    import sys

    config = tmp_path / "config.toml"
    config.write_text('[leds]\npreset = "respeaker_2mic"\n')
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "pi-agent"), "--config", str(config),
                          "test-button", "--seconds", "0.3"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    assert out.returncode == 0, out.stderr
    assert "on pin 17" in out.stdout
