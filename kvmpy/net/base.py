"""Network back-ends (``-netdev TYPE,id=ID,...``) and the one contract a NIC speaks to them
(QEMU's ``NetClientState`` pair: a NIC and its peer).

Frames are whole Ethernet frames (no virtio-net header unless both ends agree on one, see
:attr:`NetBackend.vnet_hdr_len`).  Threads and locks:

- NIC -> network: the NIC calls :meth:`NetBackend.transmit` from a vCPU thread, under the big
  lock.  It never blocks: the frame joins a queue and the main loop is woken to send it.
- network -> NIC: the back-end, on the main loop, calls its peer's ``receive(frame)`` under
  the big lock.  A NIC with no room answers False; the frame waits in the back-end (at most
  :data:`RX_QUEUE_MAX` frames, further ones are dropped and counted, as QEMU's net queue
  does) until the NIC calls :meth:`NetBackend.nic_ready`.

A back-end subclass implements :meth:`_output` (send one frame out, on the main loop) and
:meth:`start` (register its file descriptors and timers), and hands frames from the network
to :meth:`deliver`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from kvmpy import log, qom
from kvmpy.errors import ConfigError

RX_QUEUE_MAX = 10000
"""Frames a back-end holds for a NIC without receive buffers (QEMU's NET_QUEUE default)."""

RX_BACKLOG_BYTES = 16 << 20
"""Bytes of frames waiting for the NIC that a VM state carries at most."""

TX_QUEUE_MAX = 4096
"""Frames a NIC may have queued for the main loop before the oldest are dropped."""


class NicPeer(Protocol):
    """What a back-end sees of the NIC it is attached to."""

    def receive(self, frame: bytes) -> bool:
        """Take one frame from the network; False when there is no room now."""
        ...


@qom.register_type("netdev", "object", abstract=True, description="network back-end")
class NetBackend(qom.Object):
    """Base of the ``-netdev`` types.  ``type_label`` is QEMU's type name (``user``)."""

    type_label: ClassVar[str] = ""
    vnet_hdr_len: int = 0
    """Bytes of virtio-net header in front of each frame both ways (0: plain Ethernet)."""

    def __init__(self, netdev_id: str, props: Mapping[str, str],
                 lists: Mapping[str, list[str]] | None = None) -> None:
        """``props``: the option's ``key=value`` strings (``id`` too); ``lists``: every value
        of the list-typed keys given (``hostfwd``), in order."""
        self.id = netdev_id
        self.props = dict(props)
        self.lists = {key: list(values) for key, values in (lists or {}).items()}
        self.peer: NicPeer | None = None
        self.peer_name = ""
        self.link_up = True
        self.system: Any = None
        self._tx: collections.deque[bytes] = collections.deque()
        self._rx: collections.deque[bytes] = collections.deque()
        self._tx_scheduled = False
        self._rx_scheduled = False
        self._guard = threading.Lock()
        self.dropped_rx = 0
        self.dropped_tx = 0
        self.hub_id = -1
        """QEMU's hub number for a legacy ``-net`` back-end (0), else -1."""

    # -- set-up ---------------------------------------------------------------------------------

    def attach(self, peer: NicPeer, name: str) -> None:
        """Connect the NIC (QEMU allows one peer per netdev)."""
        if self.peer is not None:
            raise ConfigError(f"Property 'netdev' can't take value '{self.id}', it's in use")
        self.peer = peer
        self.peer_name = name

    def start(self, system: Any) -> None:
        """The main loop runs: register file descriptors and timers (subclasses extend).
        Frames the NIC sent before (a guest runs before the loop starts) go out now."""
        self.system = system
        with self._guard:
            pending = bool(self._tx) and not self._tx_scheduled
            self._tx_scheduled = self._tx_scheduled or pending
        if pending:
            system.call_soon(self._flush_tx)

    def close(self) -> None:
        """Release host resources (sockets, devices); safe to call twice."""

    def info(self) -> str:
        """The ``info network`` text after ``ID: index=0,``."""
        return f"type={self.type_label}"

    # -- NIC -> network -------------------------------------------------------------------------

    def transmit(self, frame: bytes) -> None:
        """The NIC sends ``frame`` (any thread; never blocks)."""
        if not self.link_up:
            return
        with self._guard:
            if len(self._tx) >= TX_QUEUE_MAX:
                self._tx.popleft()
                self.dropped_tx += 1
            self._tx.append(frame)
            if self._tx_scheduled or self.system is None:
                return
            self._tx_scheduled = True
        self.system.call_soon(self._flush_tx)

    def _flush_tx(self) -> None:
        with self._guard:
            frames = list(self._tx)
            self._tx.clear()
            self._tx_scheduled = False
        for frame in frames:
            try:
                self._output(frame)
            except OSError as exc:
                log.guest_error(f"netdev {self.id}: frame of {len(frame)} bytes not sent: "
                                f"{exc.strerror}")

    def _output(self, frame: bytes) -> None:
        """Send one frame to the network (main loop)."""
        raise NotImplementedError

    # -- network -> NIC -------------------------------------------------------------------------

    def deliver(self, frame: bytes) -> None:
        """A frame from the network for the NIC (main loop): handed over under the big lock,
        or queued while the NIC has no room."""
        if self.peer is None or not self.link_up:
            return
        if self._rx:
            self._queue_rx(frame)
            return
        with self.system.lock:
            accepted = self.peer.receive(frame)
        if not accepted:
            self._queue_rx(frame)

    def _queue_rx(self, frame: bytes) -> None:
        if len(self._rx) >= RX_QUEUE_MAX:
            self.dropped_rx += 1
            return
        self._rx.append(frame)

    def nic_ready(self) -> None:
        """The NIC has receive room again (any thread): queued frames go in on the main
        loop."""
        with self._guard:
            if self._rx_scheduled or not self._rx or self.system is None:
                return
            self._rx_scheduled = True
        self.system.call_soon(self._flush_rx)

    def _flush_rx(self) -> None:
        with self._guard:
            self._rx_scheduled = False
        if self.peer is None:
            return
        with self.system.lock:
            while self._rx:
                if not self.peer.receive(self._rx[0]):
                    return
                self._rx.popleft()
        self.rx_drained()

    def rx_drained(self) -> None:
        """Everything queued reached the NIC (main loop): a back-end that stopped reading
        while the NIC was full reads again."""

    @property
    def can_receive(self) -> bool:
        """Whether the NIC has taken everything so far (back-ends stop reading otherwise)."""
        return not self._rx

    def set_link(self, up: bool) -> None:
        self.link_up = up

    # -- VM state: the back-end's own state (connections, a tap's kernel queue) is not
    # carried, as QEMU carries none; the frames waiting between it and the NIC are ----------

    def drain(self) -> None:
        """The VM is paused for its state to be taken (main loop): frames the NIC handed
        over, which the guest counts as sent, go out now."""
        if self._tx:
            self._flush_tx()

    def rx_backlog(self, limit: int = RX_BACKLOG_BYTES) -> list[bytes]:
        """The frames waiting for the NIC to have room, oldest first, up to ``limit``
        bytes in all."""
        frames: list[bytes] = []
        total = 0
        for frame in self._rx:
            total += len(frame)
            if total > limit:
                break
            frames.append(frame)
        return frames

    def restore_rx_backlog(self, frames: list[bytes]) -> None:
        """Frames of a saved VM's back-end, ahead of any this one queued; the NIC takes
        them when it next has room, as it would have at the source."""
        for frame in reversed(frames):
            if len(self._rx) >= RX_QUEUE_MAX:
                self.dropped_rx += 1
                continue
            self._rx.appendleft(frame)


def netdev_types() -> list[qom.TypeInfo]:
    from kvmpy.net import stream, tap, user  # noqa: F401  (register the back-end types)

    return qom.object_class_get_list("netdev")


def netdev_class(type_label: str) -> type[NetBackend] | None:
    named = qom.type_info(f"netdev-{type_label}")  # imports just that back-end
    if named is not None and getattr(named.cls, "type_label", None) == type_label:
        found: type[NetBackend] = named.cls
        return found
    for info in netdev_types():
        if getattr(info.cls, "type_label", None) == type_label:
            cls: type[NetBackend] = info.cls
            return cls
    return None
