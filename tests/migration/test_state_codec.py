"""The state format's value encoding and framing as untrusted input: any value of the model
round-trips; any bytes decode to a value or a one-line VmStateError, never another exception
and never more than the input holds."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpy.migration import VmStateError, read_header
from kvmpy.migration.codec import MAX_DEPTH, decode, encode
from kvmpy.migration.stream import TAG_HEADER, StreamWriter

scalars = (st.none() | st.booleans() | st.integers(min_value=-(1 << 1000), max_value=1 << 1000)
           | st.binary(max_size=64) | st.text(max_size=32))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=6), max_leaves=40)


@given(values)
def test_every_value_round_trips(value: Any) -> None:
    assert decode(encode(value)) == value


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_one_line(data: bytes) -> None:
    try:
        decode(data)
    except VmStateError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=300)
@given(values, st.data())
def test_mutated_encodings_decode_or_raise_one_line(value: Any, data: st.DataObject) -> None:
    raw = bytearray(encode(value))
    at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[at] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    with contextlib.suppress(VmStateError):
        decode(bytes(raw[:cut]))


def test_huge_lengths_and_deep_nesting_are_refused_cheaply() -> None:
    with pytest.raises(VmStateError, match="truncated"):
        decode(b"l\xff\xff\xff\xff")           # 4 G items claimed, none there
    with pytest.raises(VmStateError, match="truncated"):
        decode(b"b\xff\xff\xff\x7f")
    with pytest.raises(VmStateError, match="nested"):
        decode(b"l\x01\x00\x00\x00" * (MAX_DEPTH + 2) + b"N")
    with pytest.raises(VmStateError, match="trailing"):
        decode(b"NN")
    with pytest.raises(TypeError):
        encode({1: 2})
    with pytest.raises(TypeError):
        encode(1.5)


def header_stream(header: Any) -> bytes:
    out = io.BytesIO()
    writer = StreamWriter(out)
    writer.start()
    writer.record(TAG_HEADER, encode(header))
    return out.getvalue()


@settings(max_examples=300)
@given(st.data())
def test_mutated_stream_headers_raise_one_line(data: st.DataObject) -> None:
    raw = bytearray(header_stream({"format": 1, "args": ["-m", "128M"], "info": {}}))
    assert read_header(io.BytesIO(bytes(raw)))["args"] == ["-m", "128M"]
    at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[at] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(VmStateError) as info:
        read_header(io.BytesIO(bytes(raw[:data.draw(st.integers(0, len(raw)))])))
    assert "\n" not in str(info.value)
