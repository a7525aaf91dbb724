"""Boot helpers of the virt board, as QEMU 7.2's hw/riscv/boot.c and ``virt_machine_done``.

- which firmware runs (``-bios default|builtin|none|FILE``) and where it goes;
- where the kernel, the initrd and the FDT land (``riscv_calc_kernel_start_addr``,
  ``riscv_load_initrd``, ``riscv_compute_fdt_addr``);
- the boot ROM at 0x1000: the reset vector and OpenSBI's ``fw_dynamic_info``
  (``riscv_setup_rom_reset_vec``);
- where each hart starts (MROM in M-mode, or the kernel in S-mode with a0 = hartid,
  a1 = FDT as under KVM and with the built-in SBI).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvmpy.accel.base import PRV_M, PRV_S, AccelCaps
from kvmpy.errors import ConfigError, LoaderError
from kvmpy.firmware import opensbi
from kvmpy.hw.riscv.virt_fdt import fixup_chosen
from kvmpy.loader import ElfImage, load_image, load_initrd
from kvmpy.memory import GuestRAM
from kvmpy.system import HartBoot

if TYPE_CHECKING:
    from fdt import FDT

MiB = 1 << 20
GiB = 1 << 30

QEMU_FDT_MAX_SIZE = 1 * MiB
"""Size QEMU 7.2 gives a tree it creates (``create_device_tree``); it places the FDT by it."""

FW_DYNAMIC_INFO_MAGIC = 0x4942534F  # "OSBI"
FW_DYNAMIC_INFO_VERSION = 2
FW_DYNAMIC_INFO_NEXT_MODE_S = 1
RESET_VEC_SIZE = 0x28
FW_DYNAMIC_INFO_SIZE = 6 * 8

# riscv_setup_rom_reset_vec, RV64
_RESET_VEC_CODE = (
    0x00000297,  # 1:  auipc  t0, %pcrel_hi(fw_dyn)
    0x02828613,  #     addi   a2, t0, %pcrel_lo(1b)
    0xF1402573,  #     csrr   a0, mhartid
    0x0202B583,  #     ld     a1, 32(t0)
    0x0182B283,  #     ld     t0, 24(t0)
    0x00028067,  #     jr     t0
)

FIRMWARE_MODES = ("opensbi", "file", "none", "builtin")


def user_dtb_size(file_size: int) -> int:
    """The size QEMU's ``load_device_tree`` gives a ``-dtb`` file (room for fix-ups)."""
    return (file_size + 10000) * 2


def align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def align_down(value: int, align: int) -> int:
    return value // align * align


# --- firmware choice --------------------------------------------------------------------------

@dataclass(frozen=True)
class BootPlan:
    """``mode`` is one of :data:`FIRMWARE_MODES`; ``path`` the firmware file for opensbi/file."""

    mode: str
    path: str | None = None
    notice: str | None = None
    """One line for the user when kvmpy chose for them (OpenSBI missing)."""


def check_firmware(firmware: str, caps: AccelCaps) -> None:
    """Harts that cannot start in M-mode (KVM) run no M-mode firmware: only ``-bios none`` and
    ``-bios builtin`` are possible; the accelerator words the refusal (QEMU's, under KVM)."""
    if not caps.machine_mode and firmware not in ("", "none", "builtin"):
        raise ConfigError(caps.firmware_refusal)


def select_firmware(firmware: str, caps: AccelCaps) -> BootPlan:
    """``-bios`` (``firmware``, "" when not given) to a plan, as QEMU 7.2 plus ``builtin``."""
    if not caps.machine_mode:
        check_firmware(firmware, caps)
        return BootPlan("builtin" if firmware == "builtin" else "none")
    if firmware in ("", "default"):
        path = opensbi.find_fw_dynamic()
        if path is None:
            return BootPlan("builtin", notice="OpenSBI not found, using the built-in SBI")
        return BootPlan("opensbi", path)
    if firmware in ("builtin", "none"):
        return BootPlan(firmware)
    path = opensbi.find_firmware_file(firmware)
    if path is None:
        raise LoaderError(f'Unable to load the RISC-V firmware "{firmware}"')
    return BootPlan("file", path)


def direct_kernel_boot(plan: BootPlan, caps: AccelCaps) -> bool:
    """Harts start at the kernel in S-mode (KVM, built-in SBI), not in the boot ROM."""
    return plan.mode == "builtin" or not caps.machine_mode


# --- addresses --------------------------------------------------------------------------------

def calc_kernel_start_addr(firmware_end: int) -> int:
    """riscv_calc_kernel_start_addr (RV64): the next 2 MiB boundary after the firmware."""
    return align_up(firmware_end, 2 * MiB)


def initrd_start(kernel_entry: int, ram_size: int) -> int:
    """riscv_load_initrd: far enough above the kernel that decompression does not reach it."""
    return kernel_entry + min(ram_size // 2, 128 * MiB)


def compute_fdt_addr(dram_base: int, ram_size: int, fdt_size: int) -> int:
    """riscv_compute_fdt_addr: 2 MiB aligned, below the end of RAM or 3 GiB, whichever is lower."""
    dram_end = dram_base + ram_size
    top = min(dram_end, 3 * GiB) if dram_base < 3 * GiB else dram_end
    addr = align_down(top - fdt_size, 2 * MiB)
    if addr < dram_base:
        raise LoaderError(f"not enough RAM for the device tree ({fdt_size} bytes)")
    return addr


# --- boot ROM ---------------------------------------------------------------------------------

def fw_dynamic_info(next_addr: int, next_mode: int = FW_DYNAMIC_INFO_NEXT_MODE_S,
                    boot_hart: int = 0) -> bytes:
    """OpenSBI's ``struct fw_dynamic_info`` (RV64): magic, version, next_addr, next_mode,
    options, boot_hart."""
    return struct.pack("<6Q", FW_DYNAMIC_INFO_MAGIC, FW_DYNAMIC_INFO_VERSION, next_addr,
                       next_mode, 0, boot_hart)


def reset_vec_rom(mrom_base: int, start_addr: int, fdt_addr: int, kernel_entry: int) -> bytes:
    """The 0x58 bytes QEMU writes at the MROM: reset vector, start/FDT address, fw_dynamic_info.

    Every hart runs it in M-mode: a0 = mhartid, a1 = FDT, a2 = &fw_dynamic_info, jump to
    ``start_addr``.
    """
    del mrom_base  # the code is position independent (auipc)
    words = struct.pack("<6I", *_RESET_VEC_CODE) + struct.pack("<QQ", start_addr, fdt_addr)
    return words + fw_dynamic_info(kernel_entry)


@dataclass(frozen=True)
class Rom:
    """One blob QEMU's ``info roms`` lists (name, guest-physical address, size)."""

    name: str
    addr: int
    size: int


def mrom_roms(mrom_base: int, rom: bytes) -> list[Rom]:
    return [Rom("mrom.reset", mrom_base, RESET_VEC_SIZE),
            Rom("mrom.finfo", mrom_base + RESET_VEC_SIZE, len(rom) - RESET_VEC_SIZE)]


# --- loading ----------------------------------------------------------------------------------

@dataclass
class Payloads:
    """What :func:`load_payloads` put in RAM."""

    firmware_end: int
    kernel_entry: int
    """0 when there is no kernel (OpenSBI then stops after its banner, as on QEMU)."""
    fdt: bytes
    fdt_addr: int
    initrd: tuple[int, int] | None = None
    roms: list[Rom] = field(default_factory=list)


def load_firmware(ram: GuestRAM, plan: BootPlan, dram_base: int, roms: list[Rom]) -> int:
    """riscv_find_and_load_firmware: ELF at its addresses, else raw at DRAM base; returns its
    end (the DRAM base when there is no firmware in RAM)."""
    if plan.path is None:
        return dram_base
    image = load_image(plan.path, ram, dram_base, what="firmware", symbols=False)
    if isinstance(image, ElfImage):
        roms.append(Rom(plan.path, image.low, image.high - image.low))
        return image.high
    roms.append(Rom(plan.path, image.start, image.size))
    return image.end


def load_kernel(ram: GuestRAM, path: str, start: int, roms: list[Rom]) -> int:
    """riscv_load_kernel: an ELF goes to its addresses and is entered at its lowest one (QEMU
    7.2); anything else (a Linux ``Image``, EFI stub or not) is copied raw to ``start``."""
    image = load_image(path, ram, start, what="kernel", symbols=False)
    if isinstance(image, ElfImage):
        roms.append(Rom(path, image.low, image.high - image.low))
        return image.low
    roms.append(Rom(path, image.start, image.size))
    return image.start


def load_payloads(ram: GuestRAM, plan: BootPlan, *, dram_base: int, kernel: str | None,
                  initrd: str | None, append: str, base_fdt: bytes | FDT, fdt_path: str,
                  fdt_size: int) -> Payloads:
    """virt_machine_done: firmware, kernel, initrd, the FDT's /chosen, then the FDT itself."""
    roms: list[Rom] = []
    firmware_end = load_firmware(ram, plan, dram_base, roms)
    kernel_entry = 0
    initrd_range: tuple[int, int] | None = None
    if kernel:
        kernel_entry = load_kernel(ram, kernel, calc_kernel_start_addr(firmware_end), roms)
        if initrd:
            blob = load_initrd(initrd, ram, initrd_start(kernel_entry, ram.size))
            if blob.size:  # QEMU lists no ROM for an empty initrd, yet sets /chosen
                roms.append(Rom(initrd, blob.start, blob.size))
            initrd_range = (blob.start, blob.end)
    fdt = fixup_chosen(base_fdt, fdt_path, bootargs=append if kernel else None,
                       initrd=initrd_range)
    fdt_addr = compute_fdt_addr(dram_base, ram.size, max(fdt_size, len(fdt)))
    ram.write(fdt_addr, fdt)
    roms.append(Rom("fdt", fdt_addr, max(fdt_size, len(fdt))))
    return Payloads(firmware_end, kernel_entry, fdt, fdt_addr, initrd_range, roms)


def boot_state(plan: BootPlan, caps: AccelCaps, num_harts: int, mrom_base: int,
               payloads: Payloads) -> list[HartBoot]:
    """Where each hart starts.

    M-mode firmware (OpenSBI, ``-bios FILE``, ``-bios none``): every hart at the MROM in
    M-mode, as QEMU.  Built-in SBI or KVM: hart 0 at the kernel in S-mode with a0 = 0 and
    a1 = FDT; the others powered off until SBI HSM ``hart_start``.
    """
    if not direct_kernel_boot(plan, caps):
        return [HartBoot(pc=mrom_base, priv=PRV_M) for _ in range(num_harts)]
    entry = payloads.kernel_entry or payloads.firmware_end
    return [HartBoot(pc=entry, priv=PRV_S, a0=i, a1=payloads.fdt_addr, stopped=i != 0)
            for i in range(num_harts)]
