"""A QOM-style type registry: every machine, device, accelerator and chardev backend is a type.

A type is a Python class registered with :func:`register_type`; it has a name, a parent, an
abstract flag, a description and typed class properties (:class:`Property`) with defaults.
``-M help``, ``-device help``, ``-accel help`` and ``-M virt,help`` are answered from here
(QEMU's ``object_class_get_list``), and :func:`object_new` creates an instance with its
properties applied, raising :class:`~kvmpy.errors.ConfigError` worded like QEMU.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, overload

from kvmpy.errors import ConfigError

T = TypeVar("T")
C = TypeVar("C", bound=type)

_BOOL_TRUE = {"on", "yes", "true", "y"}
_BOOL_FALSE = {"off", "no", "false", "n"}
_SIZE_SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
                  "p": 1 << 50, "e": 1 << 60}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)\s*$", re.IGNORECASE)


def parse_bool(name: str, text: str) -> bool:
    """QEMU's boolean property values; ``1``/``0`` are rejected as QEMU does."""
    lowered = text.lower()
    if lowered in _BOOL_TRUE:
        return True
    if lowered in _BOOL_FALSE:
        return False
    raise ConfigError(f"Parameter '{name}' expects 'on' or 'off'")


def parse_size(name: str, text: str, default_unit: int = 1) -> int:
    """A size with an optional k/M/G/T/P/E suffix (powers of 1024).

    ``default_unit`` applies to a bare number (``-m 512`` means MiB).
    """
    match = _SIZE_RE.match(text)
    if match is None:
        raise ConfigError(f"Parameter '{name}' expects a non-negative number below 2^64\n"
                          "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
                          "peta- and exabytes, respectively.".split("\n")[0])
    number, suffix = match.groups()
    unit = _SIZE_SUFFIXES[suffix.lower()] if suffix else default_unit
    if "." in number and not suffix:
        raise ConfigError(f"Parameter '{name}' expects a non-negative number below 2^64")
    value = int(float(number) * unit) if "." in number else int(number) * unit
    if value >= 1 << 64:
        raise ConfigError(f"Parameter '{name}' expects a non-negative number below 2^64")
    return value


def parse_int(name: str, text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"Parameter '{name}' expects an integer") from None


class InvalidPropertyValue(ConfigError):
    """A value a property refuses as such; the caller, who knows the type, words the error
    as QEMU: ``Property 'TYPE.NAME' doesn't take value 'VALUE'``."""


@dataclass
class Property(Generic[T]):
    """A typed class property: ``kind`` is ``bool``, ``int``, ``str`` or ``"size"``.

    Used as a class attribute of a registered type; on an instance it reads as the value
    applied by :func:`object_new` (or the default).  ``name`` defaults to the attribute name
    with ``_`` spelled ``-`` (QEMU's ``num-sources``).
    """

    kind: Any
    default: T
    description: str = ""
    choices: tuple[str, ...] | None = None
    name: str = ""
    attr: str = field(default="", repr=False)

    def __set_name__(self, owner: type, attr: str) -> None:
        self.attr = attr
        if not self.name:
            self.name = attr.replace("_", "-")

    @overload
    def __get__(self, instance: None, owner: type) -> Property[T]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> T: ...

    def __get__(self, instance: object | None, owner: type) -> Any:
        if instance is None:
            return self
        return instance.__dict__.get(self.attr, self.default)

    def __set__(self, instance: object, value: T) -> None:
        instance.__dict__[self.attr] = value

    @property
    def type_name(self) -> str:
        if self.choices:
            return "|".join(self.choices)
        return {bool: "bool", int: "int", str: "str", "size": "size"}.get(self.kind, "str")

    def parse(self, text: str) -> Any:
        """Convert a command-line string to this property's type, with QEMU's errors."""
        if self.kind is bool:
            return parse_bool(self.name, text)
        if self.kind is int:
            return parse_int(self.name, text)
        if self.kind == "size":
            return parse_size(self.name, text)
        if self.choices is not None and text not in self.choices:
            raise ConfigError(f"Parameter '{self.name}' does not accept value '{text}'")
        return text


@dataclass(frozen=True)
class TypeInfo:
    """What the registry knows of one type."""

    name: str
    parent: str | None
    abstract: bool
    description: str
    cls: type
    properties: Mapping[str, Property[Any]]


_types: dict[str, TypeInfo] = {}
_aliases: dict[str, str] = {}
_type_loader: Callable[[str], None] | None = None


def set_type_loader(loader: Callable[[str], None] | None) -> None:
    """``loader(name)`` is called before the registry answers about ``name`` (a type, an alias,
    or a parent whose descendants are listed), to import the modules that register it on
    demand (:mod:`kvmpy.registry_init`)."""
    global _type_loader
    _type_loader = loader


def _want(name: str) -> None:
    if _type_loader is not None:
        _type_loader(name)


def _own_properties(cls: type) -> dict[str, Property[Any]]:
    props: dict[str, Property[Any]] = {}
    for klass in reversed(cls.__mro__):
        for value in vars(klass).values():
            if isinstance(value, Property):
                props[value.name] = value
    return props


def register_type(name: str, parent: str | None = None, *, abstract: bool = False,
                  description: str = "") -> Callable[[C], C]:
    """Class decorator registering ``cls`` as QOM type ``name`` (a child of ``parent``)."""

    def wrap(cls: C) -> C:
        if name in _types:
            raise ValueError(f"type '{name}' registered twice")
        if parent is not None and parent not in _types:
            raise ValueError(f"type '{name}': parent '{parent}' is not registered")
        doc = description or (cls.__doc__ or "").strip().split("\n")[0]
        _types[name] = TypeInfo(name, parent, abstract, doc, cls, _own_properties(cls))
        cls.type_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def type_info(name: str) -> TypeInfo | None:
    if name not in _types:
        _want(name)
    return _types.get(name)


def register_alias(alias: str, name: str) -> None:
    """``alias`` names type ``name`` on the command line (QEMU's qdev aliases:
    ``virtio-blk`` is ``virtio-blk-pci`` on riscv64)."""
    _aliases[alias] = name


def resolve_alias(name: str) -> str:
    """The type an alias stands for (``name`` itself when it is no alias)."""
    if name not in _types and name not in _aliases:
        _want(name)
    return _aliases.get(name, name) if name not in _types else name


def alias_of(name: str) -> str | None:
    _want(name)
    for alias, target in _aliases.items():
        if target == name:
            return alias
    return None


def is_a(name: str, ancestor: str) -> bool:
    if name not in _types:
        _want(name)
    info = _types.get(name)
    while info is not None:
        if info.name == ancestor:
            return True
        info = _types.get(info.parent) if info.parent else None
    return False


def object_class_get_list(implements: str, include_abstract: bool = False) -> list[TypeInfo]:
    """Every registered type that is ``implements`` or descends from it, sorted by name."""
    _want(implements)
    return sorted(
        (info for info in _types.values()
         if is_a(info.name, implements) and (include_abstract or not info.abstract)),
        key=lambda info: info.name,
    )


def apply_properties(obj: object, info: TypeInfo, props: Mapping[str, str]) -> None:
    """Set properties given as strings, with QEMU's wording for unknown names and bad values."""
    for key, text in props.items():
        prop = info.properties.get(key)
        if prop is None:
            raise ConfigError(f"Property '{info.name}.{key}' not found")
        setattr(obj, prop.attr, prop.parse(text))


def object_new(name: str, props: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """Instantiate type ``name``; ``props`` are command-line strings, ``kwargs`` go to __init__."""
    if name not in _types:
        _want(name)
    info = _types.get(name)
    if info is None:
        raise ConfigError(f"unknown type '{name}'")
    if info.abstract:
        raise ConfigError(f"Parameter 'type' expects a non-abstract type, '{name}' is abstract")
    obj = info.cls(**kwargs)
    apply_properties(obj, info, props or {})
    return obj


def property_help(info: TypeInfo) -> str:
    """``-device NAME,help`` / ``-M virt,help`` text."""
    lines = [f"{info.name} options:"]
    for prop in sorted(info.properties.values(), key=lambda p: p.name):
        default = prop.default
        if isinstance(default, bool):
            default_text = "on" if default else "off"
        else:
            default_text = repr(default) if isinstance(default, str) else str(default)
        desc = f" - {prop.description}" if prop.description else ""
        lines.append(f"  {prop.name}=<{prop.type_name}>{desc} (default: {default_text})")
    if len(lines) == 1:
        lines.append("  (no properties)")
    return "\n".join(lines)


class Object:
    """Base of instances created through the registry."""

    type_name: ClassVar[str]


def registered_names(implements: str) -> Iterable[str]:
    return (info.name for info in object_class_get_list(implements))


register_type("object", None, abstract=True, description="base object")(Object)
