"""Reading the settings: which TOML file (:func:`config_path`), :func:`load_settings` (every
setting) and :func:`load_section` (one section alone), and every failure turned into a
:class:`~pi_agent.errors.ConfigError` of one line per bad setting, naming the setting and how
to set it (:func:`_describe`)."""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError, create_model
from pydantic_settings import SettingsConfigDict, SettingsError

from ..errors import ConfigError, ConfigUnreadable, access_hint
from .settings import ENV_PREFIX, Settings, _EnvOverFile

DEFAULT_CONFIG_PATH = Path("/etc/pi-agent/config.toml")
EX_CONFIG = 78


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """The TOML file to read: ``--config``, else ``$PI_AGENT_CONFIG``, else the default if present."""
    if explicit:
        return Path(explicit)
    if environ.get("PI_AGENT_CONFIG"):
        return Path(environ["PI_AGENT_CONFIG"])
    try:
        return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None
    except PermissionError:  # /etc/pi-agent is 0750 root:pi-agent: there, but not for us (read_toml says why)
        return DEFAULT_CONFIG_PATH


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (check --config or PI_AGENT_CONFIG)") from None
    except PermissionError:
        raise ConfigUnreadable(f"config file {path} cannot be read: permission denied: {access_hint(path)}") from None
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
    unknown = _unknown_variables()
    try:
        settings = Settings(**data)
    except ValidationError as e:
        raise ConfigError("\n".join([*unknown, *(_describe(err, path) for err in e.errors())])) from None
    except SettingsError as e:  # a list or table in the environment that is not JSON
        not_json = _not_json(path)
        if not not_json:
            raise ConfigError("\n".join([*unknown, f"settings: {e}"])) from None
    else:
        if unknown:
            raise ConfigError("\n".join(unknown))
        return settings
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
    raise ConfigError("\n".join([*unknown, *not_json.values(), *others]))


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
            env = _in_environment(f"{ENV_PREFIX}{section.upper()}__{name.upper()}")
            if env is None or not any(t in str(info.annotation) for t in ("dict", "list", "tuple")):
                continue
            try:
                json.loads(os.environ[env])
            except ValueError:
                found[env] = (f"{section}.{name}: must be JSON in the environment (a list [..] or a table {{..}}), "
                              f"got {os.environ[env][:40]!r}: fix {env} in the environment "
                              f"(it overrides [{section}] {name} in {path or 'the config file'})")
    return found


def _in_environment(variable: str) -> str | None:
    """The name under which ``variable`` is set in the environment (matched without regard
    to case, as the settings are read), or None."""
    if variable in os.environ:
        return variable
    return next((name for name in os.environ if name.upper() == variable), None)


def _known_keys(loc: Sequence[str]) -> list[str]:
    """The setting names at the level of ``loc`` (``[]``: the top-level keys and sections)."""
    model: Any = Settings
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def known_variables() -> list[str]:
    """Every ``PI_AGENT_*`` variable that names a setting (and ``PI_AGENT_CONFIG``)."""
    names = [f"{ENV_PREFIX}CONFIG"]
    for key in _known_keys([]):
        names.append(f"{ENV_PREFIX}{key.upper()}")
        names += [f"{ENV_PREFIX}{key.upper()}__{sub.upper()}" for sub in _known_keys([key])]
    return names


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _unknown_variables() -> list[str]:
    """One line for each ``PI_AGENT_*`` variable that looks like a setting but names none: one
    in an unknown section (``PI_AGENT_LEDZ__PIN``), or close to a real one (``PI_AGENT_AGENTID``).
    Unknown keys of a known section are pydantic's to report (:func:`_describe`); other
    ``PI_AGENT_*`` variables (a test's, a script's) are not ours."""
    known = known_variables()
    sections = {f"{ENV_PREFIX}{key.upper()}" for key in _known_keys([]) if _known_keys([key])}
    lines = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        head = upper.split("__")[0]
        if "__" in upper and head in sections:
            continue
        if "__" in upper:  # an unknown section: suggest the nearest one, same key
            near = difflib.get_close_matches(head, sorted(sections), n=1, cutoff=0.6)
            close = [f"{near[0]}__{upper.split('__', 1)[1]}"] if near else []
        else:
            close = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
        if "__" in upper or close:
            hint = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"{name} (in the environment) is not a known setting{hint} "
                         "(rename or unset the variable; the README lists the settings)")
    return lines


def _describe(err: Mapping[str, Any], path: Path | None) -> str:
    """One line for one pydantic error: the setting, what is wrong, where to set it: the
    environment variable when one is set (it overrides the file), else the file."""
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    # pydantic adds the member type of a union ("str", "int", ...) to the location; drop it.
    while len(loc) > 1 and loc[-1] in {"str", "int", "float", "bool", "function-after[_cap_not_below_initial()]"}:
        loc.pop()
    dotted = ".".join(loc) or "settings"
    env = ENV_PREFIX + "__".join(p.upper() for p in loc)
    where = f"{'[' + '.'.join(loc[:-1]) + '] ' if len(loc) > 1 else ''}{loc[-1] if loc else ''}"
    file_hint = f" in {path}" if path else " in the config file"
    from_env = _in_environment(env) if loc else None
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "missing" and any(isinstance(p, int) for p in err["loc"]):
        return f"{dotted}: too few values: fix {from_env or env + ' or ' + where + file_hint}"
    if kind == "missing":
        return f"{dotted} is required: set {env} or {where}{file_hint}"
    if kind == "extra_forbidden":
        if from_env:
            siblings = [ENV_PREFIX + "__".join([*(p.upper() for p in loc[:-1]), k.upper()])
                        for k in _known_keys(loc[:-1])]
            return (f"{dotted} is not a known setting: {from_env} in the environment{_did_you_mean(env, siblings)} "
                    "(remove it or fix its name)")
        siblings = [".".join([*loc[:-1], k]) for k in _known_keys(loc[:-1])]
        return (f"{dotted} is not a known setting{_did_you_mean(dotted, siblings)}: "
                f"remove it (or check its spelling){file_hint}")
    shown = "" if "api_key" in loc else f" (got {err.get('input')!r})"
    fix = (f"fix {from_env} in the environment (it overrides {where}{file_hint})" if from_env
           else f"fix {env} or {where}{file_hint}")
    return f"{dotted}: {msg.lower() if msg[:1].isupper() and not msg[:2].isupper() else msg}{shown}: {fix}"
