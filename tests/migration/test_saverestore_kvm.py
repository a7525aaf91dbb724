"""Across accelerators on a RISC-V host with KVM: the bundled guest saved under -accel kvm
restores under the interpreter (-accel tcg -bios builtin) and, saved there, under KVM again,
its tmpfs, uptime and console going on.  Skipped (with the reason) where no RISC-V KVM
exists, e.g. on x86 hosts; ci/nested-kvm's L1 is such a host."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmpy import guests
from kvmpy.accel.kvm.riscv import probe
from kvmpy.vm import VM

KVM_REASON = probe()
pytestmark = pytest.mark.skipif(KVM_REASON is not None, reason=f"no RISC-V KVM: {KVM_REASON}")
PROMPT = re.escape(guests.PROMPT)


def run(vm: VM, command: str, pattern: str) -> str:
    vm.console.send(command + "\n")
    found = vm.console.expect(rf"\n({pattern})\r?\n", timeout=60).group(1)
    vm.console.expect(PROMPT, timeout=60)
    return found


def uptime(vm: VM) -> float:
    return float(run(vm, "cat /proc/uptime", r"\d+\.\d+ \d+\.\d+").split()[0])


def test_kvm_to_interpreter_and_back(tmp_path: Path) -> None:
    on_kvm = VM(machine="virt", accel="kvm", memory="256M").launch()
    try:
        on_kvm.console.expect(PROMPT, timeout=300)
        run(on_kvm, "echo from-kvm > /tmp/mark; echo ok", "ok")
        on_kvm.pause()
        on_kvm.save(tmp_path / "kvm.vms")
    finally:
        on_kvm.kill()
    on_tcg = VM.restore(tmp_path / "kvm.vms", accel="tcg", bios="builtin")
    try:
        assert run(on_tcg, "cat /tmp/mark", r"from-kvm") == "from-kvm"
        saved_uptime = uptime(on_tcg)
        run(on_tcg, "sleep 1; echo from-tcg >> /tmp/mark; echo ok", "ok")
        on_tcg.pause()
        on_tcg.save(tmp_path / "tcg.vms")
    finally:
        on_tcg.kill()
    back = VM.restore(tmp_path / "tcg.vms", accel="kvm")  # -bios builtin: KVM's own SBI
    try:
        assert run(back, "cat /tmp/mark | tr '\\n' ' '; echo",
                   r"from-kvm from-tcg ") == "from-kvm from-tcg "
        assert uptime(back) >= saved_uptime + 1.0
        run(back, "sleep 1; echo slept", "slept")
    finally:
        back.kill()
