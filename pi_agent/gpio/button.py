"""The push button on a GPIO pin (gpiozero): edges in, :class:`ButtonEvent` values out.

:class:`ButtonInput` watches the pin with gpiozero. gpiozero's callbacks run on gpiozero's
threads and only hand the edge to the event loop (``loop.call_soon_threadsafe``); the
classifier (:class:`~pi_agent.decide.button.ButtonClassifier`, pure) and the hold timers run
on the loop. What a gesture means is decided in the core
(:class:`~pi_agent.decide.button.ButtonPolicy`); this module only delivers the gestures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Any

from ..decide.button import ButtonClassifier, ButtonEvent
from ..errors import ConfigError, InternalError
from .leds import PinSpec, open_error

log = logging.getLogger(__name__)


EventCallback = Callable[[ButtonEvent], None]


class ButtonInput:
    """A push button on a GPIO pin, delivering :class:`ButtonEvent` values on the event loop.

    ``pull_up=True`` (the usual wiring: button between the pin and ground) means
    pressed is low; ``pull_up=False`` uses the pull-down and pressed is high.
    ``bounce_time`` (seconds, or ``None``) is handed to the pin factory.
    Works with whatever pin factory gpiozero picks (lgpio on a Pi 5 / Bookworm) and
    with ``GPIOZERO_PIN_FACTORY=mock``; tests pass a ``MockFactory`` as ``pin_factory``.
    """

    def __init__(self, pin: PinSpec, *, pull_up: bool = True, bounce_time: float | None = 0.05,
                 hold_time: float = 0.4, long_hold_time: float | None = 3.0,
                 pin_factory: Any = None) -> None:
        if bounce_time is not None and bounce_time < 0:
            raise ConfigError(f"button bounce_time must be 0 or more seconds, got {bounce_time}")
        self.pin = pin
        self._pull_up = pull_up
        self._bounce_time = bounce_time or None
        self._factory = pin_factory
        self._classifier = ButtonClassifier(hold_time, long_hold_time)
        self._device: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_event: EventCallback | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pressed(self) -> bool:
        """Whether a gesture is in progress, as seen by the event loop."""
        return self._classifier.pressed

    def start(self, loop: asyncio.AbstractEventLoop, on_event: EventCallback) -> None:
        """Open the pin and start delivering events: ``on_event(event)`` runs on ``loop``.

        Call from the loop's thread. Raises :class:`DeviceError` naming the pin and the
        fix if the pin cannot be opened or watched.
        """
        if self._closed or self._device is not None:
            raise InternalError("ButtonInput.start() called twice or after close()")
        from gpiozero import DigitalInputDevice

        # DigitalInputDevice rather than Button: the hold timing runs on the event loop,
        # so Button's hold thread would be one more idle thread on a Pi Zero.
        try:
            device = DigitalInputDevice(self.pin, pull_up=self._pull_up,
                                        bounce_time=self._bounce_time,
                                        pin_factory=self._factory)
        except Exception as exc:
            raise open_error(exc, pin=self.pin, role="button") from exc
        self._loop, self._on_event, self._device = loop, on_event, device
        try:
            device.when_activated = lambda: self._from_thread(True)
            device.when_deactivated = lambda: self._from_thread(False)
        except Exception as exc:
            self.close()
            raise open_error(exc, pin=self.pin, role="button") from exc

    def _from_thread(self, pressed: bool) -> None:
        """On gpiozero's thread: timestamp the edge and hand it to the loop, nothing more."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
            loop.call_soon_threadsafe(self._edge, pressed, loop.time())

    def _edge(self, pressed: bool, at: float) -> None:
        if self._closed:
            return
        events = self._classifier.down(at) if pressed else self._classifier.up(at)
        self._deliver(events)

    def _tick(self) -> None:
        self._timer = None
        if self._closed or self._loop is None:
            return
        self._deliver(self._classifier.tick(self._loop.time()))

    def _deliver(self, events: list[ButtonEvent]) -> None:
        self._reschedule()
        for event in events:
            if self._on_event is None:
                return
            try:
                self._on_event(event)
            except Exception:
                log.exception("button event handler failed on %s", event)

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._classifier.deadline()
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._tick)

    def close(self) -> None:
        """Stop watching and release the pin. Idempotent; a gesture in progress is dropped.

        Call from the loop's thread (or once the loop has stopped).
        """
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._classifier.reset()
        self._on_event = None
        device, self._device = self._device, None
        if device is not None:
            try:
                device.when_activated = None
                device.when_deactivated = None
                device.close()
            except Exception as exc:
                log.warning("could not release the button pin GPIO %s: %s", self.pin, exc)

    def __enter__(self) -> ButtonInput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
