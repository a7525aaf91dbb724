"""The bundled guest (kvmpy/guests/): its manifest and kernel config, the cached decompression,
the initramfs contents, and a real boot on qemu-system-riscv64 (the oracle) to the shell prompt.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmpy import guests
from kvmpy.errors import LoaderError

from .support import kvmpy_env

QEMU = shutil.which("qemu-system-riscv64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 is not installed")

# What the virt board needs from the kernel; every one must be built in.
REQUIRED_CONFIG = [
    "64BIT", "MMU", "SMP", "FPU", "RISCV_SBI", "RISCV_SBI_V01", "RISCV_TIMER", "SIFIVE_PLIC",
    "PRINTK", "TTY", "SERIAL_EARLYCON", "SERIAL_EARLYCON_RISCV_SBI", "SERIAL_8250",
    "SERIAL_8250_CONSOLE", "SERIAL_OF_PLATFORM", "HVC_RISCV_SBI", "BLK_DEV_INITRD", "RD_GZIP",
    "DEVTMPFS", "PROC_FS", "SYSFS", "TMPFS", "BINFMT_ELF", "BINFMT_SCRIPT", "VIRTIO_MMIO",
    "VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_CONSOLE", "HW_RANDOM_VIRTIO", "RTC_CLASS",
    "RTC_DRV_GOLDFISH", "POWER_RESET_SYSCON", "POWER_RESET_SYSCON_POWEROFF", "VIRTUALIZATION",
    "KVM",
    # The PCIe host bridge (pci-host-ecam-generic) and the devices behind it.
    "PCI", "PCI_HOST_GENERIC", "PCI_HOST_COMMON", "PCI_ECAM", "VIRTIO_PCI", "VIRTIO_PCI_LEGACY",
    # Networking basics and 9p over virtio (-virtfs).
    "NET", "INET", "UNIX", "PACKET", "NET_9P", "NET_9P_VIRTIO", "9P_FS",
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kernel_config() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in guests.config_path().read_text().splitlines():
        if m := re.match(r"CONFIG_(\w+)=(.*)", line):
            values[m.group(1)] = m.group(2)
        elif m := re.match(r"# CONFIG_(\w+) is not set", line):
            values[m.group(1)] = "n"
    return values


def cpio_entries(data: bytes) -> dict[str, tuple[int, int, bytes]]:
    """Parse a newc cpio: name -> (mode, rdev major<<8|minor, contents)."""
    entries: dict[str, tuple[int, int, bytes]] = {}
    pos = 0
    while True:
        header = data[pos:pos + 110]
        assert header[:6] == b"070701", f"bad cpio magic at {pos}"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmajor, rminor, namesize = (
            fields[1], fields[6], fields[9], fields[10], fields[11])
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos:pos + filesize]
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, rmajor << 8 | rminor, body)


# ----------------------------------------------------------------------------------------------
# The committed files
# ----------------------------------------------------------------------------------------------

def test_manifest_names_sources_versions_and_checksums() -> None:
    entries = guests.manifest()
    assert entries["linux.source"].startswith("linux-source-6.1 ")
    assert entries["linux.release"].startswith("6.1.")
    assert re.search(r"busybox .*1\.35", entries["busybox.source"])
    assert "riscv64-linux-gnu-gcc" in entries["compiler"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", entries["build.date"])
    folder = guests.GUEST_DIR
    assert entries["kernel.xz.sha256"] == sha256(folder / "Image.xz")
    assert entries["initrd.sha256"] == sha256(folder / "initramfs.cpio.gz")
    assert entries["config.sha256"] == sha256(folder / "config-6.1")
    total = sum((folder / name).stat().st_size for name in ("Image.xz", "initramfs.cpio.gz"))
    assert total < 4 * 1024 * 1024, f"bundled binaries grew to {total} bytes"


def test_description_is_one_line() -> None:
    text = guests.description()
    assert "\n" not in text
    assert text.startswith("Linux 6.1.") and "busybox" in text


def test_kernel_config_has_what_the_board_needs() -> None:
    config = kernel_config()
    missing = [name for name in REQUIRED_CONFIG if config.get(name) != "y"]
    assert not missing, f"not built in: {missing}"
    assert int(config["NR_CPUS"]) >= 8
    assert config.get("MODULES", "n") == "n"
    assert config.get("EFI", "n") == "n"


# ----------------------------------------------------------------------------------------------
# Decompression into the cache
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("KVMPY_CACHE_DIR", str(cache))
    return cache


def test_kernel_is_decompressed_once_into_the_cache(empty_cache: Path) -> None:
    path = guests.kernel_path()
    assert path.is_relative_to(empty_cache)
    entries = guests.manifest()
    assert path.stat().st_size == int(entries["kernel.size"])
    assert sha256(path) == entries["kernel.sha256"]
    image = path.read_bytes()[:64]
    assert image[48:56] == b"RISCV\0\0\0"  # Documentation/riscv/boot-image-header.rst
    assert image[56:60] == b"RSC\x05"
    stamp = path.stat().st_mtime_ns
    assert guests.kernel_path() == path
    assert path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "Image"]


def test_truncated_cache_entry_is_replaced(empty_cache: Path) -> None:
    path = guests.kernel_path()
    path.write_bytes(b"partial")
    assert guests.kernel_path() == path
    assert sha256(path) == guests.manifest()["kernel.sha256"]


def test_concurrent_first_use_from_several_processes(empty_cache: Path) -> None:
    code = "from kvmpy import guests; print(guests.kernel_path())"
    env = kvmpy_env()
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert sha256(path) == guests.manifest()["kernel.sha256"]
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "Image"]


def test_unwritable_cache_is_one_line_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("KVMPY_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(LoaderError, match="KVMPY_CACHE_DIR") as info:
        guests.kernel_path()
    assert "\n" not in str(info.value)


def test_initramfs_holds_init_busybox_and_etc() -> None:
    entries = cpio_entries(gzip.decompress(guests.initrd_path().read_bytes()))
    mode, _, init = entries["init"]
    assert mode & 0o170000 == 0o100000 and mode & 0o111
    assert init.startswith(b"#!/bin/sh\n")
    for fs in (b"proc", b"sysfs", b"devtmpfs"):
        assert b"mount -t " + fs in init
    mode, rdev, _ = entries["dev/console"]
    assert mode & 0o170000 == 0o020000 and rdev == (5 << 8 | 1)
    _, _, busybox = entries["bin/busybox"]
    assert busybox[:4] == b"\x7fELF" and busybox[4] == 2  # ELFCLASS64
    assert int.from_bytes(busybox[18:20], "little") == 243  # EM_RISCV
    assert b"/lib/ld-linux" not in busybox[:4096], "busybox must be static"
    assert entries["etc/passwd"][2].startswith(b"root:")
    # The network: lo and eth0 (DHCP) from /init, udhcpc's hook at busybox's built-in path.
    assert b"ip link set lo up" in init and b"udhcpc -f -i eth0" in init
    mode, _, script = entries["usr/share/udhcpc/default.script"]
    assert mode & 0o170000 == 0o100000 and mode & 0o111
    assert script.startswith(b"#!/bin/sh\n")
    for needle in (b"ip addr replace", b"ip route replace default", b"/etc/resolv.conf",
                   guests.DHCP_BOUND.replace("eth0", "$interface").encode()):
        assert needle in script, needle
    for applet in ("bin/sh", "usr/bin/setsid", "bin/cttyhack", "sbin/poweroff", "sbin/reboot",
                   "sbin/init", "usr/bin/lspci", "bin/mount", "bin/nice",
                   # DHCP, network set-up, and the tools tests use over the network.
                   "sbin/udhcpc", "sbin/ip", "sbin/ifconfig", "sbin/route", "usr/sbin/httpd",
                   "usr/bin/nc", "usr/bin/wget"):
        mode, _, target = entries[applet]
        assert mode & 0o170000 == 0o120000 and target.rstrip(b"\0") == b"/bin/busybox", applet


# ----------------------------------------------------------------------------------------------
# Booting on QEMU
# ----------------------------------------------------------------------------------------------

class Console:
    """qemu-system-riscv64 -nographic with its console on pipes; expect-style helpers."""

    def __init__(self, args: list[str]) -> None:
        assert QEMU is not None
        self.command = [QEMU, "-M", "virt", "-nographic", *args]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._text = ""
        self._pos = 0
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            with self._cond:
                self._text += chunk.decode(errors="replace")
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return self._text

    def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait for ``pattern`` (regex) in the output after the previous match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = regex.search(self._text, self._pos)
                if match:
                    self._pos = match.end()
                    return match
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"{pattern!r} not seen; command {self.command}; output:\n"
                        f"{self._text[-3000:]}")
                self._cond.wait(min(left, 0.5))

    def seen(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait for ``pattern`` anywhere in the output, before or after the previous match (for
        lines printed in the background, such as the DHCP one); the position does not move."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (match := regex.search(self._text)):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"{pattern!r} not seen; command {self.command}; output:\n"
                        f"{self._text[-3000:]}")
                self._cond.wait(min(left, 0.5))
            return match

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def run(self, command: str, answer: str, timeout: float = 20.0) -> re.Match[str]:
        """Type ``command`` at the prompt; wait for ``answer`` and the next prompt."""
        self.send(command + "\n")
        match = self.expect(answer, timeout)
        self.expect(re.escape(guests.PROMPT), timeout)
        return match

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for QEMU to exit and for the reader to have taken all of its output."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def boot() -> Iterator[type[Console]]:
    consoles: list[Console] = []

    class Tracked(Console):
        def __init__(self, args: list[str]) -> None:
            super().__init__(args)
            consoles.append(self)

    yield Tracked
    for console in consoles:
        console.close()


def guest_args(*extra: str) -> list[str]:
    return ["-kernel", str(guests.kernel_path()), "-initrd", str(guests.initrd_path()), *extra]


def hmp(path: Path, command: str) -> str:
    """Run one HMP command on a ``-monitor unix:PATH,server=on,wait=off`` socket; its output."""

    def until_prompt(sock: socket.socket) -> bytes:
        data = b""
        while not data.endswith(b"(qemu) "):
            chunk = sock.recv(4096)
            if not chunk:
                raise AssertionError(f"monitor closed; so far: {data!r}")
            data += chunk
        return data

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        until_prompt(sock)
        sock.sendall(command.encode() + b"\n")
        return until_prompt(sock).decode(errors="replace")


@needs_qemu
@pytest.mark.parametrize("harts", [1, 4])
def test_boots_to_shell_on_qemu(boot: type[Console], harts: int) -> None:
    vm = boot(guest_args("-smp", str(harts), "-append", "console=ttyS0 kvmpy.marker=7f3a"))
    vm.expect(re.escape(guests.BANNER), 60)
    vm.expect(re.escape(guests.PROMPT), 60)
    seconds = time.monotonic() - vm.started
    print(f"\n{harts} hart(s): shell prompt {seconds:.2f} s after starting QEMU")
    vm.run("echo answer=$((6*7))", "answer=42")
    vm.run("echo harts=$(grep -c ^processor /proc/cpuinfo)", rf"harts={harts}\r?\n")
    vm.run("cat /proc/cmdline", "kvmpy.marker=7f3a")
    vm.run("mount | grep -c -E '^(proc|sysfs|devtmpfs) '", r"\n3\r?\n")
    # The goldfish RTC set the clock (RTC_HCTOSYS): the guest's date is the host's.
    match = vm.run("date -u +epoch=%s", r"epoch=(\d+)\r?\n")
    assert abs(int(match.group(1)) - time.time()) < 120
    # Job control: Ctrl-C interrupts a foreground command and the prompt comes back.
    vm.send("sleep 100\n")
    time.sleep(0.5)
    vm.send("\x03")
    vm.expect(re.escape(guests.PROMPT), 10)
    vm.run("echo still-here", "still-here\r?\n")
    # No NIC: lo comes up in the background (IFF_UP|IFF_LOOPBACK), no DHCP client, no line.
    vm.run("for i in $(seq 50); do grep -qx 0x9 /sys/class/net/lo/flags && break; sleep 0.1; done;"
           " echo lo-flags=$(cat /sys/class/net/lo/flags) dhcp-clients=$(pidof udhcpc | wc -w)",
           r"lo-flags=0x9 dhcp-clients=0\r?\n")
    vm.send("poweroff\n")
    assert vm.wait_exit(30) == 0
    assert "reboot: Power down" in vm.output
    assert guests.DHCP_BOUND not in vm.output


@needs_qemu
def test_boots_with_device_tree_console_and_reboots(boot: type[Console]) -> None:
    # No -append: the console comes from /chosen/stdout-path.  -no-reboot turns reboot into exit.
    vm = boot(guest_args("-smp", "2", "-no-reboot"))
    vm.expect(re.escape(guests.PROMPT), 60)
    vm.run("echo ok-$((1+1))", "ok-2")
    # By its path, not the prompt's alias: reboot asks busybox init, which shuts down and
    # calls reboot(2).
    vm.send("/sbin/reboot\n")
    assert vm.wait_exit(30) == 0
    assert "The system is going down NOW!" in vm.output
    assert "reboot: Restarting system" in vm.output


@needs_qemu
def test_hosts_kvm_when_the_hart_has_the_hypervisor_extension(boot: type[Console]) -> None:
    vm = boot(guest_args("-cpu", "rv64,h=true", "-smp", "2", "-append", "console=ttyS0"))
    vm.expect(r"kvm \[\d+\]: hypervisor extension available", 60)
    vm.expect(re.escape(guests.PROMPT), 60)
    vm.run("dmesg | grep -c 'hypervisor extension available'", r"\n1\r?\n")
    vm.run("test -c /dev/kvm && echo kvm=present", "kvm=present")
    vm.send("poweroff\n")
    assert vm.wait_exit(30) == 0


@needs_qemu
def test_drives_virtio_mmio_blk_net_rng_console_on_eight_harts(boot: type[Console],
                                                              tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"kvmpy-disk-marker" + bytes(1024 * 1024 - 17))
    vm = boot(guest_args(
        "-smp", "8", "-append", "console=ttyS0",
        "-drive", f"if=none,format=raw,file={disk},id=d0", "-device", "virtio-blk-device,drive=d0",
        # restrict=on: the guest's interface exists but reaches nothing outside QEMU.
        "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-device,netdev=n0",
        "-device", "virtio-rng-device",
        "-chardev", "null,id=vc0", "-device", "virtio-serial-device",
        "-device", "virtconsole,chardev=vc0",
    ))
    vm.expect(re.escape(guests.PROMPT), 60)
    # The DHCP line comes in the background; wait for it so that it cannot land in the middle
    # of an answer below.
    vm.seen(re.escape(guests.DHCP_BOUND) + r"10\.0\.2\.15/24\r?\n", 60)
    vm.run("echo harts=$(grep -c ^processor /proc/cpuinfo)", r"harts=8\r?\n")
    # virtio device IDs: 1 net, 2 block, 3 console, 4 entropy.
    vm.run("echo ids=$(cat /sys/bus/virtio/devices/*/device | sort | tr '\\n' ,)",
           "ids=0x0001,0x0002,0x0003,0x0004,")
    vm.run("head -c 17 /dev/vda; echo", "kvmpy-disk-marker")
    vm.run("ip link show eth0 | grep -o 'link/ether [0-9a-f:]*'", "link/ether 52:54:00")
    vm.run("cat /sys/class/misc/hw_random/rng_current", "virtio_rng")
    vm.run("test -c /dev/hvc0 && echo hvc=present", "hvc=present")
    vm.send("poweroff\n")
    assert vm.wait_exit(30) == 0


@needs_qemu
def test_eth0_by_dhcp_and_httpd_reached_through_hostfwd(boot: type[Console],
                                                       tmp_path: Path) -> None:
    monitor = tmp_path / "hmp.sock"
    vm = boot(guest_args(
        "-append", "console=ttyS0",
        # restrict=on: DHCP and hostfwd work, the guest reaches nothing outside QEMU (so slirp
        # offers it no router and no DNS server).  Host port 0: info usernet tells which.
        "-netdev", "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:0-:80",
        "-device", "virtio-net-pci,netdev=n0,romfile=",  # no boot ROM: none is installed here
        "-monitor", f"unix:{monitor},server=on,wait=off",
    ))
    vm.expect(re.escape(guests.PROMPT), 60)
    lease = vm.seen(re.escape(guests.DHCP_BOUND) + r"(.*?)\r?\n", 60)
    assert lease.group(1) == "10.0.2.15/24"
    vm.run("ip -4 addr show dev eth0 | grep -o 'inet [0-9./]*'", r"inet 10\.0\.2\.15/24")
    vm.run("echo lo-flags=$(cat /sys/class/net/lo/flags)", r"lo-flags=0x9\r?\n")
    # A renewal naming a router and a DNS server (slirp's without restrict=on) sets the default
    # route and /etc/resolv.conf, and prints nothing.
    vm.run("interface=eth0 ip=10.0.2.15 mask=24 router='10.0.2.2 10.0.2.9' dns=10.0.2.3 "
           "/usr/share/udhcpc/default.script renew; ip route | grep ^default; cat /etc/resolv.conf",
           r"\ndefault via 10\.0\.2\.2 dev eth0 *\r?\nnameserver 10\.0\.2\.3\r?\n")
    vm.run("mkdir -p /tmp/www && echo kvmpy-http-$((6*7)) >/tmp/www/hello.txt &&"
           " httpd -p 80 -h /tmp/www && echo started=$?", r"started=0\r?\n")
    usernet = hmp(monitor, "info usernet")
    rule = re.search(r"TCP\[HOST_FORWARD\] +\d+ +127\.0\.0\.1 +(\d+) +10\.0\.2\.15 +80 ", usernet)
    assert rule, usernet
    host = http.client.HTTPConnection("127.0.0.1", int(rule.group(1)), timeout=10)
    host.request("GET", "/hello.txt")
    reply = host.getresponse()
    assert (reply.status, reply.read()) == (200, b"kvmpy-http-42\n")
    host.close()
    vm.send("poweroff\n")
    assert vm.wait_exit(30) == 0
    assert vm.output.count(guests.DHCP_BOUND) == 1


@needs_qemu
def test_dhcp_client_leaves_an_address_set_by_hand(boot: type[Console]) -> None:
    # A NIC on a hub with nothing else on it: no DHCP server ever answers.
    vm = boot(guest_args(
        "-append", "console=ttyS0",
        "-netdev", "hubport,id=n0,hubid=0", "-device", "virtio-net-device,netdev=n0",
    ))
    vm.expect(re.escape(guests.PROMPT), 60)
    vm.run("ip addr add 192.168.7.1/24 dev eth0 && ip link set eth0 up && echo set=$?",
           r"set=0\r?\n")
    # udhcpc's start (its deconfig) comes before its first discover.
    vm.run("for i in $(seq 100); do grep -q discover /run/udhcpc.log && break; sleep 0.1; done;"
           " echo clients=$(pidof udhcpc | wc -w); ip -4 addr show eth0 | grep -o 'inet [0-9./]*'",
           r"clients=1\r?\ninet 192\.168\.7\.1/24\r?\n")
    vm.send("poweroff\n")
    assert vm.wait_exit(30) == 0
    assert guests.DHCP_BOUND not in vm.output


@needs_qemu
def test_drives_virtio_pci_blk_rng_and_9p(boot: type[Console], tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"kvmpy-pci-disk" + bytes(1024 * 1024 - 14))
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello.txt").write_text("kvmpy-9p-marker\n")
    vm = boot(guest_args(
        "-smp", "2", "-append", "console=ttyS0",
        "-drive", f"file={disk},if=virtio,format=raw",  # on virt, if=virtio is virtio-blk-pci
        "-device", "virtio-rng-pci",
        "-fsdev", f"local,id=fs0,path={share},security_model=none",
        "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=host0",
    ))
    vm.expect(re.escape(guests.PROMPT), 60)
    # The host bridge (1b36:0008) and one virtio-pci function per device (vendor 1af4).
    vm.run("lspci | grep -c ' 1b36:0008'", r"\n1\r?\n")
    vm.run("lspci | grep -c ' 1af4:'", r"\n3\r?\n")
    vm.run("echo ids=$(cat /sys/bus/virtio/devices/*/device | sort | tr '\\n' ,)",
           "ids=0x0002,0x0004,0x0009,")
    vm.run("head -c 14 /dev/vda; echo", "kvmpy-pci-disk")
    vm.run("cat /sys/class/misc/hw_random/rng_current", "virtio_rng")
    vm.run("mount -t 9p -o trans=virtio,version=9p2000.L host0 /mnt && cat /mnt/hello.txt",
           "kvmpy-9p-marker")
    vm.send("poweroff\n")
    assert vm.wait_exit(30) == 0
