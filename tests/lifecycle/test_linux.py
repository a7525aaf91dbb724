"""The lifecycle of the bundled Linux guest, in-process (``kvmpy.VM``) and as a child process
(``kvmpy.ProcessVM``): boot to the prompt, pause, registers unchanged while paused, resume,
the console answers, reset, boots again, ``poweroff`` -> SHUTDOWN ``guest-shutdown``, status 0.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from kvmpy import guests
from kvmpy.process import ProcessVM
from kvmpy.vm import VM

BOOT_TIMEOUT = 180.0
PROMPT = re.escape(guests.PROMPT)


def options() -> dict[str, Any]:
    return {"machine": "virt", "accel": "tcg", "bios": "builtin",
            "kernel": str(guests.kernel_path()), "initrd": str(guests.initrd_path()),
            "append": "console=ttyS0"}


def without_mip(registers: dict[str, int]) -> dict[str, int]:
    return {name: value for name, value in registers.items() if name != "mip"}


def lifecycle(vm: Any) -> None:
    vm.console.expect(PROMPT, timeout=BOOT_TIMEOUT)
    vm.pause()
    assert vm.status == "paused"
    first = vm.registers()
    time.sleep(0.3)
    # mip is left out: kvmpy's timer keeps host time while paused, so STIP can become
    # pending (QEMU stops its virtual clock); every other register must stay as it was.
    assert without_mip(vm.registers()) == without_mip(first)
    assert vm.get_reg("pc") == first["pc"]
    vm.resume()
    assert vm.status == "running"
    vm.console.send("echo answer-$((6*7))\n")
    vm.console.expect("answer-42", timeout=30)
    vm.console.expect(PROMPT, timeout=30)
    vm.get_events()
    vm.reset()
    reset = vm.event_wait("RESET", timeout=10)
    assert reset["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
    vm.console.expect(r"Linux version", timeout=BOOT_TIMEOUT)
    vm.console.expect(PROMPT, timeout=BOOT_TIMEOUT)
    vm.console.send("poweroff\n")
    shutdown = vm.event_wait("SHUTDOWN", timeout=60)
    assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert vm.wait(60) == 0


def test_vm_in_process() -> None:
    with VM(**options()) as vm:
        lifecycle(vm)
        assert "answer-42" in vm.console.log


def test_process_vm() -> None:
    with ProcessVM(**options()) as vm:
        lifecycle(vm)
        assert vm.exitcode() == 0
    assert not vm.is_running()


def test_registers_while_running_are_refused() -> None:
    with VM(**options()) as vm:
        from kvmpy.errors import StateError

        with pytest.raises(StateError) as info:
            vm.get_reg("pc")
        assert info.value.state == "running"
        vm.kill()
