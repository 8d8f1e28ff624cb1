"""Fault suite, server refusals: every close code of the spec and of the wild, ``error``
events of every ``error_type`` family, ``queue_status``, max duration, ``end_call``.

One daemon process (persistent policy) lives through every refusal in turn; after each
the test checks the reaction the daemon reported (a new conversation at once, a backoff,
or the non-retryable path: ``error`` state, one error line, a retry only at the cap), the
state and ``/healthz`` right after, and that a new conversation opened afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Awaitable, Callable

import pytest

from pi_agent.fake_agent import ERROR_CODES, FakeAgent, FakeAgentOptions
from .support_faults import CANARY, agent_signatures, fault_daemon, fault_env

pytestmark = pytest.mark.faults

CAP = 1.0
INITIAL = 0.2


@dataclass(frozen=True)
class Refusal:
    name: str
    act: Callable[[FakeAgent], Awaitable[Any]]
    outcome: str       # ended: a new conversation at once; retry: backoff; fatal: error, retry at the cap
    code: int
    says: str          # part of the reason the daemon gives (event API and log)


def close(code: int, reason: str) -> Callable[[FakeAgent], Awaitable[Any]]:
    return lambda agent: agent.close_conversation(code, reason)


def error(error_type: str, message: str | None = None) -> Callable[[FakeAgent], Awaitable[Any]]:
    return lambda agent: agent.send_error(error_type, message=message)


CLOSES = [
    Refusal("1000 normal", close(1000, ""), "ended", 1000, "server closed with 1000"),
    Refusal("end_call", lambda a: a.end_call(), "ended", 1000, "the agent ended the call"),
    Refusal("max duration", lambda a: a.max_duration(), "ended", 1000, "maximum duration"),
    Refusal("1002 operational", close(1002, "LLM timed out"), "retry", 1002, "server closed with 1002"),
    Refusal("1008 invalid message", close(1008, "Invalid message received"), "retry", 1008, "1008"),
    Refusal("1008 bad key", close(1008, "Invalid API key"), "fatal", 1008, "check the API key"),
    Refusal("1008 unknown agent", close(1008, "Agent not found"), "fatal", 1008, "Agent not found"),
    Refusal("1011 server error", close(1011, "internal error"), "retry", 1011, "server closed with 1011"),
    Refusal("3000 request error", close(3000, "Request error"), "retry", 3000, "server closed with 3000"),
    Refusal("3008 queue_status timed out", lambda a: a.queue_status(), "retry", 3008, "too many concurrent"),
]

# What a kiosk's admin wants per error_type: configuration faults (the agent's settings or
# ours) stop the retries until the cap; a normal end starts a new conversation; anything
# operational is retried with backoff.
CONFIG_ERRORS = {"override_error", "missing_dynamic_variable", "missing_dynamic_variable_transfer",
                 "telephony_agent_error", "mcp_tool_error", "mcp_https_error"}
ERRORS = [
    Refusal(f"error {t}", error(t, f"fake {t.replace('_', ' ')}"),
            "ended" if t == "max_duration_exceeded" else "fatal" if t in CONFIG_ERRORS else "retry",
            code, "maximum duration" if t == "max_duration_exceeded" else t)
    for t, code in ERROR_CODES.items()
]


async def _live_through(refusals: list[Refusal], tmp_path: Path) -> None:
    opts = FakeAgentOptions(port=0, api_key=CANARY, ping_interval=1.0)
    async with FakeAgent(opts) as agent:
        env = fault_env(agent.http_url, tmp_path, PI_AGENT_SESSION__BACKOFF_RESET_AFTER="0",
                        PI_AGENT_SESSION__BACKOFF_MAX=str(CAP))
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_connected()
            for r in refusals:
                opened, closes, events = len(run.opened()), len(run.connections(False)), len(run.events.events)
                record = agent.latest
                await r.act(agent)
                t0 = time.monotonic()
                closed = await run.wait_closed(5, after=closes)
                status, health = await run.health()
                await run.wait_connected(CAP + 5, after=opened)
                took = time.monotonic() - t0
                new_events = run.events.events[events:]
                where = f"{r.name}: {closed}"
                assert closed["outcome"] == r.outcome, where
                assert closed["code"] == r.code, where
                assert r.says in closed["reason"], where
                assert record.close_code == r.code and record.closed_by == "server", where
                states = [e["state"] for e in new_events if e["type"] == "state"]
                if r.outcome == "ended":
                    assert closed["retry_in"] <= INITIAL, where
                    assert "offline" not in states and "error" not in states, (where, states)
                    assert status == 200, (where, health)
                elif r.outcome == "retry":
                    assert closed["retry_in"] <= INITIAL, where  # the backoff restarted after a healthy open
                    assert "offline" in states and "error" not in states, (where, states)
                else:
                    assert closed["retry_in"] == CAP, where
                    assert states[0] == "error", (where, states)
                    assert status == 503 and health["state"] == "error", (where, health)
                    assert took >= CAP - 0.05, (where, took)  # not retried before the cap
                    assert any(e["type"] == "error" and e.get("source") == "session" for e in new_events), where
                if r.name.startswith("error "):
                    server_errors = [e for e in new_events if e["type"] == "error" and e.get("source") == "server"]
                    assert [e["error_type"] for e in server_errors] == [r.name[6:]], (where, server_errors)
                assert agent.latest is not record and agent.latest.init is not None, where  # a new conversation
                await run.wait_state("idle", 5)
            log = run.log
    for r in refusals:
        line = {"ended": "conversation ended: ", "retry": "disconnected: ", "fatal": "cannot open a conversation: "}
        assert any(line[r.outcome] in x and r.says in x for x in log.splitlines()), (r.name, log[-3000:])
    assert len(run.opened()) == len(refusals) + 1


@pytest.mark.slow
async def test_every_close_code_gets_its_reaction(tmp_path: Path) -> None:
    await _live_through(CLOSES, tmp_path)


@pytest.mark.slow
async def test_every_error_type_gets_its_reaction(tmp_path: Path) -> None:
    assert len(ERRORS) >= 20  # the spec's list, from the fake agent
    await _live_through(ERRORS, tmp_path)
