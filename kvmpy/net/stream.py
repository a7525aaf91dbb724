"""Socket back-ends: ``-netdev stream`` and ``-netdev dgram`` (QEMU 7.2's net/stream.c and
net/dgram.c, what passt speaks) and the older ``-netdev socket`` (net/socket.c).

- A stream carries each frame behind its length, a 32-bit big-endian count.  A server waits
  for one peer at a time and, when the peer goes, for the next; a client connects once (QEMU
  7.2 has no ``reconnect``).  While nobody is connected frames from the NIC are dropped, as
  QEMU drops them on a link that is down.  ``NETDEV_STREAM_CONNECTED`` and
  ``NETDEV_STREAM_DISCONNECTED`` are emitted as QEMU does.
- A datagram carries one frame.

Addresses are QEMU's flattened ``SocketAddress``: ``addr.type=inet,addr.host=H,addr.port=P``,
``addr.type=unix,addr.path=P`` or ``addr.type=fd,addr.str=N`` (``local.*``/``remote.*`` for
dgram); ``-netdev socket`` takes ``listen=[host]:port``, ``connect=host:port``,
``udp=host:port,localaddr=host:port`` or ``fd=N``.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvmpy import log, qom
from kvmpy.errors import ConfigError, NotBuiltError
from kvmpy.net.base import NetBackend

NET_BUFSIZE = 4096 + 65536
"""The largest frame a peer may send (QEMU's NET_BUFSIZE); a longer length ends the stream."""
_LEN = struct.Struct(">I")
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class SocketAddress:
    """QEMU's SocketAddress: ``kind`` inet, unix or fd."""

    kind: str
    host: str = ""
    port: str = ""
    path: str = ""
    fd: str = ""

    @classmethod
    def from_props(cls, props: Mapping[str, str], prefix: str) -> SocketAddress | None:
        kind = props.get(f"{prefix}.type")
        if kind is None:
            if any(key.startswith(prefix + ".") for key in props):
                raise ConfigError(f"Parameter '{prefix}.type' is missing")
            return None
        if kind == "inet":
            for key in ("host", "port"):
                if f"{prefix}.{key}" not in props:
                    raise ConfigError(f"Parameter '{prefix}.{key}' is missing")
            return cls("inet", host=props[f"{prefix}.host"], port=props[f"{prefix}.port"])
        if kind == "unix":
            if f"{prefix}.path" not in props:
                raise ConfigError(f"Parameter '{prefix}.path' is missing")
            return cls("unix", path=props[f"{prefix}.path"])
        if kind == "fd":
            if f"{prefix}.str" not in props:
                raise ConfigError(f"Parameter '{prefix}.str' is missing")
            return cls("fd", fd=props[f"{prefix}.str"])
        raise ConfigError(f"Parameter '{prefix}.type' does not accept value '{kind}'")

    @classmethod
    def from_host_port(cls, text: str) -> SocketAddress:
        """``[host]:port`` of ``-netdev socket``."""
        host, sep, port = text.rpartition(":")
        if not sep or not port:
            raise ConfigError(f"host address '{text}' doesn't contain ':' separating host "
                              "from port")
        return cls("inet", host=host, port=port)

    def uri(self) -> str:
        """QEMU's socket_uri."""
        if self.kind == "inet":
            return f"tcp:{self.host}:{self.port}"
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"fd:{self.fd}"

    def sockaddr(self) -> tuple[int, Any]:
        if self.kind == "unix":
            return socket.AF_UNIX, self.path
        try:
            port = int(self.port)
        except ValueError:
            raise ConfigError(f"Failed to parse port '{self.port}'") from None
        return socket.AF_INET, (self.host or "0.0.0.0", port)


def _fd_socket(text: str) -> socket.socket:
    try:
        fd = int(text)
        return socket.socket(fileno=os.dup(fd))
    except (ValueError, OSError):
        raise ConfigError(f"'{text}' is not a valid file descriptor") from None


def _check_keys(props: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    for key in props:
        if key not in allowed and not any(key.startswith(p + ".") for p in allowed):
            raise ConfigError(f"Invalid parameter '{key}'")


class _StreamBackend(NetBackend):
    """Length-prefixed frames over a stream socket, as a server or a client."""

    def _init_stream(self, addr: SocketAddress, server: bool) -> None:
        self.addr = addr
        self.server = server
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.peer_uri = ""
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._reading = False
        self._writing = False
        if server:
            self.listener = self._listen(addr)
        else:
            self.conn = self._connect(addr, strict=self.type_label == "socket")
            self.peer_uri = addr.uri() if self.conn is not None else "connection error"

    @staticmethod
    def _listen(addr: SocketAddress) -> socket.socket:
        if addr.kind == "fd":
            sock = _fd_socket(addr.fd)
        else:
            family, where = addr.sockaddr()
            sock = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_INET:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif os.path.exists(addr.path):
                os.unlink(addr.path)
            try:
                sock.bind(where)
                sock.listen(1)
            except OSError as exc:
                sock.close()
                raise ConfigError(f"Failed to bind socket: {exc.strerror}") from None
        sock.setblocking(False)
        return sock

    @staticmethod
    def _connect(addr: SocketAddress, strict: bool) -> socket.socket | None:
        """The connected socket.  A stream client that cannot connect stays unconnected
        (QEMU 7.2 says "connection error" in ``info network``); ``-netdev socket`` refuses
        to start."""
        if addr.kind == "fd":
            sock = _fd_socket(addr.fd)
        else:
            family, where = addr.sockaddr()
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect(where)
            except OSError as exc:
                sock.close()
                if strict:
                    raise ConfigError(f"can't connect socket: {exc.strerror}") from None
                from kvmpy.log import stderr_line

                stderr_line(f"kvmpy: warning: netdev stream: cannot connect to "
                            f"{addr.uri()}: {exc.strerror}")
                return None
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        return sock

    # -- the main loop --------------------------------------------------------------------------

    def start(self, system: Any) -> None:
        super().start(system)
        if self.listener is not None:
            system.add_reader(self.listener.fileno(), self._on_accept)
        if self.conn is not None:
            self._connected(self.conn, self.peer_uri)

    def _on_accept(self) -> None:
        assert self.listener is not None
        try:
            conn, remote = self.listener.accept()
        except OSError:
            return
        conn.setblocking(False)
        self.system.remove_reader(self.listener.fileno())  # one peer at a time
        if self.addr.kind == "unix":
            uri = self.addr.uri()
        elif self.addr.kind == "inet":
            uri = f"tcp:{remote[0]}:{remote[1]}"
        else:
            uri = self.addr.uri()
        self._connected(conn, uri)

    def _connected(self, conn: socket.socket, uri: str) -> None:
        self.conn = conn
        self.peer_uri = uri
        self._inbuf.clear()
        self._resume_reading()
        self.system.emit("NETDEV_STREAM_CONNECTED", {"netdev-id": self.id,
                                                      "addr": self._addr_dict(uri)})

    def _addr_dict(self, uri: str) -> dict[str, str]:
        kind, _, rest = uri.partition(":")
        if kind == "tcp":
            host, _, port = rest.rpartition(":")
            return {"type": "inet", "host": host, "port": port}
        if kind == "unix":
            return {"type": "unix", "path": rest}
        return {"type": "fd", "str": rest}

    def _disconnected(self) -> None:
        if self.conn is None:
            return
        self._pause_reading()
        if self._writing:
            self.system.loop.remove_writer(self.conn.fileno())
            self._writing = False
        self.conn.close()
        self.conn = None
        self.peer_uri = ""
        self._outbuf.clear()
        self.system.emit("NETDEV_STREAM_DISCONNECTED", {"netdev-id": self.id})
        if self.listener is not None:
            self.system.add_reader(self.listener.fileno(), self._on_accept)

    def _resume_reading(self) -> None:
        if not self._reading and self.conn is not None:
            self._reading = True
            self.system.add_reader(self.conn.fileno(), self._on_readable)

    def _pause_reading(self) -> None:
        if self._reading and self.conn is not None:
            self._reading = False
            self.system.remove_reader(self.conn.fileno())

    def rx_drained(self) -> None:
        self._deliver_buffered()
        if self.can_receive:
            self._resume_reading()

    def _on_readable(self) -> None:
        assert self.conn is not None
        try:
            data = self.conn.recv(NET_BUFSIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._disconnected()
            return
        self._inbuf += data
        self._deliver_buffered()
        if not self.can_receive:
            self._pause_reading()  # the NIC is full: read on when it has room

    def _deliver_buffered(self) -> None:
        buf = self._inbuf
        while len(buf) >= 4 and self.can_receive and self.conn is not None:
            (length,) = _LEN.unpack_from(buf)
            if length > NET_BUFSIZE:
                log.guest_error(f"netdev {self.id}: the peer sent a frame of {length} bytes "
                                f"(at most {NET_BUFSIZE}): connection closed")
                self._disconnected()
                return
            if len(buf) < 4 + length:
                return
            frame = bytes(buf[4:4 + length])
            del buf[:4 + length]
            self.deliver(frame)

    def _output(self, frame: bytes) -> None:
        if self.conn is None:
            return  # nobody connected: the link is down, the frame is dropped (QEMU)
        self._outbuf += _LEN.pack(len(frame)) + frame
        if not self._writing:
            self._flush_out()

    def _flush_out(self) -> None:
        while self._outbuf and self.conn is not None:
            try:
                sent = self.conn.send(self._outbuf)
            except BlockingIOError:
                break
            except OSError:
                self._disconnected()
                return
            del self._outbuf[:sent]
        want = bool(self._outbuf) and self.conn is not None
        if want != self._writing and self.conn is not None:
            self._writing = want
            if want:
                self.system.loop.add_writer(self.conn.fileno(), self._flush_out)
            else:
                self.system.loop.remove_writer(self.conn.fileno())

    def info(self) -> str:
        return self.peer_uri

    def close(self) -> None:
        if self.system is not None:
            self._pause_reading()
            if self.listener is not None:
                self.system.remove_reader(self.listener.fileno())
            if self._writing and self.conn is not None and self.system.loop is not None:
                self.system.loop.remove_writer(self.conn.fileno())
                self._writing = False
        for sock in (self.conn, self.listener):
            if sock is not None:
                sock.close()
        self.conn = self.listener = None


class _DgramBackend(NetBackend):
    """One frame per datagram, sent to ``remote`` (or wherever the last one came from)."""

    def _init_dgram(self, local: SocketAddress, remote: SocketAddress | None) -> None:
        self.remote = remote
        self.local = local
        self._reading = False
        if local.kind == "fd":
            self.sock = _fd_socket(local.fd)
            self.dest: Any = None
        else:
            family, where = local.sockaddr()
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
            if family == socket.AF_INET:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            elif os.path.exists(local.path):
                os.unlink(local.path)
            try:
                self.sock.bind(where)
            except OSError as exc:
                self.sock.close()
                what = f"ip={where[0]}" if family == socket.AF_INET else f"unix={where}"
                raise ConfigError(f"can't bind {what} to socket: {exc.strerror}") from None
            self.dest = remote.sockaddr()[1] if remote is not None else None
        self.sock.setblocking(False)

    def start(self, system: Any) -> None:
        super().start(system)
        self._resume_reading()

    def _resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self.system.add_reader(self.sock.fileno(), self._on_readable)

    def rx_drained(self) -> None:
        self._resume_reading()

    def _on_readable(self) -> None:
        while self.can_receive:
            try:
                frame = self.sock.recv(NET_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ECONNREFUSED from an earlier send: nothing to read
            self.deliver(frame)
        self._reading = False
        self.system.remove_reader(self.sock.fileno())

    def _output(self, frame: bytes) -> None:
        try:
            if self.dest is not None:
                self.sock.sendto(frame, self.dest)
            else:
                self.sock.send(frame)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            pass  # datagrams may be lost; a peer that is not there yet loses them too

    def info(self) -> str:
        if self.local.kind == "inet" and self.remote is not None:
            lhost, lport = self.local.sockaddr()[1]
            rhost, rport = self.remote.sockaddr()[1]
            return f"udp={lhost}:{lport}/{rhost}:{rport}"
        if self.local.kind == "unix" and self.remote is not None:
            return f"udp={self.local.path}:{self.remote.path}"
        return f"fd={self.sock.fileno()}"

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            if self.system is not None and self._reading:
                self.system.remove_reader(self.sock.fileno())
            self.sock.close()


@qom.register_type("netdev-stream", "netdev", description="stream socket network backend")
class StreamNetdev(_StreamBackend):
    type_label = "stream"

    def __init__(self, netdev_id: str, props: Mapping[str, str],
                 lists: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(netdev_id, props, lists)
        _check_keys(props, ("addr", "server", "reconnect"))
        if "reconnect" in props:
            raise ConfigError("Invalid parameter 'reconnect'")  # QEMU 8.0's
        addr = SocketAddress.from_props(props, "addr")
        if addr is None:
            raise ConfigError("Parameter 'addr' is missing")
        self._init_stream(addr, qom.parse_bool("server", props.get("server", "off")))


@qom.register_type("netdev-dgram", "netdev", description="datagram socket network backend")
class DgramNetdev(_DgramBackend):
    type_label = "dgram"

    def __init__(self, netdev_id: str, props: Mapping[str, str],
                 lists: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(netdev_id, props, lists)
        _check_keys(props, ("local", "remote"))
        local = SocketAddress.from_props(props, "local")
        remote = SocketAddress.from_props(props, "remote")
        if remote is not None and remote.kind == "inet" and _multicast(remote.host):
            raise NotBuiltError("dgram: multicast is not built in kvmpy")
        if local is None:
            raise ConfigError("dgram requires local= parameter")
        if remote is not None:
            if local.kind == "fd":
                raise ConfigError("don't set remote with local.fd")
            if remote.kind != local.kind:
                raise ConfigError("remote and local types must be the same")
        elif local.kind != "fd":
            raise ConfigError("type=inet or type=unix requires remote parameter")
        self._init_dgram(local, remote)


def _socket_mode(props: Mapping[str, str]) -> str:
    _check_keys(props, ("fd", "listen", "connect", "mcast", "localaddr", "udp"))
    chosen = [key for key in ("fd", "listen", "connect", "mcast", "udp") if key in props]
    if len(chosen) != 1:
        raise ConfigError("exactly one of listen=, connect=, mcast= or udp= is required")
    if "localaddr" in props and chosen[0] not in ("mcast", "udp"):
        raise ConfigError("localaddr= is only valid with mcast= or udp=")
    if chosen[0] == "mcast":
        raise NotBuiltError("socket: mcast= is not built in kvmpy")
    return chosen[0]


@qom.register_type("netdev-socket", "netdev", description="socket network backend")
class SocketNetdev(NetBackend):
    """``-netdev socket``: ``listen=``/``connect=``/``fd=`` make a stream back-end,
    ``udp=`` a datagram one (the instance is of the matching subclass)."""

    type_label = "socket"

    def __new__(cls, netdev_id: str, props: Mapping[str, str],
                lists: Mapping[str, list[str]] | None = None) -> SocketNetdev:
        target = _SocketDgram if _socket_mode(props) == "udp" else _SocketStream
        return super().__new__(target)


class _SocketStream(SocketNetdev, _StreamBackend):
    def __init__(self, netdev_id: str, props: Mapping[str, str],
                 lists: Mapping[str, list[str]] | None = None) -> None:
        NetBackend.__init__(self, netdev_id, props, lists)
        kind = _socket_mode(props)
        if kind == "fd":
            self._init_stream(SocketAddress("fd", fd=props["fd"]), server=False)
        else:
            self._init_stream(SocketAddress.from_host_port(props[kind]), kind == "listen")

    def info(self) -> str:
        if self.conn is None:
            return "socket: wait"
        peer = self.peer_uri.removeprefix("tcp:")
        return f"socket: connection from {peer}" if self.server else f"socket: connect to {peer}"


class _SocketDgram(SocketNetdev, _DgramBackend):
    def __init__(self, netdev_id: str, props: Mapping[str, str],
                 lists: Mapping[str, list[str]] | None = None) -> None:
        NetBackend.__init__(self, netdev_id, props, lists)
        if "localaddr" not in props:
            raise ConfigError("localaddr= is mandatory with udp=")
        self._init_dgram(SocketAddress.from_host_port(props["localaddr"]),
                         SocketAddress.from_host_port(props["udp"]))

    def info(self) -> str:
        return "socket: " + _DgramBackend.info(self)


def _multicast(host: str) -> bool:
    try:
        first = int(socket.inet_aton(host)[0])
    except OSError:
        return False
    return 224 <= first <= 239
