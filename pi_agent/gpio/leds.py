"""The status LEDs on GPIO pins (gpiozero): :class:`LedDriver` shows a
:class:`~pi_agent.decide.leds.LedPicture`.

What the LEDs show for each state is decided in the core (:mod:`pi_agent.decide.leds`,
pure); this module only carries a picture out, and is the only part that imports
gpiozero, and only when a driver is constructed. :func:`open_error` turns a failure to
open a pin (the LEDs' or the button's) into a :class:`DeviceError` naming the pin and the fix.
:func:`open_leds` opens the driver the ``[leds]`` settings describe: this one, or the APA102
LEDs of :mod:`pi_agent.gpio.apa102` (a voice HAT's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..decide.leds import BLACK, TIMINGS, WHITE, Color, LedPicture, Pattern, Timing
from ..errors import DeviceError

if TYPE_CHECKING:
    from ..config import LedSettings
    from .apa102 import Apa102Driver

log = logging.getLogger(__name__)

PinSpec = int | str
"""A pin as gpiozero takes it: a BCM number (17) or a name ("GPIO17", "BOARD11")."""


# --------------------------------------------------------------------------- errors


def open_error(exc: BaseException, *, pin: PinSpec | None, role: str) -> DeviceError:
    """Turn a failure to open a GPIO pin into a :class:`DeviceError` naming the pin and the fix.

    Shared by the LED driver and the button. Matches gpiozero's exception classes by
    name so that this module need not import gpiozero.
    """
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = str(exc)
    where = f"GPIO {pin} ({role})" if pin is not None else role
    lgpio_fix = ("use the lgpio pin factory: `sudo apt install python3-lgpio` (or `pip install "
                 "lgpio` in the virtualenv) and set GPIOZERO_PIN_FACTORY=lgpio")
    if "BadPinFactory" in names:
        message = (f"cannot open {where}: no GPIO pin factory could be loaded ({text}). On a "
                   f"Raspberry Pi, {lgpio_fix}; without GPIO, leave the pin unset or set "
                   "GPIOZERO_PIN_FACTORY=mock")
    elif "GPIOPinInUse" in names or "busy" in text.lower():
        message = (f"cannot open {where}: the pin is already in use (by another setting of "
                   "pi-agent, another pi-agent, or another program); choose a free pin or stop "
                   f"the other user ({text})")
    elif "edge detection" in text.lower() or "PinEdgeDetectUnsupported" in names:
        message = (f"cannot watch {where}: {text}. This happens with the RPi.GPIO or native pin "
                   f"factory on Raspberry Pi OS Bookworm and the Pi 5; {lgpio_fix}")
    elif "PinInvalidPin" in names:
        message = (f"cannot open {where}: not a pin of this board ({text}); give a BCM GPIO "
                   "number such as 17, or a name such as GPIO17 or BOARD11")
    elif "PinFixedPull" in names:
        message = (f"cannot open {where}: the pin has a fixed pull-up resistor ({text}); set "
                   "pull_up to true or choose another pin")
    elif isinstance(exc, PermissionError) or "permission" in text.lower():
        message = (f"cannot open {where}: permission denied ({text}); run pi-agent as a user in "
                   "the 'gpio' group (`sudo usermod -aG gpio USER`)")
    else:
        message = f"cannot open {where}: {type(exc).__name__}: {text}"
    return DeviceError(message)


# --------------------------------------------------------------------------- driver


class LedDriver:
    """Shows :class:`LedPicture` values on gpiozero LEDs.

    ``connection_pin`` and ``activity_pin`` are single LEDs, ``rgb_pins`` a
    (red, green, blue) LED; any of them may be ``None``. ``active_high=False`` is for
    LEDs wired to 3.3 V (lit when the pin is low): "off" is then the high level.
    PWM is used where the pin factory supports it (the activity LED and the RGB LED);
    otherwise a pulse becomes a slow blink and each lit RGB component is fully on.

    Call :meth:`apply` and :meth:`close` from one thread (the event loop's). gpiozero
    runs blinking in its own background threads, one per blinking LED.
    """

    def __init__(self, connection_pin: PinSpec | None, activity_pin: PinSpec | None,
                 rgb_pins: tuple[PinSpec, PinSpec, PinSpec] | None = None,
                 active_high: bool = True, pin_factory: Any = None, *,
                 timings: Mapping[Pattern, Timing] | None = None) -> None:
        """Open the pins; raise :class:`DeviceError` naming the pin if one cannot be opened."""
        self._timings = dict(TIMINGS)
        self._timings.update(timings or {})
        self._closed = False
        self._picture: LedPicture | None = None
        self._shown: dict[str, tuple[Pattern, Color]] = {}
        self.connection_led: Any = None
        self.activity_led: Any = None
        self.rgb_led: Any = None
        self._activity_pwm = False
        self._rgb_pwm = False
        try:
            if connection_pin is not None:
                self.connection_led = self._open_plain(connection_pin, "connection LED",
                                                       active_high, pin_factory)
            if activity_pin is not None:
                self.activity_led, self._activity_pwm = self._open_dimmable(
                    activity_pin, "activity LED", active_high, pin_factory)
            if rgb_pins is not None:
                self.rgb_led, self._rgb_pwm = self._open_rgb(rgb_pins, active_high, pin_factory)
        except BaseException:
            self.close()
            raise

    # -- opening

    @staticmethod
    def _open_plain(pin: PinSpec, role: str, active_high: bool, factory: Any) -> Any:
        from gpiozero import LED

        try:
            return LED(pin, active_high=active_high, initial_value=False, pin_factory=factory)
        except Exception as exc:
            raise open_error(exc, pin=pin, role=role) from exc

    @classmethod
    def _open_dimmable(cls, pin: PinSpec, role: str, active_high: bool,
                       factory: Any) -> tuple[Any, bool]:
        """A PWM LED if the factory can do PWM on ``pin``, else a plain one."""
        from gpiozero import PWMLED
        from gpiozero.exc import PinPWMUnsupported

        try:
            return PWMLED(pin, active_high=active_high, initial_value=0,
                          pin_factory=factory), True
        except PinPWMUnsupported:
            log.info("%s on GPIO %s: no PWM with this pin factory; pulsing becomes blinking",
                     role, pin)
        except Exception as exc:
            raise open_error(exc, pin=pin, role=role) from exc
        return cls._open_plain(pin, role, active_high, factory), False

    @classmethod
    def _open_rgb(cls, pins: tuple[PinSpec, PinSpec, PinSpec], active_high: bool,
                  factory: Any) -> tuple[Any, bool]:
        from gpiozero import RGBLED

        if len(pins) != 3:
            raise DeviceError(f"the RGB LED needs three pins (red, green, blue), got {pins!r}")
        # gpiozero's RGBLED leaves already-opened pins behind when a later one fails,
        # so open (and release) each pin alone first: that finds the failing pin and
        # tells whether PWM is available.
        pwm = True
        for pin, colour in zip(pins, ("red", "green", "blue"), strict=True):
            probe, has_pwm = cls._open_dimmable(pin, f"RGB LED {colour}", active_high, factory)
            probe.close()
            pwm = pwm and has_pwm
        try:
            return RGBLED(*pins, active_high=active_high, pwm=pwm, pin_factory=factory), pwm
        except Exception as exc:
            raise open_error(exc, pin=None, role=f"RGB LED on pins {pins}") from exc

    # -- showing

    @property
    def picture(self) -> LedPicture | None:
        """The last picture applied (``None`` before the first)."""
        return self._picture

    @property
    def closed(self) -> bool:
        return self._closed

    def apply(self, pic: LedPicture) -> None:
        """Show ``pic``. An LED whose pattern (and colour) is unchanged is left alone, so
        a blink is not restarted on every call. A no-op after :meth:`close`.

        Raises :class:`DeviceError` if a pin cannot be written.
        """
        if self._closed:
            return
        self._picture = pic
        try:
            self._show("connection", self.connection_led, pic.connection, WHITE, pwm=False)
            self._show("activity", self.activity_led, pic.activity, WHITE, pwm=self._activity_pwm)
            self._show("rgb", self.rgb_led, pic.rgb, pic.color, pwm=self._rgb_pwm)
        except Exception as exc:
            raise DeviceError(f"could not update the LEDs: {type(exc).__name__}: {exc}") from exc

    def _show(self, key: str, led: Any, pattern: Pattern, color: Color, *, pwm: bool) -> None:
        if led is None:
            return
        wanted = (pattern, BLACK if pattern is Pattern.OFF else color)
        if self._shown.get(key) == wanted:
            return
        rgb = key == "rgb"
        extra = {"on_color": color if pwm else _full(color)} if rgb else {}
        timing = self._timings[pattern]
        if pattern is Pattern.OFF:
            led.off()
        elif pattern is Pattern.ON and rgb:
            led.color = extra["on_color"]
        elif pattern is Pattern.ON:
            led.on()
        elif pattern is Pattern.PULSE and pwm:
            led.pulse(fade_in_time=timing.fade_in, fade_out_time=timing.fade_out, **extra)
        else:
            if pattern is Pattern.PULSE:  # no PWM: a slow blink instead
                timing = Timing(on=timing.fade_in, off=timing.fade_out)
            led.blink(on_time=timing.on, off_time=timing.off, **extra)
        self._shown[key] = wanted

    def off(self) -> None:
        """Turn every LED off (the inactive level) and stop any blinking."""
        for led in self._leds():
            led.off()
        self._shown.clear()
        self._picture = None

    def close(self) -> None:
        """Turn every LED off and release the pins. Idempotent; never raises."""
        if self._closed:
            return
        self._closed = True
        for led in self._leds():
            try:
                led.off()
            except Exception as exc:  # releasing must go on for the other pins
                log.warning("could not turn an LED off while closing: %s", exc)
            try:
                led.close()
            except Exception as exc:
                log.warning("could not release an LED pin: %s", exc)
        self.connection_led = self.activity_led = self.rgb_led = None
        self._shown.clear()

    def _leds(self) -> list[Any]:
        return [led for led in (self.connection_led, self.activity_led, self.rgb_led)
                if led is not None]

    def __enter__(self) -> LedDriver:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _full(color: Color) -> Color:
    """A colour for an RGB LED without PWM: each component that is lit at all, fully on
    (a dim colour must not vanish: amber becomes yellow, dim white white)."""
    r, g, b = (1.0 if c > 0 else 0.0 for c in color)
    return (r, g, b)


# --------------------------------------------------------------------------- from the settings


def open_leds(settings: LedSettings, pin_factory: Any = None, *,
              timings: Mapping[Pattern, Timing] | None = None) -> LedDriver | Apa102Driver | None:
    """The LED driver the ``[leds]`` settings describe (``None``: no LED configured): GPIO
    LEDs, or a chain of APA102 LEDs (a voice HAT's preset filled in). Raises
    :class:`DeviceError` naming what could not be opened."""
    kind = settings.driver_kind()
    if kind == "apa102":
        from .apa102 import Apa102Driver

        return Apa102Driver(settings.apa102_count(), settings.brightness, spi_device=settings.apa102_spi_device(),
                            clock_pin=settings.spi_clock_pin, mosi_pin=settings.spi_mosi_pin,
                            select_pin=settings.spi_select_pin, power_pin=settings.apa102_power_pin(),
                            pin_factory=pin_factory, timings=timings)
    if kind == "gpio":
        return LedDriver(settings.connection_pin, settings.activity_pin, settings.rgb_pins, settings.active_high,
                         pin_factory, timings=timings)
    return None
