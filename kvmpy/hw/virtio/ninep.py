"""virtio-9p (a shared host directory, device id 9; virtio spec §5.11), QEMU 7.2's
``virtio-9p-device`` (hw/9pfs/virtio-9p-device.c).

One queue (``requestq``, 128 entries as QEMU's MAX_REQ).  Each request is one 9P2000.L
T-message in the device-readable buffers and room for the R-message in the writable ones;
the feature VIRTIO_9P_MOUNT_TAG is always offered and the config space is ``tag_len`` (u16)
followed by the mount tag, without a terminating NUL.  The file server is
:class:`kvmpy.fs.server.Server`, one per device, on the ``-fsdev`` the ``fsdev`` property names.

Threads: file-system calls can take long (a large read, a slow disk), so requests are served
off the vCPU thread.  A queue notification (vCPU thread, big lock held) only wakes the
device's worker thread.  The worker, one per device, takes one request at a time: under the
big lock it pops the chain and copies the request out of guest RAM; without the lock it asks
the server; under the lock again it writes the reply, returns the chain and raises the
interrupt.  Requests are therefore answered in order, so a Tflush always finds the request it
names already answered.  A device reset while the server works makes the worker drop that
reply (the ring it belonged to is gone) and reset the server before the next request; close
stops the worker.

Guest mistakes, in QEMU's words, stop the device until reset (``virtio_error``): a request
without room for a reply header, a request shorter than a header, a reply that does not fit
the buffers the guest posted.  A request is read up to the server's largest msize; what the
guest sends beyond that never leaves guest RAM.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy import log
from kvmpy.errors import ConfigError
from kvmpy.hw.virtio.device import VirtioDevice
from kvmpy.hw.virtio.virtqueue import VirtqElement, Virtqueue, VirtqueueError
from kvmpy.hw.virtio.vmstate import Applier, StateReader
from kvmpy.qom import Property, register_type

if TYPE_CHECKING:
    from kvmpy.fs.fsdev import FsDev
    from kvmpy.fs.server import Server

VIRTIO_ID_9P = 9
VIRTIO_9P_MOUNT_TAG = 0
QUEUE_SIZE = 128
"""QEMU's MAX_REQ: the queue's size and the most requests in flight."""
MAX_TAG_LEN = 32
"""QEMU's MAX_TAG_LEN: a mount tag has at most 31 bytes."""
HEADER = 7
"""size[4] type[1] tag[2]: the smallest 9P message."""
MAX_MSIZE = 512 * 1024
"""The largest msize the server agrees to; requests are read up to this many bytes."""
RLERROR = 7
TREAD = 116
JOIN_TIMEOUT = 5.0
"""Seconds close waits for a worker busy in a host call before leaving it behind."""
DRAIN_TIMEOUT = 30.0
"""Seconds drain waits for the request in flight before giving up (logged)."""


@dataclass
class VirtioNinePState:
    """No guest-visible state beyond the queue and the server's session (QEMU migrates
    none: a mounted 9P export blocks migration there; kvmpy carries the session, see
    :mod:`kvmpy.fs.snapshot`)."""


@register_type("virtio-9p-device", "virtio-device", description="virtio 9P file system")
class VirtioNineP(VirtioDevice):
    category = "Storage devices"
    device_id = VIRTIO_ID_9P
    queue_sizes = (QUEUE_SIZE,)
    state: VirtioNinePState

    mount_tag = Property(str, "", "a string (the tag the guest mounts)", name="mount_tag")
    fsdev = Property(str, "", "ID of the -fsdev to export")

    def __init__(self, server: Server | None = None,
                 lock: threading.RLock | None = None,
                 at_close: Callable[[Callable[[], None]], None] | None = None,
                 **props: object) -> None:
        """``server`` serves the export (made from the ``-fsdev`` by :meth:`backends`);
        ``lock`` is the big lock (device calls from other threads take it); ``at_close(fn)``
        asks the system to call ``fn`` when it closes."""
        super().__init__()
        self.set_properties(props)
        self.server = server
        self.lock: threading.RLock = lock if lock is not None else threading.RLock()
        self.state = VirtioNinePState()
        self._tag = self.mount_tag.encode()
        self._wake = threading.Condition(threading.Lock())
        self._pending = False
        self._stopping = False
        self._generation = 0
        """Bumped by every reset (under the big lock): a reply to an older one is dropped."""
        self._worker: threading.Thread | None = None
        self._direct = False
        """The worker is reading a file straight into guest buffers (without the big lock):
        a reset waits for that to end, as QEMU's reset waits for requests in flight."""
        self._busy = False
        """A notify asked the worker for work it has not finished (big lock)."""
        self._idle = threading.Condition(self.lock)
        """Signalled (big lock) when the worker runs out of requests: :meth:`drain`."""
        self.served = 0
        """Requests answered since creation (for tests and ``info``)."""
        if at_close is not None:
            at_close(self.close)

    @classmethod
    def backends(cls, system: Any, props: Mapping[str, str]) -> dict[str, Any]:
        """QEMU's v9fs_device_realize_common checks, in its words, then the server."""
        fsdev_id = props.get("fsdev")
        fsdevs: Mapping[str, FsDev] = getattr(system, "fsdevs", {})
        fsdev = fsdevs.get(fsdev_id) if fsdev_id else None
        if fsdev is None:
            raise ConfigError("9pfs device couldn't find fsdev with the id = "
                              f"{fsdev_id if fsdev_id is not None else 'NULL'}")
        tag = props.get("mount_tag")
        if tag is None:
            raise ConfigError(f"fsdev with id {fsdev_id} needs mount_tag arguments")
        size = len(tag.encode())
        if size > MAX_TAG_LEN - 1:
            raise ConfigError(f"mount tag '{tag}' ({size} bytes) is longer than maximum "
                              f"({MAX_TAG_LEN - 1} bytes)")
        if not os.path.isdir(fsdev.path):
            reason = os.strerror(errno.ENOTDIR if os.path.exists(fsdev.path) else errno.ENOENT)
            raise ConfigError(f"cannot initialize fsdev '{fsdev_id}': failed to open "
                              f"'{fsdev.path}': {reason}")
        from kvmpy.fs.server import Server

        try:
            server = Server(fsdev, max_msize=MAX_MSIZE)
        except OSError as exc:
            raise ConfigError(f"cannot initialize fsdev '{fsdev_id}': failed to open "
                              f"'{fsdev.path}': {exc.strerror}") from exc
        kwargs: dict[str, Any] = {"server": server}
        lock = getattr(system, "lock", None)
        if lock is not None:
            kwargs["lock"] = lock
        at_close = getattr(system, "at_close", None)
        if at_close is not None:
            kwargs["at_close"] = at_close
        return kwargs

    # -- virtio device --------------------------------------------------------------------------

    def host_features(self) -> int:
        return 1 << VIRTIO_9P_MOUNT_TAG

    def config(self) -> bytes:
        return struct.pack("<H", len(self._tag)) + self._tag

    def handle_queue(self, index: int) -> None:
        """vCPU thread, big lock held: wake the worker, nothing more."""
        with self._wake:
            if self._stopping or self.server is None:
                return
            self._pending = True
            self._busy = True
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, daemon=True,
                                                name=f"virtio-9p {self.mount_tag}")
                self._worker.start()
            self._wake.notify()

    def reset(self) -> None:
        """Big lock held: requests in flight are forgotten; the worker resets the server
        before it serves the next one."""
        super().reset()
        self._generation += 1
        with self._wake:
            if self._worker is not None:
                self._pending = True
                self._wake.notify()
            if self._direct and not self._wake.wait_for(lambda: not self._direct,
                                                        JOIN_TIMEOUT):
                log.warn_report("virtio-9p: reset while a host read into guest memory "
                                "still runs")

    # -- snapshots ------------------------------------------------------------------------------

    def drain(self) -> None:
        """Wait until the worker has answered every request the guest notified (the VM is
        paused; the big lock, if held, is let go while waiting, as QEMU's drain polls)."""
        with self._idle:
            if not self._idle.wait_for(lambda: not self._busy or self._stopping,
                                       DRAIN_TIMEOUT):
                log.warn_report("virtio-9p: a request is still in flight after "
                                f"{DRAIN_TIMEOUT:.0f} s")

    def device_state(self) -> dict[str, Any]:
        from kvmpy.fs.snapshot import server_state

        return {"server": server_state(self.server) if self.server is not None else None}

    def prepare_device_state(self, r: StateReader) -> Applier:
        saved = r.get("server")
        if self.server is None:
            if saved is not None:
                raise r.fail("server", "a 9P session for a device without an export")
            return lambda: None
        from kvmpy.fs.snapshot import check_server_state

        restore = check_server_state(self.server, saved, f"{r.where}: server")

        def apply() -> None:
            self.drain()  # the worker uses the server without the big lock
            restore()
        return apply

    def close(self) -> None:
        """Stop the worker and release the server's host files (safe to call twice)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(JOIN_TIMEOUT)
            if worker.is_alive():
                return  # stuck in a host call: it exits when that returns
        if self.server is not None:
            self.server.close()

    # -- the worker -----------------------------------------------------------------------------

    def _serve(self) -> None:
        server = self.server
        if server is None:
            return
        served_generation = self._generation
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                self._pending = False
            while not self._stopping:
                with self.lock:
                    generation = self._generation
                    request = self._next_request()
                    direct = request is not None and request[1][4] == TREAD \
                        and generation == served_generation
                    if direct:
                        with self._wake:
                            self._direct = True
                if generation != served_generation:
                    server.reset()
                    served_generation = generation
                if request is None:
                    with self.lock:
                        if not self._pending:
                            self._busy = False
                            self._idle.notify_all()
                    break
                elem, data = request
                header = None
                if direct:
                    try:
                        header = self._read_direct(server, elem, data)
                    finally:
                        with self._wake:
                            self._direct = False
                            self._wake.notify_all()
                reply = header if header is not None else _answer(server, data, elem.in_size)
                with self.lock:
                    if generation == self._generation:
                        self._complete(elem, reply, direct=header is not None)

    def _next_request(self) -> tuple[VirtqElement, bytes] | None:
        """Big lock held: the next request and its bytes, or None when there is none (or
        the queue is unusable)."""
        if self.broken or not self.queues:
            return None
        vq = self.queues[0]
        if not vq.usable or not vq.state.ready:
            return None
        try:
            elem = vq.pop()
            if elem is None:
                return None
            if elem.in_size < HEADER:
                self.virtio_error("The guest sent a VirtFS request without space for the "
                                  "reply")
                return None
            data = vq.read_out(elem, MAX_MSIZE)
        except VirtqueueError as exc:
            self.virtio_error(f"queue 0: {exc}")
            return None
        if len(data) < HEADER:
            self.virtio_error("The guest sent a malformed VirtFS request: header size is "
                              f"{len(data)}, should be {HEADER}")
            return None
        return elem, data

    def _read_direct(self, server: Server, elem: VirtqElement, data: bytes) -> bytes | None:
        """A Tread's data read by the server straight into the guest's buffers, after the
        room for the header; the header, or None to have the request answered as any other."""
        vq = self.queues[0]

        def into(limit: int) -> list[memoryview]:
            return vq.views(elem.in_, skip=HEADER + 4, limit=limit)

        try:
            return server.read_direct(data, elem.in_size, into)
        except Exception as exc:  # the device outlives a bug in the server: answer it anyway
            log.warn_report(f"virtio-9p: direct read failed: {exc!r}")
            return None

    def _complete(self, elem: VirtqElement, reply: bytes, direct: bool = False) -> None:
        """Big lock held: the reply into the chain, the chain back, the interrupt.  With
        ``direct`` the reply is an Rread header whose data is in the buffers already (its
        size field counts them)."""
        if self.broken:
            return
        vq = self.queues[0]
        if not direct and len(reply) > elem.in_size:
            kind = reply[4] if len(reply) > 4 else 0
            self.virtio_error(f"VirtFS reply type {kind} needs {len(reply)} bytes, buffer "
                              f"has {elem.in_size}")
            return
        try:
            written = _scatter(vq, elem, reply)
            vq.push(elem, struct.unpack_from("<I", reply)[0] if direct else written)
        except VirtqueueError as exc:
            self.virtio_error(f"queue 0: {exc}")
            return
        self.served += 1
        self.notify(0)


def _scatter(vq: Virtqueue, elem: VirtqElement, data: bytes) -> int:
    """``data`` into the writable buffers of ``elem`` (a read's reply spans one buffer per
    guest page: this is the device's hot loop).  The buffers were checked to lie in guest
    RAM when the chain was walked."""
    view, base = vq.ram.view, vq.ram.base
    source = memoryview(data)
    done, total = 0, len(data)
    for addr, length in elem.in_:
        if done >= total:
            break
        take = min(length, total - done)
        start = addr - base
        view[start:start + take] = source[done:done + take]
        done += take
    return done


def _answer(server: Server, request: bytes, room: int) -> bytes:
    """The server's reply; should it fail (a bug in kvmpy, never the guest's doing), the
    request gets Rlerror(EIO) and the device goes on."""
    try:
        return server.handle(request, room)
    except Exception as exc:  # the device outlives a bug in the server
        log.warn_report(f"virtio-9p: request type {request[4]} failed: {exc!r}")
        return struct.pack("<IBHI", 11, RLERROR, int.from_bytes(request[5:7], "little"),
                           errno.EIO)
