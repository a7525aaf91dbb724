"""Helpers for the block tests: QEMU's own tools (qemu-img, qemu-io) are the reference."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

QEMU_IMG = shutil.which("qemu-img")
QEMU_IO = shutil.which("qemu-io")


def need_qemu_img() -> str:
    if QEMU_IMG is None or QEMU_IO is None:
        pytest.skip("qemu-img/qemu-io (Debian package qemu-utils) are not installed")
    return QEMU_IMG


def qemu_img(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_qemu_img(), *map(str, args)], capture_output=True, text=True,
                          check=check, timeout=300)


def qemu_io(image: Path, *commands: str, fmt: str = "qcow2") -> str:
    need_qemu_img()
    assert QEMU_IO is not None
    argv = [QEMU_IO, "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    done = subprocess.run([*argv, str(image)], capture_output=True, text=True, check=True,
                          timeout=300)
    assert "error" not in done.stdout.lower() + done.stderr.lower(), done.stdout + done.stderr
    return done.stdout


def create(path: Path, size: int, *options: str, backing: Path | None = None,
           backing_fmt: str = "qcow2") -> Path:
    args: list[str | Path] = ["create", "-q", "-f", "qcow2"]
    if options:
        args += ["-o", ",".join(options)]
    if backing is not None:
        args += ["-b", backing.name if backing.parent == path.parent else backing,
                 "-F", backing_fmt]
    qemu_img(*args, path, str(size))
    return path


def check(path: Path) -> dict[str, Any]:
    """``qemu-img check`` as JSON; fails the test on corruption (leaks are allowed)."""
    done = qemu_img("check", "--output=json", path, check=False)
    assert done.returncode in (0, 3), done.stdout + done.stderr  # 3: leaks only
    result: dict[str, Any] = json.loads(done.stdout)
    assert result.get("corruptions", 0) == 0, result
    return result


def compare(qcow2: Path, raw: Path) -> None:
    done = qemu_img("compare", "-f", "qcow2", "-F", "raw", qcow2, raw, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
