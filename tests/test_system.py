"""The creation phases and the run loop, with a scripted vCPU (no real accelerator)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from kvmpy import qom
from kvmpy.accel.base import PRV_S, AccelCaps, Accelerator
from kvmpy.accel.exits import (
    HaltExit,
    InternalErrorExit,
    IntrExit,
    MmioExit,
    SbiExit,
    SystemEvent,
    SystemEventExit,
    VcpuExit,
)
from kvmpy.config import OptionSpec, VMConfig
from kvmpy.errors import AccelError, ConfigError, StateError
from kvmpy.hw.core import MmioDevice
from kvmpy.machine import MachineState
from kvmpy.memory import GuestRAM
from kvmpy.system import HartBoot, System

SCRIPTS: dict[int, list[VcpuExit]] = {}


class ScriptedVcpu:
    """Returns the exits of its script in order, then idles."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.script = list(SCRIPTS.get(index, []))
        self.completed: list[tuple[str, int, int]] = []
        self.irqs: list[tuple[int, bool]] = []
        self.regs: dict[str, int] = {}
        self.boot: tuple[int, int, int, int, bool] | None = None
        self.stopped = False
        self.kicked = threading.Event()

    def run(self) -> VcpuExit:
        if self.script:
            return self.script.pop(0)
        self.kicked.wait(0.01)
        self.kicked.clear()
        return HaltExit(None)

    def complete_mmio_read(self, value: int) -> None:
        self.completed.append(("mmio", value, 0))

    def complete_sbi(self, error: int, value: int) -> None:
        self.completed.append(("sbi", error, value))

    def kick(self) -> None:
        self.kicked.set()

    def set_irq(self, irq: int, level: bool) -> None:
        self.irqs.append((irq, level))

    def get_reg(self, name: str) -> int:
        return self.regs.get(name, 0)

    def set_reg(self, name: str, value: int) -> None:
        self.regs[name] = value

    def reset(self, pc: int, priv: int, a0: int, a1: int, stopped: bool) -> None:
        self.boot = (pc, priv, a0, a1, stopped)


@qom.register_type("scripted-accel", "accel")
class ScriptedAccel(Accelerator):
    """Scripted accelerator for tests"""

    name: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        self.caps = AccelCaps(machine_mode=False, in_kernel_timer_ipi=True)
        self.vcpus: list[Any] = []

    def init_machine(self, ram: GuestRAM, num_harts: int,
                     roms: Sequence[GuestRAM] = ()) -> None:
        self.vcpus = [ScriptedVcpu(i) for i in range(num_harts)]


@qom.register_type("absent-accel", "accel")
class AbsentAccel(ScriptedAccel):
    """Accelerator that is never available"""

    name: ClassVar[str] = "absent"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return "not on this host"


class Latch(MmioDevice):
    access_sizes = (4,)
    name = "latch"

    def __init__(self) -> None:
        self.value = 7
        self.resets = 0

    def mmio_read(self, offset: int, size: int) -> int:
        return self.value + offset

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        self.value = value

    def reset(self) -> None:
        self.resets += 1


class EchoSbi:
    def handle(self, vcpu: Any, exit_: Any) -> tuple[int, int]:
        return 0, exit_.args[0] + 1


@qom.register_type("scripted-machine", "machine")
class ScriptedMachine(MachineState):
    """Scripted machine for tests"""

    name: ClassVar[str] = "scripted"
    desc: ClassVar[str] = "machine for tests"
    max_cpus: ClassVar[int] = 4

    def init(self, system: System) -> None:
        system.create_ram(0x8000_0000, self.ram_size)
        self.latch = Latch()
        system.bus.add(0x1000_0000, 0x100, self.latch)
        system.sbi = EchoSbi()
        system.boot.harts = [HartBoot(0x8020_0000, PRV_S, i, 0x8700_0000, i != 0)
                             for i in range(self.smp.cpus)]


def make(accels: list[str] | None = None, **kwargs: Any) -> System:
    config = VMConfig(machine="scripted", ram_size=1 << 20, **kwargs)
    if accels is not None:
        config.accels = [OptionSpec(a, {}, f"-accel {a}") for a in accels]
    else:
        config.accels = [OptionSpec("scripted", {}, "-accel scripted")]
    return System(config).create()


def run_with_timeout(system: System, timeout: float = 10.0) -> int:
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(system.run(False)))
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "system did not stop"
    return result[0]


def test_phases_build_machine_accel_and_boot_state() -> None:
    system = make(smp=__import__("kvmpy.config").config.SmpConfig(cpus=2))
    try:
        assert system.machine is not None and system.machine.type_name == "scripted-machine"
        vcpus: list[Any] = system.accel.vcpus  # type: ignore[union-attr]
        assert [v.boot for v in vcpus] == [(0x8020_0000, PRV_S, 0, 0x8700_0000, False),
                                           (0x8020_0000, PRV_S, 1, 0x8700_0000, True)]
        system.harts[1].irq_line(9).raise_()
        assert vcpus[1].irqs == [(9, True)]
    finally:
        system.close()


def test_exits_reach_devices_and_sbi_then_guest_shutdown_ends_run() -> None:
    SCRIPTS[0] = [MmioExit(0x1000_0000, 4, True, 42), MmioExit(0x1000_0004, 4, False),
                  SbiExit(0x10, 0, (5, 0, 0, 0, 0, 0)), IntrExit(),
                  SystemEventExit(SystemEvent.SHUTDOWN)]
    try:
        system = make()
        events: list[tuple[str, dict[str, Any]]] = []
        system.add_event_listener(lambda name, data: events.append((name, data)))
        assert run_with_timeout(system) == 0
        vcpu: Any = system.accel.vcpus[0]  # type: ignore[union-attr]
        assert vcpu.completed == [("mmio", 46, 0), ("sbi", 0, 6)]
        assert ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}) in events
        assert system.status == "shutdown"
    finally:
        SCRIPTS.clear()


def test_guest_reset_resets_devices_and_harts_and_keeps_running() -> None:
    SCRIPTS[0] = [SystemEventExit(SystemEvent.RESET)]
    try:
        system = make()
        events: list[str] = []
        done = threading.Event()

        def listener(name: str, data: dict[str, Any]) -> None:
            events.append(name)
            if name == "RESET":
                assert data == {"guest": True, "reason": "guest-reset"}
                done.set()

        system.add_event_listener(listener)
        thread = threading.Thread(target=system.run, args=(False,))
        thread.start()
        assert done.wait(10)
        machine: Any = system.machine
        assert machine.latch.resets == 1
        assert system.status == "running"
        system.call_soon(lambda: system._shutdown("host-qmp-quit", False))
        thread.join(10)
        assert not thread.is_alive()
    finally:
        SCRIPTS.clear()


def test_no_reboot_turns_reset_into_shutdown() -> None:
    SCRIPTS[0] = [SystemEventExit(SystemEvent.RESET)]
    try:
        system = make(no_reboot=True)
        events: list[tuple[str, dict[str, Any]]] = []
        system.add_event_listener(lambda name, data: events.append((name, data)))
        assert run_with_timeout(system) == 0
        assert ("SHUTDOWN", {"guest": True, "reason": "guest-reset"}) in events
    finally:
        SCRIPTS.clear()


def test_internal_error_without_monitor_exits_1() -> None:
    SCRIPTS[0] = [InternalErrorExit("boom")]
    try:
        assert run_with_timeout(make()) == 1
    finally:
        SCRIPTS.clear()


def test_pause_resume_from_another_thread_and_state_guards() -> None:
    system = make(start_paused=True)
    events: list[str] = []
    system.add_event_listener(lambda name, data: events.append(name))
    thread = threading.Thread(target=system.run, args=(False,))
    thread.start()
    try:
        for _ in range(100):
            if system.loop is not None:
                break
            threading.Event().wait(0.01)
        assert system.status == "prelaunch"
        system.resume()
        assert system.status == "running"
        system.pause()
        assert system.status == "paused"
        system.pause()
        system.resume()
        assert events == ["RESUME", "STOP", "RESUME"]
        system.status = "shutdown"
        with pytest.raises(StateError) as info:
            system.resume()
        assert info.value.state == "shutdown"
    finally:
        system.call_soon(system.quit)
        thread.join(10)


def test_accelerator_fallback_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    system = make(["absent", "scripted"])
    system.close()
    assert "-accel absent: not on this host" in capsys.readouterr().err
    with pytest.raises(AccelError, match="not on this host"):
        make(["absent"])
    with pytest.raises(ConfigError, match="invalid accelerator nope"):
        make(["nope"])


def test_too_many_cpus_is_a_config_error() -> None:
    from kvmpy.config import SmpConfig

    with pytest.raises(ConfigError, match="max CPUs supported by machine 'scripted' is 4"):
        make(smp=SmpConfig(cpus=5))
