"""ISA test programs of tests/guests/ on ``-M spike``: QEMU is the oracle, kvmpy must agree.

Each program reports through HTIF: exit status 0 is a pass, any other status is the number
of the failing subtest.  Every ELF runs on ``qemu-system-riscv64 -M spike -bios none`` when
QEMU is installed and on ``python -m kvmpy -M spike -bios none``; both must exit 0 and print
the same console output.  ``spec_strict`` holds what QEMU 7.2 gets wrong: it must fail on
QEMU and pass on kvmpy.  A program that needs more options says so in its source
(``RUN-ARGS: -smp 2``).
"""

from __future__ import annotations

import functools
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

GUESTS = Path(__file__).parent / "guests"
ELFS = sorted(GUESTS.glob("*.elf"))
SOURCES = sorted(p for p in GUESTS.glob("*.S") if p.name != "crt.S")

# Programs that QEMU 7.2 fails by design (see their sources for each divergence).
QEMU_DIVERGES = {"spec_strict"}

# Wall-clock limit of one run; the programs finish in well under a second on QEMU.
TIMEOUT_S = 120.0

QEMU = shutil.which("qemu-system-riscv64")


def run_args(elf: Path) -> list[str]:
    """Extra options a program asks for with a ``RUN-ARGS: ...`` note in its source."""
    source = elf.with_suffix(".S")
    if source.exists():
        m = re.search(r"RUN-ARGS: ([^)*\n]+)", source.read_text())
        if m:
            return m.group(1).split()
    return []


def run_spike(argv0: list[str], elf: Path) -> tuple[int, str]:
    """Run one ELF on a spike machine; (exit status, console output).  Fails on a hang."""
    cmd = [*argv0, "-M", "spike", "-bios", "none", "-kernel", str(elf), "-nographic",
           *run_args(elf)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)}: no exit within {TIMEOUT_S:.0f} s")
    out = proc.stdout.decode("utf-8", "replace").replace("\r\n", "\n")
    if proc.returncode != 0 and proc.stderr:
        out += "\n[stderr] " + proc.stderr.decode("utf-8", "replace")
    return proc.returncode, out


KVMPY = [sys.executable, "-m", "kvmpy"]


@functools.cache
def kvmpy_spike_missing() -> str | None:
    """Why kvmpy cannot run -M spike here, or None when it can."""
    try:
        proc = subprocess.run([*KVMPY, "-M", "help"], capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return "python -m kvmpy -M help did not answer within 60 s"
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return "python -m kvmpy -M help failed" + (f": {err[-1]}" if err else "")
    listing = proc.stdout.decode("utf-8", "replace").split()
    if "spike" not in listing:
        return "kvmpy has no spike machine (python -m kvmpy -M help does not list it)"
    return None


@functools.cache
def qemu_result(elf: Path) -> tuple[int, str]:
    assert QEMU is not None
    return run_spike([QEMU], elf)


def test_every_source_has_its_elf() -> None:
    missing = [s.name for s in SOURCES if not s.with_suffix(".elf").exists()]
    assert not missing, f"run tests/guests/build: no ELF for {missing}"
    assert len(ELFS) >= len(SOURCES)


@pytest.mark.skipif(shutil.which("riscv64-unknown-elf-gcc") is None,
                    reason="riscv64-unknown-elf-gcc is not installed (gcc-riscv64-unknown-elf)")
def test_committed_elfs_match_their_sources(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path)}
    subprocess.run([str(GUESTS / "build")], env=env,
                   check=True, capture_output=True, timeout=600)
    stale = [e.name for e in ELFS if (tmp_path / e.name).read_bytes() != e.read_bytes()]
    assert not stale, f"committed ELFs differ from a rebuild (run tests/guests/build): {stale}"


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 is not installed")
@pytest.mark.parametrize("elf", ELFS, ids=lambda p: p.stem)
def test_qemu_oracle(elf: Path) -> None:
    status, out = qemu_result(elf)
    if elf.stem in QEMU_DIVERGES:
        assert status != 0, f"QEMU now passes {elf.name}: move its subtests to the others"
    else:
        assert status == 0, f"{elf.name} fails on QEMU (a wrong test) at subtest {status}:\n{out}"
        assert out.endswith("PASS\n")


@pytest.mark.parametrize("elf", ELFS, ids=lambda p: p.stem)
def test_kvmpy(elf: Path) -> None:
    reason = kvmpy_spike_missing()
    if reason:
        pytest.skip(reason)
    status, out = run_spike(KVMPY, elf)
    assert status == 0, f"{elf.name} fails on kvmpy at subtest {status}:\n{out}"
    if QEMU is not None and elf.stem not in QEMU_DIVERGES:
        assert out == qemu_result(elf)[1], "console output differs from QEMU's"


def test_kvmpy_icount_is_deterministic(tmp_path: Path) -> None:
    """With -icount, time follows retired instructions: two runs of a program that waits
    for timer interrupts take every interrupt at the same place (same -d int log)."""
    reason = kvmpy_spike_missing()
    if reason:
        pytest.skip(reason)
    elf = GUESTS / "interrupts.elf"
    logs = []
    for i in range(2):
        log = tmp_path / f"int{i}.log"
        cmd = [*KVMPY, "-M", "spike", "-bios", "none", "-kernel", str(elf), "-nographic",
               "-icount", "shift=0", "-d", "int", "-D", str(log)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S,
                                  stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(cmd)}: no exit within {TIMEOUT_S:.0f} s")
        err = proc.stderr.decode("utf-8", "replace")
        if proc.returncode != 0 and "-icount" in err and "not" in err:
            pytest.skip(err.strip().splitlines()[-1])
        assert proc.returncode == 0, err
        logs.append(log.read_text())
    assert logs[0].strip(), "empty -d int log"
    assert logs[0] == logs[1], "the interrupt trace differs between two -icount runs"


def test_kvmpy_sleeps_in_wfi() -> None:
    """An idle guest (wfi_idle: two seconds in WFI waiting for the timer) costs kvmpy little
    host CPU: WFI with nothing pending returns to the VMM, which sleeps until the deadline."""
    reason = kvmpy_spike_missing()
    if reason:
        pytest.skip(reason)
    def cpu_and_wall(elf: Path) -> tuple[float, float]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        status, out = run_spike(KVMPY, elf)
        wall = time.monotonic() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert status == 0, out
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall

    # What starting kvmpy and running a short program costs (under a second natively, about
    # 1.5 s under qemu-user, give or take 0.5 s) is the baseline.  A WFI that spins adds the
    # whole two idle seconds to it; one that sleeps adds a few hundredths natively, about 0.1 s
    # under qemu-user.
    base_cpu, _ = cpu_and_wall(GUESTS / "rv64i_alu.elf")
    cpu, wall = cpu_and_wall(GUESTS / "wfi_idle.elf")
    assert wall >= 2.0, f"the two-second wait took {wall:.2f} s"
    idle_cpu = cpu - base_cpu
    assert idle_cpu < 1.0, (
        f"{idle_cpu:.2f} s of host CPU beyond start-up ({base_cpu:.2f} s) for {wall:.2f} s "
        "mostly idle: WFI spins")
