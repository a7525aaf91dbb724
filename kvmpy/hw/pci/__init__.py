"""PCI: the virt board's PCIe host bridge, configuration space, PCI Express root ports, and
the virtio-pci transport."""

from kvmpy.hw.pci.bridge import PciBridge
from kvmpy.hw.pci.bus import PciBus
from kvmpy.hw.pci.device import PciBar, PciDevice
from kvmpy.hw.pci.gpex import GpexHost, GpexRoot
from kvmpy.hw.pci.root_port import PcieRootPort
from kvmpy.hw.pci.virtio_pci import VIRTIO_PCI_MODELS, VirtioPciProxy, register_virtio_pci

for _model in VIRTIO_PCI_MODELS:
    register_virtio_pci(_model)

__all__ = ["GpexHost", "GpexRoot", "PciBar", "PciBridge", "PciBus", "PciDevice",
           "PcieRootPort", "VirtioPciProxy"]
