"""QEMU 7.2's ``spike`` board (hw/riscv/spike.c): RAM, CLINT and HTIF, for bare-metal tests.

``kvmpy -M spike -bios none -kernel TEST.elf`` loads the ELF, finds HTIF at its ``tohost`` /
``fromhost`` symbols (at 0x1000000 when it has none) and ends with the status the test
writes there.  Harts start in M-mode at the boot ROM, which jumps to the ELF's entry with
a0 = mhartid.  The spike board needs machine mode, so it runs on the interpreter only.

Not modelled: the device tree QEMU builds for Spike (a1 is 0), and M-mode firmware other
than ``-bios none`` (``-bios FILE`` is loaded at the DRAM base and entered, without a tree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmpy.accel.base import IRQ_M_SOFT, PRV_M
from kvmpy.errors import ConfigError
from kvmpy.hw.riscv import boot
from kvmpy.machine import MachineState
from kvmpy.qom import register_type

if TYPE_CHECKING:
    from kvmpy.system import System


@dataclass(frozen=True)
class MemMapEntry:
    base: int
    size: int


# spike_memmap[] of QEMU 7.2 hw/riscv/spike.c
SPIKE_MEMMAP: dict[str, MemMapEntry] = {
    "mrom":  MemMapEntry(0x1000, 0xF000),
    "htif":  MemMapEntry(0x1000000, 0x1000),
    "clint": MemMapEntry(0x2000000, 0x10000),
    "dram":  MemMapEntry(0x80000000, 0x0),
}
SPIKE_CPUS_MAX = 8
ACLINT_SWI_SIZE = 0x4000
ACLINT_MTIMER_SIZE = 0x8000


@register_type("spike-machine", "machine", description="RISC-V Spike board")
class SpikeMachine(MachineState):
    """``-M spike`` (qemu-system-riscv64's default machine)."""

    name = "spike"
    desc = "RISC-V Spike board"
    max_cpus = SPIKE_CPUS_MAX
    default_ram_size = 128 << 20
    is_default = True

    def init(self, system: System) -> None:
        if not system.caps.machine_mode:
            raise ConfigError("-M spike needs machine mode, which this accelerator cannot "
                              "run; use -accel tcg")
        mm = SPIKE_MEMMAP
        ram = system.create_ram(mm["dram"].base, self.ram_size, "riscv.spike.ram")
        mrom = system.create_rom(mm["mrom"].base, mm["mrom"].size, "riscv.spike.mrom")
        self._create_clint(system)

        start = mm["dram"].base
        if self.firmware not in ("", "none", "default"):
            start = self._load_firmware(system)
        tohost = fromhost = None
        if self.kernel:
            from kvmpy.loader import ElfImage, load_image

            image = load_image(self.kernel, ram, mm["dram"].base)
            if isinstance(image, ElfImage):
                tohost, fromhost = image.symbol("tohost"), image.symbol("fromhost")
                if self.firmware in ("", "none", "default"):
                    start = image.entry
        self._create_htif(system, tohost, fromhost)

        rom = boot.reset_vec_rom(mrom.base, start_addr=start, fdt_addr=0, kernel_entry=start)
        mrom.write(mrom.base, rom)
        from kvmpy.system import HartBoot

        system.boot.harts[:] = [HartBoot(pc=mrom.base, priv=PRV_M)
                                for _ in range(len(system.harts))]
        # Accesses where there is no device fault, as on QEMU (not an MMIO exit).
        set_windows = getattr(system.accel, "set_mmio_windows", None)
        if set_windows is not None:
            set_windows([(r.base, r.size) for r in system.bus.regions])

    def _create_clint(self, system: System) -> None:
        from kvmpy.hw.intc.aclint import AclintMtimer, AclintSwi

        clint = SPIKE_MEMMAP["clint"]
        harts = system.harts
        mswi = AclintSwi([h.irq_line(IRQ_M_SOFT) for h in harts], num_harts=len(harts))
        system.bus.add(clint.base, ACLINT_SWI_SIZE, mswi)
        mtimer = AclintMtimer(harts, system.time_source, num_harts=len(harts),
                              aperture_size=ACLINT_MTIMER_SIZE)
        system.bus.add(clint.base + ACLINT_SWI_SIZE, ACLINT_MTIMER_SIZE, mtimer)

    def _load_firmware(self, system: System) -> int:
        from kvmpy.loader import ElfImage, load_image

        assert system.ram is not None
        image = load_image(self.firmware, system.ram, SPIKE_MEMMAP["dram"].base, "firmware")
        return image.entry if isinstance(image, ElfImage) else image.start

    def _create_htif(self, system: System, tohost: int | None, fromhost: int | None) -> None:
        from kvmpy.hw.misc.htif import Htif

        def putchar(data: bytes) -> None:
            chardev = system.serial_chardev(0)
            if chardev is not None:
                chardev.write(data)

        if tohost is None:
            base, size = SPIKE_MEMMAP["htif"].base, SPIKE_MEMMAP["htif"].size
            htif = Htif(0, 8, size, on_exit=system.exit_with_status, putchar=putchar)
            system.bus.add(base, size, htif)
            return
        words = [tohost] + ([fromhost] if fromhost is not None else [])
        base = min(words)
        size = max(words) + 8 - base
        htif = Htif(tohost - base, None if fromhost is None else fromhost - base, size,
                    on_exit=system.exit_with_status, putchar=putchar)
        system.bus.add(base, size, htif)
        add_hole = getattr(system.accel, "add_mmio_hole", None)
        if add_hole is None:
            raise ConfigError("-M spike: HTIF inside RAM needs the tcg accelerator")
        add_hole(base, size)
