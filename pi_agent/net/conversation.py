"""The one place that builds a conversation's engine and session from the settings.

The daemon and ``pi-agent check`` (:func:`pi_agent.diagnostics.agent.reach_agent`) both
talk to the agent this way: the engine with the session's settings and the agent's audio
decoder, the session with a URL from :func:`~pi_agent.net.signed_url.url_for` (signed
when there is an API key) and the session's connect timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from ..audio.formats import MicEncoder, decode_pcm
from ..config import Settings
from ..engine import events as ev
from ..engine.backoff import Backoff
from ..engine.conversation import Engine
from ..engine.settings import Policy
from .link import open_link
from .session import Connector, Session
from .signed_url import SignedUrlFetcher, url_for

EncoderFactory = Callable[[str], Callable[[bytes], bytes]]  # the engine's: an agent's input format -> its encoder


def mic_encoder(fmt: str) -> Callable[[bytes], bytes]:
    """The microphone's 16 kHz frames in the agent's ``user_input_audio_format``."""
    return MicEncoder(fmt).encode


def build_conversation(settings: Settings, *, on_event: Callable[[ev.Event], None], policy: Policy | None = None,
                       encoder_factory: EncoderFactory = mic_encoder, backoff: Backoff | None = None,
                       connect: Connector | None = None, fetch_url: SignedUrlFetcher | None = None,
                       clock: Callable[[], float] = time.monotonic) -> tuple[Engine, Session]:
    """The engine and the session that carries it, for ``settings``'s agent.

    ``on_event`` gets the engine's events; ``policy`` replaces the configured one; ``backoff``
    (default: from the settings), ``connect`` (default: :func:`~pi_agent.net.link.open_link`),
    ``fetch_url`` (default: HTTPS to the server) and ``clock`` are for tests and the demo."""
    s = settings.session
    engine_settings = s.engine_settings() if policy is None else replace(s.engine_settings(), policy=policy)
    engine = Engine(engine_settings, encoder_factory=encoder_factory, decode_audio=decode_pcm, backoff=backoff)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    session = Session(
        engine, url=lambda: url_for(settings.server_url, settings.agent_id, api_key, s.connect_timeout, fetch_url),
        on_event=on_event, connect_timeout=s.connect_timeout, connect=connect or open_link, clock=clock)
    return engine, session
