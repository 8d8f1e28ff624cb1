"""The device keeper (pi_agent.audio.keeper): retries on the engine's backoff, capped so that
a device that comes back is used within a few seconds; one report per distinct failure; the
partner on PortAudio reopened, on a schedule, when a device is not found."""

from __future__ import annotations

import asyncio

import pytest

from pi_agent.audio.keeper import RETRY_MAX, DeviceKeeper
from pi_agent.errors import DeviceError, DeviceNotFound


class Device:
    """Fails to open with each of ``failures`` in turn, then opens."""

    def __init__(self, *failures: DeviceError) -> None:
        self.failures = list(failures)
        self.opens = self.closes = 0
        self.on_error: object = None

    async def open(self, on_error: object) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.opens += 1
        self.on_error = on_error

    async def close(self) -> None:
        self.closes += 1


class Harness:
    def __init__(self, device: Device, which: str = "speaker", *, portaudio: bool = False) -> None:
        self.device = device
        self.said: list[tuple[str, str]] = []
        self.slept: list[float] = []
        self.now = 100.0
        self.keeper = DeviceKeeper(which, device.open, device.close, portaudio=portaudio,
                                   on_failed=lambda w, m: self.said.append(("failed", m)),
                                   on_back=lambda w: self.said.append(("back", w)),
                                   clock=lambda: self.now, sleep=self.sleep)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    async def until(self, predicate: object) -> None:
        for _ in range(1000):
            if predicate():  # type: ignore[operator]
                return
            await asyncio.sleep(0)
        raise AssertionError("never")


async def test_retries_double_to_a_cap_of_a_few_seconds_and_say_each_failure_once() -> None:
    h = Harness(Device(*[DeviceError("no such device: usb-speaker")] * 7))
    task = asyncio.create_task(h.keeper.run())
    await h.until(lambda: h.keeper.is_open)
    task.cancel()
    assert h.slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert RETRY_MAX <= 4.0  # back in use within about 4 s of its return, however long it was away
    assert h.said == [("failed", "no such device: usb-speaker"), ("back", "speaker")]


async def test_a_failure_of_the_open_device_reopens_it_and_starts_the_delays_afresh() -> None:
    device = Device(DeviceError("busy"), DeviceError("busy"))
    h = Harness(device)
    task = asyncio.create_task(h.keeper.run())
    await h.until(lambda: h.keeper.is_open)
    device.failures = [DeviceError("gone")]
    device.on_error(DeviceError("unplugged"))  # type: ignore[operator]
    await h.until(lambda: device.opens == 2)
    task.cancel()
    assert device.closes == 1
    assert h.slept == [0.5, 1.0, 0.5]  # reset when it was found
    assert h.said == [("failed", "busy"), ("back", "speaker"), ("failed", "unplugged"), ("failed", "gone"),
                      ("back", "speaker")]


@pytest.mark.parametrize("portaudio", [True, False])
async def test_a_device_not_found_reopens_its_portaudio_partner_on_a_slower_schedule(portaudio: bool) -> None:
    mic = Harness(Device(*[DeviceNotFound("no input device matches 'usb'")] * 12), "microphone")
    spk = Harness(Device(), "speaker", portaudio=portaudio)
    DeviceKeeper.pair(mic.keeper, spk.keeper)
    spk_task = asyncio.create_task(spk.keeper.run())
    await spk.until(lambda: spk.keeper.is_open)
    mic_task = asyncio.create_task(mic.keeper.run())
    await mic.until(lambda: mic.keeper.is_open)
    await spk.until(lambda: spk.keeper.is_open)
    mic_task.cancel()
    spk_task.cancel()
    # attempts at 0, 0.5, 1.5, 3.5, 7.5, 11.5, ... 35.5 s; the partner reopened at 0, 1.5, 3.5, 7.5, 15.5, 31.5
    assert spk.device.closes == (6 if portaudio else 0)
    assert spk.device.opens == spk.device.closes + 1
