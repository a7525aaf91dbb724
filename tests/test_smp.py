"""``-smp`` as QEMU 7.2 reads it: a parameter given as 0 warns and counts as omitted."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from kvmpy.cli import format_error, parse_command_line
from kvmpy.cli.choices import SMP_ZERO_WARNING
from kvmpy.errors import ConfigError

from .support import kvmpy_env

QEMU = shutil.which("qemu-system-riscv64")

# -smp argument -> CPUs that qemu-system-riscv64 7.2 -M virt starts (its ``info cpus``)
ZERO_CASES = [
    ("0", 1), ("cpus=0", 1), ("sockets=0", 1), ("cores=0", 1), ("threads=0", 1),
    ("maxcpus=0", 1), ("dies=0", 1), ("clusters=0", 1), ("2,sockets=0", 2), ("2,cores=0", 2),
    ("2,threads=0", 2), ("2,maxcpus=0", 2), ("0,maxcpus=4", 4), ("cpus=0,sockets=2", 2),
    ("sockets=0,cores=0", 1), ("4,sockets=2,cores=0", 4),
]


@pytest.mark.parametrize(("smp", "cpus"), ZERO_CASES)
def test_a_zero_parameter_warns_and_counts_as_omitted(
        capsys: pytest.CaptureFixture[str], smp: str, cpus: int) -> None:
    config = parse_command_line(["-smp", smp]).config
    assert capsys.readouterr().err == f"kvmpy: warning: {SMP_ZERO_WARNING}\n"
    assert config.smp.cpus == cpus


@pytest.mark.parametrize("smp", ["1", "2,sockets=1,cores=2", "dies=1", "clusters=1,cpus=2"])
def test_no_warning_without_a_zero(capsys: pytest.CaptureFixture[str], smp: str) -> None:
    parse_command_line(["-smp", smp])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("smp", "level"), [("dies=2", "dies"), ("2,clusters=2", "clusters"),
                                            ("0,dies=2", "dies")])
def test_dies_and_clusters_are_refused(capsys: pytest.CaptureFixture[str], smp: str,
                                       level: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_command_line(["-M", "virt", "-smp", smp])
    assert format_error(info.value) == \
        f"kvmpy: -smp {smp}: {level} not supported by this machine's CPU topology"
    warned = capsys.readouterr().err == f"kvmpy: warning: {SMP_ZERO_WARNING}\n"
    assert warned == smp.startswith("0,")  # QEMU warns first, then refuses


def _qemu_cpus(smp: str) -> tuple[int, list[str]]:
    assert QEMU is not None
    proc = subprocess.run([QEMU, "-M", "virt", "-S", "-display", "none", "-serial", "none",
                           "-monitor", "stdio", "-smp", smp], input="info cpus\nquit\n",
                          capture_output=True, text=True, timeout=30, check=False)
    return len(re.findall(r"CPU #\d+:", proc.stdout)), proc.stderr.splitlines()


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 (the oracle) is not installed")
@pytest.mark.parametrize(("smp", "cpus"), ZERO_CASES[::3])
def test_the_cases_are_qemus(smp: str, cpus: int) -> None:
    qemu_cpus, qemu_err = _qemu_cpus(smp)
    assert (qemu_cpus, qemu_err) == \
        (cpus, [f"qemu-system-riscv64: warning: {SMP_ZERO_WARNING}"])


def test_smp_0_starts_one_hart_after_the_warning() -> None:
    """The whole command, as the user types it: the warning, then a VM with one CPU."""
    proc = subprocess.run(
        [sys.executable, "-m", "kvmpy", "-M", "virt", "-accel", "tcg", "-S", "-display", "none",
         "-serial", "none", "-monitor", "stdio", "-smp", "0"],
        input="info cpus\nquit\n", capture_output=True, text=True, timeout=60,
        env=kvmpy_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == f"kvmpy: warning: {SMP_ZERO_WARNING}"
    assert len(re.findall(r"CPU #\d+:", proc.stdout)) == 1
