"""The agent protocol's AsyncAPI contracts as JSON Schema validators, for tests.

Two contracts live in ``spec/`` (see ``spec/README.md``):

- ``1.0.0``, ``spec/agent.asyncapi.yaml`` (``PI_AGENT_SPEC`` overrides the path): ``publish`` lists
  the server-to-client messages and ``subscribe`` the client-to-server ones; types are ``const``.
- ``1.1.0``, ``spec/agent-realtime-1.1.0.asyncapi.yaml`` (``PI_AGENT_SPEC_1_1`` overrides the path):
  the usual reading, ``publish`` is client-to-server; types are ``x-fern-type: literal<"...">``.

Loading turns OpenAPI's ``nullable: true`` into "null is also allowed" and ``x-fern-type: literal<"x">``
into ``const: "x"``; payloads may be inline or ``$ref``, resolved through a schema registry.

The rule: a message is checked against the newest contract that defines its type, else it fails.
``validate_server_message(msg)`` / ``validate_client_message(msg)`` raise an ``AssertionError``
naming the message type, the contract and the schema error; ``contract="1.0.0"`` (or ``"1.1.0"``)
checks against that contract only.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_DIR = Path(__file__).resolve().parents[1] / "spec"


@dataclass(frozen=True)
class ContractInfo:
    name: str  # the contract version, as messages and tests name it
    file: str  # in spec/
    env: str  # the variable that points the tests at another copy
    channel: str
    server_op: str  # the operation that lists server-to-client messages
    client_op: str


# Newest first: the first contract that defines a message type validates it.
CONTRACTS = (
    ContractInfo("1.1.0", "agent-realtime-1.1.0.asyncapi.yaml", "PI_AGENT_SPEC_1_1",
                 "/v1/convai/conversation", server_op="subscribe", client_op="publish"),
    ContractInfo("1.0.0", "agent.asyncapi.yaml", "PI_AGENT_SPEC",
                 "AgentMessages", server_op="publish", client_op="subscribe"),
)
CONTRACT_NAMES = tuple(c.name for c in CONTRACTS)


def _info(name: str) -> ContractInfo:
    for info in CONTRACTS:
        if info.name == name:
            return info
    raise ValueError(f"no contract {name!r}; known: {', '.join(CONTRACT_NAMES)}")


def spec_path(name: str = "1.0.0") -> Path:
    """Where contract ``name`` is: its environment variable, else the copy in the repository's ``spec/``."""
    info = _info(name)
    env = os.environ.get(info.env)
    return Path(env) if env else SPEC_DIR / info.file


_LITERAL = re.compile(r'literal<"([^"]*)">')


def _normalize(node: Any) -> Any:
    """Copy of ``node`` as plain JSON Schema: ``nullable: true`` admits null, fern literals become ``const``."""
    if isinstance(node, list):
        return [_normalize(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _normalize(value) for key, value in node.items()}
    literal = _LITERAL.fullmatch(str(node.get("x-fern-type", "")))
    if literal:
        node.setdefault("type", "string")
        node.setdefault("const", literal.group(1))
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


def _pointer(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


class Spec:
    """One loaded contract: message type -> payload schema pointer, for both directions."""

    def __init__(self, name: str = "1.0.0", path: Path | None = None) -> None:
        info = _info(name)
        self.name = name
        self.path = path or spec_path(name)
        with open(self.path, encoding="utf-8") as f:
            self.document: dict[str, Any] = _normalize(yaml.safe_load(f))
        self.uri = f"urn:pi-agent:agent-asyncapi:{name}"
        self.registry: Registry = Registry().with_resource(self.uri, Resource.from_contents(self.document, DRAFT202012))
        self.format_checker = jsonschema.FormatChecker()
        self.format_checker.checks("base64")(_check_base64)
        self.format_checker.checks("date-time")(_check_date_time)
        self.server_schemas = self._by_type(info.channel, info.server_op)
        self.client_schemas = self._by_type(info.channel, info.client_op)
        # A swapped direction label would put the microphone audio on the server side.
        assert "user_audio_chunk" in self.client_schemas, f"{self.label}: no user_audio_chunk among client messages"
        assert "user_audio_chunk" not in self.server_schemas, f"{self.label}: user_audio_chunk among server messages"
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    @property
    def label(self) -> str:
        return f"contract {self.name} ({self.path.name})"

    def _resolve(self, pointer: str) -> tuple[str, Any]:
        """The node at ``pointer``, following ``$ref`` chains: (final pointer, node)."""
        while True:
            assert pointer.startswith("#/"), f"unexpected reference {pointer!r} in {self.label}"
            node: Any = self.document
            for part in pointer[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                node = node[int(part) if isinstance(node, list) else part]
            if not (isinstance(node, dict) and "$ref" in node):
                return pointer, node
            pointer = node["$ref"]

    def _by_type(self, channel: str, op: str) -> dict[str, str]:
        """Map each message's ``type`` constant (or ``user_audio_chunk``) to its payload schema pointer."""
        message_list = _pointer("channels", channel, op, "message")
        _, message = self._resolve(message_list)
        entries = [f"{message_list}/oneOf/{i}" for i in range(len(message["oneOf"]))] if "oneOf" in message \
            else [message_list]
        out: dict[str, str] = {}
        for entry in entries:
            message_ptr, _ = self._resolve(entry)
            payload_ptr, payload = self._resolve(f"{message_ptr}/payload")
            type_schema = payload.get("properties", {}).get("type", {})
            if "const" in type_schema:
                kind = type_schema["const"]
            elif "user_audio_chunk" in payload.get("required", []):
                kind = "user_audio_chunk"
            else:
                raise AssertionError(f"cannot tell the message type of {payload_ptr} in {self.label}")
            assert kind not in out, f"{kind!r} listed twice in {self.label}"
            out[kind] = payload_ptr
        return out

    def validator(self, pointer: str) -> jsonschema.protocols.Validator:
        if pointer not in self._validators:
            self._validators[pointer] = jsonschema.Draft202012Validator(
                {"$ref": f"{self.uri}{pointer}"}, registry=self.registry, format_checker=self.format_checker
            )
        return self._validators[pointer]

    def schemas(self, direction: str) -> dict[str, str]:
        return {"server": self.server_schemas, "client": self.client_schemas}[direction]

    def validate(self, direction: str, msg: Any) -> None:
        kind = message_type(direction, msg)
        schemas = self.schemas(direction)
        if kind not in schemas:
            raise AssertionError(f"{direction} message of unknown type {kind!r} (not in {self.label}): {_short(msg)}")
        errors = sorted(self.validator(schemas[kind]).iter_errors(msg), key=lambda e: list(e.absolute_path))
        if errors:
            detail = "; ".join(
                f"at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in errors[:5]
            )
            raise AssertionError(
                f"{direction} message {kind!r} does not match {self.label}: {detail}; message: {_short(msg)}")

    def validate_server_message(self, msg: Any) -> None:
        self.validate("server", msg)

    def validate_client_message(self, msg: Any) -> None:
        self.validate("client", msg)


def message_type(direction: str, msg: Any) -> str:
    """The ``type`` of a message (``user_audio_chunk`` for client audio, which has none)."""
    if not isinstance(msg, dict):
        raise AssertionError(f"{direction} message is not a JSON object: {_short(msg)}")
    kind = msg.get("type")
    if kind is None and direction == "client" and "user_audio_chunk" in msg:
        kind = "user_audio_chunk"
    if not isinstance(kind, str):
        raise AssertionError(f"{direction} message without a string 'type': {_short(msg)}")
    return kind


def _short(msg: Any, limit: int = 300) -> str:
    text = repr(msg)
    return text if len(text) <= limit else text[:limit] + "..."


@functools.cache
def _load(name: str, path: Path) -> Spec:
    return Spec(name, path)


def load_contract(name: str) -> Spec:
    """Contract ``name`` (``"1.0.0"`` or ``"1.1.0"``), loaded once per path."""
    return _load(name, spec_path(name))


def contract_for(direction: str, kind: str) -> Spec | None:
    """The contract that validates ``direction`` ("server" or "client") messages of ``kind``: the newest defining it."""
    for name in CONTRACT_NAMES:
        spec = load_contract(name)
        if kind in spec.schemas(direction):
            return spec
    return None


def _validate(direction: str, msg: Any, contract: str | None) -> None:
    if contract is not None:
        load_contract(contract).validate(direction, msg)
        return
    kind = message_type(direction, msg)
    spec = contract_for(direction, kind)
    if spec is None:
        names = " nor ".join(load_contract(n).label for n in CONTRACT_NAMES)
        raise AssertionError(f"{direction} message of unknown type {kind!r} (in neither {names}): {_short(msg)}")
    spec.validate(direction, msg)


def validate_server_message(msg: dict[str, Any], contract: str | None = None) -> None:
    """Raise ``AssertionError`` unless ``msg`` is a server-to-client message the contracts allow."""
    _validate("server", msg, contract)


def validate_client_message(msg: dict[str, Any], contract: str | None = None) -> None:
    """Raise ``AssertionError`` unless ``msg`` is a client-to-server message the contracts allow."""
    _validate("client", msg, contract)


def _types(direction: str, contract: str | None) -> list[str]:
    names = CONTRACT_NAMES if contract is None else (contract,)
    return sorted({kind for name in names for kind in load_contract(name).schemas(direction)})


def server_schema_types(contract: str | None = None) -> list[str]:
    """Every server-to-client ``type`` the contracts (or the one named) list."""
    return _types("server", contract)


def client_schema_types(contract: str | None = None) -> list[str]:
    """Every client-to-server ``type`` the contracts (or the one named) list (``user_audio_chunk`` for mic audio)."""
    return _types("client", contract)


__all__ = [
    "CONTRACTS",
    "CONTRACT_NAMES",
    "Spec",
    "client_schema_types",
    "contract_for",
    "load_contract",
    "message_type",
    "server_schema_types",
    "spec_path",
    "validate_client_message",
    "validate_server_message",
]
