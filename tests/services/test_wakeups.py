"""Wakeups: a keyed notify wakes only that key's waiters, so N waiting devices cost N wake-ups, not N²."""

from __future__ import annotations

import asyncio
import threading

from services.wakeups import Wakeups


async def _settle() -> None:
    for _ in range(5):  # call_soon_threadsafe callbacks and the woken tasks run within a few loop turns
        await asyncio.sleep(0)


def test_a_keyed_notify_wakes_only_that_keys_waiters_and_notify_all_wakes_everyone() -> None:
    async def scenario() -> None:
        cond = threading.Condition()
        wake = Wakeups(cond)
        checks = {"a": 0, "b": 0}
        done = {"a": False, "b": False}

        def ready(key: str):  # type: ignore[no-untyped-def]
            def predicate() -> bool:
                checks[key] += 1
                return done[key]

            return predicate

        waits = {k: asyncio.create_task(wake.wait_for(ready(k), 30, key=k)) for k in ("a", "b")}
        await _settle()
        before = dict(checks)
        with cond:
            wake.notify("a")
        await _settle()
        assert checks["a"] == before["a"] + 1 and checks["b"] == before["b"]  # b's predicate was not re-run
        with cond:
            done["a"] = True
            wake.notify_keys(["a"])
        assert await asyncio.wait_for(waits["a"], 5) is True
        with cond:
            done["b"] = True
            wake.notify_all()
        assert await asyncio.wait_for(waits["b"], 5) is True
        assert not wake._wakers  # every finished wait removed its waker

    asyncio.run(scenario())


def test_a_wait_times_out_false_and_leaves_no_waker() -> None:
    async def scenario() -> None:
        wake = Wakeups(threading.Condition())
        assert await wake.wait_for(lambda: False, 0.05, key="x") is False
        assert not wake._wakers

    asyncio.run(scenario())
