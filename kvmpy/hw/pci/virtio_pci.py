"""virtio-pci transport, QEMU 7.2's ``virtio-*-pci`` proxies (hw/virtio/virtio-pci.c; virtio
1.2 spec §4.1).

On the virt board's root bus a proxy is *transitional* (QEMU's ``disable-legacy=auto``), laid
out exactly as QEMU's:

- BAR0: the legacy I/O interface (features, queue PFN/size/select/notify, status, ISR, then
  the device config), a power of two covering it;
- BAR1: MSI-X table and pending bits (4 KiB);
- BAR4: the modern interface, 64-bit prefetchable: common config at 0x0000, ISR at 0x1000,
  device config at 0x2000, notifications at 0x3000 (4 bytes per queue, or a page with
  ``page-per-vq=on``);
- vendor capabilities (common, ISR, device, notify, PCI config access) from 0x40, then MSI-X.

Without MSI-X enabled the interrupt is INTx (pin A) at the level of the ISR's queue bit; a
config change sets both ISR bits, as QEMU's ``virtio_notify_config``.  Reading the ISR
clears it.  ``disable-legacy=on`` (the ``-non-transitional`` types) gives the virtio 1.0
identity (device ID 0x1040 + virtio ID, revision 1) and no BAR0.

Behind a PCI Express port (a bus injected with ``pcie_port=True``) the proxy is a PCI Express
endpoint, as QEMU's virtio_pci_realize makes it: ``disable-legacy=auto`` means on, the
configuration space is 4 KiB, and the PCI Express capability (endpoint, with FLR, error
reporting and link control as the ``x-pcie-*`` properties say) and a power management
capability come first, at 0x40 and 0x7c; ``aer=on`` and ``ats=on`` add those extended
capabilities.  ``x-disable-pcie=on`` keeps it a conventional function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

# the virtio device types carried (registered by their modules)
import kvmpy.hw.virtio.blk
import kvmpy.hw.virtio.console
import kvmpy.hw.virtio.net
import kvmpy.hw.virtio.ninep
import kvmpy.hw.virtio.rng  # noqa: F401
from kvmpy import log, qom
from kvmpy.errors import ConfigError
from kvmpy.hw.pci import pcie
from kvmpy.hw.pci.device import (
    PCI_BASE_ADDRESS_MEM_PREFETCH,
    PCI_BASE_ADDRESS_MEM_TYPE_64,
    PCI_BASE_ADDRESS_SPACE_IO,
    PCI_CONFIG_SPACE_SIZE,
    PCI_DEVICE_ID,
    PCI_INTERRUPT_PIN,
    PCI_REVISION_ID,
    PCI_SUBSYSTEM_ID,
    PCI_VENDOR_ID_REDHAT_QUMRANET,
    PciDevice,
)
from kvmpy.hw.pci.msix import MSIX_CAP_LENGTH, MSIX_MAX_VECTORS, Msix
from kvmpy.hw.virtio.device import VIRTIO_F_VERSION_1, VirtioDevice
from kvmpy.hw.virtio.transport import (
    VIRTIO_INT_CONFIG,
    VIRTIO_INT_VRING,
    VIRTIO_QUEUE_MAX,
    VirtioTransport,
    VirtioTransportState,
)
from kvmpy.hw.virtio.virtqueue import (
    QueueState,
    Virtqueue,
    VirtqueueError,
    legacy_ring_addresses,
)
from kvmpy.hw.virtio.vmstate import U16, Applier, StateReader
from kvmpy.memory import GuestRAM
from kvmpy.qom import Property, register_type

VIRTIO_F_BAD_FEATURE = 30
VIRTIO_NO_VECTOR = 0xFFFF
VIRTIO_PCI_QUEUE_ADDR_SHIFT = 12
PCI_DEVICE_ID_VIRTIO_10_BASE = 0x1040

# Vendor capability types (virtio spec §4.1.4).
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5
PCI_CAP_ID_VNDR = 0x09

PCI_CAP_ID_PM = 0x01
PCI_PM_SIZEOF = 8
PCI_PM_PMC = 2
PCI_PM_CTRL = 4
PCI_PM_CTRL_STATE_MASK = 0x0003

LEGACY_BAR, MSIX_BAR, MODERN_BAR = 0, 1, 4
COMMON_OFFSET, ISR_OFFSET, DEVICE_OFFSET, NOTIFY_OFFSET = 0x0000, 0x1000, 0x2000, 0x3000
REGION_SIZE = 0x1000

# Legacy I/O registers (virtio 0.9.5 §2.1 / QEMU's VIRTIO_PCI_*).
L_HOST_FEATURES, L_GUEST_FEATURES, L_QUEUE_PFN, L_QUEUE_NUM = 0, 4, 8, 12
L_QUEUE_SEL, L_QUEUE_NOTIFY, L_STATUS, L_ISR = 14, 16, 18, 19
L_MSI_CONFIG_VECTOR, L_MSI_QUEUE_VECTOR = 20, 22

# Common configuration structure (virtio spec §4.1.4.3).
C_DFSELECT, C_DF, C_GFSELECT, C_GF = 0x00, 0x04, 0x08, 0x0C
C_MSIX, C_NUMQ, C_STATUS, C_CFGGENERATION = 0x10, 0x12, 0x14, 0x15
C_Q_SELECT, C_Q_SIZE, C_Q_MSIX, C_Q_ENABLE, C_Q_NOFF = 0x16, 0x18, 0x1A, 0x1C, 0x1E
C_Q_DESCLO, C_Q_DESCHI, C_Q_AVAILLO, C_Q_AVAILHI = 0x20, 0x24, 0x28, 0x2C
C_Q_USEDLO, C_Q_USEDHI = 0x30, 0x34

_LO = 0xFFFFFFFF


def _pow2ceil(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


class _DisableLegacy(Property[str]):
    """``disable-legacy=on|off|auto`` (auto: off on the root bus, on behind a PCIe port)."""

    def parse(self, text: str) -> Any:
        if text not in ("on", "off", "auto"):
            raise ConfigError(f"Parameter 'disable-legacy' does not accept value '{text}'")
        return text


@dataclass
class VirtioPciState(VirtioTransportState):
    config_vector: int = VIRTIO_NO_VECTOR
    queue_vectors: list[int] = field(default_factory=list)
    queue_enabled: list[bool] = field(default_factory=list)
    via_legacy: bool = False
    """The driver last used the legacy interface (features are offered as legacy)."""


class _Window:
    """A BAR's region: offsets go to one of the proxy's handlers."""

    def __init__(self, sizes: tuple[int, ...], read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        self.access_sizes = sizes
        self.mmio_read = read
        self.mmio_write = write


@register_type("virtio-pci", "pci-device", abstract=True, description="virtio PCI transport")
class VirtioPciProxy(VirtioTransport, PciDevice):
    """Base of ``virtio-*-pci``: a PCI function carrying one virtio device.

    Subclasses (made by :func:`register_virtio_pci`) name the virtio device type they carry
    and its PCI identity; ``__init__`` takes the properties of both.
    """

    virtio_type: ClassVar[str] = ""
    legacy_device_id: ClassVar[int] = 0
    default_vectors: ClassVar[int] = 2
    state: VirtioPciState
    vendor_id = PCI_VENDOR_ID_REDHAT_QUMRANET

    disable_legacy = _DisableLegacy(str, "auto", "on/off/auto")
    disable_modern = Property(bool, False, "")
    vectors = Property(int, -1, "")
    page_per_vq = Property(bool, False, "on/off")
    ioeventfd = Property(bool, True, "on/off (kvmpy notifies in the VMM either way)")
    x_disable_pcie = Property(bool, False, "on/off")
    x_pcie_deverr_init = Property(bool, True, "on/off")
    x_pcie_lnkctl_init = Property(bool, True, "on/off")
    x_pcie_pm_init = Property(bool, True, "on/off")
    x_pcie_flr_init = Property(bool, True, "on/off")
    aer = Property(bool, False, "on/off")
    ats = Property(bool, False, "on/off")
    x_ats_page_aligned = Property(bool, True, "on/off")

    def __init__(self, ram: GuestRAM | None = None,
                 deliver_msi: Callable[[int, int], None] | None = None,
                 device: VirtioDevice | None = None, pcie_port: bool = False,
                 **props: Any) -> None:
        """``props`` are the proxy's own properties and those of the device it carries,
        which it creates; or ``device`` is that device, already made.  ``pcie_port``: the
        bus is the secondary bus of a PCI Express port."""
        own, inner = self._split_props(props)
        self.set_properties(own)
        if device is None:
            device = self._inner_class()(**inner)
        self.ram = ram
        self.device = None
        self.vqs: list[Virtqueue] = []
        self.state = VirtioPciState()
        self.name = self.type_name
        self.legacy_enabled = self._legacy_mode(pcie_port)
        self.modern_enabled = not self.disable_modern
        if not self.legacy_enabled and not self.modern_enabled:
            raise ConfigError("device cannot work as neither modern nor legacy mode is enabled")
        express = pcie_port and self.modern_enabled and not self.x_disable_pcie
        PciDevice.__init__(self, express)
        self.pm_cap = self._add_pcie_capabilities() if express else 0
        nvectors = self._msix_vectors()
        self._build_config(device, msix=bool(nvectors))
        self.msix: Msix | None = None
        if nvectors:
            self.msix = Msix(self, nvectors, MSIX_BAR, deliver_msi or (lambda a, d: None))
            self.register_bar(MSIX_BAR, self.msix.bar_size, 0, self.msix)
        self.plug(device)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def _inner_class(cls) -> type[VirtioDevice]:
        info = qom.type_info(cls.virtio_type)
        assert info is not None
        inner: type[VirtioDevice] = info.cls
        return inner

    @classmethod
    def _split_props(cls, props: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        own_attrs = {prop.attr for klass in VirtioPciProxy.__mro__
                     for prop in vars(klass).values() if isinstance(prop, Property)}
        own = {k: v for k, v in props.items() if k in own_attrs}
        return own, {k: v for k, v in props.items() if k not in own_attrs}

    @classmethod
    def backends(cls, system: Any, props: Mapping[str, str]) -> dict[str, Any]:
        return cls._inner_class().backends(system, props)

    def _msix_vectors(self) -> int:
        """QEMU passes ``vectors`` to msix_init as a 16-bit count; out of range, it warns
        and the function has no MSI-X."""
        if self.vectors < 0:
            return self.default_vectors
        vectors = self.vectors & 0xFFFF
        if vectors > MSIX_MAX_VECTORS:
            from kvmpy.log import warn_report

            warn_report(f"unable to init msix vectors to {self.vectors}")
            return 0
        return vectors

    def _legacy_mode(self, pcie_port: bool) -> bool:
        """QEMU's virtio_pci_realize: ``auto`` is legacy on, except behind a PCIe port."""
        if self.disable_legacy == "auto":
            return not pcie_port
        return self.disable_legacy == "off"

    def _add_pcie_capabilities(self) -> int:
        """virtio_pci_realize's PCIe endpoint: the PCI Express and power management
        capabilities, the ``x-pcie-*`` extras; returns the power management offset."""
        pcie.endpoint_cap_init(self, on_root_bus=False)
        pm = self.add_capability(PCI_CAP_ID_PM, PCI_PM_SIZEOF)
        self.set_config(pm + PCI_PM_PMC, 2, 0x3)  # PCI PM Interface spec 1.2
        extended = PCI_CONFIG_SPACE_SIZE  # the extended capabilities start at 0x100
        if self.aer:
            pcie.aer_init(self, extended, log_max=0)  # an endpoint keeps no error log
            extended += pcie.PCI_ERR_SIZEOF
        if self.x_pcie_deverr_init:
            pcie.deverr_init(self)
        if self.x_pcie_lnkctl_init:
            pcie.lnkctl_init(self)
        if self.x_pcie_pm_init:
            self.wmask[pm + PCI_PM_CTRL] = PCI_PM_CTRL_STATE_MASK
        if self.ats:
            pcie.ats_init(self, extended, self.x_ats_page_aligned)
        if self.x_pcie_flr_init:
            pcie.flr_init(self)
        return pm

    def _build_config(self, device: VirtioDevice, msix: bool) -> None:
        if self.legacy_enabled:
            self.set_config(PCI_DEVICE_ID, 2, self.legacy_device_id)
            self.set_config(PCI_SUBSYSTEM_ID, 2, device.device_id)
        else:
            self.set_config(PCI_DEVICE_ID, 2, PCI_DEVICE_ID_VIRTIO_10_BASE + device.device_id)
            self.set_config(PCI_REVISION_ID, 1, 1)
        self.config[PCI_INTERRUPT_PIN] = 1
        mult = self._notify_multiplier
        if self.modern_enabled:
            for cfg_type, offset, length in (
                    (VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, REGION_SIZE),
                    (VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, REGION_SIZE),
                    (VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_OFFSET, REGION_SIZE),
                    (VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, mult * VIRTIO_QUEUE_MAX)):
                self._add_vendor_cap(cfg_type, MODERN_BAR, offset, length,
                                     mult if cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG else None)
            self.cfg_cap = self._add_vendor_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0, 0)
            for off, size in ((4, 1), (8, 4), (12, 4), (16, 4)):  # bar, offset, length, data
                self.wmask[self.cfg_cap + off:self.cfg_cap + off + size] = b"\xff" * size
            bar_size = _pow2ceil(NOTIFY_OFFSET + mult * VIRTIO_QUEUE_MAX)
            self.register_bar(MODERN_BAR, bar_size, PCI_BASE_ADDRESS_MEM_PREFETCH |
                              PCI_BASE_ADDRESS_MEM_TYPE_64,
                              _Window((1, 2, 4), self._modern_read, self._modern_write))
        if self.legacy_enabled:
            # The registers, the MSI-X vector registers when MSI-X is there, the config.
            registers = L_MSI_QUEUE_VECTOR + 2 if msix else L_MSI_CONFIG_VECTOR
            size = _pow2ceil(registers + len(device.config()))
            self.register_bar(LEGACY_BAR, max(size, 4), PCI_BASE_ADDRESS_SPACE_IO,
                              _Window((1, 2, 4), self._legacy_read, self._legacy_write))

    @property
    def _notify_multiplier(self) -> int:
        return 0x1000 if self.page_per_vq else 4

    def _add_vendor_cap(self, cfg_type: int, bar: int, offset: int, length: int,
                        multiplier: int | None) -> int:
        size = 16 if multiplier is None else 20
        cap = self.add_capability(PCI_CAP_ID_VNDR, size)
        self.set_config(cap + 2, 1, size)
        self.set_config(cap + 3, 1, cfg_type)
        self.set_config(cap + 4, 1, bar)
        self.set_config(cap + 8, 4, offset)
        self.set_config(cap + 12, 4, length)
        if multiplier is not None and cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG:
            self.set_config(cap + 16, 4, multiplier)
        return cap

    # -- the transport contract -----------------------------------------------------------------

    @property
    def legacy(self) -> bool:
        return self.state.via_legacy

    def _reset_device(self) -> None:
        n = len(self.device.queue_sizes) if self.device is not None else 0
        self.state.config_vector = VIRTIO_NO_VECTOR
        self.state.queue_vectors = [VIRTIO_NO_VECTOR] * n
        self.state.queue_enabled = [False] * n
        super()._reset_device()

    def host_features(self) -> int:
        features = super().host_features()
        if self.legacy:
            features |= 1 << VIRTIO_F_BAD_FEATURE
        elif not self.modern_enabled:
            features &= ~(1 << VIRTIO_F_VERSION_1)
        return features

    def _update_irq(self) -> None:
        if self.msix is None or not self.msix.enabled:
            self.set_irq(bool(self.state.isr & VIRTIO_INT_VRING))

    def _device_notify(self, index: int) -> None:
        vq = self.vqs[index]
        try:
            wanted = vq.should_notify()
        except VirtqueueError:  # a broken ring: tell the driver anyway
            wanted = True
        if not wanted:
            return
        self.state.isr |= VIRTIO_INT_VRING
        if self.msix is not None and self.msix.enabled:
            self.msix.notify(self.state.queue_vectors[index])
        else:
            self._update_irq()

    def config_changed(self) -> None:
        s = self.state
        s.config_generation = (s.config_generation + 1) & 0xFF
        s.isr |= VIRTIO_INT_VRING | VIRTIO_INT_CONFIG
        if self.msix is not None and self.msix.enabled:
            self.msix.notify(s.config_vector)
        else:
            self._update_irq()

    def _queue_notify(self, index: int) -> None:
        if self.bus_master:  # no DMA without bus mastering (QEMU's virtio_set_disabled)
            super()._queue_notify(index)

    def _read_isr(self) -> int:
        value = self.state.isr
        self.state.isr = 0
        self.set_irq(False)
        return value

    def _set_vector(self, value: int) -> int:
        nvectors = self.msix.vectors if self.msix is not None else 0
        return value if value < nvectors else VIRTIO_NO_VECTOR

    # -- legacy I/O BAR -------------------------------------------------------------------------

    @property
    def _legacy_config_offset(self) -> int:
        return 24 if self.msix is not None and self.msix.enabled else 20

    def _legacy_read(self, offset: int, size: int) -> int:
        if self.device is None:
            return (1 << (8 * size)) - 1
        self.state.via_legacy = True
        config = self._legacy_config_offset
        if offset >= config:
            return self._config_read(offset - config, size)
        s = self.state
        qs = self._selected()
        if offset == L_HOST_FEATURES:
            return self.host_features() & _LO
        if offset == L_GUEST_FEATURES:
            return self.device.guest_features & _LO
        if offset == L_QUEUE_PFN:
            return (qs.desc >> VIRTIO_PCI_QUEUE_ADDR_SHIFT) if qs is not None else 0
        if offset == L_QUEUE_NUM:
            return qs.num if qs is not None else 0
        if offset == L_QUEUE_SEL:
            return s.queue_sel
        if offset == L_STATUS:
            return s.status
        if offset == L_ISR:
            return self._read_isr()
        if offset == L_MSI_CONFIG_VECTOR:
            return s.config_vector
        if offset == L_MSI_QUEUE_VECTOR:
            return s.queue_vectors[s.queue_sel] if qs is not None else VIRTIO_NO_VECTOR
        return (1 << (8 * size)) - 1

    def _legacy_write(self, offset: int, size: int, value: int) -> None:
        if self.device is None:
            return
        self.state.via_legacy = True
        config = self._legacy_config_offset
        if offset >= config:
            self._config_write(offset - config, size, value)
            return
        s = self.state
        qs = self._selected()
        if offset == L_GUEST_FEATURES:
            if value & (1 << VIRTIO_F_BAD_FEATURE):
                value = 0  # "the guest does not negotiate properly: assume nothing"
            self._set_features(value)
        elif offset == L_QUEUE_PFN:
            if value == 0:
                self._reset_transport_keep_mode()
            elif qs is not None:
                qs.desc = value << VIRTIO_PCI_QUEUE_ADDR_SHIFT
                qs.desc, qs.avail, qs.used = _legacy_rings(qs)
                qs.ready = True
        elif offset == L_QUEUE_SEL:
            self._select_queue(value)
        elif offset == L_QUEUE_NOTIFY:
            self._queue_notify(value)
        elif offset == L_STATUS:
            self._status_write(value & 0xFF)
        elif offset == L_MSI_CONFIG_VECTOR:
            s.config_vector = self._set_vector(value)
        elif offset == L_MSI_QUEUE_VECTOR:
            if qs is not None:
                s.queue_vectors[s.queue_sel] = self._set_vector(value)
        else:
            log.guest_error(f"{self.name}: write of 0x{value:x} to legacy register "
                            f"0x{offset:x}, which is read-only or does not exist")

    def _status_write(self, value: int) -> None:
        self._write_status(value)
        if self.state.status == 0:
            self._reset_transport_keep_mode()

    def _reset_transport_keep_mode(self) -> None:
        """QEMU's virtio_pci_reset from the guest: the device and the proxy's queue
        registers; which interface the driver speaks stays."""
        via_legacy = self.state.via_legacy
        self._reset_transport()
        self.state.via_legacy = via_legacy

    # -- modern memory BAR ----------------------------------------------------------------------

    def _modern_read(self, offset: int, size: int) -> int:
        if self.device is None:
            return (1 << (8 * size)) - 1
        region, inner = divmod(offset, REGION_SIZE)
        if offset >= NOTIFY_OFFSET:
            return 0
        if region == COMMON_OFFSET // REGION_SIZE:
            self.state.via_legacy = False
            return self._common_read(inner) & ((1 << (8 * size)) - 1)
        if region == ISR_OFFSET // REGION_SIZE:
            return self._read_isr()
        return self._config_read(inner, size)

    def _modern_write(self, offset: int, size: int, value: int) -> None:
        if self.device is None:
            return
        if offset >= NOTIFY_OFFSET:
            self._queue_notify((offset - NOTIFY_OFFSET) // self._notify_multiplier)
            return
        region, inner = divmod(offset, REGION_SIZE)
        if region == COMMON_OFFSET // REGION_SIZE:
            self.state.via_legacy = False
            self._common_write(inner, value)
        elif region == DEVICE_OFFSET // REGION_SIZE:
            self._config_write(inner, size, value)
        # ISR writes are ignored (QEMU)

    def _common_read(self, offset: int) -> int:
        s = self.state
        qs = self._selected()
        sel = s.queue_sel
        if offset == C_DFSELECT:
            return s.host_features_sel
        if offset == C_DF:
            return self._host_features_word()
        if offset == C_GFSELECT:
            return s.guest_features_sel
        if offset == C_GF:
            return s.guest_features[s.guest_features_sel] if s.guest_features_sel < 2 else 0
        if offset == C_MSIX:
            return s.config_vector
        if offset == C_NUMQ:
            return len(s.queues)
        if offset == C_STATUS:
            return s.status
        if offset == C_CFGGENERATION:
            return s.config_generation & 0xFF
        if offset == C_Q_SELECT:
            return sel
        if qs is None:
            return VIRTIO_NO_VECTOR if offset == C_Q_MSIX else 0
        if offset == C_Q_SIZE:
            return qs.num
        if offset == C_Q_MSIX:
            return s.queue_vectors[sel]
        if offset == C_Q_ENABLE:
            return int(s.queue_enabled[sel])
        if offset == C_Q_NOFF:
            return sel
        if C_Q_DESCLO <= offset <= C_Q_USEDHI and offset % 4 == 0:
            attr = ("desc", "avail", "used")[(offset - C_Q_DESCLO) // 8]
            return int(getattr(qs, attr) >> (32 if offset & 4 else 0)) & _LO
        return 0

    def _common_write(self, offset: int, value: int) -> None:
        s = self.state
        qs = self._selected()
        if offset == C_DFSELECT:
            s.host_features_sel = value
        elif offset == C_GFSELECT:
            s.guest_features_sel = value
        elif offset == C_GF:
            if s.guest_features_sel < 2:
                s.guest_features[s.guest_features_sel] = value
        elif offset == C_MSIX:
            s.config_vector = self._set_vector(value)
        elif offset == C_STATUS:
            self._status_write(value & 0xFF)
        elif offset == C_Q_SELECT:
            self._select_queue(value)
        elif qs is None:
            return
        elif offset == C_Q_SIZE:
            self._set_queue_num(qs, value)
        elif offset == C_Q_MSIX:
            s.queue_vectors[s.queue_sel] = self._set_vector(value)
        elif offset == C_Q_ENABLE:
            if value == 1:
                qs.ready = True
                s.queue_enabled[s.queue_sel] = True
            else:
                self._virtio_error(f"wrong value for queue_enable {value:x}")
        elif C_Q_DESCLO <= offset <= C_Q_USEDHI and offset % 4 == 0:
            attr = ("desc", "avail", "used")[(offset - C_Q_DESCLO) // 8]
            self._write_queue_address(qs, attr, bool(offset & 4), value)

    # -- configuration space hooks --------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        if self.modern_enabled and self._touches_cfg_data(offset, size):
            self._cfg_cap_access(write=False)
        return super().config_read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        master = self.bus_master
        super().config_write(offset, size, value)
        if self.x_pcie_flr_init and self.exp_cap and pcie.flr_requested(self):
            self.reset()  # function level reset: the bit reads 0 again afterwards
            pcie.flr_done(self)
            return
        if master and not self.bus_master and self.device is not None:
            # QEMU: without bus mastering the driver is no longer OK.
            self.state.status &= ~0x4
        if self.msix is not None and \
                offset < self.msix.cap + MSIX_CAP_LENGTH and offset + size > self.msix.cap:
            was_enabled = self.msix.enabled
            self.msix.control_written()
            if was_enabled != self.msix.enabled:
                self._update_irq()
        if self.modern_enabled and self._touches_cfg_data(offset, size):
            self._cfg_cap_access(write=True)

    def _touches_cfg_data(self, offset: int, size: int) -> bool:
        data = self.cfg_cap + 16
        return offset < data + 4 and offset + size > data

    def _cfg_cap_access(self, write: bool) -> None:
        """The VIRTIO_PCI_CAP_PCI_CFG window: an access of ``length`` (1, 2, 4) bytes at
        ``offset`` of the BAR named by the capability, through its data word."""
        cap = self.cfg_cap
        bar = self.get_config(cap + 4, 1)
        offset = self.get_config(cap + 8, 4)
        length = self.get_config(cap + 12, 4)
        if length not in (1, 2, 4) or bar != MODERN_BAR:
            return
        modern = self.bars[MODERN_BAR]
        if offset + length > modern.size:
            return
        if write:
            value = self.get_config(cap + 16, length)
            self._modern_write(offset, length, value)
        else:
            self.set_config(cap + 16, length, self._modern_read(offset, length))

    # -- reset and state ------------------------------------------------------------------------

    def reset(self) -> None:
        PciDevice.reset(self)
        if self.msix is not None:
            self.msix.reset()
        self._reset_transport()
        if self.exp_cap:  # virtio_pci_bus_reset
            pcie.deverr_reset(self)
            pcie.lnkctl_reset(self)
            self.set_config(self.pm_cap + PCI_PM_CTRL, 2, 0)

    def get_state(self) -> dict[str, Any]:
        state = dataclasses.asdict(self.state)
        state["pci"] = PciDevice.get_state(self)
        state["msix"] = self.msix.get_state() if self.msix is not None else None
        state["device"] = self._device_state()
        return state

    def prepare_state(self, state: dict[str, Any]) -> Applier:
        """Check ``state`` completely: the transport's registers and queues, the vectors
        each queue signals, the configuration space, the MSI-X table, the device."""
        r = StateReader(state, self.describe())
        fields = self._read_transport_state(r)
        nqueues = len(fields["queues"])
        nvectors = self.msix.vectors if self.msix is not None else 0

        def vector(value: int, where: str) -> int:
            if value != VIRTIO_NO_VECTOR and value >= nvectors:
                raise r.fail(where, f"vector {value}, the function has {nvectors}")
            return value

        fields["config_vector"] = vector(r.integer("config_vector", 0, U16), "config_vector")
        fields["queue_vectors"] = [vector(v, f"queue_vectors[{i}]") for i, v in enumerate(
            r.ints("queue_vectors", nqueues, 0, U16, length=nqueues))]
        fields["queue_enabled"] = r.bools("queue_enabled", nqueues, length=nqueues)
        fields["via_legacy"] = r.flag("via_legacy")
        if fields["via_legacy"] and not self.legacy_enabled:
            raise r.fail("via_legacy", "the legacy interface is disabled on this function")
        msix = r.get("msix")
        if (msix is None) != (self.msix is None):
            raise r.fail("msix", "MSI-X state does not match the function's MSI-X")
        apply_msix = self.msix.prepare_state(r.reader("msix")) if self.msix is not None \
            else None
        apply_pci = self.prepare_pci_state(r.reader("pci"))
        apply_device = self._prepare_device_state(r)

        def apply() -> None:
            self.state = VirtioPciState(**fields)
            self._apply_queues(self.state.queues)
            if apply_msix is not None:
                apply_msix()
            apply_pci()
            if apply_device is not None and self.device is not None:
                apply_device()
                self.device.broken = self.state.broken
        return apply

    def set_state(self, state: dict[str, Any]) -> None:
        self.prepare_state(state)()


def _legacy_rings(qs: QueueState) -> tuple[int, int, int]:
    return legacy_ring_addresses(qs.desc, qs.num, 4096)


# -- the virtio-*-pci types --------------------------------------------------------------------

@dataclass(frozen=True)
class VirtioPciModel:
    """One ``virtio-X-pci`` family: the virtio device type it carries and its PCI identity."""

    name: str
    virtio_type: str
    device_id: int
    class_id: int
    vectors: int = 2
    alias: str = ""


def register_virtio_pci(model: VirtioPciModel) -> None:
    """Register ``NAME``, ``NAME-transitional`` and ``NAME-non-transitional`` (QEMU's
    ``virtio_pci_types_register``), with the carried device's properties as their own."""
    inner = qom.type_info(model.virtio_type)
    if inner is None:
        return
    inner_props = {prop.attr: Property(prop.kind, prop.default, prop.description,
                                       prop.choices, prop.name)
                   for prop in inner.properties.values()}
    for suffix, forced in (("", None), ("-transitional", "off"), ("-non-transitional", "on")):
        name = model.name + suffix
        namespace: dict[str, Any] = {
            **inner_props,
            "virtio_type": model.virtio_type, "legacy_device_id": model.device_id,
            "class_id": model.class_id, "default_vectors": model.vectors,
            "category": getattr(inner.cls, "category", "Misc devices"),
            "user_creatable": True,
            "__module__": __name__,
        }
        if forced is not None:  # the default the type sets; the user may still override
            namespace["disable_legacy"] = _DisableLegacy(str, forced, "on/off/auto",
                                                         name="disable-legacy")
        cls = type(name.replace("-", "_"), (VirtioPciProxy,), namespace)
        register_type(name, "virtio-pci", description=f"{model.name}")(cls)
    if model.alias:
        qom.register_alias(model.alias, model.name)


VIRTIO_PCI_MODELS = (
    VirtioPciModel("virtio-blk-pci", "virtio-blk-device", 0x1001, 0x0100, alias="virtio-blk"),
    VirtioPciModel("virtio-serial-pci", "virtio-serial-device", 0x1003, 0x0780,
                   alias="virtio-serial"),
    VirtioPciModel("virtio-rng-pci", "virtio-rng-device", 0x1005, 0x00FF, alias="virtio-rng"),
    VirtioPciModel("virtio-net-pci", "virtio-net-device", 0x1000, 0x0200, vectors=4,
                   alias="virtio-net"),
    VirtioPciModel("virtio-9p-pci", "virtio-9p-device", 0x1009, 0x0002, alias="virtio-9p"),
    VirtioPciModel("virtio-balloon-pci", "virtio-balloon-device", 0x1002, 0x00FF,
                   alias="virtio-balloon"),
)
"""QEMU 7.2's IDs: legacy device ID, class (SCSI storage, communication other, other)."""

for _model in VIRTIO_PCI_MODELS:
    register_virtio_pci(_model)
