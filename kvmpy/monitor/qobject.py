"""QEMU's order of an object's keys on the QMP wire.

QEMU builds a reply as a ``QDict``: a hash table of 512 buckets (qobject/qdict.c) filled in
the order the QAPI schema declares the members, each new key put at the head of its bucket's
list; the JSON writer walks the buckets in order.  So a reply's key order is neither the
schema's nor alphabetical, but fixed by ``tdb_hash``; :func:`qdict_order` reproduces it, so a
client that compares raw text (or prints it) sees exactly what QEMU sends.
"""

from __future__ import annotations

from typing import Any

QDICT_BUCKET_MAX = 512
_U32 = 0xFFFFFFFF


def tdb_hash(name: str) -> int:
    """qobject/qdict.c ``tdb_hash`` (32-bit unsigned arithmetic)."""
    data = name.encode()
    value = (0x238F13AF * len(data)) & _U32
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & _U32
    return (1103515243 * value + 12345) & _U32


def qdict_order(value: Any) -> Any:
    """``value`` with every dict's keys in QEMU's wire order, given that each dict was built
    in the schema's member order (lists and scalars are kept as they are)."""
    if isinstance(value, dict):
        position = {key: i for i, key in enumerate(value)}
        keys = sorted(value, key=lambda k: (tdb_hash(k) % QDICT_BUCKET_MAX, -position[k]))
        return {key: qdict_order(value[key]) for key in keys}
    if isinstance(value, list):
        return [qdict_order(item) for item in value]
    return value
