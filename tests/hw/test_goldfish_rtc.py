"""Goldfish RTC: host wall-clock time, guest-set time, alarm on a host timer, interrupt."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kvmpy.hw.rtc.goldfish_rtc import GoldfishRtc, ManualScheduler

TIME_LOW, TIME_HIGH, ALARM_LOW, ALARM_HIGH = 0x00, 0x04, 0x08, 0x0C
IRQ_ENABLED, CLEAR_ALARM, ALARM_STATUS, CLEAR_INTERRUPT = 0x10, 0x14, 0x18, 0x1C

BASE = 1_700_000_000_000_000_000  # ns, a whole second


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(BASE + 250)


@pytest.fixture
def rtc(make_irq: Any, clock: Clock) -> GoldfishRtc:
    return GoldfishRtc(irq=make_irq(11), schedule=ManualScheduler(clock), clock=clock)


def read_time(rtc: GoldfishRtc) -> int:
    low = rtc.mmio_read(TIME_LOW, 4)
    return (rtc.mmio_read(TIME_HIGH, 4) << 32) | low


def test_time_starts_at_host_wall_clock_in_whole_seconds(rtc: GoldfishRtc, clock: Clock) -> None:
    assert read_time(rtc) == BASE
    clock.now += 1_000_000
    assert read_time(rtc) == BASE + 1_000_000


def test_default_clock_is_host_time() -> None:
    rtc = GoldfishRtc()
    assert abs(read_time(rtc) - time.time_ns()) < 5_000_000_000


def test_time_high_is_latched_by_time_low(rtc: GoldfishRtc, clock: Clock) -> None:
    low = rtc.mmio_read(TIME_LOW, 4)
    clock.now += 1 << 33
    assert rtc.mmio_read(TIME_HIGH, 4) == BASE >> 32
    assert low == BASE & 0xFFFFFFFF


def test_guest_sets_the_time(rtc: GoldfishRtc, clock: Clock) -> None:
    rtc.mmio_write(TIME_HIGH, 4, 0x10)
    rtc.mmio_write(TIME_LOW, 4, 0x20)
    assert read_time(rtc) == (0x10 << 32) | 0x20
    clock.now += 5
    assert read_time(rtc) == (0x10 << 32) | 0x25


def test_alarm_fires_on_the_host_timer(rtc: GoldfishRtc, clock: Clock) -> None:
    sched = rtc.schedule
    assert isinstance(sched, ManualScheduler)
    rtc.mmio_write(IRQ_ENABLED, 4, 1)
    alarm = BASE + 1_000_000
    rtc.mmio_write(ALARM_HIGH, 4, alarm >> 32)
    rtc.mmio_write(ALARM_LOW, 4, alarm & 0xFFFFFFFF)
    assert rtc.mmio_read(ALARM_STATUS, 4) == 1
    assert (rtc.mmio_read(ALARM_HIGH, 4) << 32 | rtc.mmio_read(ALARM_LOW, 4)) == alarm
    assert sched.next_deadline() == alarm - rtc.state.tick_offset
    assert sched.run_due() == 0
    assert rtc.irq.level is False
    clock.now = alarm + 250
    assert sched.run_due() == 1
    assert rtc.irq.level is True
    assert rtc.mmio_read(ALARM_STATUS, 4) == 0
    rtc.mmio_write(CLEAR_INTERRUPT, 4, 1)
    assert rtc.irq.level is False


def test_alarm_in_the_past_fires_at_once(rtc: GoldfishRtc) -> None:
    rtc.mmio_write(ALARM_HIGH, 4, 0)
    rtc.mmio_write(ALARM_LOW, 4, 5)
    assert rtc.irq.level is False  # pending but not enabled
    rtc.mmio_write(IRQ_ENABLED, 4, 1)
    assert rtc.irq.level is True
    assert rtc.mmio_read(IRQ_ENABLED, 4) == 1


def test_clear_alarm_cancels_the_timer(rtc: GoldfishRtc, clock: Clock) -> None:
    sched = rtc.schedule
    assert isinstance(sched, ManualScheduler)
    rtc.mmio_write(IRQ_ENABLED, 4, 1)
    rtc.mmio_write(ALARM_HIGH, 4, (BASE + 100) >> 32)
    rtc.mmio_write(ALARM_LOW, 4, (BASE + 100) & 0xFFFFFFFF)
    rtc.mmio_write(CLEAR_ALARM, 4, 1)
    assert sched.timers == {}
    clock.now += 10**9
    assert sched.run_due() == 0
    assert rtc.irq.level is False
    assert rtc.mmio_read(ALARM_STATUS, 4) == 0


def test_reset_keeps_time_and_clears_alarm(rtc: GoldfishRtc) -> None:
    rtc.mmio_write(TIME_HIGH, 4, 3)
    rtc.mmio_write(IRQ_ENABLED, 4, 1)
    rtc.mmio_write(ALARM_LOW, 4, 1)
    assert rtc.irq.level is True
    rtc.reset()
    assert rtc.irq.level is False
    assert rtc.mmio_read(IRQ_ENABLED, 4) == 0
    assert read_time(rtc) >> 32 == 3


def test_state_roundtrip_rearms_alarm(rtc: GoldfishRtc, clock: Clock) -> None:
    sched = rtc.schedule
    assert isinstance(sched, ManualScheduler)
    rtc.mmio_write(IRQ_ENABLED, 4, 1)
    alarm = BASE + 500
    rtc.mmio_write(ALARM_HIGH, 4, alarm >> 32)
    rtc.mmio_write(ALARM_LOW, 4, alarm & 0xFFFFFFFF)
    saved = rtc.get_state()
    rtc.reset()
    assert sched.timers == {}
    rtc.set_state(saved)
    assert len(sched.timers) == 1
    clock.now = alarm + 1000
    sched.run_due()
    assert rtc.irq.level is True


def test_unknown_offsets_are_logged(rtc: GoldfishRtc, guest_errors: Any) -> None:
    assert rtc.mmio_read(CLEAR_ALARM, 4) == 0  # write-only
    assert rtc.mmio_read(0x20, 4) == 0
    rtc.mmio_write(ALARM_STATUS, 4, 1)  # read-only
    rtc.mmio_write(0x22, 4, 1)
    assert len(guest_errors) == 4


def test_late_timer_callback_after_clear_is_ignored(make_irq: Any, clock: Clock) -> None:
    fired: list[Any] = []

    def schedule(deadline: int, callback: Any) -> Any:
        fired.append(callback)
        return lambda: None  # a cancel that comes too late to stop the callback

    rtc = GoldfishRtc(irq=make_irq(11), schedule=schedule, clock=clock)
    rtc.mmio_write(IRQ_ENABLED, 4, 1)
    rtc.mmio_write(ALARM_HIGH, 4, (BASE + 10**9) >> 32)
    rtc.mmio_write(ALARM_LOW, 4, (BASE + 10**9) & 0xFFFFFFFF)
    rtc.mmio_write(CLEAR_ALARM, 4, 1)
    fired[0]()
    assert rtc.irq.level is False
    rtc.mmio_write(ALARM_LOW, 4, (BASE + 10**9) & 0xFFFFFFFF)  # re-armed: the new one counts
    fired[0]()
    assert rtc.irq.level is False
    fired[1]()
    assert rtc.irq.level is True
