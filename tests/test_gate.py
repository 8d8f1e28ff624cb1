"""The capture gate: modes, pre-roll, hangover, echo muting, user mute."""

from __future__ import annotations

import numpy as np

from pi_agent.audio import FRAME_BYTES
from pi_agent.audio.gate import SILENCE, SPEECH_WAIT, CaptureGate, GateOutput
from pi_agent.decide.effects import GateCommand

LOUD = b"\x10\x20" * (FRAME_BYTES // 2)


def frames(n: int, tag: int) -> list[bytes]:
    return [bytes([tag, i % 256]) * (FRAME_BYTES // 2) for i in range(n)]


class Fed:
    """A gate with what its caller keeps for it: whether the user's turn is on (the model's
    ``in_turn``), set from the gate's verdicts and from the commands, as the decisions do."""

    def __init__(self, gate: CaptureGate) -> None:
        self.gate = gate
        self.in_turn = False

    def process(self, frame: bytes, now: float, **kw) -> GateOutput:
        out = self.gate.process(frame, now, in_turn=self.in_turn, **kw)
        self.in_turn = (self.in_turn or out.started) and not out.ended
        return out

    def apply(self, command: GateCommand) -> None:
        if command is GateCommand.START_TURN and self.in_turn:
            return  # the decisions start a turn only while none is on
        self.gate.apply(command)
        if command is GateCommand.START_TURN:
            self.in_turn = True
        elif command is GateCommand.END_TURN:
            self.in_turn = False

    @property
    def wake_words(self) -> int:
        return self.gate.wake_words


def vad_gate(voiced: set[bytes], **kw) -> Fed:
    return Fed(CaptureGate("vad", lambda f: f in voiced, **kw))


def test_vad_turn_starts_with_the_preroll_and_ends_after_the_hangover() -> None:
    quiet, speech, after = frames(30, 1), frames(20, 2), frames(60, 3)
    g = vad_gate(set(speech), preroll=0.3, hangover=0.4)
    sent: list[bytes] = []
    started = ended = None
    t = 0.0
    for i, f in enumerate(quiet + speech + after):
        out = g.process(f, t)
        t += 0.02
        if out.started:
            started = i
            assert out.preroll == quiet[-13:] + speech[:2]  # the 300 ms up to the trigger
            assert out.preroll_was_sent  # no privacy: they went out live already
        if out.ended:
            ended = i
        sent.extend(out.frames)
    assert started == 30 + 2  # third voiced frame of the 100 ms window
    assert ended == 30 + 20 + 20 - 1  # 20 non-speech frames = 400 ms hangover
    assert sent == quiet + speech + after  # without privacy everything is sent as is


def test_privacy_sends_zeros_outside_speech_and_the_preroll_at_the_start() -> None:
    quiet, speech = frames(30, 1), frames(10, 2)
    g = vad_gate(set(speech), preroll=0.1, privacy=True)
    outs = [g.process(f, 0.0) for f in quiet + speech]
    assert all(o.frames == [SILENCE] for o in outs[:32])
    start = outs[32]
    assert start.started and not start.preroll_was_sent
    assert start.preroll == quiet[-3:] + speech[:2]
    assert start.frames == [speech[2]]


def test_half_duplex_echo_mutes_and_vad_does_not_trigger() -> None:
    speech = frames(20, 2)
    g = vad_gate(set(speech))
    outs = [g.process(f, 1.0, echo_mute_until=2.0) for f in speech]
    assert all(o.frames == [SILENCE] and not o.started for o in outs)
    later = [g.process(f, 2.5, echo_mute_until=2.0) for f in speech]
    assert any(o.started for o in later)


def test_echo_during_a_turn_ends_it() -> None:
    speech = frames(10, 2)
    g = vad_gate(set(speech))
    for f in speech:
        g.process(f, 0.0)
    assert g.in_turn
    out = g.process(speech[0], 1.0, echo_mute_until=5.0)
    assert out.ended and not g.in_turn


def test_push_to_talk_streams_only_while_held_with_preroll() -> None:
    g = Fed(CaptureGate("push_to_talk", lambda f: False, preroll=0.06))
    before, held, after = frames(10, 1), frames(5, 2), frames(3, 3)
    outs = [g.process(f, 0.0) for f in before]
    assert all(o.frames == [SILENCE] for o in outs)
    g.apply(GateCommand.PRESS)
    outs = [g.process(f, 0.0, echo_mute_until=99.0) for f in held]  # a held button overrides echo muting
    assert outs[0].started and outs[0].preroll == before[-3:]
    assert [o.frames[0] for o in outs] == held and all(o.speech for o in outs)
    g.apply(GateCommand.RELEASE)
    outs = [g.process(f, 0.0) for f in after]
    assert outs[0].ended and all(o.frames == [SILENCE] for o in outs)


def test_always_streams_and_respects_echo_and_mute() -> None:
    g = Fed(CaptureGate("always", lambda f: False))
    out = g.process(LOUD, 0.0)
    assert out.frames == [LOUD] and out.speech and out.started
    assert g.process(LOUD, 0.0).started is False
    assert g.process(LOUD, 0.0, echo_mute_until=1.0).frames == [SILENCE]
    muted = g.process(LOUD, 0.0, muted=True)
    assert muted.frames == [SILENCE] and muted.ended


# --------------------------------------------------------------------------- wake_word


class Detector:
    """A wake-word detector by table: fires on the frames in ``fires``; counts its resets."""

    def __init__(self, fires: set[bytes]) -> None:
        self.fires = fires
        self.fed: list[bytes] = []
        self.resets = 0

    def __call__(self, frame: bytes) -> float | None:
        self.fed.append(frame)
        return 0.97 if frame in self.fires else None

    def reset(self) -> None:
        self.resets += 1


def wake_gate(voiced: set[bytes], fires: set[bytes], **kw) -> tuple[Fed, Detector]:
    detector = Detector(fires)
    return Fed(CaptureGate("wake_word", lambda f: f in voiced, wake_word=detector, **kw)), detector


def run(g: Fed, fs: list[bytes], t0: float = 0.0, **kw) -> list:
    return [g.process(f, t0 + n * 0.02, **kw) for n, f in enumerate(fs)]


def test_wake_word_sends_nothing_and_starts_no_turn_until_it_is_heard() -> None:
    talk = frames(200, 1)  # four seconds of speech that is not the wake word
    g, detector = wake_gate(set(talk), set())
    outs = run(g, talk)
    assert all(o.frames == [SILENCE] and not o.started and not o.speech for o in outs)
    assert detector.fed == talk  # the detector heard all of it
    assert g.wake_words == 0


def test_the_turn_starts_after_the_wake_word_without_it_and_ends_after_the_question() -> None:
    word, pause, question, after = frames(15, 1), frames(10, 2), frames(40, 3), frames(60, 4)
    g, _ = wake_gate(set(word) | set(question), {word[-1]}, hangover=0.4)
    outs = run(g, word + pause + question + after)
    sent = [f for o in outs for f in o.frames]
    start = outs[len(word) - 1]
    assert start.wake == 0.97 and start.started and start.speech and start.preroll == []
    assert sent[: len(word)] == [SILENCE] * len(word)  # not a sample of the wake word goes out
    assert sent[len(word):len(word) + 10 + 40] == pause + question  # all that follows does, from its start
    ends = [n for n, o in enumerate(outs) if o.ended]
    assert ends == [len(word) + 10 + 40 + 20 - 1] and not outs[ends[0]].nothing_said  # 400 ms hangover
    assert all(o.frames == [SILENCE] for o in outs[ends[0] + 1:])  # back to waiting
    assert g.wake_words == 1


def test_a_wake_word_with_nothing_after_it_ends_the_turn_as_nothing_said() -> None:
    word, silence = frames(5, 1), frames(250, 2)
    g, _ = wake_gate(set(word), {word[-1]})
    outs = run(g, word + silence)
    ends = [n for n, o in enumerate(outs) if o.ended]
    wait = round(SPEECH_WAIT / 0.02)
    assert ends == [len(word) - 1 + wait] and outs[ends[0]].nothing_said  # the user had SPEECH_WAIT to begin


def test_a_press_gives_the_user_time_to_begin_in_vad_and_wake_word_modes() -> None:
    silence, question = frames(100, 1), frames(20, 2)  # 2 s of silence after the press, then speech
    voiced = set(question)
    for mode in ("vad", "wake_word"):
        g = Fed(CaptureGate(mode, voiced.__contains__, wake_word=Detector(set()), hangover=0.4))
        g.apply(GateCommand.START_TURN)
        outs = run(g, silence + question + frames(25, 3))
        assert not any(o.ended for o in outs[:120]), mode  # not ended by the silence before the question
        assert [f for o in outs[:120] for f in o.frames] == silence + question, mode
        assert outs[120 + 19].ended and not outs[120 + 19].nothing_said, mode


def test_the_earcon_after_a_press_does_not_end_the_turn_or_mute_the_first_syllable() -> None:
    """half_duplex: the "listening" earcon plays right after the press; the user may talk over its tail."""
    question = frames(20, 2)
    g = vad_gate(set(question), hangover=0.4)
    g.apply(GateCommand.START_TURN)
    outs = run(g, question, echo_mute_until=0.2)  # the earcon and the echo tail: the first 200 ms
    assert [f for o in outs for f in o.frames] == question and not any(o.ended for o in outs)


def test_follow_up_window_starts_a_turn_on_speech_without_the_wake_word() -> None:
    quiet, answer = frames(20, 1), frames(20, 2)
    g, _ = wake_gate(set(answer), set(), preroll=0.1)
    outs = run(g, quiet + answer, open_until=5.0)
    start = next(n for n, o in enumerate(outs) if o.started)
    assert start == 20 + 2 and outs[start].wake is None
    assert outs[start].preroll == quiet[-3:] + answer[:2] and not outs[start].preroll_was_sent
    assert all(o.frames == [SILENCE] for o in outs[:start])  # privacy: nothing before the speech
    # The same answer after the window closed opens nothing.
    g, _ = wake_gate(set(answer), set())
    outs = run(g, quiet + answer, t0=6.0, open_until=5.0)
    assert not any(o.started for o in outs) and all(o.frames == [SILENCE] for o in outs)


def test_the_wake_word_is_not_listened_for_while_the_speaker_is_echoed_or_muted() -> None:
    word = frames(5, 1)
    g, detector = wake_gate(set(word), set(word))
    outs = run(g, word, echo_mute_until=1.0)
    assert not any(o.wake for o in outs) and detector.fed == []
    run(g, word[:1], t0=2.0, echo_mute_until=1.0)
    assert detector.fed == word[:1]
    out = g.process(word[1], 2.1, muted=True)
    assert out.wake is None and detector.resets == 1  # afresh once it hears the room again


def test_the_wake_word_during_a_turn_is_reported_and_the_turn_goes_on() -> None:
    """Full duplex, the stop word: the gate reports it; the decisions flush the speaker."""
    speech = frames(30, 1)
    g, _ = wake_gate(set(speech), {speech[20]})
    g.apply(GateCommand.START_TURN)
    outs = run(g, speech)
    assert outs[20].wake == 0.97 and not outs[20].started and g.in_turn


def test_over_the_speaker_with_aec_only_a_voice_louder_than_the_residue_is_the_user() -> None:
    """aec: what is left of the echo may sound like speech to VAD; while the speaker plays, a
    frame counts as the user's only at BARGE_IN_DBFS or louder."""
    residue = [(np.full(FRAME_BYTES // 2, 200, dtype="<i2")).tobytes()] * 20  # about -44 dBFS
    voice = [(np.full(FRAME_BYTES // 2, 2000, dtype="<i2")).tobytes()] * 20  # about -24 dBFS
    g = vad_gate(set(residue) | set(voice))
    assert not any(o.started for o in run(g, residue, speaker_until=99.0))
    assert any(o.started for o in run(g, voice, speaker_until=99.0))
    g = vad_gate(set(residue))
    assert any(o.started for o in run(g, residue, t0=100.0, speaker_until=99.0))  # the speaker is quiet again


def test_the_gate_keeps_no_copy_of_the_turn_it_is_told_it_with_each_frame() -> None:
    """One owner for the turn (issue 20): the model holds it; the gate only reports what it saw."""
    speech, quiet = frames(5, 2), frames(40, 1)
    g = CaptureGate("vad", set(speech).__contains__, hangover=0.4)
    assert not hasattr(g, "in_turn")
    outs = [g.process(f, 0.0, in_turn=False) for f in speech[:3]]
    assert [o.started for o in outs] == [False, False, True]  # the verdict: a turn starts here
    outs = [g.process(f, 0.0, in_turn=True) for f in quiet[:20]]  # the caller kept the turn on
    assert [n for n, o in enumerate(outs) if o.ended] == [19]  # ... and the hangover ended it
    # Told no turn is on, the same silence is no turn to end.
    assert not any(o.ended or o.speech for o in (g.process(f, 0.0, in_turn=False) for f in quiet))
    always = CaptureGate("always", lambda f: False)
    assert always.process(LOUD, 0.0, in_turn=False).started and not always.process(LOUD, 0.0, in_turn=True).started


# --- a voice over the reply lowers it (aec, audio.duck_db) -----------------------------------------

RESIDUE = (np.full(FRAME_BYTES // 2, 200, dtype="<i2")).tobytes()  # about -44 dBFS: what is left of the echo
VOICE = (np.full(FRAME_BYTES // 2, 2000, dtype="<i2")).tobytes()  # about -24 dBFS: a user over the reply
HUSH = bytes(FRAME_BYTES)


def ducks(outs: list[GateOutput]) -> list[tuple[int, bool]]:
    return [(n, o.duck) for n, o in enumerate(outs) if o.duck is not None]


def test_a_voice_over_the_reply_lowers_it_until_the_voice_has_been_quiet_for_0_6_s() -> None:
    """Most of 100 ms voiced and loud enough to be the user: lowered from the third such frame;
    30 frames (0.6 s) without one later, back. A pause shorter than that keeps it lowered."""
    g = vad_gate({VOICE, RESIDUE}, duck=True)
    talk = [VOICE] * 10 + [HUSH] * 20 + [VOICE] * 5 + [HUSH] * 40
    outs = run(g, talk, speaker_until=99.0)
    assert ducks(outs) == [(2, True), (64, False)]
    assert g.gate.ducking is False


def test_the_residue_of_the_echo_lowers_nothing_and_the_reply_ending_ends_the_duck() -> None:
    g = vad_gate({VOICE, RESIDUE}, duck=True)
    assert ducks(run(g, [RESIDUE] * 100, speaker_until=99.0)) == []  # voiced, but as quiet as the echo's residue
    assert ducks(run(g, [VOICE] * 3, t0=10.0, speaker_until=99.0)) == [(2, True)]
    assert ducks(run(g, [VOICE] * 3, t0=100.0, speaker_until=99.0)) == [(0, False)]  # the speaker stopped
    assert ducks(run(g, [VOICE] * 20, t0=101.0, speaker_until=99.0)) == []  # no reply: nothing to lower


def test_the_wake_word_mode_lowers_the_reply_for_a_voice_too_and_muting_ends_it() -> None:
    """Only the detector hears the room in wake_word mode, but over the reply VAD runs once a frame
    for the duck, so that the wake word said over a reply is heard through less echo."""
    calls: list[bytes] = []

    def vad(f: bytes) -> bool:
        calls.append(f)
        return f == VOICE

    g = Fed(CaptureGate("wake_word", vad, wake_word=Detector(set()), duck=True))
    outs = run(g, [VOICE] * 4, speaker_until=99.0)
    assert ducks(outs) == [(2, True)] and len(calls) == 4  # once a frame
    assert all(o.frames == [SILENCE] and not o.started for o in outs)  # still no turn without the wake word
    assert g.process(VOICE, 0.1, speaker_until=99.0, muted=True).duck is False


def test_no_duck_without_the_setting_or_with_push_to_talk() -> None:
    assert ducks(run(vad_gate({VOICE}), [VOICE] * 20, speaker_until=99.0)) == []
    ptt = Fed(CaptureGate("push_to_talk", lambda f: True, duck=True))
    assert ducks(run(ptt, [VOICE] * 20, speaker_until=99.0)) == []


# --- quiet: holding the mic back (session.quiet_keepalive) ------------------------------------

def _wire(g: Fed, feed: list[bytes], *, quiet: bool = True, muted_at: set[int] | None = None,
          ) -> tuple[list[bytes], list[GateOutput]]:
    """What reaches the agent, in order, as the controller sends it: the pre-roll (unless it went
    out live), then the frames."""
    sent: list[bytes] = []
    outs = []
    for k, f in enumerate(feed):
        out = g.process(f, k * 0.02, quiet=quiet, muted=k in (muted_at or set()))
        if out.started and not out.preroll_was_sent:
            sent.extend(out.preroll)
        sent.extend(out.frames)
        outs.append(out)
    return sent, outs


def test_quiet_holds_the_mic_back_and_hands_on_the_second_before_the_turn_first() -> None:
    from pi_agent.audio.gate import HOLD, QUIET_AFTER
    after, hold = round(QUIET_AFTER / 0.02), round(HOLD / 0.02)
    room, soft, speech, tail = frames(after + 200, 1), frames(25, 2), frames(30, 3), frames(20, 4)
    stray = {room[after + 20], room[after + 90]}  # a noisy room's odd voiced frame holds nothing up
    g = vad_gate(set(speech) | stray)  # the soft onset (half a second) is never voiced
    sent, outs = _wire(g, room + soft + speech + tail)
    assert not any(o.held for o in outs[:after])  # QUIET_AFTER without a turn first: sent live
    start = len(room) + len(soft) + 2  # the turn starts at the third voiced frame
    assert all(o.held and not o.frames for o in outs[after:start])
    assert outs[start].started and not outs[start].held
    assert outs[start].frames == (room + soft + speech)[start - hold:start + 1]
    assert sent == room[:after] + (room + soft + speech)[start - hold:] + tail  # nothing of the user lost
    assert not any(o.held for o in outs[start:])


def test_quiet_never_holds_a_pause_inside_speech_back() -> None:
    speech1, pause, speech2 = frames(40, 1), frames(100, 2), frames(40, 3)  # a 2 s pause
    g = vad_gate(set(speech1 + speech2), hangover=0.4)
    sent, outs = _wire(g, speech1 + pause + speech2)
    assert sent == speech1 + pause + speech2
    assert not any(o.held for o in outs)


def test_quiet_with_privacy_sends_no_zeros_and_the_preroll_at_the_start() -> None:
    from pi_agent.audio.gate import QUIET_AFTER
    after = round(QUIET_AFTER / 0.02)
    room, speech = frames(after + 100, 1), frames(20, 2)
    g = vad_gate(set(speech), preroll=0.1, privacy=True)
    sent, outs = _wire(g, room + speech)
    assert sent[:after] == [SILENCE] * after  # zeros, live, until it holds back
    assert sent[after:] == room[-3:] + speech  # then nothing but the turn: its pre-roll first
    assert not any(o.held for o in outs[len(room) + 2:])  # the turn starts at the third voiced frame


def test_quiet_forgets_what_it_held_when_the_mic_is_muted() -> None:
    from pi_agent.audio.gate import QUIET_AFTER
    after = round(QUIET_AFTER / 0.02)
    room, muted, speech = frames(after + 30, 1), frames(10, 2), frames(20, 3)
    g = vad_gate(set(speech))
    feed = room + muted + speech
    sent, _ = _wire(g, feed, muted_at=set(range(len(room), len(room) + len(muted))))
    assert not set(room[after:]) & set(sent)  # held before the mute: never sent
    assert sent[-len(speech):] == speech


def test_what_was_held_goes_first_when_holding_back_is_no_longer_allowed() -> None:
    from pi_agent.audio.gate import HOLD, QUIET_AFTER
    after, hold = round(QUIET_AFTER / 0.02), round(HOLD / 0.02)
    room, more = frames(after + 80, 1), frames(5, 2)  # e.g. an agent message: the conversation is busy
    g = vad_gate(set())
    sent, outs = _wire(g, room)
    late, _ = _wire(g, more, quiet=False)
    assert outs[-1].held and sent == room[:after]
    assert late == room[-hold:] + more
