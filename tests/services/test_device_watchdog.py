"""The device's call watchdog: a hung call is cancelled from outside at its deadline; a finished one is not."""

from __future__ import annotations

import threading

from services.device.watchdog import Watchdog


def test_a_call_past_its_deadline_is_cancelled_and_a_disarmed_one_is_not() -> None:
    watchdog = Watchdog()
    early, late = threading.Event(), threading.Event()
    disarmed = watchdog.arm(0.05, early.set)
    assert watchdog.disarm(disarmed) is False  # the call ended in time
    fired = watchdog.arm(0.1, late.set)  # due after the disarmed one: the heap runs them in order
    assert late.wait(timeout=10)
    assert not early.is_set()
    assert watchdog.disarm(fired) is True  # the device learns its call was ended by the watchdog


def test_many_armed_calls_share_one_thread() -> None:
    watchdog = Watchdog()
    done = [threading.Event() for _ in range(50)]
    handles = [watchdog.arm(0.01 * (i % 5), e.set) for i, e in enumerate(done)]
    assert all(e.wait(timeout=10) for e in done)
    assert all(watchdog.disarm(h) for h in handles)
    assert sum(t.name == "call-watchdog" for t in threading.enumerate()) >= 1
