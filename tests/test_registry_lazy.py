"""Start-up imports only what the VM uses: the registry's lazy loading and what a plain
``-accel tcg`` run leaves out (behaviour, not time: the time is benchmarks/startup's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kvmpy import registry_init

ROOT = Path(__file__).resolve().parent.parent
# The sifive_test pass value stored by the first instructions: the VM exits at once.
# lui t0,0x100 ; c.lui t1,0x5 ; addi t1,t1,0x555 ; sw t1,0(t0) ; c.j .
TINY_KERNEL = bytes.fromhex("b7021000" "1563" "13035355" "23a06200" "01a0")

COMPUTE_DECLARATIONS = """
import importlib, json
from kvmpy import qom, registry_init
out = {}
for module in registry_init.TYPE_MODULES:
    if not registry_init._exists(module):
        continue
    types, aliases = set(qom._types), dict(qom._aliases)
    importlib.import_module(module)
    new = set(qom._types) - types
    names = set(new)
    for alias, target in qom._aliases.items():
        if alias not in aliases:
            names |= {alias, target}
    for name in new:
        info = qom._types[name]
        while info.parent:
            names.add(info.parent)
            info = qom._types[info.parent]
    out[module] = sorted(names)
print(json.dumps(out))
"""


def _python(code: str, cwd: Path | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_declarations_are_what_the_modules_register() -> None:
    """Each module of TYPE_MODULES, imported in turn in a fresh interpreter, registers exactly
    the names DECLARED_TYPES lists for it (so a lookup imports the right modules)."""
    computed: dict[str, list[str]] = json.loads(_python(COMPUTE_DECLARATIONS))
    declared = {module: sorted(set(names))
                for module, names in registry_init.DECLARED_TYPES.items()
                if module in computed}
    wrong = {module: names for module, names in computed.items()
             if declared.get(module) != names}
    assert wrong == {}, ("registry_init.DECLARED_TYPES is out of date; these entries are right: "
                         + "; ".join(f"{m!r}: {tuple(n)}" for m, n in wrong.items()))


def test_help_lists_are_those_of_the_fully_imported_registry() -> None:
    """-M, -device, -accel and -chardev help and a property list are the same whether each
    lookup imports its modules or every module is imported first."""
    code = """
import contextlib, io, sys
from kvmpy.cli import main
from kvmpy import registry_init
if sys.argv[1] == "all":
    registry_init.load_all_types()
for argv in (["-M", "help"], ["-device", "help"], ["-accel", "help"], ["-chardev", "help"],
             ["-device", "virtio-blk-pci,help"], ["-M", "virt,help"], ["-netdev", "help"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(argv)
    print(out.getvalue())
"""
    lazy = _python(code.replace("sys.argv[1]", "'lazy'"))
    full = _python(code.replace("sys.argv[1]", "'all'"))
    assert "virt" in lazy and "virtio-blk-pci" in lazy
    assert lazy == full


def test_a_tcg_run_imports_no_kvm_abi_monitor_network_or_debugger(tmp_path: Path) -> None:
    """``-accel tcg`` with no monitor, network or gdb: the KVM cdef is never parsed (no C
    parser imported) and no monitor, network back-end, gdb stub or ELF library is imported."""
    (tmp_path / "tiny.bin").write_bytes(TINY_KERNEL)
    code = """
import json, sys
from kvmpy.cli import main
status = main(["-M", "virt", "-bios", "none", "-kernel", "tiny.bin", "-display", "none",
               "-serial", "none", "-monitor", "none", "-accel", "tcg"])
from kvmpy.accel.kvm import abi
print(json.dumps({"status": status, "modules": sorted(sys.modules),
                  "kvm_cdef_parsed": abi.ffi._ffi is not None}))
"""
    result = json.loads(_python(code, cwd=tmp_path).splitlines()[-1])
    assert result["status"] == 0  # the guest ran and passed through sifive_test
    assert result["kvm_cdef_parsed"] is False
    modules = set(result["modules"])
    unwanted = {"pycparser", "cffi.cparser", "elftools", "kvmpy.monitor.hmp", "kvmpy.monitor.qmp",
                "kvmpy.monitor.commands", "kvmpy.net", "kvmpy.gdbstub", "kvmpy.migration"}
    assert modules & unwanted == set()
    assert "kvmpy.accel.tcg" in modules


def test_an_unknown_device_is_refused_as_with_every_module_imported() -> None:
    code = """
from kvmpy.cli import main
print(main(["-device", "no-such-device"]))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.stdout.strip() == "1"
    assert "no-such-device" in proc.stderr and "Traceback" not in proc.stderr
