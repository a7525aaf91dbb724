"""virtio-blk (block device, id 2; virtio spec §5.2), QEMU's ``virtio-blk-device``.

One request queue.  A request is a 16-byte header (type u32, reserved u32, sector u64),
data buffers, and a 1-byte status the device writes: 0 OK, 1 IOERR, 2 UNSUPP.  Requests run
synchronously against a disk image (:mod:`kvmpy.block`: raw or qcow2); sectors are 512 bytes.

Features and config space are QEMU 7.2's defaults (checked against qemu-system-riscv64):
SEG_MAX, GEOMETRY (guessed from the size, as QEMU does for a disk without a partition
table), BLK_SIZE, TOPOLOGY, FLUSH, CONFIG_WCE, DISCARD, WRITE_ZEROES, and SCSI on a legacy
transport (SCSI commands are answered UNSUPP, as QEMU does with ``scsi=off``).  Discard is
advisory and does nothing; write-zeroes writes zeros.  With the write cache turned off by the
driver (CONFIG_WCE), every write is followed by a flush.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvmpy import log
from kvmpy.block.base import BlockImage
from kvmpy.block.blockdev import open_blockdev
from kvmpy.block.drive import open_drive
from kvmpy.block.raw import RawImage as RawImage  # re-exported: its home was here
from kvmpy.errors import ConfigError
from kvmpy.hw.virtio.device import VirtioDevice
from kvmpy.hw.virtio.virtqueue import VirtqElement, Virtqueue
from kvmpy.hw.virtio.vmstate import Applier, StateReader
from kvmpy.qom import Property, register_type

VIRTIO_ID_BLOCK = 2
SECTOR = 512

VIRTIO_BLK_F_SIZE_MAX = 1
VIRTIO_BLK_F_SEG_MAX = 2
VIRTIO_BLK_F_GEOMETRY = 4
VIRTIO_BLK_F_RO = 5
VIRTIO_BLK_F_BLK_SIZE = 6
VIRTIO_BLK_F_SCSI = 7
VIRTIO_BLK_F_FLUSH = 9
VIRTIO_BLK_F_TOPOLOGY = 10
VIRTIO_BLK_F_CONFIG_WCE = 11
VIRTIO_BLK_F_DISCARD = 13
VIRTIO_BLK_F_WRITE_ZEROES = 14

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_SCSI_CMD = 2
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_T_DISCARD = 11
VIRTIO_BLK_T_WRITE_ZEROES = 13

VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1
MAX_DISCARD_SECTORS = 0x3FFFFF  # QEMU: (INT_MAX >> 9) rounded to the block size, one segment
MAX_WRITE_ZEROES_SECTORS = 0x3FFFFF
WRITEBACK_OFFSET = 32

VIRTIO_BLK_S_OK = 0
VIRTIO_BLK_S_IOERR = 1
VIRTIO_BLK_S_UNSUPP = 2

VIRTIO_BLK_ID_BYTES = 20

_HEADER = struct.Struct("<IIQ")
_SEGMENT = struct.Struct("<QII")
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
CONFIG_SIZE = 57
"""QEMU 7.2's config size with these features: up to ``write_zeroes_may_unmap``."""


@dataclass
class VirtioBlkState:
    writeback: int = 1
    """The write cache mode the driver chose through CONFIG_WCE (1: writeback)."""


def guess_geometry(sectors: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) as QEMU guesses them from the size alone."""
    cylinders = min(max(sectors // (16 * 63), 2), 16383)
    return cylinders, 16, 63


@register_type("virtio-blk-device", "virtio-device", description="virtio block device")
class VirtioBlk(VirtioDevice):
    category = "Storage devices"
    device_id = VIRTIO_ID_BLOCK
    queue_sizes = (256,)
    legacy_only_features = 1 << VIRTIO_BLK_F_SCSI
    legacy_any_layout = False
    state: VirtioBlkState

    drive = Property(str, "", "Node name or ID of a block device to use as a backend")
    serial = Property(str, "", "disk serial number (VIRTIO_BLK_T_GET_ID)")
    queue_size = Property(int, 256, "virtqueue size", name="queue-size")
    config_wce = Property(bool, True, "on/off", name="config-wce")
    discard = Property(bool, True, "on/off")
    write_zeroes = Property(bool, True, "on/off", name="write-zeroes")
    bootindex = Property(int, -1, "boot order (virt boots from its firmware; accepted)")

    def __init__(self, image: BlockImage | None = None, **props: object) -> None:
        super().__init__()
        self.set_properties(props)
        if image is None:
            raise ConfigError("drive property not set")
        size = self.queue_size
        if size <= 2:
            raise ConfigError(f"invalid queue-size property ({size}), must be > 2")
        if size > 1024 or size & (size - 1):
            raise ConfigError(f"invalid queue-size property ({size}), must be a power of 2 "
                              "(max 1024)")
        self.queue_sizes = (self.queue_size,)
        self.image = image
        self.state = VirtioBlkState()

    @classmethod
    def backends(cls, system: Any, props: Mapping[str, str]) -> dict[str, Any]:
        drive_id = props.get("drive")
        if not drive_id:
            return {}
        for spec in getattr(system.config, "drives", ()):
            drive_props = getattr(spec, "props", spec)
            if drive_props.get("id") == drive_id:
                snapshot = bool(getattr(system.config, "snapshot", False))
                try:
                    image = _open_drive(drive_props, snapshot)
                except ConfigError as exc:  # reported against the -drive option, as QEMU
                    exc.option = exc.option or getattr(spec, "text", None) or None
                    raise
                at_close = getattr(system, "at_close", None)
                if at_close is not None:  # flushed and closed when the VM ends
                    at_close(image.close)
                return {"image": image}
        node = open_blockdev(list(getattr(system.config, "blockdevs", ())), drive_id)
        if node is not None:
            return {"image": node}
        raise ConfigError(f"Property 'virtio-blk-device.drive' can't find value '{drive_id}'")

    @property
    def sectors(self) -> int:
        """The capacity: an image whose size is no multiple of 512 ends in a partial sector
        that counts, read as zeros past the end of the file (QEMU rounds the size up)."""
        return -(-self.image.size // SECTOR)

    def host_features(self) -> int:
        features = 0
        for bit in (VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_GEOMETRY, VIRTIO_BLK_F_BLK_SIZE,
                    VIRTIO_BLK_F_SCSI, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_TOPOLOGY):
            features |= 1 << bit
        if self.config_wce:
            features |= 1 << VIRTIO_BLK_F_CONFIG_WCE
        if self.discard:
            features |= 1 << VIRTIO_BLK_F_DISCARD
        if self.write_zeroes:
            features |= 1 << VIRTIO_BLK_F_WRITE_ZEROES
        if self.image.read_only:
            features |= 1 << VIRTIO_BLK_F_RO
        return features

    def config(self) -> bytes:
        sectors = self.sectors
        cylinders, heads, per_track = guess_geometry(sectors)
        packed = _CONFIG.pack(
            sectors, 0, self.queue_size - 2,           # capacity, size_max, seg_max
            cylinders, heads, per_track, SECTOR,      # geometry, blk_size
            0, 0, 0, 0,                               # topology: exp, offset, min_io, opt_io
            self.state.writeback, 0, 1,               # writeback, unused0, num_queues
            MAX_DISCARD_SECTORS, 1, 1,                # discard: sectors, segments, alignment
            MAX_WRITE_ZEROES_SECTORS, 1, 0)           # write zeroes: sectors, segs, may_unmap
        return packed[:CONFIG_SIZE]

    def write_config(self, offset: int, data: bytes) -> None:
        # Only the writeback byte is writable (CONFIG_WCE); QEMU ignores the rest.
        if self.config_wce and offset <= WRITEBACK_OFFSET < offset + len(data):
            self.state.writeback = int(bool(data[WRITEBACK_OFFSET - offset]))

    def reset(self) -> None:
        super().reset()
        self.state = VirtioBlkState()

    def device_state(self) -> dict[str, Any]:
        # The capacity is the disk's, not state: it is there so that a restore onto a
        # different disk is refused.
        return {"writeback": self.state.writeback, "capacity": self.sectors}

    def prepare_device_state(self, r: StateReader) -> Applier:
        writeback = r.integer("writeback", 0, 1)
        capacity = r.integer("capacity")
        if capacity != self.sectors:
            raise r.fail("capacity", f"{capacity} sectors, the disk has {self.sectors}")

        def apply() -> None:
            self.state = VirtioBlkState(writeback=writeback)
        return apply

    def handle_queue(self, index: int) -> None:
        vq = self.queues[index]
        done = False
        while (elem := vq.pop()) is not None:
            status, _ = self._request(vq, elem)
            vq.write_in(elem, bytes((status,)), skip=elem.in_size - 1)
            # The used length is the whole writable size, whatever the status (QEMU's
            # virtio_blk_req_complete reports req->in_len).
            vq.push(elem, elem.in_size)
            done = True
        if done:
            self.notify(index)

    def _request(self, vq: Virtqueue, elem: VirtqElement) -> tuple[int, int]:
        """Run one request; returns (status, bytes written before the status byte)."""
        if elem.out_size < _HEADER.size or elem.in_size < 1:
            log.guest_error("virtio-blk: request without header or status byte")
            return VIRTIO_BLK_S_IOERR, 0
        kind, _, sector = _HEADER.unpack(vq.read_out(elem, _HEADER.size))
        data_in = elem.in_size - 1
        if kind == VIRTIO_BLK_T_IN:
            return self._read(vq, elem, sector, data_in)
        if kind == VIRTIO_BLK_T_OUT:
            return self._write(vq, elem, sector), 0
        if kind == VIRTIO_BLK_T_FLUSH:
            self.image.flush()
            return VIRTIO_BLK_S_OK, 0
        if (kind == VIRTIO_BLK_T_DISCARD and self.discard) or \
                (kind == VIRTIO_BLK_T_WRITE_ZEROES and self.write_zeroes):
            return self._discard_or_zeroes(vq, elem, kind), 0
        if kind == VIRTIO_BLK_T_GET_ID:
            ident = self.serial.encode()[:VIRTIO_BLK_ID_BYTES]
            ident += bytes(min(data_in, VIRTIO_BLK_ID_BYTES) - len(ident))
            return VIRTIO_BLK_S_OK, vq.write_in(elem, ident[:data_in])
        return VIRTIO_BLK_S_UNSUPP, 0

    def _in_range(self, sector: int, length: int) -> bool:
        if length % SECTOR or sector * SECTOR + length > self.sectors * SECTOR:
            log.guest_error(f"virtio-blk: request at sector {sector} of {length} bytes is "
                            f"outside the {self.image.size}-byte disk")
            return False
        return True

    def _read(self, vq: Virtqueue, elem: VirtqElement, sector: int,
              length: int) -> tuple[int, int]:
        if not self._in_range(sector, length):
            return VIRTIO_BLK_S_IOERR, 0
        try:
            # Straight into guest RAM: the last writable byte is the status.
            self.image.readinto(sector * SECTOR, vq.views(elem.in_, limit=length))
        except OSError:
            return VIRTIO_BLK_S_IOERR, 0
        return VIRTIO_BLK_S_OK, length

    def _write(self, vq: Virtqueue, elem: VirtqElement, sector: int) -> int:
        if self.image.read_only:
            return VIRTIO_BLK_S_IOERR
        length = elem.out_size - _HEADER.size
        if not self._in_range(sector, length):
            return VIRTIO_BLK_S_IOERR
        try:
            self.image.writefrom(sector * SECTOR, vq.views(elem.out, skip=_HEADER.size))
            if not self.state.writeback:
                self.image.flush()
        except OSError:
            return VIRTIO_BLK_S_IOERR
        return VIRTIO_BLK_S_OK

    def _discard_or_zeroes(self, vq: Virtqueue, elem: VirtqElement, kind: int) -> int:
        if elem.out_size - _HEADER.size != _SEGMENT.size:  # one segment at most (config)
            log.guest_error(f"virtio-blk: {elem.out_size - _HEADER.size} bytes of discard/"
                            "write-zeroes segments (one 16-byte segment allowed)")
            return VIRTIO_BLK_S_UNSUPP
        payload = vq.read_out(elem, _HEADER.size + _SEGMENT.size)[_HEADER.size:]
        sector, count, flags = _SEGMENT.unpack(payload)
        zeroes = kind == VIRTIO_BLK_T_WRITE_ZEROES
        allowed = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP if zeroes else 0
        limit = MAX_WRITE_ZEROES_SECTORS if zeroes else MAX_DISCARD_SECTORS
        if flags & ~allowed or count > limit:
            return VIRTIO_BLK_S_UNSUPP
        if not self._in_range(sector, count * SECTOR):
            return VIRTIO_BLK_S_IOERR
        if self.image.read_only:
            return VIRTIO_BLK_S_IOERR
        if zeroes:
            chunk = bytes(min(count * SECTOR, 1 << 20))
            offset, end = sector * SECTOR, (sector + count) * SECTOR
            try:
                while offset < end:
                    n = min(len(chunk), end - offset)
                    self.image.pwrite(offset, chunk[:n])
                    offset += n
            except OSError:
                return VIRTIO_BLK_S_IOERR
        return VIRTIO_BLK_S_OK


def _open_drive(props: Mapping[str, str], snapshot: bool = False) -> BlockImage:
    """Open a ``-drive`` (raw or qcow2) for a virtio-blk device; ``snapshot`` is the
    global ``-snapshot``."""
    return open_drive(props, snapshot)
