"""The device side of the two narrow interfaces: a device window on the MMIO bus.

A device sees only offsets inside its own window (``offset``), declares its valid access widths
once (``access_sizes``), and keeps its guest-visible state in one dataclass (``state``), so that
``reset()`` is ``self.state = State()`` and snapshots are ``get_state()`` / ``set_state()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class MmioDevice:
    """Base of memory-mapped devices.

    Subclasses set ``access_sizes`` and implement :meth:`mmio_read` and :meth:`mmio_write`;
    the bus has already checked the width and that ``offset + size`` fits in the window.
    ``name`` is QEMU's memory-region name as shown by ``info mtree``.
    """

    access_sizes: ClassVar[tuple[int, ...]] = (1, 2, 4, 8)
    name: str = "device"
    state: Any

    def mmio_read(self, offset: int, size: int) -> int:
        raise NotImplementedError

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Return to power-on state (system_reset)."""

    def get_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self.state)

    def set_state(self, state: dict[str, Any]) -> None:
        self.state = type(self.state)(**state)
