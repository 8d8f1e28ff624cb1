"""scripts/install.sh, run for real against a temporary root directory.

The Debian packages and pip are replaced by recorders (no network, no changes to this
machine); as root, the real useradd/groupadd (``--root``) and ``systemctl --root``
act on the temporary root, otherwise recorders that edit its passwd/group files do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install.sh"
IS_ROOT = os.geteuid() == 0
REAL_ACCOUNTS = IS_ROOT and all(shutil.which(c) for c in ("useradd", "groupadd", "usermod", "userdel", "groupdel"))
REAL_SYSTEMCTL = shutil.which("systemctl") is not None
# The venv's Python: the runner's own version, so that the recorded pip's .pth can lend the
# venv the checkout and this test run's packages (pydantic) to generate the config template.
_SYSTEM_PYTHON_SAME = subprocess.run(
    ["/usr/bin/python3", "-c", f"import sys; sys.exit(sys.version_info[:2] != {tuple(sys.version_info[:2])})"],
    capture_output=True, check=False).returncode == 0 if Path("/usr/bin/python3").exists() else False
VENV_PYTHON = "/usr/bin/python3" if _SYSTEM_PYTHON_SAME else getattr(sys, "_base_executable", sys.executable)
SITE_PACKAGES = [p for p in sys.path if p.endswith("site-packages")]

pytestmark = pytest.mark.skipif(not Path("/usr/bin/python3").exists() or shutil.which("bash") is None,
                                reason="the installer targets Debian: needs bash and /usr/bin/python3")

# A stand-in for a command: records its arguments as one JSON line, and for the
# account tools edits <root>/etc/passwd and <root>/etc/group the way they would.
RECORDER = r'''
import json, os, sys
name, args = sys.argv[1], sys.argv[2:]
with open(os.environ["RECORD_LOG"], "a") as f:
    f.write(json.dumps([name, *args]) + "\n")
if os.environ.get("RECORD_FAIL") and os.environ["RECORD_FAIL"] in " ".join([name, *args]):
    sys.exit(100)
root = args[args.index("--root") + 1] if "--root" in args else os.environ.get("RECORD_ROOT", "")
def rows(f):
    with open(f"{root}/etc/{f}") as fh:
        return [line.rstrip("\n").split(":") for line in fh if line.strip()]
def save(f, rs):
    with open(f"{root}/etc/{f}", "w") as fh:
        fh.writelines(":".join(r) + "\n" for r in rs)
SYSTEM = "--system" in args  # like Debian's useradd/groupadd: ids below 1000, from 999 down
def next_id(rs):
    used = {int(r[2]) for r in rs}
    if SYSTEM:
        return str(next(i for i in range(999, 99, -1) if i not in used))
    return str(max([999] + [i for i in used if i < 60000]) + 1)
opts = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--groups",)}
target = args[-1] if args else ""
if name == "groupadd":
    g = rows("group"); g.append([target, "x", next_id(g), ""]); save("group", g)
elif name == "useradd":
    g = rows("group"); gid = next_id(g); g.append([target, "x", gid, ""])
    for r in g:
        if r[0] in opts.get("--groups", "").split(","):
            r[3] = ",".join(filter(None, [*r[3].split(","), target]))
    save("group", g)
    p = rows("passwd"); p.append([target, "x", next_id(p), gid, "", "/var/lib/" + target, "/usr/sbin/nologin"])
    save("passwd", p)
elif name == "usermod":
    g = rows("group")
    for r in g:
        if r[0] in opts["--groups"].split(","):
            r[3] = ",".join(filter(None, [*r[3].split(","), target]))
    save("group", g)
elif name == "userdel":
    save("passwd", [r for r in rows("passwd") if r[0] != target])
    save("group", [r[:3] + [",".join(m for m in r[3].split(",") if m and m != target)] for r in rows("group")])
elif name == "groupdel":
    save("group", [r for r in rows("group") if r[0] != target])
elif name == "pip" and "install" in args and os.environ.get("RECORD_PTH"):
    # "installs" the checkout: the venv finds it, and its dependencies, through a .pth file
    import glob
    for site in glob.glob(f"{root}/opt/pi-agent/venv/lib/python3*/site-packages"):
        with open(f"{site}/pi_agent_checkout.pth", "w") as fh:
            fh.write(os.environ["RECORD_PTH"] + "\n")
'''


@dataclass
class Installer:
    root: Path
    log: Path
    env: dict[str, str]

    def run(self, *args: str, fail: str = "") -> subprocess.CompletedProcess[str]:
        env = {**self.env, "RECORD_FAIL": fail}
        return subprocess.run(["bash", str(SCRIPT), "--root", str(self.root), *args],
                              env=env, capture_output=True, text=True, timeout=120)

    def calls(self, name: str | None = None) -> list[list[str]]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in rows if name is None or r[0] == name]

    def group(self, name: str) -> list[str] | None:
        for line in (self.root / "etc" / "group").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return fields
        return None

    def user(self, name: str) -> list[str] | None:
        for line in (self.root / "etc" / "passwd").read_text().splitlines():
            if line.split(":")[0] == name:
                return line.split(":")
        return None


def _make_installer(tmp: Path, *, real_tools: bool) -> Installer:
    root = tmp / "root"
    (root / "etc").mkdir(parents=True)
    # A Debian base system's account files: audio exists, gpio does not (not a Pi).
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\naudio:x:29:\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc" / "gshadow").write_text("root:*::\naudio:*::\n")
    for f in ("shadow", "gshadow"):
        (root / "etc" / f).chmod(0o640)
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "usr" / "sbin" / "nologin").write_text("#!/bin/sh\nexit 1\n")
    (root / "usr" / "sbin" / "nologin").chmod(0o755)

    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    recorder = tmp / "recorder.py"
    recorder.write_text(RECORDER)
    log = tmp / "calls.jsonl"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), "LC_ALL": "C.UTF-8",
           "RECORD_LOG": str(log), "RECORD_ROOT": str(root), "RECORD_PTH": "\n".join([str(REPO), *SITE_PACKAGES])}
    if VENV_PYTHON != "/usr/bin/python3":
        env["PYTHON"] = VENV_PYTHON
    stubbed = ["apt-get", "pip"]
    if not (real_tools and REAL_ACCOUNTS):
        stubbed += ["useradd", "groupadd", "usermod", "userdel", "groupdel"]
    if not (real_tools and REAL_SYSTEMCTL):
        stubbed += ["systemctl"]
    if not real_tools:  # pip is a recorder anyway: skip ensurepip, the slow part of a venv
        fast_python = bin_dir / "python3"
        fast_python.write_text('#!/bin/sh\n'
                               f'if [ "$1 $2" = "-m venv" ]; then exec {VENV_PYTHON} "$@" --without-pip; fi\n'
                               f'exec {VENV_PYTHON} "$@"\n')
        fast_python.chmod(0o755)
        env["PYTHON"] = str(fast_python)
    for name in stubbed:
        stub = bin_dir / name
        stub.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{recorder}" {name} "$@"\n')
        stub.chmod(0o755)
        var = {"apt-get": "APT_GET", "pip": "PI_AGENT_PIP"}.get(name, name.upper())
        env[var] = str(stub)
    return Installer(root, log, env)


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root with its type, mode, owner and content hash (or link target)."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            what: object = os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = None
        out[str(path.relative_to(root))] = (stat.filemode(st.st_mode), st.st_uid, st.st_gid, what)
    return out


Run = subprocess.CompletedProcess[str]
Snapshot = dict[str, tuple[object, ...]]


@dataclass
class Lifecycle:
    """What one install, edit, reinstall, uninstall (twice) and purge left behind."""

    inst: Installer
    first: Run
    after_first: Snapshot
    calls_first: list[list[str]]
    passwd_first: str
    group_first: str
    pyvenv_cfg: str
    config_text: str
    before_second: Snapshot
    second: Run
    after_second: Snapshot
    calls_second: list[list[str]]
    config_after_second: str
    uninstall: Run
    after_uninstall: Snapshot
    uninstall_again: Run
    purge: Run
    after_purge: Snapshot


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> Lifecycle:
    inst = _make_installer(tmp_path_factory.mktemp("install"), real_tools=True)
    etc = inst.root / "etc"
    config = etc / "pi-agent/config.toml"
    first = inst.run()
    after_first, calls_first = _snapshot(inst.root), inst.calls()
    passwd_first, group_first = _read(etc / "passwd"), _read(etc / "group")
    pyvenv_cfg, config_text = _read(inst.root / "opt/pi-agent/venv/pyvenv.cfg"), _read(config)

    if config.exists():  # the admin sets the agent and the key
        config.write_text(config_text + '\nagent_id = "agent_edited_by_admin"\n')
        (etc / "pi-agent/api_key").write_text("sk_test_never_printed_123\n")
    before_second = _snapshot(inst.root)
    second = inst.run()
    after_second, calls_second, config_after_second = (
        _snapshot(inst.root), inst.calls()[len(calls_first):], _read(config))

    uninstall = inst.run("--uninstall")
    after_uninstall = _snapshot(inst.root)
    uninstall_again = inst.run("--uninstall")
    purge = inst.run("--uninstall", "--purge")
    return Lifecycle(inst, first, after_first, calls_first, passwd_first, group_first, pyvenv_cfg,
                     config_text, before_second, second, after_second, calls_second, config_after_second,
                     uninstall, after_uninstall, uninstall_again, purge, _snapshot(inst.root))


def _ok(result: Run) -> Run:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def _table(text: str) -> dict[str, list[str]]:
    """/etc/passwd or /etc/group rows by name."""
    return {line.split(":")[0]: line.split(":") for line in text.splitlines() if line}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_install_writes_the_service_files(lifecycle: Lifecycle) -> None:
    first, files = _ok(lifecycle.first), lifecycle.after_first
    me = (0, 0) if IS_ROOT else (os.getuid(), os.getgid())  # unprivileged runs skip chown
    service_group = (0, int(_table(lifecycle.group_first)["pi-agent"][2])) if IS_ROOT else me

    unit = (REPO / "systemd/pi-agent.service").read_bytes()
    assert files["etc/systemd/system/pi-agent.service"] == ("-rw-r--r--", *me, _sha(unit))
    if REAL_SYSTEMCTL:
        link = files["etc/systemd/system/multi-user.target.wants/pi-agent.service"]
        assert link[3] == "/etc/systemd/system/pi-agent.service"
    assert files["etc/pi-agent"][:3] == ("drwxr-x---", *service_group)
    assert files["etc/pi-agent/config.toml"][:3] == ("-rw-r-----", *service_group)
    # Empty until the admin fills it in; root only (systemd reads it for LoadCredential=).
    assert files["etc/pi-agent/api_key"] == ("-rw-------", *me, _sha(b""))
    assert str(files["opt/pi-agent/venv/bin/python"][0]).startswith("l")
    assert "include-system-site-packages = true" in lifecycle.pyvenv_cfg  # sees apt's gpiozero, lgpio

    assert "Next steps" in first.stdout and "/etc/pi-agent/api_key" in first.stdout
    assert "systemctl restart pi-agent" in first.stdout


def test_install_creates_the_service_user_in_audio_and_gpio(lifecycle: Lifecycle) -> None:
    _ok(lifecycle.first)
    users, groups = _table(lifecycle.passwd_first), _table(lifecycle.group_first)
    user = users["pi-agent"]
    assert user[5:] == ["/var/lib/pi-agent", "/usr/sbin/nologin"]
    assert int(user[2]) < 1000, "a system user"
    assert user[3] == groups["pi-agent"][2]
    assert "pi-agent" in groups["audio"][3].split(",")
    assert "pi-agent" in groups["gpio"][3].split(","), "gpio is created off the Pi"
    assert "pi-agent" in groups["spi"][3].split(","), "spi too (a voice HAT's APA102 LEDs)"


def test_packages_and_pip_are_asked_for(lifecycle: Lifecycle) -> None:
    apt = [c for c in lifecycle.calls_first if c[0] == "apt-get"]
    assert apt[0][1:] == ["update", "-qq"]
    installed = {p for c in apt[1:] for p in c[1:] if not p.startswith("-") and p != "install"}
    assert {"python3-venv", "python3-dev", "portaudio19-dev", "libasound2-plugins", "alsa-utils", "procps",
            "python3-gpiozero", "python3-lgpio"} <= installed
    pip = [c for c in lifecycle.calls_first if c[0] == "pip"]
    assert pip == [["pip", "install", "--quiet", "--disable-pip-version-check", "--upgrade", str(REPO)]]


def test_second_run_changes_nothing_and_keeps_the_edits(lifecycle: Lifecycle) -> None:
    second = _ok(lifecycle.second)
    before, after = lifecycle.before_second, lifecycle.after_second
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == set()
    assert not [c for c in lifecycle.calls_second if c[0] in ("useradd", "groupadd", "usermod")]
    assert 'agent_id = "agent_edited_by_admin"' in lifecycle.config_after_second
    assert "keeping" in second.stderr and "config.toml" in second.stderr
    assert "sk_test_never_printed_123" not in second.stdout + second.stderr


def test_uninstall_removes_the_service_and_keeps_the_settings(lifecycle: Lifecycle) -> None:
    result = _ok(lifecycle.uninstall)
    after = lifecycle.after_uninstall
    assert not [p for p in after if p.startswith("opt/pi-agent")]
    assert "etc/systemd/system/pi-agent.service" not in after
    assert "etc/systemd/system/multi-user.target.wants/pi-agent.service" not in after
    assert {"etc/pi-agent/config.toml", "etc/pi-agent/api_key"} <= after.keys()
    assert "--purge" in result.stderr
    assert after["etc/passwd"] != lifecycle.after_first["etc/passwd"]
    _ok(lifecycle.uninstall_again)

    _ok(lifecycle.purge)
    assert not [p for p in lifecycle.after_purge if "pi-agent" in p]
    inst = lifecycle.inst
    assert inst.user("pi-agent") is None and inst.group("pi-agent") is None
    assert inst.group("gpio") is not None and inst.group("audio") is not None  # shared groups stay


def test_the_config_is_the_generated_template_of_every_setting(lifecycle: Lifecycle) -> None:
    """Written by the installed package's own generator (python -m pi_agent.reference --template);
    tests/test_reference.py checks that it holds every setting and loads once uncommented."""
    reference = pytest.importorskip("pi_agent.reference")
    template = reference.config_template()
    assert lifecycle.config_text == template
    assert lifecycle.after_first["opt/pi-agent/config.toml.example"][0] == "-rw-r--r--"
    assert lifecycle.after_first["opt/pi-agent/config.toml.example"][3] == _sha(template.encode())
    assert "wrote" in lifecycle.first.stderr and "every setting" in lifecycle.first.stderr
    # an upgrade keeps the edited file and points at the new version's settings
    assert "config.toml.example" in lifecycle.second.stderr
    assert not any(tomllib.loads(lifecycle.config_text).values()), "nothing is set until the admin sets it"
    assert "/etc/pi-agent/api_key" in lifecycle.config_text and not re.search(
        r"^#? ?api_key *=", lifecycle.config_text, re.M)


def test_no_timesyncd_no_clock_wait(lifecycle: Lifecycle) -> None:
    assert "no systemd-timesyncd" in lifecycle.first.stderr
    assert not [p for p in lifecycle.after_first if "time-wait-sync" in p]
    assert not [c for c in lifecycle.calls_first if "systemd-time-wait-sync.service" in c]


def test_failing_template_generator_stops_the_install(tmp_path: Path) -> None:
    inst = _make_installer(tmp_path, real_tools=False)
    inst.env["RECORD_PTH"] = ""  # pip "installs" nothing: pi_agent is not importable in the venv
    result = inst.run("--no-apt")
    assert result.returncode == 1 and "pi_agent.reference --template failed" in result.stderr
    assert not (inst.root / "etc/pi-agent/config.toml").exists()


def _with_timesyncd(inst: Installer) -> None:
    units = inst.root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    real = Path("/lib/systemd/system/systemd-time-wait-sync.service")
    (units / "systemd-time-wait-sync.service").write_text(
        real.read_text() if real.exists() else
        "[Unit]\nBefore=time-sync.target\n[Service]\nType=oneshot\nExecStart=/bin/true\n"
        "[Install]\nWantedBy=sysinit.target\n")
    (units / "systemd-timesyncd.service").write_text(
        "[Unit]\nDescription=NTP\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=sysinit.target\n")


def test_enables_time_wait_sync_where_timesyncd_is_recorded(tmp_path: Path) -> None:
    inst = _make_installer(tmp_path, real_tools=False)
    _with_timesyncd(inst)
    dropin = inst.root / "etc/systemd/system/systemd-time-wait-sync.service.d/pi-agent.conf"
    enable = ["systemctl", f"--root={inst.root}", "--quiet", "enable", "systemd-time-wait-sync.service"]

    first = _ok(inst.run("--no-apt", fail="is-enabled systemd-time-wait-sync"))  # not enabled yet
    assert enable in inst.calls()
    assert "enabled systemd-time-wait-sync.service" in first.stderr
    text = dropin.read_text()
    assert "TimeoutStartSec=90s" in text and "# enabled by the pi-agent installer" in text

    n = len(inst.calls())
    second = _ok(inst.run("--no-apt"))  # now it is enabled: left as it is
    assert enable not in inst.calls()[n:]
    assert "systemd-time-wait-sync.service is enabled" in second.stderr
    assert dropin.read_text() == text

    _ok(inst.run("--uninstall"))
    assert ["systemctl", f"--root={inst.root}", "--quiet", "disable", "systemd-time-wait-sync.service"] in inst.calls()
    assert not dropin.parent.exists()


def test_an_already_enabled_time_wait_sync_stays_enabled_on_uninstall(tmp_path: Path) -> None:
    inst = _make_installer(tmp_path, real_tools=False)
    _with_timesyncd(inst)
    dropin = inst.root / "etc/systemd/system/systemd-time-wait-sync.service.d/pi-agent.conf"
    _ok(inst.run("--no-apt"))  # the recorder says it is enabled already
    assert "# enabled by" not in dropin.read_text()
    _ok(inst.run("--uninstall"))
    assert not [c for c in inst.calls() if c[-2:] == ["disable", "systemd-time-wait-sync.service"]]
    assert not dropin.exists()


@pytest.mark.skipif(not REAL_SYSTEMCTL, reason="needs systemctl")
def test_enables_time_wait_sync_with_the_real_systemctl(tmp_path: Path) -> None:
    inst = _make_installer(tmp_path, real_tools=True)
    _with_timesyncd(inst)
    wants = inst.root / "etc/systemd/system/sysinit.target.wants/systemd-time-wait-sync.service"
    first = _ok(inst.run("--no-apt"))
    assert wants.is_symlink() and "enabled systemd-time-wait-sync.service" in first.stderr
    second = _ok(inst.run("--no-apt"))
    assert "systemd-time-wait-sync.service is enabled" in second.stderr
    _ok(inst.run("--uninstall"))
    assert not wants.exists() and not wants.is_symlink()


def test_fully_recorded_run_and_the_existing_user_case(tmp_path: Path) -> None:
    inst = _make_installer(tmp_path, real_tools=False)
    group = inst.root / "etc" / "group"
    group.write_text(group.read_text() + "gpio:x:997:\nspi:x:995:\npi-agent:x:996:\n")
    passwd = inst.root / "etc" / "passwd"
    passwd.write_text(passwd.read_text() + "pi-agent:x:996:996::/var/lib/pi-agent:/usr/sbin/nologin\n")

    # python3-lgpio is not in plain Debian: a warning, not a failure.
    result = inst.run(fail="install -y -qq --no-install-recommends python3-lgpio")
    _ok(result)
    assert "python3-lgpio is not available" in result.stderr
    calls = inst.calls()
    assert [c for c in calls if c[0] in ("useradd", "groupadd")] == []
    assert ["usermod", "--root", str(inst.root), "--append", "--groups", "audio", "pi-agent"] in calls
    assert ["usermod", "--root", str(inst.root), "--append", "--groups", "gpio", "pi-agent"] in calls
    assert ["usermod", "--root", str(inst.root), "--append", "--groups", "spi", "pi-agent"] in calls
    assert ["systemctl", f"--root={inst.root}", "--quiet", "enable", "pi-agent.service"] in calls


def test_no_apt_and_no_systemctl(tmp_path: Path) -> None:
    inst = _make_installer(tmp_path, real_tools=False)
    _ok(inst.run("--no-apt", "--no-systemctl"))
    assert [c[0] for c in inst.calls() if c[0] in ("apt-get", "systemctl")] == []
    assert (inst.root / "etc/systemd/system/pi-agent.service").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--bogus"], "unknown option"), (["--purge"], "--purge goes with --uninstall"),
     (["--root"], "--root needs a directory")],
)
def test_bad_arguments_exit_with_a_message(args: list[str], message: str) -> None:
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert message in result.stderr


def test_missing_root_directory(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--root", str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "is not a directory" in result.stderr


@pytest.mark.skipif(not IS_ROOT or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_refuses_to_touch_the_system_without_root() -> None:
    # The checkout may sit in a directory only root can enter (CI clones into a mktemp -d):
    # the unprivileged user runs a copy from a directory anybody can read.
    with tempfile.TemporaryDirectory() as place:
        scripts = Path(place) / "scripts"
        scripts.mkdir()
        copy = scripts / SCRIPT.name
        shutil.copy(SCRIPT, copy)
        for path in (Path(place), scripts, copy):
            path.chmod(0o755)
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                 "bash", str(copy), "--no-apt"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "run it as root" in result.stderr


def test_help() -> None:
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--uninstall" in result.stdout and "set -euo" not in result.stdout


def test_bash_syntax() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck() -> None:
    """Every shell script of the project, the installer and the two set-up commands among them."""
    scripts = [*sorted((REPO / "scripts").glob("*.sh")), REPO / ".ci" / "run"]
    result = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PI_AGENT_SLOW_TESTS") != "1", reason="set PI_AGENT_SLOW_TESTS=1 (needs PyPI)")
def test_real_pip_install_gives_the_unit_its_exec_start(tmp_path: Path) -> None:
    inst = _make_installer(tmp_path, real_tools=True)
    del inst.env["PI_AGENT_PIP"]  # the real pip, from PyPI
    # pip builds a source tree in place (build/, *.egg-info): build a copy, not the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO / "pi_agent", source / "pi_agent", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    result = inst.run("--source", str(source))
    _ok(result)
    exe = inst.root / "opt/pi-agent/venv/bin/pi-agent"
    assert exe.exists(), "the unit's ExecStart"
    check = subprocess.run([str(inst.root / "opt/pi-agent/venv/bin/python"), "-c", "import pi_agent, gpiozero"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    if shutil.which("systemd-analyze"):
        # The installed unit, pointed at the executable this install really made.
        unit = (inst.root / "etc/systemd/system/pi-agent.service").read_text()
        copy = tmp_path / "pi-agent.service"
        copy.write_text(unit.replace("ExecStart=/opt/pi-agent/", f"ExecStart={inst.root}/opt/pi-agent/"))
        verify = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stderr


# ------------------------------------------------------------------ Raspberry Pi OS Desktop (issue 23)


def _with_desktop_user(inst: Installer, name: str = "pi") -> None:
    for f, row in (("passwd", f"{name}:x:1000:1000::/home/{name}:/bin/bash\n"), ("group", f"{name}:x:1000:\n")):
        path = inst.root / "etc" / f
        path.write_text(path.read_text() + row)


def test_desktop_user_installs_the_user_service_and_keeps_it_until_system_service(tmp_path: Path) -> None:
    inst = _make_installer(tmp_path, real_tools=False)
    _with_desktop_user(inst)
    user_unit = inst.root / "etc/systemd/user/pi-agent.service"
    dropin = inst.root / "etc/systemd/user/pi-agent.service.d/user.conf"
    first = _ok(inst.run("--no-apt", "--desktop-user", "pi"))
    assert user_unit.read_bytes() == (REPO / "systemd/pi-agent-user.service").read_bytes()
    assert "\nConditionUser=pi\n" in dropin.read_text()
    assert "pi" in (inst.group("pi-agent") or [""])[3].split(",")  # reads the config, reaches the socket
    calls = inst.calls("systemctl")
    assert ["systemctl", f"--root={inst.root}", "--global", "--quiet", "enable", "pi-agent.service"] in calls
    assert ["systemctl", f"--root={inst.root}", "--quiet", "enable", "pi-agent.service"] not in calls
    assert "user service of pi" in first.stderr

    again = _ok(inst.run("--no-apt"))  # a plain upgrade keeps the way chosen
    assert "keeping the user service of pi" in again.stderr and dropin.exists()

    back = _ok(inst.run("--no-apt", "--system-service"))
    assert not user_unit.exists() and not dropin.exists() and "removed the user service" in back.stderr
    calls = inst.calls("systemctl")
    assert ["systemctl", f"--root={inst.root}", "--global", "--quiet", "disable", "pi-agent.service"] in calls
    assert ["systemctl", f"--root={inst.root}", "--quiet", "enable", "pi-agent.service"] in calls

    missing = inst.run("--no-apt", "--desktop-user", "nobodyhere")
    assert missing.returncode == 1 and "there is no user 'nobodyhere'" in missing.stderr


def test_own_card_writes_wireplumber_rules_in_both_formats(tmp_path: Path) -> None:
    inst = _make_installer(tmp_path, real_tools=False)
    lua = inst.root / "etc/wireplumber/main.lua.d/51-pi-agent-card.lua"
    conf = inst.root / "etc/wireplumber/wireplumber.conf.d/51-pi-agent-card.conf"
    result = _ok(inst.run("--no-apt", "--no-systemctl", "--own-card", "seeed-2mic-voicecard"))
    for path, template in ((lua, "51-pi-agent-card.lua"), (conf, "51-pi-agent-card.conf")):
        text = path.read_text()
        assert text == (REPO / "contrib/wireplumber" / template).read_text().replace("@CARD@", "seeed-2mic-voicecard")
        assert '"seeed-2mic-voicecard"' in text and "@CARD@" not in text
    assert "keeps card 'seeed-2mic-voicecard' for pi-agent" in result.stderr
    _ok(inst.run("--no-apt", "--no-systemctl", "--uninstall"))
    assert not lua.exists() and not conf.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--own-card", 'x"; os.exit()'], "a card's id or name"),
     (["--own-card", "sndrpihifiberry", "--desktop-user", "pi"], "choose one"),
     (["--desktop-user", "pi", "--system-service"], "choose one"),
     (["--desktop-user", "Bad User"], "is not a user name")],
)
def test_bad_desktop_arguments_exit_with_a_message(args: list[str], message: str) -> None:
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and message in result.stderr, result.stderr
