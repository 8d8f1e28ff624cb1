"""Settings: typed, validated once at start-up, then passed down.

Sources, strongest first:

1. environment variables, prefix ``PI_AGENT_``, ``__`` between nesting levels
   (``PI_AGENT_SESSION__POLICY=persistent``);
2. the API key alone from ``$CREDENTIALS_DIRECTORY/api_key`` (systemd ``LoadCredential=``),
   else from ``$ELEVENLABS_API_KEY`` (the official SDKs' variable);
3. a TOML file: ``--config PATH``, else ``$PI_AGENT_CONFIG``, else
   ``/etc/pi-agent/config.toml`` when it exists (same nesting: ``[session] policy = ...``);
4. the defaults of the models.

:func:`load_settings` turns every failure into a :class:`~pi_agent.errors.ConfigError`
whose message is one line per bad setting, naming the setting and how to set it.
The API key is a :class:`~pydantic.SecretStr`: its ``repr`` and ``str`` are ``**********``.

Where things are: :mod:`.sections`, the sections' models (``[session]``... ``[log]``: each
setting's type, bounds, default and description); :mod:`.settings`, :class:`Settings` (the
top-level keys and the sections) and its sources; :mod:`.loading`, the TOML file,
:func:`load_settings`, :func:`load_section` and the error messages. Import from here.
"""

from __future__ import annotations

from .loading import DEFAULT_CONFIG_PATH, EX_CONFIG, SectionT, config_path, load_section, load_settings, read_toml
from .sections import (ApiSettings, AudioSettings, ButtonSettings, CaptureSettings, Earcon, LedSettings, LogSettings,
                       SessionSettings)
from .settings import ENV_PREFIX, SDK_KEY_VARIABLE, Settings

__all__ = ["DEFAULT_CONFIG_PATH", "ENV_PREFIX", "EX_CONFIG", "SDK_KEY_VARIABLE", "ApiSettings", "AudioSettings",
           "ButtonSettings", "CaptureSettings", "Earcon", "LedSettings", "LogSettings", "SectionT",
           "SessionSettings", "Settings", "config_path", "load_section", "load_settings", "read_toml"]
