"""Diagnostics for the admin: ``check``, ``test-leds``, ``test-button``, ``test-speaker``, ``test-mic``
(with ``--wake-word``, or ``--echo``); ``devices`` is :func:`pi_agent.audio.listing.list_devices`.

Each uses the same parts as the daemon (device lookup by name, the PortAudio or WAV
backends, the LED driver, the button input, the engine and session), so a pass here means
the daemon can use them. One module a command: :mod:`.check` (with :mod:`.agent`, its
conversation with the agent), :mod:`.gpio`, :mod:`.speaker`, :mod:`.mic`, :mod:`.echo`;
:mod:`.report` is how they print.
"""

from __future__ import annotations

from .agent import reach_agent
from .check import check
from .echo import EchoReport, echo_signal, judge_echo, test_echo
from .gpio import test_button, test_leds
from .mic import test_mic
from .speaker import test_speaker

__all__ = ["EchoReport", "check", "echo_signal", "judge_echo", "reach_agent", "test_button", "test_echo",
           "test_leds", "test_mic", "test_speaker"]
