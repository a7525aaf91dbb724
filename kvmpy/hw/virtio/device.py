"""The virtio device side (QEMU's ``virtio-device``): what a transport plugs in.

A device declares its id, its feature bits, its queues' default sizes and its config space;
the transport owns the registers and the queue addresses and calls :meth:`handle_queue` when
the driver notifies a queue.  The device consumes requests through :attr:`queues` and calls
:meth:`notify` when it has used buffers, which the transport turns into an interrupt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

from kvmpy.hw.core import Device
from kvmpy.hw.virtio.virtqueue import Virtqueue
from kvmpy.hw.virtio.vmstate import U64, Applier, StateReader
from kvmpy.qom import Property, register_type

# Device-independent feature bits (virtio spec §6).
VIRTIO_F_NOTIFY_ON_EMPTY = 24
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32

# Device status bits (§2.1).
VIRTIO_CONFIG_S_ACKNOWLEDGE = 1
VIRTIO_CONFIG_S_DRIVER = 2
VIRTIO_CONFIG_S_DRIVER_OK = 4
VIRTIO_CONFIG_S_FEATURES_OK = 8
VIRTIO_CONFIG_S_NEEDS_RESET = 0x40
VIRTIO_CONFIG_S_FAILED = 0x80


@register_type("virtio-device", "device", abstract=True, description="virtio device")
class VirtioDevice(Device):
    """Base of virtio devices (rng, blk, ...). ``state`` is the device's own dataclass."""

    bus_type = "virtio-bus"
    user_creatable = True

    device_id: ClassVar[int] = 0
    queue_sizes: tuple[int, ...] = ()
    legacy_any_layout: ClassVar[bool] = True
    """Offer VIRTIO_F_ANY_LAYOUT on a legacy transport (QEMU's virtio-blk does not)."""

    # QEMU's DEFINE_VIRTIO_COMMON_FEATURES: feature bits the user may switch off.
    indirect_desc = Property(bool, True, "on/off", name="indirect_desc")
    event_idx = Property(bool, True, "on/off", name="event_idx")
    notify_on_empty = Property(bool, True, "on/off", name="notify_on_empty")
    any_layout = Property(bool, True, "on/off", name="any_layout")
    legacy_only_features: ClassVar[int] = 0
    """Device feature bits offered only through a legacy transport (QEMU's legacy_features)."""
    """Default size of each queue (QEMU's ``virtio_add_queue`` sizes)."""

    state: Any

    def __init__(self) -> None:
        self.queues: list[Virtqueue] = []
        self.guest_features = 0
        self.broken = False
        """Set when the guest misused a queue; the device does nothing until reset."""
        self._notify: Callable[[int], None] = lambda index: None
        self._error: Callable[[str], None] = lambda message: None
        self._config_changed: Callable[[], None] = lambda: None

    # -- transport side -------------------------------------------------------------------------

    def attach(self, queues: list[Virtqueue], notify: Callable[[int], None],
               error: Callable[[str], None] | None = None,
               config_changed: Callable[[], None] | None = None) -> None:
        """Called by the transport when the device is plugged."""
        self.queues = queues
        self._notify = notify
        if error is not None:
            self._error = error
        if config_changed is not None:
            self._config_changed = config_changed

    def virtio_error(self, message: str) -> None:
        """The guest misused a queue outside a notify (e.g. during chardev input): the
        transport logs it and marks the device broken (QEMU's ``virtio_error``)."""
        self._error(message)

    def notify(self, index: int) -> None:
        """Tell the transport that queue ``index`` has new used buffers."""
        self._notify(index)

    def config_changed(self) -> None:
        """Tell the transport that the config space changed (a link went down): it raises
        the configuration interrupt (QEMU's ``virtio_notify_config``)."""
        self._config_changed()

    def host_features(self) -> int:
        """Device-specific feature bits offered to the driver."""
        return 0

    def transport_features(self, legacy: bool) -> int:
        """The device-independent bits offered, as QEMU's defaults and the properties say:
        indirect descriptors and event indexes; NOTIFY_ON_EMPTY and ANY_LAYOUT only in
        legacy mode, VERSION_1 only in modern mode."""
        features = 0
        if self.indirect_desc:
            features |= 1 << VIRTIO_RING_F_INDIRECT_DESC
        if self.event_idx:
            features |= 1 << VIRTIO_RING_F_EVENT_IDX
        if legacy:
            if self.notify_on_empty:
                features |= 1 << VIRTIO_F_NOTIFY_ON_EMPTY
            if self.any_layout and self.legacy_any_layout:
                features |= 1 << VIRTIO_F_ANY_LAYOUT
        else:
            features |= 1 << VIRTIO_F_VERSION_1
        return features

    def set_features(self, features: int) -> None:
        """The features the driver accepted (already masked with what was offered)."""
        self.guest_features = features

    def config(self) -> bytes:
        """The device configuration space, little-endian."""
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        """The driver wrote ``data`` at ``offset`` of the config space (default: ignored)."""

    def handle_queue(self, index: int) -> None:
        """The driver notified queue ``index``."""

    def driver_ok(self) -> None:
        """The driver set DRIVER_OK: the device may start using its queues."""

    def reset(self) -> None:
        """Device reset (status written 0, or system reset)."""
        self.guest_features = 0
        self.broken = False

    # -- snapshots ------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        return {"guest_features": self.guest_features, "device": self.device_state()}

    def device_state(self) -> dict[str, Any]:
        """The device's own state (values only)."""
        return dataclasses.asdict(self.state)

    def prepare_state(self, state: dict[str, Any]) -> Applier:
        """Check ``state`` (from :meth:`get_state`, maybe of another process) completely and
        return the function that assigns it; raises VmStateError."""
        r = StateReader(state, self.type_name)
        features = r.integer("guest_features", 0, U64)
        apply_device = self.prepare_device_state(r.reader("device"))

        def apply() -> None:
            self.guest_features = features
            apply_device()
        return apply

    def prepare_device_state(self, r: StateReader) -> Applier:
        """:meth:`prepare_state` for the device's own part.  This default takes a device
        whose state dataclass has no fields."""
        if dataclasses.fields(self.state) or r.state:
            raise r.fail(next(iter(r.state), "device"), "unexpected device state")
        return lambda: None

    def set_state(self, state: dict[str, Any]) -> None:
        self.prepare_state(state)()
