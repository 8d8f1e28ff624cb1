"""The conversation engine: every decision about the agent connection, with no I/O.

Modelled on websockets' ``protocol.py`` (and h11): the engine is fed what happened and
the time, and hands back what to do. It never awaits, sleeps, reads the clock, logs or
touches a socket; the I/O shell (:mod:`pi_agent.net.session`) does all of that.

Fed with::

    request(now) / end(reason, now) / shutdown(now)         the owner's wishes
    hush(quiet)                                             the mic is held back: keep the conversation open cheaply
    send_audio(frame, speech, now) / send_preroll(...)      mic frames (16 kHz PCM)
    audio_to_send(frame, speech, now)                       ... or the frame's text, when it can go at once
    send_message(kind, text, now) / interrupt_locally()     messages, local barge-in
    connection_open(now) / connect_failed(...)              how an attempt went
    closing(now)                                            the closing handshake began
    receive(frame, now) / heard(now)                        a data frame / any bytes
    connection_closed(now, code=, reason=, sent_code=)      the socket is gone
    pause_writing() / resume_writing()                      transport flow control
    tick(now)                                               time passed

Hands out::

    events()            typed :mod:`events <pi_agent.engine.events>` for the decision function
    actions()           Connect, Ping, Close, Abort: for the shell to carry out
    data_to_send(now)   JSON text frames to write, in order
    next_deadline()     when ``tick`` has something to do next (None: nothing is due)

Here: the phases of a connection's life, the bounded outbox and pre-buffer
(:mod:`.outbox`), the dead-peer clock (time since anything at all was received: a full
send buffer cannot hide a dead peer), whether a conversation was healthy (it completed
an exchange, or lasted ``backoff_reset_after``), and the reconnect decision
(:mod:`.backoff`). What the engine does with what it receives (the one dispatch over the
server's messages, the interruption filter, pongs owed, the server's queue) is
:mod:`.receiving`'s, a mixin of the engine; one connection's record and what its end
means, :mod:`.connection`'s.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

from .. import __version__
from . import events as ev
from . import protocol as p
from .backoff import Backoff, Outcome
from .connection import MAX_FRAME, QUEUE_REPLAY_S, Connection
from .outbox import Frame, Message, Outbox
from .receiving import AudioDecoder, EncoderFactory, Receiver
from .settings import EngineSettings

SOURCE = "unknown"  # source_info.source is an enum of the official clients (1.1.0): we are none of them
SOURCE_VERSION = f"pi-agent/{__version__}"[:50]  # ... and the version names us (at most 50 characters)
KEEPALIVE_AFTER = 0.5  # s without anything sent -> 100 ms of silence (the server's input timeout is 60 s)
KEEPALIVE_PCM = bytes(int(0.1 * 16000) * 2)


@dataclass
class Stats:
    """Plain counters, read by ``/metrics`` at scrape time (nothing is pushed per frame)."""

    messages_in: Counter[str] = field(default_factory=Counter)
    messages_out: Counter[str] = field(default_factory=Counter)
    audio_dropped: Counter[str] = field(default_factory=Counter)  # besides the outbox's own
    protocol_errors: int = 0
    conversations: int = 0
    reconnects: int = 0
    ping_ms: int | None = None


class Engine(Receiver):
    """The sans-I/O conversation engine. See the module docstring for the contract; what it
    does with what it receives is :class:`~.receiving.Receiver`'s."""

    def __init__(self, settings: EngineSettings, *, encoder_factory: EncoderFactory,
                 decode_audio: AudioDecoder, backoff: Backoff | None = None) -> None:
        self.settings = settings
        self.persistent = settings.policy == "persistent"
        self.backoff = backoff or Backoff(settings.backoff_initial, settings.backoff_max,
                                          settings.backoff_reset_after)
        self.outbox = Outbox(prebuffer_s=settings.prebuffer)
        self.stats = Stats()
        self.wanted = self.persistent
        self.phase = ev.Phase.WAITING if self.persistent else ev.Phase.IDLE
        self.attempt = 0
        self._encoder_factory = encoder_factory
        self._decode_audio = decode_audio
        self._retry_at = -math.inf
        self._wakeable = True  # a request cuts the current wait short (after a normal end only)
        self._last_activity = -math.inf  # the user or the agent last did something
        self._paused = False
        self._quiet = False  # the owner holds the mic back (hush): the keepalive comes less often
        self._conn = None
        self._events = []
        self._actions: list[ev.Action] = []
        self._messages_noticed = False
        dpt = settings.dead_peer_timeout
        self._ping_after = dpt / 3
        self._close_timeout = min(2.0, dpt / 3)

    # --- outputs ----------------------------------------------------------------------------

    def events(self) -> list[ev.Event]:
        """Events since the last call, in order."""
        out, self._events = self._events, []
        return out

    def actions(self) -> list[ev.Action]:
        """What the shell must do, since the last call, in order."""
        out, self._actions = self._actions, []
        return out

    def data_to_send(self, now: float) -> list[str]:
        """Text frames to write now, in order (none while the transport is paused)."""
        conn = self._conn
        if conn is None or self._paused or self.phase not in (ev.Phase.OPENING, ev.Phase.OPEN):
            return []
        out: list[str] = []
        if conn.init_pending:
            conn.init_pending = False
            s = self.settings
            out.append(p.encode_initiation(dynamic_variables=s.dynamic_variables, overrides=s.overrides,
                                           user_id=s.user_id, source=SOURCE, version=SOURCE_VERSION))
            self.stats.messages_out["conversation_initiation_client_data"] += 1
        outbox = self.outbox
        while True:  # before the metadata (and while queued) only pongs go; the rest waits
            item = outbox.pop() if self._admitted(conn) else (
                outbox.control.popleft() if outbox.control else None)
            if item is None:
                break
            if conn.sent_since_open is not None:
                self._keep_for_replay(conn, item, now)
            if isinstance(item, Message):
                out.append(item.text)
                self.stats.messages_out[item.kind] += 1
                conn.user_spoke = conn.user_spoke or item.kind == "user_message"
            else:
                assert conn.encode is not None  # set when the conversation opened
                out.append(p.encode_user_audio(conn.encode(item.pcm)))
                self.stats.messages_out["audio"] += 1
                conn.user_spoke = conn.user_spoke or item.speech
                conn.last_audio = now
        if out:
            conn.last_sent = now
        if not outbox.messages:
            self._messages_noticed = False
        return out

    def _keep_for_replay(self, conn: Connection, item: Message | Frame, now: float) -> None:
        """The service sends ``queue_status`` ``waiting`` right after the metadata and discards
        what arrives meanwhile: what the user said in that moment is kept, to be sent again."""
        assert conn.sent_since_open is not None and conn.opened_at is not None
        if now - conn.opened_at > QUEUE_REPLAY_S:
            conn.sent_since_open = None  # not queued: all of it reached the agent
        elif (isinstance(item, Frame) and item.speech) or (isinstance(item, Message) and item.kind != "pong"):
            conn.sent_since_open.append(item)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do; None when nothing is due."""
        conn = self._conn
        if conn is None:
            return self._retry_at if self.phase is ev.Phase.WAITING and self.wanted else None
        if self.phase is ev.Phase.CLOSING:
            return conn.close_deadline
        return min(d for d in self._deadlines(conn) if d is not None)

    def _deadlines(self, conn: Connection) -> tuple[float, float, float | None, float | None, float | None]:
        """(dead peer, ping, metadata, keepalive, idle close): computed once, here, so that
        :meth:`tick` at a deadline always finds it due (no float drift, no spinning)."""
        s = self.settings
        opening, open_ = self.phase is ev.Phase.OPENING, self.phase is ev.Phase.OPEN
        waiting = bool(self.outbox.live or self.outbox.early)
        return (conn.last_received + s.dead_peer_timeout,
                max(conn.last_received, conn.last_ping) + self._ping_after,
                conn.started + s.connect_timeout if opening and not conn.queued else None,
                (conn.last_audio + s.quiet_keepalive if self._quiet else conn.last_sent + KEEPALIVE_AFTER)
                if open_ and not (waiting or conn.queued) else None,
                self._last_activity + s.idle_timeout if open_ and not self.persistent else None)

    @property
    def is_open(self) -> bool:
        """A conversation is open (metadata received, not closing, not held in the server's queue)."""
        return self._conn is not None and self._admitted(self._conn)

    def _admitted(self, conn: Connection) -> bool:
        """What is sent now reaches the agent: the conversation is open and not queued."""
        return self.phase is ev.Phase.OPEN and not conn.queued

    @property
    def conversation_id(self) -> str | None:
        return self._conn.conversation_id if self._conn is not None else None

    # --- the owner's wishes -----------------------------------------------------------------

    def request(self, now: float) -> None:
        """A conversation is wanted (a press, speech, a message). Idempotent."""
        self._last_activity = now
        self.wanted = True
        if self.phase is ev.Phase.IDLE:
            self.phase, self._retry_at = ev.Phase.WAITING, now
        elif self.phase is ev.Phase.WAITING and self._wakeable:
            self._retry_at = min(self._retry_at, now)

    def hush(self, quiet: bool) -> None:
        """The owner holds the microphone back (``quiet``: persistent, no turn for a few seconds,
        nothing playing; see :class:`~pi_agent.audio.gate.CaptureGate`) or no longer does. Quiet, the open
        conversation is kept by 100 ms of silence ``quiet_keepalive`` seconds after the last
        audio (pongs do not count: the service closes a conversation after 60 s without user
        input) instead of :data:`KEEPALIVE_AFTER` after anything. Never quiet when
        ``quiet_keepalive`` is 0. The shell pumps after a change (the next deadline moves)."""
        self._quiet = quiet and self.settings.quiet_keepalive > 0

    @property
    def quiet(self) -> bool:
        return self._quiet

    def touch(self, now: float) -> None:
        """The conversation is in use (agent audio playing): it is not idle."""
        self._last_activity = now

    def end(self, reason: str, now: float) -> None:
        """End the conversation on purpose (on_demand idle close). Kept speech is dropped."""
        if not self.persistent:
            self.wanted = False
        self.outbox.early.clear()
        if self.phase in (ev.Phase.OPENING, ev.Phase.OPEN):
            self._close(1000, reason, now, on_purpose=reason)
        elif self.phase is ev.Phase.WAITING and not self.wanted:
            self.phase = ev.Phase.IDLE

    def shutdown(self, now: float) -> None:
        """The daemon stops: close with 1000, never reconnect."""
        self.persistent = False
        self.end("shutdown", now)
        self.outbox.clear_messages()
        if self.phase is ev.Phase.CONNECTING:
            self.phase = ev.Phase.IDLE  # the shell cancels the attempt

    def send_audio(self, frame: bytes, speech: bool, now: float) -> None:
        """One mic frame (16 kHz PCM). ``speech`` frames belong to a user turn: while no
        conversation is open they are kept (up to ``prebuffer``) and sent first once one opens."""
        if speech:
            self._last_activity = now
        if self.is_open:
            if not self.outbox.push_live(Frame(frame, speech)):
                self._notice_once("late", "warning", "the network cannot keep up: live audio more than "
                                  "2 s behind is dropped, oldest first")
        elif speech and self.wanted and not self.outbox.push_early(Frame(frame, True)):
            self._notice_once("prebuffer_full", "warning", f"the conversation took more than "
                              f"{self.settings.prebuffer:g} s to open: the oldest speech kept meanwhile "
                              "is dropped (session.prebuffer)")

    def audio_to_send(self, frame: bytes, speech: bool, now: float) -> str | None:
        """:meth:`send_audio`, the way a mic frame usually goes: when it can be written at once
        (the conversation open and admitted, nothing waiting before it, the writer not paused,
        past the moment the server may still queue us), its text frame, which the caller
        writes now, as if it had come from :meth:`data_to_send`; otherwise None, and it is
        queued as :meth:`send_audio` queues it (the caller then pumps)."""
        conn = self._conn
        outbox = self.outbox
        if (conn is None or self._paused or self.phase is not ev.Phase.OPEN or conn.queued
                or conn.sent_since_open is not None or conn.encode is None
                or outbox.live or outbox.early or outbox.messages or outbox.control):
            self.send_audio(frame, speech, now)
            return None
        if speech:
            self._last_activity = now
            conn.user_spoke = True
        conn.last_sent = conn.last_audio = now
        self.stats.messages_out["audio"] += 1
        return p.encode_user_audio(conn.encode(frame))

    def send_preroll(self, frames: list[bytes], already_sent: bool, now: float) -> None:
        """The audio just before a user turn started; skipped if it already went out live."""
        if already_sent and self.is_open:
            return
        for frame in frames:
            self.send_audio(frame, True, now)

    def send_message(self, kind: str, text: str, now: float) -> None:
        """A JSON message. Without an open conversation it waits (bounded) and one is requested."""
        self._last_activity = now
        dropped = self.outbox.push_message(Message(kind, text))
        if dropped and not self._messages_noticed:
            self._messages_noticed = True
            self._events.append(ev.Notice("warning", "more messages wait to be sent than the queue holds "
                                          "(64, or 512 KiB): the oldest are dropped"))
        if self.phase is not ev.Phase.OPEN:
            self.request(now)

    def interrupt_locally(self) -> None:
        """The user stopped the agent (button, API, stop word): drop the rest of the reply
        that was playing, whatever the server sends of it later."""
        conn = self._conn
        if conn is not None and conn.current_turn_id is not None:
            conn.drop_below = max(conn.drop_below, conn.current_turn_id + 1)

    # --- what the shell reports -------------------------------------------------------------

    def connect_failed(self, outcome: Outcome, reason: str, now: float, retry_after: float | None = None) -> None:
        """The attempt ended before a socket opened (signed URL refused, handshake failed)."""
        self._conn = None
        self._finish(ev.Closed(outcome, reason, None), retry_after, now)

    def connection_open(self, now: float) -> None:
        """The WebSocket is open: the initiation message goes first; the metadata is awaited."""
        self._conn = Connection(started=now, last_received=now, last_sent=now, last_ping=now, last_audio=now)
        self.phase = ev.Phase.OPENING
        self._paused = False
        if not self.wanted:  # the daemon began to stop while this attempt was under way
            self._close(1000, "shutdown", now, on_purpose="shutdown")

    def closing(self, now: float) -> None:
        """The closing handshake has begun (the server's close frame, or ours): nothing more
        can be sent on this connection; speech from now on is kept for the next one."""
        if self._conn is not None and self.phase in (ev.Phase.OPENING, ev.Phase.OPEN):
            self.phase = ev.Phase.CLOSING
            self._conn.close_deadline = now + self._close_timeout

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def connection_closed(self, now: float, *, code: int | None = None, reason: str = "",
                          sent_code: int | None = None) -> None:
        """The socket is gone. ``code``/``reason``: the server's close frame (None: there was
        none); ``sent_code``: the code of a close we sent (1009: a frame over the limit)."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self._paused = False
        self.outbox.connection_lost()
        was_open = conn.opened_at is not None
        lasted = now - conn.opened_at if conn.opened_at is not None else 0.0
        outcome, text = conn.verdict(code, reason, sent_code)
        if was_open and (conn.exchanged or lasted >= self.settings.backoff_reset_after):
            self.backoff.reset()  # healthy, however short: the next one comes within backoff_initial
        self._finish(ev.Closed(outcome, text, None, code, was_open, lasted), None, now)

    def tick(self, now: float) -> None:
        """Do what is due by ``now``."""
        conn = self._conn
        if conn is None:
            if self.phase is ev.Phase.WAITING and self.wanted and now >= self._retry_at:
                self.phase = ev.Phase.CONNECTING
                self.attempt += 1
                if self.attempt > 1:
                    self.stats.reconnects += 1
                self._events.append(ev.Connecting(self.attempt))
                self._actions.append(ev.Connect())
            return
        if self.phase is ev.Phase.CLOSING:
            if conn.close_deadline is not None and now >= conn.close_deadline:
                conn.close_deadline = None
                self._actions.append(ev.Abort())
            return
        s = self.settings
        dead, ping, metadata, keepalive, idle = self._deadlines(conn)
        if now >= dead:
            conn.failure = f"the server stopped answering (nothing received for {s.dead_peer_timeout:g} s)"
            self.phase = ev.Phase.CLOSING
            self._actions.append(ev.Abort())
            return
        if now >= ping:
            conn.last_ping = now
            self._actions.append(ev.Ping())
        if metadata is not None and now >= metadata:
            conn.failure = f"no conversation metadata within {s.connect_timeout:g} s"
            self._close(1000, "no metadata", now)
            return
        if keepalive is not None and now >= keepalive:
            self.outbox.push_live(Frame(KEEPALIVE_PCM, False))
            conn.last_sent = conn.last_audio = now  # due again even while the writer is paused
        if idle is not None and now >= idle:
            self._events.append(ev.Notice("info", f"no speech and no agent audio for {s.idle_timeout:g} s: "
                                          "closing the conversation"))
            self.end("idle", now)

    # --- inside -------------------------------------------------------------------------------

    def _close(self, code: int, reason: str, now: float, *, on_purpose: str | None = None) -> None:
        conn = self._conn
        assert conn is not None
        if on_purpose is not None:
            conn.close_reason = on_purpose
        self.phase = ev.Phase.CLOSING
        conn.close_deadline = now + self._close_timeout
        self._actions.append(ev.Close(code, reason[:120]))

    def _finish(self, closed: ev.Closed, retry_after: float | None, now: float) -> None:
        """After a connection: decide whether and when to try again."""
        outcome = closed.outcome
        if outcome is Outcome.CLOSED or (outcome is Outcome.ENDED and not self.persistent):
            self.wanted = False
        elif (outcome is Outcome.RETRY and not self.persistent
              and now - self._last_activity > self.settings.idle_timeout):
            closed = self._give_up(closed, now)
        if not self.wanted:
            self.attempt = 0
            self.phase = ev.Phase.IDLE
            self._events.append(closed)
            return
        delay = self.backoff.fatal_delay() if outcome is Outcome.FATAL else self.backoff.next_delay()
        if retry_after:  # the server asked for a pause (Retry-After): honour it, within the cap
            delay = max(delay, min(retry_after, self.settings.backoff_max))
        self.phase, self._retry_at = ev.Phase.WAITING, now + delay
        self._wakeable = outcome is Outcome.ENDED  # after a failure a request does not cut the wait
        self._events.append(replace(closed, retry_in=delay))

    def _give_up(self, closed: ev.Closed, now: float) -> ev.Closed:
        """on_demand, failing, and nobody has asked for a while: stop retrying until the next
        request. What waited for the conversation is too old to send by then: it is dropped."""
        self.wanted = False
        waited = [f"{self.outbox.early_seconds:.1f} s of speech"] if self.outbox.early else []
        if self.outbox.messages:
            waited.append(f"{len(self.outbox.messages)} message(s)")
        if waited:
            self._events.append(ev.Notice(
                "warning", f"dropped {' and '.join(waited)} that waited for a conversation which could not "
                f"be opened (last asked {now - self._last_activity:.0f} s ago)"))
        self.stats.audio_dropped["gave_up"] += self.outbox.clear_audio()
        self.outbox.clear_messages()
        return replace(closed, outcome=Outcome.CLOSED, reason=(
            f"{closed.reason}; nobody has asked for a conversation for {self.settings.idle_timeout:g} s: "
            "no more retries until the next press or speech"))

    def _notice_once(self, key: str, level: ev.Level, text: str) -> None:
        """One notice per kind per connection (each drop is still counted)."""
        conn = self._conn
        seen = conn.noticed if conn is not None else None
        if seen is None or key not in seen:
            if seen is not None:
                seen.add(key)
            self._events.append(ev.Notice(level, text))

__all__ = ["KEEPALIVE_AFTER", "MAX_FRAME", "SOURCE", "Engine", "Stats"]  # MAX_FRAME: connection.py's, for the shell
