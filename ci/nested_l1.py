"""Runs inside the L1 guest of ci/nested-kvm (riscv64 Linux with KVM, Debian's python3).

Checks the L1 environment (/dev/kvm, python3 with cffi, kvmpy, the KVM API version through cffi
in ABI mode), then, unless told to stop there, boots kvmpy's bundled guest with
`kvmpy -accel kvm -M virt -nographic` to a working shell and powers it off. Every result is one
line starting with "nested-kvm:"; the last one is "nested-kvm: RESULT PASS" or "... FAIL <why>".

The bundled guest also gets PCI devices, which under KVM are plain MMIO exits to kvmpy (ECAM
config space and BARs): a virtio-blk-pci disk (`-drive if=virtio`) whose image L1 prepares and
checks afterwards, a virtio-rng-pci, and a virtio-net-pci on `-netdev user` (libslirp, whose
sockets are L1's) with `hostfwd=tcp:127.0.0.1:10080-:8080`. In the guest: eth0 gets 10.0.2.15
and a default route via 10.0.2.2 by DHCP; L2 sends 128 KiB to a TCP server L1 runs on 127.0.0.1
(10.0.2.2 to L2) and gets 128 KiB back, and L1 does the same with `nc -l` in L2 through the
forwarded port, every byte checked on both sides; lspci sees the host bridge and the three
functions, the disk reads L1's marker and takes a write, the entropy source is virtio_rng, and
their INTx interrupts (PLIC sources 32-35) are counted in /proc/interrupts. Nothing leaves L1
(10.0.2.2 is L1's loopback, no name is looked up).

Then gdb's remote protocol on kvmpy's `-gdb tcp:127.0.0.1:1234`, spoken raw (no gdb in L1), with
the L2 kernel's symbol addresses ci/nested-kvm read from kvmpy/guests/vmlinux.xz
(/ci/l2-symbols.json). With an L1 kernel that has KVM_SET_GUEST_DEBUG for RISC-V (6.10+): a Z0
breakpoint at sys_newuname (`j __do_sys_newuname`) reads back as the original instruction, is
hit by `uname` in L2 (T05, pc there), a step off it lands on __do_sys_newuname, it is hit again
by the next `uname`, and again after gdb's own way of continuing from a breakpoint on riscv
(software single step with Z0/z0 and vCont;c, as gdb-multiarch 13 does), z0 removes it and
`uname` completes; with a breakpoint elsewhere, an
`ebreak` a user program in L2 executes is the guest's own (SIGTRAP, exit status 133), not a
stop; watchpoints (Z2) are refused with E22. Without it (6.1), Z0 is refused with E22.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import itertools
import json
import os
import platform
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ciutil import Console, StepFailed

from kvmpy.qmp_client import QMPClient

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
KVM_CAP_SET_GUEST_DEBUG = 23

DISK = "/tmp/l2-disk.img"
DISK_SIZE = 4 << 20
DISK_MARKER = b"kvmpy-nested-pci-disk"  # at offset 0, written by L1
GUEST_MARKER = b"l2-wrote-pci-disk"  # at offset 512, written by L2
# gpex host bridge, virtio rng, virtio blk, virtio net
PCI_IDS = ("1b36:0008", "1af4:1005", "1af4:1001", "1af4:1000")
PCI_INTX_SOURCES = range(32, 36)  # PLIC sources of INTA-INTD (QEMU's VIRT_PCIE_IRQ)

NET_GUEST, NET_GATEWAY = "10.0.2.15", "10.0.2.2"  # -netdev user's first DHCP address, the host
NET_GUEST_PORT = 8080  # `nc -l` in L2
NET_HOSTFWD_PORT = 10080  # on L1's 127.0.0.1, forwarded to NET_GUEST_PORT
NET_PAYLOAD = 128 << 10  # bytes each way in each exchange: many frames, binary data
NET_TIMEOUT = 120.0  # seconds for one exchange
# What the bundled guest prints when its boot-time udhcpc has configured eth0
# (kvmpy.guests.DHCP_BOUND): "kvmpy-guest: eth0 10.0.2.15/24 via 10.0.2.2".
DHCP_BOUND = rb"kvmpy-guest: eth0 [^\r\n]*(?=\r?\n)"
# For a guest whose /init does not run udhcpc: a udhcpc script doing the same (busybox
# networking/udhcp/dhcpc.c calls it with deconfig, then bound; $mask is a prefix length).
UDHCPC_SCRIPT = (
    "#!/bin/sh",
    'case "$1" in',
    'deconfig) ip link set "$interface" up ;;',
    'bound) ip addr add "$ip/$mask" dev "$interface" &&',
    '    ip route add default via "${router%% *}" dev "$interface" ;;',
    "esac",
)


def say(msg: str) -> None:
    print(f"nested-kvm: {msg}", flush=True)


def check_kvm_abi() -> None:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef("int ioctl(int fd, unsigned long request, ...);")
    libc = ffi.dlopen(None)
    fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    try:
        zero = ffi.cast("unsigned long", 0)  # both ioctls refuse a non-zero argument
        version = libc.ioctl(fd, ffi.cast("unsigned long", KVM_GET_API_VERSION), zero)
        vm = libc.ioctl(fd, ffi.cast("unsigned long", KVM_CREATE_VM), zero)
        debug = -1
        if vm >= 0:
            debug = libc.ioctl(vm, ffi.cast("unsigned long", KVM_CHECK_EXTENSION),
                               ffi.cast("unsigned long", KVM_CAP_SET_GUEST_DEBUG))
            os.close(vm)
    finally:
        os.close(fd)
    say(f"KVM_GET_API_VERSION={version} KVM_CREATE_VM={'ok' if vm >= 0 else 'failed'} "
        f"KVM_CHECK_EXTENSION(KVM_CAP_SET_GUEST_DEBUG)={debug}")
    if version != 12 or vm < 0:
        raise StepFailed("/dev/kvm does not work")


_serial = itertools.count(1)


def shell(c: Console, cmd: str, timeout: float = 120) -> str:
    """Run cmd at the L2 shell; what it printed (CR removed). A non-zero exit status fails.

    The output is framed by two echoed markers whose numbers the shell computes, so that the
    terminal's echo of the typed line never matches them.
    """
    n = next(_serial)
    c.send(f"echo l2-begin-$(({n}+0)); {cmd}; echo l2-end-$(({n}+0)) status=$?\n")
    m = c.expect(rb"(?s)l2-begin-%d\r?\n(.*?)l2-end-%d status=(\d+)\r?\n" % (n, n), timeout)
    out = m.group(1).decode(errors="replace").replace("\r", "")
    if m.group(2) != b"0":
        raise StepFailed(f"L2: '{cmd}' exit status {m.group(2).decode()}: {out.strip()[-200:]}")
    return out


def make_disk() -> None:
    with open(DISK, "wb") as f:
        f.write(DISK_MARKER)
        f.truncate(DISK_SIZE)
    say(f"disk image {DISK}: {DISK_SIZE >> 20} MiB, marker {DISK_MARKER.decode()!r} at 0")


def check_disk() -> None:
    with open(DISK, "rb") as f:
        head = f.read(1024)
    start, written = head[: len(DISK_MARKER)], head[512 : 512 + len(GUEST_MARKER)]
    if start != DISK_MARKER or written != GUEST_MARKER:
        raise StepFailed(f"disk image after L2: {start!r} at 0, {written!r} at 512")
    say(f"disk image after L2: marker kept, {written.decode()!r} at 512 (written by L2)")


def virtio_irqs(text: str) -> list[tuple[int, int, str]]:
    """(PLIC source, count over all harts, name) of each virtio line of /proc/interrupts."""
    found = []
    for line in text.splitlines():
        if "virtio" not in line:
            continue
        counts = itertools.takewhile(str.isdigit, line.split()[1:])
        # "<irq>: <count per hart> SiFive PLIC <source> Level <name>[, <name>]"
        m = re.search(r"PLIC\s+(\d+)\s+(?:Level\s+|Edge\s+)?(.*)", line)
        source, name = (int(m.group(1)), m.group(2).strip()) if m else (-1, line.strip())
        found.append((source, sum(map(int, counts)), name))
    return found


def check_pci(c: Console) -> None:
    """The PCI checks at the L2 shell (the bundled guest, with make_disk's image and an rng)."""
    lspci = shell(c, "lspci")
    missing = [i for i in PCI_IDS if not re.search(rf"\b{i}\b", lspci)]
    say(f"L2 lspci: {len(lspci.splitlines())} functions, " + (
        f"MISSING {' '.join(missing)}" if missing else f"found {' '.join(PCI_IDS)}"
    ))  # fmt: skip
    if missing:
        raise StepFailed(f"L2 lspci lacks {' '.join(missing)}: {lspci.strip()!r}")

    head = shell(c, f"head -c {len(DISK_MARKER)} /dev/vda; echo")
    if DISK_MARKER.decode() not in head:
        raise StepFailed(f"L2 /dev/vda starts with {head.strip()!r}, not L1's marker")
    say("L2 read L1's marker from /dev/vda")
    # Written, flushed to the device, dropped from the page cache and read back from the device.
    shell(c, f"printf {GUEST_MARKER.decode()} | dd of=/dev/vda bs=512 seek=1 conv=notrunc 2>&1"
          " && sync && echo 3 > /proc/sys/vm/drop_caches")  # fmt: skip
    back = shell(c, f"dd if=/dev/vda bs=512 skip=1 count=1 2>/dev/null "
                    f"| head -c {len(GUEST_MARKER)}; echo")  # fmt: skip
    if GUEST_MARKER.decode() not in back:
        raise StepFailed(f"L2 read back {back.strip()!r} after writing to /dev/vda")
    say("L2 wrote to /dev/vda and read it back")

    rng = shell(c, "cat /sys/class/misc/hw_random/rng_current").strip()
    say(f"L2 rng_current: {rng}")
    if not re.search(r"^virtio_rng\.\d+$", rng, re.M):  # a kernel message may come in between
        raise StepFailed(f"L2 rng_current is {rng!r}, not virtio_rng.N")
    got = shell(c, "head -c 64 /dev/hwrng | wc -c")
    if not re.search(r"^64$", got, re.M):
        raise StepFailed(f"L2 read {got.strip()!r} bytes of 64 from /dev/hwrng")

    irqs = virtio_irqs(shell(c, "cat /proc/interrupts"))
    say("L2 virtio interrupts: " + (
        ", ".join(f"{name} PLIC {src} x{n}" for src, n, name in irqs) or "none"
    ))  # fmt: skip
    if not irqs or any(n == 0 for _, n, _ in irqs):
        raise StepFailed("L2 /proc/interrupts: a virtio line without interrupts")
    if any(src not in PCI_INTX_SOURCES for src, _, _ in irqs):
        raise StepFailed(f"L2 virtio interrupts outside PLIC sources 32-35: {irqs}")


def check_dhcp(c: Console) -> None:
    """eth0 configured by DHCP: by the guest's /init (its line on the console) or by us."""
    if re.search(r"^boot$", shell(c, "grep -q udhcpc /init && echo boot || echo none"), re.M):
        m = re.search(DHCP_BOUND, c.out) or c.expect(DHCP_BOUND, NET_TIMEOUT)
        say(f"L2 eth0 bound by the guest's udhcpc: {m.group(0).decode(errors='replace')!r}")
    else:
        lines = " ".join(f"'{line}'" for line in UDHCPC_SCRIPT)  # none has a single quote
        shell(c, f"printf '%s\\n' {lines} > /tmp/udhcpc.sh && chmod +x /tmp/udhcpc.sh")
        shell(c, "udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /tmp/udhcpc.sh 2>&1", NET_TIMEOUT)
        say("L2 eth0 bound by udhcpc run at the shell (the guest's /init does not run it)")
    addr, route = shell(c, "ip -4 addr show dev eth0"), shell(c, "ip route")
    if not re.search(rf"inet {re.escape(NET_GUEST)}/24\b", addr):
        raise StepFailed(f"L2 eth0 is not {NET_GUEST}/24: {addr.strip()!r}")
    if not re.search(rf"^default via {re.escape(NET_GATEWAY)} dev eth0", route, re.M):
        raise StepFailed(f"L2 has no default route via {NET_GATEWAY}: {route.strip()!r}")
    say(f"L2 eth0 {NET_GUEST}/24, default via {NET_GATEWAY}")


def sha256_line(out: str, path: str) -> str:
    """The digest sha256sum printed for path."""
    m = re.search(rf"^([0-9a-f]{{64}})\s+{re.escape(path)}$", out, re.M)
    if not m:
        raise StepFailed(f"L2 sha256sum {path}: {out.strip()[-200:]!r}")
    return m.group(1)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def check_guest_to_l1(c: Console) -> None:
    """L2 connects to a TCP server L1 runs on 127.0.0.1 (as 10.0.2.2): data both ways."""
    reply = os.urandom(NET_PAYLOAD)
    got: list[bytes] = []
    failed: list[OSError] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(NET_TIMEOUT)
        port = server.getsockname()[1]

        def serve() -> None:  # one request, read to its end, then the reply
            try:
                with server.accept()[0] as conn:
                    conn.settimeout(NET_TIMEOUT)
                    got.append(recv_all(conn))
                    conn.sendall(reply)
            except OSError as exc:
                failed.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        sent = sha256_line(shell(c, f"head -c {NET_PAYLOAD} /dev/urandom > /tmp/to-l1 && "
                                    "sha256sum /tmp/to-l1"), "/tmp/to-l1")  # fmt: skip
        t = time.monotonic()
        out = shell(c, f"nc {NET_GATEWAY} {port} < /tmp/to-l1 > /tmp/from-l1 && "
                       "wc -c < /tmp/from-l1 && sha256sum /tmp/from-l1", NET_TIMEOUT)  # fmt: skip
        secs = time.monotonic() - t
        thread.join(NET_TIMEOUT)
    if failed:
        raise StepFailed(f"L1 server on 127.0.0.1:{port}: {failed[0]!r}")
    if not got or hashlib.sha256(got[0]).hexdigest() != sent:
        raise StepFailed(
            f"L1 server on 127.0.0.1:{port} got "
            f"{len(got[0]) if got else 'no'} bytes, not L2's {NET_PAYLOAD}"
        )
    if sha256_line(out, "/tmp/from-l1") != hashlib.sha256(reply).hexdigest():
        raise StepFailed(f"L2 got other bytes than L1 sent: {out.strip()[-200:]!r}")
    say(
        f"L2 -> {NET_GATEWAY}:{port} (L1's 127.0.0.1): {NET_PAYLOAD} bytes each way, "
        f"checked, in {secs:.1f} s"
    )


def check_l1_to_guest(c: Console) -> None:
    """L1 connects to `nc -l` in L2 through the hostfwd port: data both ways."""
    served = sha256_line(shell(c, f"head -c {NET_PAYLOAD} /dev/urandom > /tmp/to-l1 && "
                                  "sha256sum /tmp/to-l1"), "/tmp/to-l1")  # fmt: skip
    # nc sends its stdin, then half-closes; it exits at the end of what L1 sends.
    # Listening: "local_address rem_address st" of /proc/net/tcp{,6} is "...:1F90 ...:0000 0A".
    listening = f"grep -qsE ':{NET_GUEST_PORT:04X} [0-9A-F]+:0000 0A' /proc/net/tcp /proc/net/tcp6"
    wait = f"for i in $(seq 100); do {listening} && break; sleep 0.1; done; {listening}"
    shell(c, f"{{ nc -l -p {NET_GUEST_PORT} < /tmp/to-l1 > /tmp/from-l1 & }}; {wait}")
    data = os.urandom(NET_PAYLOAD)
    t = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", NET_HOSTFWD_PORT), NET_TIMEOUT) as sock:

            def send() -> None:  # while the reply comes in
                with contextlib.suppress(OSError):  # then recv_all sees the error too
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            got = recv_all(sock)
            sender.join(NET_TIMEOUT)
    except OSError as exc:
        raise StepFailed(f"L1 -> 127.0.0.1:{NET_HOSTFWD_PORT}: {exc!r}") from exc
    secs = time.monotonic() - t
    if hashlib.sha256(got).hexdigest() != served:
        raise StepFailed(
            f"L1 got {len(got)} bytes through 127.0.0.1:{NET_HOSTFWD_PORT}, "
            f"not the {NET_PAYLOAD} nc -l in L2 sent"
        )
    out = shell(c, "wait; wc -c < /tmp/from-l1 && sha256sum /tmp/from-l1", NET_TIMEOUT)
    if sha256_line(out, "/tmp/from-l1") != hashlib.sha256(data).hexdigest():
        raise StepFailed(f"nc -l in L2 got other bytes than L1 sent: {out.strip()[-200:]!r}")
    say(
        f"L1 127.0.0.1:{NET_HOSTFWD_PORT} -> L2 :{NET_GUEST_PORT} (hostfwd): {NET_PAYLOAD} "
        f"bytes each way, checked, in {secs:.1f} s"
    )


def check_net(c: Console) -> None:
    """The network checks at the L2 shell (the bundled guest, with -netdev user)."""
    check_dhcp(c)
    check_guest_to_l1(c)
    check_l1_to_guest(c)


GDB_PORT = 1234
SYMBOLS = "/ci/l2-symbols.json"  # L2 kernel symbol -> address, from ci/nested-kvm
# A static riscv64 ELF whose one instruction at its entry is `ebreak`.
EBREAK_ELF = (
    b"\x7fELF\x02\x01\x01" + bytes(9)
    + (2).to_bytes(2, "little") + (243).to_bytes(2, "little") + (1).to_bytes(4, "little")
    + (0x10078).to_bytes(8, "little") + (64).to_bytes(8, "little") + bytes(8)
    + bytes(4) + (64).to_bytes(2, "little") + (56).to_bytes(2, "little")
    + (1).to_bytes(2, "little") + bytes(6)
    + (1).to_bytes(4, "little") + (5).to_bytes(4, "little") + bytes(8)
    + (0x10000).to_bytes(8, "little") * 2 + (124).to_bytes(8, "little") * 2
    + (0x1000).to_bytes(8, "little")
    + (0x00100073).to_bytes(4, "little")
)


class Rsp:
    """gdb's remote serial protocol, the client side, with acknowledgements."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: str) -> None:
        data = payload.encode()
        self.sock.sendall(b"$%s#%02x" % (data, sum(data) & 0xFF))

    def interrupt(self) -> None:
        """^C: a raw 0x03 byte, not a packet."""
        self.sock.sendall(b"\x03")

    def _fill(self, deadline: float) -> None:
        self.sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise StepFailed("gdb stub: no answer in time") from None
        if not chunk:
            raise StepFailed("gdb stub closed the connection")
        self.buf += chunk

    def reply(self, timeout: float = 30) -> str:
        """The next packet (acked), skipping acks and O (console) packets."""
        deadline = time.monotonic() + timeout
        while True:
            self.buf = self.buf.lstrip(b"+")
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start + 1) if start >= 0 else -1
            if start < 0 or end < 0 or len(self.buf) < end + 3:
                self._fill(deadline)
                continue
            payload = self.buf[start + 1:end].decode("latin-1")
            self.buf = self.buf[end + 3:]
            self.sock.sendall(b"+")
            if payload.startswith("O") and payload != "OK":
                continue
            return payload

    def cmd(self, payload: str, timeout: float = 30) -> str:
        self.send(payload)
        return self.reply(timeout)

    def pc(self) -> int:
        return int.from_bytes(binascii.unhexlify(self.cmd("p20")), "little")


def kernel_has_guest_debug() -> bool:
    """RISC-V KVM handles breakpoints for userspace from Linux 6.10."""
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (6, 10)


def check_gdb(c: Console) -> None:
    """Software breakpoints under -accel kvm, through kvmpy's gdb stub (see the docstring)."""
    with open(SYMBOLS) as f:
        syms = json.load(f)
    bp, target, idle = syms["sys_newuname"], syms["__do_sys_newuname"], syms["sys_acct"]
    g = Rsp(GDB_PORT)  # the VM stops on connect
    try:
        g.cmd("qSupported:multiprocess-;swbreak+")
        if not g.cmd("?").startswith("T05"):
            raise StepFailed("gdb: no stop reply to ?")
        g.cmd("qXfer:features:read:target.xml:0,ffb")  # p packets need the description
        original = g.cmd(f"m{bp:x},4")
        answer = g.cmd(f"Z0,{bp:x},4")
        if not kernel_has_guest_debug():
            if answer != "E22":
                raise StepFailed(f"gdb: Z0 without KVM_SET_GUEST_DEBUG answered {answer!r}")
            say(f"gdb: Z0 refused with E22 (Linux {platform.release()} has no RISC-V guest debug)")
            g.send("D")
            g.reply()
            return
        if answer != "OK":
            raise StepFailed(f"gdb: Z0 at sys_newuname answered {answer!r}")
        if g.cmd(f"m{bp:x},4") != original:
            raise StepFailed("gdb: the breakpoint's ebreak shows in memory reads")
        if g.cmd(f"Z2,{bp:x},8") != "E22":
            raise StepFailed("gdb: a watchpoint under KVM was not refused")
        g.send("c")
        c.send("uname -s\n")
        stop = g.reply(120)
        pc = g.pc()
        if not stop.startswith("T05") or pc != bp:
            raise StepFailed(f"gdb: stop {stop!r} at 0x{pc:x}, not T05 at 0x{bp:x}")
        say(f"gdb: breakpoint at sys_newuname hit: {stop}")
        stop = g.cmd("s", 60)
        pc = g.pc()
        if not stop.startswith("T05") or pc != target:
            raise StepFailed(f"gdb: step gave {stop!r} at 0x{pc:x}, not __do_sys_newuname "
                             f"0x{target:x}")
        say(f"gdb: step from the breakpoint (a jump) landed on __do_sys_newuname: {stop}")
        g.send("c")
        c.expect(rb"Linux\r?\n", 60)
        c.send("uname -s\n")
        stop = g.reply(120)
        pc = g.pc()
        if not stop.startswith("T05") or pc != bp:
            raise StepFailed(f"gdb: second hit {stop!r} at 0x{pc:x}")
        # What gdb-multiarch does to continue from a breakpoint on riscv (software single
        # step): remove it, a breakpoint at the next instruction, continue, swap them back.
        replies = [g.cmd(f"z0,{bp:x},4"), g.cmd(f"m{bp:x},4"), g.cmd(f"Z0,{target:x},4")]
        stop = g.cmd("vCont;c:p1.1", 60)
        pc = g.pc()
        replies += [g.cmd(f"z0,{target:x},4"), g.cmd(f"Z0,{bp:x},4")]
        if replies != ["OK", original, "OK", "OK", "OK"] or not stop.startswith("T05") \
                or pc != target:
            raise StepFailed(f"gdb: gdb's step-over: {replies} {stop!r} at 0x{pc:x}")
        g.send("vCont;c:p1.-1")
        c.expect(rb"Linux\r?\n", 60)
        c.send("uname -s\n")
        stop = g.reply(120)
        pc = g.pc()
        if not stop.startswith("T05") or pc != bp:
            raise StepFailed(f"gdb: third hit {stop!r} at 0x{pc:x}")
        say("gdb: continued from it as gdb does (z0, Z0 at the next pc, vCont;c), hit again")
        if g.cmd(f"z0,{bp:x},4") != "OK" or g.cmd(f"m{bp:x},4") != original:
            raise StepFailed("gdb: z0 failed or left something else in memory")
        g.send("c")
        c.expect(rb"Linux\r?\n", 60)
        say("gdb: hit again after the step, removed, uname completed")
        g.interrupt()
        if not g.reply(60).startswith("T02"):
            raise StepFailed("gdb: no T02 after ^C")
        answer = g.cmd(f"Z0,{idle:x},2")
        if answer != "OK":
            raise StepFailed(f"gdb: Z0 at sys_acct refused: {answer!r}")
        g.send("c")
        octal = "".join(f"\\{b:03o}" for b in EBREAK_ELF)
        c.send(f"printf '{octal}' > /tmp/eb; chmod +x /tmp/eb; /tmp/eb; echo eb-rc=$?\n")
        rc = int(c.expect(rb"eb-rc=(\d+)\r?\n", 60).group(1))
        if rc != 133:
            raise StepFailed(f"gdb: the guest's own ebreak: exit status {rc}, not 133 (SIGTRAP)")
        say("gdb: an ebreak of an L2 program went to the guest (SIGTRAP, exit status 133)")
        g.interrupt()
        if not g.reply(60).startswith("T02"):
            raise StepFailed("gdb: no T02 after ^C")
        if g.cmd(f"z0,{idle:x},2") != "OK" or g.cmd("D") != "OK":
            raise StepFailed("gdb: z0/D failed")
    finally:
        g.close()
    if os.path.exists(HVC):
        host_gdb()
    c.send("echo gdb-done-$((6*7))\n")
    c.expect(rb"gdb-done-42", 60)


HVC = "/dev/hvc0"  # a virtio console ci/nested-kvm connects gdb-multiarch on the host to


def host_gdb() -> None:
    """Bridge /dev/hvc0 (raw) to kvmpy's gdb stub while ci/nested-kvm runs gdb-multiarch on
    the host; it answers `host-gdb-done ok|fail ...` on this console."""
    import select
    import tty

    hvc = os.open(HVC, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(hvc)
    stub = socket.create_connection(("127.0.0.1", GDB_PORT), timeout=30)
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([hvc, stub], [], [], 0.2)
            if hvc in ready:
                data = os.read(hvc, 65536)
                if data:
                    stub.sendall(data)
            if stub in ready:
                data = stub.recv(65536)
                if not data:
                    return
                os.write(hvc, data)

    bridge = threading.Thread(target=pump, daemon=True)
    bridge.start()
    try:
        say("host-gdb-ready")
        line = ""
        while not line.startswith("host-gdb-done"):
            line = sys.stdin.readline()
            if not line:
                raise StepFailed("console closed while gdb-multiarch ran")
        result = line.split(None, 1)[1].strip()
        if not result.startswith("ok"):
            raise StepFailed(result)
        say(f"host {result}")
    finally:
        stop.set()
        bridge.join(5)
        stub.close()
        os.close(hvc)


def boot_l2(timeout: float) -> None:
    argv = ["kvmpy", "-accel", "kvm", "-M", "virt", "-nographic"]
    gdb = os.path.exists(SYMBOLS)
    if gdb:
        argv += ["-gdb", f"tcp:127.0.0.1:{GDB_PORT}"]
    pci = not os.path.exists("/l2/Image")
    if not pci:  # a guest given by ci/nested-kvm --l2-guest debian (no virtio modules in it)
        argv += ["-kernel", "/l2/Image", "-initrd", "/l2/initrd.cpio", "-append", "console=ttyS0"]
    else:
        make_disk()
        argv += ["-drive", f"file={DISK},if=virtio,format=raw", "-device", "virtio-rng-pci"]
        hostfwd = f"tcp:127.0.0.1:{NET_HOSTFWD_PORT}-:{NET_GUEST_PORT}"
        argv += ["-netdev", f"user,id=n0,hostfwd={hostfwd}", "-device", "virtio-net-pci,netdev=n0"]
    say("running " + " ".join(argv))
    t0 = time.monotonic()
    with Console(argv, echo_prefix="L2| ") as c:
        c.expect(rb"[#$] $", timeout)
        say(f"L2 shell prompt after {time.monotonic() - t0:.1f} s")
        c.send("echo l2-marker-$((6*7)); uname -m\n")
        c.expect(rb"l2-marker-42", 60)
        if pci:
            # The network first, so that the line the guest prints when its DHCP lease is bound
            # (in the background, any time after boot) comes before the other checks' output.
            t = time.monotonic()
            check_net(c)
            say(f"L2 network checks passed in {time.monotonic() - t:.1f} s")
            t = time.monotonic()
            check_pci(c)
            say(f"L2 PCI checks passed in {time.monotonic() - t:.1f} s")
        if gdb:
            t = time.monotonic()
            check_gdb(c)
            say(f"L2 gdb checks passed in {time.monotonic() - t:.1f} s")
        c.send("poweroff -f\n")
        rc = c.wait(120)
        say(f"L2 powered off, kvmpy exit {rc} after {time.monotonic() - t0:.1f} s")
        if rc != 0:
            raise StepFailed(f"kvmpy exit status {rc}")
    if pci:
        check_disk()


XACCEL_MARK = "kvmpy-cross-accel"


def _qmp(sock: str, timeout: float = 60) -> QMPClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = QMPClient(sock)
            client.connect()
            return client
        except OSError:
            if time.monotonic() > deadline:
                raise StepFailed(f"no QMP on {sock}") from None
            time.sleep(0.2)


def _wait_migration(qmp: QMPClient, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info: dict[str, object] = qmp.execute("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        time.sleep(0.2)
    raise StepFailed("migration did not end")


def _uptime(c: Console, cmd: str, timeout: float = 300, before: str = "") -> float:
    """Run ``cmd``, then read the guest's uptime; ``before``: what ``cmd`` must print."""
    c.send(cmd + "; cat /proc/uptime\n")
    if before:
        c.expect(f"\n{before}(?=\r?\n)", timeout)
    return float(c.expect(rb"\n(\d+\.\d+) \d", timeout).group(1))


def check_cross_accel(timeout: float) -> None:
    """The bundled guest booted under -accel kvm, saved (QMP migrate to exec:), restored under
    the interpreter (-accel tcg -bios builtin: KVM's SBI is in the kernel, the interpreter's in
    kvmpy), saved there and restored under KVM again: the tmpfs file written under KVM is read
    in both restored guests and the guest's uptime goes on from where it was saved."""
    state = None
    uptime = 0.0
    for step, accel in enumerate(("kvm", "tcg", "kvm")):
        sock = f"/tmp/xaccel-{step}.sock"
        argv = ["kvmpy", "-accel", accel, "-M", "virt", "-nographic",
                "-qmp", f"unix:{sock},server=on,wait=off"]
        if accel == "tcg":
            argv += ["-bios", "builtin"]
        if state is not None:
            argv += ["-incoming", f"exec:cat {state}"]
        say("running " + " ".join(argv))
        t0 = time.monotonic()
        with Console(argv, echo_prefix=f"X{step}| ") as c:
            qmp = _qmp(sock)
            if state is None:
                c.expect(rb"[#$] $", timeout)
                uptime = _uptime(c, f"echo {XACCEL_MARK}-$((6*7)) > /tmp/xaccel")
            else:
                info = _wait_migration(qmp, timeout)
                if info.get("status") != "completed":
                    raise StepFailed(f"restore under {accel}: {info}")
                say(f"restore under {accel}: migration completed after "
                    f"{time.monotonic() - t0:.1f} s, {qmp.execute('query-status')}")
                qmp.execute("cont")  # the source was stopped: restored paused, as QEMU's
                try:
                    now = _uptime(c, "cat /tmp/xaccel", 120, before=f"{XACCEL_MARK}-42")
                except StepFailed:
                    for _ in range(2):
                        regs = qmp.execute("human-monitor-command",
                                           {"command-line": "info registers"})
                        say("no answer; " + " ".join(str(regs).split())[:1500])
                        time.sleep(2)
                    raise
                if not uptime <= now < uptime + 60:
                    raise StepFailed(f"uptime {now} after restoring one saved at {uptime}")
                say(f"restored under {accel} in {time.monotonic() - t0:.1f} s: file kept, "
                    f"uptime {uptime} -> {now}")
                uptime = now
            if step == 2:
                c.send("poweroff -f\n")
            else:
                qmp.execute("stop")
                state = f"/tmp/xaccel-{step}.state"
                qmp.execute("migrate", {"uri": f"exec:cat > {state}"})
                info = _wait_migration(qmp, timeout)
                if info.get("status") != "completed":
                    raise StepFailed(f"save under {accel}: {info}")
                say(f"saved under {accel}: {os.path.getsize(state)} bytes")
                qmp.execute("quit")
            qmp.close()
            rc = c.wait(120)
            if rc != 0:
                raise StepFailed(f"kvmpy under {accel} exit status {rc}")


def main() -> int:
    infra_only = "--infra" in sys.argv
    try:
        say(f"L1 up: {platform.machine()} {platform.release()}, python {platform.python_version()}")
        if not os.path.exists("/dev/kvm"):
            raise StepFailed("no /dev/kvm in L1")
        t = time.monotonic()
        import _cffi_backend  # noqa: F401

        import kvmpy

        say(f"imports ok in {time.monotonic() - t:.1f} s: kvmpy from {kvmpy.__file__}")
        check_kvm_abi()
        if not infra_only:
            boot_l2(float(os.environ.get("L2_TIMEOUT", "900")))
            t = time.monotonic()
            check_cross_accel(float(os.environ.get("L2_TIMEOUT", "900")))
            say(f"cross-accelerator save/restore passed in {time.monotonic() - t:.1f} s")
    except StepFailed as exc:
        say(f"RESULT FAIL {exc}")
        return 1
    except Exception as exc:
        say(f"RESULT FAIL {type(exc).__name__}: {exc}")
        return 1
    say("RESULT PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
