"""The official contract the tests validate against is the repository's own copy."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "spec"


def test_the_contract_copy_is_the_one_its_readme_describes() -> None:
    readme = (SPEC / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"SHA-256 of the file as copied:\s*`([0-9a-f]{64})`", readme)
    assert stated, "spec/README.md must state the SHA-256 of the copied contract"
    actual = hashlib.sha256((SPEC / "agent.asyncapi.yaml").read_bytes()).hexdigest()
    assert actual == stated.group(1), "spec/agent.asyncapi.yaml changed: update its origin, version and hash"
    version = re.search(r'^  version: "([^"]+)"', (SPEC / "agent.asyncapi.yaml").read_text(encoding="utf-8"), re.M)
    assert version and f"contract version `{version.group(1)}`" in readme


def test_the_contract_keeps_its_licence_beside_it() -> None:
    licence = (SPEC / "LICENSE.agent-asyncapi").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "ElevenLabs" in licence
