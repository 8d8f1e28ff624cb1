"""The capture gate: which mic audio goes to the agent, and when a user turn starts and ends.

Pure: it is fed one 20 ms frame at a time with the current time and the facts it needs
(whether the user's turn is on, echo mute deadline, user mute, the follow-up window), and
takes commands from the decisions (:meth:`CaptureGate.apply`: button pressed or released,
turn started or ended); voice activity comes from an injected ``is_speech(frame) -> bool``
(webrtcvad in the daemon, a table in tests), the wake word from an injected detector
(:class:`WakeWord`).

The gate does not hold whether a turn is on: the model does
(:attr:`pi_agent.decide.model.Model.in_turn`), and the caller passes it with each frame
(``in_turn``). The gate reports what it saw in the frame (:class:`GateOutput`: a turn
``started`` or ``ended`` here, the wake word), and the decisions set ``in_turn`` from those
verdicts and from their own commands (``START_TURN``, which they send only when no turn is
on, and ``END_TURN``). What the gate keeps is how far it is into measuring a turn: the
hangover's count of silent frames, the wait for a user to begin, the trigger window and
the pre-roll.

Modes:

``push_to_talk``
    Real audio while the button is held (or toggled on), with ``preroll`` seconds of the
    audio before the press; zero-filled frames otherwise, so the server ends the turn.
``vad``
    A turn starts when most of the last 100 ms is voiced, and ends after ``hangover``
    seconds of non-speech. The ``preroll`` before the trigger belongs to the turn, so the
    first syllable is sent. Non-speech audio is sent as is, or as zeros with ``privacy``.
``wake_word``
    Zeros until the wake word is heard (only the detector hears the room; VAD does not
    even run); then a turn as in ``vad``, without the wake word. While a follow-up
    window is open (``open_until``: after the agent's reply), speech starts a turn as in
    ``vad`` with ``privacy``, no wake word needed.
``always``
    Real audio all the time; every frame counts as part of the user's turn.

When a turn starts, :attr:`GateOutput.preroll` holds the audio just before it; the owner
sends it unless it already went out live (``preroll_was_sent``) — and keeps it with the
turn's other frames while a conversation is still being opened.

A turn begun by a command (a press, the API) or by the wake word gives the user
:data:`SPEECH_WAIT` seconds to begin before the hangover counts; a turn in which nothing
was said ends with :attr:`GateOutput.nothing_said`.

Echo cancellation (``aec``): while the speaker plays (``speaker_until``), what is left
of its echo is no user: speech counts only at :data:`BARGE_IN_DBFS` or louder, so a
user who talks over the reply is heard and a residue of the reply is not. With ``duck``
the gate also says when such a voice is heard over the reply (:attr:`GateOutput.duck`:
most of 100 ms voiced, in every mode but ``push_to_talk``, the wake word's included)
and when it is over (:data:`DUCK_RELEASE` without a voiced frame, or the speaker
stopped), so that the reply is lowered meanwhile: the echo canceller, which suppresses
what it cannot tell from echo, keeps more of the user's words (the wake word, a
question over the reply) the quieter the echo is.

Holding the microphone back (``quiet``, for ``session.quiet_keepalive``): when the owner
allows it (a persistent conversation in which nothing happens) and no turn has been on for
:data:`QUIET_AFTER` seconds, nothing goes out: the gate keeps the last :data:`HOLD` seconds
of the audio it would have sent (frames of zeros are simply not sent) and hands them on, in
order, with the frame in which a turn starts (the VAD's 3 voiced frames in 100 ms, a press,
the wake word) or the owner no longer allows it; from then on every frame goes again. So a
user who starts to talk is sent from a second before their turn began, the stray voiced
frame of a noisy room holds nothing up, and a pause inside what they say never holds
anything back. Muting forgets what was held.

Echo (``half_duplex``): until ``echo_mute_until`` (the speaker's real play-out time plus
a tail) frames are zeros and neither VAD nor the wake word runs, so the agent never
hears itself. A held push-to-talk button, or a turn begun for the user that is still
waiting for them to speak, overrides it: the controller has flushed the speaker by then,
and all that plays is the earcon that asked them to speak.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..decide.effects import GateCommand
from . import FRAME_BYTES, FRAME_MS
from .formats import dbfs

SILENCE = bytes(FRAME_BYTES)
TRIGGER_WINDOW = 5  # frames (100 ms) looked at to decide that speech started
TRIGGER_VOICED = 3  # of which this many must be voiced
SPEECH_WAIT = 4.0  # s a turn begun by a press or the wake word waits for the user to begin
BARGE_IN_DBFS = -42.0  # aec: how loud a voiced frame must be to count while the speaker plays
DUCK_RELEASE = 0.6  # s without a voiced frame over the reply after which it is no longer lowered
QUIET_AFTER = 3.0  # s without a turn after which a quiet owner's microphone is held back
HOLD = 1.0  # s of held-back audio kept, sent before the frame in which a turn starts
MODES = ("push_to_talk", "vad", "wake_word", "always")


class WakeWord(Protocol):
    """A wake-word detector (:class:`~pi_agent.audio.wakeword.WakeWordDetector`)."""

    def __call__(self, frame: bytes) -> float | None:
        """Feed one frame: the detection's probability if the wake word ended here, else None."""

    def reset(self) -> None:
        """Forget what was heard (the mic was muted in between)."""


@dataclass(slots=True)
class GateOutput:
    """What to do with one mic frame."""

    frames: list[bytes] = field(default_factory=list)  # to send now
    preroll: list[bytes] = field(default_factory=list)  # the audio just before a turn started
    preroll_was_sent: bool = False  # ... which already went out as real audio (vad, no privacy)
    speech: bool = False   # these frames belong to a user turn (kept while connecting)
    started: bool = False  # a user turn started here
    ended: bool = False    # the user turn ended here
    nothing_said: bool = False  # ... before the user said anything (a press or wake word, then silence)
    wake: float | None = None  # the wake word was heard here, with this probability
    duck: bool | None = None  # with duck: a voice over the reply began (True) or ended (False) here
    held: bool = False  # quiet: this frame was held back (nothing to send; see the module docstring)


class CaptureGate:
    def __init__(
        self,
        mode: str,
        is_speech: Callable[[bytes], bool],
        *,
        wake_word: WakeWord | None = None,
        preroll: float = 0.3,
        hangover: float = 0.8,
        privacy: bool = False,
        duck: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown capture mode {mode!r}")
        if mode == "wake_word" and wake_word is None:
            raise ValueError("the wake_word mode needs a wake-word detector")
        self.mode = mode
        self._is_speech = is_speech
        self._wake = wake_word
        self._wake_heard_room = False  # the detector has been fed since it was last reset
        self._privacy = privacy or mode == "wake_word"
        self._hangover_frames = max(1, round(hangover * 1000 / FRAME_MS))
        self._wait_frames = round(SPEECH_WAIT * 1000 / FRAME_MS)
        self._over_speaker = False  # aec: the speaker plays now
        self._voiced_now: bool | None = None  # this frame's verdict, once asked (VAD runs once a frame)
        self._duck = duck and mode != "push_to_talk"  # the button stops a reply there: nothing to lower
        self._duck_window: deque[bool] = deque(maxlen=TRIGGER_WINDOW)
        self._duck_release = max(1, round(DUCK_RELEASE * 1000 / FRAME_MS))
        self._duck_quiet = 0  # frames since the last voiced one over the reply
        self.ducking = False  # a voice is heard over the reply: it is lowered
        self._preroll: deque[bytes] = deque(maxlen=max(1, round(preroll * 1000 / FRAME_MS)))
        self._window: deque[bool] = deque(maxlen=TRIGGER_WINDOW)
        self._silent_run = 0
        self._waiting = 0  # frames left for the user to begin a turn begun for them (0: they have)
        self.button = False  # push_to_talk: held or toggled on
        self.heard_speech = False  # push_to_talk: the VAD heard the user during this hold
        self.wake_words = 0  # wake_word: detections so far
        self._quiet_after = round(QUIET_AFTER * 1000 / FRAME_MS)
        self._calm = 0  # frames in a row without a turn while the owner allowed holding back
        self._held: deque[bytes] = deque(maxlen=round(HOLD * 1000 / FRAME_MS))

    def apply(self, command: GateCommand) -> None:
        """Carry out a command of the decisions."""
        if command is GateCommand.PRESS:
            self.button = True
        elif command is GateCommand.RELEASE:
            self.button = False  # push_to_talk: the turn ends on the next frame
        elif command is GateCommand.START_TURN:  # sent only while no turn is on
            self._begin(waiting=True)  # the hangover (or an END_TURN) ends it
        else:
            self.reset()

    def reset(self) -> None:
        """Forget the current turn's measures (user stop, mute, conversation closed, a turn ended)."""
        self._silent_run = self._waiting = 0
        self._window.clear()
        self._preroll.clear()

    def process(self, frame: bytes, now: float, *, in_turn: bool, echo_mute_until: float = 0.0,
                speaker_until: float = 0.0, muted: bool = False, open_until: float = 0.0,
                quiet: bool = False) -> GateOutput:
        """One frame at ``now``. ``in_turn``: the user's turn is on (the model's); ``echo_mute_until``:
        half_duplex mutes until then; ``speaker_until``: aec, the speaker plays until then;
        ``open_until``: the wake_word mode's follow-up window; ``quiet``: the owner allows the
        microphone to be held back (see the module docstring)."""
        out = self._process(frame, now, in_turn, echo_mute_until, speaker_until, muted, open_until)
        if quiet or self._calm or self._held:
            self._hold_back(out, quiet, muted)
        return out

    def _hold_back(self, out: GateOutput, quiet: bool, muted: bool) -> None:
        """quiet: hold the frame back after :data:`QUIET_AFTER` without a turn; hand on what was
        held, first, with the frame in which one starts."""
        if muted:
            self._held.clear()  # what was heard before a mute is never sent after it
        turn = out.speech or out.started or out.wake is not None
        self._calm = self._calm + 1 if quiet and not turn else 0
        if self._calm > self._quiet_after:
            self._held.extend(f for f in out.frames if f != SILENCE)  # zeros carry nothing: not kept
            out.frames = []
            out.held = True
        elif self._held:
            out.frames[:0] = self._held
            self._held.clear()

    def _process(self, frame: bytes, now: float, in_turn: bool, echo_mute_until: float, speaker_until: float,
                 muted: bool, open_until: float) -> GateOutput:
        out = GateOutput()
        self._over_speaker = now < speaker_until
        self._voiced_now = None
        if self._duck:
            self._follow_voice_over_reply(frame, out, muted)
        if muted:
            self._deafen_wake_word()
            if in_turn:
                self.reset()
                out.ended = True
            out.frames.append(SILENCE)
            return out
        if self.mode == "push_to_talk":
            return self._push_to_talk(frame, out, in_turn)
        echo = now < echo_mute_until
        if self.mode == "always":
            if echo:
                out.frames.append(SILENCE)
                return out
            out.frames.append(frame)
            out.speech = True
            out.started = not in_turn
            return out
        if echo:
            return self._echo(frame, out, in_turn)
        if self.mode == "wake_word":
            return self._wake_word(frame, out, in_turn, now < open_until)
        return self._vad(frame, out, in_turn)

    # --- the modes --------------------------------------------------------------------------

    def _push_to_talk(self, frame: bytes, out: GateOutput, in_turn: bool) -> GateOutput:
        if self.button:
            if not in_turn:
                out.started = True
                self.heard_speech = False
                out.preroll.extend(self._preroll)
                self._preroll.clear()
            elif not self.heard_speech:
                self.heard_speech = self._is_speech(frame)
            out.frames.append(frame)
            out.speech = True
            return out
        if in_turn:
            out.ended = True
        self._preroll.append(frame)
        out.frames.append(SILENCE)
        return out

    def _echo(self, frame: bytes, out: GateOutput, in_turn: bool) -> GateOutput:
        """The speaker is (or was just) playing: nothing the mic hears now is the user."""
        self._deafen_wake_word()
        if in_turn and self._waiting:
            # A turn begun for the user, and what plays is the "listening" earcon that said
            # so (agent audio was flushed first): the user may already be talking over its
            # tail, so the audio goes out as it is; VAD waits for the speaker to be quiet.
            out.speech = True
            out.frames.append(frame)
            return out
        if in_turn:
            self.reset()
            out.ended = True
        else:
            self._window.clear()
            self._preroll.clear()
        out.frames.append(SILENCE)
        return out

    def _vad(self, frame: bytes, out: GateOutput, in_turn: bool) -> GateOutput:
        voiced = self._voiced(frame)
        if in_turn:
            return self._turn(frame, voiced, out)
        if self._triggered(voiced):
            return self._vad_start(frame, out)
        self._preroll.append(frame)
        out.frames.append(SILENCE if self._privacy else frame)
        return out

    def _wake_word(self, frame: bytes, out: GateOutput, in_turn: bool, follow_up: bool) -> GateOutput:
        assert self._wake is not None
        out.wake = self._wake(frame)  # fed every frame the room is heard, so it misses no onset
        self._wake_heard_room = True
        if out.wake is not None:
            self.wake_words += 1
        if in_turn:
            return self._turn(frame, self._voiced(frame), out)
        if out.wake is not None:
            # The wake word is over (it is detected at its end): the turn starts after it,
            # with no pre-roll, so none of it is sent.
            self._begin(waiting=True)
            self._preroll.clear()
            out.started = out.speech = True
            out.frames.append(SILENCE)
            return out
        if follow_up:
            if self._triggered(self._voiced(frame)):
                return self._vad_start(frame, out)
        else:
            self._window.clear()  # VAD only runs in the follow-up window
        self._preroll.append(frame)
        out.frames.append(SILENCE)
        return out

    # --- turns ------------------------------------------------------------------------------

    def _voiced(self, frame: bytes) -> bool:
        """VAD's verdict; over the speaker (aec) only for a frame loud enough to be the user."""
        voiced = self._voiced_now
        if voiced is None:
            voiced = self._voiced_now = self._is_speech(frame) and (
                not self._over_speaker or dbfs(frame) >= BARGE_IN_DBFS)
        return voiced

    def _follow_voice_over_reply(self, frame: bytes, out: GateOutput, muted: bool) -> None:
        """duck: whether a voice is heard over the reply now (see the module docstring)."""
        if not self._over_speaker or muted:
            self._duck_window.clear()
            if self.ducking:
                self.ducking, out.duck = False, False
            return
        voiced = self._voiced(frame)
        self._duck_window.append(voiced)
        self._duck_quiet = 0 if voiced else self._duck_quiet + 1
        if not self.ducking and voiced and sum(self._duck_window) >= TRIGGER_VOICED:
            self.ducking, out.duck = True, True
        elif self.ducking and self._duck_quiet >= self._duck_release:
            self.ducking, out.duck = False, False
            self._duck_window.clear()

    def _triggered(self, voiced: bool) -> bool:
        self._window.append(voiced)
        return voiced and sum(self._window) >= TRIGGER_VOICED

    def _begin(self, *, waiting: bool) -> None:
        """A turn starts: its measures start afresh."""
        self._silent_run = 0
        self._waiting = self._wait_frames if waiting else 0
        self._window.clear()

    def _vad_start(self, frame: bytes, out: GateOutput) -> GateOutput:
        """Speech started: the turn begins with the pre-roll before the trigger."""
        self._begin(waiting=False)
        out.started = out.speech = True
        out.preroll.extend(self._preroll)
        out.preroll_was_sent = not self._privacy
        self._preroll.clear()
        out.frames.append(frame)
        return out

    def _turn(self, frame: bytes, voiced: bool, out: GateOutput) -> GateOutput:
        out.speech = True
        out.frames.append(frame)
        if self._waiting:
            # A turn begun for the user: the hangover counts from their first voiced frame.
            self._waiting = 0 if voiced else self._waiting - 1
            if not voiced and not self._waiting:
                self.reset()
                out.ended = out.nothing_said = True
            return out
        self._silent_run = 0 if voiced else self._silent_run + 1
        if self._silent_run >= self._hangover_frames:
            self._silent_run = 0
            out.ended = True
        return out

    def _deafen_wake_word(self) -> None:
        """The mic is muted: when it hears the room again the detector starts afresh."""
        if self._wake is not None and self._wake_heard_room:
            self._wake.reset()
            self._wake_heard_room = False
