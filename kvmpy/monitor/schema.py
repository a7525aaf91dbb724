"""``query-qmp-schema`` and the QOM introspection commands, answered from what kvmpy has.

The schema is generated from the QMP command table (each command's arguments and their
types), the events kvmpy sends and the builtin types, in QEMU's introspection format
(``qapi/introspect.json``): entries with ``meta-type`` ``command``, ``event``, ``object``,
``builtin``, non-builtin types named by numbers as QEMU masks them.  Management tools read the
command list and capability flags from it (libvirt 11 no longer sends ``query-commands``).

``qom-list-types``, ``device-list-properties`` and ``qom-list-properties`` come from the QOM
registry and the ``-object`` types of :mod:`kvmpy.objects`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kvmpy import objects, qom

BUILTINS = {"str": "string", "int": "int", "bool": "boolean", "number": "number",
            "any": "value", "null": "null"}
_PY_TYPES = {int: "int", str: "str", bool: "bool", float: "number"}

EVENTS: dict[str, dict[str, str]] = {
    "STOP": {},
    "RESUME": {},
    "RESET": {"guest": "bool", "reason": "str"},
    "SHUTDOWN": {"guest": "bool", "reason": "str"},
    "POWERDOWN": {},
    "BALLOON_CHANGE": {"actual": "int"},
    "GUEST_PANICKED": {"action": "str", "?info": "any"},
    "VSERPORT_CHANGE": {"id": "str", "open": "bool"},
    "NETDEV_STREAM_CONNECTED": {"netdev-id": "str", "addr": "any"},
    "NETDEV_STREAM_DISCONNECTED": {"netdev-id": "str"},
}
"""The events kvmpy sends, with their data members (``?`` marks an optional one)."""


BOARD_TYPES = (("gpex-pcihost", "pcie-host-bridge"),)
"""Types the virt board builds itself that are not in the registry (not ``-device``
creatable): its generic PCIe host bridge, whose presence tells tools the board has PCIe."""


class _Types:
    """Object types numbered in order of first use, as QEMU's masked schema names them."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._by_members: dict[tuple[tuple[str, str, bool], ...], str] = {}

    def object(self, members: Iterable[tuple[str, str, bool]]) -> str:
        key = tuple(members)
        name = self._by_members.get(key)
        if name is None:
            name = str(len(self._by_members))
            self._by_members[key] = name
            entry_members: list[dict[str, Any]] = []
            for member, kind, optional in key:
                item: dict[str, Any] = {"name": member, "type": kind}
                if optional:
                    item["default"] = None
                entry_members.append(item)
            self.entries.append({"name": name, "members": entry_members,
                                 "meta-type": "object"})
        return name


def qmp_schema(commands: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The introspection list for ``commands`` (the QMP command table)."""
    types = _Types()
    out: list[dict[str, Any]] = []
    for name in sorted(commands):
        command = commands[name]
        members = [(arg, _PY_TYPES.get(command.types.get(arg), "any"), False)
                   for arg in command.required]
        members += [(arg, _PY_TYPES.get(command.types.get(arg), "any"), True)
                    for arg in command.optional]
        out.append({"name": name, "ret-type": "any", "meta-type": "command",
                    "arg-type": types.object(members)})
    for name, data in EVENTS.items():
        members = [(key.lstrip("?"), kind, key.startswith("?")) for key, kind in data.items()]
        out.append({"name": name, "meta-type": "event", "arg-type": types.object(members)})
    out.extend(types.entries)
    out.extend({"name": name, "meta-type": "builtin", "json-type": json_type}
               for name, json_type in BUILTINS.items())
    return out


# -- QOM introspection ------------------------------------------------------------------------

def _all_types() -> list[tuple[str, str | None, bool]]:
    """(name, parent, abstract) of every type: the registry's and the ``-object`` ones."""
    found = [(info.name, info.parent, info.abstract)
             for info in qom.object_class_get_list("object", include_abstract=True)]
    found += [(name, parent, False) for name, parent in BOARD_TYPES]
    found += [(name, None, True) for name in sorted(set(objects.PARENTS.values()))]
    found += [(name, objects.PARENTS[name], False) for name in objects.OBJECT_TYPES]
    return found


def _is_a(name: str, ancestor: str) -> bool:
    if name in objects.OBJECT_TYPES:
        return ancestor in (name, objects.PARENTS[name], "object")
    if name in objects.PARENTS.values():
        return ancestor in (name, "object")
    return qom.is_a(name, ancestor)


def qom_list_types(implements: str | None = None,
                   abstract: bool = False) -> list[dict[str, Any]]:
    result = []
    for name, parent, is_abstract in _all_types():
        if is_abstract and not abstract:
            continue
        if implements is not None and not _is_a(name, implements):
            continue
        entry: dict[str, Any] = {"name": name}
        if is_abstract:
            entry["abstract"] = True
        if parent is not None:
            entry["parent"] = parent
        result.append(entry)
    return result


def _qapi_type(prop: qom.Property[Any]) -> str:
    if prop.kind is bool:
        return "bool"
    if prop.kind == "size":
        return "size"
    if prop.kind is int:
        return "uint32"
    return "str"


def _properties(info: qom.TypeInfo) -> list[dict[str, Any]]:
    out = []
    for prop in sorted(info.properties.values(), key=lambda p: p.name):
        entry: dict[str, Any] = {"name": prop.name, "type": _qapi_type(prop)}
        if prop.description:
            entry["description"] = prop.description
        if prop.default is not None and prop.default != "":
            entry["default-value"] = prop.default
        out.append(entry)
    return out


class TypeNotFound(Exception):
    """QEMU's DeviceNotFound error class."""


def device_list_properties(typename: str) -> list[dict[str, Any]]:
    info = qom.type_info(qom.resolve_alias(typename))
    if info is None:
        raise TypeNotFound(f"Device '{typename}' not found")
    if not qom.is_a(info.name, "device"):
        raise ValueError("Parameter 'typename' expects device")
    if info.abstract:
        raise ValueError("Parameter 'typename' expects a non-abstract device type")
    return _properties(info)


def qom_list_properties(typename: str) -> list[dict[str, Any]]:
    """A type's properties; a type kvmpy does not have has none (an empty list, never an
    error: libvirt 9.0 crashes on an error here)."""
    if typename in objects.OBJECT_TYPES:
        return objects.type_properties(typename)
    info = qom.type_info(typename)
    if info is None:
        return []
    return [{"name": "type", "type": "string"}, *_properties(info)]


def command_line_options(option: str | None) -> list[dict[str, Any]]:
    """The options that take an argument, as QEMU lists its option groups."""
    from kvmpy.cli.options import OPTIONS

    names = sorted(o.name for o in OPTIONS if o.arg is not None)
    if option is not None:
        if option not in names:
            raise ValueError(f"invalid option name: {option}")
        names = [option]
    return [{"parameters": [], "option": name} for name in names]
