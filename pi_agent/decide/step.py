"""One decision in the making (:class:`Step`), and the moves that the rules of more than one
owner make: ending the user's turn and stopping the agent's speech."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from . import effects as fx
from . import states
from .effects import GateCommand
from .model import Model
from .states import State, Trigger

S, T = State, Trigger


class Step:
    """One decision in the making: the model so far and the effects so far. Local to one call."""

    __slots__ = ("effects", "m", "now")

    def __init__(self, model: Model, now: float) -> None:
        self.m = model
        self.now = now
        self.effects: list[fx.Effect] = []

    def set(self, **changes: Any) -> None:
        self.m = replace(self.m, **changes)

    def do(self, *effects: fx.Effect) -> None:
        self.effects.extend(effects)

    def log(self, level: fx.Level, text: str) -> None:
        self.effects.append(fx.Log(level, text))

    def publish(self, **event: Any) -> None:
        self.effects.append(fx.Publish(event))

    def earcon(self, name: str) -> None:
        if name in self.m.config.earcons:
            self.effects.append(fx.Earcon(name))

    def fire(self, trigger: Trigger) -> bool:
        """Apply ``trigger`` if the table allows it here; False (and a debug line) if not."""
        if not states.can(self.m.state, trigger):
            self.log("debug", f"trigger {trigger} ignored in state {self.m.state}")
            return False
        t = states.fire(self.m.state, trigger)
        self.effects.append(fx.StateChange(t))
        if t.state is not t.previous:
            self.set(state=t.state, thinking_since=self.now if t.state is S.THINKING else self.m.thinking_since)
        return True


Handler = Callable[[Step, Any], None]
"""A rule: what one kind of input does to a step."""


def end_turn(s: Step) -> None:
    """End the user's turn without the turn's ending effects (stop, mute, a closed session)."""
    s.do(fx.Gate(GateCommand.END_TURN))
    s.set(in_turn=False)


def stop_playback(s: Step) -> None:
    """Silence the agent now (a stop, the stop word, a lost connection)."""
    s.do(fx.Flush())
    if s.m.state is S.SPEAKING:
        s.fire(T.STOP)
