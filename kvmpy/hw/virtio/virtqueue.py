"""Split virtqueues in guest RAM (virtio 1.2 spec §2.7; legacy layout §2.7.2 / 4.2.4).

A queue is three guest-physical areas: the descriptor table (16 bytes per entry: addr u64,
len u32, flags u16, next u16), the driver (available) ring (flags u16, idx u16, ring[num] u16,
used_event u16) and the device (used) ring (flags u16, idx u16, ring[num] of {id u32,
len u32}, avail_event u16).  Everything the guest wrote is checked; a malformed queue raises
:class:`VirtqueueError`, which the transport logs as a guest error.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field

from kvmpy.hw.virtio.vmstate import U16, U64, StateReader
from kvmpy.memory import GuestRAM

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1

VIRTQUEUE_MAX_SIZE = 1024

_DESC = struct.Struct("<QIHH")
_USED_ELEM = struct.Struct("<II")
_U16 = struct.Struct("<H")


class VirtqueueError(Exception):
    """The guest set up or used a queue in a way the spec forbids (message says how)."""


@dataclass
class QueueState:
    """One queue as the transport configured it, plus the device's position in it."""

    num: int = 0
    """Queue size chosen by the driver (0: queue does not exist)."""
    num_default: int = 0
    """Size the device offers (QEMU's vring.num_default)."""
    desc: int = 0
    avail: int = 0
    used: int = 0
    align: int = 4096
    """Legacy used-ring alignment (QueueAlign)."""
    ready: bool = False
    last_avail_idx: int = 0
    used_idx: int = 0
    event_idx: bool = False
    """VIRTIO_RING_F_EVENT_IDX negotiated: used_event/avail_event steer notifications."""
    signalled_used: int = 0
    signalled_used_valid: bool = False


def queue_state_from(r: StateReader, num_default: int) -> QueueState:
    """A :class:`QueueState` from a state file, checked (VmStateError otherwise); its default
    size must be the device's.  The ring addresses are the guest's to choose, anywhere in
    the 64-bit space, and are checked against guest RAM at every use, as the guest's own
    are: a ring outside RAM breaks the device on its first use, as it would have at the
    source, so it is not a reason to refuse the state."""
    qs = QueueState(
        num=r.integer("num", 0, VIRTQUEUE_MAX_SIZE), num_default=r.integer("num_default", 0, U16),
        desc=r.integer("desc", 0, U64), avail=r.integer("avail", 0, U64),
        used=r.integer("used", 0, U64), align=r.integer("align", 1, 1 << 31),
        ready=r.flag("ready"), last_avail_idx=r.integer("last_avail_idx", 0, U16),
        used_idx=r.integer("used_idx", 0, U16), event_idx=r.flag("event_idx"),
        signalled_used=r.integer("signalled_used", 0, U16),
        signalled_used_valid=r.flag("signalled_used_valid"))
    if qs.num_default != num_default:
        raise r.fail("num_default", f"{qs.num_default}, the device's queue has {num_default}")
    if qs.align & (qs.align - 1):
        raise r.fail("align", f"{qs.align} is not a power of 2")
    return qs


@dataclass
class VirtqElement:
    """One request: the head descriptor index and its buffers as (gpa, length) pairs,
    device-readable ``out`` first, then device-writable ``in_``."""

    head: int
    out: list[tuple[int, int]] = field(default_factory=list)
    in_: list[tuple[int, int]] = field(default_factory=list)

    @functools.cached_property
    def in_size(self) -> int:
        """Bytes the device may write (the chain is complete when this is first asked)."""
        return sum(length for _, length in self.in_)

    @functools.cached_property
    def out_size(self) -> int:
        return sum(length for _, length in self.out)


class Virtqueue:
    """Device-side access to one split virtqueue in guest RAM."""

    def __init__(self, ram: GuestRAM, state: QueueState) -> None:
        self.ram = ram
        self.state = state

    # -- guest memory helpers -------------------------------------------------------------------

    def _offset(self, gpa: int, size: int) -> int:
        ram = self.ram
        if gpa < ram.base or gpa + size > ram.base + ram.size:
            raise VirtqueueError(f"address 0x{gpa:x}+0x{size:x} is outside guest RAM")
        return gpa - ram.base

    def read_u16(self, gpa: int) -> int:
        return int(_U16.unpack_from(self.ram.view, self._offset(gpa, 2))[0])

    def write_u16(self, gpa: int, value: int) -> None:
        _U16.pack_into(self.ram.view, self._offset(gpa, 2), value & 0xFFFF)
        if self.ram.dirty_logging:
            self.ram.mark_dirty(gpa, 2)

    def read(self, gpa: int, size: int) -> bytes:
        off = self._offset(gpa, size)
        return bytes(self.ram.view[off:off + size])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        off = self._offset(gpa, len(data))
        self.ram.view[off:off + len(data)] = data
        if self.ram.dirty_logging:
            self.ram.mark_dirty(gpa, len(data))

    # -- rings ----------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        s = self.state
        return s.num > 0 and s.desc != 0

    def avail_idx(self) -> int:
        return self.read_u16(self.state.avail + 2)

    def has_work(self) -> bool:
        return self.usable and self.avail_idx() != self.state.last_avail_idx

    def pop(self) -> VirtqElement | None:
        """The next available request, or None when the driver has posted nothing new."""
        s = self.state
        if not self.usable:
            return None
        avail_idx = self.avail_idx()
        pending = (avail_idx - s.last_avail_idx) & 0xFFFF
        if pending == 0:
            return None
        if pending > s.num:
            raise VirtqueueError(f"avail idx {avail_idx} is {pending} ahead of the device "
                                 f"(queue size {s.num})")
        head = self.read_u16(s.avail + 4 + 2 * (s.last_avail_idx % s.num))
        s.last_avail_idx = (s.last_avail_idx + 1) & 0xFFFF
        if s.event_idx:
            # avail_event: "notify me when you go past this" (spec §2.7.10); written on every
            # pop, so a buffer added after the queue looked empty is always notified.
            self.write_u16(s.used + 4 + 8 * s.num, s.last_avail_idx)
        if head >= s.num:
            raise VirtqueueError(f"avail ring head {head} >= queue size {s.num}")
        elem = VirtqElement(head)
        self._walk(elem, s.desc, s.num, head, indirect_allowed=True)
        return elem

    def _walk(self, elem: VirtqElement, table: int, size: int, index: int,
              indirect_allowed: bool) -> None:
        """Follow a chain from ``index`` in a table of ``size`` descriptors at ``table``,
        unpacked in place from guest RAM (the table is checked to lie in RAM once); every
        buffer is checked to lie inside RAM."""
        ram_base, ram_end = self.ram.base, self.ram.base + self.ram.size
        view = self.ram.view
        table_off = self._offset(table, 16 * size)
        seen = 0
        most = min(size, VIRTQUEUE_MAX_SIZE)  # an indirect table's length is the guest's u32
        while True:
            if seen >= most:
                if size > VIRTQUEUE_MAX_SIZE:
                    raise VirtqueueError(f"descriptor chain longer than {VIRTQUEUE_MAX_SIZE} "
                                         "descriptors")
                raise VirtqueueError("descriptor chain loops or is longer than its table")
            seen += 1
            addr, length, flags, nxt = _DESC.unpack_from(view, table_off + 16 * index)
            if flags & VRING_DESC_F_INDIRECT:
                if not indirect_allowed or flags & VRING_DESC_F_NEXT:
                    raise VirtqueueError("nested or chained indirect descriptor table")
                if length == 0 or length % 16:
                    raise VirtqueueError(f"indirect table length {length} is not a multiple "
                                         "of 16")
                self._walk(elem, addr, length // 16, 0, indirect_allowed=False)
                return
            if length:
                if addr < ram_base or addr + length > ram_end:
                    raise VirtqueueError(f"address 0x{addr:x}+0x{length:x} is outside guest "
                                         "RAM")
                if flags & VRING_DESC_F_WRITE:
                    elem.in_.append((addr, length))
                elif elem.in_:
                    raise VirtqueueError("device-readable descriptor after a writable one")
                else:
                    elem.out.append((addr, length))
            if not flags & VRING_DESC_F_NEXT:
                return
            if nxt >= size:
                raise VirtqueueError(f"descriptor next {nxt} >= table size {size}")
            index = nxt

    def views(self, segments: list[tuple[int, int]], skip: int = 0,
              limit: int | None = None) -> list[memoryview]:
        """Guest RAM of ``segments`` as memoryviews (no copy), from byte ``skip``, at most
        ``limit`` bytes: devices read and write large buffers in place.  Segments that
        follow each other in guest RAM come as one view."""
        ram_base, ram_end, view = self.ram.base, self.ram.base + self.ram.size, self.ram.view
        spans: list[list[int]] = []
        for addr, length in segments:
            if skip >= length:
                skip -= length
                continue
            if addr < ram_base or addr + length > ram_end:
                raise VirtqueueError(f"address 0x{addr:x}+0x{length:x} is outside guest RAM")
            start = addr - ram_base + skip
            length -= skip
            skip = 0
            if limit is not None:
                length = min(length, limit)
                limit -= length
            if spans and spans[-1][1] == start:
                spans[-1][1] += length
            else:
                spans.append([start, start + length])
            if limit == 0:
                break
        return [view[start:end] for start, end in spans]

    def read_out(self, elem: VirtqElement, limit: int | None = None) -> bytes:
        """The device-readable bytes of ``elem`` (at most ``limit``)."""
        data = bytearray()
        for addr, length in elem.out:
            if limit is not None:
                length = min(length, limit - len(data))
            data += self.read(addr, length)
            if limit is not None and len(data) >= limit:
                break
        return bytes(data)

    def write_in(self, elem: VirtqElement, data: bytes | bytearray | memoryview,
                 skip: int = 0) -> int:
        """Scatter ``data`` into the writable buffers from byte ``skip``; returns bytes written."""
        view = memoryview(data)
        written = 0
        for addr, length in elem.in_:
            if skip >= length:
                skip -= length
                continue
            chunk = view[written:written + length - skip]
            if not chunk:
                break
            self.write(addr + skip, chunk)
            written += len(chunk)
            skip = 0
        return written

    def push(self, elem: VirtqElement, length: int) -> None:
        """Return ``elem`` to the driver with ``length`` bytes written into it.  With dirty
        logging on, the used entry and every buffer the device could have written (devices
        also fill them in place, through :meth:`views`) are marked dirty."""
        s = self.state
        ram = self.ram
        slot = s.used + 4 + 8 * (s.used_idx % s.num)
        _USED_ELEM.pack_into(ram.view, self._offset(slot, 8), elem.head, length)
        s.used_idx = (s.used_idx + 1) & 0xFFFF
        _U16.pack_into(ram.view, self._offset(s.used + 2, 2), s.used_idx)
        if ram.dirty_logging:
            ram.mark_dirty(s.used + 2, 2)
            ram.mark_dirty(slot, 8)
            for addr, size in elem.in_:
                ram.mark_dirty(addr, size)

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for the buffers used so far (spec §2.7.7,
        QEMU's virtio_should_notify)."""
        s = self.state
        if not s.event_idx:
            return not self.read_u16(s.avail) & VRING_AVAIL_F_NO_INTERRUPT
        valid, old = s.signalled_used_valid, s.signalled_used
        s.signalled_used_valid, s.signalled_used = True, s.used_idx
        if not valid:
            return True
        used_event = self.read_u16(s.avail + 4 + 2 * s.num)
        new = s.used_idx
        # vring_need_event(): did used_idx step past used_event since the last interrupt?
        return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF


def legacy_ring_addresses(pfn_addr: int, num: int, align: int) -> tuple[int, int, int]:
    """Legacy layout from one base address: (desc, avail, used) (virtio 0.9.5 §2.3)."""
    desc = pfn_addr
    avail = desc + 16 * num
    used = (avail + 2 * (3 + num) + align - 1) & ~(align - 1)
    return desc, avail, used
