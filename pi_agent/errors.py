"""One exception root for the daemon.

::

    PiAgentError
    ├── ConfigError          bad configuration: the admin must fix a setting (exit 78)
    ├── ProtocolError        the peer sent something the protocol does not allow
    ├── DeviceError          an audio device or GPIO pin is missing, busy or failed
    │   └── DeviceNotFound   no device of that name is listed (unplugged, wrong name)
    ├── ConnectError         the agent could not be reached or refused us
    │   └── AuthError        refused for credentials / agent id: retrying will not help
    └── InternalError        our own bug (an illegal state transition, ...)

Exceptions from libraries are chained with ``raise ... from``.
"""

from __future__ import annotations


class PiAgentError(Exception):
    """Root of every exception the daemon raises on purpose."""


class ConfigError(PiAgentError):
    """A setting is missing or invalid. The message names the setting and the fix."""


class ProtocolError(PiAgentError):
    """The server sent a frame that does not follow the agent protocol."""


class DeviceError(PiAgentError):
    """An audio device (or GPIO pin) could not be found, opened or kept running."""


class DeviceNotFound(DeviceError):
    """No listed device matches the configured name (it may appear later: USB plug-in)."""


class ConnectError(PiAgentError):
    """Opening a conversation failed. ``retryable`` says whether trying again may help."""

    retryable: bool = True

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class AuthError(ConnectError):
    """The server refused the API key or the agent id: only a config change fixes it."""

    retryable = False


class InternalError(PiAgentError):
    """A bug in pi-agent itself."""
