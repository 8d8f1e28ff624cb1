"""The settings reference (README table and the installer's commented config), generated
from the settings models so that the documentation cannot drift from the code."""

from __future__ import annotations

import json

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from .config import ENV_PREFIX, Settings


def _rows(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(_rows(ann, (*prefix, name)))
            continue
        path = (*prefix, name)
        env = ENV_PREFIX + "__".join(p.upper() for p in path)
        toml = (f"[{'.'.join(prefix)}] " if prefix else "") + name
        if field.default is PydanticUndefined and field.default_factory is None:
            default = "(required)"
        else:
            value = field.get_default(call_default_factory=True)
            default = "(unset)" if value is None else json.dumps(value, default=str)
        rows.append((env, toml, default, field.description or ""))
    return rows


def markdown_table() -> str:
    lines = ["| Environment | TOML | Default | Meaning |", "|---|---|---|---|"]
    for env, toml, default, desc in _rows(Settings):
        lines.append(f"| `{env}` | `{toml}` | `{default}` | {desc} |")
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - used by hand: python -m pi_agent.reference
    print(markdown_table())


if __name__ == "__main__":  # pragma: no cover
    main()
