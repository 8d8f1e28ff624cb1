"""Fault suite, soak: hundreds of conversations, accelerated, and nothing accumulates.

The fake agent speaks first (a 0.1 s clip), then ends the call; the persistent daemon
opens the next conversation at once, streaming its microphone all along (``always``
capture). The daemon process is sampled every half second: resident memory, open file
descriptors and threads must stay flat (median of the last quarter against the second
quarter). In process, the same churn must not leave asyncio tasks behind.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from pi_agent.config import load_settings
from pi_agent.daemon import Daemon, Parts
from pi_agent.audio.files import WavFileInput, WavFileOutput
from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_daemon import free_port
from .support_faults import CANARY, ProcStats, agent_signatures, fault_daemon, fault_env, make_wav, metric, proc_stats

pytestmark = pytest.mark.faults

CONVERSATIONS = 200


def _churning_agent() -> FakeAgent:
    return FakeAgent(FakeAgentOptions(port=0, api_key=CANARY, first_message=True, reply_seconds=0.1,
                                      send_speed=4.0, end_call_after=1, record_audio=False, ping_interval=0.2))


def _quarters(samples: list[ProcStats], attr: str) -> tuple[float, float]:
    values = [getattr(s, attr) for s in samples]
    n = len(values) // 4
    return statistics.median(values[n:2 * n]), statistics.median(values[3 * n:])


@pytest.mark.slow
async def test_two_hundred_conversations_leave_memory_fds_and_threads_flat(tmp_path: Path) -> None:
    mic = make_wav(tmp_path / "mic.wav", 0.5)
    async with _churning_agent() as agent:
        env = fault_env(agent.http_url, tmp_path, mic, PI_AGENT_CAPTURE__MODE="always",
                        PI_AGENT_AUDIO__ECHO="full_duplex", PI_AGENT_SESSION__BACKOFF_INITIAL="0.02",
                        PI_AGENT_SESSION__BACKOFF_RESET_AFTER="0", PI_AGENT_LOG__LEVEL="info")
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            pid = run.daemon.proc.pid
            samples: list[ProcStats] = []
            t0 = time.monotonic()
            while len(agent.conversations) < CONVERSATIONS:
                assert time.monotonic() - t0 < 150, f"only {len(agent.conversations)} conversations in 150 s"
                await asyncio.sleep(0.5)
                samples.append(proc_stats(pid))
            took = time.monotonic() - t0
            await agent.wait_for(lambda: not agent.latest.is_open or agent.latest.turns, 5)
            metrics = await run.metrics()
    assert len(samples) >= 20, samples
    rss_early, rss_late = _quarters(samples, "rss_kb")
    fds_early, fds_late = _quarters(samples, "fds")
    thr_early, thr_late = _quarters(samples, "threads")
    report = f"{CONVERSATIONS} conversations in {took:.0f} s; rss {rss_early}->{rss_late} kB, " \
             f"fds {fds_early}->{fds_late}, threads {thr_early}->{thr_late}"
    assert rss_late <= rss_early + max(4096, rss_early * 0.05), report
    assert fds_late <= fds_early + 10, report
    assert thr_late <= thr_early + 2, report
    assert max(s.threads for s in samples) <= thr_early + 4, report
    assert metric(metrics, "pi_agent_conversations_total") >= CONVERSATIONS
    assert metric(metrics, "pi_agent_protocol_errors_total") == 0
    ended = [c for c in agent.conversations[:-2] if c.close_code != 1000 or c.closed_by != "server"]
    assert not ended, [(c.close_code, c.closed_by) for c in ended]  # every one ended by the agent's end_call
    print(report)


@pytest.mark.slow
async def test_conversation_churn_leaves_no_tasks_behind(tmp_path: Path) -> None:
    """In process: the number of asyncio tasks with a conversation open is the same after
    60 conversations as after 15."""
    async with _churning_agent() as agent:
        settings = load_settings(None, agent_id="agent_faults", server_url=agent.http_url, api_key=CANARY,
                                 session={"policy": "persistent", "backoff_initial": 0.02, "backoff_max": 1.0,
                                          "backoff_reset_after": 0},
                                 capture={"mode": "always"}, audio={"echo": "full_duplex"},
                                 api={"port": free_port()})
        mic = WavFileInput(make_wav(tmp_path / "mic.wav", 0.5))
        daemon = Daemon(settings, Parts(audio_in=mic, audio_out=WavFileOutput(tmp_path / "speaker.wav")))
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        counts: dict[int, int] = {}
        try:
            for target in (15, 60):
                await agent.wait_for(lambda n=target: len(agent.conversations) >= n, 60, f"{target} conversations")
                await agent.wait_for(lambda: agent.latest.init is not None and agent.latest.is_open, 5)
                daemon_tasks = [t for t in asyncio.all_tasks() if not t.get_name().startswith("fake-agent")
                                and "fake_agent" not in repr(t.get_coro())]
                counts[target] = len(daemon_tasks)
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 5) == 0
    assert counts[60] <= counts[15] + 2, counts
