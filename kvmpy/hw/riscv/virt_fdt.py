"""The virt board's flattened device tree, node for node like QEMU 7.2's ``create_fdt``.

QEMU builds the tree with libfdt, which inserts every new node in front of its parent's other
children and every new property in front of the node's other properties.  :class:`FdtBuilder`
keeps that rule, so the functions below call it in QEMU's order (``create_fdt_socket_cpus``,
``create_fdt_socket_clint``, ...) and the blob comes out in the same order as
``qemu-system-riscv64 -M virt,dumpdtb=F``: same nodes, phandles, properties and values.

Only devices kvmpy models are described: fw-cfg, the CFI flash banks and the platform bus are
left out (``tests/test_virt_dtb_vs_qemu.py`` lists every difference).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import fdt

from kvmpy.accel.base import IRQ_M_EXT, IRQ_M_SOFT, IRQ_M_TIMER, IRQ_S_EXT, IRQ_S_SOFT
from kvmpy.errors import LoaderError

Cells = tuple[int, ...]
PropValue = str | Sequence[str] | Cells | bytes | None

RNG_SEED_BYTES = 32
TIMEBASE_FREQ = 10_000_000
UART_CLOCK_FREQ = 3_686_400
DEFAULT_ISA = ("i", "m", "a", "f", "d", "c", "h", "zicsr", "zifencei", "zihintpause", "zba",
               "zbb", "zbc", "zbs", "sstc")
"""QEMU 7.2's ``rv64`` CPU, used when an accelerator does not say what it implements."""

# riscv_pmu_generate_fdt_node (QEMU target/riscv/pmu.c): SBI PMU event -> counter bitmaps.
PMU_EVENT_TO_MHPMCOUNTERS = (0x01, 0x01, 0x7FFF9, 0x02, 0x02, 0x7FFFC, 0x10019, 0x10019, 0x7FFF8,
                             0x1001B, 0x1001B, 0x7FFF8, 0x10021, 0x10021, 0x7FFF8,
                             0x00, 0x00, 0x00, 0x00, 0x00)


def isa_string(extensions: Sequence[str], xlen: int = 64) -> str:
    """``riscv,isa`` as QEMU spells it: single letters, then ``_``-joined multi-letter ones."""
    exts = tuple(extensions) or DEFAULT_ISA
    single = "".join(e for e in exts if len(e) == 1)
    multi = [e for e in exts if len(e) > 1]
    return "_".join([f"rv{xlen}{single}", *multi])


# --- a libfdt-ordered tree --------------------------------------------------------------------

@dataclass
class _Node:
    name: str
    props: list[tuple[str, PropValue]] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)

    def child(self, name: str) -> _Node | None:
        for node in self.children:
            if node.name == name:
                return node
        return None


class FdtBuilder:
    """QEMU's ``qemu_fdt_*`` calls with libfdt's ordering, emitting a blob with :mod:`fdt`."""

    def __init__(self) -> None:
        self.root = _Node("/")

    def _find(self, path: str) -> _Node:
        node = self.root
        for part in (p for p in path.split("/") if p):
            found = node.child(part)
            if found is None:
                raise KeyError(f"no node {path}")
            node = found
        return node

    def exists(self, path: str) -> bool:
        try:
            self._find(path)
        except KeyError:
            return False
        return True

    def add_subnode(self, path: str) -> None:
        parent_path, _, name = path.rstrip("/").rpartition("/")
        parent = self._find(parent_path or "/")
        if parent.child(name) is None:
            parent.children.insert(0, _Node(name))

    def setprop(self, path: str, name: str, value: PropValue = None) -> None:
        node = self._find(path)
        for i, (pname, _) in enumerate(node.props):
            if pname == name:
                node.props[i] = (name, value)
                return
        node.props.insert(0, (name, value))

    def setprop_cells(self, path: str, name: str, *cells: int) -> None:
        self.setprop(path, name, tuple(c & 0xFFFFFFFF for c in cells))

    def getprop(self, path: str, name: str) -> PropValue:
        for pname, value in self._find(path).props:
            if pname == name:
                return value
        raise KeyError(f"no property {name} in {path}")

    def to_fdt(self) -> fdt.FDT:
        tree = fdt.FDT()
        tree.header.version = 17
        tree.root = _to_fdt_node(self.root)
        return tree

    def to_dtb(self) -> bytes:
        return bytes(self.to_fdt().to_dtb(version=17))


def _to_fdt_prop(name: str, value: PropValue) -> fdt.Property:
    if value is None:
        return fdt.Property(name)
    if isinstance(value, str):
        return fdt.PropStrings(name, value)
    if isinstance(value, bytes):
        return fdt.PropBytes(name, data=list(value))
    if value and isinstance(value[0], str):
        return fdt.PropStrings(name, *value)
    return fdt.PropWords(name, *value)


def _to_fdt_node(node: _Node) -> fdt.Node:
    out = fdt.Node(node.name)
    for name, value in node.props:
        out.append(_to_fdt_prop(name, value))
    for child in node.children:
        out.append(_to_fdt_node(child))
    return out


# --- the virt board's tree --------------------------------------------------------------------

@dataclass(frozen=True)
class VirtFdtConfig:
    """What the tree describes; addresses come from the board's memory map."""

    num_harts: int
    ram_base: int
    ram_size: int
    isa_extensions: tuple[str, ...]
    mmu_type: str
    kvm_irqchip: bool
    """KVM keeps the timer and IPIs: no CLINT/ACLINT node, PLIC with S-mode contexts only."""
    aclint: bool
    test_base: int
    test_size: int
    rtc_base: int
    rtc_size: int
    rtc_irq: int
    clint_base: int
    clint_size: int
    sswi_base: int
    sswi_size: int
    plic_base: int
    plic_size: int
    plic_ndev: int
    uart_base: int
    uart_size: int
    uart_irq: int
    virtio_base: int
    virtio_size: int
    virtio_irq: int
    virtio_count: int
    pcie_ecam: tuple[int, int]
    pcie_pio: tuple[int, int]
    pcie_mmio: tuple[int, int]
    pcie_mmio_high: tuple[int, int]
    """(base, size) of the host bridge's windows."""
    pcie_irq: int


FDT_PCI_ADDR_CELLS = 3
FDT_PCI_INT_CELLS = 1
FDT_PCI_RANGE_IOPORT = 0x1000000
FDT_PCI_RANGE_MMIO = 0x2000000
FDT_PCI_RANGE_MMIO_64BIT = 0x3000000
PCIE_MMCFG_SIZE_MIN = 1 << 20
ACLINT_SWI_SIZE = 0x4000
ACLINT_MTIMECMP = 0x0
ACLINT_MTIME = 0x7FF8
ACLINT_MTIMER_SIZE = 0x8000
FINISHER_PASS = 0x5555
FINISHER_RESET = 0x7777


def _fdt_cpus(b: FdtBuilder, cfg: VirtFdtConfig, phandle: list[int]) -> list[int]:
    """create_fdt_socket_cpus for socket 0; returns the intc phandle of each hart."""
    intc_phandles = [0] * cfg.num_harts
    isa = isa_string(cfg.isa_extensions)
    cluster = "/cpus/cpu-map/cluster0"
    b.add_subnode(cluster)
    for cpu in range(cfg.num_harts - 1, -1, -1):
        cpu_phandle = phandle[0]
        phandle[0] += 1
        name = f"/cpus/cpu@{cpu}"
        b.add_subnode(name)
        b.setprop(name, "mmu-type", cfg.mmu_type)
        b.setprop(name, "riscv,isa", isa)
        b.setprop(name, "compatible", "riscv")
        b.setprop(name, "status", "okay")
        b.setprop_cells(name, "reg", cpu)
        b.setprop(name, "device_type", "cpu")
        b.setprop_cells(name, "phandle", cpu_phandle)
        intc_phandles[cpu] = phandle[0]
        phandle[0] += 1
        intc = f"{name}/interrupt-controller"
        b.add_subnode(intc)
        b.setprop_cells(intc, "phandle", intc_phandles[cpu])
        b.setprop(intc, "compatible", "riscv,cpu-intc")
        b.setprop(intc, "interrupt-controller")
        b.setprop_cells(intc, "#interrupt-cells", 1)
        core = f"{cluster}/core{cpu}"
        b.add_subnode(core)
        b.setprop_cells(core, "cpu", cpu_phandle)
    return intc_phandles


def _fdt_memory(b: FdtBuilder, cfg: VirtFdtConfig) -> None:
    name = f"/memory@{cfg.ram_base:x}"
    b.add_subnode(name)
    b.setprop_cells(name, "reg", cfg.ram_base >> 32, cfg.ram_base, cfg.ram_size >> 32,
                    cfg.ram_size)
    b.setprop(name, "device_type", "memory")


def _per_hart(intc: list[int], *irqs: int) -> Cells:
    return tuple(cell for ph in intc for irq in irqs for cell in (ph, irq))


def _fdt_clint(b: FdtBuilder, cfg: VirtFdtConfig, intc: list[int]) -> None:
    name = f"/soc/clint@{cfg.clint_base:x}"
    b.add_subnode(name)
    b.setprop(name, "compatible", ("sifive,clint0", "riscv,clint0"))
    b.setprop_cells(name, "reg", 0, cfg.clint_base, 0, cfg.clint_size)
    b.setprop_cells(name, "interrupts-extended", *_per_hart(intc, IRQ_M_SOFT, IRQ_M_TIMER))


def _fdt_aclint(b: FdtBuilder, cfg: VirtFdtConfig, intc: list[int]) -> None:
    name = f"/soc/mswi@{cfg.clint_base:x}"
    b.add_subnode(name)
    b.setprop(name, "compatible", "riscv,aclint-mswi")
    b.setprop_cells(name, "reg", 0, cfg.clint_base, 0, ACLINT_SWI_SIZE)
    b.setprop_cells(name, "interrupts-extended", *_per_hart(intc, IRQ_M_SOFT))
    b.setprop(name, "interrupt-controller")
    b.setprop_cells(name, "#interrupt-cells", 0)

    addr = cfg.clint_base + ACLINT_SWI_SIZE
    size = cfg.clint_size - ACLINT_SWI_SIZE
    name = f"/soc/mtimer@{addr:x}"
    b.add_subnode(name)
    b.setprop(name, "compatible", "riscv,aclint-mtimer")
    b.setprop_cells(name, "reg", 0, addr + ACLINT_MTIME, 0, size - ACLINT_MTIME,
                    0, addr + ACLINT_MTIMECMP, 0, ACLINT_MTIME)
    b.setprop_cells(name, "interrupts-extended", *_per_hart(intc, IRQ_M_TIMER))

    name = f"/soc/sswi@{cfg.sswi_base:x}"
    b.add_subnode(name)
    b.setprop(name, "compatible", "riscv,aclint-sswi")
    b.setprop_cells(name, "reg", 0, cfg.sswi_base, 0, cfg.sswi_size)
    b.setprop_cells(name, "interrupts-extended", *_per_hart(intc, IRQ_S_SOFT))
    b.setprop(name, "interrupt-controller")
    b.setprop_cells(name, "#interrupt-cells", 0)


def _fdt_plic(b: FdtBuilder, cfg: VirtFdtConfig, intc: list[int], phandle: list[int]) -> int:
    plic_phandle = phandle[0]
    phandle[0] += 1
    name = f"/soc/plic@{cfg.plic_base:x}"
    b.add_subnode(name)
    b.setprop_cells(name, "#interrupt-cells", 1)
    b.setprop_cells(name, "#address-cells", 0)
    b.setprop(name, "compatible", ("sifive,plic-1.0.0", "riscv,plic0"))
    b.setprop(name, "interrupt-controller")
    irqs = (IRQ_S_EXT,) if cfg.kvm_irqchip else (IRQ_M_EXT, IRQ_S_EXT)
    b.setprop_cells(name, "interrupts-extended", *_per_hart(intc, *irqs))
    b.setprop_cells(name, "reg", 0, cfg.plic_base, 0, cfg.plic_size)
    b.setprop_cells(name, "riscv,ndev", cfg.plic_ndev)
    b.setprop_cells(name, "phandle", plic_phandle)
    return plic_phandle


def _fdt_sockets(b: FdtBuilder, cfg: VirtFdtConfig, phandle: list[int]) -> int:
    """create_fdt_sockets for one socket; returns the PLIC phandle."""
    b.add_subnode("/cpus")
    b.setprop_cells("/cpus", "timebase-frequency", TIMEBASE_FREQ)
    b.setprop_cells("/cpus", "#size-cells", 0)
    b.setprop_cells("/cpus", "#address-cells", 1)
    b.add_subnode("/cpus/cpu-map")
    intc = _fdt_cpus(b, cfg, phandle)
    _fdt_memory(b, cfg)
    if not cfg.kvm_irqchip:
        (_fdt_aclint if cfg.aclint else _fdt_clint)(b, cfg, intc)
    return _fdt_plic(b, cfg, intc, phandle)


def _fdt_virtio(b: FdtBuilder, cfg: VirtFdtConfig, plic: int) -> None:
    for i in range(cfg.virtio_count):
        addr = cfg.virtio_base + i * cfg.virtio_size
        name = f"/soc/virtio_mmio@{addr:x}"
        b.add_subnode(name)
        b.setprop(name, "compatible", "virtio,mmio")
        b.setprop_cells(name, "reg", 0, addr, 0, cfg.virtio_size)
        b.setprop_cells(name, "interrupt-parent", plic)
        b.setprop_cells(name, "interrupts", cfg.virtio_irq + i)


def _fdt_pcie(b: FdtBuilder, cfg: VirtFdtConfig, plic: int) -> None:
    """create_fdt_pcie: QEMU's generic ECAM host, INTx swizzled onto the PLIC."""
    ecam_base, ecam_size = cfg.pcie_ecam
    name = f"/soc/pci@{ecam_base:x}"
    b.add_subnode(name)
    b.setprop_cells(name, "#address-cells", FDT_PCI_ADDR_CELLS)
    b.setprop_cells(name, "#interrupt-cells", FDT_PCI_INT_CELLS)
    b.setprop_cells(name, "#size-cells", 2)
    b.setprop(name, "compatible", "pci-host-ecam-generic")
    b.setprop(name, "device_type", "pci")
    b.setprop_cells(name, "linux,pci-domain", 0)
    b.setprop_cells(name, "bus-range", 0, ecam_size // PCIE_MMCFG_SIZE_MIN - 1)
    b.setprop(name, "dma-coherent")
    b.setprop_cells(name, "reg", *_cells2(ecam_base), *_cells2(ecam_size))
    pio, mmio, high = cfg.pcie_pio, cfg.pcie_mmio, cfg.pcie_mmio_high
    b.setprop_cells(name, "ranges",
                    FDT_PCI_RANGE_IOPORT, 0, 0, *_cells2(pio[0]), *_cells2(pio[1]),
                    FDT_PCI_RANGE_MMIO, *_cells2(mmio[0]), *_cells2(mmio[0]), *_cells2(mmio[1]),
                    FDT_PCI_RANGE_MMIO_64BIT, *_cells2(high[0]), *_cells2(high[0]),
                    *_cells2(high[1]))
    irq_map: list[int] = []
    for slot in range(4):  # the map-mask wraps it over every slot (pci_swizzle_map_irq_fn)
        for pin in range(4):
            irq_map += [slot << 11, 0, 0, pin + 1, plic, cfg.pcie_irq + (pin + slot) % 4]
    b.setprop_cells(name, "interrupt-map", *irq_map)
    b.setprop_cells(name, "interrupt-map-mask", 0x1800, 0, 0, 0x7)


def _cells2(value: int) -> Cells:
    return value >> 32, value & 0xFFFFFFFF


def _fdt_reset(b: FdtBuilder, cfg: VirtFdtConfig, phandle: list[int]) -> None:
    test_phandle = phandle[0]
    phandle[0] += 1
    name = f"/soc/test@{cfg.test_base:x}"
    b.add_subnode(name)
    b.setprop(name, "compatible", ("sifive,test1", "sifive,test0", "syscon"))
    b.setprop_cells(name, "reg", 0, cfg.test_base, 0, cfg.test_size)
    b.setprop_cells(name, "phandle", test_phandle)
    for node, compatible, value in (("/reboot", "syscon-reboot", FINISHER_RESET),
                                    ("/poweroff", "syscon-poweroff", FINISHER_PASS)):
        b.add_subnode(node)
        b.setprop(node, "compatible", compatible)
        b.setprop_cells(node, "regmap", test_phandle)
        b.setprop_cells(node, "offset", 0)
        b.setprop_cells(node, "value", value)


def _fdt_uart(b: FdtBuilder, cfg: VirtFdtConfig, plic: int) -> None:
    name = f"/soc/serial@{cfg.uart_base:x}"
    b.add_subnode(name)
    b.setprop(name, "compatible", "ns16550a")
    b.setprop_cells(name, "reg", 0, cfg.uart_base, 0, cfg.uart_size)
    b.setprop_cells(name, "clock-frequency", UART_CLOCK_FREQ)
    b.setprop_cells(name, "interrupt-parent", plic)
    b.setprop_cells(name, "interrupts", cfg.uart_irq)
    b.add_subnode("/chosen")
    b.setprop("/chosen", "stdout-path", name)


def _fdt_rtc(b: FdtBuilder, cfg: VirtFdtConfig, plic: int) -> None:
    name = f"/soc/rtc@{cfg.rtc_base:x}"
    b.add_subnode(name)
    b.setprop(name, "compatible", "google,goldfish-rtc")
    b.setprop_cells(name, "reg", 0, cfg.rtc_base, 0, cfg.rtc_size)
    b.setprop_cells(name, "interrupt-parent", plic)
    b.setprop_cells(name, "interrupts", cfg.rtc_irq)


def _fdt_pmu(b: FdtBuilder) -> None:
    b.add_subnode("/pmu")
    b.setprop("/pmu", "compatible", "riscv,pmu")
    b.setprop_cells("/pmu", "riscv,event-to-mhpmcounters", *PMU_EVENT_TO_MHPMCOUNTERS)


def create_fdt(cfg: VirtFdtConfig, cmdline: str = "") -> FdtBuilder:
    """QEMU 7.2 ``create_fdt`` for one socket, ``aia=none``, without fw-cfg and flash."""
    b = FdtBuilder()
    b.setprop("/", "model", "riscv-virtio,qemu")
    b.setprop("/", "compatible", "riscv-virtio")
    b.setprop_cells("/", "#size-cells", 2)
    b.setprop_cells("/", "#address-cells", 2)

    b.add_subnode("/soc")
    b.setprop("/soc", "ranges")
    b.setprop("/soc", "compatible", "simple-bus")
    b.setprop_cells("/soc", "#size-cells", 2)
    b.setprop_cells("/soc", "#address-cells", 2)

    phandle = [1]
    plic = _fdt_sockets(b, cfg, phandle)
    _fdt_virtio(b, cfg, plic)
    _fdt_pcie(b, cfg, plic)
    _fdt_reset(b, cfg, phandle)
    _fdt_uart(b, cfg, plic)
    _fdt_rtc(b, cfg, plic)
    _fdt_pmu(b)
    if cmdline:
        b.setprop("/chosen", "bootargs", cmdline)
    b.setprop("/chosen", "rng-seed", os.urandom(RNG_SEED_BYTES))
    return b


# --- fix-ups applied to the generated tree or a user's -dtb -----------------------------------

def _parse_dtb(blob: bytes, path: str) -> fdt.FDT:
    try:
        return fdt.parse_dtb(blob)
    except Exception as exc:  # the fdt package raises bare Exceptions on malformed blobs
        raise LoaderError(f"{path}: malformed device tree blob ({exc})") from None


def _ensure_node(tree: fdt.FDT, path: str) -> fdt.Node:
    """The node at ``path``; a missing one is created first among its siblings (libfdt)."""
    if not tree.exist_node(path):
        parent_path, _, name = path.rpartition("/")
        parent = tree.get_node(parent_path or "/")
        parent.append(fdt.Node(name))
        parent.nodes.insert(0, parent.nodes.pop())
    return tree.get_node(path)


def _set_front(node: fdt.Node, prop: fdt.Property) -> None:
    """libfdt semantics: replace in place, or insert a new property first."""
    for i, old in enumerate(node.props):
        if old.name == prop.name:
            node.remove_property(prop.name)
            node.append(prop)
            node.props.insert(i, node.props.pop())
            return
    node.append(prop)
    node.props.insert(0, node.props.pop())


def fixup_chosen(blob: bytes | fdt.FDT, path: str, *, bootargs: str | None,
                 initrd: tuple[int, int] | None) -> bytes:
    """What QEMU's boot code writes into ``/chosen`` of any tree, including a user's ``-dtb``.

    ``bootargs`` (``-append``), ``linux,initrd-start``/``-end`` (32-bit cells, as QEMU 7.2
    writes them), then every ``rng-seed`` gets fresh random bytes (QEMU re-randomizes seeds
    at each reset, ``qemu_fdt_randomize_seeds``).  ``blob``: the tree as a blob, or as a tree
    (the generated one, :meth:`FdtBuilder.to_fdt`), which is changed in place and not parsed
    again; the same blob results either way.
    """
    tree = blob if isinstance(blob, fdt.FDT) else _parse_dtb(blob, path)
    chosen = _ensure_node(tree, "/chosen") if (bootargs or initrd) else None
    if chosen is not None and bootargs:
        _set_front(chosen, fdt.PropStrings("bootargs", bootargs))
    if chosen is not None and initrd is not None:
        _set_front(chosen, fdt.PropWords("linux,initrd-start", initrd[0] & 0xFFFFFFFF))
        _set_front(chosen, fdt.PropWords("linux,initrd-end", initrd[1] & 0xFFFFFFFF))
    _randomize_seeds(tree.root)
    return bytes(tree.to_dtb(version=17))


def _randomize_seeds(node: fdt.Node) -> None:
    for i, prop in enumerate(node.props):
        if prop.name == "rng-seed":
            size = len(_prop_bytes(prop))
            node.remove_property("rng-seed")
            node.append(fdt.PropBytes("rng-seed", data=list(os.urandom(size))))
            node.props.insert(i, node.props.pop())
    for child in node.nodes:
        _randomize_seeds(child)


def _prop_bytes(prop: fdt.Property) -> bytes:
    """The raw value of a property as stored in the blob."""
    if isinstance(prop, fdt.PropWords):
        return b"".join(struct.pack(">I", w) for w in prop.data)
    if isinstance(prop, fdt.PropStrings):
        return b"".join(s.encode() + b"\0" for s in prop.data)
    if isinstance(prop, fdt.PropBytes):
        return bytes(prop.data)
    return b""


def prop_bytes(prop: fdt.Property) -> bytes:
    """Public form of :func:`_prop_bytes`, used by tests that compare trees."""
    return _prop_bytes(prop)
