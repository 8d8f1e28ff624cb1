"""The volume buttons (``[button] volume_up_pin``, ``volume_down_pin``): gpiozero Buttons whose
presses turn the speaker's volume a step up or down; one held down repeats its step every
:data:`REPEAT` seconds. gpiozero's callbacks run on its threads and only hand the step to the
event loop (``loop.call_soon_threadsafe``), where the volume changes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Literal

from ..errors import InternalError
from .leds import PinSpec, open_error

log = logging.getLogger(__name__)

REPEAT = 0.5  # s: held this long, a volume button steps again, and again every REPEAT

Step = Literal["up", "down"]


class VolumeButtons:
    """Up to two buttons (``up``, ``down``: pins, None for none), wired as the main button is
    (``pull_up``, ``bounce_time``). ``start`` opens them; ``on_step("up" | "down")`` then runs
    on the loop per press, and per :data:`REPEAT` seconds held."""

    def __init__(self, up: PinSpec | None, down: PinSpec | None, *, pull_up: bool = True,
                 bounce_time: float | None = 0.05, pin_factory: Any = None) -> None:
        steps: tuple[tuple[Step, PinSpec | None], ...] = (("up", up), ("down", down))
        self.pins: dict[Step, PinSpec] = {step: pin for step, pin in steps if pin is not None}
        self._pull_up = pull_up
        self._bounce_time = bounce_time or None
        self._factory = pin_factory
        self._devices: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_step: Callable[[Step], object] | None = None
        self._started = False

    def start(self, loop: asyncio.AbstractEventLoop, on_step: Callable[[Step], object]) -> None:
        """Open the pins; raises :class:`~pi_agent.errors.DeviceError` naming a pin that cannot be
        opened (none stays open then)."""
        if self._started:
            raise InternalError("VolumeButtons.start() called twice")
        self._started = True
        from gpiozero import Button

        self._loop, self._on_step = loop, on_step
        for step, pin in self.pins.items():
            try:
                device = Button(pin, pull_up=self._pull_up, bounce_time=self._bounce_time, hold_time=REPEAT,
                                hold_repeat=True, pin_factory=self._factory)
            except Exception as exc:
                self.close()
                raise open_error(exc, pin=pin, role=f"volume {step} button") from exc
            self._devices.append(device)
            device.when_pressed = device.when_held = self._handler(step)

    def _handler(self, step: Step) -> Callable[[], None]:
        def on_thread() -> None:  # gpiozero's thread: hand the step to the loop, nothing more
            loop = self._loop
            if loop is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
                    loop.call_soon_threadsafe(self._step, step)
        return on_thread

    def _step(self, step: Step) -> None:
        on_step = self._on_step
        if on_step is None:
            return
        try:
            on_step(step)
        except Exception:
            log.exception("volume %s failed", step)

    def close(self) -> None:
        """Release the pins. Idempotent."""
        self._on_step = None
        self._loop = None
        devices, self._devices = self._devices, []
        for device in devices:
            try:
                device.when_pressed = device.when_held = None
                device.close()
            except Exception as exc:
                log.warning("could not release a volume button's pin: %s", exc)


__all__ = ["REPEAT", "VolumeButtons"]
