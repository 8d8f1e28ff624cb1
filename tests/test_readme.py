"""The README stays true: its settings table is generated from the code, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from pi_agent.reference import markdown_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_settings_reference_is_current() -> None:
    m = re.search(r"<!-- settings-reference:start.*?-->\n(.*?)<!-- settings-reference:end -->", README, re.S)
    assert m, "settings reference markers missing"
    assert m.group(1).strip() == markdown_table().strip(), (
        "README settings table is stale: run `python -m pi_agent.reference` and paste it between the markers")


def test_two_setup_commands_exist_and_ci_calls_the_test_one() -> None:
    assert "./scripts/demo.sh" in README and "./scripts/test.sh" in README
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert (ROOT / script).stat().st_mode & 0o111
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
