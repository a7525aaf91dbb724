"""virtio-net (network card, id 1; virtio spec §5.1), QEMU 7.2's ``virtio-net-device``
(hw/net/virtio-net.c).

Queues: receive (0), transmit (1), control (2); one queue pair (``mq=on`` only advertises
``max_virtqueue_pairs`` = 1).  Every buffer starts with a ``virtio_net_hdr`` (flags u8,
gso_type u8, hdr_len, gso_size, csum_start, csum_offset u16: 10 bytes), followed by
num_buffers u16 when MRG_RXBUF or VERSION_1 is negotiated (12 bytes).

The back-end (:class:`~kvmpy.net.base.NetBackend`) takes plain Ethernet frames, or frames
behind its own virtio-net header when its ``vnet_hdr_len`` is 10 or 12 (a tap with
IFF_VNET_HDR).  As QEMU, the checksum and segmentation offloads are offered only in the
second case, where the header travels through unchanged and the host kernel does the work.

Features offered with QEMU's defaults (checked against qemu-system-riscv64 7.2): MAC, STATUS,
MRG_RXBUF, CTRL_VQ, CTRL_RX, CTRL_VLAN, CTRL_RX_EXTRA, GUEST_ANNOUNCE, CTRL_MAC_ADDR,
CTRL_GUEST_OFFLOADS, and GSO on a legacy transport; with a vnet-header back-end also CSUM,
GUEST_CSUM, the TSO/ECN bits (and UFO when the back-end says ``has_ufo``); MTU with
``host_mtu``, SPEED_DUPLEX with ``speed``/``duplex``, MQ with ``mq=on``.  The receive
filter the control queue sets (receive modes, MAC and VLAN tables) is in
:mod:`kvmpy.hw.virtio.net_filter`.

Threads: the transmit and control queues run on the vCPU thread that notifies, receive on
the main loop, all under the big lock.  A transmit notify sends at most :data:`TX_BURST`
frames; the rest continues from the main loop.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvmpy import log
from kvmpy.errors import ConfigError
from kvmpy.hw.virtio.device import VIRTIO_F_VERSION_1, VirtioDevice
from kvmpy.hw.virtio.net_filter import (
    DEFAULT_MACS,
    MAC_TABLE_ENTRIES,
    MAX_VLAN,
    RX_MODES,
    CommandData,
    MacAddressPool,
    MacProperty,
    RxFilter,
    format_mac,
    parse_mac,
)
from kvmpy.hw.virtio.virtqueue import (
    VIRTQUEUE_MAX_SIZE,
    VirtqElement,
    Virtqueue,
    VirtqueueError,
)
from kvmpy.hw.virtio.vmstate import U32, Applier, StateReader, state_error
from kvmpy.qom import Property, register_type

if TYPE_CHECKING:
    from kvmpy.net.base import NetBackend

VIRTIO_ID_NET = 1
RX, TX, CTRL = 0, 1, 2

# Feature bits (virtio spec §5.1.3).
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2
VIRTIO_NET_F_MTU = 3
VIRTIO_NET_F_MAC = 5
VIRTIO_NET_F_GSO = 6
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_GUEST_UFO = 10
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_HOST_UFO = 14
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_STATUS = 16
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_CTRL_RX = 18
VIRTIO_NET_F_CTRL_VLAN = 19
VIRTIO_NET_F_CTRL_RX_EXTRA = 20
VIRTIO_NET_F_GUEST_ANNOUNCE = 21
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_F_CTRL_MAC_ADDR = 23
VIRTIO_NET_F_RSC_EXT = 61
VIRTIO_NET_F_SPEED_DUPLEX = 63

VIRTIO_NET_S_LINK_UP = 1
VIRTIO_NET_S_ANNOUNCE = 2

_OFFLOADS = sum(1 << bit for bit in (
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN))
"""Cleared when the back-end has no vnet header (QEMU's virtio_net_get_features)."""
_UFO = 1 << VIRTIO_NET_F_GUEST_UFO | 1 << VIRTIO_NET_F_HOST_UFO
_GUEST_OFFLOADS = sum(1 << bit for bit in (
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_UFO))

# Control queue (§5.1.6.5): class, command, data; the device writes an ack byte.
VIRTIO_NET_OK, VIRTIO_NET_ERR = 0, 1
CTRL_RX, CTRL_MAC, CTRL_VLAN, CTRL_ANNOUNCE, CTRL_MQ, CTRL_GUEST_OFFLOADS = range(6)
CTRL_MAC_TABLE_SET, CTRL_MAC_ADDR_SET = 0, 1

HDR_LEN = 10
"""sizeof(struct virtio_net_hdr); 12 with num_buffers (virtio_net_hdr_mrg_rxbuf)."""
MAX_FRAME = 65550
"""Largest frame the device transmits (a 64 KiB GSO frame plus its Ethernet header)."""
TX_BURST = 256
"""Frames sent per notify before the rest goes to the main loop (QEMU's x-txburst)."""
QUEUE_SIZE_DEFAULT, QUEUE_SIZE_MIN = 256, 256
CTRL_QUEUE_SIZE = 64
SPEED_UNKNOWN, DUPLEX_UNKNOWN = -1, 0xFF
_CONFIG = struct.Struct("<6sHHHIB")
"""mac, status, max_virtqueue_pairs, mtu, speed, duplex (struct virtio_net_config, up to
the RSS fields, which are never offered)."""
_CONFIG_ENDS = ((VIRTIO_NET_F_STATUS, 8), (VIRTIO_NET_F_MQ, 10), (VIRTIO_NET_F_MTU, 12),
                (VIRTIO_NET_F_SPEED_DUPLEX, 17))
"""virtio-net's feature_sizes: the config space ends after the last field a feature uses."""
_DHCP_SERVER_PORT = 67
ANNOUNCE_DELAY_NS = 50_000_000
"""QEMU's announce-initial: the NIC announces itself this long after a load."""


@dataclass
class _FeatureBit(Property[bool]):
    """An on/off property offering one feature bit (QEMU's DEFINE_PROP_BIT64)."""

    bit: int = 0


def _bit(name: str, bit: int, default: bool = True) -> _FeatureBit:
    return _FeatureBit(bool, default, "on/off", name=name, bit=bit)


@dataclass
class VirtioNetState:
    mac: str = "00:00:00:00:00:00"
    """The address in the config space (the driver may set it)."""
    status: int = VIRTIO_NET_S_LINK_UP
    driver_ok: bool = False
    curr_guest_offloads: int = 0
    rx_filter: RxFilter = field(default_factory=RxFilter)


@register_type("virtio-net-device", "virtio-device", description="virtio network card")
class VirtioNet(VirtioDevice):
    category = "Network devices"
    device_id = VIRTIO_ID_NET
    legacy_only_features = 1 << VIRTIO_NET_F_GSO
    state: VirtioNetState

    netdev = Property(str, "", "ID of a netdev to use as a backend")
    mac = MacProperty(str, "", "Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56")
    csum = _bit("csum", VIRTIO_NET_F_CSUM)
    guest_csum = _bit("guest_csum", VIRTIO_NET_F_GUEST_CSUM)
    gso = _bit("gso", VIRTIO_NET_F_GSO)
    guest_tso4 = _bit("guest_tso4", VIRTIO_NET_F_GUEST_TSO4)
    guest_tso6 = _bit("guest_tso6", VIRTIO_NET_F_GUEST_TSO6)
    guest_ecn = _bit("guest_ecn", VIRTIO_NET_F_GUEST_ECN)
    guest_ufo = _bit("guest_ufo", VIRTIO_NET_F_GUEST_UFO)
    guest_announce = _bit("guest_announce", VIRTIO_NET_F_GUEST_ANNOUNCE)
    host_tso4 = _bit("host_tso4", VIRTIO_NET_F_HOST_TSO4)
    host_tso6 = _bit("host_tso6", VIRTIO_NET_F_HOST_TSO6)
    host_ecn = _bit("host_ecn", VIRTIO_NET_F_HOST_ECN)
    host_ufo = _bit("host_ufo", VIRTIO_NET_F_HOST_UFO)
    mrg_rxbuf = _bit("mrg_rxbuf", VIRTIO_NET_F_MRG_RXBUF)
    status = _bit("status", VIRTIO_NET_F_STATUS)
    ctrl_vq = _bit("ctrl_vq", VIRTIO_NET_F_CTRL_VQ)
    ctrl_rx = _bit("ctrl_rx", VIRTIO_NET_F_CTRL_RX)
    ctrl_vlan = _bit("ctrl_vlan", VIRTIO_NET_F_CTRL_VLAN)
    ctrl_rx_extra = _bit("ctrl_rx_extra", VIRTIO_NET_F_CTRL_RX_EXTRA)
    ctrl_mac_addr = _bit("ctrl_mac_addr", VIRTIO_NET_F_CTRL_MAC_ADDR)
    ctrl_guest_offloads = _bit("ctrl_guest_offloads", VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)
    mq = _bit("mq", VIRTIO_NET_F_MQ, default=False)
    rx_queue_size = Property(int, QUEUE_SIZE_DEFAULT, "uint16", name="rx_queue_size")
    tx_queue_size = Property(int, QUEUE_SIZE_DEFAULT, "uint16", name="tx_queue_size")
    host_mtu = Property(int, 0, "uint16 (0: no MTU advice)", name="host_mtu")
    speed = Property(int, SPEED_UNKNOWN, "int32, Mb/s (-1: unknown)")
    duplex = Property(str, "", "half/full")

    def __init__(self, backend: NetBackend | None = None, macs: MacAddressPool | None = None,
                 defer: Callable[[Callable[[], None]], None] | None = None,
                 schedule: Callable[[int, Callable[[], None]], object] | None = None,
                 **props: object) -> None:
        """``backend`` is the ``-netdev`` peer; ``macs`` hands out default addresses;
        ``defer(fn)`` runs ``fn`` later on the main loop under the big lock (transmit work
        beyond one burst), or at once when not given; ``schedule(deadline_ns, fn)`` runs
        ``fn`` under the big lock at host monotonic time ``deadline_ns`` (the announcement
        after a load; without it the NIC does not announce)."""
        super().__init__()
        self.set_properties(props)
        self._check_properties()
        self.queue_sizes = (self.rx_queue_size, self.tx_queue_size, CTRL_QUEUE_SIZE)
        self.macs = macs if macs is not None else DEFAULT_MACS
        self.macaddr = self.macs.claim(parse_mac(self.mac) if self.mac else None)
        """The configured address (QEMU's nic_conf.macaddr); reset returns to it."""
        self.backend = backend
        self.host_hdr_len = backend.vnet_hdr_len if backend is not None else 0
        if self.host_hdr_len not in (0, HDR_LEN, HDR_LEN + 2):
            raise ConfigError(f"netdev '{self.netdev}': vnet header of {self.host_hdr_len} "
                              "bytes is not supported")
        self._defer = defer
        self._schedule = schedule
        self._tx_scheduled = False
        self._features = self._configured_features()
        self._config_size = self._size_of_config(self._features)
        self.state = VirtioNetState(mac=format_mac(self.macaddr))
        self.nic_model = self.type_name
        if backend is not None:
            backend.attach(self, self.type_name)

    def nic_named(self, name: str, model: str) -> None:
        """The ``-device`` that made this NIC names it (its id, or ``MODEL.N``), as QEMU's
        net client is named; ``info network`` shows both."""
        self.nic_model = model
        if self.backend is not None:
            self.backend.peer_name = name

    def nic_info(self) -> str:
        """QEMU's NIC info string (qemu_format_nic_info_str): the model and current MAC."""
        return f"model={self.nic_model},macaddr={self.state.mac}"

    @classmethod
    def backends(cls, system: Any, props: Mapping[str, str]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"macs": _system_macs(system)}
        netdev_id = props.get("netdev")
        if netdev_id:
            backend = getattr(system, "netdevs", {}).get(netdev_id)
            if backend is None:
                raise ConfigError(f"Property '{cls.type_name}.netdev' can't find value "
                                  f"'{netdev_id}'")
            if backend.peer is not None:
                raise ConfigError(f"Property '{cls.type_name}.netdev' can't take value "
                                  f"'{netdev_id}', it's in use")
            kwargs["backend"] = backend
        lock, call_soon = getattr(system, "lock", None), getattr(system, "call_soon", None)
        if lock is not None and call_soon is not None:
            kwargs["defer"] = functools.partial(_defer_locked, call_soon, lock)
        schedule = getattr(system, "schedule", None)
        if schedule is not None:
            kwargs["schedule"] = schedule
        return kwargs

    def _check_properties(self) -> None:
        """QEMU's realize checks, in its words."""
        if self.mac and parse_mac(self.mac) is None:
            raise ConfigError(f"Property '{self.type_name}.mac' doesn't take value "
                              f"'{self.mac}'")
        for name, size in (("rx", self.rx_queue_size), ("tx", self.tx_queue_size)):
            if not QUEUE_SIZE_MIN <= size <= VIRTQUEUE_MAX_SIZE or size & (size - 1):
                raise ConfigError(f"Invalid {name}_queue_size (= {size}), must be a power of 2 "
                                  f"between {QUEUE_SIZE_MIN} and {VIRTQUEUE_MAX_SIZE}"
                                  + ("." if name == "rx" else ""))
        if not 0 <= self.host_mtu <= 0xFFFF:
            raise ConfigError("Parameter 'host_mtu' expects uint16_t")
        if self.duplex not in ("", "half", "full"):
            raise ConfigError("'duplex' must be 'half' or 'full'")
        if not SPEED_UNKNOWN <= self.speed <= 0x7FFFFFFF:
            raise ConfigError("'speed' must be between 0 and INT_MAX")

    # -- features and config space --------------------------------------------------------------

    def _configured_features(self) -> int:
        """QEMU's n->host_features: the feature properties plus what realize adds."""
        features = 1 << VIRTIO_NET_F_MAC
        for klass in type(self).__mro__:
            for prop in vars(klass).values():
                if isinstance(prop, _FeatureBit) and getattr(self, prop.attr):
                    features |= 1 << prop.bit
        if self.host_mtu:
            features |= 1 << VIRTIO_NET_F_MTU
        if self.duplex or self.speed >= 0:
            features |= 1 << VIRTIO_NET_F_SPEED_DUPLEX
        return features

    @staticmethod
    def _size_of_config(features: int) -> int:
        """virtio_get_config_size with virtio-net's feature_sizes: up to the last field a
        configured feature makes valid."""
        return max([6] + [end for bit, end in _CONFIG_ENDS if features >> bit & 1])

    def host_features(self) -> int:
        features = self._features
        if not self.host_hdr_len:
            features &= ~_OFFLOADS
        if not self.host_hdr_len or not getattr(self.backend, "has_ufo", False):
            features &= ~_UFO
        return features

    def _negotiated(self, bit: int) -> bool:
        return bool(self.guest_features >> bit & 1)

    @property
    def guest_hdr_len(self) -> int:
        """Bytes of virtio-net header in front of each frame in the guest's buffers."""
        if self._negotiated(VIRTIO_F_VERSION_1) or self._negotiated(VIRTIO_NET_F_MRG_RXBUF):
            return HDR_LEN + 2
        return HDR_LEN

    def config(self) -> bytes:
        s = self.state
        duplex = {"half": 0, "full": 1}.get(self.duplex, DUPLEX_UNKNOWN)
        raw = _CONFIG.pack(parse_mac(s.mac) or bytes(6), s.status, 1, self.host_mtu,
                           self.speed & 0xFFFFFFFF, duplex)
        return raw[:self._config_size]

    def write_config(self, offset: int, data: bytes) -> None:
        """Legacy drivers without CTRL_MAC_ADDR set the MAC by writing the config space."""
        if self._negotiated(VIRTIO_NET_F_CTRL_MAC_ADDR) or \
                self._negotiated(VIRTIO_F_VERSION_1):
            return
        config = bytearray(self.config())
        config[offset:offset + len(data)] = data
        self.state.mac = format_mac(bytes(config[:6]))

    def set_features(self, features: int) -> None:
        super().set_features(features)
        s = self.state
        # With CTRL_VLAN the driver names the VLANs it wants; without, all pass.
        s.rx_filter.allow_all_vlans(not features >> VIRTIO_NET_F_CTRL_VLAN & 1)
        if self.host_hdr_len:
            s.curr_guest_offloads = features & _GUEST_OFFLOADS
            self._apply_guest_offloads()

    def _apply_guest_offloads(self) -> None:
        """Tell a vnet-header back-end which offloaded frames the guest takes (TUNSETOFFLOAD);
        one that cannot be told sends only plain frames, which every guest takes."""
        set_offload = getattr(self.backend, "set_offload", None)
        if set_offload is not None:
            set_offload(self.state.curr_guest_offloads)

    # -- lifecycle ------------------------------------------------------------------------------

    def driver_ok(self) -> None:
        self.state.driver_ok = True
        self._nic_ready()

    def reset(self) -> None:
        super().reset()
        link = self.state.status & VIRTIO_NET_S_LINK_UP
        self.state = VirtioNetState(mac=format_mac(self.macaddr), status=link)
        self._tx_scheduled = False

    def device_state(self) -> dict[str, Any]:
        state = copy.deepcopy(dataclasses.asdict(self.state))
        state["rx_backlog"] = self.backend.rx_backlog() if self.backend is not None else []
        return state

    def prepare_device_state(self, r: StateReader) -> Applier:
        """The MAC, link status, offloads and the receive filter.  The back-end's own state
        (slirp's connections, a tap's queue) is not carried: the NIC meets the back-end of
        the new process as it is."""
        mac = r.text("mac", 17)
        if parse_mac(mac) is None:
            raise r.fail("mac", f"'{mac}' is not a MAC address")
        status = r.integer("status", 0, VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE)
        driver_ok = r.flag("driver_ok")
        offloads = r.integer("curr_guest_offloads", 0, _GUEST_OFFLOADS)
        if offloads & ~_GUEST_OFFLOADS:
            raise r.fail("curr_guest_offloads", f"0x{offloads:x} has bits that are no "
                         "guest offload")
        rx_filter = _rx_filter_from(r.reader("rx_filter"))
        from kvmpy.net.base import RX_BACKLOG_BYTES, RX_QUEUE_MAX  # the network layer's limits

        backlog = r.items("rx_backlog", RX_QUEUE_MAX)
        total = 0
        for i, frame in enumerate(backlog):
            if not isinstance(frame, bytes) or len(frame) > self.host_hdr_len + MAX_FRAME:
                raise r.fail(f"rx_backlog[{i}]", "expected a frame")
            total += len(frame)
        if total > RX_BACKLOG_BYTES:
            raise r.fail("rx_backlog", f"{total} bytes of frames, at most {RX_BACKLOG_BYTES}")

        def apply() -> None:
            if self.backend is not None:
                self.backend.restore_rx_backlog(list(backlog))
            self.state = VirtioNetState(mac=mac, status=status, driver_ok=driver_ok,
                                        curr_guest_offloads=offloads, rx_filter=rx_filter)
            self._tx_scheduled = False
            if self.host_hdr_len:
                self._apply_guest_offloads()
            if driver_ok and self._schedule is not None:
                # Not now: the load is not over (the harts' interrupt pins come after the
                # devices), and the main loop may not run yet.
                self._schedule(time.monotonic_ns() + ANNOUNCE_DELAY_NS,
                               self._announce_after_load)
        return apply

    def _announce_after_load(self) -> None:
        """QEMU's post-load announcement (after its ``announce-initial`` 50 ms): the NIC is
        somewhere else in the network now."""
        if self.state.driver_ok and not self.broken:
            self.announce_self()
            self.announce()

    def announce_self(self) -> None:
        """A RARP broadcast from the NIC's address, so that switches learn where it is now
        (QEMU's qemu_announce_self, one round)."""
        if self.backend is None or not self.link_up:
            return
        mac = parse_mac(self.state.mac) or bytes(6)
        rarp = (b"\xff" * 6 + mac + b"\x80\x35" + struct.pack(">HHBBH", 1, 0x0800, 6, 4, 3)
                + mac + bytes(4) + mac + bytes(4))
        frame = rarp.ljust(60, b"\0")
        self.backend.transmit(bytes(self.host_hdr_len) + frame)

    def drain(self) -> None:
        """Transmit work left for the main loop is done now, and the frames sent reach the
        back-end's network: after it, the queue positions say everything (VM paused, big
        lock held)."""
        if self._tx_scheduled:
            self._continue_tx()
        if self.backend is not None:
            self.backend.drain()

    def set_link(self, up: bool) -> None:
        """``set_link``: the STATUS word follows, with a config interrupt when it changes;
        frames are dropped both ways while the link is down."""
        s = self.state
        old = s.status
        s.status = s.status | VIRTIO_NET_S_LINK_UP if up else s.status & ~VIRTIO_NET_S_LINK_UP
        if s.status != old:
            self.config_changed()
        if up:
            self._nic_ready()

    @property
    def link_up(self) -> bool:
        return bool(self.state.status & VIRTIO_NET_S_LINK_UP)

    def announce(self) -> None:
        """Ask the guest to announce itself (gratuitous ARP after a migration), when it
        negotiated GUEST_ANNOUNCE; it acknowledges through the control queue."""
        if self._negotiated(VIRTIO_NET_F_GUEST_ANNOUNCE) and \
                self._negotiated(VIRTIO_NET_F_CTRL_VQ):
            self.state.status |= VIRTIO_NET_S_ANNOUNCE
            self.config_changed()

    def _nic_ready(self) -> None:
        if self.backend is not None:
            self.backend.nic_ready()

    def handle_queue(self, index: int) -> None:
        if index == RX:
            self._nic_ready()  # the guest posted receive buffers
        elif index == TX:
            self._transmit()
        elif index == CTRL:
            self._control()

    # -- transmit -------------------------------------------------------------------------------

    def _transmit(self) -> None:
        vq = self.queues[TX]
        if not self.link_up:
            self._drop_tx(vq)
            return
        if not self.state.driver_ok or self._tx_scheduled:
            return
        sent = 0
        try:
            while sent < TX_BURST and (elem := vq.pop()) is not None:
                frame = self._tx_frame(vq, elem)
                if frame is not None and self.backend is not None:
                    self.backend.transmit(frame)
                vq.push(elem, 0)
                sent += 1
        finally:
            if sent:
                self.notify(TX)
        if sent == TX_BURST and vq.has_work():
            self._schedule_tx()

    def _schedule_tx(self) -> None:
        """The guest keeps the queue full: go on from the main loop, so one notify cannot
        hold the vCPU (and the big lock) for ever."""
        self._tx_scheduled = True
        if self._defer is None:
            self._continue_tx()
        else:
            self._defer(self._continue_tx)

    def _continue_tx(self) -> None:
        if not self._tx_scheduled:
            return  # reset in between
        self._tx_scheduled = False
        if self.broken or not self.queues:
            return
        try:
            self._transmit()
        except VirtqueueError as exc:
            self.virtio_error(f"queue {TX}: {exc}")

    def _drop_tx(self, vq: Virtqueue) -> None:
        """Link down: transmit buffers are returned unsent (virtio_net_drop_tx_queue_data)."""
        dropped = 0
        try:
            while dropped < vq.state.num and (elem := vq.pop()) is not None:
                vq.push(elem, 0)
                dropped += 1
        finally:
            if dropped:
                self.notify(TX)

    def _tx_frame(self, vq: Virtqueue, elem: VirtqElement) -> bytes | None:
        """The frame of one transmit chain, behind the back-end's header if it takes one."""
        guest_hdr = self.guest_hdr_len
        if not elem.out:
            raise VirtqueueError("virtio-net header not in first element")
        size = elem.out_size
        if size < guest_hdr:
            if self.host_hdr_len:
                raise VirtqueueError("virtio-net header incorrect")
            log.guest_error(f"virtio-net: transmit chain of {size} bytes is shorter than "
                            f"its {guest_hdr}-byte header")
            return None
        if size - guest_hdr > MAX_FRAME:
            log.guest_error(f"virtio-net: transmit frame of {size - guest_hdr} bytes is "
                            f"larger than {MAX_FRAME}: dropped")
            return None
        if self.host_hdr_len == guest_hdr:
            return b"".join(vq.views(elem.out))
        frame = b"".join(vq.views(elem.out, guest_hdr))
        if not self.host_hdr_len:
            return frame
        header = b"".join(vq.views(elem.out, 0, HDR_LEN))
        return header + bytes(self.host_hdr_len - HDR_LEN) + frame

    # -- receive --------------------------------------------------------------------------------

    def receive(self, frame: bytes) -> bool:
        """A frame from the back-end (main loop, big lock held).  False: no receive buffers
        now (the back-end keeps the frame until :meth:`NetBackend.nic_ready`); True: taken,
        or dropped (link down, filtered out, too big for a buffer, device broken)."""
        if not self.link_up or self.broken:
            return True
        if not self.state.driver_ok or not self.queues:
            return False
        vq = self.queues[RX]
        if not vq.usable or not vq.state.ready:
            return False
        try:
            return self._receive(vq, frame)
        except VirtqueueError as exc:
            self.virtio_error(f"queue {RX}: {exc}")
            return True

    def _receive(self, vq: Virtqueue, frame: bytes) -> bool:
        if len(frame) <= self.host_hdr_len:
            return True
        if not vq.has_work() and not self._wait_for_buffers(vq, vq.state.last_avail_idx):
            return False
        header, payload = self._rx_parts(frame)
        if not self.state.rx_filter.accepts(payload, self.state.mac):
            return True
        # Each retry needs the driver to have posted more buffers meanwhile, which it can do
        # at most queue-size times.
        for _ in range(vq.state.num + 1):
            done = self._fill(vq, header, payload)
            if done is not None:
                return done
        return False

    def _fill(self, vq: Virtqueue, header: bytes, payload: memoryview | bytes) -> bool | None:
        """Write one frame into the receive buffers (virtio_net_receive_rcu).  True: done
        or dropped; False: too few mergeable buffers, wait for a notify; None: too few, but
        the driver has just posted more."""
        guest_hdr = self.guest_hdr_len
        mergeable = self._negotiated(VIRTIO_NET_F_MRG_RXBUF)
        start = vq.state.last_avail_idx
        used: list[tuple[VirtqElement, int]] = []
        offset = 0
        while offset < len(payload):
            if len(used) == VIRTQUEUE_MAX_SIZE:
                raise VirtqueueError("virtio-net unexpected long buffer chain")
            elem = vq.pop()
            if elem is None:  # mergeable, and the buffers posted are too few for this frame
                end = vq.state.last_avail_idx
                self._rewind(vq, start)
                return None if self._wait_for_buffers(vq, end) else False
            if not elem.in_:
                raise VirtqueueError("virtio-net receive queue contains no in buffers")
            skip = 0
            if not used:
                vq.write_in(elem, header)
                skip = guest_hdr
            written = vq.write_in(elem, payload[offset:], skip)
            offset += written
            if not mergeable and offset < len(payload):
                self._rewind(vq, start)  # QEMU drops a frame larger than the buffer
                log.guest_error(f"virtio-net: receive buffer of {elem.in_size} bytes is too "
                                f"small for a {len(payload)}-byte frame: dropped")
                return True
            used.append((elem, skip + written))
        if mergeable:
            vq.write_in(used[0][0], struct.pack("<H", len(used)), HDR_LEN)
        _push_all(vq, used)
        self.notify(RX)
        return True

    def _rx_parts(self, frame: bytes) -> tuple[bytes, memoryview | bytes]:
        """The header the guest sees and the Ethernet frame.  The header is the back-end's
        own (its first 10 bytes) or an empty one (no offload: flags 0, GSO_NONE), then
        num_buffers = 1 (a mergeable receive writes the real count afterwards)."""
        payload: memoryview | bytes = memoryview(frame)[self.host_hdr_len:]
        if self.host_hdr_len:
            header = bytearray(frame[:HDR_LEN])
            payload = _fix_dhcp_checksum(header, memoryview(frame)[self.host_hdr_len:])
        else:
            header = bytearray(HDR_LEN)
        if self.guest_hdr_len > HDR_LEN:
            header += b"\x01\x00"
        return bytes(header), payload

    @staticmethod
    def _rewind(vq: Virtqueue, start: int) -> None:
        """Give back the buffers popped since avail index ``start`` (virtqueue_unpop)."""
        s = vq.state
        s.last_avail_idx = start
        if s.event_idx:
            vq.write_u16(s.used + 4 + 8 * s.num, start)

    @staticmethod
    def _wait_for_buffers(vq: Virtqueue, seen: int) -> bool:
        """The buffers up to avail index ``seen`` are not enough: ask for a notify when the
        driver posts another (avail_event = ``seen``, QEMU's virtio_queue_set_notification)
        and look once more, since it may have posted in between.  Returns whether it did."""
        s = vq.state
        if s.event_idx:
            vq.write_u16(s.used + 4 + 8 * s.num, seen)
        return vq.avail_idx() != seen

    # -- control queue --------------------------------------------------------------------------

    def _control(self) -> None:
        vq = self.queues[CTRL]
        done = 0
        try:
            while done < vq.state.num and (elem := vq.pop()) is not None:
                if elem.in_size < 1 or elem.out_size < 2:
                    raise VirtqueueError("virtio-net ctrl missing headers")
                cls, cmd = CommandData(vq, elem, 0).read(0, 2)
                ok = self._command(cls, cmd, CommandData(vq, elem, 2))
                vq.write_in(elem, bytes([VIRTIO_NET_OK if ok else VIRTIO_NET_ERR]))
                vq.push(elem, 1)
                done += 1
        finally:
            if done:
                self.notify(CTRL)

    def _command(self, cls: int, cmd: int, data: CommandData) -> bool:
        """One control command (virtio_net_handle_ctrl_iov); False answers VIRTIO_NET_ERR."""
        rx_filter = self.state.rx_filter
        if cls == CTRL_RX:
            return rx_filter.set_rx_mode(cmd, data)
        if cls == CTRL_MAC:
            if cmd == CTRL_MAC_TABLE_SET:
                return rx_filter.set_mac_table(data)
            if cmd == CTRL_MAC_ADDR_SET and data.size == 6:
                self.state.mac = format_mac(data.read(0, 6))
                return True
            return False
        if cls == CTRL_VLAN:
            return rx_filter.set_vlan(cmd, data)
        if cls == CTRL_ANNOUNCE:  # ACK: the guest has announced itself
            if cmd != 0 or not self.state.status & VIRTIO_NET_S_ANNOUNCE:
                return False
            self.state.status &= ~VIRTIO_NET_S_ANNOUNCE
            return True
        if cls == CTRL_MQ:  # VQ_PAIRS_SET: one pair is all there is (RSS is not offered)
            return cmd == 0 and self._negotiated(VIRTIO_NET_F_MQ) and data.read(0, 2) == b"\1\0"
        if cls == CTRL_GUEST_OFFLOADS and cmd == 0:  # SET
            return self._set_guest_offloads(data)
        return False

    def _set_guest_offloads(self, data: CommandData) -> bool:
        raw = data.read(0, 8)
        if not self._negotiated(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) or len(raw) != 8 or \
                not self.host_hdr_len:
            return False
        offloads = int.from_bytes(raw, "little") & ~(1 << VIRTIO_NET_F_RSC_EXT)
        if offloads & ~(self.guest_features & _GUEST_OFFLOADS):
            return False
        self.state.curr_guest_offloads = offloads
        self._apply_guest_offloads()
        return True


def _rx_filter_from(r: StateReader) -> RxFilter:
    modes = {mode: r.flag(mode) for mode in RX_MODES}
    table = [check_mac(mac, f"{r.where}: mac_table") for mac in
             r.items("mac_table", MAC_TABLE_ENTRIES)]
    return RxFilter(**modes, mac_table=table,
                    first_multi=r.integer("first_multi", 0, len(table)),
                    uni_overflow=r.flag("uni_overflow"),
                    multi_overflow=r.flag("multi_overflow"),
                    vlans=r.ints("vlans", MAX_VLAN // 32, 0, U32, length=MAX_VLAN // 32))


def check_mac(value: object, where: str) -> str:
    if not isinstance(value, str) or parse_mac(value) is None:
        raise state_error(f"{where}: {value!r} is not a MAC address")
    return value


def _push_all(vq: Virtqueue, used: list[tuple[VirtqElement, int]]) -> None:
    """Return several buffers with one used-index update (virtqueue_fill + flush), so the
    driver never sees part of a mergeable frame."""
    s = vq.state
    for i, (elem, length) in enumerate(used):
        vq.write(s.used + 4 + 8 * ((s.used_idx + i) % s.num), struct.pack("<II", elem.head,
                                                                           length))
    s.used_idx = (s.used_idx + len(used)) & 0xFFFF
    vq.write_u16(s.used + 2, s.used_idx)


def _fix_dhcp_checksum(header: bytearray, eth: memoryview) -> memoryview | bytes:
    """QEMU's work_around_broken_dhclient: a DHCP reply (UDP from port 67) that still needs
    its checksum (NEEDS_CSUM) gets one, since dhclient reads raw packets and checks it.
    Returns the frame to give the guest; ``header`` loses NEEDS_CSUM when it was fixed."""
    size = len(eth)
    if not (header[0] & 1 and 27 < size < 1500 and bytes(eth[12:14]) == b"\x08\x00"
            and eth[23] == 17 and bytes(eth[34:36]) == _DHCP_SERVER_PORT.to_bytes(2, "big")):
        return eth
    ihl = (eth[14] & 0xF) * 4
    ip_len = int.from_bytes(eth[16:18], "big")
    if eth[14] >> 4 != 4 or int.from_bytes(eth[20:22], "big") & 0x3FFF or \
            size - 14 < ip_len or ip_len - ihl < 8:
        return eth  # not an unfragmented IPv4 packet that fits the frame
    udp = bytearray(eth[14 + ihl:14 + ip_len])
    udp[6:8] = b"\0\0"
    pseudo = bytes(eth[26:34]) + struct.pack(">HH", 17, len(udp))
    udp[6:8] = _inet_checksum(pseudo + bytes(udp)).to_bytes(2, "big")
    header[0] &= ~1
    return bytes(eth[:14 + ihl]) + bytes(udp) + bytes(eth[14 + ip_len:])


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f">{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _system_macs(system: Any) -> MacAddressPool:
    """The VM's pool of default MACs, kept on the System (one per VM, as one QEMU process)."""
    pool = getattr(system, "mac_pool", None)
    if not isinstance(pool, MacAddressPool):
        pool = MacAddressPool()
        try:
            system.mac_pool = pool
        except AttributeError:
            return DEFAULT_MACS
    return pool


def _defer_locked(call_soon: Callable[[Callable[[], None]], None], lock: Any,
                  fn: Callable[[], None]) -> None:
    call_soon(functools.partial(_run_locked, lock, fn))


def _run_locked(lock: Any, fn: Callable[[], None]) -> None:
    with lock:
        fn()
