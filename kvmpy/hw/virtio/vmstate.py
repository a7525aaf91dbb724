"""Reading a device state back from a state file, which is untrusted input.

Device ``set_state`` methods read the dict they are given through :class:`StateReader`: every
value is checked for its type and range, and the first one that does not fit raises
``kvmpy.migration.VmStateError`` with one line saying where (``virtio-mmio: queues[2].num:
1025 is out of range 0..1024``).  Devices validate all of their state (and their children's)
before they assign any of it: they build an *applier* with ``prepare_state(state)`` and call
it only once everything was accepted, so a rejected state leaves the device as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

U8, U16, U32, U64 = 0xFF, 0xFFFF, 0xFFFF_FFFF, (1 << 64) - 1

Applier = Callable[[], None]
"""Assigns an already validated state to a device."""


def state_error(message: str) -> Exception:
    """The state core's one-line error for a state that cannot be accepted."""
    from kvmpy.migration import VmStateError

    return VmStateError(message)


def apply_all(appliers: list[Applier]) -> Applier:
    """One applier running ``appliers`` in order."""
    def run() -> None:
        for apply in appliers:
            apply()
    return run


class StateReader:
    """Checked access to one dict of a state; ``where`` names it in error messages."""

    def __init__(self, state: object, where: str) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise state_error(f"{where}: expected a dict with string keys, got "
                              f"{type(state).__name__}")
        self.state: dict[str, Any] = state
        self.where = where

    def fail(self, key: str, message: str) -> Exception:
        return state_error(f"{self.where}: {key}: {message}")

    def get(self, key: str) -> Any:
        if key not in self.state:
            raise state_error(f"{self.where}: missing '{key}'")
        return self.state[key]

    def has(self, key: str) -> bool:
        return key in self.state

    def integer(self, key: str, lo: int = 0, hi: int = U64) -> int:
        value = self.get(key)
        return check_int(value, lo, hi, f"{self.where}: {key}")

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected a bool, got {type(value).__name__}")
        return value

    def text(self, key: str, max_len: int = 4096) -> str:
        value = self.get(key)
        if not isinstance(value, str) or len(value) > max_len:
            raise self.fail(key, f"expected a string of at most {max_len} characters")
        return value

    def blob(self, key: str, size: int | None = None, max_size: int = 1 << 20) -> bytes:
        value = self.get(key)
        if not isinstance(value, bytes):
            raise self.fail(key, f"expected bytes, got {type(value).__name__}")
        if size is not None and len(value) != size:
            raise self.fail(key, f"{len(value)} bytes, expected {size}")
        if len(value) > max_size:
            raise self.fail(key, f"{len(value)} bytes, at most {max_size} expected")
        return value

    def items(self, key: str, max_len: int, length: int | None = None) -> list[Any]:
        value = self.get(key)
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {type(value).__name__}")
        if length is not None and len(value) != length:
            raise self.fail(key, f"{len(value)} entries, expected {length}")
        if len(value) > max_len:
            raise self.fail(key, f"{len(value)} entries, at most {max_len} expected")
        return value

    def ints(self, key: str, max_len: int, lo: int = 0, hi: int = U64,
             length: int | None = None) -> list[int]:
        return [check_int(v, lo, hi, f"{self.where}: {key}[{i}]")
                for i, v in enumerate(self.items(key, max_len, length))]

    def bools(self, key: str, max_len: int, length: int | None = None) -> list[bool]:
        values = self.items(key, max_len, length)
        for i, value in enumerate(values):
            if not isinstance(value, bool):
                raise self.fail(f"{key}[{i}]", "expected a bool")
        return list(values)

    def reader(self, key: str) -> StateReader:
        return StateReader(self.get(key), f"{self.where}: {key}")

    def readers(self, key: str, max_len: int, length: int | None = None) -> list[StateReader]:
        return [StateReader(v, f"{self.where}: {key}[{i}]")
                for i, v in enumerate(self.items(key, max_len, length))]

    def optional(self, key: str) -> Any:
        """The value of ``key``, or None when absent."""
        return self.state.get(key)


def check_int(value: object, lo: int, hi: int, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise state_error(f"{where}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise state_error(f"{where}: {value} is out of range {lo}..{hi}")
    return value
