"""Figures, tables and the generated sections of the results file."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .conversation import RunResult
from .env import BenchError
from .signals import MARKER_EVERY, Track, percentile

TARGETS = {
    "mic_p99": 25.0,  # ms, markers inside speech
    "barge_p99": 15.0,  # ms
    "playback_p50": 10.0,  # ms
    "cpu_ratio": 1.0,  # daemon / SDK, in conversation
    "idle_cpu_ratio": 0.5,  # daemon / SDK, nobody talking to the device
    "rss_ratio": 0.8,  # daemon / SDK, peak
    "ready_s": 1.5,
}


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


def machine_line(args: argparse.Namespace) -> str:
    m, v = machine_info(), versions()
    return ((f"Everything the bench started ran at nice {args.nice}. " if getattr(args, "nice", 0) else "") +
            f"Machine: {m.get('nproc')} CPUs ({m.get('cpu', '?')}), {m.get('ram', '?')} RAM, Linux {m.get('kernel')} "
            f"{m.get('machine')}. Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".")


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


def _at_most(value: float | None, limit: float | None) -> bool | None:
    return None if value is None or limit is None else value <= limit


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
    out.append(Figure("mic-to-wire in speech p50", percentile(mic_d, 50), percentile(mic_s, 50), "ms"))
    out.append(Figure("mic-to-wire in speech p99", p99, percentile(mic_s, 99), "ms", "<= 25",
                      _at_most(p99, TARGETS["mic_p99"])))
    on_d, on_s = pool(d, "speech_onset"), pool(s, "speech_onset")
    out.append(Figure("speech onset to wire p50", percentile(on_d, 50), percentile(on_s, 50), "ms"))
    out.append(Figure("speech onset to wire max", max(on_d) if on_d else None, max(on_s) if on_s else None, "ms"))
    sil_d, sil_s = pool(d, "mic_to_wire_silence"), pool(s, "mic_to_wire_silence")
    out.append(Figure("mic-to-wire in silence p50", percentile(sil_d, 50), percentile(sil_s, 50), "ms"))
    pb_d, pb_s = pool(d, "playback_start"), pool(s, "playback_start")
    pb50 = percentile(pb_d, 50)
    out.append(Figure("playback start p50", pb50, percentile(pb_s, 50), "ms", "<= 10",
                      _at_most(pb50, TARGETS["playback_p50"])))
    out.append(Figure("playback start p99", percentile(pb_d, 99), percentile(pb_s, 99), "ms"))
    bi_d, bi_s = pool(d, "barge_in"), pool(s, "barge_in")
    b99 = percentile(bi_d, 99)
    out.append(Figure("barge-in p50", percentile(bi_d, 50), percentile(bi_s, 50), "ms"))
    out.append(Figure("barge-in p99", b99, percentile(bi_s, 99), "ms", "<= 15", _at_most(b99, TARGETS["barge_p99"])))
    cd, cs = med(d, "cpu_per_min"), med(s, "cpu_per_min")
    out.append(Figure("CPU per minute of conversation, median", cd, cs, "s", "<= 1.0x SDK",
                      _at_most(cd, TARGETS["cpu_ratio"] * cs if cs else None)))
    rd, rs_ = mx(d, "peak_rss_mb"), mx(s, "peak_rss_mb")
    out.append(Figure("peak RSS, max of runs", rd, rs_, "MB", "<= 0.8x SDK",
                      _at_most(rd, TARGETS["rss_ratio"] * rs_ if rs_ else None)))
    td = med(d, "ready_s")
    out.append(Figure("time to ready, median", td, med(s, "ready_s"), "s", "<= 1.5", _at_most(td, TARGETS["ready_s"])))
    gaps = sum(r.replies_stretched for r in d)
    out.append(Figure("whole replies with a gap on the speaker", float(gaps),
                      float(sum(r.replies_stretched for r in s)) if s else None, "count", "0",
                      gaps == 0 if d else None))
    slips = sum(r.mic_slips for r in d)
    out.append(Figure("mic frames lost on the way to the agent (marker slips)", float(slips),
                      float(sum(r.mic_slips for r in s)) if s else None, "count", "0", slips == 0 if d else None))
    own_under = sum(r.counters.get("playback_underruns", 0) for r in d)
    out.append(Figure("playback underruns, the daemon's counter", own_under if d else None, None, "count", "0",
                      own_under == 0 if d else None))
    out.append(Figure("capture overflows, the daemon's counter",
                      sum(r.counters.get("capture_overflows", 0) for r in d) if d else None, None, "count", "0",
                      sum(r.counters.get("capture_overflows", 0) for r in d) == 0 if d else None))
    return out


def table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


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


def now_text() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def compare_section(runs: list[RunResult], track: Track, args: argparse.Namespace, elapsed: float,
                    failures: list[str], floors: dict[str, dict[str, float]], load: str) -> str:
    figs = figures(runs)
    d = [r for r in runs if r.client == "pi-agent"]
    s = [r for r in runs if r.client == "SDK"]
    lines = [
        f"Run of {now_text()}: `{shown_args(args.argv)}`, {len(d)} + {len(s)} runs alternating "
        f"(pi-agent first), {elapsed / 60:.1f} min in all{load}.",
        "",
        machine_line(args),
        "",
        f"Script: {len(track.utterances) - track.barge_ins} user turns and {track.barge_ins} barge-in(s) of espeak-ng "
        f"speech, {track.seconds:.0f} s per run, a marker about every {MARKER_EVERY:g} s; the agent replies with "
        f"its 4.7 s clip (pcm_16000) to every turn.",
        "",
        table([f.cells() for f in figs], ["figure", "pi-agent", "SDK", "ratio", "target (pi-agent)", "verdict"]),
        "",
        "Samples: mic-to-wire in speech "
        f"{sum(len(r.mic_to_wire) for r in d)} / {sum(len(r.mic_to_wire) for r in s)} markers (and "
        f"{sum(len(r.mic_to_wire_silence) for r in d)} / {sum(len(r.mic_to_wire_silence) for r in s)} in silence), "
        f"speech onsets {sum(len(r.speech_onset) for r in d)} / {sum(len(r.speech_onset) for r in s)}, playback start "
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
            ", ".join(f"{1000 * v:.0f}" for v in r.speech_onset) or "-",
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
               ["other threads (pi-agent: the mic reader, the speaker callback; SDK: its threads)",
                thread_median(d, "other"), thread_median(s, "other")]],
              ["thread", "pi-agent", "SDK"]),
        "",
    ]
    fd = floors.get("daemon")
    if fd:
        lines += [
            f"The audio floor: a process that only keeps the daemon's conversation streams open (its microphone "
            f"read a 20 ms frame at a time, a {fd['period_ms']:.0f} ms speaker callback playing silence at 44.1 kHz "
            f"stereo; nothing else) uses **{fd['cpu_per_min']:.2f} s CPU per minute** and "
            f"{fd['peak_rss_mb']:.1f} MB peak RSS on this card.",
            "",
        ]
    lines += [
        "Per run (ms unless said):",
        "",
        table(per_run, ["run", "mic p50 (speech)", "mic max (speech)", "speech onsets", "playback p50",
                        "barge-ins", "CPU s/min", "peak RSS MB", "ready s", "replies with a gap",
                        "own underruns / overflows", "mic slips", "other load", "problems"]),
        "",
        "\"own underruns / overflows\" are the daemon's counters (`/metrics`); the SDK has none. "
        "\"replies with a gap\" and \"mic slips\" are seen from outside, for both: a whole reply "
        "that lasted longer on the speaker than the clip, and marker spacing that differs "
        "between the mic and what the agent received (frames lost or duplicated). \"other load\" is the share of "
        "the machine's CPUs used meanwhile by processes the bench did not start (not the client, the bench, the "
        "fake agent, PulseAudio or the bench's own busy loops).",
    ]
    busy = [r for r in runs if r.other_load > 0.25]
    if busy:
        lines += ["", f"**Warning:** {len(busy)} of {len(runs)} runs shared the machine with other work "
                  f"(other load up to {100 * max(r.other_load for r in busy):.0f}% of all CPUs): the latencies "
                  "are skewed; compare ratios within this run, or run again on a quiet machine."]
    if failures:
        lines += ["", "Failed runs (left out): " + "; ".join(failures) + "."]
    return "\n".join(lines)


SECTION = "<!-- bench:{name}:{edge} (regenerated by scripts/bench.py; edit outside) -->"
SECTIONS = ("compare", "idle", "soak", "profile")

TEMPLATE = """# Benchmarks: pi-agent against the official ElevenLabs SDK

Measured by `scripts/bench.py` on the PulseAudio virtual sound card; the parts between
the `bench:` markers are rewritten by each run, the rest is kept.

## Results

{compare}

## Idle

{idle}

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
                                  for n in SECTIONS})
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
