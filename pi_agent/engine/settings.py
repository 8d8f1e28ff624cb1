"""What the conversation engine reads of the settings, as a plain frozen value.

The engine never sees :mod:`pi_agent.config` (pydantic): :meth:`pi_agent.config.SessionSettings.engine_settings`
builds this from the validated ``[session]`` settings. The defaults are those of the
settings, so ``EngineSettings(policy="persistent")`` is what a config file saying only
that gives; nothing here validates: the settings did.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Policy = Literal["persistent", "on_demand"]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The ``[session]`` settings the engine reads (seconds; see :class:`pi_agent.config.SessionSettings`)."""

    policy: Policy = "on_demand"  # persistent: always a conversation open; on_demand: when asked
    idle_timeout: float = 30.0  # on_demand: close after this long with no speech either way
    quiet_keepalive: float = 0.0  # persistent, the mic held back (hush): the keepalive's interval; 0: never quiet
    backoff_initial: float = 1.0  # first reconnect delay ceiling
    backoff_max: float = 60.0  # reconnect delay cap
    backoff_reset_after: float = 30.0  # a conversation this long is healthy (resets the backoff)
    dead_peer_timeout: float = 20.0  # nothing received for this long: the peer is dead
    connect_timeout: float = 10.0  # limit for the metadata once the WebSocket is open
    prebuffer: float = 5.0  # seconds of speech kept while a conversation is being opened
    user_id: str | None = None  # sent with conversation_initiation_client_data
    dynamic_variables: Mapping[str, str | int | float | bool] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # conversation_config_override
