"""Guest-triggerable events at QEMU's rate (monitor/monitor.c): the first at once, later ones
within a second held (the newest replacing older), the held one sent when the second ends;
VSERPORT_CHANGE limited per port id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmpy.monitor.throttle import EventThrottle


class ManualTimers:
    """Timers fired by the test: the throttle's only view of time besides the deadline."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, Callable[[], None]]] = []

    def schedule(self, deadline_ns: int, callback: Callable[[], None]) -> None:
        self.pending.append((deadline_ns, callback))

    def fire_all(self) -> None:
        due, self.pending = self.pending, []
        for _, callback in due:
            callback()


def make() -> tuple[EventThrottle, list[tuple[str, dict[str, Any]]], ManualTimers]:
    sent: list[tuple[str, dict[str, Any]]] = []
    timers = ManualTimers()
    return EventThrottle(lambda e, d: sent.append((e, d)), timers.schedule), sent, timers


def test_unthrottled_events_pass_at_once() -> None:
    throttle, sent, timers = make()
    for _ in range(3):
        throttle.emit("STOP", {})
    assert sent == [("STOP", {})] * 3
    assert timers.pending == []


def test_vserport_change_is_limited_per_port_and_keeps_the_last_state() -> None:
    throttle, sent, timers = make()
    throttle.emit("VSERPORT_CHANGE", {"id": "a", "open": True})
    throttle.emit("VSERPORT_CHANGE", {"id": "b", "open": True})  # another port: not held
    throttle.emit("VSERPORT_CHANGE", {"id": "a", "open": False})
    throttle.emit("VSERPORT_CHANGE", {"id": "a", "open": True})
    throttle.emit("VSERPORT_CHANGE", {"id": "a", "open": False})
    assert sent == [("VSERPORT_CHANGE", {"id": "a", "open": True}),
                    ("VSERPORT_CHANGE", {"id": "b", "open": True})]
    assert len(timers.pending) == 2
    timers.fire_all()  # the second ends: the newest held event for "a" goes out
    assert sent[2:] == [("VSERPORT_CHANGE", {"id": "a", "open": False})]
    assert len(timers.pending) == 1  # "a" starts a new period; "b" had nothing held
    throttle.emit("VSERPORT_CHANGE", {"id": "a", "open": True})
    assert len(sent) == 3  # still within "a"'s new period
    timers.fire_all()
    assert sent[3:] == [("VSERPORT_CHANGE", {"id": "a", "open": True})]
    timers.fire_all()  # a period with nothing held ends the throttling of "a"
    assert timers.pending == []
    throttle.emit("VSERPORT_CHANGE", {"id": "a", "open": False})
    assert sent[4:] == [("VSERPORT_CHANGE", {"id": "a", "open": False})]
