"""The whole of the settings, :class:`Settings`: the top-level keys (``agent_id``, ``api_key``,
``server_url``, ``device_name``, ``location``) over the sections of :mod:`.sections`, and where
they are read from: the environment (``PI_AGENT_``, ``__`` between levels) over the API key's own sources (the systemd
credential, then ``$ELEVENLABS_API_KEY``) over the TOML file (:mod:`.loading` reads it); and,
for ``check``, the key the installed service gets (:func:`service_key`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ..decide.model import Config as DecideConfig
from ..errors import ConfigError
from .sections import (ApiSettings, AudioSettings, ButtonSettings, CaptureSettings, LedSettings, LogSettings,
                       SessionSettings)

ENV_PREFIX = "PI_AGENT_"
SDK_KEY_VARIABLE = "ELEVENLABS_API_KEY"
KEY_VARIABLE = f"{ENV_PREFIX}API_KEY"
CREDENTIAL_NAME = "api_key"  # LoadCredential=api_key:... -> $CREDENTIALS_DIRECTORY/api_key
# The file the unit hands over (LoadCredential=api_key:/etc/pi-agent/api_key): root's alone.
SERVICE_CREDENTIAL = Path("/etc/pi-agent") / CREDENTIAL_NAME


class _CredentialsSource(PydanticBaseSettingsSource):
    """The API key from systemd's credentials directory (``LoadCredential=api_key:...``)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return {}
        path = Path(directory) / CREDENTIAL_NAME
        try:
            key = _read_credential(path)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ConfigError(f"api_key: cannot read credential {path}: {e.strerror}") from None
        return {"api_key": key} if key else {}


def _read_credential(path: Path) -> str:
    """The key in a credential file, stripped ("" if blank). Raises ``OSError`` as opening
    it does, :class:`ConfigError` if it is not text."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"api_key: credential {path} is not UTF-8 text (paste the key alone)") from None


class _ElevenLabsKeySource(PydanticBaseSettingsSource):
    """The API key from ``$ELEVENLABS_API_KEY``, as the official SDKs read it; the
    project's own ``PI_AGENT_API_KEY`` and the systemd credential come first."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        key = os.environ.get(SDK_KEY_VARIABLE, "").strip()
        return {"api_key": key} if key else {}


class _EnvOverFile(BaseSettings):
    """Settings read from the environment (``PI_AGENT_``, ``__`` between levels) over the
    TOML file, whose contents come as keyword arguments (:func:`load_settings`); the
    sources of ``key_sources`` stand between the two."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", frozen=True,
                                      allow_inf_nan=False)
    key_sources: ClassVar[tuple[type[PydanticBaseSettingsSource], ...]] = ()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init_settings carries the TOML file's contents (see load_settings): weakest but defaults.
        return (env_settings, *(source(settings_cls) for source in cls.key_sources), init_settings)


class Settings(_EnvOverFile):
    """Every setting of the daemon. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(extra="forbid", nested_model_default_partial_update=True)
    key_sources = (_CredentialsSource, _ElevenLabsKeySource)  # the API key: systemd's, then the SDKs' variable

    agent_id: str = Field(..., min_length=1, description="the ElevenLabs agent id (required)")
    api_key: SecretStr | None = Field(None, description="ElevenLabs API key, for private agents; "
                                      "prefer $CREDENTIALS_DIRECTORY/api_key (systemd LoadCredential)")
    server_url: str = Field("https://api.elevenlabs.io", description="API base URL (https or http); "
                            "http://127.0.0.1:8765 for pi-agent fake-agent")
    device_name: str | None = Field(None, min_length=1, max_length=64, description="this device's name in "
                                    "/metrics (pi_agent_info{device=...}), to tell a fleet's kiosks apart; unset: "
                                    "the host name")
    location: str = Field("", max_length=128, description="where this device is, in /metrics "
                          "(pi_agent_info{location=...}), e.g. museum/hall-2; empty: none")
    session: SessionSettings = SessionSettings()
    capture: CaptureSettings = CaptureSettings()
    audio: AudioSettings = AudioSettings()
    api: ApiSettings = ApiSettings()
    leds: LedSettings = LedSettings()
    button: ButtonSettings = ButtonSettings()
    log: LogSettings = LogSettings()

    @field_validator("server_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. https://api.elevenlabs.io")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number from 0 to 65535)
        except ValueError:
            raise ValueError("has a port that is not a number from 1 to 65535") from None
        return v.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is None else _clean_key(v.get_secret_value())

    @field_validator("device_name", "location")
    @classmethod
    def _one_line(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not v.isprintable():
            raise ValueError("must be one line of printable text")
        return v

    def device(self) -> str:
        """``device_name``, else the host name."""
        return self.device_name or socket.gethostname() or "pi-agent"

    def decide_config(self) -> DecideConfig:
        """What the decisions need of these settings (:class:`pi_agent.decide.model.Config`)."""
        return DecideConfig(
            mode=self.capture.mode, half_duplex=self.audio.echo == "half_duplex", toggle=self.capture.toggle,
            earcons=frozenset(self.audio.earcons), transcripts=self.log.transcripts,
            tool_timeout=self.api.tool_timeout, follow_up=self.capture.follow_up, aec=self.audio.echo == "aec",
            mcp_approval=self.session.mcp_approval, mcp_allow=frozenset(self.session.mcp_allow),
            page_hold=self.api.page_hold, persistent=self.session.policy == "persistent",
            quiet=self.session.policy == "persistent" and self.session.quiet_keepalive > 0)


def _clean_key(raw: str) -> SecretStr | None:
    """A key as pasted: stripped (a pasted key often ends in a newline), None if blank.
    Raises ``ValueError`` if what is left is not a key alone."""
    key = raw.strip()
    if not key:
        return None
    if not key.isprintable() or any(c.isspace() for c in key):
        raise ValueError("must be the key alone, without spaces, line breaks or control characters")
    return SecretStr(key)


@dataclass(frozen=True)
class ServiceKey:
    """The API key the installed service gets, as far as this process can tell (:func:`service_key`)."""

    key: SecretStr | None
    origin: str  # where it was found ("" if nowhere): "$PI_AGENT_API_KEY", a file, "the config file"
    unreadable: Path | None = None  # the service's credential, when this user may not read it


def service_credential(config_file: Path | None) -> Path:
    """The file the unit hands over as the API key: ``api_key`` beside the config file (the
    installer puts both in /etc/pi-agent, and the unit names both), else /etc/pi-agent/api_key."""
    return config_file.parent / CREDENTIAL_NAME if config_file is not None else SERVICE_CREDENTIAL


def service_key(settings: Settings, config_file: Path | None,
                environ: Mapping[str, str] = os.environ) -> ServiceKey:
    """The key the service would run with, for ``check`` to test. The service's sources, strongest
    first, are those of :class:`Settings`: ``$PI_AGENT_API_KEY``, its credential
    (``$CREDENTIALS_DIRECTORY/api_key``, which systemd fills from the file the unit's
    ``LoadCredential=`` names), ``$ELEVENLABS_API_KEY``, the config file. Outside the unit (no
    ``$CREDENTIALS_DIRECTORY``) the credential is read from that file itself
    (:func:`service_credential`): root can, other users are told so (``unreadable``) rather
    than handed a public agent's test. ``settings`` holds what the other sources gave.
    Raises :class:`ConfigError` (one line) if the credential is there but no key."""
    if _env(environ, KEY_VARIABLE).strip():
        return ServiceKey(settings.api_key, f"${KEY_VARIABLE}")
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / CREDENTIAL_NAME
        origin = f"$CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME} (systemd's credential)"
    else:
        path = service_credential(config_file)
        origin = f"{path}, the service's credential (LoadCredential=)"
    try:
        raw = _read_credential(path)
    except FileNotFoundError:
        raw = ""
    except PermissionError:
        if settings.api_key is not None:  # the user's own key: tested, and said to be theirs
            return ServiceKey(settings.api_key, _weaker_origin(environ), unreadable=path)
        return ServiceKey(None, "", unreadable=path)
    except OSError as e:
        raise ConfigError(f"api_key: cannot read credential {path}: {e.strerror}") from None
    try:
        key = _clean_key(raw)
    except ValueError as e:
        raise ConfigError(f"api_key: credential {path} {e}") from None
    if key is not None:
        return ServiceKey(key, origin)
    # No credential, or an empty one (the installer's: a public agent): the weaker sources.
    return ServiceKey(settings.api_key, _weaker_origin(environ) if settings.api_key is not None else "")


def _weaker_origin(environ: Mapping[str, str]) -> str:
    return f"${SDK_KEY_VARIABLE}" if environ.get(SDK_KEY_VARIABLE, "").strip() else "the config file"


def _env(environ: Mapping[str, str], name: str) -> str:
    """A variable as pydantic-settings reads it (names are not case-sensitive)."""
    return next((value for key, value in environ.items() if key.upper() == name), "")
