"""The captions of the current exchange, as the kiosk page shows them: what the user said and
what the agent said so far, cut where the user interrupted. Kept in the model so that a page
loaded mid-conversation (a reload, a browser restarted by its watchdog) gets them in its
snapshot, and cleared ``page_hold`` seconds after the exchange is over, so that the next
visitor does not read the last one's words (the page is told: ``captions_cleared``).

They are folded from the very events the page draws from (``user_transcript``,
``agent_response_part``, ``agent_response``, ``agent_response_correction``, ``interruption``),
by the page's own rules, so the snapshot and a page that saw every event agree. The exchange
is over when the conversation is (closed, or being reopened), or, with a conversation that
stays open (``persistent``), when the daemon is idle again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from . import effects as fx
from .model import MAX_CAPTION_LINES, MAX_CAPTION_TEXT, CaptionLine, Captions, Link
from .states import State
from .step import Step

KINDS = frozenset({"user_transcript", "agent_response_part", "agent_response", "agent_response_correction",
                   "interruption"})


def fold(c: Captions, event: Mapping[str, Any]) -> Captions:
    """The captions after one published event (the page's rules, page.html's ``handlers``)."""
    kind = event.get("type")
    lines = list(c.lines)
    last = lines[-1] if lines and lines[-1].who == "agent" else None  # the page's agentLine
    if kind == "user_transcript":
        lines.append(CaptionLine("user", _text(event.get("text")), done=True))
    elif kind == "agent_response_part":
        if event.get("part") == "start" or last is None or last.done:
            last = CaptionLine("agent", "")
            lines.append(last)
        if event.get("part") == "delta" and not last.cut:
            lines[-1] = replace(last, text=_text(last.text + _text(event.get("text"))))
    elif kind == "agent_response":
        if last is None or last.done:
            last = CaptionLine("agent", "")
            lines.append(last)
        lines[-1] = replace(last, text=last.text if last.cut else _text(event.get("text")), done=True)
    elif kind == "agent_response_correction" and last is not None:
        lines[-1] = replace(last, text=_text(event.get("corrected")), cut=True)
    elif kind == "interruption" and last is not None:
        lines[-1] = replace(last, cut=True)
    else:
        return c
    return replace(c, lines=tuple(lines[-MAX_CAPTION_LINES:]))


def _text(value: Any) -> str:
    return value[:MAX_CAPTION_TEXT] if isinstance(value, str) else ""


def follow(s: Step) -> None:
    """After a decision: fold what it published, and start (or stop) the wait before clearing."""
    before = c = s.m.captions
    shown = False
    for effect in s.effects:
        if isinstance(effect, fx.Publish) and effect.event.get("type") in KINDS:
            c = fold(c, effect.event)
            shown = True
    m = s.m
    going_on = m.link is Link.OPEN and not (m.config.persistent and m.state is State.IDLE)
    if going_on or not c.lines:
        if c.clear_at is not None:
            c = replace(c, clear_at=None)
    elif c.clear_at is None or shown:
        c = replace(c, clear_at=s.now + m.config.page_hold)
    if c != before:
        s.set(captions=c)


def expire(s: Step) -> None:
    """At its deadline: the exchange has been over for ``page_hold`` seconds: clear it."""
    c = s.m.captions
    if c.clear_at is not None and s.now >= c.clear_at:
        s.set(captions=Captions())
        s.publish(type="captions_cleared")


def shown(c: Captions) -> list[dict[str, Any]]:
    """The captions as the snapshot carries them."""
    return [{"who": line.who, "text": line.text, "cut": line.cut, "done": line.done} for line in c.lines]
