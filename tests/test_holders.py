"""Who holds a sound card (pi_agent.audio.holders): the /proc scan on this process's own open
files, and which failures are "busy". The scan of a real sound server is in test_pipewire."""

from __future__ import annotations

import getpass
import os
import re
from pathlib import Path

import pytest

from pi_agent.audio.holders import busy_hint, card_id, holders, is_busy, server_hint
from pi_agent.diagnostics.check import device_failure

# As open_stream words them (audio/streams.py): PortAudio's text and code, then ALSA's lines.
BUSY = "cannot open microphone 'hw:1': Device unavailable [-9985] (ALSA: Device or resource busy)"


@pytest.mark.parametrize(("message", "busy"), [
    (BUSY, True),
    ("cannot open speaker 'plughw:1': Device unavailable [-9985]", True),
    ("cannot start microphone 'x': Unanticipated host error [-9999] (ALSA: Device or resource busy)", True),
    ("no output device matches 'seeed'. Devices:\n  ...", False),
    ("cannot open speaker 'x': Invalid sample rate [-9997]", False),
])
def test_busy_failures(message: str, busy: bool) -> None:
    assert is_busy(message) is busy


def test_the_scan_finds_an_open_node_with_its_process_and_user(tmp_path: Path) -> None:
    snd = tmp_path / "snd"
    snd.mkdir()
    (snd / "pcmC0D0c").touch()
    (snd / "controlC0").touch()
    with open(snd / "pcmC0D0c", "rb"), open(snd / "controlC0", "rb"), open(snd / "pcmC0D0c", "rb"):
        found, _hidden = holders(snd)
        mine = [(h.device, h.user) for h in found if h.pid == os.getpid()]
        assert mine == [("controlC0", getpass.getuser()), ("pcmC0D0c", getpass.getuser())]
        # The asking process itself is never "the holder": nobody else is, or (not root) nobody else
        # that this user may look at.
        hint = busy_hint(BUSY, dev_dir=snd)
        if os.geteuid() != 0:  # root's processes at least are out of sight
            assert hint is not None
            assert re.fullmatch(rf"who holds it is hidden from this user \(\d+ processes could not be looked at\): "
                                rf"run `sudo fuser -v {re.escape(str(snd))}/\*`", hint), hint
        else:
            assert hint == (f"no process has a PCM of {snd} open now (it may have let go since): try again, "
                            f"or watch `sudo fuser -v {snd}/*`"), hint
    assert [h for h in holders(snd)[0] if h.pid == os.getpid()] == []


def test_no_hint_for_a_failure_that_is_not_busy_with_nobody_holding(tmp_path: Path) -> None:
    assert busy_hint("no output device matches 'x'", dev_dir=tmp_path) is None
    assert device_failure("no output device matches 'x'") == "no output device matches 'x'"


def test_card_ids_come_from_proc_asound(tmp_path: Path) -> None:
    (tmp_path / "card2").mkdir()
    (tmp_path / "card2" / "id").write_text("Device\n")
    assert card_id("pcmC2D0p", tmp_path) == "Device"
    assert card_id("pcmC3D0p", tmp_path) is None and card_id("seq", tmp_path) is None


def test_no_server_hint_where_the_socket_is_there_or_the_failure_is_another(tmp_path: Path) -> None:
    (tmp_path / "pulse").mkdir()
    (tmp_path / "pulse" / "native").touch()
    failure = "there is no default input device; choose one by name. Devices:"
    assert server_hint(failure, {"XDG_RUNTIME_DIR": str(tmp_path)}) is None
    assert server_hint(failure, {"PULSE_SERVER": f"unix:{tmp_path}/pulse/native"}) is None
    assert server_hint("no input device matches 'usb'", {}) is None
