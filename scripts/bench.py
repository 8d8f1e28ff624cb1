#!/usr/bin/env python3
"""Benchmark pi-agent's daemon side by side with the official ElevenLabs SDK.

Not a test and not run by CI: a person runs it on the PulseAudio virtual sound card
(see ``../shared/docs/virtual-audio.md`` and ``tests/support_audio.py``, whose server
it reuses) to measure, for ``pi-agent run`` and for the SDK's ``Conversation`` +
``DefaultAudioInterface`` against the same fake agent and the same scripted
conversation:

- mic-to-wire latency: a marker (a 40 ms chirp) enters the virtual mic -> the fake
  agent receives the chunk that holds it;
- playback start: the fake agent sends a turn's first audio chunk -> that audio appears
  on the virtual speaker;
- barge-in: the fake agent sends ``interruption`` -> the virtual speaker goes silent;
- CPU seconds per minute of conversation, peak RSS, time to ready (process start ->
  first conversation open), underruns and overflows.

Commands::

    scripts/bench.py [--runs N] [--quick]       # the comparison; writes docs/benchmarks.md
    scripts/bench.py soak [--minutes N]         # the daemon for a long accelerated conversation:
                                                # RSS and open fds over time, flat or not
    scripts/bench.py profile [--client daemon]  # py-spy on one scripted conversation

Clocks: every time is ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process
on the machine). The fake agent runs as its own process (``pi-agent fake-agent``) and
reports its monotonic timestamps over its HTTP test API. Two recorders in this process
(PortAudio input streams on the mic sink's and the speaker sink's monitors, 10 ms
buffers) stamp every buffer on arrival; a sample's time is taken from the earliest
arrival seen around it (the lower envelope of ``arrival - index / rate``), i.e. the first
moment any client could have had that sample.

Needs what ``PROFILE=test ./scripts/test.sh`` installs (pulseaudio, pulseaudio-utils,
libasound2-plugins, espeak-ng, the ``test`` extra with the ``elevenlabs`` SDK); ``profile``
also needs py-spy (``pip install -e '.[test,bench]'``). It installs nothing itself.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import importlib.metadata
import itertools
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # support_audio: the tests' PulseAudio virtual sound card
sys.path.insert(0, str(ROOT))

try:
    import numpy as np
    import pyaudio  # noqa: F401
    import soxr  # noqa: F401

    import pi_agent.config  # noqa: F401
except ImportError:  # started with the system python: use the project's virtualenv if there is one
    _venv = ROOT / ".venv" / "bin" / "python"
    if _venv.exists() and Path(sys.executable).absolute() != _venv.absolute():
        os.execv(str(_venv), [str(_venv), str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.exit("bench: numpy and pi_agent are not importable; run ./scripts/test.sh once (it sets up .venv) "
             "or activate the virtualenv")

MIC_RATE = 16_000
SPK_RATE = 48_000  # the speaker sink's rate; its monitor is recorded at this rate, mono
REC_PERIOD_S = 0.010  # buffer length of this process's recorders
RESULTS = ROOT / "docs" / "benchmarks.md"

# The scripted conversation. Every user turn gets the fake agent's reply clip (4.7 s);
# a "barge" cycle talks over that reply about 3.6 s into it.
TEXTS = [
    "What is the weather like in Lisbon today?",
    "Tell me something interesting about the old harbour.",
    "Sorry, wait, tell me about the trams instead.",
    "How long does the train to Porto take?",
    "Please remind me to call my sister tomorrow morning.",
    "Actually, make that tomorrow evening.",
    "Which museum should I visit first?",
    "Hold on, is it open on Mondays?",
]
PLAN_FULL: list[tuple[int, ...]] = [(0,), (1, 2), (3,), (4, 5), (6, 7)]  # (turn,) or (turn, barge-in)
PLAN_QUICK: list[tuple[int, ...]] = [(0,), (1, 2)]
LEAD_IN = 1.0  # s of silence before the first utterance
AFTER_TURN = 6.6  # s after an utterance: 0.5 end-of-speech + latency + 4.7 reply + slack
BARGE_AFTER = 4.0  # s from the end of an utterance to the barge-in utterance
MARKER_EVERY = 0.5  # s between markers on average; the spacing varies (seeded) so that markers
#                    fall at every phase of the clients' 20 ms frames and 250 ms chunks
MARKER_LOUD = 0.25  # marker amplitude inside speech (full scale = 1)
MARKER_QUIET = 0.001  # ... and in silence: -60 dBFS, which neither webrtcvad nor the fake agent's
#                       speech gate takes for speech (a louder one starts VAD turns)
SILENT = 33  # |sample| below this (about -60 dBFS) counts as silence on the speaker

TARGETS = {
    "mic_p99": 30.0,  # ms
    "barge_p99": 50.0,  # ms
    "cpu_ratio": 0.5,  # daemon / SDK
    "rss_mb": 60.0,
    "ready_s": 1.5,
}


class BenchError(Exception):
    """A reason the benchmark cannot run or finish, said in one line."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# =========================================================================== signals


# Marker k is chirp MARKER_SWEEPS[k % 10]: neighbours differ (cross-correlation <= 0.3), so a
# search window wider than the marker spacing still finds the right one.
MARKER_SWEEPS = [(2000, 7000), (7000, 2000), (1500, 3500), (3500, 1500), (5000, 7500),
                 (7500, 5000), (3000, 6000), (6000, 3000), (2500, 4500), (4500, 2500)]


def chirp(k: int = 0, rate: int = MIC_RATE, seconds: float = 0.040) -> np.ndarray:
    """Marker ``k``: a Hann-windowed linear chirp, peak 1.0 (a sharp correlation peak,
    mostly above the energy of speech)."""
    f0, f1 = MARKER_SWEEPS[k % len(MARKER_SWEEPS)]
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    return np.sin(phase) * np.hanning(len(t))


def fft_correlate(x: np.ndarray, template: np.ndarray) -> np.ndarray:
    """``sum(x[k + i] * template[i])`` for every k where the template fits (``valid``)."""
    n = len(x) + len(template) - 1
    size = 1 << (n - 1).bit_length()
    spec = np.fft.rfft(x, size) * np.conj(np.fft.rfft(template, size))
    return np.fft.irfft(spec, size)[: len(x) - len(template) + 1]


def ncc_peak(x: np.ndarray, template: np.ndarray, lo: int, hi: int) -> tuple[int, float]:
    """Where in ``x[lo:hi]`` (start indices) ``template`` matches best, and how well
    (normalised cross-correlation, 1.0 = an exact scaled copy). ``(-1, 0.0)`` if it cannot fit."""
    lo = max(0, lo)
    hi = min(len(x) - len(template), hi)
    if hi <= lo:
        return -1, 0.0
    seg = np.asarray(x[lo : hi + len(template)], dtype=np.float64)
    t = np.asarray(template, dtype=np.float64)
    num = fft_correlate(seg, t)
    cumulative = np.concatenate([[0.0], np.cumsum(seg * seg)])
    energy = cumulative[len(t) :] - cumulative[: -len(t)]
    score = num / (np.sqrt(np.maximum(energy, 1e-9)) * np.linalg.norm(t))
    k = int(np.argmax(score))
    return lo + k, float(score[k])


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    import soxr

    return np.asarray(soxr.resample(np.asarray(x, dtype=np.float32), src, dst), dtype=np.float64)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# =========================================================================== the script


@dataclass
class Track:
    """What the bench plays into the virtual mic in one run (16 kHz mono int16)."""

    samples: np.ndarray
    markers: list[int]  # onset sample of every marker
    utterances: list[tuple[int, int, str]]  # start, end, "turn" | "barge"

    @property
    def seconds(self) -> float:
        return len(self.samples) / MIC_RATE

    @property
    def barge_ins(self) -> int:
        return sum(1 for *_, kind in self.utterances if kind == "barge")


def speech_clips(workdir: Path) -> list[np.ndarray]:
    """The user's utterances as float 16 kHz mono, trimmed, peak 0.5: espeak-ng speech,
    or cuts of the shipped question.wav when espeak-ng is missing."""
    from pi_agent.audio.files import read_wav

    clips: list[np.ndarray] = []
    if shutil.which("espeak-ng") is None:
        log("espeak-ng not found: using the shipped question.wav for every utterance")
        frames, rate = read_wav(ROOT / "pi_agent" / "assets" / "question.wav")
        base = resample(frames[:, 0] / 32768.0, rate, MIC_RATE)
        clips = [base.copy() for _ in TEXTS]
    else:
        for i, text in enumerate(TEXTS):
            path = workdir / f"utterance{i}.wav"
            subprocess.run(["espeak-ng", "-s", "165", "-w", str(path), text], check=True,
                           capture_output=True, timeout=30)
            frames, rate = read_wav(path)
            clips.append(resample(frames[:, 0] / 32768.0, rate, MIC_RATE))
    out = []
    for clip in clips:
        loud = np.nonzero(np.abs(clip) > 0.02)[0]
        clip = clip[loud[0] : loud[-1] + 1] if len(loud) else clip
        out.append(clip * (0.5 / max(1e-6, float(np.max(np.abs(clip))))))
    return out


def build_track(clips: list[np.ndarray], plan: list[tuple[int, ...]]) -> Track:
    """Lay the plan's utterances out in time and add markers every MARKER_EVERY seconds."""
    pieces: list[np.ndarray] = [np.zeros(int(LEAD_IN * MIC_RATE))]
    utterances: list[tuple[int, int, str]] = []
    pos = len(pieces[0])

    def add(x: np.ndarray, kind: str | None = None) -> None:
        nonlocal pos
        if kind is not None:
            utterances.append((pos, pos + len(x), kind))
        pieces.append(x)
        pos += len(x)

    for cycle in plan:
        add(clips[cycle[0]], "turn")
        if len(cycle) > 1:
            add(np.zeros(int(BARGE_AFTER * MIC_RATE)))
            add(clips[cycle[1]], "barge")
        add(np.zeros(int(AFTER_TURN * MIC_RATE)))
    x = np.concatenate(pieces)
    markers: list[int] = []
    rng = np.random.default_rng(20240601)
    at = int(0.3 * MIC_RATE)
    while at + MIC_RATE // 20 < len(x) - MIC_RATE // 2:
        mark = chirp(len(markers))
        inside = any(s - len(mark) < at < e for s, e, _ in utterances)
        x[at : at + len(mark)] += mark * (MARKER_LOUD if inside else MARKER_QUIET)
        markers.append(at)
        at += int(MARKER_EVERY * MIC_RATE * rng.uniform(0.8, 1.2))
    samples = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    return Track(samples, markers, utterances)


# =========================================================================== processes


def proc_stat(pid: int) -> dict[str, float]:
    """CPU seconds (user + system, all threads), RSS and peak RSS (MB), threads, open fds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {"cpu": (int(fields[11]) + int(fields[12])) / ticks}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024.0
            elif key == "Threads":
                out["threads"] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of ``pid``: tid -> (name, user + system)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return out


def thread_groups(pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
                  minutes: float) -> dict[str, float]:
    """CPU seconds per minute by kind of thread: the main thread, libpulse's, the rest."""
    groups: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        used = cpu - before.get(tid, (name, 0.0))[1]
        kind = "main" if tid == pid else "libpulse" if name == "threaded-ml" else "other"
        groups[kind] = groups.get(kind, 0.0) + used / minutes
    return groups


def cpu_clock() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far (all CPUs, from /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / ticks, sum(values) / ticks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 8.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout``: our own child, by its pid."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
    return proc.returncode


class FakeAgentProcess:
    """``pi-agent fake-agent`` on a free loopback port; records read over its HTTP test API."""

    def __init__(self, workdir: Path, env: dict[str, str], extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "fake-agent.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pi_agent.cli", "fake-agent", "--port", str(self.port), *(extra or [])],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the fake agent exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                http_json(self.url + "/_fake/conversations", timeout=1)
                return
            time.sleep(0.1)
        raise BenchError(f"the fake agent did not come up: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-600:]

    def conversations(self) -> list[dict[str, Any]]:
        return list(http_json(self.url + "/_fake/conversations")["conversations"])

    def received(self, cid: str) -> dict[str, Any]:
        return dict(http_json(f"{self.url}/_fake/received?conversation={cid}", timeout=60))

    def sent(self, cid: str) -> dict[str, Any]:
        return dict(http_json(f"{self.url}/_fake/sent?conversation={cid}", timeout=60))

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class Client:
    """One client process: ``pi-agent run`` or the SDK runner."""

    kind = "?"

    def __init__(self, workdir: Path, env: dict[str, str], tag: str) -> None:
        self.workdir = workdir
        self.env = env
        self.log_path = workdir / f"{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 1500) -> str:
        text = self.log_path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if not re.match(r"(ALSA lib|Cannot connect|jack|Jack)", line)]
        return "\n".join(lines)[-n:]

    def counters(self) -> dict[str, float]:
        return {}

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        with contextlib.suppress(Exception):
            self._log.close()
        return code


class DaemonClient(Client):
    kind = "pi-agent"

    def __init__(self, workdir: Path, env: dict[str, str], tag: str, fake_url: str,
                 settings: dict[str, str] | None = None) -> None:
        self.api_port = free_port()
        daemon_env = {k: v for k, v in env.items() if not k.startswith("PI_AGENT_")}
        daemon_env.update({
            "PI_AGENT_AGENT_ID": "bench",
            "PI_AGENT_SERVER_URL": fake_url,
            "PI_AGENT_SESSION__POLICY": "persistent",
            "PI_AGENT_AUDIO__ECHO": "full_duplex",  # the mic stays live while the agent speaks: voice barge-in
            "PI_AGENT_AUDIO__INPUT_DEVICE": "default",
            "PI_AGENT_AUDIO__OUTPUT_DEVICE": "default",
            "PI_AGENT_AUDIO__EARCONS": "[]",
            "PI_AGENT_API__PORT": str(self.api_port),
            "PI_AGENT_LOG__LEVEL": "info",
            **(settings or {}),
        })
        super().__init__(workdir, daemon_env, tag)

    def argv(self) -> list[str]:
        script = Path(sys.executable).parent / "pi-agent"
        return [str(script), "run"] if script.exists() else [sys.executable, "-m", "pi_agent.cli", "run"]

    def counters(self) -> dict[str, float]:
        """The daemon's own counters from /metrics."""
        try:
            text = http_text(f"http://127.0.0.1:{self.api_port}/metrics")
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r'pi_agent_audio_device_events\{event="(\w+)"\} ([0-9.e+-]+)', line)
            if m:
                out[m.group(1)] = float(m.group(2))
            m = re.match(r'pi_agent_audio_dropped_frames_total\{reason="(\w+)"\} ([0-9.e+-]+)', line)
            if m:
                out["dropped_" + m.group(1)] = float(m.group(2))
            m = re.match(r"pi_agent_conversations_total ([0-9.e+-]+)", line)
            if m:
                out["conversations"] = float(m.group(1))
        return out


FLOOR_CODE = """
import signal, sys, threading
import pyaudio
pa = pyaudio.PyAudio()
silence = bytes(4096 * 4)
def mic(data, frames, info, status):
    return None, pyaudio.paContinue
def speaker(data, frames, info, status):
    return silence[: frames * 4], pyaudio.paContinue
# the daemon's streams with its defaults: 20 ms mic buffers at 16 kHz mono,
# 10 ms speaker periods (audio.period_ms) at 44.1 kHz stereo
i = pa.open(format=pyaudio.paInt16, channels=1, rate=16000, input=True, frames_per_buffer=320, stream_callback=mic)
o = pa.open(format=pyaudio.paInt16, channels=2, rate=44100, output=True, frames_per_buffer=441, stream_callback=speaker)
print("ready", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
"""


class FloorClient(Client):
    """A process that only keeps PortAudio streams open like the daemon's, and does nothing with them."""

    kind = "audio floor"

    def argv(self) -> list[str]:
        return [sys.executable, "-c", FLOOR_CODE]


class SdkClient(Client):
    kind = "SDK"

    def __init__(self, workdir: Path, env: dict[str, str], tag: str, fake_url: str) -> None:
        super().__init__(workdir, env, tag)
        self.fake_url = fake_url

    def argv(self) -> list[str]:
        return [sys.executable, str(ROOT / "scripts" / "bench_sdk.py"), "--base-url", self.fake_url]


# =========================================================================== the sound card


class Timeline:
    """Sample index -> ``time.monotonic()`` for a recorder, from its buffers' arrival times."""

    def __init__(self, arrivals: np.ndarray, ends: np.ndarray, rate: int, window_s: float = 2.0,
                 warmup_s: float = 1.0) -> None:
        self.rate = rate
        self.ends = ends
        self.arrivals = arrivals
        offsets = arrivals - ends / rate  # arrival = offset + end index / rate; lateness only adds
        if len(arrivals) and arrivals[-1] - arrivals[0] > 3 * warmup_s:
            # A stream's first buffers can come early (the plugin starts with a prefilled period)
            offsets = np.where(arrivals - arrivals[0] < warmup_s, np.inf, offsets)
        k = max(1, int(window_s / REC_PERIOD_S))
        padded = np.concatenate([np.full(k, np.inf), offsets, np.full(k, np.inf)])
        view = np.lib.stride_tricks.sliding_window_view(padded, 2 * k + 1)
        self.offsets = view.min(axis=1)

    def time_of(self, index: int | float) -> float:
        """When sample ``index`` (0-based) had entered the sound server, at the earliest."""
        j = int(np.searchsorted(self.ends, index, side="right"))
        j = min(j, len(self.ends) - 1)
        return float(self.offsets[j] + (index + 1) / self.rate)

    def index_at(self, t: float) -> int:
        j = len(self.ends) // 2
        return round((t - self.offsets[j]) * self.rate)


class TimedRecorder:
    """A PortAudio input stream in this process; every buffer is stamped on arrival."""

    def __init__(self, pa: Any, device: str, rate: int) -> None:
        import pyaudio

        self.rate = rate
        self._chunks: list[bytes] = []
        self._stamps: list[float] = []
        self.overflows = 0
        index = None
        for i in range(pa.get_device_count()):
            if pa.get_device_info_by_index(i)["name"] == device:
                index = i
        if index is None:
            raise BenchError(f"PortAudio does not list the ALSA device {device!r} (ALSA_CONFIG_PATH?)")
        self._pyaudio = pyaudio
        self.stream = pa.open(format=pyaudio.paInt16, channels=1, rate=rate, input=True, input_device_index=index,
                              frames_per_buffer=int(rate * REC_PERIOD_S), stream_callback=self._callback)

    def _callback(self, data: bytes, frames: int, info: Any, status: int) -> tuple[None, int]:
        self._stamps.append(time.monotonic())
        self._chunks.append(data)
        if status & self._pyaudio.paInputOverflow:
            self.overflows += 1
        return None, self._pyaudio.paContinue

    def stop(self) -> tuple[np.ndarray, Timeline]:
        self.stream.stop_stream()
        self.stream.close()
        sizes = np.array([len(c) // 2 for c in self._chunks], dtype=np.int64)
        samples = np.frombuffer(b"".join(self._chunks), dtype="<i2")
        return samples, Timeline(np.array(self._stamps), np.cumsum(sizes), self.rate)


class SoundCard:
    """The tests' PulseAudio virtual card, with its default source and sink set to the
    virtual mic and speaker and ALSA's default PCM on the pulse plugin."""

    def __init__(self, workdir: Path) -> None:
        try:
            import support_audio
        except ImportError as exc:
            raise BenchError(f"cannot import tests/support_audio.py ({exc}); install the test extra "
                             "(PROFILE=test ./scripts/test.sh --collect-only -q)") from None
        reason = support_audio.missing_tools()
        if reason:
            raise BenchError(f"no virtual sound card: {reason}. PROFILE=test ./scripts/test.sh installs it")
        self.va = support_audio.VirtualAudio(workdir / "vaudio")
        self.pa: Any = None

    def start(self) -> None:
        va = self.va
        va.root.mkdir(parents=True, exist_ok=True)
        va.start()
        server = va.server
        for args in (("set-default-source", "mic.monitor"), ("set-default-sink", "spk")):
            result = server.pactl(*args, check=False)
            if result.returncode != 0:
                raise BenchError(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        sock = f"unix:{server.socket}"
        with va.alsa_conf.open("a") as f:
            f.write(f'pcm.!default {{ type pulse; server "{sock}" }}\n'
                    f'ctl.!default {{ type pulse; server "{sock}" }}\n'
                    f'pcm.bench_spkmon {{ type pulse; server "{sock}"; device "spk.monitor" }}\n')
        os.environ["ALSA_CONFIG_PATH"] = str(va.alsa_conf)
        os.environ["PULSE_SERVER"] = sock
        import pyaudio

        from pi_agent.audio.devices import quiet_native_stderr

        with quiet_native_stderr():
            self.pa = pyaudio.PyAudio()

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"ALSA_CONFIG_PATH": str(self.va.alsa_conf), "PULSE_SERVER": f"unix:{self.va.server.socket}",
                    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                    "PYTHONUNBUFFERED": "1"})
        return env

    def recorders(self) -> tuple[TimedRecorder, TimedRecorder]:
        from pi_agent.audio.devices import quiet_native_stderr

        with quiet_native_stderr():
            return TimedRecorder(self.pa, "vmic", MIC_RATE), TimedRecorder(self.pa, "bench_spkmon", SPK_RATE)

    def play(self, path: Path) -> subprocess.Popen[bytes]:
        """Play a raw 16 kHz mono s16le file into the mic sink."""
        return subprocess.Popen(
            ["pacat", "-p", "-d", "mic", "--raw", "--format=s16le", f"--rate={MIC_RATE}", "--channels=1",
             "--latency-msec=20", str(path)],
            env=self.va.server.env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        try:
            if self.pa is not None:
                self.pa.terminate()
                self.pa = None
        finally:
            self.va.stop()


# =========================================================================== one run


@dataclass
class RunResult:
    client: str
    index: int
    mic_to_wire: list[float] = field(default_factory=list)  # s
    playback_start: list[float] = field(default_factory=list)
    barge_in: list[float] = field(default_factory=list)
    barge_ambiguous: int = 0  # cut inside a natural pause of the reply: not measurable
    interruptions: int = 0
    turns: int = 0
    markers_missing: int = 0
    mic_slips: int = 0  # marker spacing in what the agent got differs from the track
    replies_stretched: int = 0  # a whole reply took longer on the speaker than the clip: a gap
    max_stretch_ms: float = 0.0
    cpu_per_min: float = 0.0
    cpu_total: float = 0.0
    other_load: float = 0.0  # share of the machine's CPUs used meanwhile by processes the bench did not start
    threads: dict[str, float] = field(default_factory=dict)  # CPU s/min: main, libpulse, other
    peak_rss_mb: float = 0.0
    ready_s: float = 0.0
    conversation_s: float = 0.0
    counters: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        med = lambda v: f"{round(1000 * statistics.median(v))}" if v else "-"  # noqa: E731
        return (f"{self.client} run {self.index}: mic-to-wire p50 {med(self.mic_to_wire)} ms "
                f"(n={len(self.mic_to_wire)}), playback start p50 {med(self.playback_start)} ms, "
                f"barge-in p50 {med(self.barge_in)} ms "
                f"(n={len(self.barge_in)}, {self.barge_ambiguous} in pauses), CPU {self.cpu_per_min:.2f} s/min, "
                f"peak RSS {self.peak_rss_mb:.1f} MB, ready {self.ready_s:.2f} s, "
                f"other load {100 * self.other_load:.0f}%"
                + (f"; problems: {'; '.join(self.problems)}" if self.problems else ""))


def locate_markers(x: np.ndarray, track: Track, search_s: float = 0.15) -> dict[int, int]:
    """Marker number -> sample index in ``x`` (a recording that holds the track somewhere)."""
    if len(x) < MIC_RATE:
        return {}
    xf, tf = x.astype(np.float64), track.samples.astype(np.float64)
    # a recording shorter than the track: slide it along the track instead
    offset = (int(np.argmax(fft_correlate(xf, tf))) if len(x) >= len(tf)
              else -int(np.argmax(fft_correlate(tf, xf))))
    found: dict[int, int] = {}
    w = int(search_s * MIC_RATE)
    for k, pos in enumerate(track.markers):
        mark = chirp(k)
        at, score = ncc_peak(x, mark, offset + pos - w, offset + pos + w)
        if at < 0 or score <= 0.5:  # a gap in the feed (pacat starved) shifts the rest: look wider
            at, score = ncc_peak(x, mark, offset + pos - 10 * w, offset + pos + 10 * w)
        if at >= 0 and score > 0.5:
            found[k] = at
            offset = at - pos  # follow slips
    return found


def analyse(run: RunResult, track: Track, mic: np.ndarray, mic_tl: Timeline, spk: np.ndarray,
            spk_tl: Timeline, received: dict[str, Any], sent: dict[str, Any], reply: np.ndarray) -> None:
    """Fill ``run``'s latency figures from the recordings and the fake agent's records."""
    # --- mic to wire
    got = np.frombuffer(base64.b64decode(received["audio_base64"]), dtype="<i2")
    chunk_times = np.array(received["audio_chunk_times"])
    chunk_ends = np.cumsum(np.array(received["audio_chunk_bytes"]) // 2)
    in_mic = locate_markers(mic, track)
    in_got = locate_markers(got, track)
    for k in range(len(track.markers)):
        if k not in in_mic or k not in in_got:
            run.markers_missing += 1
            continue
        j = int(np.searchsorted(chunk_ends, in_got[k], side="right"))
        if j >= len(chunk_times):
            run.markers_missing += 1
            continue
        run.mic_to_wire.append(float(chunk_times[j]) - mic_tl.time_of(in_mic[k]))
    common = sorted(set(in_mic) & set(in_got))
    for a, b in itertools.pairwise(common):
        if abs((in_got[b] - in_got[a]) - (in_mic[b] - in_mic[a])) > 2:
            run.mic_slips += 1

    # --- speaker: reply onsets, barge-in silences, whole replies
    first_audio: dict[int, float] = {}
    interrupts: dict[int, float] = {}
    for m in sent["messages"]:
        msg = m.get("message") or {}
        if m["kind"] == "audio":
            eid = msg.get("audio_event", {}).get("event_id")
            if isinstance(eid, int) and eid not in first_audio:
                first_audio[eid] = m["t"]
        elif m["kind"] == "interruption":
            interrupts[msg["interruption_event"]["event_id"]] = m["t"]
    run.turns = len(first_audio)
    run.interruptions = len(interrupts)
    clip = resample(reply / 32768.0, MIC_RATE, SPK_RATE)
    head = clip[: int(0.5 * SPK_RATE)]
    audible = np.nonzero(np.abs(clip * 32768) > SILENT)[0]
    clip_end = int(audible[-1]) + 1 if len(audible) else len(clip)
    x = spk.astype(np.float64)
    onsets: dict[int, int] = {}
    for eid, t in sorted(first_audio.items(), key=lambda kv: kv[1]):
        i0 = spk_tl.index_at(t)
        at, score = ncc_peak(x, head, i0 - int(0.05 * SPK_RATE), i0 + int(2.5 * SPK_RATE))
        if at < 0 or score < 0.7:
            run.problems.append(f"reply {eid} not found on the speaker (score {score:.2f})")
            continue
        onsets[eid] = at
        run.playback_start.append(spk_tl.time_of(at) - t)
    order = sorted(onsets, key=lambda e: onsets[e])
    for n, eid in enumerate(order):
        start = onsets[eid]
        end = onsets[order[n + 1]] - int(0.01 * SPK_RATE) if n + 1 < len(order) else len(x)
        if eid in interrupts:
            t_int = interrupts[eid]
            lo = max(start, spk_tl.index_at(t_int) - int(0.3 * SPK_RATE))
            loud = np.nonzero(np.abs(x[lo:end]) > SILENT)[0]
            if len(loud) == 0:
                run.barge_ambiguous += 1
                continue
            last = lo + int(loud[-1]) + 1  # the first silent sample
            q = last - start  # how far into the reply clip the speaker stopped
            after = clip[q : q + int(0.02 * SPK_RATE)] * 32768
            if q >= clip_end or len(after) == 0 or np.sqrt(np.mean(after**2)) < 100:
                run.barge_ambiguous += 1  # stopped in a natural pause: the cut is not visible
                continue
            run.barge_in.append(spk_tl.time_of(last - 1) - t_int)
        else:
            loud = np.nonzero(np.abs(x[start:end]) > SILENT)[0]
            if len(loud) == 0:
                continue
            stretch = (int(loud[-1]) + 1 - clip_end) / SPK_RATE
            if stretch > 0.005:
                run.replies_stretched += 1
            run.max_stretch_ms = max(run.max_stretch_ms, 1000 * stretch)


class Bench:
    """The sound card, the fake agent and the scripted conversation, for several runs."""

    def __init__(self, workdir: Path, plan: list[tuple[int, ...]], fake_args: list[str] | None = None,
                 keep: bool = False, daemon_settings: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.keep = keep  # save each run's recordings and the fake agent's records in workdir
        self.daemon_settings = daemon_settings or {}  # PI_AGENT_* overrides for every daemon run
        self.card = SoundCard(workdir)
        self.plan = plan
        self.fake_args = fake_args or []
        self.fake: FakeAgentProcess | None = None
        self.track: Track | None = None
        self.track_path = workdir / "track.raw"

    def __enter__(self) -> Bench:
        log(f"work directory {self.workdir}")
        log("starting the PulseAudio virtual sound card")
        self.card.start()
        self.fake = FakeAgentProcess(self.workdir, self.card.child_env(), self.fake_args)
        log(f"fake agent on {self.fake.url}")
        from pi_agent.fake_agent.audio import FORMATS, reply_audio

        self.reply = np.frombuffer(reply_audio(FORMATS["pcm_16000"]), dtype="<i2")
        if self.plan:
            self.track = build_track(speech_clips(self.workdir), self.plan)
            self.track.samples.astype("<i2").tofile(self.track_path)
            log(f"script: {len(self.plan)} user turns, {self.track.barge_ins} barge-in(s), "
                f"{len(self.track.markers)} markers, {self.track.seconds:.0f} s")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.fake is not None:
                self.fake.stop()
        finally:
            self.card.stop()

    def client(self, kind: str, tag: str, settings: dict[str, str] | None = None) -> Client:
        assert self.fake is not None
        env = self.card.child_env()
        if kind == "daemon":
            return DaemonClient(self.workdir, env, tag, self.fake.url, {**self.daemon_settings, **(settings or {})})
        return SdkClient(self.workdir, env, tag, self.fake.url)

    def wait_ready(self, client: Client, known: int, timeout: float = 30.0) -> dict[str, Any]:
        """Wait for the client's conversation to open and its mic audio to flow."""
        assert self.fake is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not client.alive():
                raise BenchError(f"{client.kind} exited with {client.proc.returncode if client.proc else '?'}:\n"
                                 f"{client.log_tail()}")
            convs = self.fake.conversations()
            if len(convs) > known and convs[-1]["received"].get("user_audio_chunk", 0) >= 2:
                return convs[-1]
            time.sleep(0.05)
        raise BenchError(f"{client.kind}: no conversation with mic audio within {timeout:g} s:\n{client.log_tail()}")

    def helpers_cpu(self) -> float:
        """CPU seconds so far of this process and the helpers it started (fake agent, PulseAudio, keepers)."""
        va = self.card.va
        pids = [os.getpid()]
        for proc in [self.fake.proc if self.fake else None, va.server.proc, *getattr(va, "_keepers", [])]:
            if proc is not None and proc.poll() is None:
                pids.append(proc.pid)
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):
                total += proc_stat(pid)["cpu"]
        return total

    def floor(self, seconds: float = 30.0) -> dict[str, float]:
        """CPU per minute and peak RSS of a process that only keeps the daemon's streams open."""
        client = FloorClient(self.workdir, self.card.child_env(), "floor")
        client.start()
        try:
            deadline = time.monotonic() + 30
            while "ready" not in client.log_path.read_text(errors="replace"):
                if not client.alive() or time.monotonic() > deadline:
                    raise BenchError(f"the audio floor process did not start:\n{client.log_tail()}")
                time.sleep(0.1)
            time.sleep(2.0)
            before, threads0, t0 = proc_stat(client.pid), thread_cpu(client.pid), time.monotonic()
            time.sleep(seconds)
            after, threads1, t1 = proc_stat(client.pid), thread_cpu(client.pid), time.monotonic()
        finally:
            client.stop()
        minutes = (t1 - t0) / 60
        return {"cpu_per_min": (after["cpu"] - before["cpu"]) / minutes, "peak_rss_mb": after["VmHWM"],
                **{f"threads_{k}": v for k, v in thread_groups(client.pid, threads0, threads1, minutes).items()}}

    def run(self, kind: str, index: int, during: Callable[[Client, float], None] | None = None) -> RunResult:
        """One scripted conversation through one client process; ``during(client, seconds)``
        is called once the track starts (the profiler hooks in there)."""
        assert self.fake is not None and self.track is not None
        known = len(self.fake.conversations())
        mic_rec, spk_rec = self.card.recorders()
        client = self.client(kind, f"{kind}-{index}")
        run = RunResult(client.kind, index)
        try:
            time.sleep(1.5)  # past the recorders' warm-up (see Timeline)
            client.start()
            conv = self.wait_ready(client, known)
            time.sleep(0.5)
            before = proc_stat(client.pid)
            threads0 = thread_cpu(client.pid)
            helpers0 = self.helpers_cpu()
            machine0 = cpu_clock()
            t0 = time.monotonic()
            player = self.card.play(self.track_path)
            if during is not None:
                during(client, self.track.seconds)
            deadline = t0 + self.track.seconds + 10
            while player.poll() is None and time.monotonic() < deadline:
                if not client.alive():
                    raise BenchError(f"{client.kind} died during the conversation:\n{client.log_tail()}")
                time.sleep(0.1)
            stop_process(player)
            time.sleep(0.3)
            after = proc_stat(client.pid)
            threads1 = thread_cpu(client.pid)
            helpers1 = self.helpers_cpu()
            machine1 = cpu_clock()
            t1 = time.monotonic()
            ours = (after["cpu"] - before["cpu"]) + (helpers1 - helpers0)
            run.other_load = max(0.0, (machine1[0] - machine0[0]) - ours) / max(machine1[1] - machine0[1], 1e-9)
            run.conversation_s = t1 - t0
            run.cpu_total = after["cpu"]
            run.cpu_per_min = (after["cpu"] - before["cpu"]) / ((t1 - t0) / 60)
            run.threads = thread_groups(client.pid, threads0, threads1, (t1 - t0) / 60)
            run.peak_rss_mb = after.get("VmHWM", 0.0)
            run.counters = client.counters()
        finally:
            code = client.stop()
            mic, mic_tl = mic_rec.stop()
            spk, spk_tl = spk_rec.stop()
        if code not in (0, None):
            run.problems.append(f"exit code {code}")
        received, sent = self.fake.received(conv["id"]), self.fake.sent(conv["id"])
        meta = [m["t"] for m in sent["messages"] if m["kind"] == "conversation_initiation_metadata"]
        run.ready_s = (meta[0] - client.spawned_at) if meta else float("nan")
        if mic_rec.overflows or spk_rec.overflows:
            run.problems.append(f"bench recorder overflows {mic_rec.overflows}/{spk_rec.overflows}")
        if self.keep:
            stem = self.workdir / f"{kind}-{index}"
            np.save(f"{stem}-mic.npy", mic)
            np.save(f"{stem}-spk.npy", spk)
            for name, tl in (("mic", mic_tl), ("spk", spk_tl)):
                np.save(f"{stem}-{name}-arrivals.npy", np.stack([tl.arrivals, tl.ends.astype(np.float64)]))
            Path(f"{stem}-fake.json").write_text(json.dumps({"received": received, "sent": sent}))
        analyse(run, self.track, mic, mic_tl, spk, spk_tl, received, sent, self.reply)
        if run.interruptions != self.track.barge_ins:
            run.problems.append(f"{run.interruptions} interruption(s) for {self.track.barge_ins} barge-in(s)")
        return run


# =========================================================================== report


def machine_info() -> dict[str, str]:
    info: dict[str, str] = {"nproc": str(os.cpu_count())}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        info["ram"] = f"{kb / 1024 / 1024:.1f} GiB"
    info["kernel"] = platform.release()
    info["machine"] = platform.machine()
    return info


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("pi-agent", "elevenlabs", "websockets", "numpy", "soxr", "PyAudio"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    with contextlib.suppress(Exception):
        import pyaudio

        out["PortAudio"] = pyaudio.get_portaudio_version_text().replace("PortAudio ", "").split(",")[0]
    with contextlib.suppress(Exception):
        out["PulseAudio"] = subprocess.run(["pulseaudio", "--version"], capture_output=True, text=True,
                                           timeout=10).stdout.strip()
    return out


@dataclass
class Figure:
    name: str
    daemon: float | None
    sdk: float | None
    unit: str
    target: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        def fmt(v: float | None) -> str:
            if v is None or v != v:
                return "-"
            return f"{round(v)}" if self.unit in ("ms", "count") else f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"

        ratio = "-"
        floor = 5.0 if self.unit == "ms" else 1e-9  # a ratio to a few ms says nothing
        if self.daemon is not None and self.sdk is not None and self.daemon == self.daemon and self.sdk >= floor \
                and self.unit != "count":
            ratio = f"{self.daemon / self.sdk:.2f}"
        verdict = "" if self.met is None else ("met" if self.met else "**missed**")
        return [f"{self.name} ({self.unit})", fmt(self.daemon), fmt(self.sdk), ratio, self.target, verdict]


def figures(runs: list[RunResult]) -> list[Figure]:
    d = [r for r in runs if r.client == "pi-agent"]
    s = [r for r in runs if r.client == "SDK"]

    def pool(rs: list[RunResult], attr: str) -> list[float]:
        return [v * 1000 for r in rs for v in getattr(r, attr)]

    def med(rs: list[RunResult], attr: str) -> float | None:
        values = [getattr(r, attr) for r in rs]
        return statistics.median(values) if values else None

    def mx(rs: list[RunResult], attr: str) -> float | None:
        values = [getattr(r, attr) for r in rs]
        return max(values) if values else None

    out: list[Figure] = []
    mic_d, mic_s = pool(d, "mic_to_wire"), pool(s, "mic_to_wire")
    p99 = percentile(mic_d, 99)
    out.append(Figure("mic-to-wire p50", percentile(mic_d, 50), percentile(mic_s, 50), "ms"))
    out.append(Figure("mic-to-wire p99", p99, percentile(mic_s, 99), "ms", "<= 30",
                      None if p99 is None else p99 <= TARGETS["mic_p99"]))
    pb_d, pb_s = pool(d, "playback_start"), pool(s, "playback_start")
    out.append(Figure("playback start p50", percentile(pb_d, 50), percentile(pb_s, 50), "ms"))
    out.append(Figure("playback start p99", percentile(pb_d, 99), percentile(pb_s, 99), "ms"))
    bi_d, bi_s = pool(d, "barge_in"), pool(s, "barge_in")
    b99 = percentile(bi_d, 99)
    out.append(Figure("barge-in p50", percentile(bi_d, 50), percentile(bi_s, 50), "ms"))
    out.append(Figure("barge-in p99", b99, percentile(bi_s, 99), "ms", "<= 50",
                      None if b99 is None else b99 <= TARGETS["barge_p99"]))
    cd, cs = med(d, "cpu_per_min"), med(s, "cpu_per_min")
    out.append(Figure("CPU per minute of conversation, median", cd, cs, "s", "<= 0.5x SDK",
                      None if cd is None or not cs else cd <= TARGETS["cpu_ratio"] * cs))
    rd = mx(d, "peak_rss_mb")
    out.append(Figure("peak RSS, max of runs", rd, mx(s, "peak_rss_mb"), "MB", "<= 60",
                      None if rd is None else rd <= TARGETS["rss_mb"]))
    td = med(d, "ready_s")
    out.append(Figure("time to ready, median", td, med(s, "ready_s"), "s", "<= 1.5",
                      None if td is None else td <= TARGETS["ready_s"]))
    und = sum(r.replies_stretched for r in d)
    out.append(Figure("whole replies with a gap on the speaker", float(und),
                      float(sum(r.replies_stretched for r in s)) if s else None, "count", "0",
                      und == 0 if d else None))
    own_under = sum(r.counters.get("playback_underruns", 0) for r in d)
    out.append(Figure("playback underruns, the daemon's counter", own_under if d else None, None, "count", "0",
                      own_under == 0 if d else None))
    out.append(Figure("capture overflows, the daemon's counter",
                      sum(r.counters.get("capture_overflows", 0) for r in d) if d else None, None, "count"))
    return out


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def shown_args(argv: list[str]) -> str:
    """The command line for the results file, without ``--workdir DIR`` (a local path)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workdir":
            skip = True
        elif not a.startswith("--workdir="):
            out.append(a)
    return " ".join(["scripts/bench.py", *out])


def settings_overrides(items: list[str] | None) -> dict[str, str]:
    """``--set KEY=VALUE`` options as daemon environment settings (``PI_AGENT_`` added if missing)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--set {item!r}: expected KEY=VALUE, e.g. PI_AGENT_AUDIO__PERIOD_MS=10")
        key = key.upper()
        out[key if key.startswith("PI_AGENT_") else "PI_AGENT_" + key] = value
    return out


def compare_section(runs: list[RunResult], track: Track, args: argparse.Namespace, elapsed: float,
                    failures: list[str], floors: dict[str, dict[str, float]]) -> str:
    figs = figures(runs)
    d = [r for r in runs if r.client == "pi-agent"]
    s = [r for r in runs if r.client == "SDK"]
    m, v = machine_info(), versions()
    lines = [
        f"Run of {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}: "
        f"`{shown_args(args.argv)}`" + f", {len(d)} + {len(s)} runs alternating "
        f"(pi-agent first), {elapsed / 60:.1f} min in all.",
        "",
        (f"Everything the bench started ran at nice {args.nice}. " if getattr(args, "nice", 0) else "") +
        f"Machine: {m.get('nproc')} CPUs ({m.get('cpu', '?')}), {m.get('ram', '?')} RAM, Linux {m.get('kernel')} "
        f"{m.get('machine')}. Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        f"Script: {len(track.utterances) - track.barge_ins} user turns and {track.barge_ins} barge-in(s) of espeak-ng "
        f"speech, {track.seconds:.0f} s per run, a marker about every {MARKER_EVERY:g} s; the agent replies with "
        f"its 4.7 s clip (pcm_16000) to every turn.",
        "",
        table([f.cells() for f in figs], ["figure", "pi-agent", "SDK", "ratio", "target (pi-agent)", "verdict"]),
        "",
        "Samples: mic-to-wire "
        f"{sum(len(r.mic_to_wire) for r in d)} / {sum(len(r.mic_to_wire) for r in s)} markers, playback start "
        f"{sum(len(r.playback_start) for r in d)} / {sum(len(r.playback_start) for r in s)} replies, barge-in "
        f"{sum(len(r.barge_in) for r in d)} / {sum(len(r.barge_in) for r in s)} (pi-agent / SDK; "
        f"{sum(r.barge_ambiguous for r in d)} / {sum(r.barge_ambiguous for r in s)} more stopped inside a "
        "natural pause of the reply, where the cut cannot be seen, and are left out).",
        "",
    ]
    per_run = []
    for r in runs:
        c = r.counters
        per_run.append([
            f"{r.client} {r.index}",
            f"{1000 * statistics.median(r.mic_to_wire):.0f}" if r.mic_to_wire else "-",
            f"{1000 * max(r.mic_to_wire):.0f}" if r.mic_to_wire else "-",
            f"{round(1000 * statistics.median(r.playback_start))}" if r.playback_start else "-",
            ", ".join(f"{1000 * b:.0f}" for b in r.barge_in) or "-",
            f"{r.cpu_per_min:.2f}", f"{r.peak_rss_mb:.1f}", f"{r.ready_s:.2f}",
            str(r.replies_stretched),
            (f"{c.get('playback_underruns', 0):.0f} / {c.get('capture_overflows', 0):.0f}" if c else "n/a"),
            str(r.mic_slips), f"{100 * r.other_load:.0f}%", "; ".join(r.problems) or "",
        ])
    def thread_median(rs: list[RunResult], kind: str) -> str:
        values = [r.threads.get(kind, 0.0) for r in rs if r.threads]
        return f"{statistics.median(values):.2f}" if values else "-"

    lines += [
        "Where the CPU goes (seconds per minute of conversation, median of runs, by thread):",
        "",
        table([["main thread (pi-agent: the event loop; SDK: waits)", thread_median(d, "main"),
                thread_median(s, "main")],
               ["libpulse threads (the ALSA pulse plugin)", thread_median(d, "libpulse"), thread_median(s, "libpulse")],
               ["other threads (PortAudio callbacks and I/O, SDK threads)", thread_median(d, "other"),
                thread_median(s, "other")]],
              ["thread", "pi-agent", "SDK"]),
        "",
    ]
    fd = floors.get("daemon")
    if fd:
        lines += [
            f"The audio floor: a process that only keeps PortAudio streams open like the daemon's (20 ms "
            f"mic buffers at 16 kHz mono, 10 ms speaker periods at 44.1 kHz stereo playing silence; pyaudio "
            f"alone) uses "
            f"**{fd['cpu_per_min']:.2f} s CPU per minute** and {fd['peak_rss_mb']:.1f} MB peak RSS on this card.",
            "",
        ]
    lines += [
        "Per run (ms unless said):",
        "",
        table(per_run, ["run", "mic p50", "mic max", "playback p50", "barge-ins", "CPU s/min", "peak RSS MB",
                        "ready s", "replies with a gap", "own underruns / overflows", "mic slips", "other load",
                        "problems"]),
        "",
        "\"own underruns / overflows\" are the daemon's counters (`/metrics`); the SDK has none. "
        "\"replies with a gap\" and \"mic slips\" are seen from outside, for both: a whole reply "
        "that lasted longer on the speaker than the clip, and marker spacing that differs "
        "between the mic and what the agent received. \"other load\" is the share of the machine's "
        "CPUs used meanwhile by processes the bench did not start (not the client, the bench, the "
        "fake agent or PulseAudio).",
    ]
    busy = [r for r in runs if r.other_load > 0.25]
    if busy:
        lines += ["", f"**Warning:** {len(busy)} of {len(runs)} runs shared the machine with other work "
                  f"(other load up to {100 * max(r.other_load for r in busy):.0f}% of all CPUs): the latencies "
                  "are skewed; run again on a quiet machine."]
    if failures:
        lines += ["", "Failed runs (left out): " + "; ".join(failures) + "."]
    return "\n".join(lines)


SECTION = "<!-- bench:{name}:{edge} (regenerated by scripts/bench.py; edit outside) -->"

TEMPLATE = """# Benchmarks: pi-agent against the official ElevenLabs SDK

Measured by `scripts/bench.py` on the PulseAudio virtual sound card; the parts between
the `bench:` markers are rewritten by each run, the rest is kept.

## Results

{compare}

## Soak

{soak}

## Profile

{profile}
"""


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the generated section ``name`` of the results file (creating the file if needed)."""
    start, end = SECTION.format(name=name, edge="start"), SECTION.format(name=name, edge="end")
    block = f"{start}\n{body.strip()}\n{end}"
    if path.exists():
        text = path.read_text()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = TEMPLATE.format(**{n: SECTION.format(name=n, edge="start") + "\n" + SECTION.format(name=n, edge="end")
                                  for n in ("compare", "soak", "profile")})
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def print_table(runs: list[RunResult]) -> None:
    rows = [f.cells() for f in figures(runs)]
    header = ["figure", "pi-agent", "SDK", "ratio", "target", "verdict"]
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


# =========================================================================== commands


@contextlib.contextmanager
def workdir(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep).resolve()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="pi-agent-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_sdk() -> None:
    try:
        importlib.metadata.version("elevenlabs")
    except importlib.metadata.PackageNotFoundError:
        raise BenchError("the elevenlabs SDK is not installed: pip install -e '.[test]' "
                         "(or PROFILE=test ./scripts/test.sh --collect-only -q)") from None


def cmd_compare(args: argparse.Namespace) -> int:
    if args.only != "daemon":
        check_sdk()
    runs_each = 1 if args.quick and args.runs is None else (args.runs or 3)
    plan = PLAN_QUICK if args.quick else PLAN_FULL
    started = time.monotonic()
    results: list[RunResult] = []
    failures: list[str] = []
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        log(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs: other work will skew the figures")
    with workdir(args.workdir) as wd, Bench(wd, plan, keep=bool(args.workdir),
                                            daemon_settings=settings_overrides(args.set)) as bench:
        assert bench.track is not None
        kinds = ("daemon", "sdk") if not args.only else (args.only,)
        for i in range(runs_each):
            for kind in kinds:
                log(f"run {i + 1}/{runs_each}: {'pi-agent run' if kind == 'daemon' else 'SDK Conversation'}")
                try:
                    result = bench.run(kind, i + 1)
                except BenchError as exc:  # one bad run is reported, the others still count
                    failures.append(f"{kind} run {i + 1}: {str(exc).splitlines()[0]}")
                    log(f"run failed: {exc}")
                    continue
                log(result.summary())
                results.append(result)
                time.sleep(1.0)
        floors: dict[str, dict[str, float]] = {}
        try:
            floors["daemon"] = bench.floor(10.0 if args.quick else 30.0)
            log(f"audio floor (the daemon's streams, idle): {floors['daemon']['cpu_per_min']:.2f} s CPU per minute, "
                f"peak RSS {floors['daemon']['peak_rss_mb']:.1f} MB")
        except BenchError as exc:
            failures.append(f"floor: {str(exc).splitlines()[0]}")
        elapsed = time.monotonic() - started
        if not results:
            raise BenchError("every run failed: " + "; ".join(failures))
        print()
        print_table(results)
        for failure in failures:
            print(f"failed: {failure}")
        print()
        if args.write:
            write_section(args.out, "compare", compare_section(results, bench.track, args, elapsed, failures, floors))
            log(f"wrote {args.out}")
        if args.json:
            Path(args.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("py-spy is not installed: pip install -e '.[bench]' (or pip install py-spy)")
    if args.client == "sdk":
        check_sdk()
    with workdir(args.workdir) as wd, Bench(wd, PLAN_FULL if not args.quick else PLAN_QUICK,
                                            daemon_settings=settings_overrides(args.set)) as bench:
        raw = wd / f"profile-{args.client}.txt"
        spy_proc: list[subprocess.Popen[bytes]] = []

        def attach(client: Client, seconds: float) -> None:
            argv = [spy, "record", "--pid", str(client.pid), "--rate", str(args.rate), "--duration",
                    str(int(seconds)), "--format", "raw", "--output", str(raw), "--threads"]
            argv.append("--native" if args.native else "--nonblocking")  # native stacks need pauses
            spy_proc.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        result = bench.run(args.client, 1, during=attach)
        log(result.summary())
        for p in spy_proc:
            _, err = p.communicate(timeout=60)
            if p.returncode != 0:
                raise BenchError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        report = profile_report(raw, args.client, result, args.rate, args.top)
        print(report)
        if args.out_profile:
            Path(args.out_profile).write_text(report + "\n")
            log(f"wrote {args.out_profile}")
        if args.write:
            when = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
            write_section(args.out, "profile", f"Profile of {when}: `{shown_args(args.argv)}` "
                          f"(other load {100 * result.other_load:.0f}%).\n\n```\n{report}\n```")
            log(f"wrote {args.out}")
    return 0


def profile_report(raw: Path, client: str, result: RunResult, rate: int, top: int) -> str:
    """Self and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        names = [re.sub(r"\s*\((/[^)]*/)?([^/)]+)\)", r" (\2)", f) for f in frames[1:]]
        if names:
            own[names[-1]] += count
        for name in set(names):
            incl[name] += count
    secs = total / rate
    out = [f"py-spy, {client}, {rate} Hz, {total} samples of Python threads on CPU = {secs:.1f} s over "
           f"{result.conversation_s:.0f} s; /proc: {result.cpu_per_min:.2f} s CPU per minute in all ("
           + ", ".join(f"{k} {v:.2f}" for k, v in sorted(result.threads.items())) + ")", "",
           "by thread (py-spy sees only threads running Python):"]
    out += [f"  {100 * c / max(total, 1):5.1f}%  {t}" for t, c in threads.most_common(8)]
    out += ["", f"top {top} by own samples:"]
    out += [f"  {100 * c / max(total, 1):5.1f}%  {n}" for n, c in own.most_common(top)]
    out += ["", f"top {top} by inclusive samples:"]
    out += [f"  {100 * c / max(total, 1):5.1f}%  {n}" for n, c in incl.most_common(top)]
    return "\n".join(out)


def cmd_soak(args: argparse.Namespace) -> int:
    fake_args = ["--first-message", "--end-call-after", "1", "--reply-seconds", str(args.reply_seconds),
                 "--send-speed", "4", "--max-duration", "20", "--ping-interval", "1"]
    settings = {
        "PI_AGENT_SESSION__BACKOFF_INITIAL": "0.2", "PI_AGENT_SESSION__BACKOFF_MAX": "0.5",
        "PI_AGENT_SESSION__BACKOFF_RESET_AFTER": "0",
        "PI_AGENT_AUDIO__EARCONS": '["listening","done","error","offline"]',
    }
    duration = args.minutes * 60
    samples: list[dict[str, float]] = []
    with workdir(args.workdir) as wd, Bench(wd, [], fake_args,
                                            daemon_settings=settings_overrides(args.set)) as bench:
        assert bench.fake is not None
        client = bench.client("daemon", "soak", settings)
        clips = speech_clips(wd)
        gap = np.zeros(int(2.5 * MIC_RATE))
        loop = np.concatenate([np.concatenate([c, gap]) for c in clips])
        loop_pcm = np.clip(np.round(loop * 32767), -32768, 32767).astype("<i2").tobytes()
        stop = threading.Event()
        feeder = subprocess.Popen(
            ["pacat", "-p", "-d", "mic", "--raw", "--format=s16le", f"--rate={MIC_RATE}", "--channels=1",
             "--latency-msec=50"], env=bench.card.va.server.env, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)

        def feed() -> None:
            assert feeder.stdin is not None
            with contextlib.suppress(OSError, ValueError):
                while not stop.is_set():
                    feeder.stdin.write(loop_pcm)
                    feeder.stdin.flush()

        thread = threading.Thread(target=feed, name="soak-mic", daemon=True)
        known = len(bench.fake.conversations())
        client.start()
        try:
            bench.wait_ready(client, known)
            thread.start()
            t0 = time.monotonic()
            log(f"soak: {args.minutes:g} min, a sample every {args.interval:g} s")
            print(f"{'t (s)':>7} {'RSS MB':>7} {'fds':>4} {'threads':>7} {'convs':>5} {'CPU s':>6}", flush=True)
            while True:
                now = time.monotonic() - t0
                if not client.alive():
                    raise BenchError(f"the daemon died during the soak:\n{client.log_tail()}")
                st = proc_stat(client.pid)
                st["t"] = now
                st["conversations"] = client.counters().get("conversations", float("nan"))
                samples.append(st)
                print(f"{now:7.0f} {st['VmRSS']:7.1f} {st['fds']:4.0f} {st['threads']:7.0f} "
                      f"{st['conversations']:5.0f} {st['cpu']:6.1f}", flush=True)
                if now >= duration - 0.5:
                    break
                time.sleep(min(args.interval, max(0.0, duration - now)))
            counters = client.counters()
        finally:
            stop.set()
            code = client.stop()
            stop_process(feeder)
        verdict = soak_verdict(samples, args.warmup)
        print()
        print(verdict)
        if code not in (0, None):
            print(f"(the daemon exited with {code})")
        if args.write:
            write_section(args.out, "soak", soak_section(samples, verdict, args, counters))
            log(f"wrote {args.out}")
        return 0 if "not flat" not in verdict else 1


def _flat(values: list[float], tolerance: float) -> tuple[bool, float, float]:
    q = max(1, len(values) // 4)
    first, last = statistics.median(values[:q]), statistics.median(values[-q:])
    return last - first <= tolerance, first, last


def soak_verdict(samples: list[dict[str, float]], warmup: float) -> str:
    kept = [s for s in samples if s["t"] >= warmup] or samples
    if len(kept) < 4:
        return "too few samples for a verdict (run longer)"
    rss = [s["VmRSS"] for s in kept]
    fds = [s["fds"] for s in kept]
    rss_ok, r0, r1 = _flat(rss, max(2.0, 0.03 * rss[0]))
    fd_ok, f0, f1 = _flat(fds, 0.5)
    convs = samples[-1].get("conversations", float("nan")) - samples[0].get("conversations", 0)
    span = (kept[-1]["t"] - kept[0]["t"]) / 60
    return (f"RSS {'flat' if rss_ok else 'not flat'}: median {r0:.1f} MB in the first quarter, {r1:.1f} MB in the "
            f"last (after a {warmup:g} s warm-up; tolerance max(2 MB, 3%)); "
            f"open fds {'flat' if fd_ok else 'not flat'}: {f0:.0f} -> {f1:.0f}; "
            f"{convs:.0f} conversations over {span:.1f} min measured.")


def soak_section(samples: list[dict[str, float]], verdict: str, args: argparse.Namespace,
                 counters: dict[str, float]) -> str:
    step = max(1, len(samples) // 16)
    rows = [[f"{s['t']:.0f}", f"{s['VmRSS']:.1f}", f"{s['fds']:.0f}", f"{s['threads']:.0f}",
             f"{s['conversations']:.0f}", f"{s['cpu']:.1f}"] for s in samples[::step]]
    if samples[-1] is not samples[::step][-1]:
        s = samples[-1]
        rows.append([f"{s['t']:.0f}", f"{s['VmRSS']:.1f}", f"{s['fds']:.0f}", f"{s['threads']:.0f}",
                     f"{s['conversations']:.0f}", f"{s['cpu']:.1f}"])
    return "\n".join([
        f"Soak of {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}: "
        f"`{shown_args(args.argv)}`. The daemon (persistent policy, full duplex, "
        "backoff 0.2-0.5 s) against the fake agent with a first message, replies cut to "
        f"{args.reply_seconds:g} s sent 4x real time, the call ended by the agent after its first whole turn "
        "(or 20 s); "
        "espeak-ng speech loops into the mic with 2.5 s gaps.",
        "",
        table(rows, ["t (s)", "RSS MB", "open fds", "threads", "conversations", "CPU s"]),
        "",
        f"Verdict: {verdict}",
        "",
        f"Daemon counters at the end: {', '.join(f'{k} {v:.0f}' for k, v in sorted(counters.items())) or 'n/a'}.",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Latency, barge-in, CPU and memory of `pi-agent run` side by side with the official "
                    "ElevenLabs SDK, on the PulseAudio virtual sound card (not a test; not run by CI).",
        epilog="Needs what PROFILE=test ./scripts/test.sh installs; `profile` also needs py-spy "
               "(pip install -e '.[bench]'). Installs nothing itself.")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per client, alternating (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 2 user turns, 1 run each")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS.relative_to(ROOT)})")
    parser.add_argument("--no-write", dest="write", action="store_false", help="print only; leave the results file")
    parser.add_argument("--json", metavar="PATH", help="also write every run's raw figures as JSON")
    parser.add_argument("--workdir", metavar="DIR", help="keep logs and recordings here (default: a temp dir, removed)")
    parser.add_argument("--nice", type=int, default=0, metavar="N",
                        help="run the bench and everything it starts at this nice value (e.g. -10 as root "
                             "on a shared machine, so other work disturbs the timing less)")
    parser.add_argument("--only", choices=("daemon", "sdk"), help="run one client only (e.g. to try a daemon setting)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="a daemon setting for every pi-agent run, e.g. PI_AGENT_AUDIO__PERIOD_MS=10 (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    soak = sub.add_parser("soak", help="the daemon in a long accelerated conversation: RSS and fds over time")
    soak.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    soak.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    soak.add_argument("--warmup", type=float, default=30.0, help="seconds left out of the verdict (default 30)")
    soak.add_argument("--reply-seconds", type=float, default=1.5, help="agent reply length (default 1.5)")
    prof = sub.add_parser("profile", help="py-spy on one scripted conversation; top functions by CPU")
    prof.add_argument("--client", choices=("daemon", "sdk"), default="daemon", help="whom to profile (default daemon)")
    prof.add_argument("--rate", type=int, default=250, help="samples per second (default 250)")
    prof.add_argument("--native", action="store_true", help="include native frames (numpy, soxr, PortAudio)")
    prof.add_argument("--top", type=int, default=25, help="functions listed (default 25)")
    prof.add_argument("--out-profile", metavar="PATH", help="also write the report to this file")
    for p in (soak, prof):
        p.set_defaults(quick=False)
        p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
        # SUPPRESS: given before the command, these must not be reset by the command's defaults.
        p.add_argument("--out", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--no-write", dest="write", action="store_false", default=argparse.SUPPRESS,
                       help="leave the results file alone")
        p.add_argument("--workdir", metavar="DIR", default=argparse.SUPPRESS,
                       help="keep logs here (default: a temp dir, removed)")
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        # Inherited by every process the bench starts: the clients, the fake agent, PulseAudio.
        if args.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, args.nice)
            except PermissionError:
                raise BenchError(f"--nice {args.nice}: not allowed (a negative value needs root)") from None

        if args.command == "soak":
            return cmd_soak(args)
        if args.command == "profile":
            return cmd_profile(args)
        return cmd_compare(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
