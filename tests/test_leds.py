"""The LED picture (pure, as tables) and the gpiozero LED driver on gpiozero's mock pins."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from gpiozero.exc import BadPinFactory, GPIOPinInUse
from gpiozero.pins.mock import MockFactory, MockPWMPin
from hypothesis import given
from hypothesis import strategies as st

from pi_agent.errors import DeviceError
from pi_agent.decide.leds import (
    AMBER,
    BLACK,
    BLUE,
    CYAN,
    DEMO_SEQUENCE,
    DIM_WHITE,
    GREEN,
    MAGENTA,
    PRIORITY,
    RED,
    WHITE,
    LedInputs,
    LedPicture,
    Look,
    Pattern,
    Timing,
    describe,
    picture,
    top_state,
)
from pi_agent.gpio.leds import LedDriver, open_error
from pi_agent.decide.states import State

P = Pattern
S = State
L = Look

# --------------------------------------------------------------------------- the picture


def test_priority_order_is_the_documented_one() -> None:
    assert PRIORITY == (S.ERROR, S.OFFLINE, S.MUTED, S.SPEAKING, S.THINKING, S.LISTENING,
                        S.CONNECTING, L.FOLLOW_UP, L.WAKE_WORD, S.IDLE)


# inputs -> (top, connection, activity, rgb pattern, colour)
PICTURES = [
    # one row per state, connected where that is natural
    (LedInputs(S.STARTING, connected=False), (S.CONNECTING, P.OFF, P.OFF, P.BLINK, WHITE)),
    (LedInputs(S.CONNECTING, connected=False), (S.CONNECTING, P.BLINK, P.OFF, P.BLINK, WHITE)),
    (LedInputs(S.IDLE, connected=True), (S.IDLE, P.ON, P.OFF, P.OFF, BLACK)),
    (LedInputs(S.IDLE, connected=False), (S.IDLE, P.OFF, P.OFF, P.OFF, BLACK)),
    (LedInputs(S.LISTENING, connected=True), (S.LISTENING, P.ON, P.ON, P.ON, GREEN)),
    (LedInputs(S.THINKING, connected=True), (S.THINKING, P.ON, P.PULSE, P.PULSE, CYAN)),
    (LedInputs(S.SPEAKING, connected=True), (S.SPEAKING, P.ON, P.BLINK, P.BLINK, BLUE)),
    (LedInputs(S.OFFLINE, connected=False), (S.OFFLINE, P.OFF, P.OFF, P.ON, AMBER)),
    (LedInputs(S.OFFLINE, connected=False, backing_off=True),
     (S.OFFLINE, P.BLINK, P.OFF, P.ON, AMBER)),
    (LedInputs(S.ERROR, connected=False), (S.ERROR, P.OFF, P.FAST_BLINK, P.FAST_BLINK, RED)),
    (LedInputs(S.MUTED, connected=True), (S.MUTED, P.ON, P.SLOW_BLINK, P.ON, MAGENTA)),
    # flags beat the state: error > offline > muted > speaking > ...
    (LedInputs(S.IDLE, connected=True, error=True),
     (S.ERROR, P.ON, P.FAST_BLINK, P.FAST_BLINK, RED)),
    (LedInputs(S.SPEAKING, connected=True, error=True, muted=True),
     (S.ERROR, P.ON, P.FAST_BLINK, P.FAST_BLINK, RED)),
    (LedInputs(S.OFFLINE, connected=False, error=True, backing_off=True),
     (S.ERROR, P.BLINK, P.FAST_BLINK, P.FAST_BLINK, RED)),
    (LedInputs(S.MUTED, connected=False, muted=True, backing_off=True),
     (S.OFFLINE, P.BLINK, P.OFF, P.ON, AMBER)),
    (LedInputs(S.IDLE, connected=False, backing_off=True),
     (S.OFFLINE, P.BLINK, P.OFF, P.ON, AMBER)),
    (LedInputs(S.SPEAKING, connected=True, muted=True),
     (S.MUTED, P.ON, P.SLOW_BLINK, P.ON, MAGENTA)),
    (LedInputs(S.LISTENING, connected=True, muted=True),
     (S.MUTED, P.ON, P.SLOW_BLINK, P.ON, MAGENTA)),
    (LedInputs(S.CONNECTING, connected=False, muted=True),
     (S.MUTED, P.BLINK, P.SLOW_BLINK, P.ON, MAGENTA)),
    # connection truth stays on the connection LED whatever wins the rest
    (LedInputs(S.ERROR, connected=True), (S.ERROR, P.ON, P.FAST_BLINK, P.FAST_BLINK, RED)),
    (LedInputs(S.OFFLINE, connected=True), (S.OFFLINE, P.OFF, P.OFF, P.ON, AMBER)),
    (LedInputs(S.CONNECTING, connected=True), (S.CONNECTING, P.BLINK, P.OFF, P.BLINK, WHITE)),
    (LedInputs(S.SPEAKING, connected=False), (S.SPEAKING, P.OFF, P.BLINK, P.BLINK, BLUE)),
    # the wake_word mode: its idle waits for the wake word, or for an answer to the reply
    (LedInputs(S.IDLE, connected=True, wake_word=True), (L.WAKE_WORD, P.ON, P.OFF, P.ON, DIM_WHITE)),
    (LedInputs(S.IDLE, connected=False, wake_word=True), (L.WAKE_WORD, P.OFF, P.OFF, P.ON, DIM_WHITE)),
    (LedInputs(S.IDLE, connected=True, wake_word=True, follow_up=True),
     (L.FOLLOW_UP, P.ON, P.ON, P.PULSE, GREEN)),
    (LedInputs(S.LISTENING, connected=True, wake_word=True), (S.LISTENING, P.ON, P.ON, P.ON, GREEN)),
    (LedInputs(S.SPEAKING, connected=True, wake_word=True, follow_up=True),
     (S.SPEAKING, P.ON, P.BLINK, P.BLINK, BLUE)),
    (LedInputs(S.IDLE, connected=False, wake_word=True, backing_off=True),
     (S.OFFLINE, P.BLINK, P.OFF, P.ON, AMBER)),
]


@pytest.mark.parametrize(("inputs", "expected"), PICTURES, ids=[str(i) for i, _ in PICTURES])
def test_picture_table(inputs: LedInputs, expected: tuple) -> None:
    top, connection, activity, rgb, color = expected
    assert picture(inputs) == LedPicture(top=top, connection=connection, activity=activity,
                                         rgb=rgb, color=color)


def test_every_state_has_a_picture_and_every_look_is_distinct() -> None:
    for state in State:
        for connected in (False, True):
            assert picture(LedInputs(state, connected=connected)).top in PRIORITY
    looks = {}
    for top in PRIORITY:
        state = S.IDLE if top in (L.FOLLOW_UP, L.WAKE_WORD) else S(top.value)
        pic = picture(LedInputs(state, connected=True, muted=top is L.MUTED, wake_word=top is L.WAKE_WORD,
                                follow_up=top is L.FOLLOW_UP))
        assert pic.top is top
        looks[top] = (pic.activity, pic.rgb, pic.color)
    assert len(set(looks.values())) == len(PRIORITY)
    # the activity LED alone tells error, muted, speaking, thinking and listening apart
    activity = [looks[s][0] for s in (S.ERROR, S.MUTED, S.SPEAKING, S.THINKING, S.LISTENING)]
    assert len(set(activity)) == len(activity)


@given(state=st.sampled_from(State), connected=st.booleans(), muted=st.booleans(),
       backing_off=st.booleans(), error=st.booleans(), wake_word=st.booleans(), follow_up=st.booleans())
def test_picture_invariants(state: State, connected: bool, muted: bool, backing_off: bool,
                            error: bool, wake_word: bool, follow_up: bool) -> None:
    follow_up = follow_up and wake_word
    inputs = LedInputs(state, connected, muted=muted, backing_off=backing_off, error=error,
                       wake_word=wake_word, follow_up=follow_up)
    pic = picture(inputs)
    # the top state is the highest-priority one that applies
    applies = {
        S.ERROR: error or state is S.ERROR,
        S.OFFLINE: backing_off or state is S.OFFLINE,
        S.MUTED: muted or state is S.MUTED,
        S.SPEAKING: state is S.SPEAKING,
        S.THINKING: state is S.THINKING,
        S.LISTENING: state is S.LISTENING,
        S.CONNECTING: state in (S.CONNECTING, S.STARTING),
        L.FOLLOW_UP: follow_up,
        L.WAKE_WORD: wake_word,
        S.IDLE: True,
    }
    assert pic.top == next(s for s in PRIORITY if applies[s]) == top_state(inputs)
    # the activity LED is steadily on only while what the user says goes to the agent
    assert (pic.activity is P.ON) == (pic.top in (L.LISTENING, L.FOLLOW_UP))
    # the connection LED tells the connection's truth
    trying = backing_off or state is S.CONNECTING
    assert (pic.connection is P.BLINK) == trying
    assert (pic.connection is P.ON) == (not trying and connected and state is not S.OFFLINE)
    # a dark RGB LED has no colour
    assert (pic.rgb is P.OFF) == (pic.color == BLACK)


def test_demo_sequence_shows_every_look() -> None:
    assert {picture(i).top for i in DEMO_SEQUENCE} == set(PRIORITY)
    assert {picture(i).connection for i in DEMO_SEQUENCE} == {P.OFF, P.ON, P.BLINK}


def test_describe() -> None:
    assert describe(picture(LedInputs(S.THINKING, connected=True))) == (
        "thinking: connection=on activity=pulse rgb=cyan pulse")
    assert describe(picture(LedInputs(S.IDLE, connected=False))) == (
        "idle: connection=off activity=off rgb=off")


def test_default_timings_are_distinct() -> None:
    blinks = {p.timing for p in (P.BLINK, P.FAST_BLINK, P.SLOW_BLINK)}
    assert len(blinks) == 3
    assert P.PULSE.timing.fade_in > 0 and P.PULSE.timing.fade_out > 0
    assert P.FAST_BLINK.timing.on < P.BLINK.timing.on


# --------------------------------------------------------------------------- the driver

CONN, ACT, RGB = 17, 27, (22, 23, 24)
ALL_PINS = (CONN, ACT, *RGB)

# Short timings so that a few cycles fit in a fraction of a second.
FAST = {
    P.BLINK: Timing(on=0.02, off=0.02),
    P.FAST_BLINK: Timing(on=0.01, off=0.01),
    P.SLOW_BLINK: Timing(on=0.01, off=0.03),
    P.PULSE: Timing(fade_in=0.1, fade_out=0.1),
}
WATCH = 0.2  # seconds to watch a pin: several cycles of every FAST pattern


@pytest.fixture(params=["pwm", "plain"])
def factory(request: pytest.FixtureRequest) -> Iterator[MockFactory]:
    """A mock pin factory with PWM pins, or with plain ones (as GPIOZERO_PIN_FACTORY=mock)."""
    f = MockFactory(pin_class=MockPWMPin) if request.param == "pwm" else MockFactory()
    yield f
    f.reset()


def level(pin, active_high: bool) -> float:
    """How lit a pin makes its LED: 0 dark .. 1 fully lit."""
    state = float(pin.state)
    return state if active_high else 1.0 - state


def watch(factory: MockFactory, pins, active_high: bool, seconds: float = WATCH) -> dict:
    """Record each pin over ``seconds`` and classify it: off, on, blink or pulse.

    ``seconds=0``: classify what was recorded since the caller cleared the pins' states.
    """
    if seconds:
        for p in pins:
            factory.pin(p).clear_states()
        time.sleep(seconds)
    seen = {}
    for p in pins:
        pin = factory.pin(p)
        levels = [s.state if active_high else 1.0 - s.state for s in pin.states]
        if len(levels) <= 1:  # no change while watched: steady (a PWM level counts as on)
            seen[p] = "on" if level(pin, active_high) > 0 else "off"
        elif any(0.0 < v < 1.0 for v in levels):
            seen[p] = "pulse"
        else:
            seen[p] = "blink"
    return seen


def kind(pattern: Pattern, pwm: bool) -> str:
    if pattern is P.PULSE:
        return "pulse" if pwm else "blink"
    return {P.OFF: "off", P.ON: "on"}.get(pattern, "blink")


def pwm_of(factory: MockFactory) -> bool:
    return factory.pin_class is MockPWMPin


@pytest.mark.slow
def test_every_state_shows_its_pattern_on_the_pins() -> None:
    # PWM and plain pins, active-high and active-low, side by side (watched together).
    rigs = []
    for pwm in (True, False):
        for active_high in (True, False):
            factory = MockFactory(pin_class=MockPWMPin) if pwm else MockFactory()
            leds = LedDriver(CONN, ACT, RGB, active_high=active_high, pin_factory=factory,
                             timings=FAST)
            rigs.append((factory, leds, pwm, active_high))
    try:
        for inputs in DEMO_SEQUENCE:
            pic = picture(inputs)
            for _, leds, _, _ in rigs:
                leds.apply(pic)
            for factory, _, _, _ in rigs:
                for p in ALL_PINS:
                    factory.pin(p).clear_states()
            time.sleep(WATCH)
            for factory, _, pwm, active_high in rigs:
                seen = watch(factory, ALL_PINS, active_high, seconds=0)
                where = f"{describe(pic)} (pwm={pwm}, active_high={active_high})"
                assert seen[CONN] == kind(pic.connection, pwm=False), where
                assert seen[ACT] == kind(pic.activity, pwm), where
                for pin, component in zip(RGB, pic.color, strict=True):
                    if component == 0 or pic.rgb is P.OFF:
                        assert seen[pin] == "off", (where, pin)
                    else:
                        assert seen[pin] == kind(pic.rgb, pwm), (where, pin)
    finally:
        for _, leds, _, _ in rigs:
            leds.close()


def test_rgb_colours_on_pwm_and_plain_pins() -> None:
    pwm = MockFactory(pin_class=MockPWMPin)
    with LedDriver(None, None, RGB, pin_factory=pwm) as leds:
        leds.apply(picture(LedInputs(S.OFFLINE, connected=False)))  # amber, on
        assert [pwm.pin(p).state for p in RGB] == [1.0, 0.5, 0.0]
        leds.apply(picture(LedInputs(S.LISTENING, connected=True)))  # green, on
        assert [pwm.pin(p).state for p in RGB] == [0.0, 1.0, 0.0]
    plain = MockFactory()
    with LedDriver(None, None, RGB, active_high=False, pin_factory=plain) as leds:
        leds.apply(picture(LedInputs(S.OFFLINE, connected=False)))  # amber -> red + green
        assert [plain.pin(p).state for p in RGB] == [False, False, True]  # active low


@pytest.mark.parametrize("active_high", [True, False], ids=["active_high", "active_low"])
@pytest.mark.parametrize("end", [
    LedInputs(S.IDLE, connected=True),                       # the agent was stopped
    LedInputs(S.IDLE, connected=False),                      # the session closed
    LedInputs(S.OFFLINE, connected=False, backing_off=True),  # the connection dropped
    LedInputs(S.OFFLINE, connected=False),
], ids=["idle-connected", "idle-closed", "offline-retrying", "offline"])
def test_a_session_that_ends_mid_speech_leaves_nothing_lit(factory: MockFactory,
                                                           active_high: bool,
                                                           end: LedInputs) -> None:
    with LedDriver(CONN, ACT, RGB, active_high=active_high, pin_factory=factory,
                   timings=FAST) as leds:
        for state in (S.CONNECTING, S.IDLE, S.LISTENING, S.THINKING, S.SPEAKING):
            leds.apply(picture(LedInputs(state, connected=state is not S.CONNECTING)))
        time.sleep(0.05)  # mid-blink
        pic = picture(end)
        leds.apply(pic)
        seen = watch(factory, ALL_PINS, active_high, seconds=0.1)
        assert seen[ACT] == "off"
        assert seen[CONN] == kind(pic.connection, pwm=False)
        colour = pic.color if pwm_of(factory) else tuple(float(c > 0) for c in pic.color)
        for pin, component in zip(RGB, colour, strict=True):
            assert seen[pin] == ("on" if component else "off")
            assert level(factory.pin(pin), active_high) == component


def test_listening_then_idle_is_not_stuck(factory: MockFactory) -> None:
    with LedDriver(CONN, ACT, pin_factory=factory, timings=FAST) as leds:
        leds.apply(picture(LedInputs(S.LISTENING, connected=True)))
        assert level(factory.pin(ACT), True) == 1.0
        leds.apply(picture(LedInputs(S.IDLE, connected=True)))
        assert watch(factory, [CONN, ACT], True, seconds=0.1) == {CONN: "on", ACT: "off"}


def test_an_unchanged_pattern_is_not_restarted() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    with LedDriver(CONN, ACT, RGB, pin_factory=factory, timings=FAST) as leds:
        speaking = picture(LedInputs(S.SPEAKING, connected=False))
        leds.apply(speaking)
        threads = (leds.activity_led._blink_thread, leds.rgb_led._blink_thread)
        assert all(t is not None and t.is_alive() for t in threads)
        for _ in range(3):
            leds.apply(speaking)
            leds.apply(picture(LedInputs(S.SPEAKING, connected=True)))  # only conn changes
        assert (leds.activity_led._blink_thread, leds.rgb_led._blink_thread) == threads
        assert leds.picture == picture(LedInputs(S.SPEAKING, connected=True))
        # a change of colour with the same pattern does restart the RGB LED
        leds.apply(picture(LedInputs(S.CONNECTING, connected=False)))  # white blink
        assert leds.rgb_led._blink_thread is not threads[1]


@pytest.mark.parametrize("active_high", [True, False], ids=["active_high", "active_low"])
def test_off_and_close_leave_every_led_dark(factory: MockFactory, active_high: bool) -> None:
    leds = LedDriver(CONN, ACT, RGB, active_high=active_high, pin_factory=factory, timings=FAST)
    leds.apply(picture(LedInputs(S.ERROR, connected=True)))
    time.sleep(0.03)
    leds.off()
    assert watch(factory, ALL_PINS, active_high, seconds=0.1) == dict.fromkeys(ALL_PINS, "off")
    assert leds.picture is None
    leds.apply(picture(LedInputs(S.SPEAKING, connected=True)))  # shows again after off()
    assert watch(factory, [ACT], active_high, seconds=0.1)[ACT] in ("blink", "pulse")
    leds.close()
    leds.close()  # idempotent
    assert leds.closed
    # released: an input drives nothing, so no LED can be lit by a pin left high or low
    assert all(factory.pin(p).function == "input" for p in ALL_PINS)
    factory.pin(ACT).clear_states()
    leds.apply(picture(LedInputs(S.LISTENING, connected=True)))  # after close: a no-op
    leds.off()
    time.sleep(0.05)
    assert len(factory.pin(ACT).states) == 1
    # the pins are free again
    LedDriver(CONN, ACT, RGB, active_high=active_high, pin_factory=factory).close()


def test_context_manager_turns_off_on_error(factory: MockFactory) -> None:
    with pytest.raises(KeyError), LedDriver(CONN, ACT, pin_factory=factory, timings=FAST) as leds:
        leds.apply(picture(LedInputs(S.LISTENING, connected=True)))
        raise KeyError("boom")
    assert leds.closed
    assert not factory.pin(ACT).state  # turned off before the pin was released


def test_unset_leds(factory: MockFactory) -> None:
    with LedDriver(None, None, pin_factory=factory) as nothing:
        for inputs in DEMO_SEQUENCE:
            nothing.apply(picture(inputs))
        nothing.off()
    with LedDriver(None, ACT, pin_factory=factory) as only_activity:
        assert only_activity.connection_led is None and only_activity.rgb_led is None
        only_activity.apply(picture(LedInputs(S.LISTENING, connected=True)))
        assert level(factory.pin(ACT), True) == 1.0


def test_activity_led_without_pwm_blinks_for_thinking() -> None:
    factory = MockFactory()
    with LedDriver(None, ACT, pin_factory=factory, timings=FAST) as leds:
        leds.apply(picture(LedInputs(S.THINKING, connected=True)))
        assert watch(factory, [ACT], True) == {ACT: "blink"}
        assert all(s.state in (True, False) for s in factory.pin(ACT).states)


# --------------------------------------------------------------------------- errors


def test_a_pin_in_use_is_a_device_error_naming_the_pin(factory: MockFactory) -> None:
    with pytest.raises(DeviceError, match=r"GPIO 17 \(activity LED\).*already in use"):
        LedDriver(CONN, CONN, pin_factory=factory)
    # the connection LED opened first was released again
    LedDriver(CONN, None, pin_factory=factory).close()


def test_an_rgb_pin_in_use_names_the_colour_and_leaves_nothing_open(
        factory: MockFactory) -> None:
    with pytest.raises(DeviceError, match=r"GPIO 17 \(RGB LED blue\)"):
        LedDriver(CONN, ACT, (22, 23, CONN), pin_factory=factory)
    LedDriver(CONN, ACT, RGB, pin_factory=factory).close()


def test_a_bad_pin_is_a_device_error(factory: MockFactory) -> None:
    with pytest.raises(DeviceError, match=r"GPIO 99 \(connection LED\).*not a pin"):
        LedDriver(99, None, pin_factory=factory)
    with pytest.raises(DeviceError, match="three pins"):
        LedDriver(None, None, (22, 23), pin_factory=factory)  # type: ignore[arg-type]


@pytest.mark.parametrize(("exc", "needles"), [
    (BadPinFactory("Unable to load any default pin factory!"),
     ["GPIO 17 (button)", "python3-lgpio", "GPIOZERO_PIN_FACTORY=lgpio",
      "GPIOZERO_PIN_FACTORY=mock"]),
    (RuntimeError("Failed to add edge detection"),
     ["GPIO 17 (button)", "Bookworm", "GPIOZERO_PIN_FACTORY=lgpio", "apt install python3-lgpio"]),
    (GPIOPinInUse("pin GPIO17 is already in use"), ["GPIO 17 (button)", "already in use"]),
    (OSError("GPIO busy"), ["already in use"]),
    (PermissionError(13, "Permission denied: '/dev/gpiochip0'"), ["'gpio' group"]),
    (ValueError("strange"), ["GPIO 17 (button)", "ValueError: strange"]),
])
def test_open_error_messages(exc: BaseException, needles: list[str]) -> None:
    error = open_error(exc, pin=17, role="button")
    assert isinstance(error, DeviceError)
    for needle in needles:
        assert needle in str(error)
