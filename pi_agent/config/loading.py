"""Reading the settings: which TOML file (:func:`config_path`), :func:`load_settings` (every
setting) and :func:`load_section` (one section alone), and every failure turned into a
:class:`~pi_agent.errors.ConfigError` of one line per bad setting, naming the setting and how
to set it (:func:`_describe`)."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError, create_model
from pydantic_settings import SettingsConfigDict, SettingsError

from ..errors import ConfigError
from .settings import ENV_PREFIX, Settings, _EnvOverFile

DEFAULT_CONFIG_PATH = Path("/etc/pi-agent/config.toml")
EX_CONFIG = 78


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The TOML file to read: ``--config``, else ``$PI_AGENT_CONFIG``, else the default if present."""
    if explicit:
        return Path(explicit)
    if environ.get("PI_AGENT_CONFIG"):
        return Path(environ["PI_AGENT_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (check --config or PI_AGENT_CONFIG)") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def load_settings(explicit_path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read every source and validate. Raises :class:`ConfigError` with one line per problem.

    ``overrides`` are merged over the TOML file (still below the environment); the demo and
    the tests use them.
    """
    path = config_path(explicit_path)
    data = read_toml(path) if path else {}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return Settings(**data)
    except ValidationError as e:
        raise ConfigError("\n".join(_describe(err, path) for err in e.errors())) from None
    except SettingsError as e:  # a list or table in the environment that is not JSON
        not_json = _not_json(path)
        if not not_json:
            raise ConfigError(f"settings: {e}") from None
    # pydantic-settings stops at the first such variable: validate once more without them,
    # so that every other mistake is reported in the same run too.
    saved = {env: os.environ.pop(env) for env in not_json}
    try:
        Settings(**data)
        others: list[str] = []
    except ValidationError as e:
        others = [_describe(err, path) for err in e.errors()]
    except SettingsError as e:  # pragma: no cover - every non-JSON variable was set aside
        others = [f"settings: {e}"]
    finally:
        os.environ.update(saved)
    raise ConfigError("\n".join([*not_json.values(), *others]))


SectionT = TypeVar("SectionT", bound=BaseModel)


class _OneSection(_EnvOverFile):
    """One section alone (:func:`load_section`): the environment over the file; no API key."""

    model_config = SettingsConfigDict(extra="ignore")


def load_section(explicit_path: str | os.PathLike[str] | None, name: str, kind: type[SectionT],
                 **overrides: Any) -> SectionT:
    """One section alone (``[leds]``, ``[audio]``...), from the same sources as
    :func:`load_settings`: for the commands that use nothing else (``test-leds`` needs no
    ``agent_id``, and a mistake in another section is not theirs to report)."""
    path = config_path(explicit_path)
    data = read_toml(path) if path else {}
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"{name} must be a table ([{name}]) in {path}")
    section = {**section, **overrides}
    fields: dict[str, Any] = {name: (kind, kind())}
    holder = create_model(f"_{name.title()}Only", __base__=_OneSection, **fields)
    try:
        value: SectionT = getattr(cast(Any, holder)(**{name: section}), name)
    except ValidationError as e:
        raise ConfigError("\n".join(_describe(err, path) for err in e.errors())) from None
    except SettingsError as e:
        raise ConfigError("\n".join(_not_json(path).values()) or f"settings: {e}") from None
    return value


def _not_json(path: Path | None) -> dict[str, str]:
    """``PI_AGENT_*`` variables of list/table settings whose value is not JSON: variable -> line."""
    found = {}
    for section, field in Settings.model_fields.items():
        for name, info in getattr(field.annotation, "model_fields", {}).items():
            env = f"{ENV_PREFIX}{section.upper()}__{name.upper()}"
            if env not in os.environ or not any(t in str(info.annotation) for t in ("dict", "list", "tuple")):
                continue
            try:
                json.loads(os.environ[env])
            except ValueError:
                found[env] = (f"{section}.{name}: must be JSON in the environment (a list [..] or a table {{..}}), "
                              f"got {os.environ[env][:40]!r}: fix {env} or [{section}] {name} "
                              f"in {path or 'the config file'}")
    return found


def _describe(err: Mapping[str, Any], path: Path | None) -> str:
    """One line for one pydantic error: the setting, what is wrong, where to set it."""
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    # pydantic adds the member type of a union ("str", "int", ...) to the location; drop it.
    while len(loc) > 1 and loc[-1] in {"str", "int", "float", "bool", "function-after[_cap_not_below_initial()]"}:
        loc.pop()
    dotted = ".".join(loc) or "settings"
    env = ENV_PREFIX + "__".join(p.upper() for p in loc)
    where = f"{'[' + '.'.join(loc[:-1]) + '] ' if len(loc) > 1 else ''}{loc[-1] if loc else ''}"
    file_hint = f" in {path}" if path else " in the config file"
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "missing" and any(isinstance(p, int) for p in err["loc"]):
        return f"{dotted}: too few values: fix {env} or {where}{file_hint}"
    if kind == "missing":
        return f"{dotted} is required: set {env} or {where}{file_hint}"
    if kind == "extra_forbidden":
        return f"{dotted} is not a known setting: remove it (or check its spelling){file_hint}"
    shown = "" if "api_key" in loc else f" (got {err.get('input')!r})"
    return (f"{dotted}: {msg.lower() if msg[:1].isupper() and not msg[:2].isupper() else msg}{shown}: "
            f"fix {env} or {where}{file_hint}")
