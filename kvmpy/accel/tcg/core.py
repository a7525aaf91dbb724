"""The compiled interpreter core (``_engine``, built by cffi) and the names of its registers.

Importing this module never fails: when the core is missing, :func:`unavailable_reason` says
why in one line and ``-accel tcg`` reports it.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import importlib.metadata

ENGINE = "kvmpy.accel.tcg._engine"

try:
    _engine: Any = importlib.import_module(ENGINE)
    _IMPORT_ERROR: ImportError | None = None
except ImportError as exc:  # not built, or built for another Python
    _engine = None
    _IMPORT_ERROR = exc

ffi: Any = _engine.ffi if _engine is not None else None
lib: Any = _engine.lib if _engine is not None else None

REG_PC = 64
REG_PRIV = 65
REG_MTIMECMP = 66
REG_SBI_TIMECMP = 67
REG_STOPPED = 68
REG_INSTRET = 69
REG_HALTED = 70
REG_CSR = 4096

EXIT_NONE = 0
EXIT_MMIO = 1
EXIT_SBI = 2
EXIT_HALT = 3
EXIT_STOPPED = 4
EXIT_TRACE = 5
EXIT_ERROR = 6
EXIT_DEBUG = 7

DEBUG_BREAKPOINT = 1
DEBUG_STEP = 2
DEBUG_WATCHPOINT = 3

WATCH_WRITE = 1
WATCH_READ = 2
WATCH_ACCESS = 3

TRACE_INT = 0
TRACE_IN_ASM = 1
TRACE_EXEC = 2

XREG_ABI = ("zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1",
            "a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7",
            "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11",
            "t3", "t4", "t5", "t6")
FREG_ABI = ("ft0", "ft1", "ft2", "ft3", "ft4", "ft5", "ft6", "ft7", "fs0", "fs1",
            "fa0", "fa1", "fa2", "fa3", "fa4", "fa5", "fa6", "fa7",
            "fs2", "fs3", "fs4", "fs5", "fs6", "fs7", "fs8", "fs9", "fs10", "fs11",
            "ft8", "ft9", "ft10", "ft11")

_SPECIAL = {"pc": REG_PC, "priv": REG_PRIV, "mtimecmp": REG_MTIMECMP,
            "sbi_timecmp": REG_SBI_TIMECMP, "stopped": REG_STOPPED}


def unavailable_reason() -> str | None:
    """None when the core is importable, else one line saying why not and what to do."""
    if lib is None and _IMPORT_ERROR is not None:
        package = Path(__file__).resolve().parents[2]
        try:
            installed = installed_copy(package)
        except (OSError, ValueError):  # unreadable metadata: say what is known
            installed = None
        return not_built_reason(package, _IMPORT_ERROR, installed)
    return None


# -- why the core is missing -------------------------------------------------------------------

def source_tree(package: Path) -> Path | None:
    """The checkout ``package`` (a ``kvmpy`` directory) lies in, or None for an installed copy."""
    try:
        project = (package.parent / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeError):
        return None
    return package.parent if 'name = "kvmpy"' in project else None


def has_core(package: Path) -> bool:
    return any((package / "accel" / "tcg").glob("_engine.*"))


def _package_of(dist: importlib.metadata.Distribution) -> Path | None:
    """Where ``dist`` put the ``kvmpy`` package: an editable install's source tree (PEP 610
    direct_url.json), else the directory of its ``kvmpy/__init__.py``."""
    import json  # here, not at import time: only a missing core needs them
    import urllib.parse

    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        direct = {}
    dir_info = direct.get("dir_info") if isinstance(direct, dict) else None
    if isinstance(dir_info, dict) and dir_info.get("editable"):
        url = urllib.parse.urlparse(str(direct.get("url", "")))
        return Path(urllib.parse.unquote(url.path)) / "kvmpy" if url.scheme == "file" else None
    for file in dist.files or ():
        if file.as_posix() == "kvmpy/__init__.py":
            return Path(str(dist.locate_file(file))).parent
    return None


def installed_copy(imported: Path, search_path: list[str] | None = None) -> Path | None:
    """The kvmpy package pip installed, with its core built, when it is not ``imported``.

    Found from the distributions' metadata on ``search_path`` (default ``sys.path``), without
    importing it: ``imported`` shadows it."""
    import importlib.metadata  # ~10 ms to import: only when the core is missing

    for dist in importlib.metadata.distributions(name="kvmpy", path=search_path or sys.path):
        package = _package_of(dist)
        if package is None:
            continue
        package = package.resolve()  # an egg-info in the current directory locates relatively
        if package != imported.resolve() and has_core(package):
            return package
    return None


def not_built_reason(package: Path, error: ImportError, installed: Path | None,
                     cwd: Path | None = None) -> str:
    """One line for :func:`unavailable_reason`: where kvmpy was imported from, why its core
    does not load, and the fix (``pip install -e .``, or run from elsewhere)."""
    missing = isinstance(error, ModuleNotFoundError) and error.name == ENGINE
    why = (str(error) or repr(error)).splitlines()[0]
    problem = ("the interpreter core is not built" if missing else
               f"the interpreter core does not load ({why})")
    root = source_tree(package)
    if root is None:
        return (f"{problem} in {package}; reinstall kvmpy "
                "('pip install --force-reinstall .' in its source tree)")
    here = cwd or Path(os.getcwd())
    where = (f"the source tree in the current directory, {root}" if root == here.resolve()
             else f"the source tree {root}")
    if installed is None:
        return (f"{problem}: kvmpy was imported from {where}; build it with 'pip install -e .' "
                f"in {root} (or 'python kvmpy/accel/tcg/_build.py' there)")
    return (f"{problem}: kvmpy was imported from {where}, not from the installed copy at "
            f"{installed}; run from another directory, or build the tree with "
            f"'pip install -e .' in {root}")


def _isa_extensions() -> tuple[str, ...]:
    if lib is None:
        return ()
    names: list[str] = []
    i = 0
    while True:
        p = lib.tcg_isa_extension(i)
        if p == ffi.NULL:
            return tuple(names)
        names.append(ffi.string(p).decode())
        i += 1


ISA_EXTENSIONS: tuple[str, ...] = _isa_extensions()
"""What the core implements, from its one table (also the source of misa)."""


def isa_string() -> str:
    """``riscv,isa`` as the device tree spells it: ``rv64imafdc_zicntr_..._sstc``."""
    letters = "".join(e for e in ISA_EXTENSIONS if len(e) == 1)
    multi = [e for e in ISA_EXTENSIONS if len(e) > 1]
    return "_".join(["rv64" + letters, *multi])


def reg_id(name: str) -> int:
    """The core's id of register ``name``; raises KeyError for an unknown name."""
    special = _SPECIAL.get(name)
    if special is not None:
        return special
    if name in XREG_ABI:
        return XREG_ABI.index(name)
    if name == "fp":
        return 8
    if name in FREG_ABI:
        return 32 + FREG_ABI.index(name)
    if len(name) >= 2 and name[0] in "xf" and name[1:].isdigit():
        n = int(name[1:])
        if n < 32:
            return n if name[0] == "x" else 32 + n
    if lib is not None:
        csr = int(lib.tcg_csr_number(name.encode()))
        if csr >= 0:
            return REG_CSR + csr
    raise KeyError(name)
