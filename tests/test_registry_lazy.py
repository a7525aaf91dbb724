"""Start-up imports only what the VM uses: the registry's lazy loading and what a plain
``-accel tcg`` run leaves out (behaviour, not time: the time is benchmarks/startup's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kvmpy
from kvmpy import registry_init

ROOT = Path(kvmpy.__file__).resolve().parent.parent
"""Where the kvmpy under test lives: the source tree, or site-packages when the tests run
against the installed package (the source tree then has no built interpreter core)."""
# The sifive_test pass value stored by the first instructions: the VM exits at once.
# lui t0,0x100 ; c.lui t1,0x5 ; addi t1,t1,0x555 ; sw t1,0(t0) ; c.j .
TINY_KERNEL = bytes.fromhex("b7021000" "1563" "13035355" "23a06200" "01a0")

REGISTERED_BY = """
import importlib, json, sys
from kvmpy import qom, registry_init
if sys.argv[1] == "all":
    registry_init.load_all_types()
else:  # as a lookup does: with the registry's loader on, for what the module looks up
    registry_init.load_types()
    importlib.import_module(sys.argv[1])
print(json.dumps({
    "types": {n: i.parent for n, i in qom._types.items()}, "aliases": dict(qom._aliases)}))
"""


def _python(code: str, cwd: Path | None = None, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _registered_by(module: str) -> tuple[dict[str, str | None], dict[str, str]]:
    """(type -> parent, alias -> type) of the registry once ``module`` is imported in a fresh
    interpreter ("all": every module imported)."""
    out = json.loads(_python(REGISTERED_BY, None, module))
    return out["types"], out["aliases"]


def test_each_name_imports_modules_that_register_all_it_stands_for() -> None:
    """For every type, alias and parent of the complete registry, the modules DECLARED_TYPES
    names for it, each imported alone in a fresh interpreter, register everything a lookup
    of that name must see (the type, its descendants, the alias and its target); and no
    module declares a name it does not register (so the table stays exact)."""
    all_types, all_aliases = _registered_by("all")
    alone = {m: _registered_by(m) for m in registry_init.DECLARED_TYPES
             if registry_init._exists(m)}

    def ancestors(name: str) -> set[str]:
        found = set()
        parent = all_types.get(name)
        while parent is not None:
            found.add(parent)
            parent = all_types.get(parent)
        return found

    problems = []
    for name in sorted({*all_types, *all_aliases}):
        wanted = {t for t in all_types if t == name or name in ancestors(t)}
        if name in all_aliases:
            wanted.add(all_aliases[name])
        modules = [m for m, names in registry_init.DECLARED_TYPES.items() if name in names]
        if not modules:
            problems.append(f"{name!r} is declared by no module")
            continue
        seen = set().union(*({*alone[m][0], *alone[m][1]} for m in modules if m in alone))
        if not wanted <= seen:
            problems.append(f"{name!r}: {modules} do not register {sorted(wanted - seen)}")
    for module, (types, aliases) in alone.items():
        really = {*types, *aliases, *aliases.values()}
        really |= set().union(*(ancestors(t) for t in types))
        stale = set(registry_init.DECLARED_TYPES[module]) - really
        if stale:
            problems.append(f"{module} declares {sorted(stale)}, which it does not register")
    assert problems == []


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


def test_a_tcg_run_imports_no_kvm_abi_monitor_or_debugger(tmp_path: Path) -> None:
    """``-accel tcg`` with no monitor or gdb: the KVM cdef is never parsed (no C parser
    imported) and no monitor, gdb stub, migration, 9p file server or ELF library is
    imported."""
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
                "kvmpy.monitor.commands", "kvmpy.gdbstub", "kvmpy.migration", "kvmpy.fs"}
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
