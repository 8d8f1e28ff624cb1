"""Decisions about what the service really sends: the interruption before a text reply, the
reply's last chunk (``is_final``), tool calls that expect no result, MCP tools awaiting
approval, the service's queue and its ``client_error``. Pure: model + input -> model + effects."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pi_agent.decide import effects as fx
from pi_agent.decide import inputs as i
from pi_agent.decide.decide import decide
from pi_agent.decide.model import QUEUED_TEXT, REPLY_STALL, Config, Link, Model, deadline, health, status
from pi_agent.decide.states import State
from pi_agent.engine import events as ev

S = State
NOW = 100.0
PCM = b"\x00\x00" * 160


def model(state: State = S.IDLE, **fields: Any) -> Model:
    config = fields.pop("config", Config())
    return Model(config=config, state=state, link=Link.OPEN, conversation_id="c1", **fields)


def sends(effects: list[fx.Effect]) -> list[str]:
    return [e.text for e in effects if isinstance(e, fx.Send)]


def published(effects: list[fx.Effect], kind: str) -> list[dict[str, Any]]:
    return [dict(e.event) for e in effects if isinstance(e, fx.Publish) and e.event["type"] == kind]


def logs(effects: list[fx.Effect]) -> list[tuple[str, str]]:
    return [(e.level, e.text) for e in effects if isinstance(e, fx.Log)]


def test_an_interruption_while_nothing_plays_leaves_the_state_and_the_reply_alone() -> None:
    """The service sends one before it answers text input: no "interrupted by the user",
    and the speaker's flush drops nothing of the reply to come (no local interrupt)."""
    after, effects = decide(model(S.IDLE), ev.Interrupted(7), NOW)
    assert after.state is S.IDLE
    assert fx.Flush(barge_in=True) in effects and fx.Flush() not in effects
    assert all(level == "debug" for level, _ in logs(effects))
    after, effects = decide(after, ev.AgentAudio(PCM, 16000, True), NOW + 0.1)
    assert after.state is S.SPEAKING


def test_a_barge_in_while_speaking_goes_back_to_listening() -> None:
    after, effects = decide(model(S.SPEAKING), ev.Interrupted(7), NOW)
    assert after.state is S.LISTENING and ("info", "interrupted by the user (interruption 7)") in logs(effects)


def test_speaking_ends_when_the_final_chunk_has_played_not_when_a_slow_link_drains_the_speaker() -> None:
    m, _ = decide(model(S.IDLE), ev.AgentAudio(PCM, 16000, True, final=True), NOW)  # the server marks ends
    m, _ = decide(m, i.PlayedOut(), NOW + 1)
    assert m.state is S.IDLE and m.marks_final
    m, _ = decide(m, ev.AgentAudio(PCM, 16000, True), NOW + 2)  # the next reply, on a slow link
    assert m.state is S.SPEAKING and not m.reply_complete
    m, _ = decide(m, i.PlayedOut(), NOW + 3)  # dry between two chunks: still speaking
    assert m.state is S.SPEAKING and m.dry_since == NOW + 3
    assert deadline(m) == NOW + 3 + REPLY_STALL
    m, _ = decide(m, ev.AgentAudio(PCM, 16000, False, final=True), NOW + 4)
    assert m.dry_since is None and m.reply_complete
    m, _ = decide(m, i.PlayedOut(), NOW + 5)
    assert m.state is S.IDLE


def test_a_reply_whose_final_chunk_never_comes_ends_after_the_stall_limit() -> None:
    m, _ = decide(model(S.IDLE), ev.AgentAudio(PCM, 16000, True), NOW)
    m, _ = decide(m, i.PlayedOut(), NOW)
    m, _ = decide(m, i.Tick(), NOW + REPLY_STALL - 0.5)
    assert m.state is S.SPEAKING
    m, effects = decide(m, i.Tick(), NOW + REPLY_STALL)
    assert m.state is S.IDLE and m.dry_since is None
    assert any("no chunk marked as its last" in text for _, text in logs(effects))


def test_a_server_that_marks_no_final_chunk_is_learnt_once() -> None:
    """The first reply without a final mark ends at the stall limit; from then on a drained
    speaker ends a reply, as before, until the server marks a last chunk again."""
    m, _ = decide(model(S.IDLE), ev.AgentAudio(PCM, 16000, True), NOW)
    m, _ = decide(m, i.PlayedOut(), NOW + 1)
    m, _ = decide(m, i.Tick(), NOW + 1 + REPLY_STALL)
    assert m.state is S.IDLE and not m.marks_final
    m, _ = decide(m, ev.Opened("c2", "pcm_16000", "pcm_16000"), NOW + 10)  # kept across conversations
    m, _ = decide(m, ev.AgentAudio(PCM, 16000, True), NOW + 11)
    m, _ = decide(m, i.PlayedOut(), NOW + 12)
    assert m.state is S.IDLE
    m, _ = decide(m, ev.AgentAudio(PCM, 16000, True, final=True), NOW + 13)
    assert m.marks_final


def test_a_tool_call_that_expects_no_response_is_published_and_not_answered() -> None:
    m = model(S.THINKING, tool_handlers=frozenset({"*"}))
    after, effects = decide(m, ev.ToolCall("lights", "t1", {"on": True}, expects_response=False), NOW)
    assert sends(effects) == [] and after.tools == ()
    assert published(effects, "client_tool_call")[0]["expects_response"] is False
    # ... while one that expects it and nobody handles is refused at once, as before
    _, effects = decide(model(S.THINKING), ev.ToolCall("lights", "t2", {}), NOW)
    assert len(sends(effects)) == 1 and '"is_error":true' in sends(effects)[0]


def mcp_call(name: str = "book_room", timeout: int | None = 300) -> ev.McpToolCall:
    return ev.McpToolCall(name, "m1", "awaiting_approval", {"room": 2}, "Books a room", timeout)


def test_an_mcp_tool_awaiting_approval_is_denied_at_once_by_default() -> None:
    after, effects = decide(model(S.THINKING), mcp_call(), NOW)
    assert sends(effects) == ['{"type":"mcp_tool_approval_result","tool_call_id":"m1","is_approved":false}']
    assert after.tools == ()
    assert any("mcp_allow" in text for level, text in logs(effects) if level == "info")


def test_an_allowed_mcp_tool_is_approved_at_once() -> None:
    m = model(S.THINKING, config=Config(mcp_allow=frozenset({"book_room"})))
    _, effects = decide(m, mcp_call(), NOW)
    assert sends(effects) == ['{"type":"mcp_tool_approval_result","tool_call_id":"m1","is_approved":true}']


def test_ask_publishes_the_request_and_takes_the_answer_of_an_event_api_client() -> None:
    m = model(S.THINKING, config=Config(mcp_approval="ask", tool_timeout=10.0))
    m, effects = decide(m, mcp_call(), NOW)
    assert sends(effects) == []
    [request] = published(effects, "mcp_tool_approval_request")
    assert request["tool_call_id"] == "m1" and request["parameters"] == {"room": 2} and request["timeout"] == 10.0
    assert deadline(m) == NOW + 10.0
    again, effects = decide(m, mcp_call(), NOW + 1)  # the same request again: still one pending
    assert again.tools == m.tools and sends(effects) == []
    _, effects = decide(m, i.ToolResult("m1", "yes", False), NOW + 2)  # not a client tool's answer
    assert sends(effects) == []
    m, effects = decide(m, i.McpApproval("m1", True), NOW + 2)
    assert sends(effects) == ['{"type":"mcp_tool_approval_result","tool_call_id":"m1","is_approved":true}']
    assert m.tools == () and published(effects, "mcp_tool_approval")[0]["approved"] is True


def test_ask_denies_when_nobody_answers_before_the_agent_would_give_up() -> None:
    m = model(S.THINKING, config=Config(mcp_approval="ask", tool_timeout=10.0))
    m, _ = decide(m, mcp_call(timeout=5), NOW)
    assert deadline(m) == NOW + 4.0  # a second before the agent's own approval timeout
    m, effects = decide(m, i.Tick(), NOW + 4.0)
    assert sends(effects) == ['{"type":"mcp_tool_approval_result","tool_call_id":"m1","is_approved":false}']
    assert any(level == "warning" and "denied" in text for level, text in logs(effects))


def test_other_mcp_states_are_only_published() -> None:
    _, effects = decide(model(S.THINKING), replace(mcp_call(), state="success"), NOW)
    assert sends(effects) == [] and published(effects, "mcp_tool_call")[0]["state"] == "success"


def test_queued_shows_waiting_for_the_agent_and_admitted_opens() -> None:
    m, effects = decide(model(S.IDLE), ev.Queued("waiting", True), NOW)
    assert m.state is S.CONNECTING and m.queued and not m.connected
    assert published(effects, "queue_status") == [{"type": "queue_status", "status": "waiting"}]
    assert [level for level, _ in logs(effects)] == ["warning"]
    assert status(m).queued and health(m) == (True, QUEUED_TEXT)
    m, effects = decide(m, ev.Queued("waiting", True), NOW + 1)  # repeated: said once
    assert logs(effects) == []
    m, _ = decide(m, ev.Queued("admitted", False), NOW + 5)
    assert m.state is S.IDLE and m.connected and not m.queued


def test_a_queue_before_the_metadata_opens_only_when_admitted() -> None:
    m = Model(state=S.CONNECTING, link=Link.CONNECTING)
    m, _ = decide(m, ev.Queued("waiting", True), NOW)
    m, _ = decide(m, ev.Opened("c1", "pcm_16000", "pcm_16000"), NOW + 1)
    assert m.state is S.CONNECTING and not m.connected
    m, _ = decide(m, ev.Queued("admitted", False), NOW + 2)
    assert m.state is S.IDLE and m.connected


def test_a_user_turn_under_way_is_kept_while_queued() -> None:
    m, _ = decide(model(S.LISTENING, in_turn=True), ev.Queued("waiting", True), NOW)
    assert m.state is S.LISTENING and m.in_turn
    m, _ = decide(m, ev.Queued("admitted", False), NOW + 1)
    assert m.state is S.LISTENING and m.connected


def test_a_client_error_is_logged_once_and_published() -> None:
    error = ev.ServerError("invalid_api_key", 1008, "Invalid API key", kind="client_error")
    m, effects = decide(model(S.IDLE), error, NOW)
    assert [level for level, _ in logs(effects)] == ["warning"]
    assert "invalid_api_key" in logs(effects)[0][1] and "Invalid API key" in logs(effects)[0][1]
    assert published(effects, "error")[0]["kind"] == "client_error"
    _, effects = decide(m, error, NOW + 1)
    assert [level for level, _ in logs(effects)] == ["debug"]
