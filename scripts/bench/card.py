"""The tests' PulseAudio virtual sound card, and the bench's own timed recorders on it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from .env import BenchError
from .signals import MIC_RATE, SPK_RATE

REC_PERIOD_S = 0.010  # buffer length of this process's recorders


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
        from tests import support_audio

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

        from pi_agent.audio.native import quiet_native_stderr

        with quiet_native_stderr():
            self.pa = pyaudio.PyAudio()

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"ALSA_CONFIG_PATH": str(self.va.alsa_conf), "PULSE_SERVER": f"unix:{self.va.server.socket}",
                    "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
                    "PYTHONUNBUFFERED": "1"})
        return env

    def recorders(self) -> tuple[TimedRecorder, TimedRecorder]:
        from pi_agent.audio.native import quiet_native_stderr

        with quiet_native_stderr():
            return TimedRecorder(self.pa, "vmic", MIC_RATE), TimedRecorder(self.pa, "bench_spkmon", SPK_RATE)

    def play(self, path: Path) -> subprocess.Popen[bytes]:
        """Play a raw 16 kHz mono s16le file into the mic sink."""
        return subprocess.Popen(
            ["pacat", "-p", "-d", "mic", "--raw", "--format=s16le", f"--rate={MIC_RATE}", "--channels=1",
             "--latency-msec=20", str(path)],
            env=self.va.server.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        try:
            if self.pa is not None:
                self.pa.terminate()
                self.pa = None
        finally:
            self.va.stop()
