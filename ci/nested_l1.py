"""Runs inside the L1 guest of ci/nested-kvm (riscv64 Linux with KVM, Debian's python3).

Checks the L1 environment (/dev/kvm, python3 with cffi, kvmpy, the KVM API version through cffi
in ABI mode), then, unless told to stop there, boots kvmpy's bundled guest with
`kvmpy -accel kvm -M virt -nographic` to a working shell and powers it off. Every result is one
line starting with "nested-kvm:"; the last one is "nested-kvm: RESULT PASS" or "... FAIL <why>".
"""

from __future__ import annotations

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ciutil import Console, StepFailed

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01


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


def boot_l2(timeout: float) -> None:
    argv = ["kvmpy", "-accel", "kvm", "-M", "virt", "-nographic"]
    if os.path.exists("/l2/Image"):  # a guest given by ci/nested-kvm --l2-guest debian
        argv += ["-kernel", "/l2/Image", "-initrd", "/l2/initrd.cpio", "-append", "console=ttyS0"]
    say("running " + " ".join(argv))
    t0 = time.monotonic()
    with Console(argv, echo_prefix="L2| ") as c:
        c.expect(rb"[#$] $", timeout)
        say(f"L2 shell prompt after {time.monotonic() - t0:.1f} s")
        c.send("echo l2-marker-$((6*7)); uname -m\n")
        c.expect(rb"l2-marker-42", 60)
        c.send("poweroff -f\n")
        rc = c.wait(120)
        say(f"L2 powered off, kvmpy exit {rc} after {time.monotonic() - t0:.1f} s")
        if rc != 0:
            raise StepFailed(f"kvmpy exit status {rc}")


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
