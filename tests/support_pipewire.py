"""A private PipeWire session for tests: the sound server of Raspberry Pi OS Desktop.

What a desktop user's login starts, started here as our own child processes with their own
``XDG_RUNTIME_DIR`` (nothing of the machine's is touched or reached):

- ``dbus-daemon --session``: WirePlumber will not run without a session bus;
- ``pipewire``: the server, with no sound card: the null sinks below are driven by its
  dummy driver, in real time;
- ``wireplumber``: the session manager that links streams to devices (and that, on a Pi,
  takes every ALSA card: what the shipped rule in ``contrib/wireplumber/`` stops);
- ``pipewire-pulse``: PipeWire's PulseAudio server, at ``$XDG_RUNTIME_DIR/pulse/native``.

Then ``mic`` (16 kHz mono) and ``spk`` (48 kHz stereo) null sinks are made through the pulse
server, ``spk`` the default sink and ``mic.monitor`` the default source: the desktop's card.
A client process reaches them as a desktop user's process does: ALSA's ``default`` device
through the ``pulse`` plugin (libasound2-plugins), which finds the server from
``XDG_RUNTIME_DIR``. :attr:`PipeWireSession.alsa_conf` spells that ``default`` out (the
system's ALSA configuration already points ``default`` at ``pulse`` where PulseAudio or
pipewire-alsa is installed; the tests do not rely on which).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .support_audio import PULSE_PLUGIN_DIRS, SPK_CHANNELS, SPK_RATE, SYSTEM_ALSA_CONF, Recorder

TOOLS = {
    "pipewire": "pipewire",
    "wireplumber": "wireplumber",
    "pipewire-pulse": "pipewire-pulse",
    "dbus-daemon": "dbus-daemon",
    "pactl": "pulseaudio-utils",
    "parec": "pulseaudio-utils",
    "pacat": "pulseaudio-utils",
}


def missing_tools() -> str | None:
    """Why a PipeWire session cannot be started here, or None."""
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: {package}; scripts/bootstrap.sh's test profile installs it)"
    if not SYSTEM_ALSA_CONF.exists():
        return f"{SYSTEM_ALSA_CONF} missing (Debian: libasound2)"
    if not any((d / "libasound_module_pcm_pulse.so").exists() for d in PULSE_PLUGIN_DIRS):
        return "ALSA pulse plugin missing (Debian: libasound2-plugins)"
    return None


class PipeWireSession:
    """dbus-daemon, pipewire, wireplumber and pipewire-pulse under ``root`` (see the module docstring)."""

    SINKS = (("mic", 16_000, 1), ("spk", SPK_RATE, SPK_CHANNELS))

    def __init__(self, root: Path, *, wireplumber_config: Path | None = None) -> None:
        self.root = root
        self.run_dir = root / "run"
        self.pulse_socket = self.run_dir / "pulse" / "native"
        self.alsa_conf = root / "asound.conf"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PULSE_", "PIPEWIRE_", "DBUS_", "WIREPLUMBER_")) and k != "DISPLAY"}
        env.update(
            XDG_RUNTIME_DIR=str(self.run_dir),
            HOME=str(root / "home"),
            XDG_CONFIG_HOME=str(wireplumber_config or root / "home" / "config"),
            XDG_STATE_HOME=str(root / "home" / "state"),
            XDG_DATA_HOME=str(root / "home" / "data"),
            DBUS_SESSION_BUS_ADDRESS=f"unix:path={self.run_dir / 'bus'}",
        )
        self.env = env

    @property
    def client_env(self) -> dict[str, str]:
        """What a client process (the daemon, the CLI) needs to be this session's user's."""
        keys = ("XDG_RUNTIME_DIR", "HOME", "DBUS_SESSION_BUS_ADDRESS")
        return {"ALSA_CONFIG_PATH": str(self.alsa_conf), **{k: self.env[k] for k in keys}}

    # ------------------------------------------------------------------ life
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 (the child writes to it until it ends)
        proc = subprocess.Popen(argv, env=self.env, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _wait(self, what: str, ready: Iterator[bool] | None, path: Path | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}: "
                                       f"{self.log_tail(name)}")
            if path is not None and path.exists():
                return
            if ready is not None and next(ready):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{what} not there within {timeout} s: " +
                           " | ".join(f"{n}: {self.log_tail(n)}" for n in self.procs))

    def start(self, timeout: float = 20.0) -> None:
        """Start the four processes, make the sinks and write the ALSA configuration."""
        for d in (self.root / "home" / "config", self.root / "home" / "state"):
            d.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)
        try:
            self._spawn("dbus", ["dbus-daemon", "--session", "--nofork", "--nopidfile",
                                 f"--address=unix:path={self.run_dir / 'bus'}"])
            self._wait("the session bus", None, self.run_dir / "bus", timeout)
            self._spawn("pipewire", ["pipewire"])
            self._wait("pipewire's socket", None, self.run_dir / "pipewire-0", timeout)
            self._spawn("wireplumber", ["wireplumber"])
            self._spawn("pipewire-pulse", ["pipewire-pulse"])

            def answers() -> Iterator[bool]:
                while True:
                    yield self.pulse_socket.exists() and self.pactl("info", check=False).returncode == 0

            self._wait("pipewire-pulse answering", answers(), None, timeout)
            for name, rate, channels in self.SINKS:
                self.pactl("load-module", "module-null-sink", f"sink_name={name}", f"rate={rate}",
                           f"channels={channels}")

            def linked() -> Iterator[bool]:  # WirePlumber has seen the sinks: it can make them the defaults
                while True:
                    self.pactl("set-default-sink", "spk", check=False)
                    self.pactl("set-default-source", "mic.monitor", check=False)
                    info = self.pactl("info", check=False).stdout
                    yield "Default Sink: spk" in info and "Default Source: mic.monitor" in info

            self._wait("WirePlumber making spk and mic.monitor the defaults", linked(), None, timeout)
        except BaseException:
            self.stop()
            raise
        self.alsa_conf.write_text(SYSTEM_ALSA_CONF.read_text() + "\n" + "\n".join((
            "pcm.!default { type pulse }",
            "ctl.!default { type pulse }",
        )) + "\n")

    def stop(self) -> None:
        """Stop what was started, newest first (idempotent)."""
        for name in reversed(list(self.procs)):
            self.stop_one(name)

    def stop_one(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def log_tail(self, name: str) -> str:
        try:
            return (self.root / f"{name}.log").read_text(errors="replace")[-600:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ tools
    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """pactl against this session's pulse server."""
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, check=check,
                              timeout=10)

    def play_into_mic(self, path: Path) -> subprocess.Popen[bytes]:
        """Play a raw 16 kHz mono s16le file into the ``mic`` sink (the user speaks)."""
        return subprocess.Popen(
            ["pacat", "-p", "-d", "mic", "--raw", "--format=s16le", "--rate=16000", "--channels=1",
             "--latency-msec=200", str(path)],
            env=self.env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def record_speaker(self) -> Recorder:
        """Record what is played on ``spk`` (48 kHz stereo), from its monitor."""
        path = self.root / f"spk-{time.monotonic_ns()}.raw"
        return Recorder(self, "spk.monitor", path, SPK_RATE, SPK_CHANNELS)  # type: ignore[arg-type]


@contextlib.contextmanager
def started_session(root: Path, **kwargs: Path) -> Iterator[PipeWireSession]:
    """A PipeWire session for the block. Skips when a tool is missing; a session that is
    installed but does not start is a failure (with the processes' logs)."""
    import pytest

    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    session = PipeWireSession(root, **kwargs)
    try:
        session.start()
        yield session
    finally:
        session.stop()
