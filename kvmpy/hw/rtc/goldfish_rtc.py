"""Goldfish RTC (``google,goldfish-rtc``), QEMU's ``goldfish_rtc`` (hw/rtc/goldfish_rtc.c).

32-bit registers; the time is nanoseconds since the Unix epoch, starting at the host's wall
clock and moved by guest writes (kept as an offset from the host clock)::

    0x00 TIME_LOW      read: low half of now, latches the high half; write: set low half
    0x04 TIME_HIGH     read: the latched high half; write: set high half
    0x08 ALARM_LOW     write: low half of the alarm time, arms the alarm
    0x0c ALARM_HIGH    write: high half of the alarm time (write it first)
    0x10 IRQ_ENABLED   bit 0
    0x14 CLEAR_ALARM   write: disarm
    0x18 ALARM_STATUS  1 while armed
    0x1c CLEAR_INTERRUPT

The interrupt line is ``pending and enabled``.  The alarm runs on a host timer through the
injected ``schedule(deadline_ns, callback) -> cancel`` (deadline in ``clock()`` time); the
callback must be run with the device lock held, like any device call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kvmpy import log
from kvmpy.hw.core import SysBusDevice, state_from_dict
from kvmpy.hw.irq import IrqLine, unconnected_irq
from kvmpy.qom import Property, register_type

RTC_TIME_LOW = 0x00
RTC_TIME_HIGH = 0x04
RTC_ALARM_LOW = 0x08
RTC_ALARM_HIGH = 0x0C
RTC_IRQ_ENABLED = 0x10
RTC_CLEAR_ALARM = 0x14
RTC_ALARM_STATUS = 0x18
RTC_CLEAR_INTERRUPT = 0x1C

_U64 = (1 << 64) - 1
_LO = 0xFFFFFFFF

Cancel = Callable[[], None]
Scheduler = Callable[[int, Callable[[], None]], Cancel]
"""``schedule(deadline_ns, callback)`` runs ``callback`` once ``clock() >= deadline_ns``;
returns a function that cancels it."""


class ManualScheduler:
    """A scheduler that fires only when told to: :meth:`run_due` calls the callbacks whose
    deadline has passed.  For tests and for main loops that poll timers themselves."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self.clock = clock
        self.timers: dict[int, tuple[int, Callable[[], None]]] = {}
        self._next_id = 0

    def __call__(self, deadline_ns: int, callback: Callable[[], None]) -> Cancel:
        ident = self._next_id
        self._next_id += 1
        self.timers[ident] = (deadline_ns, callback)

        def cancel() -> None:
            self.timers.pop(ident, None)

        return cancel

    def next_deadline(self) -> int | None:
        return min((d for d, _ in self.timers.values()), default=None)

    def run_due(self) -> int:
        now = self.clock()
        due = sorted((d, i) for i, (d, _) in self.timers.items() if d <= now)
        for _, ident in due:
            entry = self.timers.pop(ident, None)
            if entry is not None:
                entry[1]()
        return len(due)


@dataclass
class GoldfishRtcState:
    tick_offset: int = 0
    """Guest time minus ``clock()``, in ns."""
    alarm_next: int = 0
    alarm_running: int = 0
    irq_pending: int = 0
    irq_enabled: int = 0
    time_high: int = 0


@register_type("goldfish_rtc", "sys-bus-device", description="Goldfish RTC")
class GoldfishRtc(SysBusDevice):
    access_sizes = (4,)
    name = "goldfish_rtc"
    region_size = 0x24
    state: GoldfishRtcState

    big_endian = Property(bool, False, "big-endian registers (unsupported)")

    def __init__(self, irq: IrqLine | None = None, schedule: Scheduler | None = None,
                 clock: Callable[[], int] = time.time_ns, **props: object) -> None:
        self.set_properties(props)
        self.irq = irq if irq is not None else unconnected_irq()
        self.clock = clock
        self.schedule: Scheduler = schedule if schedule is not None else ManualScheduler(clock)
        self._cancel: Cancel | None = None
        self._token = 0
        self.state = GoldfishRtcState()
        self._init_time()

    def _init_time(self) -> None:
        # QEMU starts from the host's UTC time in whole seconds (qemu_get_timedate).
        now = self.clock()
        self.state.tick_offset = (now // 1_000_000_000) * 1_000_000_000 - now

    def count(self) -> int:
        """The guest's current time in ns since the epoch."""
        return (self.state.tick_offset + self.clock()) & _U64

    # -- alarm ----------------------------------------------------------------------------------

    def _update(self) -> None:
        self.irq.set(bool(self.state.irq_pending & self.state.irq_enabled))

    def _fire(self) -> None:
        self._cancel = None
        self.state.alarm_running = 0
        self.state.irq_pending = 1
        self._update()

    def _timer_expired(self, token: int) -> None:
        # A timer cancelled while its callback was already on its way is ignored.
        if token == self._token:
            self._fire()

    def _clear_alarm(self) -> None:
        self._token += 1
        if self._cancel is not None:
            self._cancel()
            self._cancel = None
        self.state.alarm_running = 0

    def _set_alarm(self) -> None:
        s = self.state
        deadline = (s.alarm_next - s.tick_offset) & _U64
        # QEMU arms its timer with the deadline as an int64: one past 2^63 ns (an alarm in
        # the 2260s or later) is in the past and fires at once.
        if s.alarm_next <= self.count() or deadline >> 63:
            self._clear_alarm()
            self._fire()
            return
        self._clear_alarm()
        token = self._token
        self._cancel = self.schedule(deadline, lambda: self._timer_expired(token))
        s.alarm_running = 1

    # -- MMIO -----------------------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        s = self.state
        if offset == RTC_TIME_LOW:
            now = self.count()
            s.time_high = now >> 32
            return now & _LO
        if offset == RTC_TIME_HIGH:
            return s.time_high
        if offset == RTC_ALARM_LOW:
            return s.alarm_next & _LO
        if offset == RTC_ALARM_HIGH:
            return s.alarm_next >> 32
        if offset == RTC_IRQ_ENABLED:
            return s.irq_enabled
        if offset == RTC_ALARM_STATUS:
            return s.alarm_running
        log.guest_error(f"goldfish_rtc_read: offset 0x{offset:x} is UNIMP.")
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        s = self.state
        if offset in (RTC_TIME_LOW, RTC_TIME_HIGH):
            current = self.count()
            if offset == RTC_TIME_LOW:
                new = (current & ~_LO & _U64) | value
            else:
                new = (value << 32) | (current & _LO)
            s.tick_offset += new - current
        elif offset == RTC_ALARM_LOW:
            s.alarm_next = (s.alarm_next & ~_LO & _U64) | value
            self._set_alarm()
        elif offset == RTC_ALARM_HIGH:
            s.alarm_next = (value << 32) | (s.alarm_next & _LO)
        elif offset == RTC_IRQ_ENABLED:
            s.irq_enabled = value & 1
            self._update()
        elif offset == RTC_CLEAR_ALARM:
            self._clear_alarm()
        elif offset == RTC_CLEAR_INTERRUPT:
            s.irq_pending = 0
            self._update()
        else:
            log.guest_error(f"goldfish_rtc_write: offset 0x{offset:x} is UNIMP.")

    def reset(self) -> None:
        # QEMU's reset keeps the time offset and clears the alarm and interrupt state.
        self._clear_alarm()
        offset = self.state.tick_offset
        self.state = GoldfishRtcState(tick_offset=offset)
        self._update()

    def get_state(self) -> dict[str, object]:
        """The registers, with the guest's RTC time as ``now_ns`` instead of the offset to
        this host's clock: a restored RTC goes on from the time it was saved at."""
        state = super().get_state()
        state["now_ns"] = self.clock() + self.state.tick_offset
        del state["tick_offset"]
        return state

    def set_state(self, state: dict[str, object]) -> None:
        from kvmpy.migration.errors import VmStateError

        if not isinstance(state, dict) or type(state.get("now_ns")) is not int:
            raise VmStateError(f"vmstate: {self.name}: state has no 'now_ns'")
        fields = {k: v for k, v in state.items() if k != "now_ns"}
        fields["tick_offset"] = int(state["now_ns"]) - self.clock()  # type: ignore[call-overload]
        new = state_from_dict(self.state, fields, self.name)
        if not all(-(1 << 63) <= v < 1 << 64 for v in (new.tick_offset, new.alarm_next,
                                                        new.time_high)) or not all(
                v in (0, 1) for v in (new.alarm_running, new.irq_pending, new.irq_enabled)):
            raise VmStateError(f"vmstate: {self.name}: a register value is out of range")
        self._clear_alarm()
        self.state = new
        if self.state.alarm_running:
            self._set_alarm()
        self._update()
