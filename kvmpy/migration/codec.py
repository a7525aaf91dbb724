"""kvmpy's own encoding of state values: no pickle, safe on untrusted input.

A value is one of None, bool, int (any size), str, bytes, list, dict with str keys, nested.
Each is a one-byte tag and its body (little-endian)::

    N            None
    T / F        True / False
    i  u8 n, n bytes      int, two's complement (n <= 255)
    b  u32 n, n bytes     bytes
    s  u32 n, n bytes     str (UTF-8)
    l  u32 n, n values    list
    d  u32 n, n (key, value): key is u32 m + m bytes UTF-8

Decoding checks every length against what is left, limits nesting to :data:`MAX_DEPTH`, and
raises :class:`VmStateError` for anything malformed; it never builds more than the input holds.
"""

from __future__ import annotations

import struct
from typing import Any

from kvmpy.migration.errors import VmStateError

MAX_DEPTH = 32
_U32 = struct.Struct("<I")


def encode(value: Any) -> bytes:
    """The encoding of ``value``; TypeError for a value outside the model (a bug in a
    device's ``get_state``)."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode(value: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TypeError("state value nested too deeply")
    if value is None:
        out += b"N"
    elif value is True:
        out += b"T"
    elif value is False:
        out += b"F"
    elif isinstance(value, int):
        n = (value.bit_length() + 8) // 8
        if n > 255:
            raise TypeError("state integer too large")
        out += b"i" + bytes((n,)) + value.to_bytes(n, "little", signed=True)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out += b"b" + _U32.pack(len(data)) + data
    elif isinstance(value, str):
        data = value.encode()
        out += b"s" + _U32.pack(len(data)) + data
    elif isinstance(value, (list, tuple)):
        out += b"l" + _U32.pack(len(value))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, dict):
        out += b"d" + _U32.pack(len(value))
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"state dict key {key!r} is not a str")
            data = key.encode()
            out += _U32.pack(len(data)) + data
            _encode(item, out, depth + 1)
    else:
        raise TypeError(f"{type(value).__name__} is not a state value")


def decode(data: bytes | memoryview) -> Any:
    """The value ``data`` encodes (all of ``data``); VmStateError when it is malformed."""
    view = memoryview(data)
    value, pos = _decode(view, 0, 0)
    if pos != len(view):
        raise VmStateError("vmstate: corrupt state value (trailing bytes)")
    return value


def _need(view: memoryview, pos: int, n: int) -> None:
    if n < 0 or pos + n > len(view):
        raise VmStateError("vmstate: corrupt state value (truncated)")


def _u32(view: memoryview, pos: int) -> int:
    _need(view, pos, 4)
    return int(_U32.unpack_from(view, pos)[0])


def _text(view: memoryview, pos: int, n: int) -> str:
    _need(view, pos, n)
    try:
        return bytes(view[pos:pos + n]).decode()
    except UnicodeDecodeError:
        raise VmStateError("vmstate: corrupt state value (bad UTF-8)") from None


def _decode(view: memoryview, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise VmStateError("vmstate: corrupt state value (nested too deeply)")
    _need(view, pos, 1)
    tag = view[pos]
    pos += 1
    if tag == 0x4E:  # N
        return None, pos
    if tag == 0x54:  # T
        return True, pos
    if tag == 0x46:  # F
        return False, pos
    if tag == 0x69:  # i
        _need(view, pos, 1)
        n = view[pos]
        _need(view, pos + 1, n)
        return int.from_bytes(view[pos + 1:pos + 1 + n], "little", signed=True), pos + 1 + n
    if tag == 0x62:  # b
        n = _u32(view, pos)
        _need(view, pos + 4, n)
        return bytes(view[pos + 4:pos + 4 + n]), pos + 4 + n
    if tag == 0x73:  # s
        n = _u32(view, pos)
        return _text(view, pos + 4, n), pos + 4 + n
    if tag == 0x6C:  # l
        n = _u32(view, pos)
        pos += 4
        _need(view, pos, n)  # every item takes at least one byte
        items = []
        for _ in range(n):
            item, pos = _decode(view, pos, depth + 1)
            items.append(item)
        return items, pos
    if tag == 0x64:  # d
        n = _u32(view, pos)
        pos += 4
        _need(view, pos, 5 * n)
        result: dict[str, Any] = {}
        for _ in range(n):
            m = _u32(view, pos)
            key = _text(view, pos + 4, m)
            pos += 4 + m
            result[key], pos = _decode(view, pos, depth + 1)
        return result, pos
    raise VmStateError(f"vmstate: corrupt state value (unknown tag 0x{tag:02x})")
