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

# Double talk short of the target, by echo gain (the echo's level at the microphone against the
# user's; delay and start do not matter): (energy, correlation) expected at least, measured over
# the 6 cells of each gain at 7a47cd7 (energy 26-31 % at x1.0, 11-12 % at x2.0; corr 0.61-0.65,
# 0.44-0.46). WebRTC's AEC3, as pywebrtc-audio 0.2.0 builds it (its default configuration: no
# setting of the suppressor is reachable), suppresses the user with the echo wherever the echo
# is about as loud as the user or louder: see docs/benchmarks.md for what was tried.
SHORT = {1.0: (0.20, 0.55), 2.0: (0.07, 0.38)}


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
    short = SHORT.get(scene.gain)
    if short is None:
        assert f.dt_energy >= DT_ENERGY and f.dt_corr >= DT_CORR, f.line()
    else:
        energy, corr = short
        assert f.dt_energy >= energy and f.dt_corr >= corr, f"worse than expected ({short}): {f.line()}"
        assert not (f.dt_energy >= DT_ENERGY and f.dt_corr >= DT_CORR), f"reaches the target now: {f.line()}"
