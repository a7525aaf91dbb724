"""virtio-mmio transport, QEMU's ``virtio-mmio`` (hw/virtio/virtio-mmio.c; virtio spec §4.2).

32-bit registers in a 0x200-byte window, device config space from 0x100 (1/2/4-byte accesses).
``force-legacy`` (QEMU 7.2's default, and what the virt board uses) presents Version 1: queues
are placed with GuestPageSize/QueueAlign/QueuePFN and only feature bits 0..31 exist.  With
``force-legacy=off`` it is Version 2: 64-bit features and QueueDesc/Driver/Device/Ready.

An empty transport reads MagicValue, Version and VendorID and zero elsewhere (DeviceID 0: no
driver binds) and ignores writes, as QEMU's.  The interrupt line is ``InterruptStatus != 0``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy import log
from kvmpy.hw.core import Device, SysBusDevice
from kvmpy.hw.irq import IrqLine, unconnected_irq
from kvmpy.hw.qdev import Bus, create_devices
from kvmpy.hw.virtio.device import VirtioDevice
from kvmpy.hw.virtio.transport import (
    VIRTIO_INT_CONFIG,
    VIRTIO_INT_VRING,
    VirtioTransport,
    VirtioTransportState,
)
from kvmpy.hw.virtio.virtqueue import (
    VIRTQUEUE_MAX_SIZE,
    QueueState,
    Virtqueue,
    legacy_ring_addresses,
)
from kvmpy.hw.virtio.vmstate import Applier, StateReader
from kvmpy.memory import GuestRAM
from kvmpy.qom import Property, register_type

if TYPE_CHECKING:
    from collections.abc import Sequence

MAGIC = 0x74726976  # "virt"
VENDOR = 0x554D4551  # "QEMU"

REG_MAGIC = 0x000
REG_VERSION = 0x004
REG_DEVICE_ID = 0x008
REG_VENDOR_ID = 0x00C
REG_DEVICE_FEATURES = 0x010
REG_DEVICE_FEATURES_SEL = 0x014
REG_DRIVER_FEATURES = 0x020
REG_DRIVER_FEATURES_SEL = 0x024
REG_GUEST_PAGE_SIZE = 0x028  # legacy
REG_QUEUE_SEL = 0x030
REG_QUEUE_NUM_MAX = 0x034
REG_QUEUE_NUM = 0x038
REG_QUEUE_ALIGN = 0x03C  # legacy
REG_QUEUE_PFN = 0x040  # legacy
REG_QUEUE_READY = 0x044  # modern
REG_QUEUE_NOTIFY = 0x050
REG_INTERRUPT_STATUS = 0x060
REG_INTERRUPT_ACK = 0x064
REG_STATUS = 0x070
REG_QUEUE_DESC_LOW = 0x080  # modern, through 0x0A4
REG_QUEUE_DESC_HIGH = 0x084
REG_QUEUE_AVAIL_LOW = 0x090
REG_QUEUE_AVAIL_HIGH = 0x094
REG_QUEUE_USED_LOW = 0x0A0
REG_QUEUE_USED_HIGH = 0x0A4
REG_CONFIG_GENERATION = 0x0FC  # modern
REG_CONFIG = 0x100

VIRTIO_MMIO_INT_VRING = VIRTIO_INT_VRING
VIRTIO_MMIO_INT_CONFIG = VIRTIO_INT_CONFIG

_LEGACY_ONLY = {REG_GUEST_PAGE_SIZE, REG_QUEUE_ALIGN, REG_QUEUE_PFN}
_MODERN_ONLY = {REG_QUEUE_READY, REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH, REG_QUEUE_AVAIL_LOW,
                REG_QUEUE_AVAIL_HIGH, REG_QUEUE_USED_LOW, REG_QUEUE_USED_HIGH,
                REG_CONFIG_GENERATION}
_WRITE_ONLY = {REG_DEVICE_FEATURES_SEL, REG_DRIVER_FEATURES, REG_DRIVER_FEATURES_SEL,
               REG_GUEST_PAGE_SIZE, REG_QUEUE_SEL, REG_QUEUE_NUM, REG_QUEUE_ALIGN,
               REG_QUEUE_NOTIFY, REG_INTERRUPT_ACK, REG_QUEUE_DESC_LOW, REG_QUEUE_DESC_HIGH,
               REG_QUEUE_AVAIL_LOW, REG_QUEUE_AVAIL_HIGH, REG_QUEUE_USED_LOW,
               REG_QUEUE_USED_HIGH}
_READ_ONLY = {REG_MAGIC, REG_VERSION, REG_DEVICE_ID, REG_VENDOR_ID, REG_DEVICE_FEATURES,
              REG_QUEUE_NUM_MAX, REG_INTERRUPT_STATUS, REG_CONFIG_GENERATION}

_LO = 0xFFFFFFFF


@dataclass
class VirtioMmioState(VirtioTransportState):
    guest_page_shift: int = 0


@register_type("virtio-mmio", "sys-bus-device", description="virtio-mmio transport")
class VirtioMmio(VirtioTransport, SysBusDevice):
    """One virtio-mmio slot; ``device`` is the virtio device plugged into it (or None)."""

    access_sizes = (1, 2, 4, 8)
    name = "virtio-mmio"
    region_size = 0x200
    state: VirtioMmioState

    force_legacy = Property(bool, True, "present the legacy (Version 1) interface")

    def __init__(self, irq: IrqLine | None = None, ram: GuestRAM | None = None,
                 device: VirtioDevice | None = None, **props: object) -> None:
        self.set_properties(props)
        self.irq = irq if irq is not None else unconnected_irq()
        self.ram = ram
        self.device: VirtioDevice | None = None
        self.vqs: list[Virtqueue] = []
        self.state = VirtioMmioState()
        if device is not None:
            self.plug(device)

    @property
    def legacy(self) -> bool:
        return self.force_legacy

    def doorbells(self) -> list[tuple[int, int, int]]:
        """Writes that only notify, as (offset, size, value): QueueNotify with each queue's
        index.  An accelerator may complete them without the vCPU waiting (KVM ioeventfd)."""
        if self.device is None:
            return []
        return [(REG_QUEUE_NOTIFY, 4, index) for index in range(len(self.vqs))]

    def _update_irq(self) -> None:
        self.irq.set(self.state.isr != 0)

    # -- register access ------------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if self.device is None:
            if offset == REG_MAGIC:
                return MAGIC
            if offset == REG_VERSION:
                return 1 if self.legacy else 2
            if offset == REG_VENDOR_ID:
                return VENDOR
            return 0
        if offset >= REG_CONFIG:
            return self._config_read(offset - REG_CONFIG, size)
        if size != 4:
            log.guest_error(f"virtio-mmio: wrong size access to register 0x{offset:x}: {size}")
            return 0
        return self._reg_read(offset)

    def _bad_version(self, offset: int, what: str) -> bool:
        if self.legacy and offset in _MODERN_ONLY:
            log.guest_error(f"virtio-mmio: {what} of 0x{offset:x} is not supported in legacy mode")
            return True
        if not self.legacy and offset in _LEGACY_ONLY:
            log.guest_error(f"virtio-mmio: {what} of 0x{offset:x} is not supported in "
                            "non-legacy mode")
            return True
        return False

    def _reg_read(self, offset: int) -> int:
        assert self.device is not None
        s = self.state
        if self._bad_version(offset, "read"):
            return 0
        if offset == REG_MAGIC:
            return MAGIC
        if offset == REG_VERSION:
            return 1 if self.legacy else 2
        if offset == REG_DEVICE_ID:
            return self.device.device_id
        if offset == REG_VENDOR_ID:
            return VENDOR
        if offset == REG_DEVICE_FEATURES:
            return self._host_features_word()
        if offset == REG_QUEUE_NUM_MAX:
            qs = self._selected()
            return VIRTQUEUE_MAX_SIZE if qs is not None and qs.num else 0
        if offset == REG_QUEUE_PFN:
            qs = self._selected()
            return (qs.desc >> s.guest_page_shift) if qs is not None else 0
        if offset == REG_QUEUE_READY:
            qs = self._selected()
            return int(qs.ready) if qs is not None else 0
        if offset == REG_INTERRUPT_STATUS:
            return s.isr
        if offset == REG_STATUS:
            return s.status
        if offset == REG_CONFIG_GENERATION:
            return s.config_generation
        if offset in _WRITE_ONLY:
            log.guest_error(f"virtio-mmio: read of write-only register 0x{offset:x}")
        else:
            log.guest_error(f"virtio-mmio: bad register offset 0x{offset:x}")
        return 0

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if self.device is None:
            return  # empty slot: writes ignored (QEMU)
        if offset >= REG_CONFIG:
            self._config_write(offset - REG_CONFIG, size, value)
            return
        if size != 4:
            log.guest_error(f"virtio-mmio: wrong size access to register 0x{offset:x}: {size}")
            return
        if self._bad_version(offset, "write"):
            return
        self._reg_write(offset, value)

    def _reg_write(self, offset: int, value: int) -> None:
        s = self.state
        qs = self._selected()
        if offset == REG_DEVICE_FEATURES_SEL:
            s.host_features_sel = value
        elif offset == REG_DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == REG_DRIVER_FEATURES_SEL:
            s.guest_features_sel = value
        elif offset == REG_GUEST_PAGE_SIZE:
            shift = (value & -value).bit_length() - 1 if value else 32
            s.guest_page_shift = shift if shift <= 31 else 0
        elif offset == REG_QUEUE_SEL:
            self._select_queue(value)
        elif offset == REG_QUEUE_NUM:
            if self._set_queue_num(qs, value) and self.legacy and qs is not None:
                self._legacy_update_rings(qs)
        elif offset == REG_QUEUE_ALIGN:
            if qs is not None:
                if value and value & (value - 1) == 0:
                    qs.align = value
                    self._legacy_update_rings(qs)
                else:
                    log.guest_error(f"virtio-mmio: QueueAlign 0x{value:x} is not a power of 2")
        elif offset == REG_QUEUE_PFN:
            if value == 0:
                self._reset_device()
            elif qs is not None:
                qs.desc = value << s.guest_page_shift
                self._legacy_update_rings(qs)
        elif offset == REG_QUEUE_READY:
            if qs is not None:
                qs.ready = bool(value & 1)
        elif offset == REG_QUEUE_NOTIFY:
            self._queue_notify(value)
        elif offset == REG_INTERRUPT_ACK:
            s.isr &= ~value
            self._update_irq()
        elif offset == REG_STATUS:
            self._write_status(value & 0xFF)
        elif REG_QUEUE_DESC_LOW <= offset <= REG_QUEUE_USED_HIGH and offset & 0xF < 8:
            if qs is not None:
                attr = {0x80: "desc", 0x90: "avail", 0xA0: "used"}[offset & ~0xF]
                self._write_queue_address(qs, attr, bool(offset & 4), value)
        elif offset in _READ_ONLY:
            log.guest_error(f"virtio-mmio: write to read-only register 0x{offset:x}")
        else:
            log.guest_error(f"virtio-mmio: bad register offset 0x{offset:x}")

    def _write_driver_features(self, value: int) -> None:
        s = self.state
        assert self.device is not None
        if self.legacy:
            if s.guest_features_sel:
                log.guest_error("virtio-mmio: attempt to write guest features with "
                                "guest_features_sel > 0 in legacy mode")
            else:
                self._set_features(value)
        elif s.guest_features_sel < 2:
            s.guest_features[s.guest_features_sel] = value
        else:
            log.guest_error(f"virtio-mmio: DriverFeaturesSel {s.guest_features_sel} > 1")

    def _legacy_update_rings(self, qs: QueueState) -> None:
        if qs.desc:
            qs.desc, qs.avail, qs.used = legacy_ring_addresses(qs.desc, qs.num, qs.align)
            qs.ready = True

    # -- snapshots ------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = dataclasses.asdict(self.state)
        state["device"] = self._device_state()
        return state

    def prepare_state(self, state: dict[str, Any]) -> Applier:
        """Check ``state`` completely; the returned function assigns it."""
        r = StateReader(state, self.name)
        fields = self._read_transport_state(r)
        fields["guest_page_shift"] = r.integer("guest_page_shift", 0, 31)
        apply_device = self._prepare_device_state(r)

        def apply() -> None:
            self.state = VirtioMmioState(**fields)
            self._apply_queues(self.state.queues)
            if apply_device is not None and self.device is not None:
                apply_device()
                self.device.broken = self.state.broken
            self._update_irq()
        return apply

    def set_state(self, state: dict[str, Any]) -> None:
        self.prepare_state(state)()


def mmio_buses(transports: Sequence[VirtioMmio]) -> list[Bus]:
    """The slots as buses, from the highest address down (QEMU fills them in that order and
    numbers them ``virtio-mmio-bus.N`` from the lowest address)."""
    last = len(transports) - 1
    return [Bus(f"virtio-mmio-bus.{last - i}", "virtio-mmio-bus", "virtio-bus", plug=t.plug,
                has_room=functools.partial(_is_empty, t))
            for i, t in enumerate(transports)]


def _is_empty(transport: VirtioMmio) -> bool:
    return transport.device is None


def plug_devices(system: Any, transports: Sequence[VirtioMmio]) -> list[Device]:
    """Create the ``-device`` options of ``system.config`` into free ``transports`` (see
    :func:`mmio_buses`); ports (``virtconsole``, ``virtserialport``) go on the most recent
    virtio-serial device."""
    return create_devices(system, mmio_buses(transports), _serial_buses)


def _serial_buses(device: object, dev_id: str) -> list[Bus]:
    # virtio-serial's module once a -device is created (a VM without one does not import it)
    from kvmpy.hw.virtio.console import serial_buses

    return serial_buses(device, dev_id)
