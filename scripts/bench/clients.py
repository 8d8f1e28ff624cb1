"""The processes measured: ``pi-agent run``, the official SDK, and the audio floor."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.support_faults import metric

from .env import ROOT
from .procs import free_port, http_text, stop_process


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
    """``pi-agent run``: persistent policy, VAD capture, full duplex (the mic stays live while
    the agent speaks, as the SDK's does, so a voice barge-in is possible), no earcons,
    everything else default; ``settings`` override."""

    kind = "pi-agent"

    def __init__(self, workdir: Path, env: dict[str, str], tag: str, fake_url: str,
                 settings: dict[str, str] | None = None) -> None:
        self.api_port = free_port()
        daemon_env = {k: v for k, v in env.items() if not k.startswith("PI_AGENT_")}
        daemon_env.update({
            "PI_AGENT_AGENT_ID": "bench",
            "PI_AGENT_SERVER_URL": fake_url,
            "PI_AGENT_SESSION__POLICY": "persistent",
            "PI_AGENT_CAPTURE__MODE": "vad",
            "PI_AGENT_AUDIO__ECHO": "full_duplex",
            "PI_AGENT_AUDIO__INPUT_DEVICE": "default",
            "PI_AGENT_AUDIO__OUTPUT_DEVICE": "default",
            "PI_AGENT_AUDIO__EARCONS": "[]",
            "PI_AGENT_API__PORT": str(self.api_port),
            "PI_AGENT_API__SOCKET": str(workdir / f"api-{self.api_port}.sock"),
            "PI_AGENT_LOG__LEVEL": "info",
            **(settings or {}),
        })
        super().__init__(workdir, daemon_env, tag)

    def argv(self) -> list[str]:
        script = Path(sys.executable).parent / "pi-agent"
        return [str(script), "run"] if script.exists() else [sys.executable, "-m", "pi_agent.cli", "run"]

    def metrics(self) -> str | None:
        try:
            return http_text(f"http://127.0.0.1:{self.api_port}/metrics")
        except OSError:
            return None

    def counters(self) -> dict[str, float]:
        """The daemon's own counters from /metrics."""
        text = self.metrics()
        if text is None:
            return {}
        out = {name: metric(text, "pi_agent_audio_device_events", event=name)
               for name in ("capture_overflows", "playback_underruns", "playback_device_underflows")}
        for reason in ("late", "prebuffer_full", "playback_full"):
            out["dropped_" + reason] = metric(text, "pi_agent_audio_dropped_frames_total", reason=reason)
        out["conversations"] = metric(text, "pi_agent_conversations_total")
        return out


class SdkClient(Client):
    """``scripts/bench_sdk.py``: ``Conversation`` + ``DefaultAudioInterface``, nothing else."""

    kind = "SDK"

    def __init__(self, workdir: Path, env: dict[str, str], tag: str, fake_url: str) -> None:
        super().__init__(workdir, env, tag)
        self.fake_url = fake_url

    def argv(self) -> list[str]:
        return [sys.executable, str(ROOT / "scripts" / "bench_sdk.py"), "--base-url", self.fake_url]


FLOOR_CODE = """
import signal, sys, threading
import pyaudio
from pi_agent.audio import portaudio
period_ms = int(sys.argv[1])
pa = pyaudio.PyAudio()
silence = bytes(48000 * 4)
def speaker(data, frames, info, status):
    return silence[: frames * 4], pyaudio.paContinue
# the daemon's streams while it converses: its microphone (a blocking stream with 10 ms periods and
# a second of buffer, read a 20 ms frame at a time) and a speaker callback stream of period_ms at
# 44.1 kHz stereo, playing silence
index = pa.get_default_input_device_info()["index"]
mic = portaudio.BlockingInput(portaudio.library(), index, channels=1, rate=16000, period=160, buffer_seconds=1.0)
mic.start()
def read():
    while True:
        mic.read(320)
threading.Thread(target=read, daemon=True).start()
o = pa.open(format=pyaudio.paInt16, channels=2, rate=44100, output=True, frames_per_buffer=441 * period_ms // 10,
            stream_callback=speaker)
print("ready", flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
"""


class FloorClient(Client):
    """A process that only keeps PortAudio streams open like the daemon's in a conversation,
    and does nothing with them: what the audio path itself costs on this card."""

    kind = "audio floor"

    def __init__(self, workdir: Path, env: dict[str, str], tag: str, period_ms: int) -> None:
        super().__init__(workdir, env, tag)
        self.period_ms = period_ms

    def argv(self) -> list[str]:
        return [sys.executable, "-c", FLOOR_CODE, str(self.period_ms)]
