"""The command line: ``scripts/bench.py [compare|idle|soak|profile] ...``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .env import RESULTS, ROOT, BenchError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Latency, barge-in, CPU and memory of `pi-agent run` side by side with the official "
                    "ElevenLabs SDK, on the PulseAudio virtual sound card (not a test; not run by CI).",
        epilog="Needs what PROFILE=test ./scripts/test.sh installs; `profile` also needs py-spy "
               "(pip install -e '.[bench]'). Installs nothing itself.")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per client, alternating (default 3, idle 2; 1 with --quick)")
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
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="keep N CPUs busy with spinning processes during the runs (the figures go to their "
                             "own section, compare-busy)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("compare", help="the scripted conversation (the default command)")
    idle = sub.add_parser("idle", help="nobody talks to the device: a silent room and a room where people talk; "
                          "CPU, wake-ups and memory of the daemon (each session policy) and the SDK")
    idle.add_argument("--seconds", type=float, default=None, help="measured per run (default 60; 20 with --quick)")
    idle.add_argument("--room", choices=("silent", "speech"), help="one room only")
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
    frame = sub.add_parser("frame", help="in-process: the event loop's CPU per 20 ms mic frame (reader hand-off "
                           "to the socket) and per agent audio chunk (socket to the speaker's buffer), with a "
                           "breakdown; rewrites \"Per frame\"")
    frame.add_argument("--frames", type=int, default=3000, help="mic frames per run (default 3000; 500 with --quick)")
    frame.add_argument("--pace", type=float, default=20.0, help="ms between two frames handed over (default 20)")
    frame.add_argument("--turns", type=int, default=6, help="agent replies per run (default 6; 2 with --quick)")
    frame.add_argument("--send-speed", type=float, default=4.0, help="the fake agent's audio speed (default 4x)")
    frame.add_argument("--profile", action="store_true", help="add a cProfile listing of the loop thread")
    frame.add_argument("--top", type=int, default=30, help="functions in that listing (default 30)")
    frame.add_argument("--what-if", choices=("reader-path", "null-socket"), default=None,
                       help="measure a design that is not the daemon's (never written to the docs): "
                            "reader-path runs the gate and the send on the reader's thread, as moving the "
                            "frame's path off the loop would (plain TCP only, not thread-safe: a cost "
                            "figure, nothing more); null-socket hands the mic frames to a transport "
                            "that drops them (no socket work)")
    for p in (idle, soak, prof, frame):
        p.add_argument("--quick", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        # SUPPRESS: given before the command, these must not be reset by the command's defaults.
        p.add_argument("--out", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--no-write", dest="write", action="store_false", default=argparse.SUPPRESS,
                       help="leave the results file alone")
        p.add_argument("--workdir", metavar="DIR", default=argparse.SUPPRESS,
                       help="keep logs here (default: a temp dir, removed)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.argv = argv
    try:
        # Inherited by every process the bench starts: the clients, the fake agent, PulseAudio.
        if args.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, args.nice)
            except PermissionError:
                raise BenchError(f"--nice {args.nice}: not allowed (a negative value needs root)") from None
        if args.command == "soak":
            from .soak import cmd_soak
            return cmd_soak(args)
        if args.command == "profile":
            from .profile import cmd_profile
            return cmd_profile(args)
        if args.command == "frame":
            from .frame import cmd_frame
            return cmd_frame(args)
        if args.command == "idle":
            from .idle import cmd_idle
            return cmd_idle(args)
        from .compare import cmd_compare
        return cmd_compare(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
