"""APA102 ("DotStar") status LEDs on SPI, as on the ReSpeaker voice HATs: :class:`Apa102Driver`
shows a :class:`~pi_agent.decide.leds.LedPicture` on every LED of the chain.

The frames are computed in the core (:func:`pi_agent.decide.apa102.frame`, pure); this
driver sends them through gpiozero's SPI interface (:class:`gpiozero.SPIDevice`: hardware
SPI0 with the lgpio pin factory, bit-banged pins otherwise, and gpiozero's mock pins in the
tests), and a thread sends the next frame of a blinking or pulsing pattern when it is due.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from ..decide.apa102 import frame, next_change
from ..decide.leds import TIMINGS, LedPicture, Pattern, Timing
from ..errors import DeviceError
from .leds import PinSpec, open_error

log = logging.getLogger(__name__)


class Apa102Driver:
    """Shows :class:`LedPicture` values on a chain of ``count`` APA102 LEDs.

    The SPI bus is hardware SPI0 with chip select ``spi_device`` (0: CE0/GPIO8, 1: CE1/GPIO7),
    or, if ``clock_pin`` is given, bit-banged on ``clock_pin``/``mosi_pin`` with
    ``select_pin`` as a chip select the LEDs ignore (gpiozero needs one: a free pin).
    ``power_pin`` is driven high while the driver is open (the ReSpeaker 4-Mic Array
    switches its LEDs' power with GPIO5).

    Each LED shows the RGB LED's colour and pattern. :meth:`apply` sends the first frame at
    once; with ``animate`` (the default) a thread sends the next ones of a blink or pulse.
    ``clock`` gives the time in seconds (tests pass their own and call :meth:`tick`).
    """

    def __init__(self, count: int, brightness: int, *, spi_device: int = 0,
                 clock_pin: PinSpec | None = None, mosi_pin: PinSpec | None = None,
                 select_pin: PinSpec | None = None, power_pin: PinSpec | None = None,
                 pin_factory: Any = None, timings: Mapping[Pattern, Timing] | None = None,
                 animate: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        """Open the SPI bus (and the power pin); raise :class:`DeviceError` naming what failed."""
        self.count = count
        self.brightness = brightness
        self._timings = dict(TIMINGS)
        self._timings.update(timings or {})
        self._clock = clock
        self._animate = animate
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._picture: LedPicture | None = None
        self._shown: tuple[Pattern, tuple[float, float, float]] | None = None
        self._started = 0.0
        self._last: bytes | None = None
        self.frames_sent = 0
        self.power: Any = None
        self.spi: Any = None
        if clock_pin is not None:
            if mosi_pin is None or select_pin is None:
                raise DeviceError("APA102 LEDs on software SPI need a clock pin, a data (MOSI) pin and a free "
                                  "select pin")
            where = f"APA102 LEDs on software SPI (clock GPIO {clock_pin}, data GPIO {mosi_pin})"
            spi_args: dict[str, Any] = {"clock_pin": clock_pin, "mosi_pin": mosi_pin, "miso_pin": None,
                                        "select_pin": select_pin}
        else:
            where = f"APA102 LEDs on SPI0.{spi_device} (/dev/spidev0.{spi_device}: enable SPI with raspi-config)"
            spi_args = {"port": 0, "device": spi_device}
        try:
            if power_pin is not None:
                from gpiozero import OutputDevice

                try:
                    self.power = OutputDevice(power_pin, initial_value=True, pin_factory=pin_factory)
                except Exception as exc:
                    raise open_error(exc, pin=power_pin, role="APA102 LED power") from exc
            from gpiozero import SPIDevice

            try:
                self.spi = SPIDevice(pin_factory=pin_factory, **spi_args)
            except Exception as exc:
                raise open_error(exc, pin=None, role=where) from exc
        except BaseException:
            self.close()
            raise

    # -- state

    @property
    def picture(self) -> LedPicture | None:
        """The last picture applied (``None`` before the first and after :meth:`off`)."""
        return self._picture

    @property
    def closed(self) -> bool:
        return self._closed

    # -- showing

    def apply(self, pic: LedPicture) -> None:
        """Show ``pic``: its first frame at once. An unchanged colour and pattern is left
        alone, so a blink is not restarted. A no-op after :meth:`close`.

        Raises :class:`DeviceError` if the frame cannot be sent.
        """
        with self._cond:
            if self._closed:
                return
            self._picture = pic
            wanted = (pic.rgb, pic.color)
            if wanted == self._shown:
                return
            self._shown = wanted
            self._started = self._clock()
            self._step(self._started)
            if self._animate and next_change(pic.rgb, self._timings[pic.rgb], 0.0) is not None:
                self._start_thread()
            self._cond.notify_all()

    def tick(self) -> float | None:
        """Send the frame due now if it differs from the last one sent; return the seconds
        until the next may be due (``None``: the picture is steady). The thread calls this;
        tests without it (``animate=False``) call it with their own clock."""
        with self._cond:
            if self._closed:
                return None
            return self._step(self._clock())

    def _step(self, now: float) -> float | None:
        t = now - self._started
        self._send(frame(self._picture, count=self.count, brightness=self.brightness, t=t, timings=self._timings))
        pic = self._picture
        if pic is None:
            return None
        due = next_change(pic.rgb, self._timings[pic.rgb], t)
        return None if due is None else max(0.0, due - t)

    def _send(self, data: bytes) -> None:
        if data == self._last:
            return
        try:
            self.spi._spi.transfer(list(data))
        except Exception as exc:
            self._last = None
            raise DeviceError(f"could not update the APA102 LEDs: {type(exc).__name__}: {exc}") from exc
        self._last = data
        self.frames_sent += 1

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="apa102-leds", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                try:
                    wait = self._step(self._clock())
                except DeviceError as exc:
                    log.warning("%s (the LEDs stop until the next state)", exc)
                    wait = None
                if wait is None:
                    self._thread = None
                    return
                self._cond.wait(timeout=wait)

    def off(self) -> None:
        """Turn every LED off and stop any pattern."""
        with self._cond:
            if self._closed:
                return
            self._picture = None
            self._shown = None
            self._step(self._clock())
            self._cond.notify_all()

    def close(self) -> None:
        """Turn every LED off, stop the thread and release the pins. Idempotent; never raises."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._picture = None
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        if self.spi is not None:
            try:
                self._send(frame(None, count=self.count, brightness=self.brightness))
            except Exception as exc:  # releasing must go on
                log.warning("could not turn the APA102 LEDs off while closing: %s", exc)
            try:
                self.spi.close()
            except Exception as exc:
                log.warning("could not release the SPI bus of the APA102 LEDs: %s", exc)
        if self.power is not None:
            try:
                self.power.close()
            except Exception as exc:
                log.warning("could not release the APA102 power pin: %s", exc)
        self.spi = self.power = None
        self._shown = None

    def __enter__(self) -> Apa102Driver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
