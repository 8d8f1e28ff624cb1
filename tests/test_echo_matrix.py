"""Issue 21's rig matrix: echo delay 20/60/120 ms x echo gain 0.25/1.0/2.0 x a reply that starts
the speaker from standby or finds it running.

In process (:mod:`tests.support_echo`): the daemon's own reference, frame clock, canceller,
standby rules and capture gate, on a simulated card faster than real time, all 18 cells.
Through the daemon (:func:`test_a_cell_through_the_daemon`): a few cells on the virtual card's
echo room (PulseAudio's module-loopback), in real time.

The issue's targets: attenuation >= 25 dB over the reply and >= 15 dB over its first 300 ms,
no false user turn, and in double talk (the user speaks 1.5 s into the reply) the user's words
kept at >= 50 % of their energy with a correlation >= 0.7. Where a cell falls short the test says
so with the figure it expects (:data:`SHORT`), and fails if the cell gets worse than that, or
if it now reaches the target (then the expectation is out of date).
"""

from __future__ import annotations


import numpy as np
import pytest

from pi_agent.audio.echo import unavailable

from .support_echo import CELLS, Scene, run_scene

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=f"{unavailable()}")]

REPLY = ("Our opening hours are from nine in the morning until six in the evening, every day except Monday. "
         "Tickets can be bought at the entrance or online, and children under twelve go in for free. ")
USER = "Wait, how much is a ticket for an adult?"
ATTENUATION_DB, FIRST_DB = 25.0, 15.0
DT_ENERGY, DT_CORR = 0.5, 0.7

# Cells short of the target in double talk, by echo gain: (energy, correlation) expected at least.
# None since pi_agent/audio/double_talk.py. Before it (AEC3 alone, at 7a47cd7): energy 26-31 % and
# correlation 0.61-0.65 at x1.0, 11-13 % and 0.44-0.46 at x2.0, over the 6 cells of each gain.
SHORT: dict[float, tuple[float, float]] = {}


@pytest.fixture(scope="module")
def voices() -> tuple[np.ndarray, np.ndarray]:
    from .test_wake_word import speak

    return speak(REPLY)[: 5 * 16_000], speak(USER, "en-gb-x-rp")


@pytest.mark.parametrize("scene", CELLS, ids=str)
def test_the_matrix_in_process(scene: Scene, voices: tuple[np.ndarray, np.ndarray]) -> None:
    reply, words = voices
    f = run_scene(scene, reply, words)
    print(f"\nMEASURED echo_matrix {scene}: {f.line()}")
    assert min(f.attenuation_db) >= ATTENUATION_DB, f.line()
    assert min(f.first_db) >= FIRST_DB, f.line()
    assert f.false_turns == 0, f.line()
    assert f.starts == 0, "under aec the speaker's stream runs on: a reply does not restart it"
    # (so the two starts give the same figures: with aec the speaker never goes to standby)
    short = SHORT.get(scene.gain)
    if short is None:
        assert f.dt_energy >= DT_ENERGY and f.dt_corr >= DT_CORR, f.line()
    else:
        energy, corr = short
        assert f.dt_energy >= energy and f.dt_corr >= corr, f"worse than expected ({short}): {f.line()}"
        assert not (f.dt_energy >= DT_ENERGY and f.dt_corr >= DT_CORR), f"reaches the target now: {f.line()}"


@pytest.mark.parametrize("delay_ms", [20, 60, 120])
def test_a_quiet_user_under_a_loud_echo_falls_short(delay_ms: int, voices: tuple[np.ndarray, np.ndarray]) -> None:
    """Beyond the matrix: the user 6 dB quieter than in it, under the +6 dB echo (the echo 12 dB
    above the user at the microphone). Short of the target, by how much is expected: measured at
    the commit of double_talk.py, energy 96-169 % and correlation 0.54 (60 ms), 0.60 (20 ms),
    0.66 (120 ms); AEC3 alone keeps less than 15 % here. The linear canceller's echo attenuation
    (14-21 dB) is what limits it: its residual is as loud as such a user."""
    reply, words = voices
    f = run_scene(Scene(delay_ms, 2.0, "standby"), reply, (words * 0.5).astype(np.int16))
    print(f"\nMEASURED echo_quiet_user {delay_ms} ms: {f.line()}")
    assert min(f.attenuation_db) >= ATTENUATION_DB and min(f.first_db) >= FIRST_DB and f.false_turns == 0, f.line()
    assert f.dt_energy >= DT_ENERGY and f.dt_corr >= 0.45, f"worse than expected: {f.line()}"
    assert f.dt_corr < DT_CORR, f"reaches the target now (update this test and the docs): {f.line()}"
