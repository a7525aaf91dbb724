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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvmpy import log, qom
from kvmpy.errors import ConfigError
from kvmpy.hw.core import Device, SysBusDevice, device_new
from kvmpy.hw.irq import IrqLine, unconnected_irq
from kvmpy.hw.virtio.device import (
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_RING_F_EVENT_IDX,
    VirtioDevice,
)
from kvmpy.hw.virtio.virtqueue import (
    VIRTQUEUE_MAX_SIZE,
    QueueState,
    Virtqueue,
    VirtqueueError,
    legacy_ring_addresses,
)
from kvmpy.memory import GuestRAM
from kvmpy.qom import Property, register_type

if TYPE_CHECKING:
    from collections.abc import Sequence

MAGIC = 0x74726976  # "virt"
VENDOR = 0x554D4551  # "QEMU"
VIRTIO_QUEUE_MAX = 1024

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

VIRTIO_MMIO_INT_VRING = 1
VIRTIO_MMIO_INT_CONFIG = 2

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
class VirtioMmioState:
    status: int = 0
    isr: int = 0
    host_features_sel: int = 0
    guest_features_sel: int = 0
    guest_features: list[int] = field(default_factory=lambda: [0, 0])
    """Modern: the two 32-bit halves written so far (applied at FEATURES_OK)."""
    guest_page_shift: int = 0
    queue_sel: int = 0
    config_generation: int = 0
    broken: bool = False
    queues: list[QueueState] = field(default_factory=list)


@register_type("virtio-mmio", "sys-bus-device", description="virtio-mmio transport")
class VirtioMmio(SysBusDevice):
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

    # -- plugging -------------------------------------------------------------------------------

    def plug(self, device: VirtioDevice) -> None:
        """Plug ``device`` into this (empty) transport."""
        if self.device is not None:
            raise ConfigError("virtio-mmio: slot already holds a device")
        if self.ram is None:
            raise ConfigError("virtio-mmio: no guest RAM to place virtqueues in")
        self.device = device
        self.vqs = [Virtqueue(self.ram, QueueState()) for _ in device.queue_sizes]
        device.attach(self.vqs, self._device_notify, self._virtio_error)
        self._reset_transport()

    def host_features(self) -> int:
        """Everything offered to the driver.  QEMU 7.2 also offers VIRTIO_F_RING_RESET
        (bit 40) in modern mode; kvmpy has no per-queue reset and does not."""
        if self.device is None:
            return 0
        device = self.device.host_features()
        if not self.legacy:
            device &= ~self.device.legacy_only_features
        return device | self.device.transport_features(self.legacy)

    def _set_features(self, features: int) -> None:
        assert self.device is not None
        accepted = features & self.host_features()
        self.device.set_features(accepted)
        for vq in self.vqs:
            vq.state.event_idx = bool(accepted >> VIRTIO_RING_F_EVENT_IDX & 1)

    # -- interrupts -----------------------------------------------------------------------------

    def _update_irq(self) -> None:
        self.irq.set(self.state.isr != 0)

    def _device_notify(self, index: int) -> None:
        vq = self.vqs[index]
        try:
            wanted = vq.should_notify()
        except VirtqueueError:
            wanted = True
        if wanted:
            self.state.isr |= VIRTIO_MMIO_INT_VRING
            self._update_irq()

    def config_changed(self) -> None:
        """The device's config space changed (e.g. a resized disk)."""
        self.state.config_generation = (self.state.config_generation + 1) & _LO
        self.state.isr |= VIRTIO_MMIO_INT_CONFIG
        self._update_irq()

    def _virtio_error(self, message: str) -> None:
        """QEMU's virtio_error: the device stops until reset; modern drivers are told."""
        assert self.device is not None
        log.guest_error(f"{self.device.type_name}: {message}")
        self.state.broken = True
        self.device.broken = True
        if not self.legacy:
            self.state.status |= VIRTIO_CONFIG_S_NEEDS_RESET
            self.config_changed()

    # -- reset ----------------------------------------------------------------------------------

    def _reset_device(self) -> None:
        """QEMU's virtio_reset (the driver wrote Status 0, or legacy QueuePFN 0): device
        status, interrupt status, queue selector and every queue go back to power-on; the
        transport's own registers (GuestPageSize, the feature selectors) stay, as the driver
        set them at probe time before resetting the device."""
        s = self.state
        sizes = self.device.queue_sizes if self.device is not None else ()
        queues = [QueueState(num=size, num_default=size) for size in sizes]
        for vq, qs, old in zip(self.vqs, queues, s.queues, strict=False):
            qs.align = old.align  # QEMU keeps the legacy ring alignment
            vq.state = qs
        s.queues = queues
        s.status = s.isr = s.queue_sel = 0
        s.broken = False
        if self.device is not None:
            self.device.reset()
        self._update_irq()

    def _reset_transport(self) -> None:
        """System reset (QEMU's virtio_mmio_reset): the device and the transport registers."""
        self.state = VirtioMmioState(queues=list(self.state.queues))
        self._reset_device()

    def reset(self) -> None:
        self._reset_transport()

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

    def _config_read(self, offset: int, size: int) -> int:
        assert self.device is not None
        if size not in (1, 2, 4):
            log.guest_error(f"virtio-mmio: config read of size {size}")
            return 0
        config = self.device.config()
        if offset + size > len(config):
            return (1 << (8 * size)) - 1  # QEMU's virtio_config_read* outside the space
        return int.from_bytes(config[offset:offset + size], "little")

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
            if self.legacy:
                return 0 if s.host_features_sel else self.host_features() & _LO
            if s.host_features_sel > 1:
                return 0
            return (self.host_features() >> (32 * s.host_features_sel)) & _LO
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

    def _selected(self) -> QueueState | None:
        sel = self.state.queue_sel
        return self.state.queues[sel] if sel < len(self.state.queues) else None

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if self.device is None:
            return  # empty slot: writes ignored (QEMU)
        if offset >= REG_CONFIG:
            if size not in (1, 2, 4):
                log.guest_error(f"virtio-mmio: config write of size {size}")
                return
            config_len = len(self.device.config())
            if offset - REG_CONFIG + size <= config_len:
                self.device.write_config(offset - REG_CONFIG, value.to_bytes(size, "little"))
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
            if value < VIRTIO_QUEUE_MAX:
                s.queue_sel = value
        elif offset == REG_QUEUE_NUM:
            self._write_queue_num(qs, value)
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
                self._write_queue_address(qs, offset, value)
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

    def _write_queue_num(self, qs: QueueState | None, value: int) -> None:
        # QEMU's virtio_queue_set_num: a queue cannot be created or removed, nor exceed 1024.
        if qs is None or not value or value > VIRTQUEUE_MAX_SIZE:
            log.guest_error(f"virtio-mmio: invalid QueueNum {value} for queue "
                            f"{self.state.queue_sel}")
            return
        qs.num = value
        if self.legacy:
            self._legacy_update_rings(qs)

    def _legacy_update_rings(self, qs: QueueState) -> None:
        if qs.desc:
            qs.desc, qs.avail, qs.used = legacy_ring_addresses(qs.desc, qs.num, qs.align)
            qs.ready = True

    def _write_queue_address(self, qs: QueueState, offset: int, value: int) -> None:
        attr = {0x80: "desc", 0x90: "avail", 0xA0: "used"}[offset & ~0xF]
        current = getattr(qs, attr)
        current = (current & _LO) | (value << 32) if offset & 4 else (current & ~_LO) | value
        setattr(qs, attr, current)

    def _queue_notify(self, index: int) -> None:
        if index >= VIRTIO_QUEUE_MAX or self.device is None or self.state.broken:
            return
        if index >= len(self.vqs):
            log.guest_error(f"virtio-mmio: notify of queue {index} that does not exist")
            return
        if not self.vqs[index].usable or not self.vqs[index].state.ready:
            return
        try:
            self.device.handle_queue(index)
        except VirtqueueError as exc:
            self._virtio_error(f"queue {index}: {exc}")

    def _write_status(self, value: int) -> None:
        s = self.state
        assert self.device is not None
        if not self.legacy and value & VIRTIO_CONFIG_S_FEATURES_OK and \
                not s.status & VIRTIO_CONFIG_S_FEATURES_OK:
            self._set_features(s.guest_features[0] | s.guest_features[1] << 32)
        was_ok = s.status & VIRTIO_CONFIG_S_DRIVER_OK
        s.status = value
        if value == 0:
            self._reset_device()
        elif value & VIRTIO_CONFIG_S_DRIVER_OK and not was_ok:
            try:
                self.device.driver_ok()
            except VirtqueueError as exc:
                self._virtio_error(str(exc))

    # -- snapshots ------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state = dataclasses.asdict(self.state)
        state["device"] = self.device.get_state() if self.device is not None else None
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        device_state = state.pop("device", None)
        queues = [QueueState(**q) for q in state.pop("queues")]
        self.state = VirtioMmioState(**state, queues=queues)
        for vq, qs in zip(self.vqs, queues, strict=False):
            vq.state = qs
        if self.device is not None and device_state is not None:
            self.device.set_state(device_state)
            self.device.broken = self.state.broken
        self._update_irq()


def plug_devices(system: Any, transports: Sequence[VirtioMmio]) -> list[Device]:
    """Create the ``-device`` virtio devices of ``system.config`` into free ``transports``,
    in order (the virt board passes its slots from the highest address down, as QEMU fills
    them); ports (``virtconsole``, ``virtserialport``) go on the last virtio-serial-device.
    Backends are looked up on the system (``-drive`` ids, ``system.chardevs``)."""
    from kvmpy.hw.virtio.console import VirtioSerial, VirtSerialPort

    plugged: list[Device] = []
    free = [t for t in transports if t.device is None]
    serial_bus: VirtioSerial | None = None
    for spec in system.config.devices:
        what = spec.text or f"-device {spec.driver}"
        info = qom.type_info(spec.driver)
        if info is None or not qom.is_a(spec.driver, "device"):
            raise ConfigError(f"'{spec.driver}' is not a valid device model name", what)
        cls = info.cls
        if info.abstract or not issubclass(cls, (VirtioDevice, VirtSerialPort)):
            raise ConfigError("Parameter 'driver' expects a pluggable device type", what)
        try:
            if issubclass(cls, VirtSerialPort):
                if serial_bus is None:
                    raise ConfigError(f"No 'virtio-serial-bus' bus found for device "
                                      f"'{spec.driver}'")
                port = device_new(spec.driver, spec.props, **cls.backends(system, spec.props))
                serial_bus.add_port(port)
                plugged.append(port)
                continue
            if not free:
                raise ConfigError(f"No 'virtio-bus' bus found for device '{spec.driver}'")
            device = device_new(spec.driver, spec.props, **cls.backends(system, spec.props))
        except ConfigError as exc:
            if exc.option is None:
                exc.option = what
            raise
        free.pop(0).plug(device)
        plugged.append(device)
        if isinstance(device, VirtioSerial):
            serial_bus = device
    return plugged
