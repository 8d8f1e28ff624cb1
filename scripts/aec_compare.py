"""Compare the two WebRTC echo cancellers pi-agent could depend on: pywebrtc-audio and livekit.

What it measures, on a synthetic but realistic echo scene (16 kHz mono int16, deterministic):

* far end (what the speaker plays): about 20 s of espeak-ng speech (en-us), active level -20 dBFS;
* echo path: far end convolved with a room impulse response (direct path plus an exponentially
  decaying noise tail, RT60 0.3 s), delayed by 20, 60 or 120 ms (device + acoustic delay), echo at
  the mic 6 dB below the far end, plus white mic noise at -60 dBFS;
* near end (the user): a different espeak-ng voice (en-gb-x-rp+f3) through its own room response, at
  the same level as the echo, once while the speaker talks ("double talk") and once after it is
  silent ("near only").

Both cancellers are fed frame by frame as a daemon would: the far frame being played and the mic
frame of the same instant together, 10 ms at a time (20 ms for one pywebrtc variant), so the
canceller never sees the future. For each package, configuration and delay it reports:

* ERLE: 10*log10(mic power / output power) over the far-only samples, in the first 2 s (convergence),
  after the first 2 s, and over the last 5 s of echo;
* double talk and near only: normalised correlation between the output and the clean near-end speech
  after aligning by cross-correlation, against two references: "corr" uses the clean speech passed
  through the package's own high-pass filter (always on with its AEC; livekit's is steeper and shifts
  phase far more, which alone drops a plain correlation to about 0.63), "raw corr" the clean speech
  itself; also the lag found (the delay the canceller adds) and the output/reference level in dB;
* CPU: median, p90 and mean microseconds per 10 ms frame (time.perf_counter around the calls a daemon
  makes per frame, including livekit's copies into and out of its AudioFrames), split into frames
  while the far end plays and after it has gone silent (all-zero reference), each the median over
  several repeats, and as % of one core; runs are interleaved so machine noise hits every config.

Configurations: delay hint 0 / the true delay / 100 ms too large, pywebrtc with 20 ms calls, pywebrtc
with +-1 LSB dither on the far end (pywebrtc slows down about 15x on x86 once the reference turns to
digital silence after speech, consistent with denormals; the dither avoids it), and noise suppression
on (pywebrtc AudioProcessor, livekit noise_suppression=True).

Run it in a scratch venv holding both packages (do not add them to pi-agent's venv for this):

    python -m venv /tmp/aecv && /tmp/aecv/bin/pip install numpy soxr livekit pywebrtc-audio
    /tmp/aecv/bin/python scripts/aec_compare.py [--repeats 7] [--delays 20,60,120] [--noise-dbfs -60]

ERLE, the alignment and the levels are measured by pi_agent.audio.echo_analysis (numpy only, taken from this
checkout: pi-agent need not be installed there), which pi-agent test-mic --echo uses too.

It needs espeak-ng on PATH, takes about 2-3 minutes, prints a markdown report to stdout (progress on
stderr) and writes no files.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import soxr
from livekit import rtc
from pywebrtc_audio import AudioProcessor, EchoCanceller

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # pi_agent's echo analysis: numpy only, like this
from pi_agent.audio.echo_analysis import Match, at_dbfs, erle_db, match

SR = 16000
FRAME = SR // 100  # 10 ms
ESPEAK_SR = 22050

FAR_DBFS = -20.0  # active speech level of the speaker reply
ECHO_REL_DB = -6.0  # echo at the mic relative to the far end
NEAR_DBFS = FAR_DBFS + ECHO_REL_DB  # the user as loud as the echo: 0 dB signal-to-echo in double talk
NOISE_DBFS = -60.0
RT60_S = 0.3
RIR_S = 0.4

FAR_TEXT = [
    "Sure, here is the weather for today.",
    "It will be mostly sunny in the morning, with clouds moving in after lunch.",
    "The high will be around twenty two degrees, and there is a small chance of rain in the evening.",
    "Tomorrow looks cooler, with a strong wind from the north west.",
    "Would you like me to set a reminder to bring an umbrella?",
]
NEAR_DT_TEXT = "Stop. What time is my first meeting tomorrow morning?"
NEAR_ONLY_TEXT = "Set a timer for ten minutes, please."
DT_START_S = 9.0  # the user barges in here, while the speaker is talking

I16 = npt.NDArray[np.int16]
F64 = npt.NDArray[np.float64]


# --- scene -------------------------------------------------------------------------------------


def espeak(text: str, voice: str, wpm: int = 160) -> F64:
    """Synthesize with espeak-ng and return float samples at SR in int16 units."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text], check=True, capture_output=True
    ).stdout
    # espeak-ng streams a RIFF header with placeholder sizes: take everything after the "data" tag
    pos = wav.find(b"data")
    if wav[:4] != b"RIFF" or pos < 0:
        raise RuntimeError("unexpected espeak-ng output")
    pcm = np.frombuffer(wav[pos + 8 :], dtype="<i2").astype(np.float64)
    out: F64 = np.asarray(soxr.resample(pcm, ESPEAK_SR, SR, quality="HQ"), dtype=np.float64)
    loud = np.flatnonzero(np.abs(out) > 0.003 * np.abs(out).max())  # trim espeak's leading/trailing silence
    return out[loud[0] : loud[-1] + 1]


def active_rms(x: F64) -> float:
    """RMS over the 10 ms frames within 40 dB of the loudest frame (speech level without the pauses)."""
    n = len(x) // FRAME
    p = np.mean(x[: n * FRAME].reshape(n, FRAME) ** 2, axis=1)
    return float(np.sqrt(np.mean(p[p > p.max() * 1e-4])))


def speech_at(x: F64, dbfs: float) -> F64:
    """x with its active speech level (:func:`active_rms`) at dbfs."""
    return at_dbfs(x, dbfs, active_rms(x))


def room_ir(seed: int, drr_db: float) -> F64:
    """Direct path (tap 0) plus an exponentially decaying noise tail from 2 ms on, RT60 = RT60_S."""
    rng = np.random.default_rng(seed)
    n = int(RIR_S * SR)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / RT60_S)  # amplitude -60 dB at RT60
    tail[: int(0.002 * SR)] = 0.0
    tail *= np.sqrt(10 ** (-drr_db / 10) / np.sum(tail**2))  # direct-to-reverberant energy ratio
    tail[0] = 1.0
    return tail


def convolve(x: F64, h: F64) -> F64:
    n = len(x) + len(h) - 1
    nfft = 1 << (n - 1).bit_length()
    y: F64 = np.fft.irfft(np.fft.rfft(x, nfft) * np.fft.rfft(h, nfft), nfft)[:n]
    return y


@dataclass
class Scene:
    far: I16  # reference given to the canceller, the frame being played now
    mic: I16  # echo + near + noise
    clean: F64  # the near-end speech as it arrives at the mic: the ideal output
    delay_ms: int
    far_only: npt.NDArray[np.bool_]  # echo present, user silent
    echo_end: int
    dt: tuple[int, int]  # double-talk span of the clean near speech
    near_only: tuple[int, int]
    echo_ceiling_db: float  # 10*log10(mic power / noise power) over far_only after 2 s


@dataclass
class Sources:
    far: F64
    near_dt: F64
    near_only: F64


def make_sources() -> Sources:
    gap = np.zeros(int(0.35 * SR))
    parts: list[F64] = []
    for sentence in FAR_TEXT:
        parts += [espeak(sentence, "en-us"), gap]
    far = speech_at(np.concatenate(parts), FAR_DBFS)
    near_dt = speech_at(espeak(NEAR_DT_TEXT, "en-gb-x-rp+f3"), NEAR_DBFS)
    near_only = speech_at(espeak(NEAR_ONLY_TEXT, "en-gb-x-rp+f3"), NEAR_DBFS)
    return Sources(far, near_dt, near_only)


def make_scene(src: Sources, delay_ms: int, noise_dbfs: float = NOISE_DBFS) -> Scene:
    far_len = len(src.far)
    near_only_start = far_len + int(1.2 * SR)  # well after the echo tail of the last sentence
    h_echo = room_ir(seed=1, drr_db=3.0)
    h_near = room_ir(seed=2, drr_db=0.0)
    near_dt = convolve(src.near_dt, h_near)
    near_only = convolve(src.near_only, h_near)
    total = near_only_start + len(near_only) + SR // 2
    total += -total % (2 * FRAME)  # whole 20 ms chunks

    far = np.zeros(total)
    far[:far_len] = src.far
    echo_full = convolve(src.far, h_echo)
    echo_full *= 10 ** (ECHO_REL_DB / 20) * active_rms(src.far) / active_rms(echo_full)
    d = delay_ms * SR // 1000
    echo = np.zeros(total)
    echo[d : d + len(echo_full)] = echo_full[: total - d]

    clean = np.zeros(total)
    dt0 = int(DT_START_S * SR)
    clean[dt0 : dt0 + len(near_dt)] += near_dt
    clean[near_only_start : near_only_start + len(near_only)] += near_only

    noise = np.random.default_rng(3).standard_normal(total) * 32768.0 * 10 ** (noise_dbfs / 20)
    mic = np.clip(np.round(echo + clean + noise), -32768, 32767).astype(np.int16)

    echo_end = d + far_len + int(0.3 * SR)
    idx = np.arange(total)
    margin = int(0.05 * SR)
    far_only = (idx < echo_end) & ~((idx >= dt0 - margin) & (idx < dt0 + len(near_dt) + margin))
    after = far_only & (idx >= 2 * SR)
    ceiling = 10 * np.log10(np.mean(mic[after].astype(np.float64) ** 2) / np.mean(noise[after] ** 2))
    return Scene(
        far=np.round(far).astype(np.int16),
        mic=mic,
        clean=clean,
        delay_ms=delay_ms,
        far_only=far_only,
        echo_end=echo_end,
        dt=(dt0, dt0 + len(near_dt)),
        near_only=(near_only_start, near_only_start + len(near_only)),
        echo_ceiling_db=float(ceiling),
    )


# --- cancellers --------------------------------------------------------------------------------


class Canceller(Protocol):
    def process(self, near: I16, far: I16) -> I16: ...


class PyWebrtcEC:
    """pywebrtc-audio EchoCanceller (AEC3 with its always-on high-pass filter)."""

    def __init__(self, hint_ms: int, dither: bool = False) -> None:
        self.ec = EchoCanceller(sample_rate=SR, num_channels=1, stream_delay_ms=hint_ms)
        self.rng = np.random.default_rng(4) if dither else None

    def process(self, near: I16, far: I16) -> I16:
        if self.rng is not None:  # +-1 LSB on the reference: keeps AEC3's float state out of denormals
            far = far + self.rng.integers(-1, 2, len(far), dtype=np.int16)
        return self.ec.process(near, far)


class PyWebrtcAP:
    """pywebrtc-audio AudioProcessor with AEC3, high-pass filter and noise suppression."""

    def __init__(self, hint_ms: int) -> None:
        self.ap = AudioProcessor(
            sample_rate=SR,
            echo_cancellation=True,
            noise_suppression=True,
            high_pass_filter=True,
            stream_delay_ms=hint_ms,
        )

    def process(self, near: I16, far: I16) -> I16:
        return self.ap.process(near, far)


class LiveKitAPM:
    """livekit rtc.AudioProcessingModule: far frame to process_reverse_stream, then mic frame to process_stream."""

    def __init__(self, hint_ms: int | None, ns: bool = False, aec: bool = True) -> None:
        self.apm = rtc.AudioProcessingModule(echo_cancellation=aec, noise_suppression=ns, high_pass_filter=True)
        self.aec = aec
        self.hint_ms = hint_ms
        self.far_frame = rtc.AudioFrame.create(SR, 1, FRAME)
        self.near_frame = rtc.AudioFrame.create(SR, 1, FRAME)
        # writable int16 views of the frames' bytearrays (AudioFrame.create allocates a bytearray)
        self.far_view = np.frombuffer(self.far_frame.data, dtype=np.int16)
        self.near_view = np.frombuffer(self.near_frame.data, dtype=np.int16)

    def process(self, near: I16, far: I16) -> I16:
        if self.aec:
            self.far_view[:] = far
            self.apm.process_reverse_stream(self.far_frame)
        if self.hint_ms is not None:
            self.apm.set_stream_delay_ms(self.hint_ms)  # WebRTC wants it before every process_stream
        self.near_view[:] = near
        self.apm.process_stream(self.near_frame)
        return self.near_view.copy()


def hpf_only(family: str, x: I16) -> I16:
    """x through the package's high-pass filter alone (the filter its AEC always applies), 10 ms at a time."""
    if family == "pywebrtc":
        ap = AudioProcessor(sample_rate=SR, high_pass_filter=True)
        return np.concatenate([ap.process(x[k : k + FRAME]) for k in range(0, len(x), FRAME)])
    lk = LiveKitAPM(None, aec=False)
    return np.concatenate([lk.process(x[k : k + FRAME], x[k : k + FRAME]) for k in range(0, len(x), FRAME)])


@dataclass
class Config:
    name: str
    family: str  # "pywebrtc" or "livekit"
    make: Callable[[int], Canceller]  # from the true delay in ms
    chunk: int = FRAME  # samples per call


CONFIGS = [
    Config("pywebrtc EchoCanceller, hint 0", "pywebrtc", lambda d: PyWebrtcEC(0)),
    Config("pywebrtc EchoCanceller, hint = delay", "pywebrtc", lambda d: PyWebrtcEC(d)),
    Config("pywebrtc EchoCanceller, hint = delay+100", "pywebrtc", lambda d: PyWebrtcEC(d + 100)),
    Config("pywebrtc EchoCanceller, 20 ms calls, hint 0", "pywebrtc", lambda d: PyWebrtcEC(0), chunk=2 * FRAME),
    Config("pywebrtc EchoCanceller, far +-1 LSB dither, hint 0", "pywebrtc", lambda d: PyWebrtcEC(0, dither=True)),
    Config("pywebrtc AudioProcessor AEC+NS, hint 0", "pywebrtc", lambda d: PyWebrtcAP(0)),
    Config("livekit APM, no delay hint", "livekit", lambda d: LiveKitAPM(None)),
    Config("livekit APM, hint = delay", "livekit", lambda d: LiveKitAPM(d)),
    Config("livekit APM, hint = delay+100", "livekit", lambda d: LiveKitAPM(d + 100)),
    Config("livekit APM AEC+NS, no delay hint", "livekit", lambda d: LiveKitAPM(None, ns=True)),
]


# --- measurement -------------------------------------------------------------------------------


@dataclass
class Run:
    out: I16
    us_per_frame: F64  # wall time of the calls per 10 ms of audio, one value per call
    starts: npt.NDArray[np.int64]  # first sample of each call
    cpu_us_per_frame: float  # process CPU time of the whole loop per 10 ms (all threads)


def run(cfg: Config, scene: Scene) -> Run:
    proc = cfg.make(scene.delay_ms)
    n = len(scene.mic) // cfg.chunk
    out = np.empty(n * cfg.chunk, dtype=np.int16)
    times = np.empty(n)
    per10 = FRAME / cfg.chunk
    perf = time.perf_counter
    cpu0 = time.process_time()
    for k in range(n):
        a, b = k * cfg.chunk, (k + 1) * cfg.chunk
        near, far = scene.mic[a:b], scene.far[a:b]
        t0 = perf()
        y = proc.process(near, far)
        times[k] = (perf() - t0) * 1e6 * per10
        out[a:b] = y
    cpu = (time.process_time() - cpu0) * 1e6 / (n / per10)
    return Run(out, times, np.arange(n, dtype=np.int64) * cfg.chunk, cpu)


@dataclass
class Result:
    cfg: str
    delay_ms: int
    erle_early: float
    erle_after2: float
    erle_last5: float
    dt: Match  # against the clean near speech through the package's own high-pass filter
    dt_raw: Match  # against the clean near speech itself
    near: Match
    near_raw: Match
    deterministic: bool = True
    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.runs.setdefault(key, []).append(value)

    def med(self, key: str) -> float:
        return statistics.median(self.runs[key]) if key in self.runs else float("nan")


def quality(name: str, scene: Scene, out: I16, ref: I16) -> Result:
    idx = np.arange(len(out))
    fo = scene.far_only[: len(out)]

    def erle(mask: npt.NDArray[np.bool_]) -> float:
        return erle_db(scene.mic[mask], out[mask])

    return Result(
        cfg=name,
        delay_ms=scene.delay_ms,
        erle_early=erle(fo & (idx < 2 * SR)),
        erle_after2=erle(fo & (idx >= 2 * SR)),
        erle_last5=erle(fo & (idx >= scene.echo_end - 5 * SR)),
        dt=match(out, ref, scene.dt, SR),
        dt_raw=match(out, scene.clean, scene.dt, SR),
        near=match(out, ref, scene.near_only, SR),
        near_raw=match(out, scene.clean, scene.near_only, SR),
    )


def f(x: float, spec: str = ".0f") -> str:
    return "n/a" if np.isnan(x) else format(x, spec)


def cell(x: Match, raw: Match) -> str:
    return f"{x.corr:.3f} / {raw.corr:.3f} / {x.lag_ms:.1f} / {x.level_db:+.1f}"


def table(results: Sequence[Result]) -> str:
    cols = [
        "config",
        "delay ms",
        "ERLE dB: 0-2 s / >2 s / last 5 s",
        "double talk: corr / raw corr / lag ms / level dB",
        "near only: corr / raw corr / lag ms / level dB",
        "us per 10 ms: median / p90 / mean",
        "us median: far playing / far silent after",
        "% core: median / mean",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = [
            r.cfg,
            str(r.delay_ms),
            f"{r.erle_early:.1f} / {r.erle_after2:.1f} / {r.erle_last5:.1f}",
            cell(r.dt, r.dt_raw),
            cell(r.near, r.near_raw),
            f"{f(r.med('median'))} / {f(r.med('p90'))} / {f(r.med('mean'))}",
            f"{f(r.med('playing'))} / {f(r.med('silent'))}",
            f"{f(r.med('median') / 100, '.2f')} / {f(r.med('mean') / 100, '.2f')}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_us(make: Callable[[], object], n: int = 20) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        make()
        ts.append((time.perf_counter() - t) * 1e6)
    return statistics.median(ts)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--repeats", type=int, default=7, help="runs per config and delay for CPU timing")
    ap.add_argument("--delays", default="20,60,120", help="echo delays in ms, comma separated")
    ap.add_argument("--noise-dbfs", type=float, default=NOISE_DBFS, help="mic noise level")
    args = ap.parse_args(argv)
    delays = [int(x) for x in args.delays.split(",")]

    t0 = time.perf_counter()
    src = make_sources()
    scenes = {d: make_scene(src, d, args.noise_dbfs) for d in delays}
    s0 = scenes[delays[0]]
    clean16 = np.clip(np.round(s0.clean), -32768, 32767).astype(np.int16)
    refs = {fam: hpf_only(fam, clean16) for fam in ("pywebrtc", "livekit")}
    print("# AEC comparison: pywebrtc-audio vs livekit\n")
    print(
        f"pywebrtc-audio {version('pywebrtc-audio')}, livekit {version('livekit')}, numpy {np.__version__}, "
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    print(
        f"Scene: {len(s0.mic) / SR:.1f} s at {SR} Hz mono int16; far end {len(src.far) / SR:.1f} s of espeak-ng "
        f"en-us at {FAR_DBFS:.0f} dBFS active; echo {ECHO_REL_DB:+.0f} dB via RIR (RT60 {RT60_S} s, DRR +3 dB); "
        f"near end en-gb-x-rp+f3 at {NEAR_DBFS:.0f} dBFS (0 dB signal-to-echo), double talk "
        f"{s0.dt[0] / SR:.1f}-{s0.dt[1] / SR:.1f} s, "
        f"near only {s0.near_only[0] / SR:.1f}-{s0.near_only[1] / SR:.1f} s; "
        f"mic noise {args.noise_dbfs:.0f} dBFS. ERLE ceiling set by the mic noise (mic/noise power over "
        f"far-only >2 s): " + ", ".join(f"{d} ms {scenes[d].echo_ceiling_db:.1f} dB" for d in delays) + ".\n",
    )
    sys.stdout.flush()

    results: dict[tuple[str, int], Result] = {}
    for d in delays:  # baseline: the raw mic
        results[("mic (no AEC)", d)] = quality("mic (no AEC)", scenes[d], scenes[d].mic, clean16)
    first: dict[tuple[str, int], I16] = {}  # first output per (config, delay): are repeats identical?
    for rep in range(args.repeats):
        for d in delays:
            sc = scenes[d]
            for cfg in CONFIGS:  # interleaved: machine noise hits every config alike
                r = run(cfg, sc)
                key = (cfg.name, d)
                if rep == 0:
                    first[key] = r.out
                    results[key] = quality(cfg.name, sc, r.out, refs[cfg.family])
                elif not np.array_equal(first[key], r.out):
                    results[key].deterministic = False
                res = results[key]
                t = r.us_per_frame
                res.add("median", float(np.median(t)))
                res.add("p90", float(np.percentile(t, 90)))
                res.add("mean", float(np.mean(t)))
                res.add("playing", float(np.median(t[r.starts < sc.echo_end])))
                res.add("silent", float(np.median(t[r.starts >= sc.echo_end])))
                res.add("cpu", r.cpu_us_per_frame)
        print(f"repeat {rep + 1}/{args.repeats} done, {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    order = ["mic (no AEC)"] + [c.name for c in CONFIGS]
    print(table([results[(name, d)] for d in delays for name in order]))
    print()
    print(
        "ERLE: 10*log10(mic power / output power) over far-only samples (speaker talking, user silent). "
        "corr: normalised correlation of the output, at the best lag, with the clean near speech passed through "
        "the package's own high-pass filter (what a perfect canceller would output); raw corr: the same against "
        "the clean near speech itself (includes the filter's phase shift). lag > 0: the output is late. level: "
        "output/reference RMS over the span (in double talk it includes residual echo). Timing: wall-clock us per "
        "10 ms of audio around the per-frame calls (livekit: including the copies into and out of its AudioFrames), "
        f"each statistic the median over {args.repeats} interleaved runs; 'far silent after' = the frames after "
        "the echo has ended (far end all zeros, near-only speech); '% core' = us / 10 000 us."
    )
    ratio = [res.med("cpu") / res.med("mean") for res in results.values() if res.runs and res.med("mean") > 0]
    print(
        f"\nprocess_time (all threads, Python loop included) / mean wall time of the calls: "
        f"{min(ratio):.2f}-{max(ratio):.2f} (about 1: no work hidden in other threads)."
    )
    nondet = sorted({f"{k[0]} @ {k[1]} ms" for k, v in results.items() if not v.deterministic})
    print(f"Outputs identical across repeats: {'yes' if not nondet else 'no for ' + '; '.join(nondet)}.")
    ec = EchoCanceller(sample_rate=SR)
    print(
        f"Construction, median of 20: pywebrtc EchoCanceller {build_us(lambda: EchoCanceller(sample_rate=SR)):.0f} "
        f"us, EchoCanceller.reset() {build_us(ec.reset):.0f} us, livekit AudioProcessingModule "
        f"{build_us(lambda: rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)):.0f} us "
        f"(it has no reset()). Total run time {time.perf_counter() - t0:.0f} s."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
