"""The protocol core: every server message decodes to its type, bad frames raise ProtocolError only."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pi_agent.engine import protocol as p
from pi_agent.errors import ProtocolError
from .support_spec import validate_client_message, validate_server_message

PCM = b"\x01\x00\xff\x7f" * 40
B64 = base64.b64encode(PCM).decode()

# One example of every server-to-client message of the spec, and the event it must become.
SERVER_EXAMPLES: list[tuple[dict, type]] = [
    ({"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": {
        "conversation_id": "c1", "agent_output_audio_format": "pcm_44100",
        "user_input_audio_format": "pcm_16000"}}, p.ConversationMetadata),
    ({"type": "audio", "audio_event": {"audio_base_64": B64, "event_id": 3}}, p.Audio),
    ({"type": "audio", "audio_event": {"audio_base_64": B64, "event_id": 3, "is_final": True}}, p.Audio),
    ({"type": "user_transcript", "user_transcription_event": {
        "user_transcript": "hi", "event_id": 2}}, p.UserTranscript),
    ({"type": "tentative_user_transcript", "tentative_user_transcription_event": {
        "user_transcript": "h", "event_id": 2}}, p.TentativeUserTranscript),
    ({"type": "agent_response", "agent_response_event": {"agent_response": "hello", "event_id": 3}}, p.AgentResponse),
    ({"type": "agent_response_correction", "agent_response_correction_event": {
        "original_agent_response": "a b", "corrected_agent_response": "a", "event_id": 3}}, p.AgentResponseCorrection),
    ({"type": "agent_chat_response_part", "text_response_part": {
        "text": "x", "type": "delta", "event_id": 3}}, p.AgentChatResponsePart),
    ({"type": "agent_reasoning_response_part", "reasoning_response_part": {
        "text": "x", "type": "start", "event_id": "r1"}}, p.AgentReasoningResponsePart),
    ({"type": "interruption", "interruption_event": {"event_id": 3}}, p.Interruption),
    ({"type": "ping", "ping_event": {"event_id": 4}}, p.Ping),
    ({"type": "ping", "ping_event": {"event_id": 4, "ping_ms": 35}}, p.Ping),
    ({"type": "client_tool_call", "client_tool_call": {
        "tool_name": "t", "tool_call_id": "id", "parameters": {"a": 1}, "event_id": 5,
        "expects_response": False}}, p.ClientToolCall),
    ({"type": "rich_content", "rich_content": {
        "rich_content_id": "r", "component": "item_card", "props": {}, "event_id": 5}}, p.RichContent),
    ({"type": "agent_tool_request", "agent_tool_request": {
        "tool_name": "t", "tool_call_id": "i", "tool_type": "client", "event_id": 5, "expects_response": True,
        "disable_interruptions": False, "response_timeout_secs": 20, "execution_mode": "immediate"}},
     p.AgentToolRequest),
    ({"type": "agent_tool_response", "agent_tool_response": {
        "tool_name": "end_call", "tool_call_id": "i", "tool_type": "system", "is_error": False, "is_called": True,
        "event_id": 5}}, p.AgentToolResponse),
    ({"type": "agent_tool_response_full_payload", "agent_tool_response_full_payload": {
        "tool_name": "t", "tool_call_id": "i", "tool_type": "client", "is_error": False, "is_called": True,
        "event_id": 5, "full_tool_result": "{}"}}, p.AgentToolResponseFullPayload),
    ({"type": "mcp_tool_call", "mcp_tool_call": {
        "service_id": "s", "tool_call_id": "i", "tool_name": "t", "parameters": {}, "timestamp": "2026-01-01T00:00:00Z",
        "state": "loading"}}, p.McpToolCall),
    ({"type": "mcp_tool_call", "mcp_tool_call": {
        "service_id": "s", "tool_call_id": "i", "tool_name": "t", "tool_description": "Books a room",
        "parameters": {"room": 2}, "timestamp": "2026-01-01T00:00:00Z", "state": "awaiting_approval",
        "approval_timeout_secs": 300}}, p.McpToolCall),
    ({"type": "mcp_connection_status", "mcp_connection_status": {
        "integrations": [{"integration_id": "i", "integration_type": "mcp_server", "is_connected": True,
                          "tool_count": 1}]}}, p.McpConnectionStatus),
    ({"type": "vad_score", "vad_score_event": {"vad_score": 0.5}}, p.VadScore),
    ({"type": "context_usage", "context_usage_event": {
        "event_id": 6, "model": "m", "context_tokens": 10, "context_limit_tokens": 100}}, p.ContextUsage),
    ({"type": "asr_initiation_metadata", "asr_initiation_metadata_event": {}}, p.AsrInitiationMetadata),
    ({"type": "guardrail_triggered", "guardrail_triggered_event": {"guardrail_name": "g"}}, p.GuardrailTriggered),
    ({"type": "internal_turn_probability", "turn_probability_internal_event": {
        "turn_probability": 0.3}}, p.InternalTurnProbability),
    ({"type": "internal_tentative_agent_response", "tentative_agent_response_internal_event": {
        "tentative_agent_response": "x"}}, p.InternalTentativeAgentResponse),
    ({"type": "agent_typing", "agent_typing_event": {"is_typing": True}}, p.AgentTyping),
    ({"type": "external_agent_connected", "external_agent_connected_event": {}}, p.ExternalAgentConnected),
    ({"type": "external_agent_disconnected"}, p.ExternalAgentDisconnected),
    ({"type": "error", "error_event": {"code": 1008, "message": "bad", "error_type": "invalid_message"}}, p.ErrorEvent),
    ({"type": "client_error", "error_event": {"code": 1008, "error_name": "invalid_api_key",
                                              "message": "Invalid API key"}}, p.ClientError),
    ({"type": "agent_response_metadata", "agent_response_metadata_event": {"event_id": 3, "metadata": {"k": "v"}}},
     p.AgentResponseMetadata),
    ({"type": "agent_response_complete", "agent_response_complete_event": {"event_id": 3}},
     p.AgentResponseComplete),
]


# What servers send that the copied contract does not describe: each with where it is from.
OUTSIDE_SPEC_EXAMPLES: list[tuple[dict, type, str]] = [
    ({"type": "agent_chat_response_part", "text_response_part": {"text": "Hel", "type": "delta",
                                                                 "event_id": "evt_123456"}},
     p.AgentChatResponsePart, "the official docs show string ids; the contract types them as integers"),
    ({"type": "queue_status", "queue_status_event": {"status": "waiting"}},
     p.QueueStatus, "in neither contract; the official widget reads it (packages/convai-widget-core)"),
]


def test_examples_cover_every_server_type_of_the_spec() -> None:
    spec_types = {m["type"] for m, _ in SERVER_EXAMPLES}
    assert spec_types | {m["type"] for m, _, _ in OUTSIDE_SPEC_EXAMPLES} == set(p.SERVER_MESSAGE_TYPES)


@pytest.mark.parametrize(("message", "kind", "source"), OUTSIDE_SPEC_EXAMPLES,
                         ids=[m["type"] for m, _, _ in OUTSIDE_SPEC_EXAMPLES])
def test_messages_outside_the_contract_are_decoded_too(message: dict, kind: type, source: str) -> None:
    event = p.decode(json.dumps(message))
    assert isinstance(event, kind)
    if isinstance(event, p.QueueStatus):
        assert event.status == message["queue_status_event"]["status"]
    else:
        assert event.event_id == message["text_response_part"]["event_id"]


def test_text_part_ids_are_kept_as_they_came() -> None:
    for event_id in (3, "evt_3"):
        part = p.decode(json.dumps({"type": "agent_chat_response_part", "text_response_part": {
            "text": "a", "type": "delta", "event_id": event_id}}))
        assert part == p.AgentChatResponsePart("a", "delta", event_id)
    with pytest.raises(ProtocolError):
        p.decode('{"type":"agent_chat_response_part","text_response_part":{"text":"a","type":"delta","event_id":[1]}}')


def test_contextual_update_with_a_context_id_validates() -> None:
    msg = json.loads(p.encode_contextual_update("door open", context_id="door"))
    assert msg == {"type": "contextual_update", "text": "door open", "context_id": "door"}
    validate_client_message(msg)
    assert "context_id" not in json.loads(p.encode_contextual_update("x"))


@pytest.mark.parametrize(("message", "kind"), SERVER_EXAMPLES, ids=[m["type"] for m, _ in SERVER_EXAMPLES])
def test_decode_every_server_message(message: dict, kind: type) -> None:
    validate_server_message(message)
    event = p.decode(json.dumps(message))
    assert isinstance(event, kind)


def test_audio_decodes_base64_and_event_id() -> None:
    ev = p.decode(json.dumps(SERVER_EXAMPLES[1][0]))
    assert isinstance(ev, p.Audio) and ev.audio == PCM and ev.event_id == 3 and not ev.final
    assert p.decode(json.dumps(SERVER_EXAMPLES[2][0])) == p.Audio(3, PCM, None, True)


def test_newer_contract_fields_are_read() -> None:
    """1.1.0: a tool call that expects no result, an MCP tool awaiting approval, client_error."""
    call = p.decode(json.dumps(next(m for m, _ in SERVER_EXAMPLES if m["type"] == "client_tool_call")))
    assert isinstance(call, p.ClientToolCall) and call.expects_response is False
    legacy = p.decode('{"type":"client_tool_call","client_tool_call":{"tool_name":"t","tool_call_id":"i",'
                      '"parameters":{},"event_id":1}}')
    assert isinstance(legacy, p.ClientToolCall) and legacy.expects_response is True  # 1.0.0: always awaited
    mcp = p.decode(json.dumps(next(m for m, _ in SERVER_EXAMPLES
                                   if m.get("mcp_tool_call", {}).get("state") == "awaiting_approval")))
    assert isinstance(mcp, p.McpToolCall)
    assert (mcp.state, mcp.parameters, mcp.description, mcp.approval_timeout) == (
        "awaiting_approval", {"room": 2}, "Books a room", 300)
    meta = p.decode(json.dumps(next(m for m, _ in SERVER_EXAMPLES if m["type"] == "agent_response_metadata")))
    assert meta == p.AgentResponseMetadata(3, {"k": "v"})
    err = p.decode(json.dumps(next(m for m, _ in SERVER_EXAMPLES if m["type"] == "client_error")))
    assert err == p.ClientError(1008, "invalid_api_key", "Invalid API key")
    approval = json.loads(p.encode_mcp_approval("i", False))
    assert approval == {"type": "mcp_tool_approval_result", "tool_call_id": "i", "is_approved": False}
    validate_client_message(approval)


def test_numeric_string_event_ids_are_accepted_like_the_sdk() -> None:
    ev = p.decode('{"type":"interruption","interruption_event":{"event_id":"7"}}')
    assert ev == p.Interruption(7)


def test_unknown_type_is_not_an_error() -> None:
    ev = p.decode('{"type":"future_status","future_status_event":{"status":"timed_out"}}')
    assert isinstance(ev, p.Unknown) and ev.type == "future_status"


@pytest.mark.parametrize("frame", [
    b"\x00\x01binary",
    "not json",
    "[1, 2]",
    '{"no_type": 1}',
    '{"type": "audio"}',
    '{"type": "audio", "audio_event": {"event_id": 1}}',
    '{"type": "audio", "audio_event": {"audio_base_64": "@@@", "event_id": 1}}',
    '{"type": "audio", "audio_event": {"audio_base_64": 5, "event_id": 1}}',
    '{"type": "audio", "audio_event": {"audio_base_64": "AAAA", "event_id": "x"}}',
    '{"type": "ping", "ping_event": {"event_id": true}}',
    '{"type": "conversation_initiation_metadata", "conversation_initiation_metadata_event": '
    '{"conversation_id": "c", "agent_output_audio_format": "mp3_44100", "user_input_audio_format": "pcm_16000"}}',
    '{"type": "interruption", "interruption_event": []}',
    "[" * 100000,
])
def test_malformed_frames_raise_protocol_error(frame: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        p.decode(frame)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.builds(lambda t, body: json.dumps({"type": t, **body}),
              st.sampled_from(sorted(p.SERVER_MESSAGE_TYPES)),
              st.dictionaries(st.sampled_from([
                  "audio_event", "ping_event", "interruption_event", "client_tool_call", "error_event",
                  "conversation_initiation_metadata_event", "user_transcription_event", "agent_response_event",
                  "vad_score_event", "agent_tool_response"]), json_values, max_size=3)),
))
def test_decoder_never_raises_anything_but_protocol_error(frame: str | bytes) -> None:
    with contextlib.suppress(ProtocolError):
        p.decode(frame)


CLIENT_MESSAGES = [
    p.encode_user_audio(PCM),
    p.encode_pong(12),
    p.encode_initiation(dynamic_variables={"name": "Ana", "n": 2}, overrides={"agent": {"first_message": "Hi"}},
                        user_id="kiosk-1", version="pi-agent/0.1.0"),
    p.encode_initiation(),
    p.encode_tool_result("call-1", "22 degrees", is_error=False),
    p.encode_contextual_update("the door opened"),
    p.encode_user_message("hello"),
    p.encode_user_activity(),
]


@pytest.mark.parametrize("text", CLIENT_MESSAGES)
def test_every_client_message_validates_against_the_spec(text: str) -> None:
    validate_client_message(json.loads(text))


def test_audio_message_round_trips() -> None:
    assert base64.b64decode(json.loads(p.encode_user_audio(PCM))["user_audio_chunk"]) == PCM
