"""What the bench plays into the virtual microphone, and how it finds it again."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .env import ROOT, log

MIC_RATE = 16_000
SPK_RATE = 48_000  # the speaker sink's rate; its monitor is recorded at this rate, mono

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

# People talking in the room, not to the device (the idle command): speech at -35 dBFS peak,
# which webrtcvad hears as speech (about 9 frames in 10) and the fake agent's speech gate
# (-40 dBFS blocks) never does, so that no client gets a reply: what each costs is what
# listening to a room costs.
BACKGROUND_PEAK_DB = -35.0

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


@dataclass
class Track:
    """What the bench plays into the virtual mic in one run (16 kHz mono int16)."""

    samples: np.ndarray
    markers: list[int]  # onset sample of every marker
    inside: list[bool]  # ... and whether it falls inside an utterance (loud) or in silence (quiet)
    utterances: list[tuple[int, int, str]]  # start, end, "turn" | "barge"

    @property
    def seconds(self) -> float:
        return len(self.samples) / MIC_RATE

    @property
    def barge_ins(self) -> int:
        return sum(1 for *_, kind in self.utterances if kind == "barge")


def speech_clips(workdir: Path, speed: int = 165, voice: str | None = None) -> list[np.ndarray]:
    """The utterances of :data:`TEXTS` as float 16 kHz mono, trimmed, peak 0.5: espeak-ng
    speech, or cuts of the shipped question.wav when espeak-ng is missing."""
    from pi_agent.audio.files import read_wav

    clips: list[np.ndarray] = []
    if shutil.which("espeak-ng") is None:
        log("espeak-ng not found: using the shipped question.wav for every utterance")
        frames, rate = read_wav(ROOT / "pi_agent" / "assets" / "question.wav")
        base = resample(frames[:, 0] / 32768.0, rate, MIC_RATE)
        clips = [base.copy() for _ in TEXTS]
    else:
        for i, text in enumerate(TEXTS):
            path = workdir / f"utterance{i}-{speed}-{voice or 'default'}.wav"
            argv = ["espeak-ng", "-s", str(speed), *(["-v", voice] if voice else []), "-w", str(path), text]
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
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
    inside_flags: list[bool] = []
    rng = np.random.default_rng(20240601)
    at = int(0.3 * MIC_RATE)
    while at + MIC_RATE // 20 < len(x) - MIC_RATE // 2:
        mark = chirp(len(markers))
        inside = any(s - len(mark) < at < e for s, e, _ in utterances)
        x[at : at + len(mark)] += mark * (MARKER_LOUD if inside else MARKER_QUIET)
        markers.append(at)
        inside_flags.append(inside)
        at += int(MARKER_EVERY * MIC_RATE * rng.uniform(0.8, 1.2))
    samples = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    return Track(samples, markers, inside_flags, utterances)


def background_speech(workdir: Path, seconds: float) -> np.ndarray:
    """People talking in the room, not to the device: :data:`TEXTS` in another voice and pace,
    1-3 s apart, at :data:`BACKGROUND_PEAK_DB`, for ``seconds`` (16 kHz mono int16)."""
    clips = speech_clips(workdir, speed=150, voice="en-gb")
    rng = np.random.default_rng(7)
    pieces: list[np.ndarray] = []
    total = 0
    k = 0
    while total < seconds * MIC_RATE:
        gap = np.zeros(int(rng.uniform(1.0, 3.0) * MIC_RATE))
        clip = clips[k % len(clips)] / 0.5  # peak 1.0
        pieces += [gap, clip]
        total += len(gap) + len(clip)
        k += 1
    x = np.concatenate(pieces)[: int(seconds * MIC_RATE)] * 10 ** (BACKGROUND_PEAK_DB / 20)
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
