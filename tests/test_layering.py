"""Boards, devices and firmware stay accelerator-blind: they see the accelerator interface
(:mod:`kvmpy.accel.base`, :mod:`kvmpy.accel.exits`), never one accelerator (STYLE.md, 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KVMPY = Path(__file__).resolve().parents[1] / "kvmpy"
INTERFACE = ("kvmpy.accel", "kvmpy.accel.base", "kvmpy.accel.exits")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if node.module == "kvmpy.accel")
    return names


@pytest.mark.parametrize("package", ["hw", "firmware"])
def test_no_board_or_device_imports_an_accelerator(package: str) -> None:
    offenders = {}
    for path in sorted((KVMPY / package).rglob("*.py")):
        accel = sorted(name for name in imported_modules(path)
                       if name.startswith("kvmpy.accel") and name not in INTERFACE)
        if accel:
            offenders[str(path.relative_to(KVMPY))] = accel
    assert offenders == {}
