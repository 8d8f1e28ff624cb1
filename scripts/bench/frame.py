"""``scripts/bench.py frame``: the CPU each mic frame and each agent audio chunk costs, in-process.

The daemon's hot path, built as the daemon builds it (the capture gate with webrtcvad, the
controller, the engine, the session, the link), without the sound card: a thread stands in
for the microphone's reader and hands 20 ms frames (16 kHz mono, a room's low noise) to
:meth:`PyAudioInput._deliver` at a steady pace, as the reader does after each read, and a
thread stands in for the speaker's callback and pulls periods from the real
:class:`~pi_agent.audio.buffer.PlaybackBuffer`. The conversation is a real WebSocket on
loopback to ``pi-agent fake-agent`` (its own process, so none of its CPU is counted).

Two phases per run, each measured with ``time.thread_time()`` on the event loop's thread
(and on the reader's): the mic streams (persistent policy, nobody speaks, the agent silent),
then the mic stops and the agent speaks ``--turns`` replies (``agent_speak``), counted per
audio chunk. The breakdown times the pieces of the same work alone, on the same data, in
this process (VAD, base64, the JSON text, websockets' framing and masking, the socket write;
JSON parsing, base64 decoding, websockets' parsing, the resampler), and what is left of the
measured total is scheduling and the rest (the loop's wake-up, the hand-off, the gate's and
the engine's bookkeeping, the decisions). ``--profile`` adds a cProfile listing of the
loop thread during the mic phase (it slows everything; its times are not the figures).

``--what-if`` measures designs that are not the daemon's, for the choice issue 25 leaves
open (never written to the docs): ``reader-path`` runs the gate and the send on the reader's
thread (the loop only hears of verdicts), ``null-socket`` gives the link a transport that
drops the mic frames (the path without the socket's kernel work).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import io
import json
import os
import pstats
import socket
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .env import ROOT, BenchError, log, workdir
from .procs import FakeAgent
from .report import now_text, shown_args, write_section

FRAME_SAMPLES = 320  # 20 ms at 16 kHz
CHUNK_MS = 200  # the fake agent's audio chunks


def _noise_frames(n: int, seed: int = 7) -> list[bytes]:
    """A quiet room through a real microphone: low noise, never digital silence (about -60 dBFS)."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 30, FRAME_SAMPLES)).astype("<i2").tobytes() for _ in range(n)]


@dataclass
class Phase:
    items: int = 0
    loop_cpu: float = 0.0  # s of the loop thread
    loop_sys: float = 0.0  # ... of which in the kernel (system calls: epoll, the socket, the wake-up)
    reader_cpu: float = 0.0  # s of the reader stand-in, inside _deliver
    process_cpu: float = 0.0  # s of the whole process (both stand-ins' pacing included)
    wall: float = 0.0

    def per_item(self, what: str) -> float:
        return 1e6 * getattr(self, what) / max(1, self.items)


@dataclass
class FrameRun:
    mic: Phase = field(default_factory=Phase)
    agent: Phase = field(default_factory=Phase)
    sent_frames: int = 0  # user_audio_chunk messages written during the mic phase
    profile: str = ""
    warm_path: float = 0.0  # us: controller.on_mic_frame in a tight loop, no socket write (warm caches)
    bare_wake: float = 0.0  # us of loop CPU: a wake-up from the reader's thread that does nothing, at the pace


# --------------------------------------------------------------------------- one run


async def _one_run(url: str, args: argparse.Namespace, frames: list[bytes]) -> FrameRun:
    from pi_agent.audio.capture import PyAudioInput
    from pi_agent.audio.formats import MicPipeline
    from pi_agent.audio.gate import CaptureGate
    from pi_agent.audio.output import BufferedOutput
    from pi_agent.config import Settings
    from pi_agent.controller import Controller
    from pi_agent.events import EventHub
    from pi_agent.metrics import Metrics
    from pi_agent.net.conversation import build_conversation
    from pi_agent.parts import make_vad

    class Speaker(BufferedOutput):
        """The loop-side half the daemon's speaker shares, on a buffer pulled by a thread."""

        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__(())
            self._loop = loop
            self.chunks = 0
            self._buffer = self._make_buffer(48_000, 2, latency=0.04, underrun_gap=1.0, quality="HQ")

        def play(self, pcm: Any, rate: int) -> None:
            self.chunks += 1
            super().play(pcm, rate)

    loop = asyncio.get_running_loop()
    settings = Settings(agent_id="bench", server_url=url,  # type: ignore[call-arg]
                        session={"policy": "persistent"}, capture={"mode": "vad"},
                        audio={"echo": "full_duplex", "earcons": []})
    c = settings.capture
    gate = CaptureGate(c.mode, make_vad(c.vad_aggressiveness), preroll=c.preroll, hangover=c.hangover,
                       privacy=c.privacy)
    speaker = Speaker(loop)
    controller: Controller | None = None

    def on_event(event: Any) -> None:
        assert controller is not None
        controller.dispatch(event)

    engine, session = build_conversation(settings, on_event=on_event)
    controller = Controller(settings, gate=gate, output=speaker, engine=engine, metrics=Metrics(), hub=EventHub())
    controller.attach(session)
    mic = PyAudioInput("default")
    mic._loop, mic._on_frame, mic._running = loop, controller.on_mic_frame, True
    mic._pipeline = MicPipeline(16_000, 1)
    if hasattr(mic, "_watch"):  # the wake-up open() sets up (an eventfd since issue 25)
        mic._watch(loop)
    runner = loop.create_task(session.run())
    stop_speaker = threading.Event()
    buf = speaker.buffer
    assert buf is not None
    speed = args.send_speed

    def pull() -> None:  # the speaker's callback, as fast as the agent sends
        period = 960
        while not stop_speaker.wait(0.02 / speed):
            buf.fill(period, time.monotonic() + 0.04)

    puller = threading.Thread(target=pull, name="bench speaker", daemon=True)
    puller.start()
    run = FrameRun()
    try:
        t_end = time.monotonic() + 15
        while not engine.is_open:
            if time.monotonic() > t_end:
                raise BenchError("no conversation opened with the fake agent within 15 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        # -- the mic phase
        n, pace = args.frames, args.pace / 1000
        reader_cpu: list[float] = []

        hand_over = mic._deliver if args.what_if != "reader-path" else _reader_path(loop, controller, session, mic)

        def reader() -> None:
            spent = 0.0
            t = time.monotonic()
            for k in range(n):
                t += pace
                delay = t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                c0 = time.thread_time()
                hand_over(frames[k % len(frames)], False)
                spent += time.thread_time() - c0
            reader_cpu.append(spent)

        sent0 = engine.stats.messages_out["audio"]
        link, kept = session._link, None
        if args.what_if == "null-socket" and link is not None:
            kept, link._transport = link._transport, _NullTransport()
        done = asyncio.Event()
        prof = cProfile.Profile(time.thread_time) if args.profile else None
        p0, w0, l0, f0 = time.process_time(), time.monotonic(), time.thread_time(), mic.frames
        k0 = _kernel_time()
        if prof is not None:
            prof.enable()
        thread = threading.Thread(target=lambda: (reader(), loop.call_soon_threadsafe(done.set)), daemon=True)
        thread.start()
        await done.wait()
        await asyncio.sleep(0)  # the last frame's drain
        l1, w1, p1 = time.thread_time(), time.monotonic(), time.process_time()
        k1 = _kernel_time()
        if kept is not None and link is not None:
            link._transport = kept
        if prof is not None:
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
            run.profile = _trim_profile(out.getvalue())
        run.mic = Phase(mic.frames - f0, l1 - l0, k1 - k0, reader_cpu[0], p1 - p0, w1 - w0)
        run.sent_frames = engine.stats.messages_out["audio"] - sent0
        if run.sent_frames < run.mic.items:
            raise BenchError(f"only {run.sent_frames} of {run.mic.items} mic frames were sent to the fake agent")
        # -- the agent phase: the mic is quiet, the agent speaks
        await asyncio.sleep(0.3)
        c0, p0, w0, l0 = speaker.chunks, time.process_time(), time.monotonic(), time.thread_time()
        k0 = _kernel_time()
        for _ in range(args.turns):
            before = speaker.chunks
            await asyncio.to_thread(_control, url, "agent_speak")
            t_end, seen = time.monotonic() + 30, -1
            while speaker.chunks == before or speaker.chunks != seen:  # until the reply stops growing
                if time.monotonic() > t_end:
                    raise BenchError("the agent's reply did not come within 30 s")
                seen = speaker.chunks
                await asyncio.sleep(0.5)
        l1, w1, p1 = time.thread_time(), time.monotonic(), time.process_time()
        run.agent = Phase(speaker.chunks - c0, l1 - l0, _kernel_time() - k0, 0.0, p1 - p0, w1 - w0)
        run.warm_path = _warm_path(controller, session, frames)
        run.bare_wake = await _bare_wake(loop, min(n, 300), pace)
    finally:
        stop_speaker.set()
        if hasattr(mic, "_unwatch"):
            mic._unwatch()
        await session.close(1.0)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        puller.join(2)
    return run


class _NullTransport:
    """Stands in for the link's transport: keeps nothing (no socket work)."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _reader_path(loop: asyncio.AbstractEventLoop, controller: Any, session: Any, mic: Any) -> Any:
    """``--what-if reader-path``: what the reader would do if a frame's path ran on its thread (the
    gate, the engine, the link's write; verdicts handed to the loop). Not thread-safe as a daemon
    would need it (the loop may write a pong meanwhile; a TLS transport could not be shared at
    all): it gives the cost of that design, nothing else."""
    from pi_agent.decide import inputs as i

    gate = controller.gate

    def verdicts(started: bool, ended: bool, nothing_said: bool) -> None:
        if started:
            controller.dispatch(i.TurnStarted())
        if ended:
            controller.dispatch(i.TurnEnded(nothing_said))

    def hand_over(frame: bytes, lost: bool) -> None:
        now = time.monotonic()
        out = gate.process(frame, now, in_turn=controller.model.in_turn)
        if out.started or out.ended:
            loop.call_soon_threadsafe(verdicts, out.started, out.ended, out.nothing_said)
        for f in out.frames:
            session.send_audio(f, out.speech, now)
        mic.frames += 1

    return hand_over


def _warm_path(controller: Any, session: Any, frames: list[bytes], n: int = 5000) -> float:
    """Microseconds of one mic frame's path on the loop (gate, engine, session, link, framing)
    called in a tight loop, its bytes handed to a transport that keeps nothing: warm caches."""
    link = session._link
    if link is None:
        return float("nan")
    real, link._transport = link._transport, _NullTransport()
    try:
        rounds = []
        for _ in range(5):
            c0 = time.thread_time()
            for k in range(n // 5):
                controller.on_mic_frame(frames[k % len(frames)])
            rounds.append((time.thread_time() - c0) / (n // 5) * 1e6)
    finally:
        link._transport = real
    return statistics.median(rounds)


async def _bare_wake(loop: asyncio.AbstractEventLoop, n: int, pace: float) -> float:
    """Microseconds of loop CPU per wake-up that does nothing, handed over from another thread
    at the pace of the frames, the way the microphone's reader wakes the loop (an eventfd the
    loop watches; call_soon_threadsafe where there is none)."""
    done = asyncio.Event()
    fd = os.eventfd(0, os.EFD_NONBLOCK) if hasattr(os, "eventfd") else None
    if fd is not None:
        loop.add_reader(fd, lambda: os.eventfd_read(fd))

    def wake() -> None:
        if fd is not None:
            os.eventfd_write(fd, 1)
        else:
            loop.call_soon_threadsafe(lambda: None)

    def waker() -> None:
        t = time.monotonic()
        for _ in range(n):
            t += pace
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            wake()
        time.sleep(pace)
        loop.call_soon_threadsafe(done.set)

    c0 = time.thread_time()
    threading.Thread(target=waker, daemon=True).start()
    await done.wait()
    spent = time.thread_time() - c0
    if fd is not None:
        loop.remove_reader(fd)
        os.close(fd)
    return spent / n * 1e6


def _kernel_time() -> float:
    """Seconds this thread spent in the kernel (/proc: stime, in clock ticks)."""
    try:
        stat = Path(f"/proc/self/task/{threading.get_native_id()}/stat").read_text()
    except OSError:
        return 0.0
    return int(stat.rpartition(")")[2].split()[12]) / os.sysconf("SC_CLK_TCK")


def _control(url: str, action: str) -> None:
    import urllib.request
    with urllib.request.urlopen(f"{url}/_fake/control?action={action}", timeout=10) as r:
        r.read()


def _trim_profile(text: str) -> str:
    lines = text.splitlines()
    for k, line in enumerate(lines):
        if line.strip().startswith("ncalls"):
            lines = lines[k:]
            break
    out = []
    for line in lines:
        line = line.rstrip()
        if not line:
            continue
        line = line.replace(str(ROOT) + "/", "").replace(os.path.dirname(os.__file__) + "/", "")
        out.append(line[:150])
    return "\n".join(out)


# --------------------------------------------------------------------------- the pieces alone


def _cpu_us(fn: Any, n: int) -> float:
    """Median over 5 rounds of the thread CPU per call of ``fn`` (microseconds)."""
    rounds = []
    for _ in range(5):
        c0 = time.thread_time()
        for _ in range(n):
            fn()
        rounds.append((time.thread_time() - c0) / n * 1e6)
    return statistics.median(rounds)


def pieces(frames: list[bytes]) -> tuple[dict[str, float], dict[str, float]]:
    """What each piece of a mic frame's and of an agent chunk's work costs alone, in microseconds."""
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State
    from websockets.uri import parse_uri

    from pi_agent.audio.formats import MicPipeline, Resampler
    from pi_agent.parts import make_vad

    frame = frames[0]
    vad = make_vad(3)
    text = '{"user_audio_chunk":"' + base64.b64encode(frame).decode("ascii") + '"}'
    b64 = base64.b64encode(frame).decode("ascii")
    proto = ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN)

    def framing() -> None:
        proto.send_text(text.encode())
        proto.data_to_send()

    # a TCP connection on loopback with TCP_NODELAY, as asyncio sets it; another thread reads it
    server = socket.create_server(("127.0.0.1", 0))
    a = socket.create_connection(server.getsockname())
    b, _ = server.accept()
    server.close()
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    a.setblocking(False)
    wire = (proto.send_text(text.encode()), proto.data_to_send())[1][0]
    stop = threading.Event()

    def drain() -> None:
        b.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                b.recv(1 << 16)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()

    def write() -> None:
        with contextlib.suppress(BlockingIOError):
            a.send(wire)

    pipeline = MicPipeline(16_000, 1)
    mic = {
        "reader: convert and slice (numpy)": _cpu_us(lambda: pipeline.feed(frame), 4000),
        "VAD (webrtcvad)": _cpu_us(lambda: vad(frame), 4000),
        "encode: base64": _cpu_us(lambda: base64.b64encode(frame).decode("ascii"), 20000),
        "JSON text": _cpu_us(lambda: '{"user_audio_chunk":"' + b64 + '"}', 20000),
        "framing (websockets: frame, mask)": _cpu_us(framing, 4000),
        "socket write (send on loopback TCP)": _cpu_us(write, 4000),
    }
    stop.set()
    drainer.join(1)
    a.close()
    b.close()

    # an agent chunk as the fake agent sends it: 200 ms of pcm_16000
    pcm = (np.sin(np.arange(3200) * 0.05) * 8000).astype("<i2").tobytes()
    message = json.dumps({"type": "audio", "audio_event": {"audio_base_64": base64.b64encode(pcm).decode("ascii"),
                                                           "event_id": 3}})
    b64_chunk = base64.b64encode(pcm).decode("ascii")
    server_frame = Frame(Opcode.TEXT, message.encode()).serialize(mask=False, extensions=[])
    receiver = ClientProtocol(parse_uri("ws://127.0.0.1/"), state=State.OPEN, max_size=16 << 20)

    def parse() -> None:
        receiver.receive_data(server_frame)
        receiver.events_received()

    resampler = Resampler(16_000, 48_000, quality="HQ")
    samples = np.frombuffer(pcm, dtype="<i2")
    agent = {
        "framing (websockets: parse)": _cpu_us(parse, 2000),
        "UTF-8 decode": _cpu_us(lambda: server_frame[4:].decode(), 4000),
        "JSON parse": _cpu_us(lambda: json.loads(message), 2000),
        "decode: base64": _cpu_us(lambda: base64.b64decode(b64_chunk), 2000),
        "resample 16 -> 48 kHz (soxr)": _cpu_us(lambda: resampler.process(samples), 1000),
    }
    return mic, agent


# --------------------------------------------------------------------------- the command


def cmd_frame(args: argparse.Namespace) -> int:
    quick = getattr(args, "quick", False)
    if args.runs is None:
        args.runs = 1 if quick else 3
    if quick:
        args.frames, args.turns = min(args.frames, 500), min(args.turns, 2)
    if args.runs < 1 or args.frames < 50 or args.turns < 1 or not 0 < args.pace <= 1000 or args.send_speed <= 0:
        raise BenchError("frame needs --runs >= 1, --frames >= 50, --turns >= 1, 0 < --pace <= 1000, --send-speed > 0")
    frames = _noise_frames(250)
    commit = _commit()
    runs: list[FrameRun] = []
    started = time.monotonic()
    with workdir(args.workdir) as wd:
        agent = FakeAgent(wd, ["--send-speed", str(args.send_speed), "--no-stream-text",
                               "--ping-interval", "2"])
        try:
            for k in range(args.runs):
                run = asyncio.run(_one_run(agent.url, args, frames))
                log(f"run {k + 1}: mic {run.mic.per_item('loop_cpu'):.0f} us of loop CPU per frame "
                    f"({run.mic.per_item('loop_sys'):.0f} in the kernel) "
                    f"({run.mic.items} frames), reader {run.mic.per_item('reader_cpu'):.0f} us; agent "
                    f"{run.agent.per_item('loop_cpu'):.0f} us per chunk ({run.agent.items} chunks)")
                runs.append(run)
        finally:
            agent.stop()
    if args.what_if and args.write:
        args.write = False
        log(f"--what-if {args.what_if}: a design that is not the daemon's; the docs are not rewritten")
    mic_pieces, agent_pieces = pieces(frames)
    report = frame_report(runs, mic_pieces, agent_pieces, args, commit, time.monotonic() - started)
    print(report)
    if args.write:
        write_section(args.out, "frame", report)
        log(f"wrote {args.out}")
    return 0


def _commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "pi_agent", "scripts/bench"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + (" with uncommitted changes" if dirty else "")


def frame_report(runs: list[FrameRun], mic_pieces: dict[str, float], agent_pieces: dict[str, float],
                 args: argparse.Namespace, commit: str, elapsed: float) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    mic_loop = med([r.mic.per_item("loop_cpu") for r in runs])
    mic_reader = med([r.mic.per_item("reader_cpu") for r in runs])
    mic_sys = med([r.mic.per_item("loop_sys") for r in runs])
    ag_sys = med([r.agent.per_item("loop_sys") for r in runs])
    mic_proc = med([r.mic.per_item("process_cpu") for r in runs])
    ag_loop = med([r.agent.per_item("loop_cpu") for r in runs])
    ag_proc = med([r.agent.per_item("process_cpu") for r in runs])
    load = _load_text()
    what_if = {"reader-path": "**What if** the frame's path ran on the reader's thread (gate, engine and "
               "link's write there; not the daemon's design, not thread-safe): ",
               "null-socket": "**What if** the link's transport dropped the mic frames (no socket work): "}
    out = [what_if.get(args.what_if or "", "")
           + f"Run of {now_text()} on commit `{commit}`: `{shown_args(args.argv)}`, {len(runs)} run(s), "
           f"{elapsed / 60:.1f} min in all; {load}.", "",
           f"Each run: {args.frames} mic frames handed over every {args.pace:g} ms (16 kHz mono, low noise), "
           f"the persistent policy, `vad` capture, full duplex; then {args.turns} agent replies "
           f"(the fake agent's clip, pcm_16000 in {CHUNK_MS} ms chunks, sent {args.send_speed:g}x real time). "
           "CPU from `time.thread_time()`, medians of the runs.", "",
           "| per | event loop (us) | of which in the kernel | reader (us) | whole process (us) | runs (loop) |",
           "|---|---|---|---|---|---|",
           f"| mic frame | **{mic_loop:.0f}** | {mic_sys:.0f} | {mic_reader:.0f} | {mic_proc:.0f} | "
           + ", ".join(f"{r.mic.per_item('loop_cpu'):.0f}" for r in runs) + " |",
           f"| agent chunk ({CHUNK_MS} ms) | **{ag_loop:.0f}** | {ag_sys:.0f} | - | {ag_proc:.0f} | "
           + ", ".join(f"{r.agent.per_item('loop_cpu'):.0f}" for r in runs) + " |", "",
           "\"in the kernel\": the loop thread's system time (/proc, 10 ms ticks): epoll, the wake-up, the "
           "socket. \"whole process\" includes the two stand-in threads' own pacing. The mic frame on the loop, "
           "broken down: the pieces timed alone on the same data; then the whole path in a tight loop, which "
           "holds them (in italics: not added again), a bare wake-up, and what is left of the total:", "",
           "| piece of a mic frame | us | share of the loop's |", "|---|---|---|"]
    loop_pieces = {k: v for k, v in mic_pieces.items() if not k.startswith("reader")}
    for name, us in loop_pieces.items():
        out.append(f"| {name} | {us:.1f} | {100 * us / mic_loop:.0f}% |")
    warm = med([r.warm_path for r in runs])
    wake = med([r.bare_wake for r in runs])
    rest = mic_loop - warm - wake
    out += [f"| *all of the path above and the gate, engine, session and link's Python, in a tight loop (warm "
            f"caches, no socket)* | *{warm:.1f}* | *{100 * warm / mic_loop:.0f}%* |",
            f"| a wake-up of the loop that does nothing, from another thread at the same pace | {wake:.1f} | "
            f"{100 * wake / mic_loop:.0f}% |",
            f"| the rest: the same path cold (other work ran on the core for 20 ms), the socket's kernel work | "
            f"{rest:.1f} | {100 * rest / mic_loop:.0f}% |"]
    out += ["", f"On the reader's thread, before the hand-off: {mic_reader:.0f} us a frame "
            f"(of which convert and slice alone {mic_pieces['reader: convert and slice (numpy)']:.1f} us).", "",
            "| piece of an agent chunk | us | share of the loop's |", "|---|---|---|"]
    for name, us in agent_pieces.items():
        out.append(f"| {name} | {us:.1f} | {100 * us / ag_loop:.0f}% |")
    rest = ag_loop - sum(agent_pieces.values())
    out.append(f"| the rest (wake-up, engine, decisions, buffer, timers) | {rest:.1f} | {100 * rest / ag_loop:.0f}% |")
    if runs and runs[0].profile:
        out += ["", "cProfile of the loop thread in the first run's mic phase (by own time; slowed by the "
                "profiler):", "", "```", runs[0].profile, "```"]
    return "\n".join(out)


def _load_text() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} CPUs at the end"

