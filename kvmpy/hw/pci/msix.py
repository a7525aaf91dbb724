"""MSI-X (PCI Local Bus spec 3.0 §6.8.2), as QEMU's ``msix_init_exclusive_bar`` lays it out.

One memory BAR of its own holds the vector table (16 bytes per entry: message address,
message data, vector control) at offset 0 and the pending-bit array after it: a 4 KiB BAR
with the bits at 0x800 for up to 128 vectors, larger (a power of two) beyond.  The
capability's control word has two writable bits: MSI-X enable and function mask.

A message is a 32-bit memory write of the entry's data to its address, made by the function
as a bus master; on the virt board without an MSI controller it lands wherever the guest
pointed it (QEMU does the same).  Masked vectors set their pending bit and fire on unmask.
"""

from __future__ import annotations

from collections.abc import Callable

from kvmpy import log
from kvmpy.hw.pci.device import PciDevice
from kvmpy.hw.virtio.vmstate import Applier, StateReader

PCI_CAP_ID_MSIX = 0x11
MSIX_CAP_LENGTH = 12
MSIX_FLAGS = 2
MSIX_TABLE = 4
MSIX_PBA = 8
MSIX_ENABLE = 0x8000
MSIX_MASKALL = 0x4000
ENTRY_SIZE = 16
ENTRY_VECTOR_CTRL = 12
ENTRY_CTRL_MASKBIT = 1
MSIX_MAX_VECTORS = 2048


def exclusive_bar_layout(vectors: int) -> tuple[int, int]:
    """(BAR size, pending-bits offset) as QEMU's msix_init_exclusive_bar lays them out."""
    pba_offset = max(0x800, vectors * ENTRY_SIZE)
    pba_size = (vectors + 63) // 64 * 8
    size = max(0x1000, pba_offset + pba_size)
    return 1 << (size - 1).bit_length(), pba_offset


class Msix:
    """The MSI-X capability, table and pending bits of one function (``vectors`` entries,
    1 to 2048), in BAR ``bar_index``.  ``deliver(address, data)`` sends a message."""

    access_sizes = (4, 8)

    def __init__(self, device: PciDevice, vectors: int, bar_index: int,
                 deliver: Callable[[int, int], None]) -> None:
        if not 1 <= vectors <= MSIX_MAX_VECTORS:
            raise ValueError(f"{vectors} MSI-X vectors (1 to {MSIX_MAX_VECTORS})")
        self.device = device
        self.vectors = vectors
        self.deliver = deliver
        self.bar_size, self.pba_offset = exclusive_bar_layout(vectors)
        self.pba_size = (vectors + 63) // 64 * 8
        self.table = bytearray(vectors * ENTRY_SIZE)
        self.pending = bytearray(self.bar_size - self.pba_offset)
        self.cap = device.add_capability(PCI_CAP_ID_MSIX, MSIX_CAP_LENGTH)
        device.set_config(self.cap + MSIX_FLAGS, 2, vectors - 1)
        device.set_config(self.cap + MSIX_TABLE, 4, bar_index)
        device.set_config(self.cap + MSIX_PBA, 4, self.pba_offset | bar_index)
        device.wmask[self.cap + MSIX_FLAGS + 1] |= (MSIX_ENABLE | MSIX_MASKALL) >> 8
        self.reset()

    def reset(self) -> None:
        """Every vector masked, nothing pending, the capability disabled (QEMU's msix_reset)."""
        self.table[:] = bytes(len(self.table))
        for vector in range(self.vectors):
            self.table[vector * ENTRY_SIZE + ENTRY_VECTOR_CTRL] = ENTRY_CTRL_MASKBIT
        self.pending[:] = bytes(len(self.pending))
        flags = self.device.get_config(self.cap + MSIX_FLAGS, 2)
        self.device.set_config(self.cap + MSIX_FLAGS, 2, flags & ~(MSIX_ENABLE | MSIX_MASKALL))

    @property
    def _flags(self) -> int:
        return self.device.get_config(self.cap + MSIX_FLAGS, 2)

    @property
    def enabled(self) -> bool:
        return bool(self._flags & MSIX_ENABLE)

    def _masked(self, vector: int) -> bool:
        return bool(self._flags & MSIX_MASKALL or
                    self.table[vector * ENTRY_SIZE + ENTRY_VECTOR_CTRL] & ENTRY_CTRL_MASKBIT)

    def notify(self, vector: int) -> None:
        """Signal ``vector`` (QEMU's msix_notify): sent now, or pending while masked."""
        if not self.enabled or not 0 <= vector < self.vectors:
            return
        if self._masked(vector):
            self.pending[vector // 8] |= 1 << (vector % 8)
            return
        self._send(vector)

    def _send(self, vector: int) -> None:
        entry = vector * ENTRY_SIZE
        address = int.from_bytes(self.table[entry:entry + 8], "little")
        data = int.from_bytes(self.table[entry + 8:entry + 12], "little")
        if self.device.bus_master:
            self.deliver(address, data)

    def control_written(self) -> None:
        """The guest wrote the capability (enable or function mask may have changed)."""
        self._fire_unmasked()

    def _fire_unmasked(self) -> None:
        if not self.enabled:
            return
        for vector in range(self.vectors):
            bit = 1 << (vector % 8)
            if self.pending[vector // 8] & bit and not self._masked(vector):
                self.pending[vector // 8] &= ~bit & 0xFF
                self._send(vector)

    # -- the BAR: the table, then the pending bits ----------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        """The table, the pending bits; elsewhere in the BAR nothing decodes (all ones, as
        QEMU's unassigned accesses on this host bridge read)."""
        if offset + size <= len(self.table):
            return int.from_bytes(self.table[offset:offset + size], "little")
        start = offset - self.pba_offset
        if start >= 0 and start + size <= self.pba_size:
            return int.from_bytes(self.pending[start:start + size], "little")
        return (1 << (8 * size)) - 1

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if offset + size <= len(self.table):
            self.table[offset:offset + size] = value.to_bytes(size, "little")
            self._fire_unmasked()
        elif offset < self.pba_offset:
            log.guest_error(f"{self.device.type_name}: MSI-X write at 0x{offset:x} past the "
                            f"{self.vectors}-entry table")

    def get_state(self) -> dict[str, bytes]:
        return {"table": bytes(self.table), "pending": bytes(self.pending)}

    def prepare_state(self, r: StateReader) -> Applier:
        """The vector table and pending bits (the enable and mask bits are in the
        configuration space), checked against this function's vector count."""
        table = r.blob("table", len(self.table))
        pending = r.blob("pending", len(self.pending))

        def apply() -> None:
            self.table[:] = table
            self.pending[:] = pending
        return apply

    def set_state(self, state: dict[str, bytes]) -> None:
        self.prepare_state(StateReader(state, f"{self.device.type_name}: msix"))()
