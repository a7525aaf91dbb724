"""Migration URIs (``tcp:``, ``unix:``, ``exec:``, ``fd:``) and the byte channels they open.

The grammar and the error texts are QEMU 7.2's (``migration/socket.c``, ``exec.c``, ``fd.c``,
``util/qemu-sockets.c``, ``io/channel-*.c``): an unknown scheme is refused when the command
runs, a connection that fails later fails the migration with ``error-desc`` set.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmpy.errors import KvmpyError

FdLookup = Callable[[str], int | None]
"""A monitor's ``getfd`` table: name -> file descriptor (taken out of the table), or None."""


class MigrationError(KvmpyError):
    """A migration cannot start or goes wrong; the text is QEMU's ``error-desc``."""


@dataclass(frozen=True)
class MigrationURI:
    """A parsed URI: ``scheme`` and, by scheme, ``host``/``port``, ``path``, ``command`` or
    ``fd_name``."""

    scheme: str
    text: str
    host: str = ""
    port: str = ""
    path: str = ""
    command: str = ""
    fd_name: str = ""


def parse(uri: str, incoming: bool = False) -> MigrationURI:
    """Split ``uri``; QEMU's errors for a bad one (``incoming``: the words of ``-incoming``)."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in ("tcp", "unix", "exec", "fd"):
        raise MigrationError(f"unknown migration protocol: {uri}" if incoming
                             else "Parameter 'uri' expects a valid migration protocol")
    if scheme == "tcp":
        host, port = _split_inet(rest)
        return MigrationURI("tcp", uri, host=host, port=port)
    if scheme == "unix":
        if not rest:
            raise MigrationError("invalid Unix socket address")
        return MigrationURI("unix", uri, path=rest)
    if scheme == "exec":
        return MigrationURI("exec", uri, command=rest)
    return MigrationURI("fd", uri, fd_name=rest)


def _split_inet(text: str) -> tuple[str, str]:
    """``host:port[,options]`` or ``[v6addr]:port``: QEMU's inet_parse."""
    address = text.split(",", 1)[0]
    if address.startswith("["):
        close = address.find("]")
        if close < 0 or address[close + 1:close + 2] != ":":
            raise MigrationError(f"error parsing IPv6 address '{text}'")
        host, port = address[1:close], address[close + 2:]
    else:
        host, sep, port = address.rpartition(":")
        if not sep:
            raise MigrationError(f"error parsing address '{text}'")
    if not port:
        raise MigrationError(f"error parsing address '{text}'")
    return host, port


# -- channels -------------------------------------------------------------------------------

class Channel:
    """A byte stream to or from the other side.  ``what`` names it in error texts
    (QEMU's ``Unable to write to socket``)."""

    what = "socket"

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; b"" at the end."""
        raise NotImplementedError

    def abort(self) -> None:
        """From another thread: make a blocked read or write return at once."""

    def finish(self) -> None:
        """After the last write: flush and close (an exec: command is waited for)."""
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class SocketChannel(Channel):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise MigrationError(f"Unable to write to {self.what}: "
                                 f"{exc.strerror or exc}") from None

    def read(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)
        except OSError as exc:
            raise MigrationError(f"Unable to read from {self.what}: "
                                 f"{exc.strerror or exc}") from None

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.close()

    def close(self) -> None:
        self.sock.close()


class _DescriptorChannel(Channel):
    """Reads and writes one descriptor, ``fd``; errors name it as ``what``."""

    fd: int
    what: str

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            raise MigrationError(f"Unable to write to {self.what}: "
                                 f"{exc.strerror or exc}") from None

    def read(self, size: int) -> bytes:
        try:
            return os.read(self.fd, size)
        except OSError as exc:
            raise MigrationError(f"Unable to read from {self.what}: "
                                 f"{exc.strerror or exc}") from None


class FdChannel(_DescriptorChannel):
    """A file descriptor of any kind (``fd:``): a pipe, a file or a socket."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.what = "socket" if _is_socket(fd) else "file"
        os.set_blocking(fd, True)

    def abort(self) -> None:
        if self.what == "socket":
            with contextlib.suppress(OSError):
                socket.socket(fileno=os.dup(self.fd)).shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _is_socket(fd: int) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


class CommandChannel(_DescriptorChannel):
    """``exec:CMD``: ``/bin/sh -c CMD`` with its stdin (outgoing) or stdout (incoming)."""

    what = "command"

    def __init__(self, command: str, outgoing: bool) -> None:
        try:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", command], start_new_session=True,
                stdin=subprocess.PIPE if outgoing else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if outgoing else subprocess.PIPE)
        except OSError as exc:
            raise MigrationError(f"Unable to spawn command: {exc.strerror or exc}") from None
        stream = self.proc.stdin if outgoing else self.proc.stdout
        assert stream is not None
        self.fd = stream.fileno()

    def abort(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, 9)

    def finish(self) -> None:
        """Close the command's stdin and wait for it, as QEMU's channel close does."""
        self._close_streams()
        self.proc.wait()

    def close(self) -> None:
        self._close_streams()
        if self.proc.poll() is None:
            self.abort()
        self.proc.wait()

    def _close_streams(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# -- outgoing -------------------------------------------------------------------------------

def check_outgoing(uri: MigrationURI, fds: FdLookup) -> int | None:
    """What QEMU checks before ``migrate`` returns: an ``fd:`` name must be known (its fd is
    taken from the monitor and returned)."""
    if uri.scheme != "fd":
        return None
    fd = fds(uri.fd_name)
    if fd is None:
        raise MigrationError(f"File descriptor named '{uri.fd_name}' has not been found")
    return fd


def connect(uri: MigrationURI, fd: int | None,
            cancelled: Callable[[], bool] = lambda: False) -> Channel:
    """Open the outgoing channel (blocking: called on the migration thread); a connection
    that takes its time gives up as soon as ``cancelled()``."""
    if uri.scheme == "exec":
        return CommandChannel(uri.command, outgoing=True)
    if uri.scheme == "fd":
        assert fd is not None
        return FdChannel(fd)
    if uri.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _connect(sock, uri.path, cancelled)
        except OSError as exc:
            sock.close()
            raise MigrationError(f"Failed to connect to '{uri.path}': "
                                 f"{exc.strerror or exc}") from None
        return SocketChannel(sock)
    try:
        infos = socket.getaddrinfo(uri.host or "localhost", uri.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MigrationError(f"address resolution failed for {uri.host}:{uri.port}: "
                             f"{exc.strerror}") from None
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            _connect(sock, address, cancelled)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SocketChannel(sock)
    reason = error.strerror if error is not None and error.strerror else str(error)
    raise MigrationError(f"Failed to connect to '{uri.host}:{uri.port}': {reason}")


def _connect(sock: socket.socket, address: Any, cancelled: Callable[[], bool]) -> None:
    """connect(), looking at ``cancelled()`` every 100 ms while the peer does not answer."""
    sock.setblocking(False)
    err = sock.connect_ex(address)
    while err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
        if cancelled():
            raise OSError(errno.ECANCELED, "cancelled")
        poller = select.poll()  # not select(): descriptors may be numbered past 1023
        poller.register(sock, select.POLLOUT)
        if poller.poll(100):
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
    sock.setblocking(True)


# -- incoming -------------------------------------------------------------------------------

class Listener:
    """Where an incoming migration comes from; :meth:`accept` blocks for the one channel."""

    def __init__(self, uri: MigrationURI) -> None:
        self.uri = uri
        self.sock: socket.socket | None = None
        self.fd: int | None = None
        self.closed = False
        self.addresses: list[dict[str, Any]] = []
        """QEMU's ``socket-address`` of ``query-migrate``: where it listened."""

    def _listening(self, sock: socket.socket) -> None:
        self.sock = sock
        if sock.family == socket.AF_UNIX:
            self.addresses = [{"path": self.uri.path, "type": "unix"}]
            return
        host, port = sock.getsockname()[:2]
        entry: dict[str, Any] = {"port": str(port)}
        entry["ipv6" if sock.family == socket.AF_INET6 else "ipv4"] = True
        entry.update({"host": host, "type": "inet"})
        self.addresses = [entry]

    def accept(self) -> Channel:
        if self.uri.scheme == "exec":
            return CommandChannel(self.uri.command, outgoing=False)
        if self.fd is not None:
            return FdChannel(self.fd)
        assert self.sock is not None
        try:
            conn, _ = self.sock.accept()
        except OSError as exc:
            raise MigrationError(f"Failed to accept connection: {exc.strerror or exc}") \
                from None
        finally:
            self.close()
        return SocketChannel(conn)

    def close(self) -> None:
        self.closed = True
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            if self.sock.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    os.unlink(self.uri.path)


def listen(uri: MigrationURI, fds: FdLookup) -> Listener:
    """Bind (``tcp:``, ``unix:``) or take the fd (``fd:``) now, so that a bad address is
    reported by the command; the connection itself is waited for on a thread."""
    listener = Listener(uri)
    if uri.scheme == "fd":
        fd: int | None
        if uri.fd_name.isdigit():
            fd = int(uri.fd_name)
            try:
                os.fstat(fd)
            except OSError:
                raise MigrationError(f"Invalid file descriptor number '{uri.fd_name}'") \
                    from None
        else:
            fd = fds(uri.fd_name)
            if fd is None:
                raise MigrationError(f"File descriptor named '{uri.fd_name}' has not been "
                                     "found")
        listener.fd = fd
    elif uri.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(OSError):
            if os.path.exists(uri.path) and _is_socket_path(uri.path):
                os.unlink(uri.path)
        try:
            sock.bind(uri.path)
            sock.listen(1)
        except OSError as exc:
            sock.close()
            raise MigrationError(f"Failed to bind socket to {uri.path}: "
                                 f"{exc.strerror or exc}") from None
        listener._listening(sock)
    elif uri.scheme == "tcp":
        listener._listening(_listen_inet(uri))
    return listener


def _is_socket_path(path: str) -> bool:
    import stat

    return stat.S_ISSOCK(os.stat(path).st_mode)


def _listen_inet(uri: MigrationURI) -> socket.socket:
    try:
        infos = socket.getaddrinfo(uri.host or None, uri.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise MigrationError(f"address resolution failed for {uri.host}:{uri.port}: "
                             f"{exc.strerror}") from None
    error: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen(1)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    reason = error.strerror if error is not None and error.strerror else str(error)
    raise MigrationError(f"Failed to bind socket: {reason}")
