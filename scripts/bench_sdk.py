#!/usr/bin/env python3
"""The official ElevenLabs SDK as the benchmark's second client.

``scripts/bench.py`` starts this as its own process (so its CPU and memory are its own):
``Conversation`` + ``DefaultAudioInterface`` (PortAudio default input and output, 16 kHz
mono, 250 ms input chunks) against the fake agent at ``--base-url``, until SIGTERM or
SIGINT, then ``end_session()``. It imports nothing but the SDK, so what it costs is what
any program built on the SDK's defaults costs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the official SDK's Conversation against an agent "
                                     "until SIGTERM (a client for scripts/bench.py).")
    parser.add_argument("--base-url", required=True, help="API base URL, e.g. http://127.0.0.1:8765")
    parser.add_argument("--agent-id", default="bench", help="agent id (a public agent: no key needed)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    from elevenlabs.client import ElevenLabs
    from elevenlabs.conversational_ai.conversation import Conversation
    from elevenlabs.conversational_ai.default_audio_interface import DefaultAudioInterface

    def disconnected(details: Any) -> None:
        print(f"bench_sdk: disconnected: {details}", file=sys.stderr, flush=True)
        stop.set()

    conversation = Conversation(
        ElevenLabs(api_key="bench-unused", base_url=args.base_url),
        args.agent_id,
        requires_auth=False,
        audio_interface=DefaultAudioInterface(),
        callback_disconnect=disconnected,
    )
    conversation.start_session()
    stop.wait()  # a signal or the server ending the conversation
    conversation.end_session()
    conversation.wait_for_session_end()
    return 0


if __name__ == "__main__":
    sys.exit(main())
