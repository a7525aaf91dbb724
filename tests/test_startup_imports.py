"""What start-up imports: a VM imports the device models, disk formats and network back-ends
it uses and no others, and the lazy packages still offer every public name (behaviour, not
time: the time is benchmarks/startup's)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import kvmpy

ROOT = Path(kvmpy.__file__).resolve().parent.parent
"""Where the kvmpy under test lives: the source tree, or site-packages when the tests run
against the installed package (the source tree then has no built interpreter core)."""
# The sifive_test pass value stored by the first instructions: the VM exits at once.
# lui t0,0x100 ; c.lui t1,0x5 ; addi t1,t1,0x555 ; sw t1,0(t0) ; c.j .
TINY_KERNEL = bytes.fromhex("b7021000" "1563" "13035355" "23a06200" "01a0")

RUN = """
import json, sys
from kvmpy.cli import main
status = main(sys.argv[1:])
print(json.dumps({"status": status, "modules": sorted(sys.modules)}))
"""

LAZY_PACKAGES = ("kvmpy.hw.pci", "kvmpy.hw.virtio", "kvmpy.block", "kvmpy.net", "kvmpy.fs",
                 "kvmpy.chardev", "kvmpy.hw.misc")


def _python(code: str, cwd: Path | None, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _tiny_elf() -> bytes:
    """TINY_KERNEL as an ELF64 RISC-V executable: one PT_LOAD segment at 0x80000000."""
    entry, ehsize, phsize = 0x8000_0000, 64, 56
    header = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
                         2, 243, 1, entry, ehsize, 0, 0, ehsize, phsize, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 7, ehsize + phsize, entry, entry, len(TINY_KERNEL),
                       len(TINY_KERNEL), 4)
    return header + phdr + TINY_KERNEL


def _run(tmp_path: Path, *args: str, kernel: str = "tiny.bin") -> set[str]:
    """The modules imported by a VM running the tiny kernel to its end, with ``args``."""
    (tmp_path / "tiny.bin").write_bytes(TINY_KERNEL)
    (tmp_path / "tiny.elf").write_bytes(_tiny_elf())
    out = _python(RUN, tmp_path, "-M", "virt", "-bios", "none", "-kernel", kernel,
                  "-nographic", "-accel", "tcg", *args)
    result = json.loads(out.splitlines()[-1])
    assert result["status"] == 0  # the guest ran and passed through sifive_test
    return set(result["modules"])


def _under(modules: set[str], *packages: str) -> set[str]:
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)}


def test_a_plain_virt_run_imports_no_disk_network_or_unused_device(tmp_path: Path) -> None:
    """The benchmark's command line: the board builds its PCIe host and virtio-mmio slots
    and -nographic opens HMP on stdio, but no disk format, network back-end, 9P server,
    virtio device model, virtio-pci transport, HMP command, snapshot command or KVM back-end
    is imported."""
    modules = _run(tmp_path)
    assert {"kvmpy.hw.pci.gpex", "kvmpy.hw.virtio.mmio", "kvmpy.monitor.hmp_chardev",
            "kvmpy.accel.tcg"} <= modules  # what the VM does use
    assert _under(modules, "kvmpy.block", "kvmpy.net", "kvmpy.fs", "kvmpy.accel.kvm",
                  "kvmpy.monitor.hmp", "kvmpy.monitor.commands", "kvmpy.monitor.snapshots",
                  "kvmpy.hw.pci.virtio_pci",
                  "kvmpy.hw.pci.root_port") == set()
    assert _under(modules, *(f"kvmpy.hw.virtio.{m}" for m in
                             ("blk", "net", "ninep", "rng", "balloon", "console"))) == set()
    assert "kvmpy.hw.misc.sifive_test" in modules and "kvmpy.hw.misc.htif" not in modules


def test_a_plain_run_imports_no_asyncio_ssl_or_unused_chardev_backend(tmp_path: Path) -> None:
    """The main loop is kvmpy's own (no asyncio, hence no ssl), and -nographic's mon:stdio
    imports the stdio and mux backends, not the socket, pty, file or ring-buffer ones."""
    modules = _run(tmp_path)
    assert {"kvmpy.mainloop", "kvmpy.chardev.stdio", "kvmpy.chardev.mux"} <= modules
    assert _under(modules, "asyncio", "ssl", "socket", "kvmpy.chardev.socket",
                  "kvmpy.chardev.pty", "kvmpy.chardev.file", "kvmpy.chardev.ringbuf") == set()


def test_an_elf_kernel_is_loaded_without_pyelftools(tmp_path: Path) -> None:
    """virt reads an ELF kernel's program headers itself, as QEMU's loader does; the guest
    runs from its entry (the run's status is the guest's sifive_test pass)."""
    modules = _run(tmp_path, kernel="tiny.elf")
    assert "kvmpy.loader" in modules
    assert _under(modules, "elftools") == set()


def test_a_nic_without_a_backend_does_not_import_the_network_layer(tmp_path: Path) -> None:
    modules = _run(tmp_path, "-device", "virtio-net-device")
    assert "kvmpy.hw.virtio.net" in modules
    assert _under(modules, "kvmpy.net", "kvmpy.block") == set()


def test_a_netdev_imports_its_backend_only(tmp_path: Path) -> None:
    modules = _run(tmp_path, "-netdev", "socket,id=n0,udp=127.0.0.1:1,localaddr=127.0.0.1:0",
                   "-device", "virtio-net-pci,netdev=n0")
    assert {"kvmpy.net.stream", "kvmpy.hw.pci.virtio_pci"} <= modules
    assert _under(modules, "kvmpy.net.tap", "kvmpy.net.user", "kvmpy.net.slirp") == set()


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_a_lazy_package_imports_no_module_and_offers_every_public_name(package: str) -> None:
    code = """
import importlib, json, sys
package = importlib.import_module(sys.argv[1])
before = sorted(m for m in sys.modules if m.startswith(sys.argv[1] + "."))
names = {name: getattr(package, name) is not None for name in package.__all__}
try:
    package.no_such_name
    missing = "no AttributeError"
except AttributeError as exc:
    missing = str(exc)
print(json.dumps({"before": before, "names": names, "missing": missing,
                  "dir": sorted(set(package.__all__) - set(dir(package)))}))
"""
    result = json.loads(_python(code, None, package).splitlines()[-1])
    assert result["before"] == []
    assert result["names"] and all(result["names"].values())
    assert result["missing"] == f"module {package!r} has no attribute 'no_such_name'"
    assert result["dir"] == []


GC_STATE = """
import gc, json, sys
import kvmpy.system
from kvmpy.cli import main

seen = {}
run = kvmpy.system.System.run

def recording_run(self, *args, **kwargs):
    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())
    return run(self, *args, **kwargs)

kvmpy.system.System.run = recording_run
argv = ["-M", "virt", "-bios", "none", "-kernel", "tiny.bin", "-nographic", "-accel", "tcg"]
if sys.argv[1] == "process":
    sys.argv[1:] = argv
    status = main()
else:
    status = main(argv)
print(json.dumps({"status": status, **seen, "after": gc.isenabled()}))
"""


def test_the_collector_is_on_while_the_vm_runs(tmp_path: Path) -> None:
    """As the process's entry point, start-up runs without the cyclic collector and freezes
    what it made; the VM runs with the collector on.  A library call leaves it alone."""
    (tmp_path / "tiny.bin").write_bytes(TINY_KERNEL)
    process = json.loads(_python(GC_STATE, tmp_path, "process").splitlines()[-1])
    assert process["status"] == 0
    assert process["enabled"] is True and process["frozen"] > 1000
    assert process["after"] is True
    library = json.loads(_python(GC_STATE, tmp_path, "library").splitlines()[-1])
    assert library == {"status": 0, "enabled": True, "frozen": 0, "after": True}
