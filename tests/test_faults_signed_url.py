"""Fault suite, signed URLs: every way the ``get-signed-url`` request can fail.

HTTP 401, 403, 404, 422, 429, 500, a timeout, a body that is not JSON, a ``signed_url``
that is not a ws(s) URL (or not a URL at all), and a redirect. Each gets one clear log
line and its reaction; 401/403 are retried only at the cap; nothing leaks the key or a
signature (``fault_daemon`` scans the log, the events, ``/metrics`` and ``/healthz``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pi_agent.fake_agent import FakeAgent, FakeAgentOptions
from .support_faults import CANARY, SignedUrlStub, agent_signatures, fault_daemon, fault_env

pytestmark = pytest.mark.faults

CAP = 1.5

FAULTS: list[tuple[dict[str, Any], str, str]] = [
    ({"status": 401}, "fatal", "HTTP 401 (the API key was refused: Invalid API key)"),
    ({"status": 403}, "fatal", "HTTP 403 (the API key may not use this agent"),
    ({"status": 404}, "fatal", "HTTP 404 (no such agent"),
    ({"status": 422}, "fatal", "HTTP 422 (the request was refused (check agent_id)"),
    ({"status": 429}, "retry", "HTTP 429 (rate limited"),
    ({"status": 500}, "retry", "HTTP 500 (server error"),
    ({"kind": "timeout", "seconds": 2.5}, "retry", "signed URL request timed out after 1 s"),
    ({"kind": "not_json"}, "retry", "signed URL response is not JSON with a 'signed_url' field"),
    ({"kind": "not_ws_url"}, "retry", "signed URL response holds no ws:// or wss:// URL"),
]


async def _next_failure(run: Any, agent: FakeAgent | None, closes: int) -> dict[str, Any]:
    """End the open conversation (if ``agent``), then return the failed attempt that follows."""
    if agent is not None:
        await agent.end_call()
        ended = await run.wait_closed(5, after=closes)
        assert ended["outcome"] == "ended", ended
        closes += 1
    return await run.wait_closed(10, after=closes)


@pytest.mark.slow
async def test_each_signed_url_failure_gets_a_clear_line_and_its_reaction(tmp_path: Path) -> None:
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent:
        env = fault_env(agent.http_url, tmp_path, PI_AGENT_SESSION__BACKOFF_MAX=str(CAP),
                        PI_AGENT_SESSION__CONNECT_TIMEOUT="1", PI_AGENT_SESSION__BACKOFF_RESET_AFTER="0")
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_connected(10)
            for fault, outcome, says in FAULTS:
                opened = len(run.opened())
                agent.signed_url_fault(**fault)
                failed = await _next_failure(run, agent, len(run.connections(False)))
                where = f"{fault}: {failed}"
                assert failed["outcome"] == outcome and says in failed["reason"], where
                assert CANARY not in failed["reason"]
                if outcome == "fatal":
                    assert failed["retry_in"] == CAP, where
                    status, health = await run.health()
                    assert status == 503 and health["state"] == "error" and says in health["reason"], health
                elif fault.get("status") == 429:
                    assert 1.0 <= failed["retry_in"] <= CAP, where  # the server's Retry-After: 1 is honoured
                else:
                    assert failed["retry_in"] <= 0.2 * 2, where
                await run.wait_connected(CAP + 6, after=opened)
            log = run.log
    for _, outcome, says in FAULTS:
        lines = [line for line in log.splitlines() if says in line]
        level = "ERROR" if outcome == "fatal" else "WARN"
        assert len(lines) == 1 and level in lines[0], (says, lines)
    requests = agent.conversations
    assert len(requests) == len(FAULTS) + 1


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_key_is_not_hammered(status: int, tmp_path: Path) -> None:
    """A refused key is retried only at the cap, logged once, and the daemon recovers
    by itself once the key is accepted again."""
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent, SignedUrlStub(agent.http_url) as stub:
        stub.answer(status, {"detail": {"status": "refused", "message": "Invalid API key"}}, count=3)
        async with fault_daemon(fault_env(stub.url, tmp_path), tmp_path,
                                secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_connected(10)
            errors = [e for e in run.events.events if e["type"] == "error"]
            log = run.log
    gaps = [b - a for a, b in zip(stub.times, stub.times[1:], strict=False)]
    assert len(stub.times) == 4 and all(g >= 1.0 - 0.05 for g in gaps), gaps  # the 1 s cap, never sooner
    assert errors and all(f"HTTP {status}" in e["message"] for e in errors), errors
    lines = [line for line in log.splitlines() if f"HTTP {status}" in line and "DEBUG" not in line]
    assert len(lines) == 1 and "ERROR" in lines[0], lines  # then at debug level only
    assert "-> error" in log and "error -> connecting" in log and "conversation conv_" in log


@pytest.mark.slow
async def test_malformed_signed_urls_are_refused_cleanly(tmp_path: Path) -> None:
    """Answers no real server should give: each is one retried failure with a clear
    reason, never a crash and never a signature in the reason."""
    bad: list[tuple[int, Any, str]] = [
        (200, {"signed_url": "ws://127.0.0.1:notaport/v1/convai/conversation?conversation_signature=SIGbadport1"},
         "no ws:// or wss:// URL"),
        (200, {"signed_url": "ws://user:pw@/v1/convai/conversation?conversation_signature=SIGnohost2"},
         "no ws:// or wss:// URL"),
        (200, {"signed_url": 42}, "no ws:// or wss:// URL"),
        (200, {}, "not JSON with a 'signed_url' field"),
        (200, None, "not JSON with a 'signed_url' field"),
        (200, "", "not JSON with a 'signed_url' field"),
        (200, [1, 2], "not JSON with a 'signed_url' field"),
        (502, "<html>Bad gateway</html>", "HTTP 502"),
    ]
    async with FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent, SignedUrlStub(agent.http_url) as stub:
        for status, body, _ in bad:
            stub.answer(status, body, "text/html" if isinstance(body, str) else "application/json")
        env = fault_env(stub.url, tmp_path, PI_AGENT_SESSION__BACKOFF_INITIAL="0.05",
                        PI_AGENT_SESSION__BACKOFF_MAX="0.1")
        async with fault_daemon(env, tmp_path, secrets=lambda: [*agent_signatures(agent), "SIGbadport1",
                                                                "SIGnohost2"]) as run:
            await run.wait_connected(15)
            failures = run.failures_logged()
            log = run.log
    assert len(failures) == len(bad), failures
    for (_, _, says), failure in zip(bad, failures, strict=False):
        assert says in failure, (says, failure)
    assert "ERROR" not in log and "CRIT" not in log  # retried, nothing fatal
    assert all(key == CANARY for _, key in stub.requests)


async def test_a_redirect_does_not_take_the_key_elsewhere(tmp_path: Path) -> None:
    """A 302 from the signed-URL endpoint (a captive portal on an http:// server_url) must
    not carry ``xi-api-key`` to the other host."""
    async with (FakeAgent(FakeAgentOptions(port=0, api_key=CANARY)) as agent,
                SignedUrlStub(agent.http_url) as elsewhere,
                SignedUrlStub(agent.http_url) as stub):
        elsewhere.answer(200, {"signed_url": "ws://127.0.0.1:1/nowhere"}, count=5)
        stub.redirect(f"{elsewhere.url}/portal/login")
        env = fault_env(stub.url, tmp_path)
        async with fault_daemon(env, tmp_path, secrets=lambda: agent_signatures(agent)) as run:
            await run.wait_connected(15)
            first = run.failures_logged()[0]
    assert not [key for _, key in elsewhere.requests if key], elsewhere.requests  # the key stayed home
    assert "HTTP 302 (redirect refused)" in first, first
