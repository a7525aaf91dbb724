"""QEMU's ``none`` machine: no RAM, no harts, no devices; a VMM to ask questions over QMP.

Management tools start the emulator with ``-machine none`` to probe it (libvirt's capability
probe: ``-S -no-user-config -nodefaults -nographic -machine none,accel=kvm:tcg -qmp ...``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from kvmpy.errors import ConfigError, NotBuiltError
from kvmpy.machine import MachineState
from kvmpy.qom import register_type

if TYPE_CHECKING:
    from kvmpy.system import System


@register_type("none-machine", "machine", description="empty machine")
class NoneMachine(MachineState):
    name: ClassVar[str] = "none"
    desc: ClassVar[str] = "empty machine"
    max_cpus: ClassVar[int] = 1
    default_ram_size: ClassVar[int] = 0
    default_ram_id: ClassVar[str] = ""
    ramless: ClassVar[bool] = True
    numa_mem_supported: ClassVar[bool] = False

    def init(self, system: System) -> None:
        if self.kernel:
            raise ConfigError("The -kernel parameter is not supported (use the generic "
                              "'loader' device instead).")
        if system.config.ram_size:
            raise NotBuiltError("RAM on the none machine is not built in kvmpy (-m needs a "
                                "board: -machine virt)")
        system.harts.clear()
