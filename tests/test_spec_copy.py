"""The official contracts the tests validate against are the repository's own copies."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import yaml

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


def test_the_1_1_contract_copy_is_the_one_its_readme_describes() -> None:
    readme = (SPEC / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"SHA-256 of the 1\.1\.0 file as copied:\s*`([0-9a-f]{64})`", readme)
    assert stated, "spec/README.md must state the SHA-256 of the copied 1.1.0 contract"
    copy = SPEC / "agent-realtime-1.1.0.asyncapi.yaml"
    actual = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert actual == stated.group(1), f"{copy.name} changed: update its origin, version and hash"
    version = yaml.safe_load(copy.read_text(encoding="utf-8"))["info"]["version"]
    assert version == "1.1.0", f"{copy.name} says version {version!r}"
    assert f"contract version `{version}`" in readme


def test_the_1_1_contract_keeps_its_licence_beside_it() -> None:
    licence = (SPEC / "LICENSE.agent-realtime-1.1.0").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Elevenlabs" in licence
    assert "LICENSE.agent-realtime-1.1.0" in (SPEC / "README.md").read_text(encoding="utf-8")
