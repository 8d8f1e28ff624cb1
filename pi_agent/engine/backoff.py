"""Retry policy as data: when to reconnect, and after how long. Pure: no clock, no sleep.

Delays are capped exponential with full jitter: attempt *n* waits a uniform random time
in ``[0, min(cap, initial * 2**n)]``. The attempt count resets only after a healthy
conversation (one that completed an exchange, or stayed up for ``reset_after``
seconds: the engine judges, :meth:`Backoff.reset` applies), so a server that accepts
and drops at once cannot cause a tight loop. Failures that retrying cannot fix wait
the full cap.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from .server_messages import ErrorEvent


class Outcome(enum.StrEnum):
    """What a finished or failed connection means for the next one."""

    ENDED = "ended"    # the server ended the conversation normally: start a new one if wanted
    CLOSED = "closed"  # we closed it on purpose (idle, shutdown): nothing to retry
    RETRY = "retry"    # transient: retry after a backoff delay
    FATAL = "fatal"    # retrying will not help (auth, unknown agent, bad config): retry at the cap


# error_type values for which only a configuration change helps (the agent's or ours).
CONFIG_ERROR_TYPES = frozenset({
    "override_error", "missing_dynamic_variable", "missing_dynamic_variable_transfer",
    "telephony_agent_error", "mcp_tool_error", "mcp_https_error",
})
_AUTH_WORDS = re.compile(
    r"auth|api[ _-]?key|unauthori[sz]ed|forbidden|permission|signature|invalid agent|"
    r"agent (?:id )?(?:not found|does not exist)|no such agent|credential", re.IGNORECASE)


def classify_close(code: int | None, reason: str, error: ErrorEvent | None, *,
                   ended_by_agent: bool = False) -> Outcome:
    """Decide what a server close means. ``code`` None = the connection dropped without a close."""
    if code == 1000 or ended_by_agent:
        return Outcome.ENDED
    if code == 1008:
        parts = [reason] + ([error.message or "", error.reason or ""] if error else [])
        text = " ".join(part for part in parts if part)
        if (error and error.error_type in CONFIG_ERROR_TYPES) or _AUTH_WORDS.search(text):
            return Outcome.FATAL
    return Outcome.RETRY


def classify_http_status(status: int) -> Outcome:
    """Signed-URL endpoint or handshake answered ``status``."""
    if status in (400, 401, 403, 404, 422):
        return Outcome.FATAL
    return Outcome.RETRY


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter and a healthy-connection reset."""

    initial: float = 1.0
    cap: float = 60.0
    reset_after: float = 30.0
    rng: Callable[[], float] = random.random
    attempt: int = 0

    def next_delay(self) -> float:
        """Delay before the next attempt; each call counts one more failed attempt."""
        ceiling = min(self.cap, self.initial * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        return ceiling * self.rng()

    def fatal_delay(self) -> float:
        """Delay after a failure retrying cannot fix: the cap, never less."""
        self.attempt += 1
        return self.cap

    def connection_lasted(self, seconds: float) -> None:
        """Report how long the last connection stayed open; a healthy one resets the count."""
        if seconds >= self.reset_after:
            self.reset()

    def reset(self) -> None:
        """The last conversation was healthy: the next delay is ``initial`` again."""
        self.attempt = 0
