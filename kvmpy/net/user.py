"""``-netdev user``: QEMU's user-mode network stack, libslirp, on kvmpy's main loop.

The guest sees a private network (QEMU 7.2's defaults: 10.0.2.0/24, gateway and host
10.0.2.2, DNS 10.0.2.3, first DHCP address 10.0.2.15, IPv6 fec0::/64); its connections become
ordinary host sockets, 10.0.2.2 is the host's loopback, and ``hostfwd=`` rules forward host
ports into the guest.  Options and rules are checked in :mod:`kvmpy.net.user_options`; the
HMP commands ``info usernet``, ``hostfwd_add`` and ``hostfwd_remove`` print what QEMU prints.

Main loop integration as QEMU's (``net_slirp_poll_notify``): after anything that may change
libslirp's sockets, one *round* runs on the main loop: revents for the descriptors of the
last ``slirp_pollfds_fill`` (a zero-timeout ``poll``), ``slirp_pollfds_poll``, then a new
fill whose descriptors are watched as main-loop readers/writers (diffed against the previous
set) and whose timeout arms the next round.  libslirp's own timers run on
``system.schedule``.  Every libslirp call happens on the main loop thread.
"""

from __future__ import annotations

import errno
import os
import pwd
import select
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kvmpy import log, qom
from kvmpy.errors import ConfigError, KvmpyError, NotBuiltError
from kvmpy.net.base import NetBackend
from kvmpy.net.user_options import (
    GuestFwd,
    parse_guestfwd,
    parse_hostfwd,
    parse_hostfwd_remove,
    parse_options,
)

if TYPE_CHECKING:
    from kvmpy.chardev.base import Chardev
    from kvmpy.net.slirp import Slirp, SlirpTimer

# kvmpy.net.slirp (and the cdef behind it) is imported when a user netdev is created, not
# when the type registry loads this module at every start.

SMBD_COMMAND = "/usr/sbin/smbd"
"""Debian's QEMU is built with ``CONFIG_SMBD_COMMAND`` set to this."""


# -- the back-end -----------------------------------------------------------------------------


@qom.register_type("netdev-user", "netdev", description="user mode network stack (libslirp)")
class UserNetdev(NetBackend):
    """``-netdev user,id=ID,...``: a libslirp instance for one NIC."""

    type_label = "user"

    def __init__(self, netdev_id: str, props: Mapping[str, str],
                 lists: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(netdev_id, props, lists)
        self.options = parse_options({**self.props, **self.lists})
        self.hub_name = netdev_id
        self._slirp: Slirp | None = None
        self._smb_dir: str | None = None
        self._pollfds: list[tuple[int, int]] = []
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._round_pending = False
        self._poll_timer: Any = None
        self._timer_deadlines: dict[SlirpTimer, int] = {}
        self._timer_cancels: dict[SlirpTimer, Callable[[], None]] = {}
        self._guestfwd_chardevs: list[Chardev] = []
        from kvmpy.net import slirp as wrapper

        try:
            wrapper.load()
        except OSError as exc:
            raise ConfigError(f"libslirp is not installed (Debian package "
                              f"{wrapper.DEBIAN_PACKAGE})", option="-netdev user") from exc
        try:
            self._slirp = wrapper.Slirp(self.options.slirp, self)
        except OSError as exc:
            raise ConfigError("could not create the user mode network stack") from exc
        try:
            self._set_up_forwarding()
        except BaseException:
            self.close()
            raise

    def _set_up_forwarding(self) -> None:
        # QEMU keeps hostfwd and guestfwd rules on one list, each prepended: so guestfwd rules
        # are set up first, each group last rule first (what an error names and the order of
        # ``info usernet`` follow from this).
        for rule in reversed(self.options.guestfwd):
            self._add_guestfwd(rule)
        for rule in reversed(self.options.hostfwd):
            self.add_hostfwd(rule)
        if self.options.smb is not None:
            self._set_up_smb(self.options.smb, self.options.smbserver)

    @property
    def slirp(self) -> Slirp:
        if self._slirp is None or self._slirp.closed:
            raise KvmpyError(f"netdev {self.id}: the user mode network stack is closed")
        return self._slirp

    def info(self) -> str:
        net = socket.inet_ntoa(self.options.slirp.vnetwork)
        return f"type=user,net={net},restrict={'on' if self.options.slirp.restricted else 'off'}"

    # -- forwarding ---------------------------------------------------------------------------

    def add_hostfwd(self, rule: str) -> None:
        """Add a ``hostfwd`` rule; ConfigError worded as QEMU's."""
        fwd = parse_hostfwd(rule)
        if self.slirp.add_hostfwd(fwd.is_udp, fwd.host_addr, fwd.host_port, fwd.guest_addr,
                                  fwd.guest_port) < 0:
            raise ConfigError(f"Could not set up host forwarding rule '{rule}'")
        self._kick()

    def remove_hostfwd(self, is_udp: bool, host_addr: bytes, host_port: int) -> bool:
        """Remove the rule listening on host_addr:host_port; False when there is none."""
        removed = self.slirp.remove_hostfwd(is_udp, host_addr, host_port) >= 0
        self._kick()
        return removed

    def _add_guestfwd(self, rule: str) -> None:
        fwd = parse_guestfwd(rule)
        if fwd.target.startswith("cmd:"):
            result, _ = self.slirp.add_exec(fwd.target[4:], fwd.server, fwd.port)
        else:
            result = self._add_guestfwd_chardev(fwd)
        if result < 0:
            raise ConfigError(f"Conflicting/invalid host:port in guest forwarding rule "
                              f"'{rule}'")

    def _add_guestfwd_chardev(self, fwd: GuestFwd) -> int:
        """``-DEVICE``: a chardev in the legacy ``-serial`` syntax (``tcp:HOST:PORT``,
        ``unix:PATH``, ...) carries the guest's connection to server:port."""
        from kvmpy.chardev.setup import ChardevBuilder

        label = f"guestfwd.tcp.{fwd.port}"
        if fwd.target.startswith("mon:"):
            raise NotBuiltError("a monitor on a guestfwd device is not built in kvmpy")
        try:
            chardev, _ = ChardevBuilder().add_compat(fwd.target, label, "")
        except ConfigError as exc:
            raise ConfigError(f"Could not open guest forwarding device '{label}': {exc}") \
                from exc

        def write(data: bytes) -> int:
            chardev.write(data)
            return len(data)

        result, server = self.slirp.add_guestfwd(write, fwd.server, fwd.port)
        if result < 0:
            chardev.close()
            return result
        port = fwd.port
        chardev.set_handlers(lambda data: self._guestfwd_recv(server, port, data),
                             lambda: self._guestfwd_room(server, port))
        self._guestfwd_chardevs.append(chardev)
        return result

    def _guestfwd_recv(self, server: bytes, port: int, data: bytes) -> None:
        if self._slirp is not None and not self._slirp.closed:
            self._slirp.socket_recv(server, port, data)
            self._kick()

    def _guestfwd_room(self, server: bytes, port: int) -> int:
        if self._slirp is None or self._slirp.closed:
            return 0
        return self._slirp.socket_can_recv(server, port)

    def _set_up_smb(self, exported_dir: str, server: bytes) -> None:
        """``smb=DIR``: QEMU's ``slirp_smb``, a private smbd for the guest at x.x.x.4."""
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            raise ConfigError("Failed to retrieve user name") from None
        if not os.path.exists(SMBD_COMMAND):
            raise ConfigError(f"Could not find '{SMBD_COMMAND}', please install it")
        if not os.access(exported_dir, os.R_OK | os.X_OK):
            code = errno.ENOENT if not os.path.exists(exported_dir) else errno.EACCES
            raise ConfigError(f"Error accessing shared directory '{exported_dir}': "
                              f"{os.strerror(code)}")
        try:
            self._smb_dir = tempfile.mkdtemp(prefix="qemu-smb.")
        except OSError:
            raise ConfigError("Could not create samba server dir") from None
        smb_conf = os.path.join(self._smb_dir, "smb.conf")
        d = self._smb_dir
        try:
            with open(smb_conf, "w") as conf:
                conf.write(
                    f"[global]\nprivate dir={d}\ninterfaces=127.0.0.1\n"
                    f"bind interfaces only=yes\npid directory={d}\nlock directory={d}\n"
                    f"state directory={d}\ncache directory={d}\nncalrpc dir={d}/ncalrpc\n"
                    f"log file={d}/log.smbd\nsmb passwd file={d}/smbpasswd\n"
                    "security = user\nmap to guest = Bad User\nload printers = no\n"
                    "printing = bsd\ndisable spoolss = yes\nusershare max shares = 0\n"
                    f"[qemu]\npath={exported_dir}\nread only=no\nguest ok=yes\n"
                    f"force user={user}\n")
        except OSError:
            raise ConfigError(f"Could not create samba server configuration file "
                              f"'{smb_conf}'") from None
        cmdline = f"{SMBD_COMMAND} -l {d} -s {smb_conf}"
        if self.slirp.add_exec(cmdline, server, 139)[0] < 0 or \
                self.slirp.add_exec(cmdline, server, 445)[0] < 0:
            raise ConfigError("Conflicting/invalid smbserver address")

    def connection_info(self) -> str:
        """``info usernet`` for this back-end (QEMU's ``hmp_info_usernet``)."""
        return f"Hub {self.hub_id} ({self.hub_name}):\n{self.slirp.connection_info()}"

    # -- main loop ----------------------------------------------------------------------------

    def start(self, system: Any) -> None:
        """The main loop runs (``system.loop`` is set): watch descriptors, arm timers."""
        super().start(system)
        for timer in list(self._timer_deadlines):
            self._arm_timer(timer)
        for chardev in self._guestfwd_chardevs:
            attach = getattr(chardev, "attach_loop", None)
            fd = chardev.fileno()
            if attach is not None:
                attach(system)
            elif fd is not None:
                system.add_reader(fd, chardev.on_readable)
        self._kick()

    def _output(self, frame: bytes) -> None:
        if self._slirp is None or self._slirp.closed:
            return
        self._slirp.input(frame)
        self._kick()

    def _kick(self) -> None:
        """Run a round soon (once, however many asked)."""
        if self._round_pending or self.system is None:
            return
        self._round_pending = True
        self.system.call_soon(self._round)

    def _round(self) -> None:
        self._round_pending = False
        slirp = self._slirp
        if slirp is None or slirp.closed:
            return
        slirp.pollfds_poll(self._revents())
        timeout_ms, self._pollfds = slirp.pollfds_fill()
        self._watch(self._pollfds)
        self._arm_poll_timer(timeout_ms)
        for chardev in self._guestfwd_chardevs:
            chardev.accept_input()      # a guest connection may have room now

    def _revents(self) -> list[int]:
        """Zero-timeout poll of the descriptors of the last fill, as SLIRP_POLL_* bits."""
        from kvmpy.net.slirp import from_poll, to_poll

        if not self._pollfds:
            return []
        poller = select.poll()
        for fd, events in self._pollfds:
            poller.register(fd, to_poll(events))
        ready = dict(poller.poll(0))
        return [from_poll(ready.get(fd, 0)) for fd, _ in self._pollfds]

    def _watch(self, pollfds: Iterable[tuple[int, int]]) -> None:
        """Make the main loop's readers/writers match the descriptors libslirp asked for."""
        from kvmpy.net.slirp import READ_EVENTS, WRITE_EVENTS

        readers = {fd for fd, events in pollfds if events & READ_EVENTS}
        writers = {fd for fd, events in pollfds if events & WRITE_EVENTS}
        loop = self.system.loop
        for fd in self._readers - readers:
            self.system.remove_reader(fd)
        for fd in self._writers - writers:
            loop.remove_writer(fd)
        for fd in readers - self._readers:
            self.system.add_reader(fd, self._kick)
        for fd in writers - self._writers:
            loop.add_writer(fd, self._kick)
        self._readers, self._writers = readers, writers

    def _arm_poll_timer(self, timeout_ms: int) -> None:
        """libslirp wants a round within ``timeout_ms`` (its TCP timers run in the poll)."""
        from kvmpy.net.slirp import NO_TIMEOUT

        loop = self.system.loop
        if timeout_ms >= NO_TIMEOUT or loop is None:
            return
        when = loop.time() + timeout_ms / 1000
        handle = self._poll_timer
        if handle is not None and not handle.cancelled() and handle.when() <= when:
            return
        if handle is not None:
            handle.cancel()
        self._poll_timer = loop.call_at(when, self._on_poll_timer)

    def _on_poll_timer(self) -> None:
        self._poll_timer = None
        self._round()

    # -- SlirpHost: libslirp's callbacks ------------------------------------------------------

    def send_packet(self, frame: bytes) -> None:
        if self.system is not None:
            self.deliver(frame)

    def guest_error(self, message: str) -> None:
        log.guest_error(f"netdev {self.id}: {message}")

    def timer_mod(self, timer: SlirpTimer, expire_ms: int) -> None:
        self._cancel_timer(timer)
        self._timer_deadlines[timer] = expire_ms * 1_000_000
        if self.system is not None:
            self._arm_timer(timer)

    def timer_free(self, timer: SlirpTimer) -> None:
        self._cancel_timer(timer)
        self._timer_deadlines.pop(timer, None)

    def _arm_timer(self, timer: SlirpTimer) -> None:
        def fire() -> None:
            self._timer_cancels.pop(timer, None)
            self._timer_deadlines.pop(timer, None)
            if self._slirp is not None and not self._slirp.closed:
                self._slirp.handle_timer(timer)
                self._kick()

        self._timer_cancels[timer] = self.system.schedule(self._timer_deadlines[timer], fire)

    def _cancel_timer(self, timer: SlirpTimer) -> None:
        cancel = self._timer_cancels.pop(timer, None)
        if cancel is not None:
            cancel()

    def unregister_poll_fd(self, fd: int) -> None:
        # The descriptor is closed next and its number may come back for another socket,
        # which the loop would then not watch: forget it now.
        if fd in self._readers:
            self._readers.discard(fd)
            self.system.remove_reader(fd)
        if fd in self._writers:
            self._writers.discard(fd)
            self.system.loop.remove_writer(fd)

    def notify(self) -> None:
        self._kick()

    # -- end ----------------------------------------------------------------------------------

    def close(self) -> None:
        if self.system is not None and self.system.loop is not None:
            self._watch([])
        if self._poll_timer is not None:
            self._poll_timer.cancel()
            self._poll_timer = None
        if self._slirp is not None:
            # slirp_cleanup closes every socket, calling timer_free and unregister_poll_fd.
            self._slirp.cleanup()
            self._slirp = None
        for chardev in self._guestfwd_chardevs:
            chardev.set_handlers(None)
            chardev.close()
        self._guestfwd_chardevs.clear()
        for timer in list(self._timer_cancels):
            self._cancel_timer(timer)
        self._timer_deadlines.clear()
        if self._smb_dir is not None:
            shutil.rmtree(self._smb_dir, ignore_errors=True)
            self._smb_dir = None


# -- HMP: info usernet, hostfwd_add, hostfwd_remove ------------------------------------------


def user_netdevs(netdevs: Mapping[str, Any]) -> list[UserNetdev]:
    return [nd for nd in netdevs.values() if isinstance(nd, UserNetdev)]


def _lookup(netdevs: Mapping[str, Any], netdev_id: str | None) -> UserNetdev | str:
    """QEMU's ``slirp_lookup``: the back-end, or the message to print."""
    if netdev_id is not None:
        netdev = netdevs.get(netdev_id)
        if netdev is None:
            return f"unrecognized netdev id '{netdev_id}'"
        if not isinstance(netdev, UserNetdev):
            return "invalid device specified"
        return netdev
    stacks = user_netdevs(netdevs)
    if not stacks:
        return "user mode network stack not in use"
    return stacks[0]


def hmp_info_usernet(netdevs: Mapping[str, Any]) -> str:
    """``info usernet``: each user back-end's connections, QEMU 7.2's format."""
    return "".join(nd.connection_info() for nd in user_netdevs(netdevs)).rstrip("\n")


def hmp_hostfwd_add(netdevs: Mapping[str, Any], arg1: str, arg2: str | None = None) -> str:
    """``hostfwd_add [netdev_id] [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport``."""
    netdev = _lookup(netdevs, arg1 if arg2 is not None else None)
    if isinstance(netdev, str):
        return netdev
    try:
        netdev.add_hostfwd(arg2 if arg2 is not None else arg1)
    except ConfigError as exc:
        return str(exc)
    return ""


def hmp_hostfwd_remove(netdevs: Mapping[str, Any], arg1: str, arg2: str | None = None) -> str:
    """``hostfwd_remove [netdev_id] [tcp|udp]:[hostaddr]:hostport``."""
    netdev = _lookup(netdevs, arg1 if arg2 is not None else None)
    if isinstance(netdev, str):
        return netdev
    rule = arg2 if arg2 is not None else arg1
    parsed = parse_hostfwd_remove(rule)
    if parsed is None:
        return "invalid format"
    removed = netdev.remove_hostfwd(*parsed)
    return f"host forwarding rule for {rule} {'removed' if removed else 'not found'}"

