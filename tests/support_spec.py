"""The agent protocol's AsyncAPI contract as JSON Schema validators, for tests.

Loads the project's own copy, ``spec/agent.asyncapi.yaml`` (``PI_AGENT_SPEC`` overrides the path),
turns OpenAPI's ``nullable: true`` into "null is also allowed", and resolves the
``#/components/...`` references through a schema registry. In that file ``publish``
lists the server-to-client messages and ``subscribe`` the client-to-server ones.

``validate_server_message(msg)`` / ``validate_client_message(msg)`` raise an
``AssertionError`` that names the message type and the schema error.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_URI = "urn:pi-agent:agent-asyncapi"


def spec_path() -> Path:
    """Where the contract is: ``$PI_AGENT_SPEC``, else the copy in the repository's ``spec/``."""
    env = os.environ.get("PI_AGENT_SPEC")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "spec" / "agent.asyncapi.yaml"


def _allow_null(node: Any) -> Any:
    """Copy of ``node`` with every ``nullable: true`` turned into JSON Schema that admits null."""
    if isinstance(node, list):
        return [_allow_null(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _allow_null(value) for key, value in node.items()}
    if not node.pop("nullable", False):
        return node
    kind = node.get("type")
    if isinstance(kind, str) and "$ref" not in node:
        node["type"] = [kind, "null"]
        if "enum" in node and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        return node
    # A $ref (or a composition) with siblings: accept either the schema or null.
    keep = {k: node.pop(k) for k in ("description", "default", "title") if k in node}
    return {**keep, "anyOf": [node, {"type": "null"}]}


def _check_base64(value: object) -> bool:
    if not isinstance(value, str):
        return True  # "format" only constrains strings; the type check reports the rest
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _check_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


class Spec:
    """The loaded contract: message type -> payload schema, for both directions."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or spec_path()
        with open(self.path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
        self.document: dict[str, Any] = _allow_null(raw)
        self.registry: Registry = Registry().with_resource(SPEC_URI, Resource.from_contents(self.document, DRAFT202012))
        self.format_checker = jsonschema.FormatChecker()
        self.format_checker.checks("base64")(_check_base64)
        self.format_checker.checks("date-time")(_check_date_time)
        channel = self.document["channels"]["AgentMessages"]
        self.server_schemas = self._by_type(channel["publish"]["message"]["oneOf"])
        self.client_schemas = self._by_type(channel["subscribe"]["message"]["oneOf"])
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def _resolve(self, ref: str) -> tuple[str, dict[str, Any]]:
        assert ref.startswith("#/"), f"unexpected reference {ref!r} in the spec"
        node: Any = self.document
        for part in ref[2:].split("/"):
            node = node[part]
        return ref, node

    def _by_type(self, refs: list[dict[str, str]]) -> dict[str, str]:
        """Map each message's ``type`` constant (or ``user_audio_chunk``) to its payload schema ref."""
        out: dict[str, str] = {}
        for entry in refs:
            _, message = self._resolve(entry["$ref"])
            payload_ref, payload = self._resolve(message["payload"]["$ref"])
            type_schema = payload.get("properties", {}).get("type", {})
            if "const" in type_schema:
                out[type_schema["const"]] = payload_ref
            elif "user_audio_chunk" in payload.get("required", []):
                out["user_audio_chunk"] = payload_ref
            else:
                raise AssertionError(f"cannot tell the message type of {payload_ref}")
        return out

    def validator(self, ref: str) -> jsonschema.protocols.Validator:
        if ref not in self._validators:
            schema = {"$ref": f"{SPEC_URI}{ref}"}
            self._validators[ref] = jsonschema.Draft202012Validator(
                schema, registry=self.registry, format_checker=self.format_checker
            )
        return self._validators[ref]

    def _validate(self, direction: str, schemas: dict[str, str], msg: Any, kind: str) -> None:
        if kind not in schemas:
            raise AssertionError(f"{direction} message of unknown type {kind!r} (not in the spec): {_short(msg)}")
        errors = sorted(self.validator(schemas[kind]).iter_errors(msg), key=lambda e: list(e.absolute_path))
        if errors:
            detail = "; ".join(
                f"at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in errors[:5]
            )
            raise AssertionError(
                f"{direction} message {kind!r} does not match the spec: {detail}; message: {_short(msg)}")

    def validate_server_message(self, msg: Any) -> None:
        kind = msg.get("type") if isinstance(msg, dict) else None
        if not isinstance(kind, str):
            raise AssertionError(f"server message without a string 'type': {_short(msg)}")
        self._validate("server", self.server_schemas, msg, kind)

    def validate_client_message(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            raise AssertionError(f"client message is not a JSON object: {_short(msg)}")
        kind = msg.get("type")
        if kind is None and "user_audio_chunk" in msg:
            kind = "user_audio_chunk"
        if not isinstance(kind, str):
            raise AssertionError(f"client message without a string 'type': {_short(msg)}")
        self._validate("client", self.client_schemas, msg, kind)


def _short(msg: Any, limit: int = 300) -> str:
    text = repr(msg)
    return text if len(text) <= limit else text[:limit] + "..."


@functools.cache
def load_spec(path: str | None = None) -> Spec:
    """The contract, loaded once per path."""
    return Spec(Path(path) if path else None)


def validate_server_message(msg: dict[str, Any]) -> None:
    """Raise ``AssertionError`` unless ``msg`` is a server-to-client message the spec allows."""
    load_spec().validate_server_message(msg)


def validate_client_message(msg: dict[str, Any]) -> None:
    """Raise ``AssertionError`` unless ``msg`` is a client-to-server message the spec allows."""
    load_spec().validate_client_message(msg)


def server_schema_types() -> list[str]:
    """Every server-to-client ``type`` the spec lists."""
    return sorted(load_spec().server_schemas)


def client_schema_types() -> list[str]:
    """Every client-to-server ``type`` the spec lists (``user_audio_chunk`` for mic audio)."""
    return sorted(load_spec().client_schemas)


__all__ = [
    "Spec",
    "client_schema_types",
    "load_spec",
    "server_schema_types",
    "spec_path",
    "validate_client_message",
    "validate_server_message",
]
