"""The capture gate: modes, pre-roll, hangover, echo muting, user mute."""

from __future__ import annotations

from pi_agent.audio import FRAME_BYTES
from pi_agent.audio.gate import SILENCE, CaptureGate, GateCommand

LOUD = b"\x10\x20" * (FRAME_BYTES // 2)


def frames(n: int, tag: int) -> list[bytes]:
    return [bytes([tag, i % 256]) * (FRAME_BYTES // 2) for i in range(n)]


def vad_gate(voiced: set[bytes], **kw) -> CaptureGate:
    return CaptureGate("vad", lambda f: f in voiced, **kw)


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
    g = CaptureGate("push_to_talk", lambda f: False, preroll=0.06)
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
    g = CaptureGate("always", lambda f: False)
    out = g.process(LOUD, 0.0)
    assert out.frames == [LOUD] and out.speech and out.started
    assert g.process(LOUD, 0.0).started is False
    assert g.process(LOUD, 0.0, echo_mute_until=1.0).frames == [SILENCE]
    muted = g.process(LOUD, 0.0, muted=True)
    assert muted.frames == [SILENCE] and muted.ended
