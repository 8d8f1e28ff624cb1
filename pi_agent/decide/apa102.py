"""APA102 ("DotStar") LEDs: the bytes that show an LED picture, and the voice HATs that carry them. Pure.

An APA102 chain is written over SPI (clock and data, no chip select) as one frame:

* a start frame of 32 zero bits;
* per LED 32 bits: ``0b111`` and a 5-bit global brightness (0-31), then blue, green and
  red, 8 bits each (so the bytes are ``0xE0 | brightness, B, G, R``);
* an end frame of ones that gives the clock edges the data needs to reach the last LED
  (each LED delays it by half a clock): at least ``count / 2`` bits, and never fewer than
  the datasheet's 32.

Every LED of the chain shows what the RGB LED of :mod:`pi_agent.decide.leds` shows (the
top state's colour, with its pattern): :func:`frame` is the frame at ``t`` seconds into
the pattern, :func:`next_change` when the next different frame is due. Blinks switch
between the colour and dark; a pulse fades in and out linearly in steps of
``1 / PULSE_FPS`` s, as gpiozero pulses a PWM LED. The driver
(:class:`pi_agent.gpio.apa102.Apa102Driver`) only sends these frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .leds import TIMINGS, Color, LedPicture, Pattern, Timing

MAX_BRIGHTNESS = 31
"""The APA102's global brightness is 5 bits."""

PULSE_FPS = 25
"""Steps per second of a pulse (gpiozero's PWM fade uses the same rate)."""

START_FRAME = bytes(4)


@dataclass(frozen=True, slots=True)
class HatPreset:
    """A voice HAT's LEDs (and button): what ``[leds] preset`` fills in."""

    title: str
    count: int                 # APA102 LEDs in the chain
    spi_device: int            # SPI0 chip select the vendor's code opens (the LEDs ignore it)
    button_pin: int | None     # the HAT's button (BCM), if it has one
    power_pin: int | None      # a pin that must be high to power the LEDs


HAT_PRESETS: Mapping[str, HatPreset] = MappingProxyType({
    # Seeed's ReSpeaker 2-Mics Pi HAT (and its clones): 3 APA102 on SPI0 (MOSI GPIO10, SCLK GPIO11),
    # opened by Seeed's apa102.py as spidev 0.1; the user button on GPIO17.
    "respeaker_2mic": HatPreset("ReSpeaker 2-Mics Pi HAT", count=3, spi_device=1, button_pin=17, power_pin=None),
    # Seeed's ReSpeaker 4-Mic Array for Raspberry Pi: 12 APA102 on SPI0 (spidev 0.1); their power
    # is switched by GPIO5 (Seeed's pixels.py: LED(5).on()). The board has no button.
    "respeaker_4mic": HatPreset("ReSpeaker 4-Mic Array for Raspberry Pi", count=12, spi_device=1, button_pin=None,
                                power_pin=5),
})


def end_frame(count: int) -> bytes:
    """The end frame for ``count`` LEDs: ones, at least ``count / 2`` bits and at least 32."""
    return b"\xff" * max(4, math.ceil(count / 16))


def encode(colors: Sequence[tuple[int, int, int]], brightness: int) -> bytes:
    """A whole frame for LEDs showing ``colors`` (red, green, blue; 0-255 each), first LED first."""
    if not 0 <= brightness <= MAX_BRIGHTNESS:
        raise ValueError(f"APA102 brightness is 0-{MAX_BRIGHTNESS}, got {brightness}")
    head = 0xE0 | brightness
    body = b"".join(bytes((head, b, g, r)) for r, g, b in colors)
    return START_FRAME + body + end_frame(len(colors))


def level(pattern: Pattern, timing: Timing, t: float) -> float:
    """How lit (0..1) an LED with ``pattern`` is ``t`` seconds after the pattern started."""
    if pattern is Pattern.OFF:
        return 0.0
    if pattern is Pattern.ON:
        return 1.0
    t = max(0.0, t)
    if pattern is Pattern.PULSE:
        period = timing.fade_in + timing.fade_out
        if period <= 0:
            return 1.0
        step = math.floor(t * PULSE_FPS + 1e-9) / PULSE_FPS
        phase = step % period
        if phase < timing.fade_in:
            return phase / timing.fade_in
        return max(0.0, 1.0 - (phase - timing.fade_in) / timing.fade_out) if timing.fade_out > 0 else 0.0
    period = timing.on + timing.off
    if period <= 0:
        return 1.0
    return 1.0 if (t + 1e-9) % period < timing.on else 0.0


def next_change(pattern: Pattern, timing: Timing, t: float) -> float | None:
    """When (seconds after the pattern started) the level may next differ from that at ``t``;
    ``None`` for a steady pattern."""
    if pattern in (Pattern.OFF, Pattern.ON):
        return None
    t = max(0.0, t)
    if pattern is Pattern.PULSE:
        if timing.fade_in + timing.fade_out <= 0:
            return None
        return (math.floor(t * PULSE_FPS + 1e-9) + 1) / PULSE_FPS
    period = timing.on + timing.off
    if period <= 0 or timing.on <= 0 or timing.off <= 0:
        return None
    start = math.floor((t + 1e-9) / period) * period
    return start + timing.on if t + 1e-9 < start + timing.on else start + period


def scaled(color: Color, amount: float) -> tuple[int, int, int]:
    """``color`` at ``amount`` (0..1) as 8-bit red, green, blue."""
    r, g, b = (max(0, min(255, round(c * amount * 255))) for c in color)
    return (r, g, b)


def frame(pic: LedPicture | None, *, count: int, brightness: int, t: float = 0.0,
          timings: Mapping[Pattern, Timing] = TIMINGS) -> bytes:
    """The frame that shows ``pic`` on ``count`` APA102 LEDs ``t`` s into its pattern
    (``None``: every LED dark). Each LED shows the RGB LED's colour and pattern."""
    if pic is None:
        color: tuple[int, int, int] = (0, 0, 0)
    else:
        color = scaled(pic.color, level(pic.rgb, timings[pic.rgb], t))
    return encode([color] * count, brightness)
