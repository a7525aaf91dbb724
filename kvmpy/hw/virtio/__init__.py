"""virtio: the virtio-mmio transport and the devices plugged into it."""

from kvmpy.hw.virtio.blk import RawImage, VirtioBlk
from kvmpy.hw.virtio.device import VirtioDevice
from kvmpy.hw.virtio.mmio import VirtioMmio, plug_devices
from kvmpy.hw.virtio.rng import VirtioRng

__all__ = ["RawImage", "VirtioBlk", "VirtioDevice", "VirtioMmio", "VirtioRng", "plug_devices"]
