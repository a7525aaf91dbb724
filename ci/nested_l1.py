"""Runs inside the L1 guest of ci/nested-kvm (riscv64 Linux with KVM, Debian's python3).

Checks the L1 environment (/dev/kvm, python3 with cffi, kvmpy, the KVM API version through cffi
in ABI mode), then, unless told to stop there, boots kvmpy's bundled guest with
`kvmpy -accel kvm -M virt -nographic` to a working shell and powers it off. Every result is one
line starting with "nested-kvm:"; the last one is "nested-kvm: RESULT PASS" or "... FAIL <why>".

The bundled guest also gets PCI devices, which under KVM are plain MMIO exits to kvmpy (ECAM
config space and BARs): a virtio-blk-pci disk (`-drive if=virtio`) whose image L1 prepares and
checks afterwards, and a virtio-rng-pci. In the guest: lspci sees the host bridge and both
functions, the disk reads L1's marker and takes a write, the entropy source is virtio_rng, and
their INTx interrupts (PLIC sources 32-35) are counted in /proc/interrupts.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ciutil import Console, StepFailed

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01

DISK = "/tmp/l2-disk.img"
DISK_SIZE = 4 << 20
DISK_MARKER = b"kvmpy-nested-pci-disk"  # at offset 0, written by L1
GUEST_MARKER = b"l2-wrote-pci-disk"  # at offset 512, written by L2
PCI_IDS = ("1b36:0008", "1af4:1005", "1af4:1001")  # gpex host bridge, virtio rng, virtio blk
PCI_INTX_SOURCES = range(32, 36)  # PLIC sources of INTA-INTD (QEMU's VIRT_PCIE_IRQ)


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
        if vm >= 0:
            os.close(vm)
    finally:
        os.close(fd)
    say(f"KVM_GET_API_VERSION={version} KVM_CREATE_VM={'ok' if vm >= 0 else 'failed'}")
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


def boot_l2(timeout: float) -> None:
    argv = ["kvmpy", "-accel", "kvm", "-M", "virt", "-nographic"]
    pci = not os.path.exists("/l2/Image")
    if not pci:  # a guest given by ci/nested-kvm --l2-guest debian (no virtio modules in it)
        argv += ["-kernel", "/l2/Image", "-initrd", "/l2/initrd.cpio", "-append", "console=ttyS0"]
    else:
        make_disk()
        argv += ["-drive", f"file={DISK},if=virtio,format=raw", "-device", "virtio-rng-pci"]
    say("running " + " ".join(argv))
    t0 = time.monotonic()
    with Console(argv, echo_prefix="L2| ") as c:
        c.expect(rb"[#$] $", timeout)
        say(f"L2 shell prompt after {time.monotonic() - t0:.1f} s")
        c.send("echo l2-marker-$((6*7)); uname -m\n")
        c.expect(rb"l2-marker-42", 60)
        if pci:
            t = time.monotonic()
            check_pci(c)
            say(f"L2 PCI checks passed in {time.monotonic() - t:.1f} s")
        c.send("poweroff -f\n")
        rc = c.wait(120)
        say(f"L2 powered off, kvmpy exit {rc} after {time.monotonic() - t0:.1f} s")
        if rc != 0:
            raise StepFailed(f"kvmpy exit status {rc}")
    if pci:
        check_disk()


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
