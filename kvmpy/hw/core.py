"""The device side of the two narrow interfaces: a device window on the MMIO bus.

A device sees only offsets inside its own window (``offset``), declares its valid access widths
once (``access_sizes``), and keeps its guest-visible state in one dataclass (``state``), so that
``reset()`` is ``self.state = State()`` and snapshots are ``get_state()`` / ``set_state()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from kvmpy import qom
from kvmpy.errors import ConfigError


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
        """Replace the state (a :meth:`get_state` dict, e.g. from a saved VM); raises
        ``kvmpy.migration.VmStateError`` without changing anything when it does not fit."""
        self.state = state_from_dict(self.state, state, self.name)


def state_from_dict(current: Any, state: Any, what: str) -> Any:
    """A new state dataclass like ``current`` from ``state``: the same fields, each value of
    the type ``current`` has (list items of the type of its items); VmStateError if not."""
    from kvmpy.migration.errors import VmStateError

    names = [f.name for f in dataclasses.fields(current)]
    if not isinstance(state, dict) or sorted(state) != sorted(names):
        raise VmStateError(f"vmstate: {what}: state fields do not match")
    for name in names:
        have, new = getattr(current, name), state[name]
        if not _same_kind(have, new):
            raise VmStateError(f"vmstate: {what}: '{name}' has the wrong type")
        if isinstance(have, list) and have and not all(_same_kind(have[0], v) for v in new):
            raise VmStateError(f"vmstate: {what}: '{name}' has an item of the wrong type")
    return type(current)(**{name: (list(state[name]) if isinstance(state[name], list)
                                   else state[name]) for name in names})


def _same_kind(have: Any, new: Any) -> bool:
    if isinstance(have, bool) or isinstance(new, bool):
        return type(have) is type(new)
    if have is None:
        return new is None or isinstance(new, (int, str, bytes))
    return isinstance(new, type(have)) or (isinstance(have, list) and isinstance(new, list))


# --- QOM device types -------------------------------------------------------------------------
# QEMU's TYPE_DEVICE and TYPE_SYS_BUS_DEVICE.  Every device model registers a type below one of
# these so that ``-device help`` and ``-device NAME,help`` are answered from the registry.

@qom.register_type("device", "object", abstract=True, description="base device")
class Device(qom.Object):
    """Base of every device type (QEMU's ``DeviceClass``).

    ``user_creatable`` says whether ``-device`` may create it; ``bus_type`` and ``category``
    are what ``-device help`` prints.  Devices take their properties (``qom.Property``
    attributes) as keyword arguments of ``__init__``, so construction is QEMU's realize.
    """

    user_creatable: ClassVar[bool] = False
    bus_type: ClassVar[str] = "System"
    category: ClassVar[str] = "Misc devices"
    desc: ClassVar[str | None] = None
    """QEMU's ``dc->desc``: shown by ``-device help`` when set."""

    @classmethod
    def backends(cls, system: Any, props: Mapping[str, str]) -> dict[str, Any]:
        """Keyword arguments for ``__init__`` that ``-device`` properties name on the system
        (``drive=hd0`` -> the opened disk); raises ConfigError as QEMU words it."""
        return {}

    def set_properties(self, props: Mapping[str, object]) -> None:
        """Apply property values given to ``__init__`` by attribute name (``num_sources``);
        a name that is no property of this type is a programming error (TypeError)."""
        known = {value.attr for klass in type(self).__mro__ for value in vars(klass).values()
                 if isinstance(value, qom.Property)}
        for attr, value in props.items():
            if attr not in known:
                raise TypeError(f"{type(self).__name__}: no property '{attr}'")
            setattr(self, attr, value)


@qom.register_type("sys-bus-device", "device", abstract=True, description="system bus device")
class SysBusDevice(MmioDevice, Device):
    """A device with one MMIO window on the system bus (QEMU's ``SysBusDevice``).

    ``region_size`` is the size of the window the device decodes (QEMU's memory region size).
    """

    region_size: int = 0x1000


def device_new(name: str, props: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """Create device type ``name`` (QEMU's ``qdev_new`` + realize).

    ``props`` are command-line strings (``{"drive": "hd0"}``), parsed with QEMU's errors and
    passed to ``__init__`` together with ``kwargs`` (the injected dependencies).
    """
    info = qom.type_info(name)
    if info is None or not qom.is_a(name, "device"):
        raise ConfigError(f"'{name}' is not a valid device model name")
    if info.abstract:
        raise ConfigError(f"Parameter 'driver' expects a non-abstract device type, "
                          f"'{name}' is abstract")
    args = dict(kwargs)
    for key, text in (props or {}).items():
        prop = info.properties.get(key)
        if prop is None:
            raise ConfigError(f"Property '{name}.{key}' not found")
        try:
            args[prop.attr] = prop.parse(text)
        except qom.InvalidPropertyValue:
            raise ConfigError(f"Property '{name}.{key}' doesn't take value '{text}'") from None
    return info.cls(**args)


DEVICE_CATEGORIES = ("Controller/Bridge/Hub devices", "USB devices", "Storage devices",
                     "Network devices", "Input devices", "Display devices", "Sound devices",
                     "Misc devices", "CPU devices", "Watchdog devices", "Uncategorized devices")
"""QEMU's DeviceCategory names, in the order ``-device help`` prints them."""


def device_help() -> str:
    """``-device help``: user-creatable devices by category, QEMU's layout and order."""
    groups: dict[str, list[str]] = {}
    for info in qom.object_class_get_list("device"):
        cls = info.cls
        if not issubclass(cls, Device) or not cls.user_creatable:
            continue
        line = f'name "{info.name}", bus {cls.bus_type}'
        alias = qom.alias_of(info.name)
        if alias:
            line += f', alias "{alias}"'
        if cls.desc:
            line += f', desc "{cls.desc}"'
        category = cls.category if cls.category in DEVICE_CATEGORIES else "Uncategorized devices"
        groups.setdefault(category, []).append(line)
    blocks = [f"{category}:\n" + "\n".join(groups[category])
              for category in DEVICE_CATEGORIES if category in groups]
    return "\n\n".join(blocks)
