"""The model: the daemon's state and every fact its decisions need, in one immutable value.

:func:`~pi_agent.decide.decide.decide` takes a model and returns the next; nothing else
holds state that decisions depend on. What the LEDs, ``sd_notify`` and ``/healthz``
show is derived from it (:func:`status`, :func:`health`), so none of them can get stuck.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .button import ButtonPolicy
from .states import State

THINKING_TIMEOUT = 15.0  # s in "thinking" with no reply before going back to idle
REPLY_STALL = 5.0  # s the speaker may run dry before a reply's last chunk (is_final) before "speaking" ends
MAX_REPORTED = 64  # distinct failure lines remembered for "log once" (forgotten on success)
QUEUED_TEXT = "waiting for the agent (the service's queue: all agents are busy)"
BUTTON_AT_REST = ButtonPolicy()  # no gesture under way; frozen, so every model can share this one


@dataclass(frozen=True, slots=True)
class Config:
    """What the decisions need from the settings; fixed at start-up (built by
    :meth:`pi_agent.config.Settings.decide_config`)."""

    mode: str = "vad"  # capture mode: push_to_talk, vad, wake_word, always
    half_duplex: bool = True  # the mic is muted while the speaker plays
    toggle: bool = False  # push_to_talk: a press starts the turn and the next ends it
    earcons: frozenset[str] = frozenset({"listening", "done", "error", "offline"})
    transcripts: bool = True  # log what was said
    tool_timeout: float = 10.0  # s an event-API client has to answer a client tool it handles
    follow_up: float = 5.0  # wake_word: s after a reply in which the user may answer without it
    aec: bool = False  # the speaker's echo is cancelled in software (the mic stays live)
    mcp_approval: str = "deny"  # an MCP tool awaiting approval: deny, or ask the event API
    mcp_allow: frozenset[str] = frozenset()  # MCP tools approved without asking
    page_hold: float = 60.0  # s the captions are kept once the exchange is over (api.page_hold)
    persistent: bool = False  # the conversation stays open: the exchange is over when the daemon is idle
    quiet: bool = False  # persistent, session.quiet_keepalive set: the mic may be held back while nothing happens

    @property
    def push_to_talk(self) -> bool:
        return self.mode == "push_to_talk"

    @property
    def wake_word(self) -> bool:
        return self.mode == "wake_word"


class Link(enum.StrEnum):
    """Where the conversation link is, as the engine's events tell it (:class:`Model.link`)."""

    CLOSED = "closed"            # no conversation, none being opened, no retry planned
    CONNECTING = "connecting"    # an attempt is under way, or the service holds this device in its queue
    OPEN = "open"                # open and admitted: what is sent reaches the agent
    BACKING_OFF = "backing_off"  # closed, waiting out a delay before the next attempt

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class PendingTool:
    """A client tool call (or an MCP tool's approval request, ``mcp``) waiting for an
    event-API client's answer until ``deadline``."""

    tool_call_id: str
    tool_name: str
    deadline: float
    mcp: bool = False


MAX_CAPTION_LINES = 6  # lines of the exchange kept (as many as the page shows)
MAX_CAPTION_TEXT = 2000  # characters kept of one line


@dataclass(frozen=True, slots=True)
class CaptionLine:
    """One line of the captions: who said it, what (so far), whether it was cut (the user
    interrupted) and whether it is whole (the agent's whole response came)."""

    who: str  # "user" or "agent"
    text: str
    cut: bool = False
    done: bool = False


@dataclass(frozen=True, slots=True)
class Captions:
    """What the kiosk page shows of the current exchange (:mod:`.captions`), bounded
    (:data:`MAX_CAPTION_LINES` lines of :data:`MAX_CAPTION_TEXT` characters); cleared at
    ``clear_at``, ``page_hold`` seconds after the exchange is over."""

    lines: tuple[CaptionLine, ...] = ()
    clear_at: float | None = None


@dataclass(frozen=True, slots=True)
class Model:
    config: Config = Config()
    state: State = State.STARTING
    link: Link = Link.CLOSED  # the one place the link's phase is held; the booleans below derive from it
    muted: bool = False
    conversation_id: str | None = None
    device_errors: tuple[tuple[str, str], ...] = ()  # (device, "device: what failed"), latest last
    session_error: str | None = None  # why the last attempt failed
    fatal: bool = False  # ... in a way retrying cannot fix (bad key, unknown agent)
    in_turn: bool = False  # the user's turn is on (held only here: the capture gate is told it with each frame)
    talk_from_down: bool = False  # push-to-talk turn started by the press that stopped the agent
    button: ButtonPolicy = BUTTON_AT_REST
    speech_ended_at: float | None = None  # for the response-latency metric
    thinking_since: float | None = None
    tools: tuple[PendingTool, ...] = ()
    reported: frozenset[str] = frozenset()  # failure lines already logged at their level
    tool_handlers: frozenset[str] = frozenset()  # client tools event-API clients answer ("*": all)
    follow_up_until: float | None = None  # wake_word: speech starts a turn without it until then
    queued: bool = False  # the server holds the conversation in its queue (all agents busy)
    marks_final: bool = True  # the server marks each reply's last chunk (is_final), until a reply ends without
    reply_complete: bool = True  # the reply now playing has had its last chunk (or none is under way)
    dry_since: float | None = None  # speaking, the speaker ran dry before that last chunk came
    shutting_down: bool = False
    captions: Captions = Captions()

    @property
    def connected(self) -> bool:
        """A conversation is open and admitted."""
        return self.link is Link.OPEN

    @property
    def connecting(self) -> bool:
        """An attempt to open one is under way (or the service's queue holds it)."""
        return self.link is Link.CONNECTING

    @property
    def backing_off(self) -> bool:
        """Waiting to retry."""
        return self.link is Link.BACKING_OFF

    @property
    def device_error(self) -> str | None:
        return self.device_errors[-1][1] if self.device_errors else None

    def pending_tool(self, tool_call_id: str) -> PendingTool | None:
        return next((t for t in self.tools if t.tool_call_id == tool_call_id), None)


@dataclass(frozen=True, slots=True)
class Status:
    """Everything the LEDs, systemd STATUS= and the API snapshot show (derived from the model:
    ``connected`` and ``backing_off`` from its :class:`Link`)."""

    state: State
    connected: bool
    muted: bool
    backing_off: bool
    error: bool
    conversation_id: str | None
    wake_word: bool = False  # the capture mode waits for the wake word between turns
    follow_up: bool = False  # ... but not now: the user may answer the reply without it
    queued: bool = False  # waiting in the agent service's queue (all agents busy)


def may_hold_mic(model: Model) -> bool:
    """``session.quiet_keepalive``: the capture gate may hold the microphone back (see
    :mod:`pi_agent.audio.gate`): a persistent conversation is open, nobody talks and no reply
    plays, whether or not one is awaited. The caller adds what only the speaker knows: nothing
    is audible."""
    return model.config.quiet and model.connected and model.state in _QUIET_STATES


_QUIET_STATES = (State.IDLE, State.THINKING)


def status(model: Model) -> Status:
    return Status(model.state, model.connected, model.muted, model.backing_off,
                  model.device_error is not None or model.fatal, model.conversation_id,
                  model.config.wake_word, model.follow_up_until is not None, model.queued)


def health(model: Model) -> tuple[bool, str]:
    """For /healthz and the watchdog: unhealthy while in ``error`` or ``offline``."""
    if model.state is State.ERROR:
        return False, model.device_error or model.session_error or "error"
    if model.state is State.OFFLINE:
        return False, "offline: " + (model.session_error or "reconnecting")
    if model.queued:
        return True, QUEUED_TEXT
    return True, model.state.value


def deadline(model: Model) -> float | None:
    """When the model next needs a :class:`~pi_agent.decide.inputs.Tick` (None: never)."""
    due = [t.deadline for t in model.tools]
    if model.follow_up_until is not None:
        due.append(model.follow_up_until)
    if model.state is State.THINKING and model.thinking_since is not None:
        due.append(model.thinking_since + THINKING_TIMEOUT)
    if model.state is State.SPEAKING and model.dry_since is not None:
        due.append(model.dry_since + REPLY_STALL)
    if model.captions.clear_at is not None:
        due.append(model.captions.clear_at)
    return min(due, default=None)
