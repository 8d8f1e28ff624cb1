"""Where the event API's Unix socket is: where the daemon listens (:func:`server_socket_path`),
where a CLI command looks for it (:func:`client_socket_paths`), and the checks on its
directory before the daemon listens there (:func:`prepare_socket_dir`)."""

from __future__ import annotations

import os
import socket
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path


def _user_runtime_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "pi-agent" if base else Path(tempfile.gettempdir()) / f"pi-agent-{os.getuid()}"


def server_socket_path(setting: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where the daemon listens: ``api.socket``, or (``auto``) the systemd runtime directory
    (``RuntimeDirectory=pi-agent``: ``/run/pi-agent/api.sock``), else the user's own."""
    if setting == "off":
        return None
    if setting != "auto":
        return Path(setting)
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return (Path(runtime) if runtime else _user_runtime_dir(environ)) / "api.sock"


def client_socket_paths(setting: str, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a CLI command looks for the daemon, in order: the configured socket, else the
    service's (``/run/pi-agent/api.sock``), else one of this user's own."""
    if setting == "off":
        return []
    if setting != "auto":
        return [Path(setting)]
    paths = [server_socket_path("auto", environ), Path("/run/pi-agent/api.sock"),
             _user_runtime_dir(environ) / "api.sock"]
    return list(dict.fromkeys(p for p in paths if p is not None))


def prepare_socket_dir(path: Path) -> None:
    """Make the socket's directory (0700 when we create it); refuse one owned by somebody
    else (another user's /tmp directory could hand our commands to their process)."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as e:
        raise OSError(e.errno, f"cannot make the directory for the API socket {directory}: {e.strerror}") from None
    if info.st_uid not in (os.getuid(), 0) or (info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX):
        raise OSError(f"the API socket directory {directory} belongs to another user or is writable by anyone")
    if path.is_socket():
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # left by a daemon that is gone
            else:
                raise OSError(f"another pi-agent answers on {path} (set [api] socket to a path of its own)")
