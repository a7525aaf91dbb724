"""Saving and loading a whole VM: :func:`save_vm`, :func:`load_vm`, :class:`LiveSaver`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import kvmpy
from kvmpy.memory import PAGE_SIZE, bitmap_pages
from kvmpy.migration import codec, machine, ram
from kvmpy.migration.errors import VmStateError
from kvmpy.migration.stream import (
    FORMAT_VERSION,
    TAG_END,
    TAG_HEADER,
    TAG_RAM,
    TAG_STATE,
    StreamReader,
    StreamWriter,
)

if TYPE_CHECKING:
    from kvmpy.system import System


@dataclass
class SaveStats:
    """What a save or a live migration sent."""

    ram_bytes: int = 0
    """Bytes of page data (4 KiB per non-zero page sent)."""
    total_bytes: int = 0
    """Bytes of the whole stream."""
    pages: int = 0
    """Pages sent (zero pages included as a bit)."""
    duration_s: float = 0.0


@dataclass
class LoadInfo:
    """What :func:`load_vm` read besides the state: the header's fields."""

    header: dict[str, Any]

    @property
    def args(self) -> list[str] | None:
        """The command-line arguments the saved VM was created with (when saved)."""
        args = self.header.get("args")
        if isinstance(args, list) and all(isinstance(a, str) for a in args):
            return list(args)
        return None


_PAUSED_STATES = ("prelaunch", "paused", "shutdown", "internal-error", "guest-panicked",
                  "debug", "finish-migrate", "postmigrate", "inmigrate", "save-vm",
                  "restore-vm", "suspended")


def _require_stopped(system: System, what: str) -> None:
    if system.status == "running":
        raise VmStateError(f"vmstate: {what} needs the VM paused")


def _header(system: System, args: Sequence[str] | None,
            info: dict[str, Any] | None = None) -> bytes:
    accel = system.accel
    return codec.encode({
        "info": dict(info or {}),
        "format": FORMAT_VERSION,
        "kvmpy": kvmpy.__version__,
        "fingerprint": machine.fingerprint(system),
        "accel": getattr(accel, "name", None),
        "args": list(args) if args is not None else None,
        "saved_at_ns": time.time_ns(),
    })


def _machine_state(system: System) -> bytes:
    """The encoded machine state of a paused VM, its devices drained first."""
    with system.lock:
        machine.drain(system)
        state = machine.collect(system)
    try:
        return codec.encode(state)
    except TypeError as exc:  # a device's get_state gave something outside the model
        raise VmStateError(f"vmstate: a state value cannot be saved: {exc}") from exc


def save_vm(system: System, out: BinaryIO, *, args: Sequence[str] | None = None,
            info: dict[str, Any] | None = None) -> SaveStats:
    """Write the whole state of ``system`` (paused) to ``out``: header, RAM pages that are
    not zero, devices (drained first), harts, SBI, clock, end.  ``args``: the command line
    that rebuilds the VM, kept in the header for :meth:`kvmpy.VM.restore`; ``info``: other
    state values the caller wants in the header (:func:`read_header` gives them back).

    Written to a regular file, RAM data is page-aligned with zero pages as holes (a restore
    maps it); to any other stream it is packed.
    """
    start = time.perf_counter()
    _require_stopped(system, "a save")
    if system.ram is None:
        raise VmStateError("vmstate: the VM has no RAM yet")
    writer = StreamWriter(out)
    stats = SaveStats()
    state = _machine_state(system)
    writer.start()
    writer.record(TAG_HEADER, _header(system, args, info))
    pages = ram.nonzero_pages(system.ram)
    if writer.sparse:
        stats.pages, stats.ram_bytes = ram.write_sparse(writer, system.ram, pages)
    else:
        stats.pages, stats.ram_bytes = ram.write_pages(writer, system.ram, pages,
                                                       zero_check=False)
    writer.record(TAG_STATE, state)
    writer.end()
    stats.total_bytes = writer.written
    stats.duration_s = time.perf_counter() - start
    return stats


def read_header(inp: BinaryIO) -> dict[str, Any]:
    """The header of a stream (after its start), without loading anything."""
    reader = StreamReader(inp)
    reader.start()
    tag, _, length, head = reader.record_head()
    if tag != TAG_HEADER:
        raise VmStateError("vmstate: corrupt stream (no header record)")
    header = codec.decode(reader.payload(tag, length, head))
    if not isinstance(header, dict):
        raise VmStateError("vmstate: corrupt header")
    return header


def load_vm(system: System, inp: BinaryIO, *, map_ram: bool = False,
            verify: bool = True) -> LoadInfo:
    """Load a stream of :func:`save_vm` or :class:`LiveSaver` into ``system`` (created with
    the same configuration, prelaunch or paused).

    Everything is read and checked first (header, fingerprint, every record's checksum, the
    device and hart states); only then is RAM replaced and the state applied, so a bad
    stream leaves the VM untouched.  ``map_ram``: ``inp`` is a regular file whose RAM is
    mapped copy-on-write instead of read (``verify=False`` then skips reading it for its
    checksum).
    """
    _require_stopped(system, "a load")
    if system.ram is None or system.accel is None:
        raise VmStateError("vmstate: the VM is not created yet")
    reader = StreamReader(inp)
    reader.start()
    tag, _, length, head = reader.record_head()
    if tag != TAG_HEADER:
        raise VmStateError("vmstate: corrupt stream (no header record)")
    header = codec.decode(reader.payload(tag, length, head))
    if not isinstance(header, dict):
        raise VmStateError("vmstate: corrupt header")
    optional = machine.check_fingerprint(header.get("fingerprint"), system)
    map_fd: int | None = None
    if map_ram:
        try:
            map_fd = inp.fileno()
        except (AttributeError, OSError, ValueError):
            map_fd = None
    pending = ram.PendingRam()
    state: dict[str, Any] | None = None
    while True:
        tag, flags, length, head = reader.record_head()
        if tag == TAG_RAM:
            ram.read_ram_record(reader, system.ram, flags, length, head, pending, map_fd,
                                verify)
        elif tag == TAG_STATE:
            if state is not None:
                raise VmStateError("vmstate: corrupt stream (two state records)")
            state = machine.check(codec.decode(reader.payload(tag, length, head)), system,
                                  optional)
        elif tag == TAG_END:
            payload = reader.payload(tag, length, head)
            if len(payload) != 8 or int.from_bytes(payload, "little") != reader.records:
                raise VmStateError("vmstate: corrupt stream (record count)")
            break
        elif tag == TAG_HEADER:
            raise VmStateError("vmstate: corrupt stream (second header)")
        else:
            # an unknown record of a compatible writer: skipped after its checksum
            reader.payload(tag, length, head)
    if state is None:
        raise VmStateError("vmstate: the stream has no machine state")
    undo = machine.apply_devices(state, system)
    try:
        with system.lock:
            pending.apply(system.ram, map_fd)
    except BaseException:
        machine.undo_all(undo)
        raise
    machine.apply_harts(state, system)
    return LoadInfo(header)


T = TypeVar("T")
LOOP_TIMEOUT_S = 60.0


def on_main_loop(system: System, fn: Callable[[], T]) -> T:
    """``fn()`` run on the VM's main loop (here when this is it, or when there is none) and
    its result: the loop is where the run state changes, so a brief hold of the vCPUs there
    cannot interleave with a ``stop``/``cont``."""
    loop = system.loop
    if (loop is None or loop.is_closed()
            or threading.get_ident() == getattr(system, "_loop_thread", None)):
        return fn()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    loop.call_soon_threadsafe(call)
    try:
        return future.result(LOOP_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise VmStateError("vmstate: the VM's main loop did not answer") from None


@contextlib.contextmanager
def vcpus_held(system: System) -> Iterator[None]:
    """No vCPU is inside ``run()`` meanwhile (a running VM's vCPUs are parked for a moment,
    its run state unchanged): for collecting the interpreter's dirty log.  Use it on the
    main loop (:func:`on_main_loop`)."""
    driver = system.driver
    accel = system.accel
    if (driver is None or system.status != "running"
            or (accel is not None and accel.name == "kvm")):  # KVM's log needs no pause
        yield
        return
    driver.pause()
    try:
        yield
    finally:
        if system.status == "running":
            driver.resume()


class LiveSaver:
    """Pre-copy live save of a running VM to ``out`` (read by the same :func:`load_vm`).

    ``begin()`` writes the header and turns dirty logging on; each ``iterate()`` sends the
    pages dirtied since the previous pass (the first pass: every non-zero page);
    ``complete()``, with the VM paused by the caller, sends the rest and the device and
    hart state; ``cancel()`` turns logging off and leaves the source as it was.  The methods
    may be called from any thread (a migration thread): the vCPUs are held and the dirty log
    collected on the VM's main loop, which must therefore not wait for that thread.
    """

    def __init__(self, system: System, out: BinaryIO, *,
                 args: Sequence[str] | None = None) -> None:
        self.system = system
        self.writer = StreamWriter(out)
        self.writer.sparse = False  # a stream: RAM records may repeat, the last one wins
        self.args = args
        self.stats = SaveStats()
        self.iterations = 0
        self.remaining = 0
        """Pages the last pass sent: an estimate of what the next one will send."""
        self._started = 0.0
        self._first = True
        self._logging = False

    @property
    def remaining_bytes(self) -> int:
        return self.remaining * PAGE_SIZE

    def begin(self) -> None:
        system = self.system
        if system.ram is None or system.accel is None:
            raise VmStateError("vmstate: the VM is not created yet")
        self._started = time.perf_counter()
        self.writer.start()
        self.writer.record(TAG_HEADER, _header(system, self.args))
        accel_log: Any = system.accel
        if not hasattr(accel_log, "collect_dirty"):
            from kvmpy.accel.kvm.dirty import accel_dirty_log

            accel_log = accel_dirty_log(system.accel, system.ram)
        ram_ = system.ram

        def start() -> None:
            with vcpus_held(system):
                ram_.start_dirty_log(accel_log)

        on_main_loop(system, start)
        self._logging = True

    def _pass(self) -> int:
        system = self.system
        assert system.ram is not None
        ram_ = system.ram

        def collect() -> bytes:
            with vcpus_held(system):
                return ram_.collect_dirty()

        bitmap = on_main_loop(system, collect)
        if self._first:
            self._first = False
            pages = ram.nonzero_pages(system.ram)
            zero_check = False
        else:
            pages = bitmap_pages(bitmap, system.ram.pages)
            zero_check = True
        before = self.writer.written
        sent, data = ram.write_pages(self.writer, system.ram, pages, zero_check)
        self.stats.pages += sent
        self.stats.ram_bytes += data
        self.remaining = sent
        self.iterations += 1
        return self.writer.written - before

    def iterate(self) -> int:
        """Send the pages dirtied since the last pass; returns the bytes sent."""
        if not self._logging:
            raise VmStateError("vmstate: live save not begun")
        sent = self._pass()
        return sent

    def complete(self) -> SaveStats:
        """The VM is paused: the last dirty pages, the machine state, the end record."""
        system = self.system
        _require_stopped(system, "completing a live save")
        if not self._logging:
            raise VmStateError("vmstate: live save not begun")
        state = _machine_state(system)
        self._pass()
        self._stop_logging()
        self.writer.record(TAG_STATE, state)
        self.writer.end()
        self.remaining = 0
        self.stats.total_bytes = self.writer.written
        self.stats.duration_s = time.perf_counter() - self._started
        return self.stats

    def cancel(self) -> None:
        """Dirty logging off; the source VM goes on as before."""
        self._stop_logging()

    def _stop_logging(self) -> None:
        system, ram_ = self.system, self.system.ram
        if self._logging and ram_ is not None:
            def stop() -> None:
                with vcpus_held(system):
                    ram_.stop_dirty_log()

            on_main_loop(system, stop)
        self._logging = False


def _replace(tmp: str, path: str) -> None:
    """``os.replace``, the old file's blocks freed on a thread of their own: an open file
    descriptor keeps its inode until closed (freeing a large file takes the filesystem
    milliseconds that a save need not wait for)."""
    try:
        old = os.open(path, os.O_RDONLY)
    except OSError:
        old = -1
    try:
        os.replace(tmp, path)
    finally:
        if old >= 0:
            threading.Thread(target=os.close, args=(old,), name="vmstate-unlink",
                             daemon=True).start()


def save_file(system: System, path: str | os.PathLike[str], *,
              args: Sequence[str] | None = None,
              info: dict[str, Any] | None = None) -> SaveStats:
    """:func:`save_vm` to ``path`` (written beside it, then renamed into place)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            stats = save_vm(system, f, args=args, info=info)
        _replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise VmStateError(f"vmstate: cannot write '{path}': "
                               f"{exc.strerror or exc}") from exc
        raise
    return stats
