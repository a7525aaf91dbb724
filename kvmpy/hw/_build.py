"""cffi build script of the device models' C halves (API mode, out of line): today the
16550's hot registers (kvmpy/hw/char/uart_fast.c), which accelerators call through
kvmpy/hw/c_mmio.h.

``pip install .`` builds it through ``cffi_modules`` in setup.py; for development run
``python kvmpy/hw/_build.py`` from anywhere, which puts ``_cdev.*.so`` next to this file.
The module is optional: without it the devices run in Python alone.  The cdef is the part of
each header between its CDEF markers.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODULE = "kvmpy.hw._cdev"
SOURCES = ["char/uart_fast.c"]
HEADERS = ["char/uart_fast.h"]
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-pthread"]


def _cdef() -> str:
    parts = []
    for header in HEADERS:
        with open(os.path.join(HERE, header), encoding="utf-8") as f:
            match = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", f.read(), re.S)
        if match is None:
            raise RuntimeError(f"{header}: CDEF markers not found")
        parts.append(match.group(1))
    return "\n".join(parts)


def make_builder(absolute_paths: bool) -> FFI:
    """The FFI builder; setuptools wants source paths relative to the project root."""
    sources = [os.path.join(HERE, s) for s in SOURCES]
    builder = FFI()
    builder.cdef(_cdef())
    builder.set_source(
        MODULE,
        "\n".join(f'#include "{h}"' for h in HEADERS),
        sources=[s if absolute_paths else os.path.relpath(s, ROOT) for s in sources],
        include_dirs=[HERE],
        extra_compile_args=CFLAGS,
        extra_link_args=["-pthread"],
    )
    return builder


ffibuilder = make_builder(absolute_paths=False)


def main() -> int:
    """Build in-tree: intermediates under build/hw, the module next to this file."""
    tcg_build = os.path.join(os.path.dirname(HERE), "accel", "tcg", "_build.py")
    spec = importlib.util.spec_from_file_location("_kvmpy_tcg_build", tcg_build)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.compile_in_tree(make_builder(absolute_paths=True), HERE, "hw"))


if __name__ == "__main__":
    sys.exit(main())
