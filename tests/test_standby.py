"""The speaker's standby (pi_agent.audio.standby): when its stream runs, stops, restarts
and is probed, as moves and deadlines, with no clock and no device."""

from __future__ import annotations

from pi_agent.audio.standby import Move, Standby


def opened(at: float = 0.0, standby_after: float = 1.0, probe_every: float = 2.0) -> Standby:
    s = Standby(standby_after, probe_every)
    s.opened(at)
    return s


def test_a_stream_that_holds_nothing_stops_after_standby_after_and_is_then_probed() -> None:
    s = opened()
    assert s.next_deadline() == 1.0
    assert s.due(0.5, 0.0, False) is None and s.running
    assert s.due(1.0, 0.0, False) is Move.STOP and not s.running
    assert s.next_deadline() == 3.0
    assert s.due(2.9, 0.0, False) is None
    assert s.due(3.0, 0.0, False) is Move.PROBE
    assert s.next_deadline() == 5.0
    assert s.due(5.0, 0.0, probe_pending=True) is Move.FAIL  # the last probe never finished: gone or stuck
    assert s.next_deadline() is None


def test_the_stop_waits_for_the_last_sound_to_be_heard() -> None:
    s = opened()
    assert s.sound(0.2, 0.0) is Move.RESTART  # the running stream held only silence
    assert s.due(1.0, 3.0, False) is None  # still audible until 3.0
    assert s.next_deadline() == 4.0
    assert s.sound(2.0, 3.0) is None  # more of the reply, behind what plays
    assert s.due(4.0, 3.5, False) is None and s.next_deadline() == 4.5
    assert s.due(4.5, 3.5, False) is Move.STOP


def test_a_sound_starts_a_stopped_stream_and_no_probe_is_due_while_it_runs() -> None:
    s = opened()
    s.due(1.0, 0.0, False)
    assert s.sound(1.5, 0.0) is Move.START and s.running
    assert s.next_deadline() == 2.5  # the probe at 3.0 is gone
    assert s.due(3.0, 0.0, probe_pending=True) is Move.STOP  # not FAIL: no probe was asked while running


def test_a_flush_stops_the_stream_unless_an_earcon_plays_on() -> None:
    s = opened()
    assert s.flushed(0.3, audible=True) is Move.RESTART and s.running
    assert s.flushed(0.4, audible=False) is Move.STOP and not s.running
    assert s.next_deadline() == 2.4
    assert s.flushed(0.5, audible=False) is None  # already stopped


def test_without_probes_a_stopped_stream_has_no_deadline() -> None:
    s = opened(probe_every=0.0)
    assert s.due(1.0, 0.0, False) is Move.STOP
    assert s.next_deadline() is None
