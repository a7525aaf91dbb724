"""Internal VM snapshots: HMP ``savevm``/``loadvm``/``delvm``/``info snapshots`` and QMP
``snapshot-save``/``snapshot-load``/``snapshot-delete``, as QEMU 7.2's migration/savevm.c and
block/snapshot.c do them.

Every writable disk takes part; each must be qcow2 (a writable raw disk refuses the command
with QEMU's message).  The VM state goes into the first of them (or the node ``vmstate``
names), in its VM state area after the virtual disk, written with kvmpy's own state stream
(:func:`kvmpy.migration.save_vm`).  A snapshot without a VM state (``qemu-img snapshot -c``)
is refused by ``loadvm`` as QEMU refuses it; :meth:`Qcow2Image.snapshot_goto` (``qemu-img
snapshot -a``) reverts a disk to it.  ``loadvm`` decodes and applies the VM state before the
disks are reverted, so a state kvmpy cannot read (QEMU's own stream, a damaged one) changes
nothing.

The QMP commands are jobs (QEMU's ``JOB_MANUAL_DISMISS`` jobs): ``JOB_STATUS_CHANGE`` events
``created``, ``running``, then ``waiting``, ``pending``, ``concluded`` (or ``aborting``,
``concluded`` with the error in ``query-jobs``), and ``null`` once ``job-dismiss``\\ ed.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvmpy.errors import KvmpyError

if TYPE_CHECKING:  # the image formats are imported where used: a VM without disks never needs them
    from kvmpy.block.base import BlockImage
    from kvmpy.block.qcow2 import Qcow2Image
    from kvmpy.block.qcow2_snapshot import Snapshot
    from kvmpy.system import System


@dataclass
class BlockDev:
    """A disk of the VM: ``name`` is the -drive id (QEMU's BlockBackend name, "" for a
    -blockdev node), ``node_name`` its node name ("" when it has none that QMP can use)."""

    name: str
    node_name: str
    image: BlockImage
    owner: Any = None

    @property
    def label(self) -> str:
        """QEMU's ``bdrv_get_device_or_node_name``."""
        return self.name or self.node_name

    @property
    def qcow2(self) -> Qcow2Image | None:
        """The image, when it can take snapshots (a writable qcow2 image)."""
        from kvmpy.block.qcow2 import Qcow2Image

        image = self.image
        return image if isinstance(image, Qcow2Image) and not image.read_only else None


def block_devices(system: System) -> list[BlockDev]:
    """The VM's disks in command-line order: every device with an ``image`` and a ``drive``
    property, found under the MMIO regions (virtio-mmio transports, PCI functions)."""
    found: list[BlockDev] = []
    seen: set[int] = set()
    stack: list[Any] = [region.device for region in system.bus.regions]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        image, drive = getattr(obj, "image", None), getattr(obj, "drive", None)
        if image is not None and hasattr(image, "writefrom") and isinstance(drive, str):
            found.append(_describe(system, drive, image, obj))
        for value in getattr(obj, "__dict__", {}).values():
            items = value.values() if isinstance(value, dict) else \
                value if isinstance(value, (list, tuple)) else (value,)
            stack.extend(item for item in items
                         if type(item).__module__.startswith("kvmpy.hw."))
    order = [spec.props.get("id", "") for spec in getattr(system.config, "drives", ())]
    found.sort(key=lambda dev: order.index(dev.name) if dev.name in order else len(order))
    return found


def _describe(system: System, drive: str, image: BlockImage, owner: Any) -> BlockDev:
    for spec in getattr(system.config, "drives", ()):
        if spec.props.get("id") == drive:
            return BlockDev(drive, spec.props.get("node-name", ""), image, owner)
    return BlockDev("", drive, image, owner)  # a -blockdev node


# -- the operations of migration/savevm.c ------------------------------------------------------


def _select(system: System, devices: list[str] | None) -> list[BlockDev]:
    """The disks taking part (QEMU's ``bdrv_all_get_snapshot_devices`` and
    ``bdrv_all_snapshots_includes_bs``): the named nodes, or every writable disk."""
    disks = block_devices(system)
    if devices is None:
        return [dev for dev in disks if not dev.image.read_only]
    if not devices:
        raise KvmpyError("At least one device is required for snapshot")
    chosen = []
    for name in devices:
        match = next((dev for dev in disks if dev.node_name and dev.node_name == name), None)
        if match is None:
            raise KvmpyError(f"No block device node '{name}'")
        chosen.append(match)
    return chosen


def _check_can_snapshot(disks: list[BlockDev]) -> None:
    for dev in disks:
        if dev.qcow2 is None:
            raise KvmpyError(f"Device '{dev.label}' is writable but does not support "
                             "snapshots")


def _vmstate_disk(disks: list[BlockDev], vmstate: str | None) -> Qcow2Image:
    """QEMU's ``bdrv_all_find_vmstate_bs``."""
    for dev in disks:
        if vmstate is not None and dev.node_name != vmstate:
            continue
        image = dev.qcow2
        if image is not None:
            return image
        if vmstate is not None:
            raise KvmpyError(f"vmstate block device '{vmstate}' does not support snapshots")
    if vmstate is not None:
        raise KvmpyError(f"vmstate block device '{vmstate}' does not exist")
    raise KvmpyError("no block device can store vmstate for snapshot")


def _has_everywhere(disks: list[BlockDev], name: str) -> bool:
    return all(dev.qcow2 is not None and dev.qcow2.snapshot_named(name) is not None
               for dev in disks)


def _delete_everywhere(disks: list[BlockDev], name: str) -> None:
    for dev in disks:
        image = dev.qcow2
        sn = image.snapshot_named(name) if image is not None else None
        if image is None or sn is None:
            continue
        try:
            image.snapshot_delete(sn)
        except OSError as exc:
            raise KvmpyError(f"Could not delete snapshot '{name}' on '{dev.label}': "
                             f"{exc.strerror or exc}") from None


def _drain(disks: list[BlockDev]) -> None:
    for dev in disks:
        drain = getattr(dev.owner, "drain", None)
        if callable(drain):
            drain()
        dev.image.flush()


def _migration() -> Any:
    try:
        import kvmpy.migration as migration
    except ImportError:
        raise KvmpyError("VM state saving is not available in this kvmpy") from None
    return migration


def save_snapshot(system: System, name: str | None, overwrite: bool,
                  vmstate: str | None = None, devices: list[str] | None = None) -> Snapshot:
    """QEMU's ``save_snapshot``: the VM stopped (``save-vm``), its state into the VM state
    disk, then a snapshot of every disk; the VM runs again if it ran."""
    disks = _select(system, devices)
    _check_can_snapshot(disks)
    if name:
        if overwrite:
            _delete_everywhere(disks, name)
        elif disks and _has_everywhere(disks, name):
            raise KvmpyError(f"Snapshot '{name}' already exists in one or more devices")
    target = _vmstate_disk(disks, vmstate)
    migration = _migration()
    was_running = system.running
    system.pause("save-vm")
    try:
        now = time.time()
        tag = name or time.strftime("vm-%Y%m%d%H%M%S", time.localtime(now))
        clock_ns = system.time_source.read() * 100
        _drain(disks)
        raw = VmStateWriter(target)
        out = io.BufferedWriter(raw, 1 << 20)
        try:
            migration.save_vm(system, out)
            out.flush()
        except (OSError, migration.VmStateError) as exc:
            raise KvmpyError(f"Error while writing VM state: {exc}") from None
        from kvmpy.block.qcow2_snapshot import NO_ICOUNT

        made: Snapshot | None = None
        for dev in disks:
            image = dev.qcow2
            assert image is not None
            try:
                image.flush()
                sn = image.snapshot_create(tag, raw.pos if image is target else 0,
                                           clock_ns, NO_ICOUNT)
            except OSError:
                _delete_everywhere(disks, tag)
                raise KvmpyError(f"Could not create snapshot '{tag}' on "
                                 f"'{dev.label}'") from None
            if image is target:
                made = sn
        assert made is not None
        return made
    finally:
        if was_running:
            system.resume()


def load_snapshot(system: System, name: str, vmstate: str | None = None,
                  devices: list[str] | None = None) -> None:
    """QEMU's ``load_snapshot`` (the caller has stopped the VM): the VM state is decoded
    and applied first, then every disk goes back to the snapshot."""
    disks = _select(system, devices)
    _check_can_snapshot(disks)
    if not _has_everywhere(disks, name):
        raise KvmpyError(f"Snapshot '{name}' does not exist in one or more devices")
    target = _vmstate_disk(disks, vmstate)
    sn = target.snapshot_named(name)
    if sn is None:
        raise KvmpyError(f"Snapshot '{name}' does not exist in one or more devices")
    if sn.vm_state_size == 0:  # QEMU's text, double space included
        raise KvmpyError("This is a disk-only snapshot. Revert to it  offline using "
                         "qemu-img")
    migration = _migration()
    _drain(disks)
    inp = io.BufferedReader(VmStateReader(target, sn), 1 << 20)
    try:
        migration.load_vm(system, inp)
    except (OSError, migration.VmStateError) as exc:
        raise KvmpyError(f"Error while loading VM state: {exc}") from None
    for dev in disks:
        image = dev.qcow2
        assert image is not None
        try:
            image.snapshot_goto(image.snapshot_named(name) or name)
        except OSError as exc:
            raise KvmpyError(f"Could not load snapshot '{name}' on '{dev.label}': Failed "
                             f"to load snapshot: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):  # the snapshot keeps the VM state; no second copy
        target.discard_vmstate()


def delete_snapshot(system: System, name: str, devices: list[str] | None = None) -> None:
    disks = _select(system, devices)
    _check_can_snapshot(disks)
    _delete_everywhere(disks, name)


# -- the VM state area as a stream -------------------------------------------------------------


_ZEROS = memoryview(bytes(1 << 21))  # the largest qcow2 cluster


class VmStateWriter(io.RawIOBase):
    """Writes the VM state area of ``image`` from its start; clusters of zeros are left
    unallocated (the area is emptied first, so they read as zeros)."""

    def __init__(self, image: Qcow2Image) -> None:
        super().__init__()
        self.image = image
        self.pos = 0
        image.discard_vmstate()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        """Runs of clusters with data in one write each; clusters of zeros skipped."""
        view = memoryview(data).cast("B")
        cs = self.image.cs
        done = 0
        run = -1  # where the current run of data starts in ``view``
        while done < len(view):
            n = min(cs - ((self.pos + done) % cs), len(view) - done)
            if view[done:done + n] != _ZEROS[:n]:
                run = done if run < 0 else run
            elif run >= 0:
                self.image.write_vmstate(self.pos + run, view[run:done])
                run = -1
            done += n
        if run >= 0:
            self.image.write_vmstate(self.pos + run, view[run:])
        self.pos += len(view)
        return len(view)


class VmStateReader(io.RawIOBase):
    """Reads the VM state of snapshot ``sn`` (through its own L1 table)."""

    def __init__(self, image: Qcow2Image, sn: Snapshot) -> None:
        super().__init__()
        self.image, self.sn = image, sn
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.sn.vm_state_size}
        self.pos = max(0, base[whence] + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self.sn.vm_state_size - self.pos))
        if n:
            self.image.readinto_vmstate(self.pos, view[:n], self.sn)
            self.pos += n
        return n


# -- info snapshots ----------------------------------------------------------------------------


def size_to_str(value: int) -> str:
    """QEMU's ``size_to_str``: three significant digits and a binary prefix."""
    import math

    exponent = math.frexp(value / (1000.0 / 1024.0))[1]
    shift = int((exponent - 1) / 10) * 10
    prefix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][shift // 10]
    return f"{value / (1 << shift):0.3g} {prefix}B"


def snapshot_line(sn: Snapshot | None, id_str: str | None = None) -> str:
    """QEMU's ``bdrv_snapshot_dump``: the header line for None."""
    from kvmpy.block.qcow2_snapshot import NO_ICOUNT

    if sn is None:
        return f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}{'ICOUNT':>11}"
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sn.date_sec))
    secs = sn.vm_clock_nsec // 1_000_000_000
    clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}." \
            f"{sn.vm_clock_nsec // 1_000_000 % 1000:03d}"
    icount = "" if sn.icount == NO_ICOUNT else str(sn.icount)
    ident = sn.id_str if id_str is None else id_str
    return f"{ident:<9} {sn.name:<16} {size_to_str(sn.vm_state_size):>8}{date:>20}" \
           f"{clock:>13}{icount:>11}"


def info_snapshots(system: System) -> str:
    """HMP ``info snapshots`` (QEMU's ``hmp_info_snapshots``)."""
    disks = block_devices(system)
    try:
        target = _vmstate_disk([dev for dev in disks if not dev.image.read_only], None)
    except KvmpyError as exc:
        return str(exc)
    partial: list[tuple[str, list[Snapshot]]] = []
    for dev in disks:
        if dev.qcow2 is not None and dev.qcow2.snapshots:
            partial.append((dev.name, list(dev.qcow2.snapshots)))
    if not partial:
        return "There is no snapshot available."
    included = [dev for dev in disks if not dev.image.read_only]
    everywhere = [sn for sn in target.snapshots if _has_everywhere(included, sn.name)]
    names = {sn.name for sn in everywhere}
    lines = ["List of snapshots present on all disks:"]
    if everywhere:
        lines.append(snapshot_line(None))
        lines += [snapshot_line(sn, "--") for sn in everywhere]
    else:
        lines.append("None")
    for label, snapshots in partial:
        rest = [sn for sn in snapshots if sn.name not in names]
        if rest:
            lines += ["", f"List of partial (non-loadable) snapshots on '{label}':",
                      snapshot_line(None)]
            lines += [snapshot_line(sn) for sn in rest]
    return "\n".join(lines)


# -- QMP jobs ----------------------------------------------------------------------------------

_JOB_ID = re.compile(r"^[A-Za-z][A-Za-z0-9._-]*$")


@dataclass
class Job:
    id: str
    type: str
    status: str = "created"
    progress: int = 0
    error: str | None = None

    def info(self) -> dict[str, Any]:
        """One ``query-jobs`` element, in QEMU's member order."""
        out: dict[str, Any] = {"current-progress": self.progress, "status": self.status,
                               "total-progress": 1, "type": self.type, "id": self.id}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class Jobs:
    items: list[Job] = field(default_factory=list)


_JOBS: weakref.WeakKeyDictionary[Any, Jobs] = weakref.WeakKeyDictionary()


def _jobs(system: System) -> Jobs:
    jobs = _JOBS.get(system)
    if jobs is None:
        jobs = _JOBS[system] = Jobs()
    return jobs


def _set_status(system: System, job: Job, status: str) -> None:
    job.status = status
    system.emit("JOB_STATUS_CHANGE", {"status": status, "id": job.id})


def start_job(system: System, job_id: str, kind: str, args: dict[str, Any]
              ) -> dict[str, Any]:
    """``snapshot-save``/``-load``/``-delete``: the job is created and runs after the
    command has returned, on the main loop (as QEMU's bottom half)."""
    jobs = _jobs(system)
    if not _JOB_ID.match(job_id):
        raise KvmpyError(f"Invalid job ID '{job_id}'")
    if any(job.id == job_id for job in jobs.items):
        raise KvmpyError(f"Job ID '{job_id}' already in use")
    job = Job(job_id, kind)
    jobs.items.insert(0, job)
    _set_status(system, job, "created")
    _set_status(system, job, "running")
    system.call_soon(lambda: _run_job(system, job, args))
    return {}


def _run_job(system: System, job: Job, args: dict[str, Any]) -> None:
    tag, devices = str(args["tag"]), list(args["devices"])
    try:
        if job.type == "snapshot-save":
            save_snapshot(system, tag, False, args["vmstate"], devices)
        elif job.type == "snapshot-load":
            was_running = system.running
            system.pause("restore-vm")
            load_snapshot(system, tag, args["vmstate"], devices)
            if was_running:
                system.resume()
        else:
            delete_snapshot(system, tag, devices)
    except KvmpyError as exc:
        job.progress, job.error = 1, str(exc)
        _set_status(system, job, "aborting")
        _set_status(system, job, "concluded")
        return
    job.progress = 1
    for status in ("waiting", "pending", "concluded"):
        _set_status(system, job, status)


def query_jobs(system: System) -> list[dict[str, Any]]:
    return [job.info() for job in _jobs(system).items]


def job_dismiss(system: System, job_id: str) -> dict[str, Any]:
    jobs = _jobs(system)
    job = next((job for job in jobs.items if job.id == job_id), None)
    if job is None:
        raise KvmpyError("Job not found")
    if job.status != "concluded":
        raise KvmpyError(f"Job '{job_id}' in state '{job.status}' cannot accept command "
                         "verb 'dismiss'")
    jobs.items.remove(job)
    _set_status(system, job, "null")
    return {}


# -- HMP ---------------------------------------------------------------------------------------


def hmp_savevm(system: System, args: list[str]) -> str:
    save_snapshot(system, args[0] if args else None, True)
    return ""


def hmp_loadvm(system: System, args: list[str]) -> str:
    if not args:
        raise KvmpyError("Parameter 'name' is missing")
    was_running = system.running
    system.pause("restore-vm")
    load_snapshot(system, args[0])
    if was_running:
        system.resume()
    return ""


def hmp_delvm(system: System, args: list[str]) -> str:
    if not args:
        raise KvmpyError("Parameter 'name' is missing")
    delete_snapshot(system, args[0])
    return ""
