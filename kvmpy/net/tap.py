"""``-netdev tap``: a host tap device (Linux's tun driver), QEMU 7.2's net/tap.c and
net/tap-linux.c.

``ifname=NAME`` creates or attaches the interface (root, or its owner); ``fd=N`` takes a tap
already open (what libvirt passes).  ``script=``/``downscript=`` run as QEMU runs them (with
the interface name as their argument; ``no`` for none; the default is QEMU's
``/etc/qemu-ifup``/``/etc/qemu-ifdown``).  Frames are plain Ethernet (no virtio-net header:
``vnet_hdr=on`` is not built).  Reads stop while the NIC has no room and resume when it has;
writes the kernel refuses for now wait for the device to become writable, in order.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import struct
import subprocess
from collections.abc import Mapping
from typing import Any

from kvmpy import qom
from kvmpy.errors import ConfigError, NotBuiltError
from kvmpy.net.base import NetBackend

PATH_NET_TUN = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
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
        for key in ("br", "helper"):
            if key in props:
                raise NotBuiltError(f"tap: {key}= (the bridge helper) is not built in kvmpy")
        if _bool(props, "vnet_hdr"):
            raise NotBuiltError("tap: vnet_hdr=on is not built in kvmpy (frames are plain "
                                "Ethernet)")
        if _bool(props, "vhost"):
            raise NotBuiltError("tap: vhost=on is not built in kvmpy")
        self._pending: collections.deque[bytes] = collections.deque()
        self._writer = False
        self._reading = False
        self.downscript = ""
        if "fd" in props:
            if any(k in props for k in ("ifname", "script", "downscript")):
                raise ConfigError("ifname=, script=, downscript= and vnet_hdr= are invalid "
                                  "with fd=")
            self.fd = self._take_fd(props["fd"])
            self.ifname = ""
        else:
            self.fd, self.ifname = self._open(props.get("ifname", ""))
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
    def _open(name: str) -> tuple[int, str]:
        if len(name.encode()) >= IFNAMSIZ:
            raise ConfigError(f"tap: interface name '{name}' is longer than "
                              f"{IFNAMSIZ - 1} bytes")
        try:
            fd = os.open(PATH_NET_TUN, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"could not open {PATH_NET_TUN}: {exc.strerror}") from None
        request = struct.pack(f"{IFNAMSIZ}sH22x", name.encode(), IFF_TAP | IFF_NO_PI)
        try:
            answer = fcntl.ioctl(fd, TUNSETIFF, request)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"could not configure {PATH_NET_TUN} ({name}): "
                              f"{exc.strerror}") from None
        return fd, answer[:IFNAMSIZ].split(b"\0", 1)[0].decode()

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
                raise

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
