"""Helpers shared by tests that start kvmpy as a child process."""

from __future__ import annotations

import os
from pathlib import Path

import kvmpy


def kvmpy_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a ``python -m kvmpy`` child that imports the same kvmpy as the tests.

    Under ci/test that is the installed package (with its built interpreter core), not the
    source tree the child's working directory may contain.
    """
    env = dict(os.environ)
    package_parent = str(Path(kvmpy.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH"))
                                        if p)
    if extra:
        env.update(extra)
    return env
