"""What every virtio transport does the same way (QEMU's hw/virtio/virtio.c under the proxies).

A transport (virtio-mmio, virtio-pci) decodes its own registers and owns the interrupt line;
this base keeps the device-side bookkeeping they share: the device status, the interrupt
status (ISR), the feature words, the queue selector and the queues' configuration, device
reset, queue notification and ``virtio_error``.  The device plugged in never learns which
transport it is behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvmpy import log
from kvmpy.errors import ConfigError
from kvmpy.hw.virtio.device import (
    VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_RING_F_EVENT_IDX,
    VirtioDevice,
)
from kvmpy.hw.virtio.virtqueue import QueueState, Virtqueue, VirtqueueError, queue_state_from
from kvmpy.hw.virtio.vmstate import U8, U32, Applier, StateReader
from kvmpy.memory import GuestRAM

VIRTIO_QUEUE_MAX = 1024
"""Highest queue index + 1 a driver may select or notify (QEMU's VIRTIO_QUEUE_MAX)."""

VIRTIO_INT_VRING = 1
VIRTIO_INT_CONFIG = 2
"""ISR bits: a queue has used buffers / the device configuration changed."""

_LO = 0xFFFFFFFF


@dataclass
class VirtioTransportState:
    """The registers every transport has, and the queues as the driver configured them."""

    status: int = 0
    isr: int = 0
    host_features_sel: int = 0
    guest_features_sel: int = 0
    guest_features: list[int] = field(default_factory=lambda: [0, 0])
    """Modern: the two 32-bit halves written so far (applied at FEATURES_OK)."""
    queue_sel: int = 0
    config_generation: int = 0
    broken: bool = False
    queues: list[QueueState] = field(default_factory=list)


class VirtioTransport:
    """Base of the transports.  Subclasses set :attr:`name` (for guest-error messages), say
    whether they present the legacy interface (:attr:`legacy`) and drive their interrupt
    from :attr:`state.isr <VirtioTransportState.isr>` in :meth:`_update_irq`."""

    name = "virtio"
    ram: GuestRAM | None
    device: VirtioDevice | None
    vqs: list[Virtqueue]
    state: VirtioTransportState

    @property
    def legacy(self) -> bool:
        raise NotImplementedError

    def _update_irq(self) -> None:
        raise NotImplementedError

    # -- plugging -------------------------------------------------------------------------------

    def plug(self, device: VirtioDevice) -> None:
        """Plug ``device`` into this (empty) transport."""
        if self.device is not None:
            raise ConfigError(f"{self.name}: slot already holds a device")
        if self.ram is None:
            raise ConfigError(f"{self.name}: no guest RAM to place virtqueues in")
        self.device = device
        self.vqs = [Virtqueue(self.ram, QueueState()) for _ in device.queue_sizes]
        device.attach(self.vqs, self._device_notify, self._virtio_error, self.config_changed)
        self._reset_transport()

    # -- features -------------------------------------------------------------------------------

    def host_features(self) -> int:
        """Everything offered to the driver.  QEMU 7.2 also offers VIRTIO_F_RING_RESET
        (bit 40) in modern mode; kvmpy has no per-queue reset and does not."""
        if self.device is None:
            return 0
        device = self.device.host_features()
        if not self.legacy:
            device &= ~self.device.legacy_only_features
        return device | self.device.transport_features(self.legacy)

    def _host_features_word(self) -> int:
        """The 32-bit word of the offered features that the selector picks."""
        sel = self.state.host_features_sel
        if self.legacy:
            return 0 if sel else self.host_features() & _LO
        return (self.host_features() >> (32 * sel)) & _LO if sel <= 1 else 0

    def _set_features(self, features: int) -> None:
        assert self.device is not None
        accepted = features & self.host_features()
        self.device.set_features(accepted)
        for vq in self.vqs:
            vq.state.event_idx = bool(accepted >> VIRTIO_RING_F_EVENT_IDX & 1)

    # -- interrupts -----------------------------------------------------------------------------

    def _device_notify(self, index: int) -> None:
        vq = self.vqs[index]
        try:
            wanted = vq.should_notify()
        except VirtqueueError:
            wanted = True
        if wanted:
            self.state.isr |= VIRTIO_INT_VRING
            self._update_irq()

    def config_changed(self) -> None:
        """The device's config space changed (e.g. a resized disk)."""
        self.state.config_generation = (self.state.config_generation + 1) & _LO
        self.state.isr |= VIRTIO_INT_CONFIG
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
        """QEMU's virtio_reset (the driver wrote status 0, or a legacy queue address 0):
        device status, interrupt status, queue selector and every queue go back to
        power-on; the transport's own registers (feature selectors, the legacy page size)
        stay, as the driver set them at probe time before resetting the device."""
        s = self.state
        sizes = self.device.queue_sizes if self.device is not None else ()
        queues = [QueueState(num=size, num_default=size) for size in sizes]
        for i, (vq, qs) in enumerate(zip(self.vqs, queues, strict=True)):
            if i < len(s.queues):
                qs.align = s.queues[i].align  # QEMU keeps the legacy ring alignment
            vq.state = qs
        s.queues = queues
        s.status = s.isr = s.queue_sel = 0
        s.broken = False
        if self.device is not None:
            self.device.reset()
        self._update_irq()

    def _reset_transport(self) -> None:
        """System reset: the device and the transport's registers."""
        self.state = type(self.state)(queues=list(self.state.queues))
        self._reset_device()

    def reset(self) -> None:
        self._reset_transport()

    # -- snapshots ------------------------------------------------------------------------------

    def drain(self) -> None:
        """The VM is paused: every queue with buffers the device has not taken yet is served
        as if the driver had just notified it (a notification may still be on its way, in
        an ioeventfd, or the driver may be about to send it: either way the device may take
        available buffers at any time), then the device finishes what it has in flight.
        After this, the queue positions are the whole story of the requests."""
        device = self.device
        if device is None:
            return
        if self.state.status & VIRTIO_CONFIG_S_DRIVER_OK and not self.state.broken:
            for index, vq in enumerate(self.vqs):
                try:
                    waiting = vq.state.ready and vq.has_work()
                except VirtqueueError:
                    waiting = True  # the notify reports it as the guest's error
                if waiting:
                    self._queue_notify(index)
        drain = getattr(device, "drain", None)
        if drain is not None:
            drain()

    def _read_transport_state(self, r: StateReader) -> dict[str, Any]:
        """The fields of :class:`VirtioTransportState` from a state file, checked; the
        queues must be the device's."""
        status = r.integer("status", 0, U8)
        broken = r.flag("broken")
        sizes = self.device.queue_sizes if self.device is not None else ()
        queues = [queue_state_from(q, sizes[i]) for i, q in
                  enumerate(r.readers("queues", VIRTIO_QUEUE_MAX, length=len(sizes)))]
        return {
            "status": status, "isr": r.integer("isr", 0, VIRTIO_INT_VRING | VIRTIO_INT_CONFIG),
            "host_features_sel": r.integer("host_features_sel", 0, U32),
            "guest_features_sel": r.integer("guest_features_sel", 0, U32),
            "guest_features": r.ints("guest_features", 2, 0, U32, length=2),
            "queue_sel": r.integer("queue_sel", 0, VIRTIO_QUEUE_MAX - 1),
            "config_generation": r.integer("config_generation", 0, U32),
            "broken": broken, "queues": queues,
        }

    def _device_state(self) -> dict[str, Any] | None:
        if self.device is None:
            return None
        return {"type": self.device.type_name, **self.device.get_state()}

    def _prepare_device_state(self, r: StateReader) -> Applier | None:
        """The plugged device's state (None for an empty slot), checked."""
        state = r.get("device")
        if self.device is None:
            if state is not None:
                raise r.fail("device", "a device's state for an empty slot")
            return None
        device = StateReader(state, f"{r.where}: device")
        kind = device.text("type", 64)
        if kind != self.device.type_name:
            raise device.fail("type", f"'{kind}', this slot holds '{self.device.type_name}'")
        return self.device.prepare_state({k: v for k, v in device.state.items()
                                          if k != "type"})

    def _apply_queues(self, queues: list[QueueState]) -> None:
        for vq, qs in zip(self.vqs, queues, strict=True):
            vq.state = qs

    # -- queues and status ----------------------------------------------------------------------

    def _selected(self) -> QueueState | None:
        sel = self.state.queue_sel
        return self.state.queues[sel] if sel < len(self.state.queues) else None

    def _select_queue(self, value: int) -> None:
        if value < VIRTIO_QUEUE_MAX:
            self.state.queue_sel = value

    def _queue_notify(self, index: int) -> None:
        if index >= VIRTIO_QUEUE_MAX or self.device is None or self.state.broken:
            return
        if index >= len(self.vqs):
            log.guest_error(f"{self.name}: notify of queue {index} that does not exist")
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

    @staticmethod
    def _write_queue_address(qs: QueueState, attr: str, high: bool, value: int) -> None:
        """One 32-bit half of a queue's ``desc``/``avail``/``used`` address."""
        current = getattr(qs, attr)
        current = (current & _LO) | (value << 32) if high else (current & ~_LO) | value
        setattr(qs, attr, current)

    def _config_read(self, offset: int, size: int) -> int:
        """A read of the device config space; outside it reads all-ones (QEMU's
        virtio_config_read*)."""
        assert self.device is not None
        if size not in (1, 2, 4):
            log.guest_error(f"{self.name}: config read of size {size}")
            return 0
        config = self.device.config()
        if offset + size > len(config):
            return (1 << (8 * size)) - 1
        return int.from_bytes(config[offset:offset + size], "little")

    def _config_write(self, offset: int, size: int, value: int) -> None:
        assert self.device is not None
        if size not in (1, 2, 4):
            log.guest_error(f"{self.name}: config write of size {size}")
            return
        if offset + size <= len(self.device.config()):
            self.device.write_config(offset, value.to_bytes(size, "little"))

    def _set_queue_num(self, qs: QueueState | None, value: int) -> bool:
        """QEMU's virtio_queue_set_num: a queue cannot be created or removed, nor exceed
        1024 entries.  Returns whether the size was taken."""
        if qs is None or not value or value > VIRTIO_QUEUE_MAX:
            log.guest_error(f"{self.name}: invalid queue size {value} for queue "
                            f"{self.state.queue_sel}")
            return False
        qs.num = value
        return True
