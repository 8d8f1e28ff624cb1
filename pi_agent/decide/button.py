"""The push button's gestures and what they mean: pure, part of the decision core.

* :class:`ButtonClassifier` turns timestamped edges into :class:`ButtonEvent` values; time
  comes in as an argument, so it is tested as a table with no threads.
* :class:`ButtonPolicy` (immutable) says what an event means in the current
  :class:`~pi_agent.decide.states.State` (:class:`ButtonIntent`), as the Voice PE firmware
  does: the same click stops the agent while it speaks and starts listening otherwise.

The pin itself is watched by :class:`pi_agent.gpio.button.ButtonInput` (gpiozero), which
feeds its edges to a classifier on the event loop.

Events of one gesture (press-down to release)::

    DOWN ─┬─ released before hold_time ─────────────────────────▶ PRESS
          └─ hold_time reached ─▶ HOLD_START ─┬─ released ──────▶ HOLD_END
                                              └─ long_hold_time ▶ LONG_HOLD ─ released ▶ HOLD_END

``DOWN`` comes at the moment of pressing: that is when a press must stop the agent's
speech (at once, not on release). ``PRESS`` / ``HOLD_START`` / ``HOLD_END`` /
``LONG_HOLD`` follow; :class:`ButtonPolicy` swallows them after a ``DOWN`` that
stopped the agent, except ``LONG_HOLD`` (mute still toggles).

Note: on its own, the policy turns a push-to-talk hold that lasts past ``long_hold_time``
into a mute toggle (the turn is cancelled); the controller keeps such a hold a turn when
the user is speaking; ``long_hold_time=None`` turns long holds off.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import ConfigError
from .states import State


class ButtonEvent(enum.StrEnum):
    """What the button did, as the controller hears it."""

    DOWN = "down"              # pressed (now): the moment to stop the agent's speech
    PRESS = "press"            # released before hold_time: a click
    HOLD_START = "hold_start"  # held for hold_time: push-to-talk begins
    HOLD_END = "hold_end"      # released after HOLD_START (also after a LONG_HOLD)
    LONG_HOLD = "long_hold"    # held for long_hold_time: toggle mute

    def __str__(self) -> str:
        return self.value



class ButtonClassifier:
    """Timestamped edges in, :class:`ButtonEvent` lists out. Pure: never reads the clock.

    Call :meth:`down` and :meth:`up` on edges and :meth:`tick` at (or after)
    :meth:`deadline`. Repeated edges (down while down, up while up) are ignored, so a
    button that is already pressed at start-up produces nothing until pressed again.
    """

    def __init__(self, hold_time: float = 0.4, long_hold_time: float | None = 3.0) -> None:
        if not hold_time > 0:
            raise ConfigError(f"button hold_time must be more than 0 seconds, got {hold_time}")
        if long_hold_time is not None and not long_hold_time > hold_time:
            raise ConfigError(f"button long_hold_time ({long_hold_time} s) must be longer than "
                              f"hold_time ({hold_time} s), or unset to disable long holds")
        self.hold_time = hold_time
        self.long_hold_time = long_hold_time
        self._pressed_at: float | None = None
        self._held = False
        self._long = False

    @property
    def pressed(self) -> bool:
        return self._pressed_at is not None

    def down(self, now: float) -> list[ButtonEvent]:
        """The button went down at ``now``."""
        if self._pressed_at is not None:
            return []
        self._pressed_at = now
        self._held = self._long = False
        return [ButtonEvent.DOWN]

    def up(self, now: float) -> list[ButtonEvent]:
        """The button went up at ``now``. Hold thresholds passed since the last tick count."""
        if self._pressed_at is None:
            return []
        events = self.tick(now)
        if self._held:  # after a long hold too: the owner may need to see the release
            events.append(ButtonEvent.HOLD_END)
        else:
            events.append(ButtonEvent.PRESS)
        self._pressed_at = None
        return events

    def tick(self, now: float) -> list[ButtonEvent]:
        """Emit the hold events whose time has come by ``now``."""
        if self._pressed_at is None:
            return []
        held_for = now - self._pressed_at
        events = []
        if not self._held and held_for >= self.hold_time:
            self._held = True
            events.append(ButtonEvent.HOLD_START)
        if (not self._long and self.long_hold_time is not None
                and held_for >= self.long_hold_time):
            self._long = True
            events.append(ButtonEvent.LONG_HOLD)
        return events

    def deadline(self) -> float | None:
        """When :meth:`tick` has something to emit next (``None``: nothing pending)."""
        if self._pressed_at is None:
            return None
        if not self._held:
            return self._pressed_at + self.hold_time
        if not self._long and self.long_hold_time is not None:
            return self._pressed_at + self.long_hold_time
        return None

    def reset(self) -> None:
        """Forget a gesture in progress (the button was closed while pressed)."""
        self._pressed_at = None
        self._held = self._long = False


class ButtonIntent(enum.StrEnum):
    """What the user meant by a button event, in the current state."""

    STOP = "stop"                        # stop the agent now: flush playback, Trigger.STOP
    START_LISTENING = "start_listening"  # open a turn (connect first if needed)
    STOP_LISTENING = "stop_listening"    # the user's turn is over (Trigger.SPEECH_END)
    TALK_START = "talk_start"            # push-to-talk: stream the mic while held
    TALK_END = "talk_end"                # push-to-talk released: the turn is over
    TALK_CANCEL = "talk_cancel"          # a push-to-talk hold became a long hold: drop the turn
    TOGGLE_MUTE = "toggle_mute"          # Trigger.MUTE, or Trigger.UNMUTE when muted

    def __str__(self) -> str:
        return self.value


_CAN_START = frozenset({State.IDLE, State.OFFLINE, State.ERROR})


@dataclass(frozen=True, slots=True)
class ButtonPolicy:
    """Maps (event, state) to intents, the Voice PE way. Pure and immutable: the policy
    for the next event comes back with the intents (it remembers the gesture so far).

    ==========  ===================================  ===================================
    event       state when it arrives                intents
    ==========  ===================================  ===================================
    DOWN        speaking, thinking                   STOP; the rest of the gesture is
                                                     ignored, except LONG_HOLD
    PRESS       idle, offline, error                 START_LISTENING
    PRESS       listening                            STOP_LISTENING
    HOLD_START  idle, listening, offline, error      TALK_START
    HOLD_END    (after a TALK_START in this gesture) TALK_END
    LONG_HOLD   any                                  TOGGLE_MUTE (after a TALK_START in
                                                     this gesture: TALK_CANCEL first)
    ==========  ===================================  ===================================

    Anything else means nothing: a press while muted (a long hold unmutes), or while
    starting or connecting (a turn is already on its way).
    """

    swallow: bool = False  # this gesture's DOWN stopped the agent: the rest means nothing
    talking: bool = False  # this gesture started a push-to-talk turn

    def decide(self, event: ButtonEvent, state: State) -> tuple[ButtonPolicy, tuple[ButtonIntent, ...]]:
        """The policy after ``event``, and the intents of ``event`` arriving in ``state``."""
        if event is ButtonEvent.DOWN:
            swallow = state in (State.SPEAKING, State.THINKING)
            return ButtonPolicy(swallow, False), ((ButtonIntent.STOP,) if swallow else ())
        if event is ButtonEvent.LONG_HOLD:
            cancel = (ButtonIntent.TALK_CANCEL,) if self.talking else ()
            return ButtonPolicy(self.swallow, False), (*cancel, ButtonIntent.TOGGLE_MUTE)
        if event is ButtonEvent.HOLD_END:
            return ButtonPolicy(self.swallow, False), ((ButtonIntent.TALK_END,) if self.talking else ())
        if self.swallow:
            return self, ()
        if event is ButtonEvent.PRESS:
            if state in _CAN_START:
                return self, (ButtonIntent.START_LISTENING,)
            if state is State.LISTENING:
                return self, (ButtonIntent.STOP_LISTENING,)
            return self, ()
        if event is ButtonEvent.HOLD_START and (state in _CAN_START or state is State.LISTENING):
            return ButtonPolicy(self.swallow, True), (ButtonIntent.TALK_START,)
        return self, ()
