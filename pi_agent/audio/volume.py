"""The speaker's volume: a level from 0 to 100, changed at run time (the event API's ``volume``
command, ``pi-agent volume``, the volume buttons), applied to the speaker as a software gain
(:func:`~.buffer.volume_gain`: 100 plays what is received untouched, each step below it is
0.4 dB quieter, 0 is silence) and kept across restarts in the state directory.

Where it is kept: ``$STATE_DIRECTORY/volume`` (the unit's ``StateDirectory=pi-agent``:
``/var/lib/pi-agent/volume``). Without ``$STATE_DIRECTORY`` (a daemon run by hand, the demo,
the tests) it is not kept: every start is at ``audio.volume``. The file holds the level and
the ``audio.volume`` it was set under: a changed ``audio.volume`` takes over from a kept level.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

from .buffer import VOLUME_MAX

log = logging.getLogger(__name__)

STEP = 10  # what "up" and "down" change the level by (4 dB)
STATE_FILE = "volume"

Change = int | Literal["up", "down"]
CHANGE_HELP = f'a whole number from 0 to {VOLUME_MAX}, "up" or "down"'


def parse_change(value: object) -> Change:
    """A volume change as a command or the CLI gives it: a level (an int, or its digits), ``up``
    or ``down``. Raises ``ValueError`` saying what is wrong."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("up", "down"):
            return "up" if text == "up" else "down"
        if text.isdigit() and len(text) <= 3:
            value = int(text)
    if type(value) is int and 0 <= value <= VOLUME_MAX:
        return value
    shown = repr(value)[:40] if isinstance(value, str | int | float) else type(value).__name__
    raise ValueError(f"the volume is {CHANGE_HELP}, not {shown}")


def state_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the volume is kept: ``$STATE_DIRECTORY/volume`` (the first directory when systemd
    lists several); None without ``$STATE_DIRECTORY`` (not kept)."""
    directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(directory) / STATE_FILE if directory else None


class Volume:
    """The level, on the event loop: :meth:`change` applies it (``apply(level)``), keeps it
    (``path``) and reports it (``on_change(level)``) when it changed. At construction the kept
    level is read (a missing file: ``configured``; an unreadable or corrupt one: one warning,
    ``configured``) and applied."""

    def __init__(self, configured: int, *, apply: Callable[[int], None] | None = None, path: Path | None = None,
                 on_change: Callable[[int], None] | None = None) -> None:
        if type(configured) is not int or not 0 <= configured <= VOLUME_MAX:
            raise ValueError(f"audio.volume must be from 0 to {VOLUME_MAX}, got {configured!r}")
        self.configured = configured
        self.path = path
        self._apply = apply
        self._on_change = on_change
        self._save_failed = False
        self.level = self._load()
        if apply is not None:
            apply(self.level)

    def change(self, change: Change) -> int:
        """Set the level (``up``/``down``: by :data:`STEP`, within 0-100); the level now."""
        if change == "up":
            level = min(VOLUME_MAX, self.level + STEP)
        elif change == "down":
            level = max(0, self.level - STEP)
        elif type(change) is int and 0 <= change <= VOLUME_MAX:
            level = change
        else:
            raise ValueError(f"the volume is {CHANGE_HELP}, not {change!r}")
        if level == self.level:
            return level
        previous, self.level = self.level, level
        if self._apply is not None:
            self._apply(level)
        log.info("volume %d (was %d)", level, previous)
        self._save()
        if self._on_change is not None:
            self._on_change(level)
        return level

    def _load(self) -> int:
        path = self.path
        if path is None:
            return self.configured
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self.configured
        except (OSError, UnicodeDecodeError) as e:
            log.warning("cannot read the kept volume from %s (%s): starting at audio.volume = %d",
                        path, getattr(e, "strerror", None) or e, self.configured)
            return self.configured
        try:
            kept = json.loads(text)
            level, under = kept["volume"], kept["configured"]
            if type(level) is not int or not 0 <= level <= VOLUME_MAX or type(under) is not int:
                raise ValueError
        except (ValueError, TypeError, KeyError, RecursionError):
            log.warning("the kept volume in %s is not readable (%r): starting at audio.volume = %d",
                        path, text[:60], self.configured)
            return self.configured
        if under != self.configured:
            log.info("audio.volume is now %d (it was %d when volume %d was kept): starting at %d",
                     self.configured, under, level, self.configured)
            return self.configured
        return level

    def _save(self) -> None:
        path = self.path
        if path is None:
            return
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps({"volume": self.level, "configured": self.configured}) + "\n",
                           encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            if not self._save_failed:  # once: a button held down must not fill the journal
                log.warning("cannot keep the volume in %s: %s (it is used, but not kept across a restart)",
                            path, e.strerror or e)
            self._save_failed = True
        else:
            self._save_failed = False


__all__ = ["CHANGE_HELP", "STEP", "Change", "Volume", "parse_change", "state_path"]
