"""One exception root for the daemon.

::

    PiAgentError
    ├── ConfigError          bad configuration: the admin must fix a setting (exit 78)
    │   └── ConfigUnreadable the config file is there but this user may not read it
    ├── AccessDenied         this user may not open a file, socket or device (exit 77)
    │   └── ConfigUnreadable (also)
    ├── ProtocolError        the peer sent something the protocol does not allow
    ├── DeviceError          an audio device or GPIO pin is missing, busy or failed
    │   └── DeviceNotFound   no device of that name is listed (unplugged, wrong name)
    ├── ConnectError         the agent could not be reached or refused us
    │   └── AuthError        refused for credentials / agent id: retrying will not help
    └── InternalError        our own bug (an illegal state transition, ...)

Exceptions from libraries are chained with ``raise ... from``.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any


class PiAgentError(Exception):
    """Root of every exception the daemon raises on purpose."""


class ConfigError(PiAgentError):
    """A setting is missing or invalid. The message names the setting and the fix."""


class AccessDenied(PiAgentError):
    """This user may not open a file, socket or device a command needs. The message is one
    line naming the fix (join the group, use sudo, the mode the installer sets): see
    :func:`access_hint`. The CLI exits 77 (EX_NOPERM)."""


class ConfigUnreadable(ConfigError, AccessDenied):
    """The config file (or its directory) exists but this user may not read it."""


def access_hint(path: str | os.PathLike[str]) -> str:
    """Why this user may not open ``path`` and what fixes it, in a few words: the first
    directory on the way (or the file) that refuses, its mode and owner, and the fix: join
    its group (then log in again), use sudo, or the mode the installer sets."""
    target = Path(path)
    blocker, need = target, os.R_OK
    for parent in reversed(target.parents):
        if parent != Path(parent.anchor) and not os.access(parent, os.X_OK):
            blocker, need = parent, os.X_OK
            break
    try:
        st = blocker.stat()
    except OSError:
        return "use sudo, or ask the admin for access"
    owner, group = _name(pwd.getpwuid, st.st_uid), _name(grp.getgrgid, st.st_gid)
    shown = f"{blocker} is {stat.filemode(st.st_mode)} {owner}:{group}"
    installed = next((m for suffix, m in INSTALLED_MODES.items() if str(blocker).endswith(suffix)), None)
    bits = stat.S_IXGRP if need == os.X_OK else stat.S_IRGRP
    if st.st_gid != 0 and st.st_mode & bits:
        if st.st_gid in os.getgroups() or st.st_gid == os.getgid():
            return f"{shown} and you are in {group}: use sudo"
        me = _name(pwd.getpwuid, os.getuid())
        try:
            listed = me in grp.getgrgid(st.st_gid).gr_mem
        except KeyError:
            listed = False
        if listed:
            return (f"{shown}; you were added to {group} after this login began: log in again "
                    f"(or run `newgrp {group}`), or use sudo")
        return f"{shown}: join the group with `sudo adduser $USER {group}`, then log in again; or use sudo"
    if installed is not None and stat.S_IMODE(st.st_mode) != installed:
        return (f"{shown}, the installer makes it {installed:04o} with group pi-agent: "
                f"`sudo chmod {installed:04o} {blocker}; sudo chgrp pi-agent {blocker}`, or use sudo")
    return f"{shown}: use sudo"


# What scripts/install.sh makes (path suffix -> mode), for :func:`access_hint`'s advice.
INSTALLED_MODES = {"/etc/pi-agent": 0o750, "/etc/pi-agent/config.toml": 0o640, "/run/pi-agent": 0o750}


def _name(lookup: Callable[[int], Any], number: int) -> str:
    try:
        return str(lookup(number)[0])
    except (KeyError, OverflowError):
        return str(number)


class ProtocolError(PiAgentError):
    """The server sent a frame that does not follow the agent protocol."""


class DeviceError(PiAgentError):
    """An audio device (or GPIO pin) could not be found, opened or kept running."""


class DeviceNotFound(DeviceError):
    """No listed device matches the configured name (it may appear later: USB plug-in)."""


class ConnectError(PiAgentError):
    """Opening a conversation failed. ``retryable`` says whether trying again may help."""

    retryable: bool = True

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class AuthError(ConnectError):
    """The server refused the API key or the agent id: only a config change fixes it."""

    retryable = False


class InternalError(PiAgentError):
    """A bug in pi-agent itself."""
