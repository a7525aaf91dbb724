"""``-netdev tap``: a host tap device (Linux's tun driver), QEMU 7.2's net/tap.c and
net/tap-linux.c.

``ifname=NAME`` creates or attaches the interface (root, or its owner); ``fd=N`` takes a tap
already open (what libvirt passes).  ``script=``/``downscript=`` run as QEMU runs them (with
the interface name as their argument; ``no`` for none; the default is QEMU's
``/etc/qemu-ifup``/``/etc/qemu-ifdown``).  Reads stop while the NIC has no room and resume
when it has; writes the kernel refuses for now wait for the device to become writable, in order.

virtio-net headers, as QEMU: with ``ifname=`` the device is opened with IFF_VNET_HDR when the
kernel has it (``vnet_hdr=off``: never; ``vnet_hdr=on``: an error without it); with ``fd=`` the
fd's own flags decide (TUNGETIFF; ``vnet_hdr=`` is refused there).  With a header, every frame
on the fd has one in front (:data:`~kvmpy.net.vnet_hdr.HDR_LEN_MRG` bytes, TUNSETVNETHDRSZ),
and so has every frame between the back-end and its NIC (:attr:`vnet_hdr_len`): the NIC's
offloads travel through, and the kernel is told which ones the guest takes (TUNSETOFFLOAD,
none until it says).  Frames the kernel sends that ask for more are fixed or dropped
(:func:`~kvmpy.net.vnet_hdr.check_received`).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import struct
import subprocess
from collections.abc import Mapping
from typing import Any

from kvmpy import log, qom
from kvmpy.errors import ConfigError, NotBuiltError
from kvmpy.net import vnet_hdr
from kvmpy.net.base import NetBackend

PATH_NET_TUN = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16
IFREQ_SIZE = 40
DEFAULT_SCRIPT = "/etc/qemu-ifup"
DEFAULT_DOWNSCRIPT = "/etc/qemu-ifdown"
MAX_FRAME = 69632
"""The largest read (QEMU's NET_BUFSIZE: 4096 + 65536)."""

_KNOWN = {"id", "ifname", "fd", "script", "downscript", "vnet_hdr", "br", "helper",
          "sndbuf", "vhost", "queues", "poll-us"}


def _bool(props: Mapping[str, str], key: str) -> bool | None:
    text = props.get(key)
    return None if text is None else qom.parse_bool(key, text)


@qom.register_type("netdev-tap", "netdev", description="tap network backend")
class TapNetdev(NetBackend):
    type_label = "tap"

    def __init__(self, netdev_id: str, props: Mapping[str, str],
                 lists: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(netdev_id, props)
        for key in props:
            if key not in _KNOWN:
                raise ConfigError(f"Invalid parameter '{key}'")
        vnet = _bool(props, "vnet_hdr")
        if "fd" in props and any(k in props for k in ("ifname", "script", "downscript",
                                                      "vnet_hdr", "helper", "queues")):
            raise ConfigError("ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, "
                              "fds=, and vhostfds= are invalid with fd=")
        for key in ("br", "helper"):
            if key in props:
                raise NotBuiltError(f"tap: {key}= (the bridge helper) is not built in kvmpy")
        if _bool(props, "vhost"):
            raise NotBuiltError("tap: vhost=on is not built in kvmpy")
        self._pending: collections.deque[bytes] = collections.deque()
        self._writer = False
        self._reading = False
        self.downscript = ""
        self.has_ufo = False
        """Whether the kernel takes TUN_F_UFO (virtio-net offers UFO only then)."""
        self._offloads = 0
        """The TUN_F_* offloads turned on: what a received header may ask for."""
        if "fd" in props:
            self.fd = self._take_fd(props["fd"])
            self.ifname = ""
            try:
                has_vnet_hdr = self._probe_vnet_hdr(self.fd)
            except ConfigError:
                os.close(self.fd)
                self.fd = -1
                raise
        else:
            self.fd, self.ifname, has_vnet_hdr = self._open(props.get("ifname", ""), vnet)
        self._init_fd(has_vnet_hdr)
        if "fd" in props:
            return
        script = props.get("script", DEFAULT_SCRIPT)
        self.downscript = props.get("downscript", DEFAULT_DOWNSCRIPT)
        if self.downscript == "no":
            self.downscript = ""
        if script and script != "no":
            self._run_script(script)

    # -- opening --------------------------------------------------------------------------------

    @staticmethod
    def _take_fd(text: str) -> int:
        try:
            fd = int(text)
            os.fstat(fd)
        except (ValueError, OSError):
            raise ConfigError(f"'{text}' is not a valid file descriptor") from None
        os.set_blocking(fd, False)
        return fd

    @staticmethod
    def _probe_vnet_hdr(fd: int) -> bool:
        """QEMU's tap_probe_vnet_hdr: whether the tap behind ``fd`` has IFF_VNET_HDR."""
        try:
            ifreq = fcntl.ioctl(fd, TUNGETIFF, bytes(IFREQ_SIZE))
        except OSError as exc:
            raise ConfigError(f"Unable to query TUNGETIFF on FD {fd}: "
                              f"{exc.strerror}") from None
        flags: int = struct.unpack_from("H", ifreq, IFNAMSIZ)[0]
        return bool(flags & IFF_VNET_HDR)

    @staticmethod
    def _open(name: str, vnet: bool | None) -> tuple[int, str, bool]:
        """QEMU's tap_open: the device, its name, and whether it has a vnet header (asked
        for unless ``vnet`` is False; required when it is True)."""
        if len(name.encode()) >= IFNAMSIZ:
            raise ConfigError(f"tap: interface name '{name}' is longer than "
                              f"{IFNAMSIZ - 1} bytes")
        try:
            fd = os.open(PATH_NET_TUN, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"could not open {PATH_NET_TUN}: {exc.strerror}") from None
        flags = IFF_TAP | IFF_NO_PI
        has_vnet_hdr = False
        if vnet is not False:
            try:
                features = struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, bytes(4)))[0]
            except OSError as exc:
                log.warn_report(f"TUNGETFEATURES failed: {exc.strerror}")
                features = 0
            has_vnet_hdr = bool(features & IFF_VNET_HDR)
            if vnet and not has_vnet_hdr:
                os.close(fd)
                raise ConfigError("vnet_hdr=1 requested, but no kernel support for "
                                  "IFF_VNET_HDR available")
            if has_vnet_hdr:
                flags |= IFF_VNET_HDR
        request = struct.pack(f"{IFNAMSIZ}sH22x", name.encode(), flags)
        try:
            answer = fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as exc:
            os.close(fd)
            where = f" ({name})" if name else ""
            raise ConfigError(f"could not configure {PATH_NET_TUN}{where}: "
                              f"{exc.strerror}") from None
        return fd, answer[:IFNAMSIZ].split(b"\0", 1)[0].decode(), has_vnet_hdr

    def _init_fd(self, has_vnet_hdr: bool) -> None:
        """QEMU's net_tap_fd_init: probe UFO, turn every offload off, and set the header
        size (the one a VERSION_1 or MRG_RXBUF virtio-net uses; the kernel's default where
        it cannot be changed)."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, vnet_hdr.TUN_F_CSUM | vnet_hdr.TUN_F_UFO)
            self.has_ufo = True
        except OSError:
            self.has_ufo = False
        self._set_tun_offloads(0)
        if not has_vnet_hdr:
            return
        self.vnet_hdr_len = vnet_hdr.HDR_LEN
        try:
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr.HDR_LEN_MRG))
            self.vnet_hdr_len = vnet_hdr.HDR_LEN_MRG
        except OSError:
            with contextlib.suppress(OSError):  # a kernel without the ioctl has 10
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr.HDR_LEN))

    def _set_tun_offloads(self, flags: int) -> None:
        """QEMU's tap_fd_set_offload: without UFO if the kernel refuses it.  What received
        headers may ask for narrows before the kernel is told and widens after."""
        self._offloads &= flags
        for attempt in (flags, flags & ~vnet_hdr.TUN_F_UFO):
            try:
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, attempt)
            except OSError as exc:
                if exc.errno == errno.EINVAL and attempt == 0:
                    return  # no TUNSETOFFLOAD in this kernel
                continue
            self._offloads = attempt
            return
        log.warn_report(f"tap: TUNSETOFFLOAD 0x{flags:x} failed")

    def set_offload(self, guest_offloads: int) -> None:
        """The guest's receive offloads (virtio-net guest feature bits) changed: the kernel
        may send frames needing them (vCPU thread, big lock)."""
        if self.vnet_hdr_len and self.fd >= 0:
            self._set_tun_offloads(vnet_hdr.tun_offloads(guest_offloads, self.has_ufo))

    def _run_script(self, script: str) -> None:
        try:
            result = subprocess.run([script, self.ifname], stdin=subprocess.DEVNULL,
                                    timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired):
            self.close()
            raise ConfigError(f"could not launch network script {script}") from None
        if result.returncode != 0:
            self.close()
            raise ConfigError(f"network script {script} failed with status "
                              f"{result.returncode}")

    # -- the main loop --------------------------------------------------------------------------

    def start(self, system: Any) -> None:
        super().start(system)
        self._resume_reading()

    def _resume_reading(self) -> None:
        if not self._reading and self.fd >= 0 and self.system is not None:
            self._reading = True
            self.system.add_reader(self.fd, self._on_readable)

    def _pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.system.remove_reader(self.fd)

    def _on_readable(self) -> None:
        while self.can_receive:
            try:
                frame = os.read(self.fd, MAX_FRAME)
            except BlockingIOError:
                return
            except OSError:
                self._pause_reading()  # the device went away: nothing more to read
                return
            if not frame:
                self._pause_reading()
                return
            if self.vnet_hdr_len:
                checked, why = vnet_hdr.check_received(frame, self.vnet_hdr_len,
                                                       self._offloads)
                if checked is None:
                    self.dropped_rx += 1
                    log.unimp(f"netdev {self.id}: received frame dropped: {why}")
                    continue
                frame = checked
            self.deliver(frame)
        self._pause_reading()  # the NIC is full: resume when it drains

    def rx_drained(self) -> None:
        self._resume_reading()

    def _output(self, frame: bytes) -> None:
        if self._pending:
            self._pending.append(frame)
            return
        self._write(frame)

    def _write(self, frame: bytes) -> None:
        try:
            os.write(self.fd, frame)
        except BlockingIOError:
            self._pending.appendleft(frame)
            if not self._writer and self.system is not None and self.system.loop is not None:
                self._writer = True
                self.system.loop.add_writer(self.fd, self._on_writable)
        except OSError as exc:
            if exc.errno not in (errno.EIO, errno.EBADFD):
                # The kernel refused this frame (a bad vnet header from the guest, say).
                log.guest_error(f"netdev {self.id}: frame of {len(frame)} bytes not sent: "
                                f"{exc.strerror}")

    def _on_writable(self) -> None:
        self._writer = False
        self.system.loop.remove_writer(self.fd)
        pending = list(self._pending)
        self._pending.clear()
        for frame in pending:
            if self._pending:
                self._pending.append(frame)
            else:
                self._write(frame)

    # -- the rest -------------------------------------------------------------------------------

    def info(self) -> str:
        if not self.ifname:
            return f"type=tap,fd={self.fd}"
        script = self.props.get("script", DEFAULT_SCRIPT)
        down = self.props.get("downscript", DEFAULT_DOWNSCRIPT)
        return f"type=tap,ifname={self.ifname},script={script},downscript={down}"

    def close(self) -> None:
        if self.fd < 0:
            return
        if self.system is not None:
            self._pause_reading()
            if self._writer and self.system.loop is not None:
                self.system.loop.remove_writer(self.fd)
        os.close(self.fd)
        self.fd = -1
        if self.downscript:
            subprocess.run([self.downscript, self.ifname], stdin=subprocess.DEVNULL,
                           timeout=60, check=False)
