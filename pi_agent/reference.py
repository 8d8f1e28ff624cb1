"""The settings reference, generated from the settings models so that the documentation cannot
drift from the code: the README's table (``python -m pi_agent.reference``) and the commented
config file the installer writes to /etc/pi-agent/config.toml (``python -m pi_agent.reference
--template``): every setting, its default and its description, grouped by ``[section]``."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .config import ENV_PREFIX, Settings

# A value for the settings that have none by default (unset or required): shown commented
# out in the template, marked as an example. A new such setting needs one here (a test says so).
EXAMPLES: dict[str, Any] = {
    "agent_id": "agent_0123456789abcdefghij",
    "device_name": "kiosk-hall-2",  # unset: the host name
    "session.user_id": "kitchen-pi",
    "capture.wake_word_threshold": 0.85,
    "audio.input_channel": 0,
    "audio.output_rate": 48000,
    "audio.input_wav": "/var/lib/pi-agent/mic.wav",
    "audio.output_wav": "/var/lib/pi-agent/speaker.wav",
    "leds.connection_pin": 17,
    "leds.activity_pin": 27,
    "leds.rgb_pins": [5, 6, 13],
    "leds.count": 12,
    "leds.spi_device": 1,
    "leds.spi_clock_pin": 20,
    "leds.spi_mosi_pin": 21,
    "leds.spi_select_pin": 16,
    "leds.power_pin": 5,
    "button.pin": 22,
    "button.volume_up_pin": 23,
    "button.volume_down_pin": 24,
}

# Where the secrets go instead of the file (a SecretStr setting is never written as a value).
SECRET_NOTE = ("not in this file: the service reads it from /etc/pi-agent/api_key (root only, 0600), "
               "which systemd hands over with LoadCredential=; by hand, $PI_AGENT_API_KEY or "
               "$ELEVENLABS_API_KEY")

TEMPLATE_HEADER = """\
# pi-agent settings (TOML), generated from the settings model of this version
# (python -m pi_agent.reference --template). Every setting is here, commented out,
# with its meaning above it and its default (or, where it has none, an example):
# remove the leading "# " of a "# key = value" line to set it, under its [section].
# The environment overrides this file: PI_AGENT_<KEY> or PI_AGENT_<SECTION>__<KEY>
# (set them with: sudo systemctl edit pi-agent). After a change:
#   sudo systemctl reload pi-agent
# (a mistake is one line in journalctl -u pi-agent, and the settings in use stay).
# Durations are in seconds. The whole table: /opt/pi-agent/README.md, section Settings."""

WIDTH = 100


def _is_section(field: FieldInfo) -> bool:
    ann = field.annotation
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _is_secret(field: FieldInfo) -> bool:
    return "SecretStr" in repr(field.annotation) or field.annotation is SecretStr


def _default(field: FieldInfo) -> Any:
    """The field's default; PydanticUndefined when it is required."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return PydanticUndefined
    return field.get_default(call_default_factory=True)


def _fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], FieldInfo]]:
    """Every setting (a leaf field) of model, depth first, with its path."""
    for name, field in model.model_fields.items():
        if _is_section(field):
            assert isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
            yield from _fields(field.annotation, (*prefix, name))
        else:
            yield (*prefix, name), field


def setting_paths() -> list[str]:
    """Every setting as its dotted path (``session.policy``), in the model's order."""
    return [".".join(path) for path, _ in _fields(Settings)]


def _rows(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    rows = []
    for path, field in _fields(model):
        prefix, name = path[:-1], path[-1]
        env = ENV_PREFIX + "__".join(p.upper() for p in path)
        toml = (f"[{'.'.join(prefix)}] " if prefix else "") + name
        value = _default(field)
        if value is PydanticUndefined:
            default = "(required)"
        else:
            default = "(unset)" if value is None else json.dumps(value, default=str)
        rows.append((env, toml, default, field.description or ""))
    return rows


def markdown_table() -> str:
    lines = ["| Environment | TOML | Default | Meaning |", "|---|---|---|---|"]
    for env, toml, default, desc in _rows(Settings):
        lines.append(f"| `{env}` | `{toml}` | `{default}` | {desc} |")
    return "\n".join(lines)


def toml_value(value: Any) -> str:
    """value as a TOML value (strings, numbers, booleans, paths, lists and tables of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # Path and the like


def _comment(text: str, first: str) -> list[str]:
    """text as comment lines: "# first: text", continued "#   ..." (never "# key = value")."""
    return textwrap.wrap(f"{first}: {text}", width=WIDTH, initial_indent="# ", subsequent_indent="#   ",
                         break_on_hyphens=False, break_long_words=False)


def _setting(path: tuple[str, ...], field: FieldInfo) -> list[str]:
    name, dotted = path[-1], ".".join(path)
    if _is_secret(field):
        return _comment(SECRET_NOTE, name)
    lines = _comment(field.description or "", name)
    value = _default(field)
    if value is None or value is PydanticUndefined:
        example = EXAMPLES[dotted]  # KeyError: a setting without a default needs an example
        why = "required" if value is PydanticUndefined else "unset by default"
        lines.append(f"# {name} = {toml_value(example)}  # an example ({why})")
    else:
        lines.append(f"# {name} = {toml_value(value)}")
    return lines


def _section(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """model's own settings under [path], then its subsections."""
    lines: list[str] = []
    if path:
        lines += ["", "", f"[{'.'.join(path)}]"]
        doc = " ".join((model.__doc__ or "").split())
        if doc:
            lines += textwrap.wrap(doc, width=WIDTH, initial_indent="# ", subsequent_indent="# ")
    subsections = []
    for name, field in model.model_fields.items():
        if _is_section(field):
            subsections.append((name, field))
            continue
        lines += ["", *_setting((*path, name), field)]
    for name, field in subsections:
        assert isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        lines += _section(field.annotation, (*path, name))
    return lines


def config_template() -> str:
    """The installer's /etc/pi-agent/config.toml: every setting, commented out."""
    return "\n".join([TEMPLATE_HEADER, *_section(Settings, ())]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pi_agent.reference",
        description="Print the settings reference generated from the settings model: the README's "
        "table (the default) or the commented config file the installer writes.")
    parser.add_argument("--template", action="store_true",
                        help="print the commented config file (/etc/pi-agent/config.toml) instead of the table")
    args = parser.parse_args(argv)
    sys.stdout.write(config_template() if args.template else markdown_table() + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
