"""The echo rig of issue 21 in process, faster than real time, through the daemon's own canceller.

A scene is two replies of the agent on a speaker whose sound comes back into the microphone
``delay_ms`` later at ``gain`` (linear; clipped at full scale like a real converter), with the
user speaking 1.5 s into the second reply. What runs is the code the daemon runs, on a clock of
our own instead of the sound card's:

- the speaker: a 48 kHz stereo stream of 10 ms periods whose starts and stops are decided by
  the daemon's :class:`~pi_agent.audio.standby.Standby`. Under aec (``Scene.keep_running``, as the
  daemon does since issue 21) it runs from the start and a reply queues behind the silence it
  holds; with ``keep_running=False`` (as before) a reply from standby starts the stream, one that
  comes while it runs holding only silence restarts it, ``standby_after`` later it stops, and
  :meth:`FarEnd.stopped` is told. Every period goes to :meth:`FarEnd.played` from
  its callback with the moment PortAudio says it will be heard. That moment is off from the
  truth by an error of its own for every stream (measured on the virtual card: the echo came
  60.9-63.9 ms after the reference for a 60 ms loopback, from one reply to the next), and the
  first callbacks of a stream come at once (the device's buffer is filled);
- the microphone: 20 ms frames that arrive 10 ms after they end plus a random wait, stamped by
  the daemon's :class:`~pi_agent.audio.echo.FrameClock` and pushed into the canceller in the
  order of the two streams' callbacks, as the event loop would get them;
- the gate: the daemon's :class:`~pi_agent.audio.gate.CaptureGate` in ``vad`` mode with
  webrtcvad, told that the speaker plays as the controller tells it, counts false user turns;
  when it hears a voice over the reply it lowers the reply by ``Scene.duck_db`` from the next
  period on, as the daemon does (``audio.duck_db``), and counts the ducks with no user speaking.

:func:`run_scene` returns the figures of the issue: echo attenuation over the first reply (the
canceller fresh, as a kiosk's first reply) and the second, each whole and over its first 300
ms, and the user's words over the second reply as the canceller hands them on (energy and
correlation after alignment, :func:`~pi_agent.audio.echo_analysis.match`).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pi_agent.audio import FRAME_SAMPLES, MIC_RATE
from pi_agent.audio.echo import EchoCanceller, FarEnd, FrameClock
from pi_agent.audio.echo_analysis import match
from pi_agent.audio.formats import resample
from pi_agent.audio.gate import CaptureGate
from pi_agent.audio.standby import Move, Standby
from pi_agent.config import AudioSettings

SPK_RATE = 48_000
PERIOD = SPK_RATE // 100  # the speaker's 10 ms periods
OUT_LATENCY = 0.03  # s PortAudio reports for the speaker's stream
CLOCK_ERROR = 0.0015  # s: each stream's reported moment of playing is off by this, the other way than the last's
MIC_LATENCY = 0.01  # s after its end a frame arrives at best
MIC_JITTER = 0.003  # s: mean of the exponential wait on top (a busy loop)
NOISE_DBFS = -75.0  # the microphone's own noise
ECHO_TAIL = 0.3  # s the controller counts the speaker as playing after it stops (audio.echo_tail)
SETTLE = 2.0  # s before the first reply
GAP = 2.5  # s between the replies: longer than standby_after, so that the stream stops
TALK_AT = 1.5  # s into the second reply the user speaks
FIRST = 0.3  # s: the start of a reply


@dataclass
class Scene:
    delay_ms: int
    gain: float
    start: str  # "standby": the speaker stops between replies; "running": it never does
    seed: int = 0
    keep_running: bool = True  # the speaker's Standby under aec (False: as before issue 21)
    duck_db: float = field(default_factory=lambda: AudioSettings().duck_db)  # 0: the reply is never lowered

    @property
    def standby_after(self) -> float:
        return 1.0 if self.start == "standby" else 3600.0

    def __str__(self) -> str:
        return f"{self.delay_ms} ms x{self.gain:g} {self.start}"


@dataclass
class Figures:
    attenuation_db: list[float]  # over each reply while only the agent speaks
    first_db: list[float]  # over each reply's first 300 ms
    false_turns: int
    dt_energy: float  # the user's words as the canceller hands them on, over them at the mic (power ratio)
    dt_corr: float
    dt_lag_ms: float
    clipped: float  # share of the echo's samples at full scale
    starts: int = 0  # speaker stream starts
    false_ducks: int = 0  # times the reply was lowered with no user speaking
    extra: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        replies = ", ".join(f"{a:.1f}" for a in self.attenuation_db)
        return (f"attenuation {min(self.attenuation_db):.1f} dB (replies {replies}), "
                f"first 300 ms {min(self.first_db):.1f} dB ({', '.join(f'{a:.1f}' for a in self.first_db)}), "
                f"false turns {self.false_turns}, false ducks {self.false_ducks}, "
                f"double talk energy {self.dt_energy * 100:.0f}% corr {self.dt_corr:.2f} at {self.dt_lag_ms:.0f} ms, "
                f"clipped {self.clipped * 100:.1f}%")


def _db(num: np.ndarray, den: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(num.astype(np.float64) ** 2) / max(np.sum(den.astype(np.float64) ** 2), 1e-9)))


def run_scene(scene: Scene, reply: np.ndarray, words: np.ndarray,
              make: Callable[[FarEnd], EchoCanceller] | None = None) -> Figures:
    """Play ``reply`` (16 kHz mono int16) twice as the daemon would, the user saying ``words`` over
    the second; the canceller is ``make(far)`` (default: the daemon's, ``EchoCanceller(far)``)."""
    rng = np.random.default_rng(scene.seed)
    t0 = 1000.0  # the monotonic clock at sample 0 of the timeline
    reply_s = len(reply) / MIC_RATE
    total = SETTLE + 2 * reply_s + GAP + 2.0
    n = int(total * MIC_RATE)
    reply48 = resample(reply, MIC_RATE, SPK_RATE)
    far = FarEnd()
    aec = make(far) if make is not None else EchoCanceller(far)
    clock = FrameClock()
    standby = Standby(scene.standby_after, probe_every=0.0, keep_running=scene.keep_running)

    played = np.zeros(n + MIC_RATE, dtype=np.float64)  # what the speaker played, at 16 kHz, when it was heard
    events: list[tuple[float, int, str, int]] = []  # (time, order, what, arg)
    order = 0

    def at(t: float, what: str, arg: int = 0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (t, order, what, arg))

    queued_at = [t0 + SETTLE, t0 + SETTLE + reply_s + GAP]
    for k, q in enumerate(queued_at):
        at(q, "reply", k)
    spans: list[tuple[int, int]] = []  # when each reply was heard (16 kHz samples of the timeline)
    d = round(scene.delay_ms * MIC_RATE / 1000)
    user = np.zeros(n + MIC_RATE)
    noise = rng.normal(0, 32768 * 10 ** (NOISE_DBFS / 20), n)
    frames = n // FRAME_SAMPLES
    for i in range(frames):
        end = t0 + (i + 1) * FRAME_SAMPLES / MIC_RATE
        at(end + MIC_LATENCY + float(rng.exponential(MIC_JITTER)), "mic", i)
    # The stream as it opened: running, holding nothing; standby_after later it may stop.
    stream: dict[str, Any] = {"id": 0, "k": 0, "t0": t0, "error": CLOCK_ERROR, "queued": None, "from": None}
    standby.opened(t0)
    at(t0, "cb", 0)
    at(t0 + scene.standby_after, "due")
    starts = 0
    speaker_until = 0.0  # when what the speaker holds has been heard (the controller's audible_until)

    def start_stream(now: float) -> None:
        stream["id"] += 1
        stream.update(k=0, t0=now + 0.005, error=-stream["error"])
        at(now + 0.005, "cb", stream["id"])

    def stop_stream(now: float) -> None:
        stream["id"] += 1  # the callbacks of the old stream stop coming
        far.stopped(now)

    mic = np.zeros(n, dtype="<i2")
    out_frames: list[bytes] = []
    pushed = 0
    gate = CaptureGate("vad", _vad(), duck=scene.duck_db > 0)
    false_turns = false_ducks = 0
    ducked = 1.0  # the reply's gain: lowered while a voice is heard over it

    while events:
        now, _, what, arg = heapq.heappop(events)
        if what == "reply":
            move = standby.sound(now, speaker_until)
            if move is Move.RESTART:
                stop_stream(now)
            if move in (Move.START, Move.RESTART):
                starts += 1
                start_stream(now)
            elif move is not None:
                raise AssertionError(f"a reply asked the stream to {move}")
            stream.update({"queued": now, "from": None})
            speaker_until = max(now, stream["t0"]) + OUT_LATENCY + reply_s
            at(speaker_until + scene.standby_after + 0.001, "due")
        elif what == "due":
            move = standby.due(now, speaker_until, False)
            if move is Move.STOP:
                stop_stream(now)
        elif what == "cb":
            if arg != stream["id"]:
                continue
            k = stream["k"]
            stream["k"] = k + 1
            heard = stream["t0"] + OUT_LATENCY + k * PERIOD / SPK_RATE  # what PortAudio says
            chunk = np.zeros(PERIOD, dtype=np.int16)
            queued = stream["queued"]
            if queued is not None and stream["from"] is None and heard >= queued + OUT_LATENCY - 0.005:
                stream["from"] = k  # the reply's first period: after what the device held
                first = round((heard + stream["error"] - t0) * MIC_RATE)
                spans.append((first, first + len(reply)))
                if len(spans) == 2:  # the user speaks over the second reply
                    talk = first + d + int(TALK_AT * MIC_RATE)
                    user[talk : talk + len(words)] = words
            if stream["from"] is not None:
                a = (k - stream["from"]) * PERIOD
                if a < len(reply48):
                    part = reply48[a : a + PERIOD]
                    chunk[: len(part)] = np.round(part * ducked)
                    i = spans[-1][0] + a // 3
                    played[i : i + PERIOD // 3] = reply[a // 3 : a // 3 + PERIOD // 3] * ducked
                else:
                    stream.update({"queued": None, "from": None})
            far.played(np.repeat(chunk[:, None], 2, axis=1), SPK_RATE, heard)
            if now < t0 + total:
                at(max(now + 0.0005, heard - OUT_LATENCY + PERIOD / SPK_RATE), "cb", arg)
        elif what == "mic":
            i = arg * FRAME_SAMPLES
            echo = scene.gain * played[i - d : i - d + FRAME_SAMPLES] if i >= d else np.zeros(FRAME_SAMPLES)
            samples = np.round(echo + user[i : i + FRAME_SAMPLES] + noise[i : i + FRAME_SAMPLES])
            mic[i : i + FRAME_SAMPLES] = np.clip(samples, -32768, 32767)
            frame = mic[i : i + FRAME_SAMPLES].tobytes()
            stamped = clock.stamp(now, hold=aec.cancelling(now))
            for cleaned in aec.push(frame, stamped):
                out_frames.append(cleaned)
                o = gate.process(cleaned, now, in_turn=False, speaker_until=speaker_until + ECHO_TAIL)
                j = pushed * FRAME_SAMPLES
                pushed += 1
                nobody = not np.any(user[max(0, j - MIC_RATE) : j + FRAME_SAMPLES])
                if o.started and nobody:
                    false_turns += 1
                if o.duck is not None:
                    ducked = 10 ** (-scene.duck_db / 20) if o.duck else 1.0
                    false_ducks += o.duck and nobody
                if o.started:
                    gate.reset()
    out = np.frombuffer(b"".join(out_frames), dtype="<i2")
    atten, first = [], []
    talk = spans[1][0] + d + int(TALK_AT * MIC_RATE)
    for k, (a, b) in enumerate(spans):
        a, b = a + d, min(b + d, len(out))
        only = b if k == 0 else talk
        atten.append(_db(mic[a:only], out[a:only]))
        first.append(_db(mic[a : a + int(FIRST * MIC_RATE)], out[a : a + int(FIRST * MIC_RATE)]))
    said = user[talk : talk + len(words)]
    m = match(out[: talk + len(words) + MIC_RATE].astype(np.float64), user[: talk + len(words) + MIC_RATE],
              (talk, talk + len(words)), MIC_RATE, max_lag_ms=60)
    loud = np.abs(mic[spans[0][0] + d : spans[0][1] + d].astype(np.int32))
    assert np.any(said)
    return Figures(atten, first, false_turns, 10 ** (m.level_db / 10), m.corr, m.lag_ms,
                   float(np.mean(loud >= 32767)) if len(loud) else 0.0, starts, false_ducks)


def _vad() -> Callable[[bytes], bool]:
    from pi_agent.config import CaptureSettings
    from pi_agent.parts import make_vad

    return make_vad(CaptureSettings().vad_aggressiveness)


CELLS = [Scene(d, g, s) for s in ("standby", "running") for d in (20, 60, 120) for g in (0.25, 1.0, 2.0)]

__all__ = ["CELLS", "Figures", "Scene", "run_scene"]
