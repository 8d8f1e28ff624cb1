"""The two vendored contracts load as the tests expect, and the rule between them holds:
a message is checked against 1.1.0 where it defines the type, else against 1.0.0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .support_spec import (
    CONTRACT_NAMES,
    client_schema_types,
    contract_for,
    server_schema_types,
    spec_path,
    validate_client_message,
    validate_server_message,
)

TOOL_CALL = {"tool_name": "set_timer", "tool_call_id": "t1", "parameters": {"minutes": 5}, "event_id": 3}


def fails(validate: Any, msg: dict[str, Any], contract: str | None = None) -> str:
    """The error ``validate`` raises for ``msg`` (failing the test if it raises none)."""
    with pytest.raises(AssertionError) as caught:
        validate(msg, contract=contract)
    return str(caught.value)


@pytest.mark.parametrize("contract", CONTRACT_NAMES)
def test_each_contract_lists_both_directions(contract: str) -> None:
    assert {"audio", "agent_response", "ping", "client_tool_call"} <= set(server_schema_types(contract))
    assert {"user_audio_chunk", "pong", "conversation_initiation_client_data"} <= set(client_schema_types(contract))
    # No type on both sides: a swapped publish/subscribe reading would show here.
    assert not set(server_schema_types(contract)) & set(client_schema_types(contract))


def test_the_1_1_contract_has_the_newer_types() -> None:
    assert {"client_error", "agent_response_metadata", "agent_response_complete"} <= set(server_schema_types("1.1.0"))
    assert {"mcp_tool_approval_result", "conversation_initiation_client_data"} <= set(client_schema_types("1.1.0"))
    assert "client_error" not in server_schema_types("1.0.0")


def test_the_combined_tables_are_the_union() -> None:
    assert set(server_schema_types()) == set(server_schema_types("1.0.0")) | set(server_schema_types("1.1.0"))
    assert set(client_schema_types()) == set(client_schema_types("1.0.0")) | set(client_schema_types("1.1.0"))


def test_the_newer_contract_wins_where_both_define_a_type() -> None:
    spec = contract_for("server", "audio")
    assert spec is not None and spec.name == "1.1.0"
    spec = contract_for("client", "conversation_initiation_client_data")
    assert spec is not None and spec.name == "1.1.0"


def test_agent_response_metadata_needs_its_metadata() -> None:
    event = {"event_id": 1, "conversation_id": "c"}
    error = fails(validate_server_message, {"type": "agent_response_metadata", "agent_response_metadata_event": event})
    assert "1.1.0" in error and "'metadata' is a required property" in error
    event["metadata"] = {}
    validate_server_message({"type": "agent_response_metadata", "agent_response_metadata_event": event})


def test_client_error_and_agent_response_complete_validate() -> None:
    validate_server_message({"type": "client_error", "error_event": {"code": 1008, "error_name": "x", "message": "m"}})
    fails(validate_server_message, {"type": "client_error", "error_event": {"code": "1008", "error_name": "x"}})
    validate_server_message({"type": "agent_response_complete", "agent_response_complete_event": {"event_id": 2}})
    fails(validate_server_message, {"type": "agent_response_complete", "agent_response_complete_event": {}})


def test_audio_may_say_it_is_the_last_chunk() -> None:
    audio = {"audio_base_64": "AAAA", "event_id": 4}
    validate_server_message({"type": "audio", "audio_event": {**audio, "is_final": True}})
    fails(validate_server_message, {"type": "audio", "audio_event": {**audio, "is_final": "yes"}})


def test_client_tool_call_must_say_whether_it_expects_a_response() -> None:
    validate_server_message({"type": "client_tool_call", "client_tool_call": {**TOOL_CALL, "expects_response": True}})
    without = {"type": "client_tool_call", "client_tool_call": TOOL_CALL}
    error = fails(validate_server_message, without)
    assert "1.1.0" in error and "'expects_response' is a required property" in error
    validate_server_message(without, contract="1.0.0")  # 1.0.0 did not have the field


def test_source_info_names_a_known_source() -> None:
    msg = {"type": "conversation_initiation_client_data", "source_info": {"source": "pi_agent", "version": "1.0"}}
    error = fails(validate_client_message, msg)
    assert "1.1.0" in error and "source_info/source" in error
    validate_client_message(msg, contract="1.0.0")  # free text in 1.0.0
    validate_client_message({**msg, "source_info": {"source": "unknown", "version": "1.0"}})


def test_mcp_tool_approval_result_validates() -> None:
    validate_client_message({"type": "mcp_tool_approval_result", "tool_call_id": "t1", "is_approved": True})
    error = fails(validate_client_message, {"type": "mcp_tool_approval_result", "tool_call_id": "t1"})
    assert "1.1.0" in error and "'is_approved' is a required property" in error


def test_nulls_1_0_allowed_fail_under_1_1() -> None:
    ping = {"type": "ping", "ping_event": {"event_id": 1, "ping_ms": None}}
    validate_server_message(ping, contract="1.0.0")
    assert "1.1.0" in fails(validate_server_message, ping)


def test_a_type_only_1_0_defines_is_validated_against_1_0() -> None:
    assert "tentative_user_transcript" not in server_schema_types("1.1.0")
    spec = contract_for("server", "tentative_user_transcript")
    assert spec is not None and spec.name == "1.0.0"
    event = {"user_transcript": "hi", "event_id": 1}
    msg = {"type": "tentative_user_transcript", "tentative_user_transcription_event": event}
    validate_server_message(msg)
    fails(validate_server_message, msg, contract="1.1.0")
    bad = {"type": "tentative_user_transcript", "tentative_user_transcription_event": {"user_transcript": "hi"}}
    error = fails(validate_server_message, bad)
    assert "contract 1.0.0" in error and "'event_id' is a required property" in error


@pytest.mark.parametrize("contract", [None, *CONTRACT_NAMES])
def test_a_made_up_type_fails(contract: str | None) -> None:
    error = fails(validate_server_message, {"type": "made_up_event"}, contract)
    assert "unknown type 'made_up_event'" in error
    for name in CONTRACT_NAMES if contract is None else (contract,):
        assert f"contract {name}" in error
    fails(validate_client_message, {"type": "made_up_event"}, contract)


def test_messages_without_a_type_fail() -> None:
    fails(validate_server_message, {"audio_event": {"audio_base_64": "", "event_id": 1}})
    fails(validate_client_message, {"text": "hello"})
    validate_client_message({"user_audio_chunk": "AAAA"})


def test_each_path_can_be_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert spec_path("1.1.0").name == "agent-realtime-1.1.0.asyncapi.yaml"
    monkeypatch.setenv("PI_AGENT_SPEC_1_1", str(tmp_path / "a.yaml"))
    monkeypatch.setenv("PI_AGENT_SPEC", str(tmp_path / "b.yaml"))
    assert spec_path("1.1.0") == tmp_path / "a.yaml"
    assert spec_path() == spec_path("1.0.0") == tmp_path / "b.yaml"
