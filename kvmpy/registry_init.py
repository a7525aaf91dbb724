"""The one place that knows every module registering QOM types.

``-M help``, ``-device help``, ``-accel help``, ``-chardev help`` and ``-cpu help`` are answered
from the registry, which only knows the types whose modules were imported.  Each entry of
:data:`TYPE_MODULES` is imported when it exists in this installation (a feature not built yet is
simply absent).

Importing every device, back-end and accelerator costs tens of milliseconds of start-up that a
VM using a few of them should not pay, so :func:`load_types` makes the registry complete *on
demand*: :data:`DECLARED_TYPES` says which names (types, aliases, and the parents their types
descend from) each module registers, and the registry asks :func:`load_for` before it answers
about a name, which imports just the modules declaring it.  A name no module declares imports
them all (so an unknown name is answered exactly as with every module imported), as does a
module missing from :data:`DECLARED_TYPES`.  ``tests/test_registry_lazy.py`` checks the
declarations against what the modules really register.
"""

from __future__ import annotations

import importlib
import importlib.util

from kvmpy import qom

TYPE_MODULES = (
    "kvmpy.chardev.base",
    "kvmpy.chardev.file",
    "kvmpy.chardev.mux",
    "kvmpy.chardev.null",
    "kvmpy.chardev.pty",
    "kvmpy.chardev.ringbuf",
    "kvmpy.chardev.socket",
    "kvmpy.chardev.stdio",
    "kvmpy.accel.tcg",
    "kvmpy.accel.kvm",
    "kvmpy.hw.char",
    "kvmpy.hw.intc",
    "kvmpy.hw.misc.htif",
    "kvmpy.hw.misc.sifive_test",
    "kvmpy.hw.rtc",
    "kvmpy.hw.virtio.device",
    "kvmpy.hw.virtio.blk",
    "kvmpy.hw.virtio.console",
    "kvmpy.hw.virtio.mmio",
    "kvmpy.hw.virtio.net",
    "kvmpy.hw.virtio.ninep",
    "kvmpy.hw.virtio.rng",
    "kvmpy.hw.virtio.balloon",
    "kvmpy.hw.pci.device",
    "kvmpy.hw.pci.bridge",
    "kvmpy.hw.pci.gpex",
    "kvmpy.hw.pci.root_port",
    "kvmpy.hw.pci.virtio_pci",
    "kvmpy.net.base",
    "kvmpy.net.stream",
    "kvmpy.net.tap",
    "kvmpy.net.user",
    "kvmpy.hw.null_machine",
    "kvmpy.hw.riscv.virt",
    "kvmpy.hw.riscv.spike",
    "kvmpy.hw.riscv.cpu",
)

_DEVICE = ("object", "device", "sys-bus-device")
_VIRTIO = ("object", "device", "virtio-device")
_PCI = ("object", "device", "pci-device")
_VIRTIO_PCI = tuple(f"virtio-{name}{suffix}" for name in ("9p", "balloon", "blk", "net", "rng",
                                                                "serial")
                    for suffix in ("", "-pci", "-pci-non-transitional", "-pci-transitional"))

DECLARED_TYPES: dict[str, tuple[str, ...]] = {
    "kvmpy.chardev.base": ("object", "chardev"),
    "kvmpy.chardev.file": ("object", "chardev", "chardev-file"),
    "kvmpy.chardev.mux": ("object", "chardev", "chardev-mux"),
    "kvmpy.chardev.null": ("object", "chardev", "chardev-null", "chardev-vc"),
    "kvmpy.chardev.pty": ("object", "chardev", "chardev-pty"),
    "kvmpy.chardev.ringbuf": ("object", "chardev", "chardev-memory", "chardev-ringbuf"),
    "kvmpy.chardev.socket": ("object", "chardev", "chardev-socket"),
    "kvmpy.chardev.stdio": ("object", "chardev", "chardev-stdio"),
    "kvmpy.accel.tcg": ("object", "accel", "tcg-accel"),
    "kvmpy.accel.kvm": ("object", "accel", "kvm-accel"),
    "kvmpy.hw.char": (*_DEVICE, "serial-mm"),
    "kvmpy.hw.intc": (*_DEVICE, "riscv.aclint.mtimer", "riscv.aclint.swi", "riscv.sifive.plic"),
    "kvmpy.hw.misc.htif": (*_DEVICE, "riscv.htif.uart"),
    "kvmpy.hw.misc.sifive_test": (*_DEVICE, "riscv.sifive.test"),
    "kvmpy.hw.rtc": (*_DEVICE, "goldfish_rtc"),
    "kvmpy.hw.virtio.device": _VIRTIO,
    "kvmpy.hw.virtio.blk": (*_VIRTIO, "virtio-blk-device"),
    "kvmpy.hw.virtio.console": (*_VIRTIO, "virtconsole", "virtio-serial-device",
                                "virtserialport"),
    "kvmpy.hw.virtio.mmio": (*_DEVICE, "virtio-mmio"),
    "kvmpy.hw.virtio.net": (*_VIRTIO, "virtio-net-device"),
    "kvmpy.hw.virtio.ninep": (*_VIRTIO, "virtio-9p-device"),
    "kvmpy.hw.virtio.rng": (*_VIRTIO, "virtio-rng-device"),
    "kvmpy.hw.virtio.balloon": (*_VIRTIO, "virtio-balloon-device"),
    "kvmpy.hw.pci.device": _PCI,
    "kvmpy.hw.pci.bridge": (*_PCI, "base-pci-bridge"),
    "kvmpy.hw.pci.gpex": (*_PCI, "gpex-root"),
    "kvmpy.hw.pci.root_port": (*_PCI, "base-pci-bridge", "pcie-root-port"),
    "kvmpy.hw.pci.virtio_pci": (*_PCI, "virtio-pci", *_VIRTIO_PCI),
    "kvmpy.net.base": ("object", "netdev"),
    "kvmpy.net.stream": ("object", "netdev", "netdev-dgram", "netdev-socket", "netdev-stream"),
    "kvmpy.net.tap": ("object", "netdev", "netdev-tap"),
    "kvmpy.net.user": ("object", "netdev", "netdev-user"),
    "kvmpy.hw.null_machine": ("object", "machine", "none-machine"),
    "kvmpy.hw.riscv.virt": ("object", "machine", "virt-machine"),
    "kvmpy.hw.riscv.spike": ("object", "machine", "spike-machine"),
}
"""Module -> the names it registers: its types and aliases (and the types they stand for),
and every parent of its types.  Listing parents lets ``object_class_get_list("machine")``
import the machine modules only."""

_loaded = False
_answered: set[str] = set()


def _exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _import(module: str) -> None:
    if _exists(module):
        importlib.import_module(module)


def load_all_types() -> None:
    """Import every type module that exists (idempotent)."""
    global _loaded
    if _loaded:
        return
    for name in TYPE_MODULES:
        _import(name)
    _loaded = True


def load_for(name: str) -> None:
    """Import the modules that register ``name`` (a type, an alias or a parent of theirs);
    all of them when no module declares it.  The registry's loader (idempotent)."""
    if _loaded or name in _answered:
        return
    modules = [m for m in TYPE_MODULES if name in DECLARED_TYPES.get(m, (name,))]
    if not any(m in DECLARED_TYPES for m in modules):
        load_all_types()
        return
    for module in modules:
        _import(module)
    _answered.add(name)


def load_types() -> None:
    """Make the registry answer as if every type module were imported: each lookup imports
    the modules it needs (:func:`load_for`).  Idempotent."""
    qom.set_type_loader(load_for)
