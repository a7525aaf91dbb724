"""A thin wrapper over libslirp (loaded with ``dlopen``, cffi ABI mode): it mirrors the C API
and decides nothing.

:class:`Slirp` owns one ``Slirp *``; its callbacks go to a :class:`SlirpHost` (the
``-netdev user`` back-end), on the thread that called into libslirp.  Return values are
libslirp's (``-1``: failed); :func:`load` raises ``OSError`` when the library is missing.
Addresses are packed network-order bytes (``socket.inet_aton``/``inet_pton``).

libslirp is not thread-safe: every method must be called from the same thread (the main
loop).
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar

from kvmpy.net.slirp_abi import (
    DEBIAN_PACKAGE,
    GLIB_LIBRARY,
    SLIRP_CONFIG_VERSION,
    SLIRP_LIBRARY,
    SLIRP_POLL_ERR,
    SLIRP_POLL_HUP,
    SLIRP_POLL_IN,
    SLIRP_POLL_OUT,
    SLIRP_POLL_PRI,
    UINT32_MAX,
    ffi,
)

_log = logging.getLogger("kvmpy")
__all__ = ["DEBIAN_PACKAGE", "Slirp", "SlirpConfig", "SlirpHost", "SlirpTimer", "load"]
F = TypeVar("F", bound=Callable[..., Any])

_libs: tuple[Any, Any] | None = None

NO_TIMEOUT = UINT32_MAX
"""The timeout :meth:`Slirp.pollfds_fill` starts from (libslirp lowers it to at most 1 s)."""

READ_EVENTS = SLIRP_POLL_IN | SLIRP_POLL_PRI
WRITE_EVENTS = SLIRP_POLL_OUT
_POLL_BITS = ((SLIRP_POLL_IN, select.POLLIN), (SLIRP_POLL_OUT, select.POLLOUT),
              (SLIRP_POLL_PRI, select.POLLPRI), (SLIRP_POLL_ERR, select.POLLERR),
              (SLIRP_POLL_HUP, select.POLLHUP))


def to_poll(events: int) -> int:
    """SLIRP_POLL_* -> ``select.POLL*`` (QEMU's ``slirp_poll_to_gio``)."""
    return sum(poll_bit for slirp_bit, poll_bit in _POLL_BITS if events & slirp_bit)


def from_poll(revents: int) -> int:
    """``select.POLL*`` -> SLIRP_POLL_* (QEMU's ``slirp_gio_to_poll``); POLLNVAL is dropped."""
    return sum(slirp_bit for slirp_bit, poll_bit in _POLL_BITS if revents & poll_bit)


def load() -> tuple[Any, Any]:
    """(libslirp, libglib) opened once per process; ``OSError`` when either is missing."""
    global _libs
    if _libs is None:
        _libs = (ffi.dlopen(SLIRP_LIBRARY), ffi.dlopen(GLIB_LIBRARY))
    return _libs


def version() -> str:
    """libslirp's version string (``4.7.0``)."""
    return str(ffi.string(load()[0].slirp_version_string()).decode())


@dataclass
class SlirpConfig:
    """``SlirpConfig`` (version 4) in Python terms; addresses are packed bytes."""

    restricted: bool = False
    in_enabled: bool = True
    vnetwork: bytes = bytes([10, 0, 2, 0])
    vnetmask: bytes = bytes([255, 255, 255, 0])
    vhost: bytes = bytes([10, 0, 2, 2])
    in6_enabled: bool = True
    vprefix_addr6: bytes = bytes([0xFE, 0xC0]) + bytes(14)
    vprefix_len: int = 64
    vhost6: bytes = bytes([0xFE, 0xC0]) + bytes(13) + b"\x02"
    vhostname: str | None = None
    tftp_server_name: str | None = None
    tftp_path: str | None = None
    bootfile: str | None = None
    vdhcp_start: bytes = bytes([10, 0, 2, 15])
    vnameserver: bytes = bytes([10, 0, 2, 3])
    vnameserver6: bytes = bytes([0xFE, 0xC0]) + bytes(13) + b"\x03"
    vdnssearch: list[str] = field(default_factory=list)
    vdomainname: str | None = None


@dataclass(eq=False)
class SlirpTimer:
    """A timer libslirp created (``timer_new_opaque``): fire it with
    :meth:`Slirp.handle_timer`."""

    timer_id: int
    cb_opaque: Any
    token: int


class SlirpHost(Protocol):
    """What libslirp asks of its application (``SlirpCb``)."""

    def send_packet(self, frame: bytes) -> None:
        """An Ethernet frame for the guest."""

    def guest_error(self, message: str) -> None:
        """The guest misbehaved (a malformed packet, ...)."""

    def timer_mod(self, timer: SlirpTimer, expire_ms: int) -> None:
        """Fire ``timer`` when the monotonic clock reaches ``expire_ms`` milliseconds."""

    def timer_free(self, timer: SlirpTimer) -> None:
        """``timer`` is gone: never fire it."""

    def unregister_poll_fd(self, fd: int) -> None:
        """``fd`` is about to be closed: stop watching it."""

    def notify(self) -> None:
        """New events may be processed (a buffer has room again): poll soon."""


# -- callbacks (one set per process; ``opaque`` is the handle of the Slirp wrapper) ---------


def _on_callback_error(exc_type: type[BaseException], exc: BaseException,
                       tb: TracebackType | None) -> None:
    """An exception must not unwind through C: log it; the callback returns its default."""
    _log.error("libslirp callback failed", exc_info=(exc_type, exc, tb))


_SIGNATURES: dict[str, tuple[str, int | None]] = {}
"""Python callback name -> (C signature, value returned when it raises)."""


def _callback(signature: str, error: int | None = None) -> Callable[[F], F]:
    """Declare a libslirp callback; :func:`_c_callbacks` makes the C function pointers."""

    def wrap(fn: F) -> F:
        _SIGNATURES[fn.__name__.lstrip("_")] = (signature, error)
        return fn

    return wrap


def _owner(opaque: Any) -> Slirp:
    owner: Slirp = ffi.from_handle(opaque)
    return owner


@_callback("ssize_t(const void *, size_t, void *)", error=-1)
def _send_packet(buf: Any, size: int, opaque: Any) -> int:
    _owner(opaque).host.send_packet(bytes(ffi.buffer(buf, size)))
    return size


@_callback("void(const char *, void *)")
def _guest_error(msg: Any, opaque: Any) -> None:
    _owner(opaque).host.guest_error(ffi.string(msg).decode(errors="replace"))


@_callback("int64_t(void *)")
def _clock_get_ns(opaque: Any) -> int:
    return time.monotonic_ns()


@_callback("void(void *, void *)")
def _timer_free(timer: Any, opaque: Any) -> None:
    owner = _owner(opaque)
    record = owner._timers.pop(int(ffi.cast("uintptr_t", timer)), None)
    if record is not None:
        owner.host.timer_free(record)


@_callback("void(void *, int64_t, void *)")
def _timer_mod(timer: Any, expire_ms: int, opaque: Any) -> None:
    owner = _owner(opaque)
    record = owner._timers.get(int(ffi.cast("uintptr_t", timer)))
    if record is not None:
        owner.host.timer_mod(record, expire_ms)


@_callback("void(int, void *)")
def _register_poll_fd(fd: int, opaque: Any) -> None:
    """Nothing to do: slirp_pollfds_fill reports every descriptor to watch."""


@_callback("void(int, void *)")
def _unregister_poll_fd(fd: int, opaque: Any) -> None:
    _owner(opaque).host.unregister_poll_fd(fd)


@_callback("void(void *)")
def _notify(opaque: Any) -> None:
    _owner(opaque).host.notify()


@_callback("void(Slirp *, void *)")
def _init_completed(slirp: Any, opaque: Any) -> None:
    _owner(opaque)._ptr = slirp


@_callback("void *(SlirpTimerId, void *, void *)")
def _timer_new_opaque(timer_id: int, cb_opaque: Any, opaque: Any) -> Any:
    owner = _owner(opaque)
    owner._next_token += 1
    record = SlirpTimer(int(timer_id), cb_opaque, owner._next_token)
    owner._timers[record.token] = record
    return ffi.cast("void *", record.token)


@_callback("int(int, int, void *)", error=-1)
def _add_poll(fd: int, events: int, opaque: Any) -> int:
    pollfds = _owner(opaque)._pollfds
    pollfds.append((fd, events))
    return len(pollfds) - 1


@_callback("int(int, void *)")
def _get_revents(idx: int, opaque: Any) -> int:
    revents = _owner(opaque)._revents
    return revents[idx] if 0 <= idx < len(revents) else 0


@_callback("ssize_t(const void *, size_t, void *)", error=-1)
def _guestfwd_write(buf: Any, size: int, opaque: Any) -> int:
    writer: Callable[[bytes], int] = ffi.from_handle(opaque)
    return writer(bytes(ffi.buffer(buf, size)))


_SLIRP_CB_FIELDS = ("send_packet", "guest_error", "clock_get_ns", "timer_free", "timer_mod",
                    "register_poll_fd", "unregister_poll_fd", "notify", "init_completed",
                    "timer_new_opaque")
_c: dict[str, Any] = {}


def _c_callbacks() -> dict[str, Any]:
    """The C function pointers of the callbacks, and ``SlirpCb`` filled with them (made on
    first use, kept for the life of the process: libslirp keeps the pointer)."""
    if not _c:
        for name, (signature, error) in _SIGNATURES.items():
            _c[name] = ffi.callback(signature, globals()[f"_{name}"], error=error,
                                    onerror=_on_callback_error)
        _c["SlirpCb"] = ffi.new("SlirpCb *", {name: _c[name] for name in _SLIRP_CB_FIELDS})
    return _c


def _in_addr(packed: bytes) -> Any:
    addr = ffi.new("struct in_addr *")
    ffi.memmove(addr, packed, 4)
    return addr


def _in6_addr(packed: bytes) -> Any:
    addr = ffi.new("struct in6_addr *")
    ffi.memmove(addr, packed, 16)
    return addr


def _cstr(keep: list[Any], text: str | None) -> Any:
    if text is None:
        return ffi.NULL
    value = ffi.new("char[]", text.encode())
    keep.append(value)
    return value


class Slirp:
    """One libslirp instance (``slirp_new`` .. ``slirp_cleanup``)."""

    def __init__(self, config: SlirpConfig, host: SlirpHost) -> None:
        self._lib, self._glib = load()
        self.host = host
        self._handle = ffi.new_handle(self)
        self._ptr: Any = ffi.NULL
        self._timers: dict[int, SlirpTimer] = {}
        self._next_token = 0
        self._pollfds: list[tuple[int, int]] = []
        self._revents: Sequence[int] = ()
        self._guestfwd_handles: list[Any] = []
        keep: list[Any] = []
        cfg = ffi.new("SlirpConfig *")
        cfg.version = SLIRP_CONFIG_VERSION
        cfg.restricted = int(config.restricted)
        cfg.in_enabled = config.in_enabled
        cfg.vnetwork = _in_addr(config.vnetwork)[0]
        cfg.vnetmask = _in_addr(config.vnetmask)[0]
        cfg.vhost = _in_addr(config.vhost)[0]
        cfg.in6_enabled = config.in6_enabled
        cfg.vprefix_addr6 = _in6_addr(config.vprefix_addr6)[0]
        cfg.vprefix_len = config.vprefix_len
        cfg.vhost6 = _in6_addr(config.vhost6)[0]
        cfg.vhostname = _cstr(keep, config.vhostname)
        cfg.tftp_server_name = _cstr(keep, config.tftp_server_name)
        cfg.tftp_path = _cstr(keep, config.tftp_path)
        cfg.bootfile = _cstr(keep, config.bootfile)
        cfg.vdhcp_start = _in_addr(config.vdhcp_start)[0]
        cfg.vnameserver = _in_addr(config.vnameserver)[0]
        cfg.vnameserver6 = _in6_addr(config.vnameserver6)[0]
        if config.vdnssearch:
            names = ffi.new("const char *[]",
                            [_cstr(keep, name) for name in config.vdnssearch] + [ffi.NULL])
            keep.append(names)
            cfg.vdnssearch = names
        cfg.vdomainname = _cstr(keep, config.vdomainname)
        ptr = self._lib.slirp_new(cfg, _c_callbacks()["SlirpCb"], self._handle)
        if ptr == ffi.NULL:
            raise OSError("slirp_new failed")
        self._ptr = ptr

    @property
    def closed(self) -> bool:
        return bool(self._ptr == ffi.NULL)

    def cleanup(self) -> None:
        """``slirp_cleanup``: closes every socket (timer_free and unregister_poll_fd are
        called back).  Safe to call twice."""
        if self._ptr != ffi.NULL:
            ptr, self._ptr = self._ptr, ffi.NULL
            self._lib.slirp_cleanup(ptr)
        self._guestfwd_handles.clear()

    def input(self, frame: bytes) -> None:
        """``slirp_input``: one Ethernet frame from the guest."""
        self._lib.slirp_input(self._ptr, ffi.from_buffer("uint8_t[]", frame), len(frame))

    def pollfds_fill(self) -> tuple[int, list[tuple[int, int]]]:
        """``slirp_pollfds_fill``: (timeout in ms, [(fd, SLIRP_POLL_* events)]).

        The list's indices are those :meth:`pollfds_poll` asks revents for."""
        self._pollfds = []
        timeout = ffi.new("uint32_t *", UINT32_MAX)
        self._lib.slirp_pollfds_fill(self._ptr, timeout, _c_callbacks()["add_poll"],
                                     self._handle)
        return int(timeout[0]), self._pollfds

    def pollfds_poll(self, revents: Sequence[int], select_error: bool = False) -> None:
        """``slirp_pollfds_poll``: ``revents[i]`` (SLIRP_POLL_*) for the i-th descriptor of
        the last :meth:`pollfds_fill`; also runs libslirp's TCP and IP timers."""
        self._revents = revents
        try:
            self._lib.slirp_pollfds_poll(self._ptr, int(select_error),
                                         _c_callbacks()["get_revents"], self._handle)
        finally:
            self._revents = ()

    def handle_timer(self, timer: SlirpTimer) -> None:
        if timer.token in self._timers:
            self._lib.slirp_handle_timer(self._ptr, timer.timer_id, timer.cb_opaque)

    def add_hostfwd(self, is_udp: bool, host_addr: bytes, host_port: int,
                    guest_addr: bytes, guest_port: int) -> int:
        return int(self._lib.slirp_add_hostfwd(self._ptr, int(is_udp), _in_addr(host_addr)[0],
                                               host_port, _in_addr(guest_addr)[0],
                                               guest_port))

    def remove_hostfwd(self, is_udp: bool, host_addr: bytes, host_port: int) -> int:
        return int(self._lib.slirp_remove_hostfwd(self._ptr, int(is_udp),
                                                  _in_addr(host_addr)[0], host_port))

    def add_exec(self, cmdline: str, guest_addr: bytes, guest_port: int) -> tuple[int, bytes]:
        """``slirp_add_exec``: a guest connection to guest_addr:guest_port runs ``cmdline``.

        Returns (result, the address libslirp used: 0.0.0.0 becomes x.x.x.4)."""
        addr = _in_addr(guest_addr)
        result = int(self._lib.slirp_add_exec(self._ptr, cmdline.encode(), addr, guest_port))
        return result, bytes(ffi.buffer(addr, 4))

    def add_guestfwd(self, write: Callable[[bytes], int], guest_addr: bytes,
                     guest_port: int) -> tuple[int, bytes]:
        """``slirp_add_guestfwd``: what the guest sends to guest_addr:guest_port goes to
        ``write``; feed the other direction with :meth:`socket_recv`.

        Returns (result, the address libslirp used: 0.0.0.0 becomes x.x.x.4)."""
        handle = ffi.new_handle(write)
        addr = _in_addr(guest_addr)
        result = int(self._lib.slirp_add_guestfwd(self._ptr, _c_callbacks()["guestfwd_write"],
                                                  handle, addr, guest_port))
        if result >= 0:
            self._guestfwd_handles.append(handle)
        return result, bytes(ffi.buffer(addr, 4))

    def socket_can_recv(self, guest_addr: bytes, guest_port: int) -> int:
        return int(self._lib.slirp_socket_can_recv(self._ptr, _in_addr(guest_addr)[0],
                                                   guest_port))

    def socket_recv(self, guest_addr: bytes, guest_port: int, data: bytes) -> None:
        self._lib.slirp_socket_recv(self._ptr, _in_addr(guest_addr)[0], guest_port,
                                    ffi.from_buffer("uint8_t[]", data), len(data))

    def remove_guestfwd(self, guest_addr: bytes, guest_port: int) -> int:
        return int(self._lib.slirp_remove_guestfwd(self._ptr, _in_addr(guest_addr)[0],
                                                   guest_port))

    def connection_info(self) -> str:
        """``slirp_connection_info``: the table ``info usernet`` prints."""
        text = self._lib.slirp_connection_info(self._ptr)
        try:
            return str(ffi.string(text).decode(errors="replace"))
        finally:
            self._glib.g_free(text)
