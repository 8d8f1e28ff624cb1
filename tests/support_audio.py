"""Virtual sound devices for tests of the real PyAudio -> PortAudio -> ALSA path.

Two kinds of device, both defined in a private ALSA configuration
(``ALSA_CONFIG_PATH`` = the system ``alsa.conf`` + our definitions):

- PulseAudio null sinks on a private server, reached through the ALSA ``pulse``
  plugin: ``vmic`` (the monitor of sink ``mic``, 16 kHz mono) and ``vspk`` (sink
  ``spk``, 48 kHz stereo). They are paced in real time by the server's clock.
  Play into the mic with :meth:`VirtualAudio.play_into_mic`, record the speaker
  with :meth:`VirtualAudio.record_speaker`.
- ALSA ``file`` plugin devices layered on those pulse devices, so they are paced
  *and* deterministic: ``pi_test_mic`` (16 kHz mono), ``pi_test_mic48`` (48 kHz
  mono) and ``pi_test_mic_stereo`` (16 kHz stereo) read their samples from raw
  files set with :meth:`VirtualAudio.set_mic_samples`; ``pi_test_spk`` writes what
  is played to a raw file (:meth:`VirtualAudio.speaker_file_samples`).
  (A file device over the ``null`` PCM would be unpaced: PortAudio then spins
  through tens of thousands of callbacks a second.)

``vemic`` / ``vespk`` are a microphone that hears the speaker: sinks ``emic`` (16 kHz
mono) and ``espk`` (48 kHz stereo) joined by PulseAudio's ``module-loopback`` from
``espk.monitor`` into ``emic``, with a device-like latency and an attenuation, set up per
test by :meth:`VirtualAudio.echo_room` (the echo-cancellation tests).

``vgone_mic`` / ``vgone_spk`` point at a second server, started and killed or
frozen by the device-failure tests (:meth:`VirtualAudio.gone_server`);
``vgone2_mic`` / ``vgone2_spk`` at a third (:meth:`VirtualAudio.second_gone_server`),
for a microphone and a speaker that vanish and return separately.

ALSA re-reads its configuration when ``ALSA_CONFIG_PATH`` changes and PortAudio
lists devices afresh whenever no PyAudio instance is alive, so a test only has to
set the variable (the ``alsa_devices`` fixture does it with ``monkeypatch``) and
close what it opened. The servers are our own child processes, stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
PULSE_PLUGIN_DIRS = [
    Path("/usr/lib/x86_64-linux-gnu/alsa-lib"),
    Path("/usr/lib/aarch64-linux-gnu/alsa-lib"),
    Path("/usr/lib/arm-linux-gnueabihf/alsa-lib"),
    Path("/usr/lib/alsa-lib"),
    Path("/usr/lib64/alsa-lib"),
]

SPK_RATE = 48_000
SPK_CHANNELS = 2


def missing_tools() -> str | None:
    """Why the virtual devices cannot be set up here, or None."""
    for tool in ("pulseaudio", "pactl", "parec", "pacat"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (Debian: pulseaudio, pulseaudio-utils)"
    if not SYSTEM_ALSA_CONF.exists():
        return f"{SYSTEM_ALSA_CONF} missing (Debian: libasound2)"
    if not any((d / "libasound_module_pcm_pulse.so").exists() for d in PULSE_PLUGIN_DIRS):
        return "ALSA pulse plugin missing (Debian: libasound2-plugins)"
    try:
        import pyaudio  # noqa: F401
    except ImportError as exc:  # pragma: no cover - a declared dependency
        return f"PyAudio not importable: {exc}"
    return None


class PulseServer:
    """A private PulseAudio server (our child process) with null sinks."""

    def __init__(self, directory: Path, sinks: list[tuple[str, int, int]]):
        self.dir = directory
        self.sinks = sinks
        self.socket = directory / "native"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(
            os.environ,
            PULSE_RUNTIME_PATH=str(directory),
            PULSE_SERVER=f"unix:{self.socket}",
            HOME=str(directory),
            XDG_CONFIG_HOME=str(directory / "config"),
            XDG_RUNTIME_DIR=str(directory),
        )
        self.env.pop("DISPLAY", None)

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        lines = [f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}"]
        for name, rate, channels in self.sinks:
            lines.append(f"load-module module-null-sink sink_name={name} rate={rate} channels={channels}")
        (self.dir / "default.pa").write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [
                "pulseaudio",
                "-n",
                "-F",
                str(self.dir / "default.pa"),
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--disable-shm=yes",
                f"--log-target=file:{self.dir / 'log'}",
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {self.proc.returncode}: {self.log_tail()}")
            if self.socket.exists():
                try:
                    if self.pactl("info", check=False).returncode == 0:
                        return
                except subprocess.TimeoutExpired:  # too busy to answer yet: the deadline decides
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pulseaudio did not come up within {timeout} s: {self.log_tail()}")

    def log_tail(self) -> str:
        """The end of the server log (for failure messages)."""
        try:
            return (self.dir / "log").read_text(errors="replace")[-800:]
        except OSError:
            return ""

    def pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run pactl against this server."""
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, check=check, timeout=10)

    def freeze(self) -> None:
        """SIGSTOP the server: its clients' streams simply stop moving."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        """Kill the server at once (like a device that vanishes)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


class Recorder:
    """``parec`` of a pulse source into a raw file; :meth:`stop` returns the samples."""

    def __init__(self, server: PulseServer, source: str, path: Path, rate: int, channels: int):
        self.path = path
        self.rate = rate
        self.channels = channels
        self._file = open(path, "wb")  # noqa: SIM115  (parec writes to it until stop() closes it)
        self.proc = subprocess.Popen(
            [
                "parec",
                "-d",
                source,
                "--raw",
                "--format=s16le",
                f"--rate={rate}",
                f"--channels={channels}",
                "--latency-msec=10",
            ],
            env=server.env,
            stdout=self._file,
            stderr=subprocess.DEVNULL,
        )

    def wait_started(self, timeout: float = 5.0) -> None:
        """Wait until the recorder is delivering data (its stream is connected)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.path.stat().st_size > 0:
                return
            time.sleep(0.02)
        raise RuntimeError("parec produced no data")

    def stop(self) -> np.ndarray:
        """Stop recording; return ``[frame, channel]`` int16 samples."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._file.close()
        data = np.fromfile(self.path, dtype="<i2")
        usable = len(data) - len(data) % self.channels
        return data[:usable].reshape(-1, self.channels)


class TimedRecording:
    """``parec`` of a sink's monitor whose samples can be placed on the ``time.monotonic()`` axis.

    A thread notes when the file grows. Sample ``i`` was rendered no later than the
    moment a file size covering it was seen, so ``min(t_k - (n_k - 1) / rate)`` over
    the observations (``n_k`` frames seen at ``t_k``) plus ``i / rate`` is an upper
    bound of when it played (assuming ``parec`` drops nothing), tight to the recorder's
    smallest delivery delay.
    """

    def __init__(self, server: PulseServer, source: str, root: Path) -> None:
        path = root / f"rec-{source}-{time.monotonic_ns()}.raw"
        self.recorder = Recorder(server, source, path, SPK_RATE, SPK_CHANNELS)
        self.path = path
        self._seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="recording clock", daemon=True)
        self._thread.start()
        self.recorder.wait_started()

    def _watch(self) -> None:
        frame_bytes = 2 * SPK_CHANNELS
        last = -1
        while not self._stop.is_set():
            size = self.path.stat().st_size
            t = time.monotonic()  # taken after the size: the data was there by now
            if size != last:
                last = size
                self._seen.append((t, size // frame_bytes))
            time.sleep(0.001)

    def stop(self) -> np.ndarray:
        self._stop.set()
        self._thread.join(5)
        return self.recorder.stop()

    @property
    def origin(self) -> float:
        """Upper bound of when sample 0 played."""
        return min(t - (n - 1) / SPK_RATE for t, n in self._seen if n > 0)

    @property
    def typical_delay(self) -> float:
        """Median delivery delay beyond the smallest one: how coarse the placement is."""
        origin = self.origin
        return float(np.median([t - (n - 1) / SPK_RATE - origin for t, n in self._seen if n > 0]))

    def time_of(self, index: int | np.ndarray) -> float | np.ndarray:
        return self.origin + np.asarray(index) / SPK_RATE

    def index_at(self, t: float) -> int:
        return int(np.floor((t - self.origin) * SPK_RATE))


class VirtualAudio:
    """The session's private sound server and ALSA configuration (see the module docstring)."""

    FILE_MICS: ClassVar[dict[str, tuple[int, int]]] = {
        "pi_test_mic": (16_000, 1),
        "pi_test_mic48": (48_000, 1),
        "pi_test_mic_stereo": (16_000, 2),
    }

    def __init__(self, root: Path):
        self.root = root
        self.server = PulseServer(root / "pulse", [("mic", 16_000, 1), ("spk", SPK_RATE, SPK_CHANNELS)])
        self.gone_dir = root / "gone"
        self.gone2_dir = root / "gone2"
        self.alsa_conf = root / "asound.conf"

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        """Start the server and write the ALSA configuration.

        Two low-latency "keeper" streams stay connected to the sinks for the whole
        session: an idle null sink otherwise sleeps up to ~2 s, and a newly opened
        stream then waits that long for its first real-time callbacks.
        """
        self.server.start()
        for name in self.FILE_MICS:
            self.mic_file(name).write_bytes(b"")
        self.alsa_conf.write_text(SYSTEM_ALSA_CONF.read_text() + "\n" + self._definitions())
        env = self.server.env
        self._keepers = [
            subprocess.Popen(
                ["parec", "-d", "spk.monitor", "--raw", "--latency-msec=10"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            subprocess.Popen(
                ["pacat", "-p", "-d", "mic", "--raw", "--rate=16000", "--channels=1", "--latency-msec=10", "/dev/zero"],
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        time.sleep(2.2)  # let the sinks' first long sleep run out

    def stop(self) -> None:
        """Stop the keepers and the server."""
        for proc in getattr(self, "_keepers", []):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self._keepers = []
        self.server.stop()

    def _definitions(self) -> str:
        main = f"unix:{self.server.socket}"
        gone = f"unix:{self.gone_dir / 'native'}"
        gone2 = f"unix:{self.gone2_dir / 'native'}"
        out = [
            f'pcm.vmic {{ type pulse; server "{main}"; device "mic.monitor" }}',
            f'pcm.vspk {{ type pulse; server "{main}"; device "spk" }}',
            f'pcm.vemic {{ type pulse; server "{main}"; device "emic.monitor" }}',
            f'pcm.vespk {{ type pulse; server "{main}"; device "espk" }}',
            f'pcm.vgone_mic {{ type pulse; server "{gone}"; device "gone.monitor" }}',
            f'pcm.vgone_spk {{ type pulse; server "{gone}"; device "gone" }}',
            f'pcm.vgone2_mic {{ type pulse; server "{gone2}"; device "gone.monitor" }}',
            f'pcm.vgone2_spk {{ type pulse; server "{gone2}"; device "gone" }}',
        ]
        for name in self.FILE_MICS:
            out.append(
                f'pcm.{name} {{ type file; slave.pcm "vmic"; file "/dev/null"; '
                f'infile "{self.mic_file(name)}"; format "raw" }}'
            )
        out.append(f'pcm.pi_test_spk {{ type file; slave.pcm "vspk"; file "{self.speaker_file()}"; format "raw" }}')
        return "\n".join(out) + "\n"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a process (or test) that should see the virtual devices."""
        return {"ALSA_CONFIG_PATH": str(self.alsa_conf)}

    # ------------------------------------------------------------------ file devices
    def mic_file(self, name: str) -> Path:
        """The raw file a ``pi_test_mic*`` device reads from."""
        return self.root / f"{name}.raw"

    def set_mic_samples(self, name: str, samples: np.ndarray) -> None:
        """What the file mic ``name`` will deliver (int16; ``[frame, channel]`` for stereo)."""
        np.asarray(samples, dtype="<i2").tofile(self.mic_file(name))

    def speaker_file(self) -> Path:
        """The raw file ``pi_test_spk`` writes to."""
        return self.root / "pi_test_spk.raw"

    def speaker_file_samples(self, channels: int) -> np.ndarray:
        """What ``pi_test_spk`` received, as ``[frame, channel]`` int16."""
        try:
            data = np.fromfile(self.speaker_file(), dtype="<i2")
        except FileNotFoundError:
            data = np.zeros(0, dtype=np.int16)
        usable = len(data) - len(data) % channels
        return data[:usable].reshape(-1, channels)

    # ------------------------------------------------------------------ pulse devices
    def play_into_mic(self, samples: np.ndarray, rate: int = 16_000) -> subprocess.Popen[bytes]:
        """Start playing mono int16 ``samples`` into the ``mic`` sink (returns the pacat process)."""
        proc = subprocess.Popen(
            [
                "pacat",
                "-p",
                "-d",
                "mic",
                "--raw",
                "--format=s16le",
                f"--rate={rate}",
                "--channels=1",
                "--latency-msec=20",
            ],
            env=self.server.env,
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None
        proc.stdin.write(np.asarray(samples, dtype="<i2").tobytes())
        proc.stdin.close()
        return proc

    def record_speaker(self, name: str = "spk") -> Recorder:
        """Start recording the monitor of sink ``spk`` at 48 kHz stereo."""
        fd, path = tempfile.mkstemp(prefix="rec-", suffix=".raw", dir=self.root)
        os.close(fd)
        return Recorder(self.server, f"{name}.monitor", Path(path), SPK_RATE, SPK_CHANNELS)

    @contextlib.contextmanager
    def echo_room(self, latency_ms: int = 60, volume: float = 0.5) -> Iterator[EchoRoom]:
        """A speaker (``vespk``) whose sound reaches a microphone (``vemic``) ``latency_ms`` later,
        scaled by ``volume`` (linear amplitude), while the block runs."""
        room = EchoRoom(self.server, latency_ms, volume, self.root)
        room.start()
        try:
            yield room
        finally:
            room.stop()

    def gone_server(self) -> PulseServer:
        """A second server behind ``vgone_mic`` / ``vgone_spk`` (caller starts and stops it)."""
        return PulseServer(self.gone_dir, [("gone", 48_000, 2)])

    def second_gone_server(self) -> PulseServer:
        """A third server behind ``vgone2_mic`` / ``vgone2_spk`` (caller starts and stops it)."""
        return PulseServer(self.gone2_dir, [("gone", 48_000, 2)])


class EchoRoom:
    """Sinks ``emic`` and ``espk`` on the session's server, and a loopback from the speaker's
    monitor into the microphone: the echo path of a box with a plain speaker."""

    MIC, SPEAKER = "vemic", "vespk"

    def __init__(self, server: PulseServer, latency_ms: int, volume: float, root: Path) -> None:
        self.server, self.latency_ms, self.volume, self.root = server, latency_ms, volume, root
        self._modules: list[str] = []

    def start(self) -> None:
        load = ("load-module",)
        self._modules = [
            self.server.pactl(*load, "module-null-sink", "sink_name=emic", "rate=16000", "channels=1").stdout.strip(),
            self.server.pactl(*load, "module-null-sink", "sink_name=espk", f"rate={SPK_RATE}",
                              f"channels={SPK_CHANNELS}").stdout.strip(),
        ]
        self._modules.append(self.server.pactl(
            *load, "module-loopback", "source=espk.monitor", "sink=emic", f"latency_msec={self.latency_ms}",
            "source_dont_move=true", "sink_dont_move=true").stdout.strip())
        # The loopback's stream into emic: its volume is the echo's level (PulseAudio volumes are
        # cubic: the percentage of a linear amplitude a is a ** (1/3)).
        inputs = self.server.pactl("list", "short", "sink-inputs").stdout.splitlines()
        loop = next(line.split()[0] for line in inputs if "module-loopback" in line)
        self.server.pactl("set-sink-input-volume", loop, f"{round(100 * self.volume ** (1 / 3))}%")
        time.sleep(2.2)  # the new sinks' first long sleep

    def stop(self) -> None:
        for module in reversed(self._modules):
            if module:
                self.server.pactl("unload-module", module, check=False)
        self._modules = []

    def play_into_mic(self, samples: np.ndarray) -> subprocess.Popen[bytes]:
        """The user speaks: 16 kHz mono ``samples`` into the microphone, on top of the echo."""
        path = self.root / f"user-{time.monotonic_ns()}.raw"
        np.asarray(samples, dtype="<i2").tofile(path)
        return subprocess.Popen(
            ["pacat", "-p", "-d", "emic", "--raw", "--format=s16le", "--rate=16000", "--channels=1",
             "--latency-msec=200", str(path)],
            env=self.server.env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def record_mic(self) -> Recorder:
        """What the microphone hears (echo and user), 16 kHz mono."""
        fd, path = tempfile.mkstemp(prefix="emic-", suffix=".raw", dir=self.root)
        os.close(fd)
        return Recorder(self.server, "emic.monitor", Path(path), 16_000, 1)


# ---------------------------------------------------------------------- signal helpers


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    """A sine as int16."""
    t = np.arange(round(seconds * rate)) / rate
    return np.round(np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """Frequency of the strongest FFT bin (Hann window, parabolic interpolation)."""
    x = np.asarray(samples, dtype=np.float64)
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spectrum[1:]) + 1)
    if 1 <= k < len(spectrum) - 1:
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        k = k + 0.5 * (a - c) / (a - 2 * b + c)
    return float(k * rate / len(x))


def loud_segments(
    samples: np.ndarray, rate: int, *, threshold: float = 0.02, window_ms: float = 5.0, min_gap_ms: float = 60.0
) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges whose windowed RMS exceeds ``threshold`` of full scale."""
    x = np.asarray(samples, dtype=np.float64) / 32768.0
    win = max(1, int(rate * window_ms / 1000))
    n = len(x) // win
    if n == 0:
        return []
    level = np.sqrt(np.mean(x[: n * win].reshape(n, win) ** 2, axis=1))
    loud = level > threshold
    segments: list[tuple[int, int]] = []
    start = None
    for i, on in enumerate(loud):
        if on and start is None:
            start = i
        elif not on and start is not None:
            segments.append((start * win, i * win))
            start = None
    if start is not None:
        segments.append((start * win, n * win))
    merged: list[tuple[int, int]] = []
    gap = int(rate * min_gap_ms / 1000)
    for seg in segments:
        if merged and seg[0] - merged[-1][1] < gap:
            merged[-1] = (merged[-1][0], seg[1])
        else:
            merged.append(seg)
    return merged


def exact_edges(samples: np.ndarray, threshold: int = 1) -> tuple[int, int] | None:
    """First and one-past-last index whose magnitude is at least ``threshold``."""
    idx = np.nonzero(np.abs(np.asarray(samples, dtype=np.int32)) >= threshold)[0]
    if len(idx) == 0:
        return None
    return int(idx[0]), int(idx[-1]) + 1


def speech(text: str, directory: Path) -> tuple[np.ndarray, int] | None:
    """Real speech from espeak-ng as mono int16 and its rate, or None if espeak-ng is missing."""
    if shutil.which("espeak-ng") is None:
        return None
    path = directory / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True, timeout=30)
    from pi_agent.audio.files import read_wav

    frames, rate = read_wav(path)
    return frames[:, 0].copy(), rate


@contextlib.contextmanager
def started_card(root: Path) -> Iterator[VirtualAudio]:
    """A virtual card under ``root``, started for the block and stopped after it. Skips when
    the tools are missing; a server that is installed but will not start is a failure."""
    import pytest

    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    card = VirtualAudio(root)
    try:
        card.start()
        yield card
    finally:
        card.stop()
