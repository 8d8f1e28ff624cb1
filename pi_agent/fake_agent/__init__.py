"""The protocol-faithful fake ElevenLabs agent: a loopback server for tests, demos and development.

``async with FakeAgent(FakeAgentOptions(port=0)) as agent:`` then point a client at
``agent.http_url``; see :mod:`pi_agent.fake_agent.server` for what it serves.
"""

from __future__ import annotations

from .options import FakeAgentOptions, add_arguments, options_from_args
from .records import ConversationRecord, McpCall, Received, Sent, Turn
from .faults import GARBAGE_KINDS
from .server import FakeAgent, serve
from .wire import ERROR_CODES

__all__ = [
    "ERROR_CODES",
    "GARBAGE_KINDS",
    "ConversationRecord",
    "FakeAgent",
    "FakeAgentOptions",
    "McpCall",
    "Received",
    "Sent",
    "Turn",
    "add_arguments",
    "options_from_args",
    "serve",
]
