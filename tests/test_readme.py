"""The README stays true: its settings table is generated from the code, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from pi_agent.config import ENV_PREFIX
from pi_agent.reference import markdown_table, setting_paths

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_settings_reference_is_current() -> None:
    m = re.search(r"<!-- settings-reference:start.*?-->\n(.*?)<!-- settings-reference:end -->", README, re.S)
    assert m, "settings reference markers missing"
    assert m.group(1).strip() == markdown_table().strip(), (
        "README settings table is stale: run `python -m pi_agent.reference` and paste it between the markers")


def test_the_settings_table_has_every_setting() -> None:
    m = re.search(r"<!-- settings-reference:start.*?-->\n(.*?)<!-- settings-reference:end -->", README, re.S)
    assert m
    rows = {line.split("|")[1].strip().strip("`") for line in m.group(1).splitlines() if line.startswith("| `")}
    wanted = {ENV_PREFIX + p.upper().replace(".", "__") for p in setting_paths()}
    assert wanted - rows == set(), "settings missing from the README table"
    assert len(setting_paths()) > 50


def test_troubleshooting_is_linked_and_covers_a_first_install() -> None:
    assert "docs/troubleshooting.md" in README
    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    for topic in ("No sound", "Microphone silent", "Device busy", "Offline", "401", "403", "LEDs dark",
                  "wake word", "hears itself", "clock", "group"):
        assert topic.lower() in text.lower(), topic


def test_two_setup_commands_exist_and_ci_calls_the_test_one() -> None:
    assert "./scripts/demo.sh" in README and "./scripts/test.sh" in README
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert (ROOT / script).stat().st_mode & 0o111
    assert "./scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
