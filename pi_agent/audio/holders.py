"""Who holds a sound card, and what to do about it: for a device that failed to open as busy.

A card is "busy" when ALSA's open fails with EBUSY ("Device or resource busy"), which PortAudio
reports as "Device unavailable" [-9985]: another process has the card's PCM open, and on
Raspberry Pi OS Desktop that is the desktop user's PipeWire (``pipewire`` with WirePlumber, or
``pipewire-pulse``), which takes every card it finds. The holders are found as ``fuser -v
/dev/snd/*`` finds them: the ``/proc/PID/fd`` links that point into ``/dev/snd``. Other users'
processes are visible only where ``/proc`` lets this user look (root always; not under the
unit's ``ProtectProc=invisible``); what could not be looked at is counted, and the hint then
says to ask root.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SND_DIR = Path("/dev/snd")
PROC = Path("/proc")
SOUND_SERVERS = frozenset({"pipewire", "pipewire-pulse", "wireplumber", "pulseaudio", "jackd", "jackdbus"})
# What ALSA (snd_strerror(-EBUSY)) and PortAudio (paDeviceUnavailable) say of a card in use.
BUSY_MARKS = ("Device or resource busy", "[-9985]", "Device unavailable")
_CARD = re.compile(r"C(\d+)")


@dataclass(frozen=True)
class Holder:
    """A process with a sound device node open."""

    pid: int
    name: str
    """``/proc/PID/comm``: ``pipewire``, ``wireplumber``, ``pi-agent``..."""
    user: str
    device: str
    """The node's name under the device directory (``pcmC1D0c``, ``controlC1``)."""


def is_busy(message: str) -> bool:
    """Whether a device error says the device is in use by another process."""
    return any(mark in message for mark in BUSY_MARKS)


def _user(pid_dir: Path) -> str:
    try:
        for row in (pid_dir / "status").read_text().splitlines():
            if row.startswith("Uid:"):
                uid = int(row.split()[1])
                try:
                    return pwd.getpwuid(uid).pw_name
                except KeyError:
                    return str(uid)
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def holders(dev_dir: Path = SND_DIR, proc: Path = PROC) -> tuple[list[Holder], int]:
    """The processes with a node under ``dev_dir`` open, and how many processes could not be
    looked at (their ``fd`` directory is not readable by this user)."""
    found: list[Holder] = []
    hidden = 0
    prefix = str(dev_dir).rstrip("/") + "/"
    try:
        entries = list(proc.iterdir())
    except OSError:
        return [], 1
    for pid_dir in entries:
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except PermissionError:
            hidden += 1
            continue
        except OSError:  # the process ended meanwhile
            continue
        devices: list[str] = []
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith(prefix) and target[len(prefix):] not in devices:
                devices.append(target[len(prefix):])
        if not devices:
            continue
        try:
            name = (pid_dir / "comm").read_text().strip()
        except OSError:
            name = "?"
        user = _user(pid_dir)
        found.extend(Holder(int(pid_dir.name), name, user, d) for d in sorted(devices))
    return found, hidden


def card_id(device: str, asound: Path = PROC / "asound") -> str | None:
    """The card's id (``/proc/asound/cardN/id``) of a node such as ``pcmC1D0p``, if readable."""
    match = _CARD.search(device)
    if match is None:
        return None
    try:
        return (asound / f"card{match.group(1)}" / "id").read_text().strip() or None
    except OSError:
        return None


def busy_hint(message: str, *, dev_dir: Path = SND_DIR, proc: Path = PROC,
              asound: Path = PROC / "asound") -> str | None:
    """One line on who holds the card and what to do, for a device that failed with ``message``;
    None when the message does not say "busy" and no other process has a PCM open.

    A busy card does not always fail as "busy": PortAudio leaves a PCM it cannot open out of its
    list ("no device matches"), and finds no format it accepts when its probe meets EBUSY. So a
    PCM held by another process is named whatever the failure said."""
    busy = is_busy(message)
    found, hidden = holders(dev_dir, proc)
    found = [h for h in found if h.pid != os.getpid()]
    pcm = [h for h in found if h.device.startswith("pcm")]
    servers = sorted({h.name for h in found if h.name in SOUND_SERVERS})
    if not pcm:
        if not busy:
            return None
        if servers:  # it holds only the controls now: it opens the PCMs whenever the desktop plays
            return (f"{', '.join(servers)} has the card's controls open and takes its PCMs whenever the desktop "
                    f"plays or records: {_fix('CARD')}")
        if hidden:
            return (f"who holds it is hidden from this user ({hidden} processes could not be looked at): "
                    f"run `sudo fuser -v {dev_dir}/*`")
        return (f"no process has a PCM of {dev_dir} open now (it may have let go since): try again, "
                f"or watch `sudo fuser -v {dev_dir}/*`")
    by_pid: dict[int, Holder] = {}
    for h in pcm:
        by_pid.setdefault(h.pid, h)
    names = ", ".join(f"{h.name} (pid {h.pid}, user {h.user}, {h.device})" for h in list(by_pid.values())[:4])
    cards = sorted({c for c in (card_id(h.device, asound) for h in pcm) if c})
    card = cards[0] if len(cards) == 1 else "CARD"
    if any(h.name in SOUND_SERVERS for h in pcm):
        return f"the card is held by {names}: the desktop's sound server; {_fix(card)}"
    if any(h.name == "pi-agent" for h in pcm):
        return (f"the card is held by {names}: another pi-agent (the service?); "
                "`sudo systemctl stop pi-agent` before testing the devices")
    return f"the card is held by {names}: stop it, or give pi-agent another device"


def _fix(card: str) -> str:
    return (f"give the card to pi-agent (`sudo scripts/install.sh --own-card {card}`, then log in again) or run "
            "pi-agent through the sound server (`--desktop-user USER`); docs/platforms.md, Raspberry Pi OS Desktop")


def server_hint(message: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """For a failed ``default`` device where a sound server is installed but none answers for
    this user (no pulse socket in its runtime directory): one line saying that ``default`` is
    the desktop's sound server, reached only from the desktop user's session. None otherwise."""
    if "no default" not in message and "PortAudio found no audio devices" not in message:
        return None
    if not any(shutil.which(s) for s in ("pipewire-pulse", "pipewire", "pulseaudio")):
        return None
    server = environ.get("PULSE_SERVER", "")
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if server:
        socket = Path(server.removeprefix("unix:"))
    elif runtime:
        socket = Path(runtime) / "pulse" / "native"
    else:
        socket = None
    if socket is not None and socket.exists():
        return None
    where = f"no {socket}" if socket is not None else "no $XDG_RUNTIME_DIR"
    return (f"no sound server answers for this user ({where}): 'default' is the desktop's sound server "
            "(PipeWire), reached only from the desktop user's session; run pi-agent as that user "
            "(`--desktop-user USER`), or name the card in [audio] and keep it out of the desktop's hands "
            "(`--own-card CARD`); docs/platforms.md, Raspberry Pi OS Desktop")
