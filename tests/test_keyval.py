"""The option grammar, in both of QEMU's dialects (keyval and QemuOpts)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpy.errors import ConfigError
from kvmpy.keyval import parse, unparse


def test_implied_key_and_properties() -> None:
    parsed = parse("virt,aclint=on,dumpdtb=out.dtb", "type")
    assert parsed.props == {"type": "virt", "aclint": "on", "dumpdtb": "out.dtb"}
    assert not parsed.help


def test_explicit_implied_key() -> None:
    assert parse("type=virt,aclint=off", "type").props == {"type": "virt", "aclint": "off"}


def test_double_comma_is_a_literal_comma_in_values() -> None:
    assert parse("virt,append=console=ttyS0,,115200", "type").props["append"] == \
        "console=ttyS0,115200"


def test_later_value_wins() -> None:
    assert parse("a=1,a=2").props == {"a": "2"}


def test_trailing_comma_is_accepted() -> None:
    assert parse("virt,", "type").props == {"type": "virt"}


@pytest.mark.parametrize("text", ["help", "?", "virt,help", "help,aclint=on", "virt,?"])
def test_help_anywhere(text: str) -> None:
    assert parse(text, "type").help


def test_prop_equals_help_names_the_property() -> None:
    parsed = parse("virt,aclint=help", "type")
    assert parsed.help_prop == "aclint"
    assert "aclint" not in parsed.props


@pytest.mark.parametrize(("text", "message"), [
    ("virt,aclint", "Expected '=' after parameter 'aclint'"),
    (",virt", "Invalid parameter ''"),
    ("virt,,x", "Invalid parameter ''"),
    ("help,virt", "Expected '=' after parameter 'virt'"),
    ("virt,=on", "Invalid parameter ''"),
    ("virt,a b=1", "Invalid parameter 'a b'"),
    ("virt,9x=1", "Invalid parameter '9x'"),
    ("virt," + "k" * 128 + "=1", "Parameter '" + "k" * 128 + "' is too long"),
])
def test_keyval_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, "type")
    assert str(info.value) == message


def test_keyval_implied_value_stops_at_the_first_comma() -> None:
    # QEMU 7.2: "-M virt,,x" is "virt" followed by an empty key.
    with pytest.raises(ConfigError):
        parse("virt,,x", "type")


def test_qemuopts_implied_value_takes_double_commas() -> None:
    assert parse("1,,2", "size", qemuopts=True).props == {"size": "1,2"}


def test_qemuopts_bare_key_means_on_and_no_prefix_means_off() -> None:
    parsed = parse("unix:/x,server,nowait,nodelay", "backend", qemuopts=True,
                   known_keys={"server", "wait", "nodelay"})
    assert parsed.props == {"backend": "unix:/x", "server": "on", "wait": "off",
                            "nodelay": "on"}


def test_qemuopts_empty_implied_value() -> None:
    assert parse(",virtio-rng-device", "driver", qemuopts=True).props["driver"] == ""


def test_nested_keys_are_kept_dotted() -> None:
    assert parse("file.driver=file,file.filename=x").props == {
        "file.driver": "file", "file.filename": "x"}


def test_empty_text() -> None:
    assert parse("", "type").props == {}


def test_unparse_round_trip() -> None:
    props = {"path": "a,b", "server": "on"}
    assert parse(unparse(props)).props == props


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=",=.?abhelp0 -_:", max_size=30), qemuopts=st.booleans())
def test_any_text_parses_or_fails_with_a_config_error(text: str, qemuopts: bool) -> None:
    try:
        parsed = parse(text, "type", qemuopts=qemuopts)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    for key, value in parsed.props.items():
        assert isinstance(key, str) and isinstance(value, str)


@settings(max_examples=200, deadline=None)
@given(props=st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
                             st.text(alphabet="ab,=: ", max_size=8), max_size=4))
def test_unparse_then_parse_is_identity(props: dict[str, str]) -> None:
    assert parse(unparse(props)).props == props
