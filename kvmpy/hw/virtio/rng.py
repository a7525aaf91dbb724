"""virtio-rng (entropy source, device id 4; virtio spec §5.4), QEMU's ``virtio-rng-device``.

One queue (``requestq``, 8 entries as QEMU); every device-writable buffer the driver posts is
filled from the host's ``os.urandom`` (up to 64 KiB per request) and returned at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from kvmpy.hw.virtio.device import VirtioDevice
from kvmpy.qom import Property, register_type

VIRTIO_ID_RNG = 4
MAX_CHUNK = 64 * 1024
"""Bytes of entropy per request at most; the driver asks again for more."""


@dataclass
class VirtioRngState:
    """No state beyond the queue."""


@register_type("virtio-rng-device", "virtio-device", description="virtio entropy source")
class VirtioRng(VirtioDevice):
    category = "Misc devices"
    device_id = VIRTIO_ID_RNG
    queue_sizes = (8,)

    rng = Property(str, "", "ID of the rng backend object (default: host urandom)")
    max_bytes = Property(int, (1 << 63) - 1, "maximum bytes per period", name="max-bytes")
    period = Property(int, 1 << 16, "period in milliseconds")

    def __init__(self, entropy: Callable[[int], bytes] = os.urandom, **props: object) -> None:
        super().__init__()
        self.set_properties(props)
        self.entropy = entropy
        self.state = VirtioRngState()

    def handle_queue(self, index: int) -> None:
        vq = self.queues[index]
        used = False
        while (elem := vq.pop()) is not None:
            size = min(elem.in_size, MAX_CHUNK)
            written = vq.write_in(elem, self.entropy(size)) if size else 0
            vq.push(elem, written)
            used = True
        if used:
            self.notify(index)
