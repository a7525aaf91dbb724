"""What ``help`` answers and what the options compute: registry lookups, the SMP topology,
the default serial port and monitor."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from kvmpy import log, qom
from kvmpy.config import SmpConfig
from kvmpy.errors import ConfigError

if TYPE_CHECKING:
    from kvmpy.cli.parser import CommandLine


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def icount_supported() -> bool:
    """Whether an accelerator declares ``supports_icount`` (it then honours icount_shift)."""
    return any(getattr(info.cls, "supports_icount", False)
               for info in qom.object_class_get_list("accel"))


def prop_help(info: qom.TypeInfo, prop: str) -> str:
    text = qom.property_help(info).splitlines()
    lines = [line for line in text[1:] if line.strip().startswith(f"{prop}=")]
    if not lines:
        raise ConfigError(f"Property '{info.name}.{prop}' not found")
    return "\n".join([text[0], *lines])


def machine_help_text(machine: str | None, what: str) -> str:
    """``-M help`` (``what`` empty), ``-M virt,help`` (``*``) or ``-M virt,prop=help``."""
    from kvmpy.machine import default_machine_class, find_machine_class, machine_help

    if not what:
        return machine_help()
    cls = find_machine_class(machine) if machine else default_machine_class()
    if cls is None:
        raise ConfigError("unsupported machine type (-machine help lists them)",
                          option=f"-machine {machine}")
    info = qom.type_info(cls.type_name)
    assert info is not None
    return qom.property_help(info) if what == "*" else prop_help(info, what)


def cpu_models() -> list[str]:
    """CPU model names: registered ``cpu`` types (``rv64-riscv-cpu`` → ``rv64``), else the
    machines' default CPU types."""
    names = [info.name.removesuffix("-riscv-cpu") for info in qom.object_class_get_list("cpu")]
    if names:
        return sorted(names)
    from kvmpy.machine import machine_types

    return sorted({cls.default_cpu_type for cls in machine_types()})


def cpu_help() -> str:
    return "\n".join(cpu_models())


SMP_ZERO_WARNING = ("Deprecated CPU topology (considered invalid): CPU topology parameters "
                    "must be greater than zero")
"""QEMU 7.2's warning for ``-smp 0``, ``cores=0``...: a 0 is then taken as omitted."""


def smp_topology(values: dict[str, int]) -> SmpConfig:
    """QEMU 7.2's ``machine_parse_smp_config`` (hw/core/machine-smp.c), machine limits aside.

    Like QEMU, a parameter given as 0 warns (deprecated) and counts as omitted; dies and
    clusters other than 1 are refused, as by every RISC-V machine of QEMU 7.2.
    """
    if 0 in values.values():
        log.warn_report(SMP_ZERO_WARNING)
    for level in ("dies", "clusters"):
        if values.get(level, 0) > 1:
            raise ConfigError(f"{level} not supported by this machine's CPU topology")
    cpus = values.get("cpus", 0)
    maxcpus = values.get("maxcpus", 0)
    sockets = values.get("sockets", 0)
    dies = values.get("dies", 0) or 1
    clusters = values.get("clusters", 0) or 1
    cores = values.get("cores", 0)
    threads = values.get("threads", 0)
    if cpus == 0 and maxcpus == 0:
        sockets, cores, threads = sockets or 1, cores or 1, threads or 1
    else:
        maxcpus = maxcpus or cpus
        # Since QEMU 6.2 the omitted level is cores first, then sockets, threads last.
        if cores == 0:
            sockets, threads = sockets or 1, threads or 1
            cores = maxcpus // (sockets * dies * clusters * threads)
        elif sockets == 0:
            threads = threads or 1
            sockets = maxcpus // (dies * clusters * cores * threads)
        if threads == 0:
            threads = maxcpus // (sockets * dies * clusters * cores)
    total = sockets * dies * clusters * cores * threads
    maxcpus = maxcpus or total
    cpus = cpus or maxcpus
    shape = f"sockets ({sockets}) * cores ({cores}) * threads ({threads})"
    if total != maxcpus:
        raise ConfigError("Invalid CPU topology: product of the hierarchy must match maxcpus: "
                          f"{shape} != maxcpus ({maxcpus})")
    if maxcpus < cpus:
        raise ConfigError("Invalid CPU topology: maxcpus must be equal to or greater than smp: "
                          f"{shape} == maxcpus ({maxcpus}) < smp_cpus ({cpus})")
    return SmpConfig(cpus=cpus, maxcpus=maxcpus, sockets=sockets, cores=cores, threads=threads)


def apply_default_devices(result: CommandLine) -> None:
    """vl.c's default serial port and monitor: ``mon:stdio`` with -nographic, else the
    (display-less) virtual console."""
    config = result.config
    if config.nographic:
        if result.default_serial and result.default_monitor:
            config.serial.append("mon:stdio")
        else:
            if result.default_serial:
                config.serial.append("stdio")
            if result.default_monitor:
                config.monitor.append("stdio")
    else:
        if result.default_serial:
            config.serial.append("vc")
        if result.default_monitor:
            config.monitor.append("vc")
