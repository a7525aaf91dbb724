"""The pytest plugin: ``vm_factory`` VMs always torn down, and a failing test's report carries
each VM's console log."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import psutil

from .helpers import HELLO, kvmpy_env, write_payload

TEST_FILE = '''
import pytest

KERNEL = {kernel!r}


@pytest.mark.parametrize("process", [False, True])
def test_fails_after_output(vm_factory, process):
    vm = vm_factory(["-M", "virt", "-bios", "none", "-kernel", KERNEL], process=process)
    vm.console.expect("ok!", timeout=60)
    assert vm.status == "running"
    raise AssertionError("deliberate failure")


def test_passes(vm_factory):
    vm = vm_factory(["-M", "virt", "-bios", "none", "-kernel", KERNEL, "-S"])
    assert vm.status == "prelaunch"
'''


def test_failing_test_report_has_the_console_and_vms_are_torn_down(tmp_path: Path) -> None:
    kernel = write_payload(tmp_path, "hello-plugin-marker", HELLO)
    (tmp_path / "test_inner.py").write_text(TEST_FILE.format(kernel=kernel))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")]
    if not any(ep.name == "kvmpy"
               for ep in importlib.metadata.entry_points(group="pytest11")):
        command[3:3] = ["-p", "kvmpy.pytest_plugin"]  # a source tree that is not installed
    result = subprocess.run(command, cwd=tmp_path, env=kvmpy_env(), capture_output=True,
                            text=True, timeout=300)
    out = result.stdout
    assert "2 failed, 1 passed" in out, out + result.stderr
    assert out.count("kvmpy console 0") == 2
    assert "ok!" in out.split("kvmpy console 0", 1)[1]
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if any("hello-plugin-marker" in arg for arg in p.info["cmdline"] or [])]
    assert not leftovers
