"""QEMU 7.2's RISC-V ``virt`` board (hw/riscv/virt.c): memory map, IRQs, wiring, payloads.

The board only wires parts together: the device models live in ``kvmpy.hw.*``, the device tree
in :mod:`kvmpy.hw.riscv.virt_fdt`, firmware/kernel/initrd/FDT placement and the boot ROM in
:mod:`kvmpy.hw.riscv.boot`, the built-in SBI in :mod:`kvmpy.firmware.sbi`.

Not modelled (and so absent from the memory map and the device tree): fw_cfg, the two CFI
flash banks and the platform bus.  An accelerator that keeps the timer
and IPIs in the kernel (KVM) gets no CLINT/ACLINT and a PLIC with S-mode contexts only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy.accel.base import IRQ_M_EXT, IRQ_M_SOFT, IRQ_S_EXT, IRQ_S_SOFT
from kvmpy.errors import ConfigError, KvmpyError, NotBuiltError
from kvmpy.firmware.sbi import Sbi, SbiConsole
from kvmpy.hw.core import MmioDevice
from kvmpy.hw.irq import IrqLine
from kvmpy.hw.riscv import boot
from kvmpy.hw.riscv.virt_fdt import FdtBuilder, VirtFdtConfig, create_fdt
from kvmpy.log import stderr_line
from kvmpy.machine import MachineState
from kvmpy.qom import Property, register_type

if TYPE_CHECKING:
    from kvmpy.memory import GuestRAM
    from kvmpy.system import System


@dataclass(frozen=True)
class MemMapEntry:
    base: int
    size: int


# virt_memmap[] of QEMU 7.2 hw/riscv/virt.c, in its order.  Entries marked "not modelled" are
# kept so the table reads like QEMU's; nothing is mapped there.
VIRT_MEMMAP: dict[str, MemMapEntry] = {
    "debug":        MemMapEntry(0x0, 0x100),             # not modelled
    "mrom":         MemMapEntry(0x1000, 0xF000),
    "test":         MemMapEntry(0x100000, 0x1000),
    "rtc":          MemMapEntry(0x101000, 0x1000),
    "clint":        MemMapEntry(0x2000000, 0x10000),
    "aclint_sswi":  MemMapEntry(0x2F00000, 0x4000),
    "pcie_pio":     MemMapEntry(0x3000000, 0x10000),
    "platform_bus": MemMapEntry(0x4000000, 0x2000000),   # not modelled
    "plic":         MemMapEntry(0xC000000, 0x600000),    # VIRT_PLIC_SIZE(512 * 2)
    "aplic_m":      MemMapEntry(0xC000000, 0x8000),      # aia=aplic*: not modelled
    "aplic_s":      MemMapEntry(0xD000000, 0x8000),      # aia=aplic*: not modelled
    "uart0":        MemMapEntry(0x10000000, 0x100),
    "virtio":       MemMapEntry(0x10001000, 0x1000),
    "fw_cfg":       MemMapEntry(0x10100000, 0x18),       # not modelled
    "flash":        MemMapEntry(0x20000000, 0x4000000),  # not modelled
    "imsic_m":      MemMapEntry(0x24000000, 0x4000000),  # aia=aplic-imsic: not modelled
    "imsic_s":      MemMapEntry(0x28000000, 0x4000000),  # aia=aplic-imsic: not modelled
    "pcie_ecam":    MemMapEntry(0x30000000, 0x10000000),
    "pcie_mmio":    MemMapEntry(0x40000000, 0x40000000),
    "dram":         MemMapEntry(0x80000000, 0x0),
}

# PLIC sources (include/hw/riscv/virt.h)
VIRTIO_IRQ = 1           # 1..8
VIRTIO_COUNT = 8
UART0_IRQ = 10
RTC_IRQ = 11
PCIE_IRQ = 0x20          # 0x20..0x23: INTA..INTD of the root bus
PCIE_NUM_IRQS = 4
VIRT64_HIGH_PCIE_MMIO_SIZE = 16 << 30
VIRT_PLATFORM_BUS_IRQ = 64  # not modelled
VIRT_IRQCHIP_NUM_SOURCES = 96
VIRT_IRQCHIP_NUM_PRIO_BITS = 3
VIRT_CPUS_MAX = 512

# PLIC layout (VIRT_PLIC_*)
VIRT_PLIC_PRIORITY_BASE = 0x00
VIRT_PLIC_PENDING_BASE = 0x1000
VIRT_PLIC_ENABLE_BASE = 0x2000
VIRT_PLIC_ENABLE_STRIDE = 0x80
VIRT_PLIC_CONTEXT_BASE = 0x200000
VIRT_PLIC_CONTEXT_STRIDE = 0x1000



def high_pcie_mmio(ram_size: int) -> MemMapEntry:
    """The 64-bit PCIe window: 16 GiB, aligned to its size above the end of RAM."""
    size = VIRT64_HIGH_PCIE_MMIO_SIZE
    end = VIRT_MEMMAP["dram"].base + ram_size
    return MemMapEntry((end + size - 1) // size * size, size)


ACLINT_SWI_SIZE = 0x4000
ACLINT_MTIMER_SIZE = 0x8000
UART_BAUDBASE = 399193


class _AiaProperty(Property[str]):
    """``aia=none|aplic|aplic-imsic`` with QEMU's error for other values."""

    def parse(self, text: str) -> Any:
        if text not in ("none", "aplic", "aplic-imsic"):
            raise ConfigError("Invalid AIA interrupt controller type")
        return text


class MaskRom(MmioDevice):
    """The boot ROM as a read-only device window, for systems that cannot map ROM memory."""

    access_sizes = (1, 2, 4, 8)
    name = "riscv_virt_board.mrom"

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.state = None

    def mmio_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size], "little")

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        from kvmpy import log
        log.guest_error(f"riscv_virt_board.mrom: write to ROM at offset 0x{offset:x}")

    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass


@register_type("virt-machine", "machine", description="RISC-V VirtIO board")
class VirtMachine(MachineState):
    """``-M virt``."""

    name = "virt"
    desc = "RISC-V VirtIO board"
    max_cpus = VIRT_CPUS_MAX
    default_ram_size = 128 << 20

    aclint = Property(bool, False, "Set on/off to enable/disable emulating ACLINT devices")
    aia = _AiaProperty(str, "none", "Set type of AIA interrupt controller. Valid values are "
                       "none, aplic, and aplic-imsic.")
    aia_guests = Property(int, 0, "Set number of guest MMIO pages for AIA IMSIC. Valid value "
                          "should be between 0 and 7.")

    def __init__(self) -> None:
        super().__init__()
        self.plic: Any = None
        self.devices: dict[str, Any] = {}
        self.plugged: list[Any] = []
        """The devices of -device and -drive if=virtio, in creation order."""
        self.sbi: Sbi | None = None
        self.fdt_builder: FdtBuilder | None = None
        """The generated device tree (no -dtb); each boot writes a copy with /chosen fixed up."""
        self.base_fdt = b""
        """A -dtb file's tree."""
        self.boot_plan: boot.BootPlan | None = None
        self.roms: list[boot.Rom] = []
        self.ram: GuestRAM | None = None
        self.mrom_write: Callable[[int, bytes], None] | None = None

    # -- phase 4 ----------------------------------------------------------------------------

    def init(self, system: System) -> None:
        # The bundled guest first: with it, -append and -initrd apply to the bundled kernel
        # (QEMU, which has no default kernel, refuses them without -kernel; so does kvmpy
        # when there is no bundled guest to boot, e.g. with -bios none).
        self._default_payload(system)
        self._check_options(system)
        caps = system.caps
        kvm_irqchip = caps.in_kernel_timer_ipi
        plan = boot.select_firmware(self.firmware, caps)
        self.boot_plan = plan
        if plan.notice:
            system.notice(plan.notice)
        system.firmware_mode = plan.mode

        dram = VIRT_MEMMAP["dram"]
        self.ram = system.create_ram(dram.base, self.ram_size, "riscv_virt_board.ram")
        self._create_mrom(system)
        self._create_devices(system, kvm_irqchip)
        self.sbi = Sbi(num_harts=self.smp.cpus, console=_UartConsole(self.devices["uart0"]),
                       ram=self.ram, harts=lambda: _vcpus(system),
                       shutdown=system.request_shutdown, reset=system.request_reset,
                       hypervisor="h" in caps.isa_extensions, wake=lambda: _wake(system))
        system.sbi = self.sbi

        if self.dtb:
            from kvmpy.loader import load_dtb
            self.base_fdt = load_dtb(self.dtb)
            fdt_size = boot.user_dtb_size(len(self.base_fdt))
        else:
            self.fdt_builder = create_fdt(self._fdt_config(system), self.append)
            fdt_size = boot.QEMU_FDT_MAX_SIZE
        self._load_payloads(system, fdt_size)
        if self.dumpdtb:
            self._dump_dtb()

    def _default_payload(self, system: System) -> None:
        """No -kernel and no firmware of the user's own: boot the bundled Linux guest."""
        if self.kernel or self.dumpdtb or self.firmware not in ("", "default", "builtin"):
            return
        from kvmpy import guests

        self.kernel = str(guests.kernel_path())
        if not self.initrd:  # a user's own initramfs runs on the bundled kernel
            self.initrd = str(guests.initrd_path())
        system.notice(f"no -kernel given: booting the bundled guest, {guests.description()}")

    def _check_options(self, system: System) -> None:
        if self.aia != "none":
            raise NotBuiltError(f"aia={self.aia}: the AIA (APLIC/IMSIC) is not built into "
                                "kvmpy; use aia=none", option="-machine")
        if not 0 <= self.aia_guests <= 7:
            raise ConfigError("Invalid number of AIA IMSIC guests", option="-machine")
        # -smp sockets=N does not split the board: QEMU's virt has one socket per NUMA node
        # (riscv_socket_count), and kvmpy has no -numa.
        if self.initrd and not self.kernel:
            raise ConfigError("-initrd only allowed with -kernel option")
        if self.append and not self.kernel:
            raise ConfigError("-append only allowed with -kernel option")
        boot.check_firmware(self.firmware, system.caps)

    def _create_mrom(self, system: System) -> None:
        mrom = VIRT_MEMMAP["mrom"]
        create_rom = getattr(system, "create_rom", None)
        if create_rom is not None:
            rom_ram: GuestRAM = create_rom(mrom.base, mrom.size, "riscv_virt_board.mrom")
            self.mrom_write = rom_ram.write
        else:
            rom = MaskRom(mrom.size)
            system.bus.add(mrom.base, mrom.size, rom)

            def write(gpa: int, data: bytes) -> None:
                off = gpa - mrom.base
                rom.data[off:off + len(data)] = data

            self.mrom_write = write

    def _create_devices(self, system: System, kvm_irqchip: bool) -> None:
        """virt_machine_init: interrupt controllers first, then the devices they serve."""
        from kvmpy.hw.char.serial import SerialMM
        from kvmpy.hw.intc.aclint import AclintMtimer, AclintSwi
        from kvmpy.hw.intc.plic import SiFivePlic
        from kvmpy.hw.misc.sifive_test import SifiveTest
        from kvmpy.hw.rtc.goldfish_rtc import GoldfishRtc

        harts = system.harts
        n = len(harts)
        mm = VIRT_MEMMAP
        bus = system.bus

        if not kvm_irqchip:
            clint = mm["clint"]
            mswi = AclintSwi([h.irq_line(IRQ_M_SOFT) for h in harts], num_harts=n)
            bus.add(clint.base, ACLINT_SWI_SIZE, mswi)
            mtimer = AclintMtimer(harts, system.time_source, num_harts=n,
                                  aperture_size=ACLINT_MTIMER_SIZE)
            bus.add(clint.base + ACLINT_SWI_SIZE, ACLINT_MTIMER_SIZE, mtimer)
            self.devices.update(mswi=mswi, mtimer=mtimer)
            # MTIP is raised by the accelerator from each hart's mtimecmp (HartPort).
        if not kvm_irqchip and self.aclint:
            sswi_entry = mm["aclint_sswi"]
            sswi = AclintSwi([h.irq_line(IRQ_S_SOFT) for h in harts], num_harts=n, sswi=True)
            bus.add(sswi_entry.base, sswi_entry.size, sswi)
            self.devices["sswi"] = sswi

        if kvm_irqchip:
            hart_config, outputs = "S", [h.irq_line(IRQ_S_EXT) for h in harts]
        else:
            hart_config = "MS"
            outputs = [line for h in harts
                       for line in (h.irq_line(IRQ_M_EXT), h.irq_line(IRQ_S_EXT))]
        plic_entry = mm["plic"]
        plic = SiFivePlic(outputs, hart_config=",".join([hart_config] * n), hartid_base=0,
                          num_sources=VIRT_IRQCHIP_NUM_SOURCES,
                          num_priorities=(1 << VIRT_IRQCHIP_NUM_PRIO_BITS) - 1,
                          priority_base=VIRT_PLIC_PRIORITY_BASE,
                          pending_base=VIRT_PLIC_PENDING_BASE,
                          enable_base=VIRT_PLIC_ENABLE_BASE,
                          enable_stride=VIRT_PLIC_ENABLE_STRIDE,
                          context_base=VIRT_PLIC_CONTEXT_BASE,
                          context_stride=VIRT_PLIC_CONTEXT_STRIDE,
                          aperture_size=plic_entry.size)
        bus.add(plic_entry.base, plic_entry.size, plic)
        self.plic = plic

        test = SifiveTest(on_pass=lambda: system.exit_with_status(0),
                          on_fail=system.exit_with_status,
                          on_reset=lambda: system.request_reset("guest-reset", True))
        bus.add(mm["test"].base, test.region_size, test)

        self._create_virtio(system, plic.irq_in)
        self._create_pcie(system, plic.irq_in)
        self._plug_devices(system)

        uart = SerialMM(plic.irq_in(UART0_IRQ), system.serial_chardev(0),
                        baudbase=UART_BAUDBASE)
        bus.add(mm["uart0"].base, uart.region_size, uart)

        rtc = GoldfishRtc(plic.irq_in(RTC_IRQ), schedule=_wall_clock_scheduler(system))
        bus.add(mm["rtc"].base, rtc.region_size, rtc)
        self.devices.update(plic=plic, test=test, uart0=uart, rtc=rtc)

    def _create_virtio(self, system: System, irq_in: Callable[[int], IrqLine]) -> None:
        """Eight virtio-mmio transports; ``-device virtio-*-device`` fill them from the top."""
        from kvmpy.hw.virtio.mmio import VirtioMmio

        entry = VIRT_MEMMAP["virtio"]
        transports = []
        for i in range(VIRTIO_COUNT):
            transport = VirtioMmio(irq_in(VIRTIO_IRQ + i), ram=self.ram)
            system.bus.add(entry.base + i * entry.size, transport.region_size, transport)
            transports.append(transport)
        self.devices["virtio"] = transports

    def _create_pcie(self, system: System, irq_in: Callable[[int], IrqLine]) -> None:
        """gpex_pcie_init: ECAM, the low and high memory windows, the I/O window."""
        from kvmpy.hw.pci.gpex import GpexHost

        mm = VIRT_MEMMAP
        host = GpexHost([irq_in(PCIE_IRQ + i) for i in range(PCIE_NUM_IRQS)])
        bus = system.bus
        bus.add(mm["pcie_ecam"].base, mm["pcie_ecam"].size, host.ecam, "pcie-ecam")
        low, high = mm["pcie_mmio"], high_pcie_mmio(self.ram_size)
        bus.add(low.base, low.size, host.mmio_window(low.base, "pcie-mmio"))
        bus.add(high.base, high.size, host.mmio_window(high.base, "pcie-mmio-high"))
        bus.add(mm["pcie_pio"].base, mm["pcie_pio"].size, host.io_window(), "gpex_ioport_window")
        self.devices["pcie"] = host

    def _plug_devices(self, system: System) -> None:
        """``-device`` and ``-drive if=virtio``: PCI devices on ``pcie.0`` or behind the
        bridges plugged there, virtio devices on the virtio-mmio slots from the highest
        address down, as QEMU fills them."""
        from kvmpy.hw.pci import PciBridge, PciBus
        from kvmpy.hw.qdev import Bus, create_devices
        from kvmpy.hw.virtio.mmio import mmio_buses

        host = self.devices["pcie"]
        deliver_msi = _msi_to_ram(self.ram)
        entries: dict[PciBus, Bus] = {}

        def pci_bus(bus: PciBus, parent: Bus | None = None) -> Bus:
            inject: dict[str, object] = {"ram": self.ram, "deliver_msi": deliver_msi}
            if bus.bridge is not None:
                inject["pcie_port"] = True  # every bridge here is a PCI Express port
            entry = Bus(bus.name, "PCIE", "PCI", plug=lambda dev: bus.plug(dev, dev.addr),
                        inject=inject, parent=parent)
            entries[bus] = entry
            return entry

        def carried(device: object, dev_id: str) -> list[Bus]:
            from kvmpy.hw.virtio.console import serial_buses  # once a -device is created

            found = serial_buses(device, dev_id)
            if isinstance(device, PciBridge):
                secondary = device.secondary_bus
                assert secondary.parent is not None
                found.append(pci_bus(secondary, entries[secondary.parent]))
            return found

        buses = [pci_bus(host.bus), *mmio_buses(list(reversed(self.devices["virtio"])))]
        self.plugged = create_devices(system, buses, carried)

    # -- device tree and payloads -----------------------------------------------------------

    def _fdt_config(self, system: System) -> VirtFdtConfig:
        mm = VIRT_MEMMAP
        caps = system.caps
        return VirtFdtConfig(
            num_harts=self.smp.cpus, ram_base=mm["dram"].base, ram_size=self.ram_size,
            isa_extensions=tuple(caps.isa_extensions), mmu_type=caps.mmu_type,
            kvm_irqchip=caps.in_kernel_timer_ipi, aclint=self.aclint,
            test_base=mm["test"].base, test_size=mm["test"].size,
            rtc_base=mm["rtc"].base, rtc_size=mm["rtc"].size, rtc_irq=RTC_IRQ,
            clint_base=mm["clint"].base, clint_size=mm["clint"].size,
            sswi_base=mm["aclint_sswi"].base, sswi_size=mm["aclint_sswi"].size,
            plic_base=mm["plic"].base, plic_size=mm["plic"].size,
            plic_ndev=VIRT_IRQCHIP_NUM_SOURCES,
            uart_base=mm["uart0"].base, uart_size=mm["uart0"].size, uart_irq=UART0_IRQ,
            virtio_base=mm["virtio"].base, virtio_size=mm["virtio"].size,
            virtio_irq=VIRTIO_IRQ, virtio_count=VIRTIO_COUNT,
            pcie_ecam=_span(mm["pcie_ecam"]), pcie_pio=_span(mm["pcie_pio"]),
            pcie_mmio=_span(mm["pcie_mmio"]), pcie_mmio_high=_span(high_pcie_mmio(self.ram_size)),
            pcie_irq=PCIE_IRQ)

    def _load_payloads(self, system: System, fdt_size: int) -> None:
        """virt_machine_done: firmware, kernel, initrd, /chosen, FDT, boot ROM, boot state."""
        assert self.ram is not None and self.boot_plan is not None
        self._fdt_size = fdt_size
        result = boot.load_payloads(
            self.ram, self.boot_plan, dram_base=VIRT_MEMMAP["dram"].base,
            kernel=self.kernel or None, initrd=self.initrd or None, append=self.append,
            base_fdt=self.base_fdt if self.fdt_builder is None else self.fdt_builder.to_fdt(),
            fdt_path=self.dtb or "fdt", fdt_size=fdt_size)
        self.roms = result.roms
        self.fdt_blob = result.fdt
        self.fdt_addr = result.fdt_addr
        mrom = VIRT_MEMMAP["mrom"]
        rom = boot.reset_vec_rom(mrom.base, start_addr=VIRT_MEMMAP["dram"].base,
                                 fdt_addr=result.fdt_addr, kernel_entry=result.kernel_entry)
        assert self.mrom_write is not None
        self.mrom_write(mrom.base, rom)
        self.roms[:0] = boot.mrom_roms(mrom.base, rom)
        system.boot.harts[:] = boot.boot_state(self.boot_plan, system.caps, len(system.harts),
                                               mrom.base, result)

    def _dump_dtb(self) -> None:
        """``-M virt,dumpdtb=FILE``: write the final tree and end the process (QEMU exits 0)."""
        try:
            with open(self.dumpdtb, "wb") as f:
                f.write(self.fdt_blob)
        except OSError as exc:
            raise ConfigError(f"Failed to save dtb to {self.dumpdtb}: {exc.strerror}") from None
        stderr_line(f"kvmpy: info: dtb dumped to {self.dumpdtb}. Exiting.")
        raise SystemExit(0)

    def reset(self, system: System) -> None:
        """System reset: QEMU copies its ROM blobs (firmware, kernel, initrd, FDT with a fresh
        rng-seed) back into RAM; the boot state is applied by the system afterwards.

        The blobs are read again from their files (not kept in memory); a file that has gone
        away since start is reported in one line and RAM keeps what the guest left there.
        """
        try:
            self._load_payloads(system, self._fdt_size)
        except KvmpyError as exc:
            system.notice(f"system reset: {exc}")


class _UartConsole(SbiConsole):
    """SBI console calls drive the ns16550a's registers, as OpenSBI's uart8250 driver does on
    QEMU: output goes through THR (so the UART's state stays what the guest expects), input
    comes from RBR when LSR.DR is set."""

    RBR_THR = 0
    LSR = 5
    LSR_DR = 0x01
    LSR_THRE = 0x20

    def __init__(self, uart: MmioDevice) -> None:
        self._uart = uart

    def write(self, data: bytes) -> None:
        for byte in data:
            self._uart.mmio_write(self.RBR_THR, 1, byte)

    def read(self, max_bytes: int) -> bytes:
        out = bytearray()
        while len(out) < max_bytes and self._uart.mmio_read(self.LSR, 1) & self.LSR_DR:
            out.append(self._uart.mmio_read(self.RBR_THR, 1) & 0xFF)
        return bytes(out)


def _span(entry: MemMapEntry) -> tuple[int, int]:
    return entry.base, entry.size


def _msi_to_ram(ram: GuestRAM | None) -> Callable[[int, int], None]:
    """MSI-X messages: this board has no MSI controller, so a message only means something
    when the guest aimed it at RAM (QEMU writes it wherever it points; kvmpy does not let
    it reach device registers, where it could loop back into the device)."""

    def deliver(address: int, data: int) -> None:
        from kvmpy import log

        if ram is not None and ram.contains(address, 4):
            ram.write_int(address, 4, data)
        else:
            log.guest_error(f"MSI-X message 0x{data:x} to 0x{address:x}, outside RAM: dropped "
                            "(no MSI controller on this board)")

    return deliver


def _wake(system: System) -> None:
    driver = system.driver
    if driver is not None:
        driver.wake()


def _vcpus(system: System) -> list[Any]:
    accel = system.accel
    return list(accel.vcpus) if accel is not None else []


def _wall_clock_scheduler(system: System) -> Callable[[int, Callable[[], None]],
                                                      Callable[[], None]]:
    """The RTC counts host wall-clock ns; the system schedules on the monotonic clock."""

    def schedule(deadline_wall_ns: int, callback: Callable[[], None]) -> Callable[[], None]:
        deadline = deadline_wall_ns - time.time_ns() + time.monotonic_ns()
        return system.schedule(deadline, callback)

    return schedule

