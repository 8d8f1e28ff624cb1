"""The LED picture: what the status LEDs show for the daemon's status. Pure, part of the decision core.

* :func:`picture` takes everything the LEDs depend on
  (:class:`LedInputs`) and returns the whole :class:`LedPicture` at once, from one
  priority list (:data:`PRIORITY`: error > offline > muted > speaking > thinking >
  listening > connecting > follow-up > wake word > idle). The controller calls it on *every* change and
  hands the result to the driver, so no LED can stay lit from an earlier state
  (the "stuck in listening" bug of other satellites).
* :class:`pi_agent.gpio.leds.LedDriver` owns the gpiozero devices and carries out a picture
  (a driver: it imports this module, never the reverse).

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from .model import Status
from .states import State

Color = tuple[float, float, float]
"""An RGB colour, each component 0..1."""

BLACK: Color = (0.0, 0.0, 0.0)
RED: Color = (1.0, 0.0, 0.0)
AMBER: Color = (1.0, 0.5, 0.0)
MAGENTA: Color = (1.0, 0.0, 1.0)
BLUE: Color = (0.0, 0.0, 1.0)
CYAN: Color = (0.0, 1.0, 1.0)
GREEN: Color = (0.0, 1.0, 0.0)
WHITE: Color = (1.0, 1.0, 1.0)
DIM_WHITE: Color = (0.15, 0.15, 0.15)


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
"""Default timing per pattern. Tests and users may pass their own to :class:`pi_agent.gpio.leds.LedDriver`."""


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
