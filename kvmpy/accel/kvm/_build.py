"""cffi build script of the KVM vCPU run loop in C (vcpu_loop.c; API mode, out of line).

Optional: the ``kvm`` accelerator itself needs no compiler (ABI mode, :mod:`.kvm`); with this
module built, a vCPU completes MMIO exits to device windows served in C without returning to
Python.  ``pip install .`` builds it through ``cffi_modules`` in setup.py; for development run
``python kvmpy/accel/kvm/_build.py``, which puts ``_vcpu_loop.*.so`` next to this file.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
HW = os.path.join(os.path.dirname(os.path.dirname(HERE)), "hw")  # c_mmio.h
MODULE = "kvmpy.accel.kvm._vcpu_loop"
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra"]


def _cdef() -> str:
    with open(os.path.join(HERE, "vcpu_loop.h"), encoding="utf-8") as f:
        match = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", f.read(), re.S)
    if match is None:
        raise RuntimeError("vcpu_loop.h: CDEF markers not found")
    return match.group(1)


def make_builder(absolute_paths: bool) -> FFI:
    """The FFI builder; setuptools wants source paths relative to the project root."""
    source = os.path.join(HERE, "vcpu_loop.c")
    builder = FFI()
    builder.cdef(_cdef())
    builder.set_source(
        MODULE,
        '#include "vcpu_loop.h"',
        sources=[source if absolute_paths else os.path.relpath(source, ROOT)],
        include_dirs=[HERE, HW],
        extra_compile_args=CFLAGS,
    )
    return builder


ffibuilder = make_builder(absolute_paths=False)


def main() -> int:
    """Build in-tree: intermediates under build/kvm, the module next to this file."""
    tcg_build = os.path.join(os.path.dirname(HERE), "tcg", "_build.py")
    spec = importlib.util.spec_from_file_location("_kvmpy_tcg_build", tcg_build)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.compile_in_tree(make_builder(absolute_paths=True), HERE, "kvm"))


if __name__ == "__main__":
    sys.exit(main())
