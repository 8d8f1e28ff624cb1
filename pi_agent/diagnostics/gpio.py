"""``pi-agent test-leds`` and ``test-button``: the LED driver and the button input the daemon uses."""

from __future__ import annotations

import asyncio
import time

from ..config import ButtonSettings, LedSettings
from ..errors import DeviceError


async def test_leds(leds: LedSettings, seconds: float) -> int:
    from ..decide.leds import DEMO_SEQUENCE, describe, picture
    from ..gpio.leds import open_leds

    try:
        driver = open_leds(leds)
    except DeviceError as e:
        print(f"pi-agent test-leds: {e}")
        return 1
    if driver is None:
        print("pi-agent test-leds: no LEDs configured (leds.connection_pin, leds.activity_pin, leds.rgb_pins; "
              "or leds.kind = \"apa102\" or a leds.preset such as respeaker_2mic)")
        return 1
    if leds.driver_kind() == "apa102":
        print(f"{leds.apa102_count()} APA102 LEDs, each showing the RGB LED's colour and pattern", flush=True)
    with driver:
        for inputs in DEMO_SEQUENCE:
            pic = picture(inputs)
            driver.apply(pic)
            print(describe(pic), flush=True)
            await asyncio.sleep(seconds)
        driver.off()
    print("all LEDs off")
    return 0


async def test_button(b: ButtonSettings, seconds: float) -> int:
    from ..gpio.button import ButtonInput

    if b.pin is None:
        print("pi-agent test-button: no button pin configured (button.pin)")
        return 1
    try:
        button = ButtonInput(b.pin, pull_up=b.pull_up, bounce_time=b.bounce_time, hold_time=b.hold_time,
                             long_hold_time=b.long_hold_time)
    except DeviceError as e:
        print(f"pi-agent test-button: {e}")
        return 1
    started = time.monotonic()
    print(f"press, hold ({b.hold_time:g} s) and long-hold ({b.long_hold_time:g} s) the button on pin {b.pin}; "
          f"listening for {seconds:g} s (Ctrl-C to stop)", flush=True)
    with button:
        button.start(asyncio.get_running_loop(),
                     lambda ev: print(f"{time.monotonic() - started:7.2f} s  {ev}", flush=True))
        await asyncio.sleep(seconds)
    return 0
