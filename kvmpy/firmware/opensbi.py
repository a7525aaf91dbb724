"""Finding the system's OpenSBI ``fw_dynamic`` (``-bios default``) and ``-bios FILE`` paths.

kvmpy does not ship OpenSBI: ``-bios default`` uses the Debian ``opensbi`` package's generic
platform build, or the copy ``qemu-system-misc`` installs, whichever exists first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

FW_DYNAMIC_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin",
    "/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin",
)
"""Where distributions install OpenSBI's generic fw_dynamic, in order of preference."""

FIRMWARE_DIRS: tuple[str, ...] = (
    "/usr/share/qemu",
    "/usr/lib/riscv64-linux-gnu/opensbi/generic",
)
"""Where a bare ``-bios NAME`` is also looked up (QEMU searches its data directories)."""

ENV_OVERRIDE = "KVMPY_OPENSBI"
"""Environment variable naming the fw_dynamic to use instead of the system's (empty: none)."""


def find_fw_dynamic(candidates: Sequence[str] = FW_DYNAMIC_CANDIDATES) -> str | None:
    """The first readable OpenSBI fw_dynamic, or None when OpenSBI is not installed."""
    override = os.environ.get(ENV_OVERRIDE)
    if override is not None:
        return override if override and os.access(override, os.R_OK) else None
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.R_OK):
            return path
    return None


def find_firmware_file(name: str, dirs: Sequence[str] = FIRMWARE_DIRS) -> str | None:
    """``-bios NAME``: the path itself when it exists, else NAME in the firmware directories
    (QEMU's ``qemu_find_file(QEMU_FILE_TYPE_BIOS, ...)``)."""
    if os.path.exists(name):
        return name
    if os.sep in name:
        return None
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None
