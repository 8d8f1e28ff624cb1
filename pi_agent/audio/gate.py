"""The capture gate: which mic audio goes to the agent, and when a user turn starts and ends.

Pure: it is fed one 20 ms frame at a time with the current time and the facts it needs
(echo mute deadline, user mute), and takes commands from the decisions
(:meth:`CaptureGate.apply`: button pressed or released, turn started or ended); voice
activity comes from an injected ``is_speech(frame) -> bool`` (webrtcvad in the daemon, a
table in tests).

Modes:

``push_to_talk``
    Real audio while the button is held (or toggled on), with ``preroll`` seconds of the
    audio before the press; zero-filled frames otherwise, so the server ends the turn.

When a turn starts, :attr:`GateOutput.preroll` holds the audio just before it; the owner
sends it unless it already went out live (``preroll_was_sent``) — and keeps it with the
turn's other frames while a conversation is still being opened.
``vad``
    A turn starts when most of the last 100 ms is voiced, and ends after ``hangover``
    seconds of non-speech. The ``preroll`` before the trigger belongs to the turn, so the
    first syllable is sent. Non-speech audio is sent as is, or as zeros with ``privacy``.
``always``
    Real audio all the time; every frame counts as part of the user's turn.

Echo (``half_duplex``): until ``echo_mute_until`` (the speaker's real play-out time plus
a tail) frames are zeros and VAD does not run, so the agent never hears itself. A held
push-to-talk button overrides it: the controller has flushed the speaker by then.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from . import FRAME_BYTES, FRAME_MS

SILENCE = bytes(FRAME_BYTES)
TRIGGER_WINDOW = 5  # frames (100 ms) looked at to decide that speech started
TRIGGER_VOICED = 3  # of which this many must be voiced


class GateCommand(enum.StrEnum):
    """What the decisions tell the gate (:meth:`CaptureGate.apply`)."""

    PRESS = "press"            # push_to_talk: the button is held (or toggled on)
    RELEASE = "release"        # push_to_talk: released (the turn ends on the next frame)
    START_TURN = "start_turn"  # vad/always: a turn starts now (button, API)
    END_TURN = "end_turn"      # the turn is over (server transcript, stop, mute, closed)

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class GateOutput:
    """What to do with one mic frame."""

    frames: list[bytes] = field(default_factory=list)  # to send now
    preroll: list[bytes] = field(default_factory=list)  # the audio just before a turn started
    preroll_was_sent: bool = False  # ... which already went out as real audio (vad, no privacy)
    speech: bool = False   # these frames belong to a user turn (kept while connecting)
    started: bool = False  # a user turn started here
    ended: bool = False    # the user turn ended here


class CaptureGate:
    def __init__(
        self,
        mode: str,
        is_speech: Callable[[bytes], bool],
        *,
        preroll: float = 0.3,
        hangover: float = 0.8,
        privacy: bool = False,
    ) -> None:
        if mode not in ("push_to_talk", "vad", "always"):
            raise ValueError(f"unknown capture mode {mode!r}")
        self.mode = mode
        self._is_speech = is_speech
        self._privacy = privacy
        self._hangover_frames = max(1, round(hangover * 1000 / FRAME_MS))
        self._preroll: deque[bytes] = deque(maxlen=max(1, round(preroll * 1000 / FRAME_MS)))
        self._window: deque[bool] = deque(maxlen=TRIGGER_WINDOW)
        self._silent_run = 0
        self.in_turn = False
        self.button = False  # push_to_talk: held or toggled on
        self.heard_speech = False  # push_to_talk: the VAD heard the user during this hold

    def apply(self, command: GateCommand) -> None:
        """Carry out a command of the decisions."""
        if command is GateCommand.PRESS:
            self.button = True
        elif command is GateCommand.RELEASE:
            self.button = False  # push_to_talk: the turn ends on the next frame
        elif command is GateCommand.START_TURN:
            self.in_turn = True  # vad/always: the hangover (or an END_TURN) ends it
        else:
            self.reset()

    def reset(self) -> None:
        """Forget the current turn (user stop, mute, conversation closed)."""
        self.in_turn = False
        self._silent_run = 0
        self._window.clear()
        self._preroll.clear()

    def process(self, frame: bytes, now: float, *, echo_mute_until: float = 0.0,
                muted: bool = False) -> GateOutput:
        out = GateOutput()
        if muted:
            if self.in_turn:
                self.reset()
                out.ended = True
            out.frames.append(SILENCE)
            return out
        if self.mode == "push_to_talk":
            return self._push_to_talk(frame, out)
        echo = now < echo_mute_until
        if self.mode == "always":
            if echo:
                out.frames.append(SILENCE)
                return out
            out.frames.append(frame)
            out.speech = True
            out.started = not self.in_turn
            self.in_turn = True
            return out
        return self._vad(frame, out, echo)

    def _push_to_talk(self, frame: bytes, out: GateOutput) -> GateOutput:
        if self.button:
            if not self.in_turn:
                self.in_turn = out.started = True
                self.heard_speech = False
                out.preroll.extend(self._preroll)
                self._preroll.clear()
            elif not self.heard_speech:
                self.heard_speech = self._is_speech(frame)
            out.frames.append(frame)
            out.speech = True
            return out
        if self.in_turn:
            self.in_turn = False
            out.ended = True
        self._preroll.append(frame)
        out.frames.append(SILENCE)
        return out

    def _vad(self, frame: bytes, out: GateOutput, echo: bool) -> GateOutput:
        if echo:
            # The speaker is (or was just) playing: nothing the mic hears now is the user.
            if self.in_turn:
                self.reset()
                out.ended = True
            else:
                self._window.clear()
                self._preroll.clear()
            out.frames.append(SILENCE)
            return out
        voiced = self._is_speech(frame)
        if not self.in_turn:
            self._window.append(voiced)
            if voiced and sum(self._window) >= TRIGGER_VOICED:
                self.in_turn = out.started = out.speech = True
                self._silent_run = 0
                self._window.clear()
                out.preroll.extend(self._preroll)
                out.preroll_was_sent = not self._privacy
                self._preroll.clear()
                out.frames.append(frame)
                return out
            self._preroll.append(frame)
            out.frames.append(SILENCE if self._privacy else frame)
            return out
        out.speech = True
        out.frames.append(frame)
        self._silent_run = 0 if voiced else self._silent_run + 1
        if self._silent_run >= self._hangover_frames:
            self.in_turn = False
            self._silent_run = 0
            out.ended = True
        return out
