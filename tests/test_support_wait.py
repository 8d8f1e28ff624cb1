"""The tests' one wait-until helper (``tests/support_wait.py``)."""

from __future__ import annotations

import asyncio
import time

import pytest

from .support_wait import wait_until


async def test_returns_the_first_truthy_value_of_the_predicate() -> None:
    calls: list[int] = []

    def predicate() -> int | None:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert await wait_until(predicate, 5, "three calls", poll=0.001) == 3


async def test_a_coroutine_predicate_is_awaited() -> None:
    async def predicate() -> str:
        return "yes"

    assert await wait_until(predicate, 1, "an answer") == "yes"


async def test_the_changed_event_wakes_the_waiter_before_the_poll_interval() -> None:
    changed = asyncio.Event()
    box: list[str] = []

    async def later() -> None:
        await asyncio.sleep(0.01)
        box.append("x")
        changed.set()

    task = asyncio.create_task(later())
    t0 = time.monotonic()
    assert await wait_until(lambda: box, 5, "the box", changed=changed, poll=2.0) == ["x"]
    assert time.monotonic() - t0 < 1.0
    await task


async def test_a_replaced_event_is_fetched_anew_each_time() -> None:
    holder = {"event": asyncio.Event()}
    box: list[int] = []

    async def later() -> None:
        await asyncio.sleep(0.01)
        box.append(1)
        old, holder["event"] = holder["event"], asyncio.Event()
        old.set()

    task = asyncio.create_task(later())
    assert await wait_until(lambda: box, 5, "the box", changed=lambda: holder["event"], poll=2.0) == [1]
    await task


async def test_a_timeout_says_what_was_awaited_how_long_and_what_was_seen() -> None:
    with pytest.raises(AssertionError) as caught:
        await wait_until(lambda: False, 0.05, "the moon", poll=0.01, seen=lambda: "clouds")
    assert str(caught.value) == "timed out after 0.05 s waiting for the moon; seen: clouds"


async def test_the_predicate_is_checked_even_with_no_time_left() -> None:
    assert await wait_until(lambda: 7, 0, "seven") == 7
