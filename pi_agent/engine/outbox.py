"""What waits to go to the agent: bounded queues, each with a drop policy. Pure.

Four queues, drained in this order (:meth:`Outbox.pop`):

``control``
    Pongs. Tiny and urgent; a late pong is worthless, so at most :data:`MAX_CONTROL`
    wait and the oldest goes first when more come.
``messages``
    JSON messages (user messages, contextual updates, tool results), in order. They
    wait here while no conversation is open and go first once one opens. Bounded by
    count and by bytes; when full, the oldest are dropped.
``early``
    Speech captured while no conversation was open (the pre-buffer): the start of the
    user's turn. Bounded by the pre-buffer length, oldest dropped; once a conversation
    opens it goes before any live audio and is never dropped for lateness.
``live``
    Mic frames of the open conversation. Normally written at once; they queue only
    while the transport cannot take more (a slow link), and then live audio more than
    :data:`MAX_LIVE_S` behind is dropped, oldest first: it would be too late to matter.

Frames are kept raw (16 kHz PCM) and encoded by the engine as they leave, so a dropped
frame costs nothing. Every drop is counted: audio by reason (:attr:`Outbox.dropped`),
messages by type (:attr:`Outbox.dropped_messages`).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

FRAME_S = 0.02
MAX_LIVE_S = 2.0
MAX_CONTROL = 8
MAX_MESSAGES = 64
MAX_MESSAGE_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # the message type, for metrics (user_message, contextual_update, ...)
    text: str  # the JSON text, encoded


@dataclass(frozen=True, slots=True)
class Frame:
    pcm: bytes
    speech: bool  # part of a user turn: kept for the next conversation if this one drops


Item = Message | Frame


class Outbox:
    """Bounded queues of what waits for the wire. See the module docstring."""

    def __init__(self, *, prebuffer_s: float, live_s: float = MAX_LIVE_S,
                 max_messages: int = MAX_MESSAGES, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.control: deque[Message] = deque(maxlen=MAX_CONTROL)
        self.messages: deque[Message] = deque()
        self.early: deque[Frame] = deque(maxlen=max(1, round(prebuffer_s / FRAME_S)))
        self.live: deque[Frame] = deque(maxlen=max(1, round(live_s / FRAME_S)))
        self.dropped: Counter[str] = Counter()
        """Audio frames dropped, by reason: ``prebuffer_full``, ``late``."""
        self.dropped_messages: Counter[str] = Counter()
        """Messages dropped, by type (``contextual_update``, ``user_message``, ``pong``, ...)."""
        self._max_messages = max_messages
        self._max_message_bytes = max_message_bytes
        self._message_bytes = 0

    def __len__(self) -> int:
        return len(self.control) + len(self.messages) + len(self.early) + len(self.live)

    @property
    def early_seconds(self) -> float:
        return len(self.early) * FRAME_S

    def push_control(self, message: Message) -> None:
        if len(self.control) == self.control.maxlen:
            self.dropped_messages[self.control[0].kind] += 1
        self.control.append(message)

    def push_message(self, message: Message) -> int:
        """Queue ``message``; returns how many older messages were dropped to make room."""
        self.messages.append(message)
        self._message_bytes += len(message.text)
        dropped = 0
        while len(self.messages) > 1 and (len(self.messages) > self._max_messages
                                          or self._message_bytes > self._max_message_bytes):
            old = self.messages.popleft()
            self._message_bytes -= len(old.text)
            self.dropped_messages[old.kind] += 1
            dropped += 1
        return dropped

    def push_early(self, frame: Frame) -> bool:
        """Keep speech for the next conversation; False if the oldest kept frame was dropped."""
        return self._append(self.early, frame, "prebuffer_full")

    def push_live(self, frame: Frame) -> bool:
        """Queue a frame of the open conversation; False if the oldest live frame was dropped."""
        return self._append(self.live, frame, "late")

    def pop(self) -> Item | None:
        """The next item to write, in queue order; None when everything is out."""
        if self.control:
            return self.control.popleft()
        if self.messages:
            message = self.messages.popleft()
            self._message_bytes -= len(message.text)
            return message
        for frames in (self.early, self.live):
            if frames:
                return frames.popleft()
        return None

    def connection_lost(self) -> None:
        """The connection is gone: pongs are moot; speech not yet sent is kept for the
        next conversation (ahead of what is said from now on), other live audio is dropped.
        Messages stay queued."""
        self.control.clear()
        self.hold()

    def hold(self) -> None:
        """What is sent now would be lost (the server queues the conversation): speech not
        yet sent goes back to the pre-buffer, ahead of what is said from now on; other live
        audio is dropped."""
        kept = [frame for frame in self.live if frame.speech]
        self.live.clear()
        for frame in reversed(kept):
            if len(self.early) == self.early.maxlen:
                break  # the pre-buffer is full of newer speech already
            self.early.appendleft(frame)

    def requeue(self, items: list[Item]) -> None:
        """Put back what was written but never reached the agent (the server queued the
        conversation meanwhile): messages ahead of those waiting, speech ahead of the pre-buffer."""
        for item in reversed(items):
            if isinstance(item, Message):
                self.messages.appendleft(item)
                self._message_bytes += len(item.text)
            elif len(self.early) < (self.early.maxlen or 0):
                self.early.appendleft(item)

    def clear_audio(self) -> int:
        """Drop the kept speech (nobody waits for it any more); returns how many frames."""
        n = len(self.early) + len(self.live)
        self.early.clear()
        self.live.clear()
        return n

    def clear_messages(self) -> int:
        n = len(self.messages)
        self.messages.clear()
        self._message_bytes = 0
        return n

    def _append(self, queue: deque[Frame], item: Frame, reason: str) -> bool:
        full = len(queue) == queue.maxlen
        if full:
            self.dropped[reason] += 1
        queue.append(item)
        return not full
