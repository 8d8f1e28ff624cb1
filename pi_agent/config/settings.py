"""The whole of the settings, :class:`Settings`: the top-level keys (``agent_id``, ``api_key``,
``server_url``) over the sections of :mod:`.sections`, and where they are read from: the
environment (``PI_AGENT_``, ``__`` between levels) over the API key's own sources (the systemd
credential, then ``$ELEVENLABS_API_KEY``) over the TOML file (:mod:`.loading` reads it)."""

from __future__ import annotations

import os
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


class _CredentialsSource(PydanticBaseSettingsSource):
    """The API key from systemd's credentials directory (``LoadCredential=api_key:...``)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            return {}
        path = Path(directory) / "api_key"
        try:
            key = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ConfigError(f"api_key: cannot read credential {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"api_key: credential {path} is not UTF-8 text (paste the key alone)") from None
        return {"api_key": key} if key else {}


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
        if v is None or not v.get_secret_value().strip():
            return None
        key = v.get_secret_value().strip()  # a pasted key often ends in a newline
        if not key.isprintable() or any(c.isspace() for c in key):
            raise ValueError("must be the key alone, without spaces, line breaks or control characters")
        return SecretStr(key)

    def decide_config(self) -> DecideConfig:
        """What the decisions need of these settings (:class:`pi_agent.decide.model.Config`)."""
        return DecideConfig(
            mode=self.capture.mode, half_duplex=self.audio.echo == "half_duplex", toggle=self.capture.toggle,
            earcons=frozenset(self.audio.earcons), transcripts=self.log.transcripts,
            tool_timeout=self.api.tool_timeout, follow_up=self.capture.follow_up, aec=self.audio.echo == "aec",
            mcp_approval=self.session.mcp_approval, mcp_allow=frozenset(self.session.mcp_allow))
