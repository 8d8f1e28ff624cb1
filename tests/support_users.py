"""Running a command as another user (root only, with ``setpriv``) from wherever the tests
run. The checkout or the interpreter may lie under a directory other users cannot enter
(``/root``, CI's ``mktemp -d``): the command then runs in a mount namespace of its own
(``unshare --mount``) in which each such directory is covered by a tmpfs anybody can enter,
holding only the way through to what the command needs."""

from __future__ import annotations

import shlex
import shutil
import stat
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def needed_paths() -> list[Path]:
    """What a command of this checkout's venv reads to start: the interpreter (as named and
    as resolved), the console script and the package."""
    exe = Path(sys.executable)
    return [exe.resolve(), exe, exe.parent / "pi-agent", REPO / "pi_agent" / "__init__.py"]


def blocked(paths: list[Path]) -> dict[Path, set[str]]:
    """Directories on the way to ``paths`` that other users cannot enter -> the children
    on the way through them."""
    found: dict[Path, set[str]] = {}
    for path in paths:
        parts = path.parts
        for i in range(1, len(parts) - 1):
            directory = Path(*parts[:i])
            if not directory.stat().st_mode & stat.S_IXOTH:
                found.setdefault(directory, set()).add(parts[i])
    return found


def cannot_cover(covers: dict[Path, set[str]]) -> str | None:
    """Why those directories cannot be covered here, or None."""
    if covers and shutil.which("unshare") is None:
        return f"{', '.join(map(str, covers))} cannot be entered by other users and unshare is missing"
    return None


def as_user(command: list[str], uid: int, gid: int, groups: list[int] | None = None, *,
            covers: dict[Path, set[str]] | None = None, drop_caps: bool = False) -> list[str]:
    """``command`` run as ``uid``:``gid`` with exactly ``groups`` (root: unchanged)."""
    if uid == 0:
        return command
    wrapped = ["setpriv", f"--reuid={uid}", f"--regid={gid}",
               f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
               *(["--inh-caps=-all"] if drop_caps else []), *command]
    if covers:
        wrapped = ["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                   _cover_script(covers) + "exec " + shlex.join(wrapped)]
    return wrapped


def _cover_script(covers: dict[Path, set[str]]) -> str:
    """Shell lines that cover each blocked directory with a tmpfs anybody can enter,
    holding only the children on the way (bound from the real ones)."""
    lines = []
    for i, (directory, children) in enumerate(sorted(covers.items())):
        stage = f"/tmp/.pi-agent-cover-$$-{i}"
        lines += [f"mkdir -p {stage}", f"mount --bind {shlex.quote(str(directory))} {stage}",
                  f"mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(directory))}"]
        for child in sorted(children):
            target = shlex.quote(str(directory / child))
            lines += [f"if [ -d {stage}/{shlex.quote(child)} ]; then mkdir {target}; else touch {target}; fi",
                      f"mount --bind {stage}/{shlex.quote(child)} {target}"]
        lines += [f"umount -l {stage}", f"rmdir {stage}"]
    return "\n".join(lines) + "\n"
