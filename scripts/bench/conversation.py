"""One scripted conversation through one client process, and what it measured."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .card import SoundCard, Timeline
from .clients import Client, DaemonClient, FloorClient, SdkClient
from .env import BenchError, log
from .procs import FakeAgent, cpu_clock, proc_stat, stop_process, thread_cpu, thread_groups
from .signals import (
    MIC_RATE,
    SILENT,
    SPK_RATE,
    Track,
    build_track,
    chirp,
    fft_correlate,
    ncc_peak,
    resample,
    speech_clips,
)

ONSET = 0.1  # s of an utterance's start looked for in what the agent received


@dataclass
class RunResult:
    client: str
    index: int
    mic_to_wire: list[float] = field(default_factory=list)  # s, markers inside speech
    mic_to_wire_silence: list[float] = field(default_factory=list)  # s, markers in the silence between
    speech_onset: list[float] = field(default_factory=list)  # s, an utterance's first sample to the wire
    playback_start: list[float] = field(default_factory=list)
    barge_in: list[float] = field(default_factory=list)
    barge_ambiguous: int = 0  # cut inside a natural pause of the reply: not measurable
    interruptions: int = 0
    turns: int = 0
    markers_missing: int = 0
    mic_slips: int = 0  # marker spacing in what the agent got differs from the track: frames lost
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
        return (f"{self.client} run {self.index}: mic-to-wire p50 {med(self.mic_to_wire)} ms in speech "
                f"(n={len(self.mic_to_wire)}), {med(self.mic_to_wire_silence)} ms in silence, speech onset "
                f"{med(self.speech_onset)} ms, playback start p50 {med(self.playback_start)} ms, "
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


def _place(track: Track, found: dict[int, int], position: int) -> int | None:
    """Where track sample ``position`` is in a recording, from the nearest marker found before it."""
    before = [k for k in found if track.markers[k] <= position]
    if not before:
        return None
    k = max(before, key=lambda j: track.markers[j])
    return found[k] + (position - track.markers[k])


def analyse(run: RunResult, track: Track, mic: np.ndarray, mic_tl: Timeline, spk: np.ndarray,
            spk_tl: Timeline, received: dict[str, Any], sent: dict[str, Any], reply: np.ndarray) -> None:
    """Fill ``run``'s latency figures from the recordings and the fake agent's records."""
    # --- mic to wire
    got = np.frombuffer(base64.b64decode(received["audio_base64"]), dtype="<i2")
    chunk_times = np.array(received["audio_chunk_times"])
    chunk_ends = np.cumsum(np.array(received["audio_chunk_bytes"]) // 2)
    in_mic = locate_markers(mic, track)
    in_got = locate_markers(got, track)

    def arrival(position: int) -> float | None:
        j = int(np.searchsorted(chunk_ends, position, side="right"))
        return float(chunk_times[j]) if j < len(chunk_times) else None

    for k in range(len(track.markers)):
        at = arrival(in_got[k]) if k in in_mic and k in in_got else None
        if at is None:
            run.markers_missing += 1
            continue
        latency = at - mic_tl.time_of(in_mic[k])
        (run.mic_to_wire if track.inside[k] else run.mic_to_wire_silence).append(latency)
    common = sorted(set(in_mic) & set(in_got))
    for a, b in itertools.pairwise(common):
        if abs((in_got[b] - in_got[a]) - (in_mic[b] - in_mic[a])) > 2:
            run.mic_slips += 1
    # --- speech onset to wire: an utterance's first sample, found in both by its first ONSET seconds
    for start, _end, _kind in track.utterances:
        head = track.samples[start : start + int(ONSET * MIC_RATE)].astype(np.float64)
        places = []
        for x, found in ((mic, in_mic), (got, in_got)):
            guess = _place(track, found, start)
            if guess is None:
                break
            at, score = ncc_peak(x, head, guess - 320, guess + 320)
            if at < 0 or score < 0.9:
                break
            places.append(at)
        if len(places) == 2:
            sent_at = arrival(places[1])
            if sent_at is not None:
                run.speech_onset.append(sent_at - mic_tl.time_of(places[0]))

    # --- speaker: reply onsets, barge-in silences, whole replies
    first_audio: dict[int, float] = {}
    interrupted_at: list[float] = []
    for m in sent["messages"]:
        msg = m.get("message") or {}
        if m["kind"] == "audio":
            eid = msg.get("audio_event", {}).get("event_id")
            if isinstance(eid, int) and eid not in first_audio:
                first_audio[eid] = m["t"]
        elif m["kind"] == "interruption":
            interrupted_at.append(m["t"])
    # An interruption cuts the reply under way when it is sent: the last one begun before it. (Its
    # own event id is newer than that reply's, as the service numbers it: docs/service-behaviour.md.)
    interrupts: dict[int, float] = {}
    for t_int in interrupted_at:
        begun = [eid for eid, t in first_audio.items() if t <= t_int]
        if begun:
            interrupts[max(begun, key=first_audio.__getitem__)] = t_int
    run.turns = len(first_audio)
    run.interruptions = len(interrupted_at)
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
        self.fake: FakeAgent | None = None
        self.track: Track | None = None
        self.track_path = workdir / "track.raw"

    def __enter__(self) -> Bench:
        log(f"work directory {self.workdir}")
        log("starting the PulseAudio virtual sound card")
        self.card.start()
        self.fake = FakeAgent(self.workdir, self.fake_args)
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

    def helper_pids(self) -> list[int]:
        """This process and the helpers it started (fake agent, PulseAudio, keepers, feeders)."""
        va = self.card.va
        pids = [os.getpid()]
        for proc in [self.fake.proc if self.fake else None, va.server.proc, *getattr(va, "_keepers", [])]:
            if proc is not None and proc.poll() is None:
                pids.append(proc.pid)
        return pids

    def helpers_cpu(self, extra: list[int] | None = None) -> float:
        """CPU seconds so far of this process and the helpers it started."""
        total = 0.0
        for pid in [*self.helper_pids(), *(extra or [])]:
            with contextlib.suppress(OSError):
                total += proc_stat(pid)["cpu"]
        return total

    def floor(self, seconds: float, period_ms: int) -> dict[str, float]:
        """CPU per minute and peak RSS of a process that only keeps the daemon's conversation streams open."""
        client = FloorClient(self.workdir, self.card.child_env(), "floor", period_ms)
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

    def run(self, kind: str, index: int, during: Callable[[Client, float], None] | None = None,
            load_pids: Callable[[], list[int]] | None = None) -> RunResult:
        """One scripted conversation through one client process; ``during(client, seconds)``
        is called once the track starts (the profiler hooks in there); ``load_pids`` names
        processes the bench started to load the machine (counted as load, not as other load)."""
        assert self.fake is not None and self.track is not None
        known = len(self.fake.conversations())
        mic_rec, spk_rec = self.card.recorders()
        client = self.client(kind, f"{kind}-{index}")
        run = RunResult(client.kind, index)
        extra = load_pids() if load_pids else []
        try:
            time.sleep(1.5)  # past the recorders' warm-up (see Timeline)
            client.start()
            conv = self.wait_ready(client, known)
            time.sleep(0.5)
            before = proc_stat(client.pid)
            threads0 = thread_cpu(client.pid)
            helpers0 = self.helpers_cpu(extra)
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
            helpers1 = self.helpers_cpu(extra)
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
