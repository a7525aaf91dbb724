"""A VM lifecycle test written with kvmpy's pytest fixtures (``pip install kvmpy`` registers them).

Run it with ``python -m pytest examples/test_lifecycle.py``.  ``vm_factory(**options)`` takes
the options of ``kvmpy.VM`` (``process=True`` for ``kvmpy.ProcessVM``); every VM it made is shut
down after the test, and a failing test's report carries each VM's console log.
"""

import re

import pytest

from kvmpy import guests

PROMPT = re.escape(guests.PROMPT)


@pytest.fixture
def linux():
    return {"machine": "virt", "bios": "builtin", "append": "console=ttyS0",
            "kernel": str(guests.kernel_path()), "initrd": str(guests.initrd_path())}


@pytest.mark.parametrize("process", [False, True], ids=["in-process", "child-process"])
def test_boot_pause_reset_poweroff(vm_factory, linux, process):
    vm = vm_factory(process=process, **linux)
    vm.console.expect(PROMPT, timeout=180)

    vm.pause()                                   # QMP stop
    registers = vm.registers()
    registers.pop("mip")                         # interrupt pins may still change
    again = vm.registers()
    again.pop("mip")
    assert again == registers                    # nothing else moves while paused
    vm.resume()                                  # QMP cont

    vm.console.send("echo $((6 * 7))\n")
    vm.console.expect(r"\b42\b")
    vm.console.expect(PROMPT)                    # expect() consumes output as it matches

    vm.reset()                                   # QMP system_reset
    assert vm.event_wait("RESET")["data"]["reason"] == "host-qmp-system-reset"
    vm.console.expect(re.escape(guests.BANNER), timeout=180)   # boots again
    vm.console.expect(PROMPT, timeout=60)

    vm.console.send("poweroff\n")
    event = vm.event_wait("SHUTDOWN", timeout=60)
    assert event["data"] == {"guest": True, "reason": "guest-shutdown"}
    assert vm.wait() == 0


def test_the_vm_fixture_boots_the_bundled_guest(vm):
    vm.console.expect(PROMPT, timeout=180)       # `kvmpy -M virt` with no -kernel
    vm.console.send("cat /proc/cmdline; uname -m\n")
    vm.console.expect("riscv64")
