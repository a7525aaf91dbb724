"""cffi build script of the interpreter core (API mode, out of line).

``pip install .`` builds it through ``cffi_modules`` in setup.py; for development run
``python kvmpy/accel/tcg/_build.py`` from anywhere, which puts ``_engine.*.so`` next to this
file.  The cdef is the part of engine.h between the CDEF markers.
"""

from __future__ import annotations

import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
MODULE = "kvmpy.accel.tcg._engine"
HW = os.path.join(os.path.dirname(os.path.dirname(HERE)), "hw")  # c_mmio.h

# -frounding-math: FP code honours the guest's rounding modes; -fno-gcse: better code for
# the computed-goto dispatch of the interpreter loop (GCC manual).
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-frounding-math", "-fno-strict-aliasing",
          "-fno-gcse", "-pthread"]


def _cdef() -> str:
    with open(os.path.join(HERE, "engine.h"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", text, re.S)
    if match is None:
        raise RuntimeError("engine.h: CDEF markers not found")
    return match.group(1)


def make_builder(absolute_paths: bool) -> FFI:
    """The FFI builder; setuptools wants source paths relative to the project root."""
    sources = [os.path.join(HERE, name) for name in ("engine.c", "c_mmio.c")]
    builder = FFI()
    builder.cdef(_cdef())
    builder.set_source(
        MODULE,
        '#include "engine.h"',
        sources=[s if absolute_paths else os.path.relpath(s, ROOT) for s in sources],
        include_dirs=[HERE, HW],
        extra_compile_args=CFLAGS,
        libraries=["m"],
        extra_link_args=["-pthread"],  # thread=multi: its locks and WFI sleeps
    )
    return builder


ffibuilder = make_builder(absolute_paths=False)


def compile_in_tree(builder: FFI, here: str, name: str) -> int:
    """Build ``builder``'s module in-tree (every kvmpy cffi module's ``main``): intermediates
    under build/``name``, the module next to its build script in ``here``."""
    import glob
    import shutil

    os.chdir(ROOT)
    built = builder.compile(tmpdir=os.path.join(ROOT, "build", name),
                            verbose=bool(os.environ.get("KVMPY_BUILD_VERBOSE")))
    target = os.path.join(here, os.path.basename(built))
    stem = os.path.basename(built).split(".", 1)[0]
    for old in glob.glob(os.path.join(here, stem + ".*.so")):
        if old != target:
            os.remove(old)
    # a new file replaces the old one, so running processes keep their mapping intact
    shutil.copy2(built, target + ".tmp")
    os.replace(target + ".tmp", target)
    return 0


def main() -> int:
    """Build in-tree: intermediates under build/tcg, the module next to this file."""
    return compile_in_tree(make_builder(absolute_paths=True), HERE, "tcg")


if __name__ == "__main__":
    sys.exit(main())
