"""Every ``pi-agent`` command, run by the real console script as three people against an
installed layout: a user not in the service's group, a member of it, and root. Each gets a
result or one line, never a traceback (issue 22).

The layout is the installer's (scripts/install.sh): ``etc/pi-agent`` 0750 root:GROUP,
``config.toml`` 0640 root:GROUP, ``api_key`` 0600 root, ``run/pi-agent`` 0750
SERVICE:GROUP (systemd's RuntimeDirectory=), under a temporary directory anybody can
enter. The people are numeric ids that no account uses, taken on with ``setpriv`` (root
only: elsewhere the test says why it skips). Where the interpreter or the checkout lies
under a directory other users cannot enter (``/root``, CI's ``mktemp -d``), each command
runs in a mount namespace of its own (``unshare --mount``) in which those directories are
covered by a tmpfs anybody can enter that holds only the way through.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support_users import as_user, blocked, cannot_cover, needed_paths

pytestmark = pytest.mark.slow

EXE = Path(sys.executable).parent / "pi-agent"  # the console script of the venv running the tests
CANARY = "sk_users_test_never_printed_42"


def _free_id(lookup: object, start: int) -> int:
    for n in range(start, start + 500):
        try:
            lookup(n)  # type: ignore[operator]
        except KeyError:
            return n
    raise AssertionError("no free id")  # pragma: no cover


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return ("acting as other users needs root (setpriv): run this test as root, e.g. "
                "sudo .venv/bin/python -m pytest tests/test_cli_users.py")
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    if not EXE.exists():
        return f"no console script at {EXE} (pip install -e . first)"
    return None


@dataclass
class Person:
    name: str
    uid: int
    gid: int
    groups: list[int]


@dataclass
class Layout:
    root: Path
    config: Path
    socket: Path
    home: Path
    group: int
    covers: dict[Path, set[str]]

    def run(self, who: Person, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        home = self.home / who.name  # their own (PulseAudio refuses a $HOME of somebody else's)
        if not home.exists():
            home.mkdir()
            os.chown(home, who.uid, who.gid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LC_ALL": "C.UTF-8",
               "PI_AGENT_CONFIG": str(self.config), "TMPDIR": str(home)}
        command = as_user([str(EXE), *args], who.uid, who.gid, who.groups, covers=self.covers, drop_caps=True)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=home)


@pytest.fixture(scope="module")
def layout() -> Iterator[Layout]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    covers = blocked(needed_paths())
    if (why := cannot_cover(covers)) is not None:
        pytest.skip(why)
    with tempfile.TemporaryDirectory(prefix="pi-agent-users-") as place:
        root = Path(place)
        root.chmod(0o755)
        group, service = _free_id(grp.getgrgid, 64100), _free_id(pwd.getpwuid, 64100)
        etc = root / "etc" / "pi-agent"
        etc.mkdir(parents=True)
        (root / "etc").chmod(0o755)
        run_dir = root / "run" / "pi-agent"
        run_dir.mkdir(parents=True)
        (root / "run").chmod(0o755)
        socket = run_dir / "api.sock"
        config = etc / "config.toml"
        config.write_text(f'# as installed, with the socket where this test put it\n[api]\nsocket = "{socket}"\n'
                          "port = 0\n[leds]\nconnection_pin = 5\nactivity_pin = 6\n[button]\npin = 17\n")
        key = etc / "api_key"
        key.write_text(CANARY + "\n")
        for path, mode, gid in ((etc, 0o750, group), (config, 0o640, group), (key, 0o600, 0)):
            os.chown(path, 0, gid)
            path.chmod(mode)
        os.chown(run_dir, service, group)
        run_dir.chmod(0o750)
        home = root / "home"
        home.mkdir()
        home.chmod(0o1777)
        yield Layout(root, config, socket, home, group, covers)


def _people(layout: Layout) -> list[Person]:
    outsider = _free_id(pwd.getpwuid, 64200)
    member = _free_id(pwd.getpwuid, outsider + 1)
    return [Person("outsider", outsider, outsider, []), Person("member", member, member, [layout.group]),
            Person("root", 0, 0, [])]


# Every command, with arguments that keep it short. fake-agent serves until stopped: its own test.
COMMANDS: list[list[str]] = [
    ["run"], ["demo", "--out", "reply.wav"], ["status"], ["status", "--json"], ["say", "hello", "--timeout", "2"],
    ["devices"], ["check"], ["test-leds", "--seconds", "0.1"], ["test-button", "--seconds", "0.5"],
    ["test-speaker", "--seconds", "0.1"], ["test-mic", "--seconds", "0.2"],
]


def _one_line_or_a_result(r: subprocess.CompletedProcess[str], what: str) -> None:
    output = r.stdout + r.stderr
    assert "Traceback" not in output, f"{what}: {output}"
    assert CANARY not in output, what
    # An error is one line on stderr (a diagnostic may say it on stdout instead, after its
    # result lines); the indented lines under it are a result too (the device table).
    if r.returncode != 0:  # (a command that succeeds may log as it goes: the demo)
        said = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith(" ")]
        assert len(said) <= 1, f"{what}: exit {r.returncode}, more than one line:\n{r.stderr}"
        assert said or r.stdout.strip(), f"{what}: exit {r.returncode} and not a word"


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_every_command_for_every_person(layout: Layout, args: list[str]) -> None:
    outsider, member, root = _people(layout)
    for who in (outsider, member, root):
        r = layout.run(who, *args)
        _one_line_or_a_result(r, f"{' '.join(args)} as {who.name}")
        if who is outsider and args[0] not in ("demo", "devices", "test-mic", "test-speaker"):
            # the config is what stops the outsider: the line says how to get in
            assert r.returncode == (78 if args[0] == "run" else 77), (args, r.returncode, r.stderr)
            assert "adduser" in r.stderr and str(layout.config) in r.stderr, r.stderr
        if who is not outsider:
            assert r.returncode != 77 or "socket" not in r.stderr, (who.name, r.stderr)


def test_the_socket_refuses_the_outsider_with_the_fix(layout: Layout) -> None:
    """The config readable (given in the environment instead), the socket's directory not."""
    outsider, member, _ = _people(layout)
    env_config = layout.home / "outsider.toml"
    env_config.write_text(f'[api]\nsocket = "{layout.socket}"\nport = 0\n')
    env_config.chmod(0o644)
    r = layout.run(outsider, "--config", str(env_config), "status")
    _one_line_or_a_result(r, "status as the outsider")
    assert r.returncode == 77 and "socket" in r.stderr and "adduser" in r.stderr, r.stderr
    r = layout.run(member, "status", "--config", str(env_config))
    _one_line_or_a_result(r, "status as a member")
    assert r.returncode == 1 and "cannot reach the daemon" in r.stderr, r.stderr


def test_fake_agent_serves_for_anyone_until_stopped(layout: Layout) -> None:
    for who in _people(layout):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(layout.home), "LC_ALL": "C.UTF-8"}
        command = as_user([str(EXE), "fake-agent", "--port", "0"], who.uid, who.gid, covers=layout.covers)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=layout.home)
        try:
            out, err = proc.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
        assert "Traceback" not in out + err, (who.name, err)
        assert proc.returncode in (0, -signal.SIGTERM), (who.name, proc.returncode, err)
