"""``-chardev socket``: unix or TCP, server or client, one peer at a time, as QEMU.

Server (``server=on``): listens; with ``wait=on`` (the default) ``open()`` blocks until the first
client connects, with ``wait=off`` the VM starts at once.  While a client is connected further
connections wait in the backlog; when it leaves, the next one is accepted.  Output written while
no client is connected is dropped.  Client (``server=off``): connects at open (an error if that
fails, unless ``reconnect=SECONDS`` asks to retry in the background).  ``fd=N`` takes over an
inherited socket: a listening one acts as a server, a connected one as the peer.

Frontends see CHR_EVENT_OPENED when a peer arrives and CHR_EVENT_CLOSED when it goes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable

from kvmpy.chardev.base import CHR_EVENT_CLOSED, CHR_EVENT_OPENED
from kvmpy.chardev.common import READ_CHUNK, Backend, LoopHost, os_error_text
from kvmpy.errors import ConfigError, NotBuiltError
from kvmpy.log import stderr_line
from kvmpy.qom import Property, register_type

MAX_OUTPUT_BACKLOG = 64 << 20
"""Unread output (bytes) after which a socket peer is disconnected."""

_UNIX_PATH_MAX = 107
MAX_MSGFDS = 16
"""QEMU's TCP_MAX_FDS: file descriptors accepted with one message."""


@register_type("chardev-socket", "chardev", description="unix or TCP stream socket")
class SocketChardev(Backend):
    backend = "socket"

    path = Property(str, "", "unix socket path")
    host = Property(str, "", "TCP host to listen on or connect to")
    port = Property(str, "", "TCP port (0: any free port)")
    server = Property(bool, False, "listen for a client instead of connecting")
    wait = Property(bool, True, "with server=on: wait for a client before starting")
    nodelay = Property(bool, False, "disable Nagle's algorithm (TCP_NODELAY)")
    reconnect = Property(int, 0, "client: seconds between connection attempts (0: never)")
    fd = Property(str, "", "an inherited socket file descriptor")
    telnet = Property(bool, False, "telnet protocol (not built)")
    websocket = Property(bool, False, "websocket protocol (not built)")
    ipv4 = Property(bool, False, "IPv4 only")
    ipv6 = Property(bool, False, "IPv6 only")
    to = Property(int, 0, "highest port to try when listening")

    def __init__(self) -> None:
        super().__init__()
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._peer = ""
        self._lock = threading.Lock()
        self._outbuf = bytearray()
        """Output the peer has not taken yet; sent when its socket becomes writable."""
        self._writer_fd: int | None = None
        self._closed = False
        self._created_path = ""
        self._msgfds: list[int] = []
        self.address: tuple[str, int] | str | None = None
        """Where the socket is: (host, port) for TCP (the real port when ``port=0``), or the
        unix path."""

    # -- opening --------------------------------------------------------------------------

    def open(self) -> None:
        if self.telnet or self.websocket:
            raise NotBuiltError("telnet and websocket chardevs are not built in kvmpy")
        self.open_logfile()
        if self.fd:
            self._open_fd()
        elif self.server:
            self._listen()
            if self.wait:
                stderr_line(f"kvmpy: {self.option + ': ' if self.option else ''}info: kvmpy "
                            f"waiting for connection on: {self.filename}")
                assert self._listener is not None
                self._listener.setblocking(True)
                conn, _ = self._listener.accept()
                self._listener.setblocking(False)
                self._set_connection(conn)
        else:
            self._check_address()
            try:
                self._set_connection(self._connect())
            except ConfigError:
                if self.reconnect <= 0:
                    raise

    def _open_fd(self) -> None:
        try:
            number = int(self.fd)
            sock = socket.socket(fileno=number)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"Unable to parse FD number {self.fd}") from exc
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.setblocking(False)
            self._listener = sock
            self.server = True
        else:
            self._set_connection(sock)

    def _check_address(self) -> None:
        if self.path:
            if len(self.path.encode()) > _UNIX_PATH_MAX:
                raise ConfigError(f"UNIX socket path '{self.path}' is too long")
            self.address = self.path
        elif self.port:
            try:
                port = int(self.port)
            except ValueError:
                port = -1
            if not 0 <= port <= 65535:
                raise ConfigError(f"address resolution failed for {self.host}:{self.port}: "
                                  "Servname not supported for ai_socktype")
            self.address = (self.host, port)
        else:
            raise ConfigError("Unable to parse FD number ")

    def _family(self) -> socket.AddressFamily:
        if isinstance(self.address, str):
            return socket.AF_UNIX
        host = self.address[0] if self.address is not None else ""
        return socket.AF_INET6 if self.ipv6 or ":" in host else socket.AF_INET

    def _listen(self) -> None:
        self._check_address()
        family = self._family()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX:
                assert isinstance(self.address, str)
                self._unlink_socket(self.address)
                sock.bind(self.address)
                self._created_path = self.address
            else:
                assert isinstance(self.address, tuple)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                host = self.address[0] or ("::" if family == socket.AF_INET6 else "0.0.0.0")
                sock.bind((host, self.address[1]))
                self.address = (self.address[0], sock.getsockname()[1])
            sock.listen(1)
        except OSError as exc:
            sock.close()
            where = self.address if isinstance(self.address, str) else \
                f"{self.host}:{self.port}"
            raise ConfigError(f"Failed to bind socket to {where}: {os_error_text(exc)}") \
                from exc
        sock.setblocking(False)
        self._listener = sock

    @staticmethod
    def _unlink_socket(path: str) -> None:
        """QEMU removes a stale socket before binding; kvmpy refuses to remove other files."""
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(f"Failed to unlink socket {path}: {os_error_text(exc)}") from exc

    def _connect(self) -> socket.socket:
        family = self._family()
        sock = socket.socket(family, socket.SOCK_STREAM)
        target: str | tuple[str, int]
        if isinstance(self.address, str):
            target = where = self.address
        else:
            assert self.address is not None
            target = (self.address[0] or "localhost", self.address[1])
            where = f"{target[0]}:{target[1]}"
        try:
            sock.connect(target)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"Failed to connect to '{where}': {os_error_text(exc)}") from exc
        return sock

    # -- connection state -----------------------------------------------------------------

    def _set_connection(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        if self.nodelay and conn.family != socket.AF_UNIX:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            peer = conn.getpeername()
        except OSError:
            peer = ""
        with self._lock:
            self._conn = conn
            self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.update_watch()
        self.notify_event(CHR_EVENT_OPENED)

    def _drop_connection(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._outbuf.clear()
        if conn is None:
            return
        self._stop_writer()
        self.update_watch()
        conn.close()
        self.notify_event(CHR_EVENT_CLOSED)
        if not self.server and self.reconnect > 0 and not self._closed:
            self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        loop = getattr(self._host, "loop", None)
        if loop is not None:
            loop.call_later(self.reconnect, self._try_reconnect)

    def _try_reconnect(self) -> None:
        if self._closed or self._conn is not None:
            return
        try:
            self._set_connection(self._connect())
        except ConfigError:
            self._schedule_reconnect()

    def attach_loop(self, host: LoopHost) -> None:
        super().attach_loop(host)
        if not self.server and self._conn is None and self.reconnect > 0:
            self._schedule_reconnect()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # -- I/O ------------------------------------------------------------------------------

    def fileno(self) -> int | None:
        conn = self._conn
        if conn is not None:
            return conn.fileno()
        if self._listener is not None:
            return self._listener.fileno()
        return None

    def on_readable(self) -> None:
        if self._conn is None:
            self._accept()
            return
        try:
            if self._conn.family == socket.AF_UNIX:
                data, fds, _, _ = socket.recv_fds(self._conn, READ_CHUNK, MAX_MSGFDS)
                if fds:
                    self._keep_msgfds(fds)
            else:
                data = self._conn.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_connection()
            return
        self.deliver(data)

    def _keep_msgfds(self, fds: list[int]) -> None:
        """File descriptors sent with SCM_RIGHTS replace the previous ones (QEMU's
        tcp_chr_recv); a monitor takes one with :meth:`take_msgfd` (``getfd``)."""
        old, self._msgfds = self._msgfds, fds
        for fd in old:
            with contextlib.suppress(OSError):
                os.close(fd)

    def take_msgfd(self) -> int | None:
        """The last file descriptor received with the data, now the caller's."""
        return self._msgfds.pop() if self._msgfds else None

    def _accept(self) -> None:
        if self._listener is None:
            return
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        self._set_connection(conn)

    def write(self, data: bytes) -> int:
        """Send without blocking: what the peer cannot take now is kept and sent when its
        socket drains, so a client that stops reading never stalls the VMM (QEMU's monitor
        and chardev watches do the same).  A peer that leaves more than
        MAX_OUTPUT_BACKLOG unread is disconnected."""
        self.log_output(data)
        size = len(data)
        with self._lock:
            conn = self._conn
            if conn is None:
                return size  # no peer: dropped, as QEMU does
            if not self._outbuf:
                try:
                    sent = conn.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return size  # the peer went away: on_readable reports CLOSED
                if sent == size:
                    return size
                data = data[sent:]
            self._outbuf += data
            backlog = len(self._outbuf)
        if backlog > MAX_OUTPUT_BACKLOG:
            self._call_on_loop(self._drop_connection)
        else:
            self._call_on_loop(self._start_writer)
        return size

    def _call_on_loop(self, fn: Callable[[], None]) -> None:
        loop = getattr(self._host, "loop", None)
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn)
        else:  # no main loop (a backend used on its own): flush in place
            self._flush_blocking()

    def _flush_blocking(self) -> None:
        with self._lock:
            conn, pending = self._conn, bytes(self._outbuf)
            self._outbuf.clear()
        if conn is not None and pending:
            conn.setblocking(True)
            with contextlib.suppress(OSError):
                conn.sendall(pending)
            conn.setblocking(False)

    def _start_writer(self) -> None:
        loop = getattr(self._host, "loop", None)
        with self._lock:
            conn = self._conn
            if conn is None or not self._outbuf or self._writer_fd is not None:
                return
            self._writer_fd = conn.fileno()
        if loop is not None:
            loop.add_writer(self._writer_fd, self._on_writable)

    def _stop_writer(self) -> None:
        loop = getattr(self._host, "loop", None)
        fd, self._writer_fd = self._writer_fd, None
        if fd is not None and loop is not None:
            loop.remove_writer(fd)

    def _on_writable(self) -> None:
        with self._lock:
            conn = self._conn
            if conn is None:
                self._outbuf.clear()
                done = True
            else:
                try:
                    del self._outbuf[:conn.send(self._outbuf)]
                except BlockingIOError:
                    pass
                except OSError:
                    self._outbuf.clear()
                done = not self._outbuf
        if done:
            self._stop_writer()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_writer()
        self.stop_watch()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._created_path:
            with contextlib.suppress(OSError):
                os.unlink(self._created_path)
        self._keep_msgfds([])
        self.close_logfile()

    @property
    def filename(self) -> str:
        if isinstance(self.address, str):
            where = f"unix:{self.address}"
        elif self.address is not None:
            where = f"tcp:{self.address[0]}:{self.address[1]}"
        else:
            where = f"fd:{self.fd}"
        if self.server:
            where += ",server=on"
        if self._conn is None:
            return f"disconnected:{where}"
        return where if isinstance(self.address, str) else f"{where} <-> {self._peer}"
