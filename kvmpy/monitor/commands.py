"""What QMP and HMP commands do, shared by both monitors and the library API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import kvmpy
from kvmpy.errors import KvmpyError, StateError
from kvmpy.machine import machine_types

if TYPE_CHECKING:
    from kvmpy.accel.base import Vcpu
    from kvmpy.system import System

PAGE_SIZE = 4096
SATP_MODES = {8: 3, 9: 4, 10: 5}
"""satp.MODE -> page-table levels (Sv39, Sv48, Sv57)."""


QEMU_COMPAT_VERSION = (7, 2, 0)
"""The qemu-system-riscv64 release whose interfaces kvmpy implements."""


def version_info() -> dict[str, Any]:
    """QMP's version: the QEMU release kvmpy is compatible with (tools check it against
    their minimum), and kvmpy's own version as the package string."""
    major, minor, micro = QEMU_COMPAT_VERSION
    return {"qemu": {"micro": micro, "minor": minor, "major": major},  # QEMU's order
            "package": f"kvmpy {kvmpy.__version__}"}


def query_status(system: System) -> dict[str, Any]:
    return {"status": system.status, "singlestep": False, "running": system.running}


def stop(system: System) -> dict[str, Any]:
    if system.status == "inmigrate":  # QEMU: the guest stays paused after the migration
        _set_autostart(system, False)
        return {}
    system.pause()
    return {}


def cont(system: System) -> dict[str, Any]:
    if system.status == "inmigrate":  # QEMU: the guest starts once the migration is in
        _set_autostart(system, True)
        return {}
    if system.status == "finish-migrate":  # QEMU holds its lock through this phase
        raise StateError("the VM is stopped while a migration completes: 'cont' once it has "
                         "ended", system.status, ("paused", "postmigrate"))
    system.resume()
    return {}


def _set_autostart(system: System, on: bool) -> None:
    from kvmpy.migration.migrate import migration_of

    migration_of(system).autostart = on


def system_reset(system: System) -> dict[str, Any]:
    system.reset("host-qmp-system-reset", guest=False)
    return {}


def system_powerdown(system: System) -> dict[str, Any]:
    """The virt board has no power button: only the POWERDOWN event, as in QEMU."""
    system.emit("POWERDOWN")
    return {}


def quit_vm(system: System) -> None:
    system._shutdown("host-qmp-quit", False)


def query_name(system: System) -> dict[str, Any]:
    return {"name": system.config.name} if system.config.name else {}


def query_kvm(system: System) -> dict[str, Any]:
    from kvmpy.system import find_accel_class

    kvm = find_accel_class("kvm")
    present = kvm is not None and kvm.unavailable_reason() is None
    enabled = system.accel is not None and type(system.accel).name == "kvm"
    return {"enabled": enabled, "present": present}


def query_cpus_fast(system: System) -> list[dict[str, Any]]:
    tids = system.driver.thread_ids() if system.driver is not None else []
    return [{"thread-id": tids[i] if i < len(tids) else 0,
             "props": {"core-id": i},
             "qom-path": f"/machine/soc0/harts[{i}]",
             "cpu-index": i, "target": "riscv64"} for i in range(len(system.harts))]


QEMU_RAM_IDS = {"virt": "riscv_virt_board.ram", "spike": "riscv.spike.ram"}
"""``default-ram-id`` of QEMU 7.2's riscv64 boards (their MachineClass names the RAM)."""


def query_machines() -> list[dict[str, Any]]:
    """QEMU's entries and key order for each machine type kvmpy has."""
    result = []
    for cls in machine_types():
        entry: dict[str, Any] = {"hotpluggable-cpus": False, "name": cls.name,
                                 "numa-mem-supported": bool(getattr(cls, "numa_mem_supported",
                                                                    True)),
                                 "default-cpu-type": f"{cls.default_cpu_type}-riscv-cpu"}
        if cls.is_default:
            entry["is-default"] = True
        entry.update({"cpu-max": cls.max_cpus, "deprecated": False,
                      "default-ram-id": getattr(cls, "default_ram_id",
                                                QEMU_RAM_IDS.get(cls.name, f"{cls.name}.ram"))})
        result.append(entry)
    return result


def vcpu(system: System, index: int) -> Vcpu:
    if system.accel is None or not 0 <= index < len(system.accel.vcpus):
        raise KvmpyError(f"CPU index {index} out of range" if system.accel is not None
                         else "No CPU available")
    return system.accel.vcpus[index]


def read_physical(system: System, gpa: int, size: int, devices: bool = False) -> bytes:
    """Guest-physical memory (RAM and ROM).  With ``devices`` (HMP ``xp``), a range inside a
    device window is read from the device, in aligned accesses of up to 4 bytes, as QEMU's
    ``memory_dump`` does (with the same side effects a guest read would have)."""
    region = system.memory_at(gpa, size)
    if region is not None:
        return region.read(gpa, size)
    window = system.bus.find(gpa) if devices else None
    if window is None or gpa + size > window.end:
        raise KvmpyError(f"Invalid addr 0x{gpa:x}/size {size} specified")
    out = bytearray()
    with system.lock:
        while len(out) < size:
            addr = gpa + len(out)
            width = next(w for w in (4, 2, 1) if addr % w == 0 and len(out) + w <= size)
            out += system.bus.read(addr, width).to_bytes(width, "little")
    return bytes(out)


def translate(system: System, cpu: int, vaddr: int) -> int:
    """Walk the hart's page tables (Sv39/48/57, privileged spec 4.3.2) for a debug access."""
    hart = vcpu(system, cpu)
    satp = hart.get_reg("satp")
    levels = SATP_MODES.get(satp >> 60)
    if levels is None:
        return vaddr
    table = (satp & ((1 << 44) - 1)) * PAGE_SIZE
    for level in range(levels - 1, -1, -1):
        index = (vaddr >> (12 + 9 * level)) & 0x1FF
        pte = int.from_bytes(read_physical(system, table + index * 8, 8), "little")
        if not pte & 1 or (not pte & 2 and pte & 4):
            raise KvmpyError(f"Invalid addr 0x{vaddr:x} specified (not mapped)")
        ppn = (pte >> 10) & ((1 << 44) - 1)
        if pte & 0xA:  # leaf: R or X set
            offset_mask = (1 << (12 + 9 * level)) - 1
            return ((ppn * PAGE_SIZE) & ~offset_mask) | (vaddr & offset_mask)
        table = ppn * PAGE_SIZE
    raise KvmpyError(f"Invalid addr 0x{vaddr:x} specified (no leaf page)")


def read_virtual(system: System, cpu: int, vaddr: int, size: int) -> bytes:
    out = bytearray()
    while size > 0:
        chunk = min(size, PAGE_SIZE - (vaddr % PAGE_SIZE))
        out += read_physical(system, translate(system, cpu, vaddr), chunk)
        vaddr += chunk
        size -= chunk
    return bytes(out)


def read_physical_debug(system: System, gpa: int, size: int) -> bytes:
    """``pmemsave``'s view: RAM and ROM bytes, zeros where neither is (device windows are not
    read, so a dump has no side effect on a device)."""
    out = bytearray(size)
    for region in (system.ram, *system.roms):
        if region is None:
            continue
        start = max(gpa, region.base)
        end = min(gpa + size, region.base + region.size)
        if start < end:
            out[start - gpa:end - gpa] = region.read(start, end - start)
    return bytes(out)


SAVE_CHUNK = 1 << 20


def _save(path: str, data: bytes) -> dict[str, Any]:
    with open(path, "wb") as f:
        f.write(data)
    return {}


def pmemsave(system: System, val: int, size: int, filename: str) -> dict[str, Any]:
    """Write ``size`` bytes of guest-physical memory at ``val`` to ``filename`` (in chunks,
    so a large size costs no more memory than a small one)."""
    with open(filename, "wb") as f:
        for offset in range(0, size, SAVE_CHUNK):
            f.write(read_physical_debug(system, val + offset, min(SAVE_CHUNK, size - offset)))
    return {}


def memsave(system: System, val: int, size: int, filename: str, cpu: int) -> dict[str, Any]:
    """Write ``size`` bytes at virtual address ``val`` of hart ``cpu`` to ``filename``."""
    if system.accel is None or not 0 <= cpu < len(system.accel.vcpus):
        raise KvmpyError("Parameter 'cpu-index' expects a CPU number")
    with open(filename, "wb") as f:  # QEMU opens the file first
        for offset in range(0, size, SAVE_CHUNK):
            chunk = min(SAVE_CHUNK, size - offset)
            try:
                data = read_virtual(system, cpu, val + offset, chunk)
            except KvmpyError:
                raise KvmpyError(f"Invalid addr 0x{val + offset:016x}/size {chunk} "
                                 "specified") from None
            f.write(data)
    return {}


def query_registers(system: System, cpu: int,
                    names: list[str] | None = None) -> dict[str, int]:
    """Registers of one hart (kvmpy extension ``x-query-registers``): ``names`` (any name the
    vCPU knows: ``pc``, ``a0``, ``x5``, CSRs), by default pc, x1..x31 and the main CSRs."""
    from kvmpy.monitor.hmp import CSRS

    require_paused(system, "reading registers")
    hart = vcpu(system, cpu)
    if names is None:
        names = ["pc", *(f"x{i}" for i in range(1, 32)), *CSRS]
    out = {}
    for name in names:
        try:
            out[name] = hart.get_reg(name)
        except (KeyError, ValueError):
            raise KvmpyError(f"Register '{name}' not found") from None
    return out


def pmemwrite(system: System, val: int, data: str) -> dict[str, Any]:
    """Write hex ``data`` to guest RAM (kvmpy extension ``x-pmemwrite``)."""
    try:
        raw = bytes.fromhex(data)
    except ValueError:
        raise KvmpyError("Parameter 'data' expects hexadecimal bytes") from None
    region = system.memory_at(val, len(raw))
    if region is None or region is not system.ram:
        raise KvmpyError(f"Invalid addr 0x{val:x}/size {len(raw)} specified")
    region.write(val, raw)
    return {}


def require_paused(system: System, what: str) -> None:
    if system.status == "running":
        raise StateError(f"{what} needs the VM paused", system.status,
                         ("paused", "prelaunch", "shutdown"))
