"""virtio-balloon (device id 5; virtio spec §5.5), QEMU's ``virtio-balloon-device``.

The host sets a target (QMP ``balloon``: the guest's RAM size it wants, in bytes) as
``num_pages`` in the config space and raises the configuration interrupt; the guest driver
inflates (gives 4 KiB pages back: their PFNs on the inflate queue) or deflates until its
``actual`` count matches, and writes ``actual`` back.  Pages the guest gave are returned to
the host (``madvise(MADV_DONTNEED)``: they read as zeros when the guest takes them back).
``query-balloon`` reports ``RAM size - actual``; a change of ``actual`` sends
``BALLOON_CHANGE``.  The statistics queue (``VIRTIO_BALLOON_F_STATS_VQ``) keeps the guest's
last report.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvmpy.errors import KvmpyError
from kvmpy.hw.virtio.device import VirtioDevice
from kvmpy.hw.virtio.vmstate import U32, U64, Applier, StateReader
from kvmpy.qom import Property, register_type

if TYPE_CHECKING:
    from kvmpy.system import System

VIRTIO_ID_BALLOON = 5
VIRTIO_BALLOON_F_STATS_VQ = 1
VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 2
VIRTIO_BALLOON_F_PAGE_POISON = 4
PFN_SHIFT = 12
PAGE = 1 << PFN_SHIFT
QUEUE_SIZE = 128
INFLATE, DEFLATE, STATS = 0, 1, 2
_STAT = struct.Struct("<HQ")
STAT_NAMES = {0: "stat-swap-in", 1: "stat-swap-out", 2: "stat-major-faults",
              3: "stat-minor-faults", 4: "stat-free-memory", 5: "stat-total-memory",
              6: "stat-available-memory", 7: "stat-disk-caches", 8: "stat-htlb-pgalloc",
              9: "stat-htlb-pgfail"}
"""The statistics tags of the spec, by QEMU's names."""


@dataclass
class VirtioBalloonState:
    num_pages: int = 0
    """The target the host set: pages the guest should hold in the balloon."""
    actual: int = 0
    """Pages the guest says are in the balloon."""
    poison_val: int = 0
    stats: dict[str, int] = field(default_factory=dict)


@register_type("virtio-balloon-device", "virtio-device", description="virtio memory balloon")
class VirtioBalloon(VirtioDevice):
    category = "Misc devices"
    device_id = VIRTIO_ID_BALLOON
    queue_sizes = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)

    deflate_on_oom = Property(bool, False, "on/off", name="deflate-on-oom")
    free_page_reporting = Property(bool, False, "on/off (not built: only off)",
                                   name="free-page-reporting")
    free_page_hint = Property(bool, False, "on/off (not built: only off)",
                              name="free-page-hint")
    page_poison = Property(bool, True, "on/off", name="page-poison")
    guest_stats_polling_interval = Property(int, 0, "seconds between statistics requests "
                                            "(kvmpy keeps the guest's last report)",
                                            name="guest-stats-polling-interval")

    def __init__(self, system: Any = None, **props: object) -> None:
        super().__init__()
        self.set_properties(props)
        if self.free_page_reporting or self.free_page_hint:
            raise KvmpyError("free page reporting and hinting are not built in kvmpy's "
                             "virtio-balloon")
        self.system = system
        self.state = VirtioBalloonState()
        self._stats_elem: Any = None

    @classmethod
    def backends(cls, system: Any, props: Any) -> dict[str, Any]:
        return {"system": system}

    # -- the guest's side --------------------------------------------------------------------

    def host_features(self) -> int:
        features = 1 << VIRTIO_BALLOON_F_STATS_VQ
        if self.deflate_on_oom:
            features |= 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM
        if self.page_poison:
            features |= 1 << VIRTIO_BALLOON_F_PAGE_POISON
        return features

    def config(self) -> bytes:
        data = struct.pack("<II", self.state.num_pages, self.state.actual)
        if self.page_poison:
            data += struct.pack("<II", 0, self.state.poison_val)
        return data

    def write_config(self, offset: int, data: bytes) -> None:
        raw = bytearray(self.config())
        if offset < 0 or offset + len(data) > len(raw):
            return
        raw[offset:offset + len(data)] = data
        _, actual = struct.unpack_from("<II", raw)
        if self.page_poison:
            self.state.poison_val = struct.unpack_from("<I", raw, 12)[0]
        if actual != self.state.actual:
            self.state.actual = actual
            if self.system is not None:
                self.system.emit("BALLOON_CHANGE", {"actual": self.logical_ram()})

    def handle_queue(self, index: int) -> None:
        vq = self.queues[index]
        if index == STATS:
            self._take_stats()
            return
        used = False
        while (elem := vq.pop()) is not None:
            data = vq.read_out(elem)
            if index == INFLATE:
                self._discard([pfn for (pfn,) in struct.iter_unpack("<I", data[:len(data) & ~3])])
            vq.push(elem, 0)
            used = True
        if used:
            self.notify(index)

    def _take_stats(self) -> None:
        vq = self.queues[STATS]
        while (elem := vq.pop()) is not None:
            data = vq.read_out(elem)
            for tag, value in _STAT.iter_unpack(data[:len(data) - len(data) % _STAT.size]):
                name = STAT_NAMES.get(tag)
                if name is not None:
                    self.state.stats[name] = value
            self._stats_elem = elem  # the guest refills it when asked; kvmpy keeps it

    def _discard(self, pfns: list[int]) -> None:
        """Give the pages back to the host (they read as zeros afterwards)."""
        ram = getattr(self.system, "ram", None)
        if ram is None:
            return
        for pfn in pfns:
            gpa = pfn << PFN_SHIFT
            if ram.contains(gpa, PAGE):
                _madvise_dontneed(ram.host_address + gpa - ram.base, PAGE)

    def prepare_device_state(self, r: StateReader) -> Applier:
        """A saved balloon: the target, the guest's count, the poison value and the last
        statistics (the statistics buffer the guest lent stays with the source: the guest
        sends a new report when it is asked for one)."""
        num_pages = r.integer("num_pages", 0, U32)
        actual = r.integer("actual", 0, U32)
        poison_val = r.integer("poison_val", 0, U32)
        stats = r.reader("stats")
        values = {}
        for name in stats.state:
            if name not in STAT_NAMES.values():
                raise stats.fail(name, "unknown statistic")
            values[name] = stats.integer(name, 0, U64)

        def apply() -> None:
            self.state = VirtioBalloonState(num_pages, actual, poison_val, values)
            self._stats_elem = None
        return apply

    def reset(self) -> None:
        super().reset()
        target = self.state.num_pages
        self.state = VirtioBalloonState(num_pages=target)
        self._stats_elem = None

    # -- the host's side ---------------------------------------------------------------------

    def ram_size(self) -> int:
        ram = getattr(self.system, "ram", None)
        return int(ram.size) if ram is not None else 0

    def logical_ram(self) -> int:
        return self.ram_size() - (int(self.state.actual) << PFN_SHIFT)

    def set_target(self, target: int) -> None:
        target = min(target, self.ram_size())
        self.state.num_pages = (self.ram_size() - target) >> PFN_SHIFT
        self.config_changed()


_libc: Any = None


def _madvise_dontneed(address: int, length: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # no find_library: -sandbox spawn=deny
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _libc.madvise(address, length, getattr(mmap, "MADV_DONTNEED", 4))


# -- QMP ---------------------------------------------------------------------------------------

def find_balloon(system: System) -> VirtioBalloon:
    for device in getattr(system.machine, "plugged", ()):
        inner = device if isinstance(device, VirtioBalloon) else getattr(device, "device", None)
        if isinstance(inner, VirtioBalloon):
            return inner
    raise BalloonNotActive("No balloon device has been activated")


class BalloonNotActive(KvmpyError):
    """QEMU's DeviceNotActive error class."""


def qmp_balloon(system: System, value: int) -> dict[str, Any]:
    balloon = find_balloon(system)
    if value <= 0:
        raise KvmpyError("Parameter 'target' expects a size")
    balloon.set_target(value)
    return {}


def qmp_query_balloon(system: System) -> dict[str, Any]:
    return {"actual": find_balloon(system).logical_ram()}
