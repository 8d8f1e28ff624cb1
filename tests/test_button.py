"""The button: the pure classifier and policy as tables, and ButtonInput on gpiozero's mock pins."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from pi_agent.errors import ConfigError, DeviceError, InternalError
from pi_agent.decide.button import (
    ButtonClassifier,
    ButtonEvent,
    ButtonIntent,
    ButtonPolicy,
)
from pi_agent.gpio.button import ButtonInput
from pi_agent.decide.states import State

E = ButtonEvent
I = ButtonIntent  # noqa: E741
S = State

# --------------------------------------------------------------------------- the classifier

# (edges and ticks, hold_time 0.4, long_hold_time 3.0) -> events, in order
CLASSIFIER = {
    "click": ([("down", 0.0), ("up", 0.1)], [E.DOWN, E.PRESS]),
    "click just short of hold": ([("down", 1.0), ("tick", 1.39), ("up", 1.399)],
                                 [E.DOWN, E.PRESS]),
    "hold by timer": ([("down", 0.0), ("tick", 0.4), ("up", 1.0)],
                      [E.DOWN, E.HOLD_START, E.HOLD_END]),
    "hold seen only at release": ([("down", 0.0), ("up", 1.0)],
                                  [E.DOWN, E.HOLD_START, E.HOLD_END]),
    "early tick emits nothing": ([("down", 0.0), ("tick", 0.2), ("tick", 0.5), ("tick", 0.6),
                                  ("up", 0.7)], [E.DOWN, E.HOLD_START, E.HOLD_END]),
    "long hold": ([("down", 0.0), ("tick", 0.4), ("tick", 3.0), ("tick", 4.0), ("up", 5.0)],
                  [E.DOWN, E.HOLD_START, E.LONG_HOLD, E.HOLD_END]),
    "long hold, one late tick": ([("down", 0.0), ("tick", 3.5), ("up", 4.0)],
                                 [E.DOWN, E.HOLD_START, E.LONG_HOLD, E.HOLD_END]),
    "long hold seen only at release": ([("down", 0.0), ("up", 3.0)],
                                       [E.DOWN, E.HOLD_START, E.LONG_HOLD, E.HOLD_END]),
    "two gestures": ([("down", 0.0), ("up", 0.1), ("down", 0.2), ("tick", 0.6), ("up", 0.7)],
                     [E.DOWN, E.PRESS, E.DOWN, E.HOLD_START, E.HOLD_END]),
    "repeated edges ignored": ([("up", 0.0), ("down", 0.1), ("down", 0.2), ("up", 0.3),
                                ("up", 0.4), ("tick", 9.0)], [E.DOWN, E.PRESS]),
    "a long hold then a click": ([("down", 0.0), ("up", 3.2), ("down", 4.0), ("up", 4.1)],
                                 [E.DOWN, E.HOLD_START, E.LONG_HOLD, E.HOLD_END, E.DOWN, E.PRESS]),
}


def run(classifier: ButtonClassifier, steps: list[tuple[str, float]]) -> list[ButtonEvent]:
    events: list[ButtonEvent] = []
    for op, now in steps:
        events += getattr(classifier, op)(now)
    return events


@pytest.mark.parametrize("name", CLASSIFIER)
def test_classifier_table(name: str) -> None:
    steps, expected = CLASSIFIER[name]
    assert run(ButtonClassifier(hold_time=0.4, long_hold_time=3.0), steps) == expected


def test_classifier_without_long_hold() -> None:
    c = ButtonClassifier(hold_time=0.4, long_hold_time=None)
    assert run(c, [("down", 0.0), ("tick", 0.5), ("tick", 100.0), ("up", 200.0)]) == [
        E.DOWN, E.HOLD_START, E.HOLD_END]


def test_classifier_deadlines() -> None:
    c = ButtonClassifier(hold_time=0.4, long_hold_time=3.0)
    assert c.deadline() is None and not c.pressed
    c.down(10.0)
    assert c.pressed and c.deadline() == pytest.approx(10.4)
    c.tick(10.4)
    assert c.deadline() == pytest.approx(13.0)
    c.tick(13.0)
    assert c.deadline() is None
    c.up(14.0)
    assert c.deadline() is None and not c.pressed
    c.down(20.0)
    c.reset()
    assert not c.pressed and c.deadline() is None and c.up(21.0) == []


@pytest.mark.parametrize(("hold", "long"), [(0.0, 3.0), (-1.0, 3.0), (0.5, 0.5), (1.0, 0.5)])
def test_classifier_rejects_bad_times(hold: float, long: float) -> None:
    with pytest.raises(ConfigError, match="hold_time"):
        ButtonClassifier(hold_time=hold, long_hold_time=long)


# --------------------------------------------------------------------------- the policy

# a gesture (events with the state each arrives in) -> intents, in order
POLICY = {
    "click when idle starts listening": ([(E.DOWN, S.IDLE), (E.PRESS, S.IDLE)],
                                         [I.START_LISTENING]),
    "click while listening ends the turn": ([(E.DOWN, S.LISTENING), (E.PRESS, S.LISTENING)],
                                            [I.STOP_LISTENING]),
    "press while speaking stops it at once, release does nothing": (
        [(E.DOWN, S.SPEAKING), (E.PRESS, S.IDLE)], [I.STOP]),
    "press while thinking stops it": ([(E.DOWN, S.THINKING), (E.PRESS, S.IDLE)], [I.STOP]),
    "hold after stopping speech is not push-to-talk": (
        [(E.DOWN, S.SPEAKING), (E.HOLD_START, S.IDLE), (E.HOLD_END, S.IDLE)], [I.STOP]),
    "long hold after stopping speech still mutes": (
        [(E.DOWN, S.SPEAKING), (E.HOLD_START, S.IDLE), (E.LONG_HOLD, S.IDLE)],
        [I.STOP, I.TOGGLE_MUTE]),
    "click when offline or failed starts (reconnects)": (
        [(E.DOWN, S.OFFLINE), (E.PRESS, S.OFFLINE), (E.DOWN, S.ERROR), (E.PRESS, S.ERROR)],
        [I.START_LISTENING, I.START_LISTENING]),
    "click while muted, starting or connecting does nothing": (
        [(E.DOWN, S.MUTED), (E.PRESS, S.MUTED), (E.DOWN, S.STARTING), (E.PRESS, S.STARTING),
         (E.DOWN, S.CONNECTING), (E.PRESS, S.CONNECTING)], []),
    "push-to-talk": ([(E.DOWN, S.IDLE), (E.HOLD_START, S.IDLE), (E.HOLD_END, S.LISTENING)],
                     [I.TALK_START, I.TALK_END]),
    "push-to-talk while already listening": (
        [(E.DOWN, S.LISTENING), (E.HOLD_START, S.LISTENING), (E.HOLD_END, S.LISTENING)],
        [I.TALK_START, I.TALK_END]),
    "hold while muted is not push-to-talk": (
        [(E.DOWN, S.MUTED), (E.HOLD_START, S.MUTED), (E.HOLD_END, S.MUTED)], []),
    "long hold mutes and cancels the push-to-talk turn": (
        [(E.DOWN, S.IDLE), (E.HOLD_START, S.IDLE), (E.LONG_HOLD, S.LISTENING)],
        [I.TALK_START, I.TALK_CANCEL, I.TOGGLE_MUTE]),
    "long hold unmutes": ([(E.DOWN, S.MUTED), (E.HOLD_START, S.MUTED), (E.LONG_HOLD, S.MUTED)],
                          [I.TOGGLE_MUTE]),
    "a new gesture forgets the last one": (
        [(E.DOWN, S.SPEAKING), (E.DOWN, S.IDLE), (E.PRESS, S.IDLE)],
        [I.STOP, I.START_LISTENING]),
}


@pytest.mark.parametrize("name", POLICY)
def test_policy_table(name: str) -> None:
    gesture, expected = POLICY[name]
    policy = ButtonPolicy()
    intents: list[ButtonIntent] = []
    for event, state in gesture:
        policy, now = policy.decide(event, state)
        intents += now
    assert intents == expected


def test_policy_with_classifier_end_to_end() -> None:
    """Edges through the classifier and the policy, as the controller would run them."""
    c, policy = ButtonClassifier(0.4, 3.0), ButtonPolicy()

    def run(events: list[ButtonEvent], state: State) -> list[ButtonIntent]:
        nonlocal policy
        out: list[ButtonIntent] = []
        for e in events:
            policy, intents = policy.decide(e, state)
            out += intents
        return out

    assert run(c.down(0.0), S.SPEAKING) == [I.STOP]
    assert run(c.up(0.1), S.IDLE) == []  # the click that stopped speech does not also start listening
    assert run(c.down(1.0) + c.up(1.1), S.IDLE) == [I.START_LISTENING]


# --------------------------------------------------------------------------- ButtonInput

HOLD, LONG = 0.1, 0.3
PIN = 17


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


class Recorder:
    """Collects events with the thread they arrived on and the loop time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[ButtonEvent, int, float]] = asyncio.Queue()

    def __call__(self, event: ButtonEvent) -> None:
        self.queue.put_nowait((event, threading.get_ident(), self.loop.time()))

    async def next(self, timeout: float = 3.0) -> tuple[ButtonEvent, int, float]:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def nothing_more(self, seconds: float = 0.15) -> None:
        await asyncio.sleep(seconds)
        assert self.queue.empty(), self.queue.get_nowait()


async def open_button(factory: MockFactory, **kwargs) -> tuple[ButtonInput, Recorder]:
    loop = asyncio.get_running_loop()
    button = ButtonInput(PIN, hold_time=kwargs.pop("hold_time", HOLD),
                         long_hold_time=kwargs.pop("long_hold_time", LONG),
                         pin_factory=factory, **kwargs)
    recorder = Recorder(loop)
    button.start(loop, recorder)
    return button, recorder


async def press(factory: MockFactory, pin: int = PIN, *, low: bool = True) -> None:
    """Press from another thread, as gpiozero's own callbacks would."""
    p = factory.pin(pin)
    await asyncio.to_thread(p.drive_low if low else p.drive_high)


async def release(factory: MockFactory, pin: int = PIN, *, low: bool = True) -> None:
    p = factory.pin(pin)
    await asyncio.to_thread(p.drive_high if low else p.drive_low)


def click_now(factory: MockFactory, pin: int = PIN) -> None:
    """Press and release at once (call from a worker thread)."""
    factory.pin(pin).drive_low()
    factory.pin(pin).drive_high()


async def test_click_is_delivered_on_the_loop_thread(factory: MockFactory) -> None:
    button, rec = await open_button(factory, hold_time=1.0, long_hold_time=3.0)
    with button:
        assert factory.pin(PIN).state  # pull-up: released is high
        loop_thread = threading.get_ident()
        edge_threads: set[int] = set()

        def click() -> None:
            edge_threads.add(threading.get_ident())
            factory.pin(PIN).drive_low()
            factory.pin(PIN).drive_high()

        await asyncio.to_thread(click)
        (e1, t1, _), (e2, t2, _) = await rec.next(), await rec.next()
        assert (e1, e2) == (E.DOWN, E.PRESS)
        assert t1 == t2 == loop_thread and loop_thread not in edge_threads
        await rec.nothing_more()


async def test_hold_is_push_to_talk(factory: MockFactory) -> None:
    button, rec = await open_button(factory)
    with button:
        await press(factory)
        event, _, down_at = await rec.next()
        assert event is E.DOWN and button.pressed
        event, _, held_at = await rec.next()
        assert event is E.HOLD_START
        assert held_at - down_at >= HOLD - 0.01
        await release(factory)
        assert (await rec.next())[0] is E.HOLD_END
        await rec.nothing_more()
        assert not button.pressed


async def test_long_hold_then_its_release(factory: MockFactory) -> None:
    button, rec = await open_button(factory)
    with button:
        await press(factory)
        (e1, _, down_at), (e2, _, _), (e3, _, long_at) = [await rec.next() for _ in range(3)]
        assert (e1, e2, e3) == (E.DOWN, E.HOLD_START, E.LONG_HOLD)
        assert long_at - down_at >= LONG - 0.01
        await release(factory)
        assert (await rec.next())[0] is E.HOLD_END  # the owner sees the release (push-to-talk)
        await rec.nothing_more()
        # and the button works normally afterwards
        await asyncio.to_thread(click_now, factory)
        assert [(await rec.next())[0] for _ in range(2)] in ([E.DOWN, E.PRESS],
                                                             [E.DOWN, E.HOLD_START])


async def test_pull_down_wiring_pressed_is_high(factory: MockFactory) -> None:
    button, rec = await open_button(factory, pull_up=False, hold_time=1.0, long_hold_time=2.0)
    with button:
        assert not factory.pin(PIN).state
        await press(factory, low=False)
        await release(factory, low=False)
        assert [(await rec.next())[0] for _ in range(2)] == [E.DOWN, E.PRESS]


async def test_close_drops_a_gesture_in_progress_and_frees_the_pin(factory: MockFactory) -> None:
    button, rec = await open_button(factory)
    await press(factory)
    assert (await rec.next())[0] is E.DOWN
    button.close()
    button.close()  # idempotent
    assert button.closed and not button.pressed
    await rec.nothing_more(LONG + 0.1)  # no HOLD_START / LONG_HOLD after close
    # the pin is free again, and a new button works
    again, rec2 = await open_button(factory, hold_time=1.0, long_hold_time=2.0)
    with again:
        await release(factory)
        await press(factory)
        assert (await rec2.next())[0] is E.DOWN
    await rec.nothing_more(0)


async def test_handler_errors_do_not_stop_the_button(factory: MockFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    got: list[ButtonEvent] = []

    def handler(event: ButtonEvent) -> None:
        got.append(event)
        if event is E.DOWN:
            raise ValueError("handler bug")

    with ButtonInput(PIN, hold_time=1.0, long_hold_time=2.0, pin_factory=factory) as button:
        button.start(loop, handler)
        await asyncio.to_thread(click_now, factory)
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
    assert got == [E.DOWN, E.PRESS]
    assert "handler bug" in caplog.text


async def test_start_twice_or_after_close_is_our_bug(factory: MockFactory) -> None:
    button, _ = await open_button(factory)
    loop = asyncio.get_running_loop()
    with pytest.raises(InternalError):
        button.start(loop, print)
    button.close()
    with pytest.raises(InternalError):
        button.start(loop, print)


async def test_pin_errors_are_device_errors(factory: MockFactory) -> None:
    loop = asyncio.get_running_loop()
    with ButtonInput(PIN, pin_factory=factory) as first:
        first.start(loop, print)
        with pytest.raises(DeviceError, match=r"GPIO 17 \(button\).*already in use"):
            ButtonInput(PIN, pin_factory=factory).start(loop, print)
    with pytest.raises(DeviceError, match=r"GPIO 99 \(button\).*not a pin"):
        ButtonInput(99, pin_factory=factory).start(loop, print)
    # GPIO 2 has a fixed pull-up on the Pi
    with pytest.raises(DeviceError, match=r"GPIO 2 \(button\).*fixed pull-up.*pull_up to true"):
        ButtonInput(2, pull_up=False, pin_factory=factory).start(loop, print)
    with ButtonInput(2, pull_up=True, pin_factory=factory) as ok:  # and it was not left reserved
        ok.start(loop, print)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="long_hold_time"):
        ButtonInput(PIN, hold_time=2.0, long_hold_time=1.0)
    with pytest.raises(ConfigError, match="bounce_time"):
        ButtonInput(PIN, bounce_time=-0.1)
