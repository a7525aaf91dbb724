"""Machines: QEMU's MachineClass (the Python class) and MachineState (its instance).

Phases 2 and 3 of VM creation live here: :func:`select_machine_class` picks the type from
``-M`` (or the default) through the registry, and :func:`instantiate_machine` creates the
MachineState with the class defaults and applies the user's properties.  Phase 4 is the
subclass's :meth:`MachineState.init` (board init).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from kvmpy import qom
from kvmpy.config import SmpConfig, VMConfig
from kvmpy.errors import ConfigError
from kvmpy.qom import Object, Property, register_type

if TYPE_CHECKING:
    from kvmpy.system import System

MiB = 1 << 20
GiB = 1 << 30


@register_type("machine", "object", abstract=True, description="base machine")
class MachineState(Object):
    """A machine instance. The class attributes are QEMU's MachineClass fields.

    Properties common to every machine mirror QEMU's (``-M virt,kernel=...`` equals
    ``-kernel ...``).
    """

    # MachineClass
    name: ClassVar[str]
    desc: ClassVar[str]
    max_cpus: ClassVar[int] = 1
    default_ram_size: ClassVar[int] = 128 * MiB
    default_cpu_type: ClassVar[str] = "rv64"
    is_default: ClassVar[bool] = False

    # Properties shared by all machines (-M NAME,prop=value)
    kernel = Property(str, "", "Linux kernel image file")
    initrd = Property(str, "", "Linux initial ramdisk file")
    append = Property(str, "", "Linux kernel command line")
    dtb = Property(str, "", "Linux kernel device tree file")
    dumpdtb = Property(str, "", "Dump current dtb to a file and quit")
    firmware = Property(str, "", "Firmware image")
    accel = Property(str, "", "Accelerator list")
    usb = Property(bool, False, "Set on/off to enable/disable usb (the board has no USB: "
                   "only off)")
    dump_guest_core = Property(bool, True, "Include guest memory in a core dump")
    memory_backend = Property(str, "", "Set RAM backend (an -object memory-backend-* id)")

    def __init__(self) -> None:
        self.ram_size = self.default_ram_size
        self.smp = SmpConfig()
        self.cpu_type = self.default_cpu_type
        self.no_reboot = False

    def init(self, system: System) -> None:
        """Phase 4, board init: RAM, harts' pins, devices on the bus, device tree, payloads."""
        raise NotImplementedError


def machine_types() -> list[type[MachineState]]:
    return [info.cls for info in qom.object_class_get_list("machine")]


def find_machine_class(name: str) -> type[MachineState] | None:
    info = qom.type_info(f"{name}-machine")  # QEMU's naming: imports just that board
    if info is not None and issubclass(info.cls, MachineState) and info.cls.name == name:
        return info.cls
    for cls in machine_types():
        if cls.name == name:
            return cls
    return None


def default_machine_class() -> type[MachineState] | None:
    for cls in machine_types():
        if cls.is_default:
            return cls
    return None


def machine_help() -> str:
    """``-M help``, from the registry."""
    lines = ["Supported machines are:"]
    for cls in sorted(machine_types(), key=lambda c: c.name):
        suffix = " (default)" if cls.is_default else ""
        lines.append(f"{cls.name:<20} {cls.desc}{suffix}")
    return "\n".join(lines)


def select_machine_class(config: VMConfig) -> type[MachineState]:
    """Phase 2: the machine type named by ``-M`` or the default one."""
    if config.machine is None:
        cls = default_machine_class()
        if cls is None:
            raise ConfigError("No machine specified, and there is no default")
        return cls
    cls = find_machine_class(config.machine)
    if cls is None:
        raise ConfigError(f"unsupported machine type: \"{config.machine}\"\n"
                          "Use -machine help to list supported machines".split("\n")[0],
                          option="-machine")
    return cls


def instantiate_machine(cls: type[MachineState], config: VMConfig) -> MachineState:
    """Phase 3: class defaults, then the user's properties and options, with QEMU's errors."""
    machine: MachineState = qom.object_new(cls.type_name, config.machine_props)
    if config.ram_size is not None:
        machine.ram_size = config.ram_size
    machine.smp = config.smp
    if config.smp.cpus < 1:
        raise ConfigError(f"Invalid SMP CPUs {config.smp.cpus}", option="-smp")
    if config.smp.cpus > cls.max_cpus:
        raise ConfigError(f"Invalid SMP CPUs {config.smp.cpus}. The max CPUs supported by "
                          f"machine '{cls.name}' is {cls.max_cpus}", option="-smp")
    if config.cpu is not None:
        machine.cpu_type = config.cpu
    for attr in ("kernel", "initrd", "append", "dtb"):
        value = getattr(config, attr)
        if value is not None:
            setattr(machine, attr, value)
    if config.bios is not None:
        machine.firmware = config.bios
    machine.no_reboot = config.no_reboot
    return machine
