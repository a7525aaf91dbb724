"""The type registry: hierarchy lookups, properties, QEMU-worded errors."""

import pytest

from kvmpy import qom
from kvmpy.errors import ConfigError


@qom.register_type("test-base", "object", abstract=True, description="test base")
class _Base(qom.Object):
    pass


@qom.register_type("test-widget", "test-base")
class _Widget(_Base):
    """A widget for tests"""

    num_sources = qom.Property(int, 96, "number of sources")
    aclint = qom.Property(bool, False, "enable")
    size = qom.Property("size", 4096)
    mode = qom.Property(str, "a", choices=("a", "b"))

    def __init__(self, tag: str = "") -> None:
        self.tag = tag


def test_lookup_by_parent_lists_concrete_descendants_only() -> None:
    names = [info.name for info in qom.object_class_get_list("test-base")]
    assert names == ["test-widget"]
    assert "test-base" in [i.name for i in qom.object_class_get_list("test-base", True)]
    assert qom.is_a("test-widget", "object")


def test_object_new_applies_typed_properties_and_keeps_defaults() -> None:
    w = qom.object_new("test-widget", {"num-sources": "0x10", "aclint": "on", "size": "2M"},
                       tag="x")
    assert (w.num_sources, w.aclint, w.size, w.mode, w.tag) == (16, True, 2 << 20, "a", "x")
    fresh = qom.object_new("test-widget")
    assert (fresh.num_sources, fresh.aclint) == (96, False)


@pytest.mark.parametrize(("props", "message"), [
    ({"foo": "1"}, "Property 'test-widget.foo' not found"),
    ({"aclint": "1"}, "Parameter 'aclint' expects 'on' or 'off'"),
    ({"aclint": "maybe"}, "Parameter 'aclint' expects 'on' or 'off'"),
    ({"num-sources": "many"}, "Parameter 'num-sources' expects an integer"),
    ({"mode": "c"}, "Parameter 'mode' does not accept value 'c'"),
])
def test_bad_properties_are_refused_with_qemu_wording(props: dict[str, str],
                                                      message: str) -> None:
    with pytest.raises(ConfigError) as info:
        qom.object_new("test-widget", props)
    assert str(info.value) == message


def test_abstract_and_unknown_types_cannot_be_instantiated() -> None:
    with pytest.raises(ConfigError):
        qom.object_new("test-base")
    with pytest.raises(ConfigError):
        qom.object_new("no-such-type")


def test_double_registration_and_unknown_parent_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        qom.register_type("test-widget", "test-base")(type("W2", (_Base,), {}))
    with pytest.raises(ValueError):
        qom.register_type("test-orphan", "no-parent")(type("W3", (qom.Object,), {}))


def test_property_help_lists_names_types_and_defaults() -> None:
    info = qom.type_info("test-widget")
    assert info is not None
    text = qom.property_help(info)
    assert "num-sources=<int> - number of sources (default: 96)" in text
    assert "aclint=<bool> - enable (default: off)" in text


@pytest.mark.parametrize(("text", "unit", "value"), [
    ("128M", 1, 128 << 20), ("1G", 1, 1 << 30), ("512", 1 << 20, 512 << 20),
    ("1.5G", 1, 3 << 29), ("4k", 1, 4096), ("2T", 1, 2 << 40),
])
def test_sizes(text: str, unit: int, value: int) -> None:
    assert qom.parse_size("size", text, unit) == value


@pytest.mark.parametrize("text", ["12X", "", "-1", "1..2M", "M", "99999999999999999999E"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError, match="Parameter 'size' expects"):
        qom.parse_size("size", text)
