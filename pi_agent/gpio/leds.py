"""Status LEDs: the LED picture for a state (pure) and the gpiozero driver that shows it.

Two layers, as the rest of pi-agent:

* :func:`picture` is pure. It takes everything the LEDs depend on
  (:class:`LedInputs`) and returns the whole :class:`LedPicture` at once, from one
  priority list (:data:`PRIORITY`: error > offline > muted > speaking > thinking >
  listening > connecting > follow-up > wake word > idle). The controller calls it on *every* change and
  hands the result to the driver, so no LED can stay lit from an earlier state
  (the "stuck in listening" bug of other satellites).
* :class:`LedDriver` owns the gpiozero devices and carries out a picture. It is the
  only part that imports gpiozero, and only when constructed.

What the LEDs show (every LED may be left unset):

=============  ==================  ===============  ======================
top state      connection LED      activity LED     RGB LED
=============  ==================  ===============  ======================
error          connection truth    fast blink       red, fast blink
offline        connection truth    off              amber, on
muted          connection truth    slow blink       magenta, on
speaking       connection truth    blink            blue, blink
thinking       connection truth    pulse            cyan, pulse
listening      connection truth    on               green, on
connecting     connection truth    off              white, blink
follow_up      connection truth    on               green, pulse
wake_word      connection truth    off              dim white, on
idle           connection truth    off              off
=============  ==================  ===============  ======================

``follow_up`` and ``wake_word`` are the ``wake_word`` capture mode's two kinds of idle:
the user may answer the reply without the wake word (the activity LED says "speak",
as when listening), or nothing is sent until the wake word is heard.

"Connection truth": blink while a connection is being opened or a retry is
scheduled (``state`` connecting or ``backing_off``), on while connected, off
otherwise (offline and not retrying, failed, not yet started). Muted shows as a
short flash every two seconds on the activity LED so that, with only two plain
LEDs, it can be told apart from idle.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

from ..decide.states import State
from ..errors import DeviceError

if TYPE_CHECKING:
    from ..decide.model import Status

log = logging.getLogger(__name__)

Color = tuple[float, float, float]
"""An RGB colour, each component 0..1."""

PinSpec = int | str
"""A pin as gpiozero takes it: a BCM number (17) or a name ("GPIO17", "BOARD11")."""

BLACK: Color = (0.0, 0.0, 0.0)
RED: Color = (1.0, 0.0, 0.0)
AMBER: Color = (1.0, 0.5, 0.0)
MAGENTA: Color = (1.0, 0.0, 1.0)
BLUE: Color = (0.0, 0.0, 1.0)
CYAN: Color = (0.0, 1.0, 1.0)
GREEN: Color = (0.0, 1.0, 0.0)
WHITE: Color = (1.0, 1.0, 1.0)
DIM_WHITE: Color = (0.15, 0.15, 0.15)


# --------------------------------------------------------------------------- pure part


class Pattern(enum.StrEnum):
    """How one LED behaves; the seconds are in :data:`TIMINGS`."""

    OFF = "off"
    ON = "on"
    BLINK = "blink"              # speaking; connection being opened / retry scheduled
    FAST_BLINK = "fast_blink"    # error
    SLOW_BLINK = "slow_blink"    # muted: a short flash every two seconds
    PULSE = "pulse"              # thinking (a slow blink on LEDs without PWM)

    def __str__(self) -> str:
        return self.value

    @property
    def timing(self) -> Timing:
        """The default timing of this pattern."""
        return TIMINGS[self]


class Look(enum.StrEnum):
    """What the LEDs show: a state (the same value), or a kind of idle of the wake_word mode."""

    ERROR = "error"
    OFFLINE = "offline"
    MUTED = "muted"
    SPEAKING = "speaking"
    THINKING = "thinking"
    LISTENING = "listening"
    CONNECTING = "connecting"
    FOLLOW_UP = "follow_up"  # the user may answer the reply without the wake word
    WAKE_WORD = "wake_word"  # nothing is sent until the wake word is heard
    IDLE = "idle"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds for one cycle of a pattern: lit, dark, fading in, fading out."""

    on: float = 0.0
    off: float = 0.0
    fade_in: float = 0.0
    fade_out: float = 0.0


TIMINGS: Mapping[Pattern, Timing] = MappingProxyType({
    Pattern.OFF: Timing(),
    Pattern.ON: Timing(),
    Pattern.BLINK: Timing(on=0.4, off=0.4),
    Pattern.FAST_BLINK: Timing(on=0.1, off=0.1),
    Pattern.SLOW_BLINK: Timing(on=0.15, off=1.85),
    Pattern.PULSE: Timing(fade_in=1.0, fade_out=1.0),
})
"""Default timing per pattern. Tests and users may pass their own to :class:`LedDriver`."""


@dataclass(frozen=True, slots=True)
class LedInputs:
    """Everything the LEDs depend on.

    ``error`` and ``backing_off`` come from flags as well as from ``state``: a device
    error may be shown while the connection is fine, and mute may be on while the
    state machine is, say, speaking.
    """

    state: State
    connected: bool            # a conversation WebSocket is open
    muted: bool = False        # the microphone is muted (whatever the state)
    backing_off: bool = False  # a reconnect is scheduled (waiting out the backoff delay)
    error: bool = False        # a failure is being shown (device trouble, auth refused)
    wake_word: bool = False    # the capture mode waits for the wake word when idle
    follow_up: bool = False    # ... but the user may answer the reply without it now

    @classmethod
    def of(cls, status: Status) -> LedInputs:
        """The LED inputs of the daemon's :class:`~pi_agent.decide.model.Status`."""
        return cls(status.state, status.connected, status.muted, status.backing_off, status.error,
                   status.wake_word, status.follow_up)


@dataclass(frozen=True, slots=True)
class LedPicture:
    """What every LED shows. ``top`` is the state that won the priority list."""

    top: Look
    connection: Pattern
    activity: Pattern
    rgb: Pattern
    color: Color


# The priority list: the first entry whose test holds decides the activity and RGB LEDs.
_CONDITIONS: tuple[tuple[Look, Callable[[LedInputs], bool]], ...] = (
    (Look.ERROR, lambda i: i.error or i.state is State.ERROR),
    (Look.OFFLINE, lambda i: i.backing_off or i.state is State.OFFLINE),
    (Look.MUTED, lambda i: i.muted or i.state is State.MUTED),
    (Look.SPEAKING, lambda i: i.state is State.SPEAKING),
    (Look.THINKING, lambda i: i.state is State.THINKING),
    (Look.LISTENING, lambda i: i.state is State.LISTENING),
    (Look.CONNECTING, lambda i: i.state in (State.CONNECTING, State.STARTING)),
    (Look.FOLLOW_UP, lambda i: i.follow_up),
    (Look.WAKE_WORD, lambda i: i.wake_word),
    (Look.IDLE, lambda i: True),
)

PRIORITY: tuple[Look, ...] = tuple(look for look, _ in _CONDITIONS)
"""Highest first: error > offline > muted > speaking > thinking > listening > connecting >
follow-up > wake word > idle."""

# top look -> (activity LED, RGB colour, RGB pattern)
_LOOKS: Mapping[Look, tuple[Pattern, Color, Pattern]] = MappingProxyType({
    Look.ERROR: (Pattern.FAST_BLINK, RED, Pattern.FAST_BLINK),
    Look.OFFLINE: (Pattern.OFF, AMBER, Pattern.ON),
    Look.MUTED: (Pattern.SLOW_BLINK, MAGENTA, Pattern.ON),
    Look.SPEAKING: (Pattern.BLINK, BLUE, Pattern.BLINK),
    Look.THINKING: (Pattern.PULSE, CYAN, Pattern.PULSE),
    Look.LISTENING: (Pattern.ON, GREEN, Pattern.ON),
    Look.CONNECTING: (Pattern.OFF, WHITE, Pattern.BLINK),
    Look.FOLLOW_UP: (Pattern.ON, GREEN, Pattern.PULSE),
    Look.WAKE_WORD: (Pattern.OFF, DIM_WHITE, Pattern.ON),
    Look.IDLE: (Pattern.OFF, BLACK, Pattern.OFF),
})


def top_state(inputs: LedInputs) -> Look:
    """What wins the priority list for ``inputs`` (``STARTING`` shows as connecting)."""
    return next(look for look, holds in _CONDITIONS if holds(inputs))


def connection_pattern(inputs: LedInputs) -> Pattern:
    """The connection LED: blink while trying, on while connected, off otherwise."""
    if inputs.backing_off or inputs.state is State.CONNECTING:
        return Pattern.BLINK
    if inputs.connected and inputs.state is not State.OFFLINE:
        return Pattern.ON
    return Pattern.OFF


def picture(inputs: LedInputs) -> LedPicture:
    """The whole LED picture for ``inputs``: recomputed from scratch, so nothing sticks."""
    top = top_state(inputs)
    activity, color, rgb = _LOOKS[top]
    return LedPicture(top=top, connection=connection_pattern(inputs), activity=activity,
                      rgb=rgb, color=color)


def state_colors() -> dict[str, str]:
    """Each top state's RGB colour as CSS (the kiosk page's light); off is a dim grey."""
    def css(color: Color) -> str:
        return "#2a2a2a" if color == BLACK else "#" + "".join(f"{round(c * 255):02x}" for c in color)
    return {look.value: css(color) for look, (_, color, _) in _LOOKS.items()}


def describe(pic: LedPicture) -> str:
    """One line for logs and ``pi-agent test-leds``."""
    rgb = "off" if pic.rgb is Pattern.OFF else f"{_color_name(pic.color)} {pic.rgb}"
    return f"{pic.top}: connection={pic.connection} activity={pic.activity} rgb={rgb}"


_NAMES = {BLACK: "black", RED: "red", AMBER: "amber", MAGENTA: "magenta", BLUE: "blue",
          CYAN: "cyan", GREEN: "green", WHITE: "white", DIM_WHITE: "dim white"}


def _color_name(color: Color) -> str:
    return _NAMES.get(color) or "rgb({:.2f}, {:.2f}, {:.2f})".format(*color)


DEMO_SEQUENCE: tuple[LedInputs, ...] = (
    LedInputs(State.STARTING, connected=False),
    LedInputs(State.CONNECTING, connected=False),
    LedInputs(State.IDLE, connected=True),
    LedInputs(State.LISTENING, connected=True),
    LedInputs(State.THINKING, connected=True),
    LedInputs(State.SPEAKING, connected=True),
    LedInputs(State.SPEAKING, connected=True, muted=True),
    LedInputs(State.MUTED, connected=True, muted=True),
    LedInputs(State.OFFLINE, connected=False, backing_off=True),
    LedInputs(State.OFFLINE, connected=False),
    LedInputs(State.IDLE, connected=True, wake_word=True),
    LedInputs(State.IDLE, connected=True, wake_word=True, follow_up=True),
    LedInputs(State.IDLE, connected=True, error=True),
    LedInputs(State.ERROR, connected=False),
    LedInputs(State.IDLE, connected=False),
)
"""Example inputs that walk through every look (for ``pi-agent test-leds``)."""


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
