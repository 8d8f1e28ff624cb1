"""The state of one conversation, with no I/O.

One :class:`Conversation` per WebSocket connection: event ids restart with each new
conversation, and so does the interruption filter.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from . import protocol as p


@dataclass(frozen=True, slots=True)
class AudioVerdict:
    """What to do with one agent audio chunk."""

    play: bool
    new_turn: bool  # first chunk of a new agent turn (a new event id)


DEFAULT_FORMAT = "pcm_16000"


class Conversation:
    """Conversation id, announced formats, interruption filter, pongs owed."""

    def __init__(self) -> None:
        self.conversation_id: str | None = None
        self.output_format: str | None = None
        self.input_format: str = DEFAULT_FORMAT  # the SDKs stream 16 kHz PCM before metadata
        self.last_interrupted_id = 0  # audio with event_id <= this is dropped
        self.current_turn_id: int | None = None  # event id of the agent turn being played
        self.pongs_owed: deque[int] = deque()
        self.ended_by_agent = False  # end_call seen: the close that follows is a normal end
        self.last_error: p.ErrorEvent | None = None

    @property
    def is_open(self) -> bool:
        return self.conversation_id is not None

    def on_metadata(self, event: p.ConversationMetadata) -> None:
        self.conversation_id = event.conversation_id
        self.output_format = event.agent_output_audio_format
        self.input_format = event.user_input_audio_format

    def on_ping(self, event: p.Ping) -> None:
        self.pongs_owed.append(event.event_id)

    def take_pongs(self) -> list[int]:
        owed = list(self.pongs_owed)
        self.pongs_owed.clear()
        return owed

    def on_audio(self, event: p.Audio) -> AudioVerdict:
        """Drop audio of an interrupted turn; note when a new turn starts."""
        if event.event_id <= self.last_interrupted_id:
            return AudioVerdict(play=False, new_turn=False)
        new_turn = event.event_id != self.current_turn_id
        self.current_turn_id = event.event_id
        return AudioVerdict(play=True, new_turn=new_turn)

    def on_interruption(self, event: p.Interruption) -> None:
        self.last_interrupted_id = max(self.last_interrupted_id, event.event_id)

    def interrupt_locally(self) -> None:
        """The user stopped the agent (button, API): drop the rest of the current turn."""
        if self.current_turn_id is not None:
            self.last_interrupted_id = max(self.last_interrupted_id, self.current_turn_id)

    def on_tool_response(self, event: p.AgentToolResponse) -> None:
        if event.tool_name == "end_call":
            self.ended_by_agent = True

    def on_error(self, event: p.ErrorEvent) -> None:
        self.last_error = event
