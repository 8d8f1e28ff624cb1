"""The installer's config template, generated from the settings model (:mod:`pi_agent.reference`):
every setting is in it with its default and meaning, commented out, and it is valid TOML
that pi-agent's own loader accepts once every setting line is uncommented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pi_agent.config import Settings, load_settings
from pi_agent.reference import EXAMPLES, config_template, main, markdown_table, setting_paths

SETTING_LINE = re.compile(r"# ([a-z_]+) = (.+?)(  # an example \((?:required|unset by default)\))?")


def _sections(text: str) -> dict[str, list[str]]:
    """The template's lines by [section] ("" for the top-level keys)."""
    out: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        m = re.fullmatch(r"\[([a-z_.]+)\]", line)
        if m:
            current = m.group(1)
            out[current] = []
        else:
            out[current].append(line)
    return out


def _uncommented(text: str) -> str:
    lines = []
    for line in text.splitlines():
        m = SETTING_LINE.fullmatch(line)
        lines.append(f"{m.group(1)} = {m.group(2)}" if m else line)
    return "\n".join(lines) + "\n"


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_setting_is_in_the_template_under_its_section() -> None:
    sections = _sections(config_template())
    missing = []
    for dotted in setting_paths():
        section, _, name = dotted.rpartition(".")
        lines = sections.get(section, [])
        if dotted == "api_key":
            continue
        if not [line for line in lines if line.startswith(f"# {name} = ")]:
            missing.append(dotted)
        if not [line for line in lines if line.startswith(f"# {name}: ")]:
            missing.append(f"{dotted} (its description)")
    assert not missing, f"the template misses {missing}"
    assert set(sections) == {"", *(p.rpartition(".")[0] for p in setting_paths() if "." in p)}


def test_the_api_key_is_no_value_but_says_where_it_goes() -> None:
    text = config_template()
    assert not re.search(r"^#? ?api_key\s*=", text, re.M)
    top = "\n".join(_sections(text)[""])
    assert "# api_key: " in top and "/etc/pi-agent/api_key" in top and "LoadCredential=" in top


def test_every_line_is_a_comment_and_nothing_is_set() -> None:
    text = config_template()
    assert all(not line or line.startswith(("#", "[")) for line in text.splitlines())
    data = tomllib.loads(text)
    assert all(value == {} for value in data.values()), "only empty sections until the admin sets something"


def test_uncommented_it_loads_with_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("PI_AGENT_") or v == "ELEVENLABS_API_KEY"]:
        monkeypatch.delenv(var)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    text = config_template()
    uncommented = _uncommented(text)
    set_lines = [line for line in uncommented.splitlines() if line and not line.startswith(("#", "["))]
    assert len(set_lines) == len(setting_paths()) - 1, "one line per setting, but the API key"
    path = tmp_path / "config.toml"
    path.write_text(uncommented)
    settings = load_settings(path)
    defaults = Settings(agent_id=EXAMPLES["agent_id"])
    for dotted in setting_paths():
        if dotted == "api_key":
            assert settings.api_key is None
        elif dotted in EXAMPLES:
            example = EXAMPLES[dotted]
            got = _get(settings, dotted)
            assert (list(got) if isinstance(got, tuple) else str(got) if isinstance(got, Path) else got) == example
        else:
            assert _get(settings, dotted) == _get(defaults, dotted), dotted


def test_every_setting_without_a_default_has_an_example() -> None:
    no_default = [p for p in setting_paths()
                  if p != "api_key" and _get(Settings(agent_id="x"), p) is None] + ["agent_id"]
    assert sorted(no_default) == sorted(EXAMPLES)


def test_the_module_prints_both(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--template"]) == 0
    assert capsys.readouterr().out == config_template()
    assert main([]) == 0
    assert capsys.readouterr().out == markdown_table() + "\n"


@pytest.mark.slow
def test_python_m_prints_the_template() -> None:
    r = subprocess.run([sys.executable, "-m", "pi_agent.reference", "--template"], capture_output=True, text=True,
                       timeout=60, check=True)
    assert r.stdout == config_template()
