"""An S-mode payload that uses the SBI like Linux (guests/sbi_smoke.S) on the virt board.

1. On QEMU 7.2 with its OpenSBI and *kvmpy's* device tree (``-dtb``): OpenSBI must accept the
   tree kvmpy generates (no fw-cfg, flash, PCIe) and bring up every hart it describes.
2. On kvmpy itself, with ``-bios builtin`` (kvmpy's SBI) and ``-bios default`` (OpenSBI on
   the interpreter), on 1 and 4 harts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kvmpy import qom
from kvmpy.firmware import opensbi
from kvmpy.registry_init import load_types

from ...support import kvmpy_env

PAYLOAD = Path(__file__).parent / "guests" / "sbi_smoke.elf"
REPO = Path(__file__).resolve().parents[3]


def expected_lines(harts: int) -> list[str]:
    return ["sbi-smoke: hart 0 up", "sbi-smoke: timer ok", "sbi-smoke: ipi ok",
            f"sbi-smoke: {harts} harts", "sbi-smoke: done"]


def smoke_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines()
            if line.startswith("sbi-smoke:") and not line.startswith("sbi-smoke: spec")]


@pytest.mark.parametrize("harts", [1, 4])
def test_opensbi_on_qemu_accepts_kvmpy_dtb(board: Any, oracle: Any, tmp_path: Path,
                                           harts: int) -> None:
    if opensbi.find_fw_dynamic() is None:
        pytest.skip("no OpenSBI fw_dynamic installed (Debian package opensbi)")
    out = tmp_path / "kvmpy.dtb"
    with pytest.raises(SystemExit):
        board(cpus=harts, bios="none", machine_props={"dumpdtb": str(out)})
    # thread=single: with multi-threaded TCG, QEMU 7.2 sometimes hangs in exit() when the
    # sifive_test poweroff comes from one vCPU thread while the others sleep (about 1 run in 8
    # on 4 harts, with QEMU's own tree as well as kvmpy's).
    proc = subprocess.run(["qemu-system-riscv64", "-M", "virt", "-accel", "tcg,thread=single",
                           "-smp", str(harts), "-nographic", "-dtb", str(out),
                           "-kernel", str(PAYLOAD)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "Platform Name             : riscv-virtio,qemu" in proc.stdout
    assert f"Platform HART Count       : {harts}" in proc.stdout
    assert smoke_lines(proc.stdout) == expected_lines(harts)
    assert proc.returncode == 0


def _tcg_unavailable() -> str | None:
    load_types()
    for info in qom.object_class_get_list("accel"):
        if getattr(info.cls, "name", None) == "tcg":
            reason: str | None = info.cls.unavailable_reason()
            return reason
    return "the tcg accelerator is not registered in this build"


@pytest.mark.parametrize("bios", ["builtin", "default"])
@pytest.mark.parametrize("harts", [1, 4])
def test_payload_on_kvmpy(bios: str, harts: int, tmp_path: Path) -> None:
    reason = _tcg_unavailable()
    if reason is not None:
        pytest.skip(f"interpreter accelerator unavailable: {reason}")
    if bios == "default" and opensbi.find_fw_dynamic() is None:
        pytest.skip("no OpenSBI fw_dynamic installed (Debian package opensbi)")
    env = kvmpy_env()
    serial = tmp_path / "serial.txt"
    proc = subprocess.run([sys.executable, "-m", "kvmpy", "-M", "virt", "-accel", "tcg",
                           "-smp", str(harts), "-bios", bios, "-display", "none",
                           "-monitor", "none", "-serial", f"file:{serial}",
                           "-kernel", str(PAYLOAD)],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    output = serial.read_text(errors="replace") if serial.exists() else ""
    assert smoke_lines(output) == expected_lines(harts), output + proc.stderr
    assert proc.returncode == 0, proc.stderr


BAD_ACCESS = Path(__file__).parent / "guests" / "bad_access.elf"


def test_bad_accesses_are_logged_and_the_guest_goes_on(tmp_path: Path) -> None:
    """Unassigned addresses, refused widths, a store to the boot ROM: logged, not fatal."""
    reason = _tcg_unavailable()
    if reason is not None:
        pytest.skip(f"interpreter accelerator unavailable: {reason}")
    env = kvmpy_env()
    serial = tmp_path / "serial.txt"
    proc = subprocess.run([sys.executable, "-m", "kvmpy", "-M", "virt", "-accel", "tcg",
                           "-bios", "builtin", "-display", "none", "-monitor", "none",
                           "-serial", f"file:{serial}", "-d", "guest_errors",
                           "-kernel", str(BAD_ACCESS)],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert "bad-access: alive" in serial.read_text()
    assert proc.returncode == 0
    log = proc.stderr
    for expected in ("Invalid read at addr 0x200000, size 4",
                     "Invalid write at addr 0x200008, size 4",
                     "size 1, region 'riscv.sifive.plic'",
                     "size 2, region 'riscv.sifive.plic'",
                     "size 1, region 'goldfish_rtc'"):
        assert expected in log, log
    # 0x7ff00000 is in the PCIe memory window, where no BAR is: ignored without a log, as on
    # QEMU (its gpex host's allow-unmapped-accesses).
    assert "0x7ff00000" not in log


MROM_CONTRACT = Path(__file__).parent / "guests" / "mrom_contract.elf"


@pytest.mark.parametrize("harts", [1, 4])
def test_bios_none_register_contract_on_qemu_and_kvmpy(oracle: Any, tmp_path: Path,
                                                       harts: int) -> None:
    """-bios none: every hart leaves the boot ROM for DRAM base in M-mode with a0 = hartid,
    a1 = FDT, a2 = &fw_dynamic_info; the payload exits through sifive_test PASS (status 0)."""
    qemu = subprocess.run(["qemu-system-riscv64", "-M", "virt", "-accel", "tcg,thread=single",
                           "-smp", str(harts), "-bios", "none", "-nographic",
                           "-kernel", str(MROM_CONTRACT)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert "mrom-contract: ok" in qemu.stdout
    assert qemu.returncode == 0
    reason = _tcg_unavailable()
    if reason is not None:
        pytest.skip(f"interpreter accelerator unavailable: {reason}")
    env = kvmpy_env()
    serial = tmp_path / "serial.txt"
    proc = subprocess.run([sys.executable, "-m", "kvmpy", "-M", "virt", "-accel", "tcg",
                           "-smp", str(harts), "-bios", "none", "-display", "none",
                           "-monitor", "none", "-serial", f"file:{serial}",
                           "-kernel", str(MROM_CONTRACT)],
                          capture_output=True, text=True, timeout=60, check=False, env=env)
    assert serial.read_text() == "mrom-contract: ok\n", proc.stderr
    assert proc.returncode == 0
