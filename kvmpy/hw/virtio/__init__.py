"""virtio: the virtio-mmio transport and the devices plugged into it."""

from kvmpy.hw.virtio.blk import RawImage, VirtioBlk
from kvmpy.hw.virtio.console import VirtConsole, VirtioSerial, VirtSerialPort
from kvmpy.hw.virtio.device import VirtioDevice
from kvmpy.hw.virtio.mmio import VirtioMmio, plug_devices
from kvmpy.hw.virtio.net import VirtioNet
from kvmpy.hw.virtio.ninep import VirtioNineP
from kvmpy.hw.virtio.rng import VirtioRng

__all__ = ["RawImage", "VirtConsole", "VirtSerialPort", "VirtioBlk", "VirtioDevice",
           "VirtioMmio", "VirtioNet", "VirtioNineP", "VirtioRng", "VirtioSerial", "plug_devices"]
