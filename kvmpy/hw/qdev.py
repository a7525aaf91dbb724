"""``-device``: find the bus, create the device, plug it (QEMU's ``qdev_device_add``).

A board offers its buses (the PCIe root bus, the virtio-mmio slots, ...) as :class:`Bus`
entries; each ``-device`` goes on the bus its ``bus=`` names, or else on the first bus of the
kind it needs that has room, with QEMU's error messages.  Devices that carry buses of their
own (``virtio-serial-*`` carries a ``virtio-serial-bus``, a PCI bridge the bus behind it) add
them as they are plugged.  A bus with a ``parent`` is searched right after it, before the
buses its older siblings carry: the depth-first, newest-first order of QEMU's
``qbus_find_recursive``, so a name two buses share finds the one nearer the root.
``-drive if=virtio`` adds a ``virtio-blk`` after the ``-device`` options, as QEMU does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvmpy import qom
from kvmpy.config import OptionSpec, VMConfig
from kvmpy.errors import ConfigError
from kvmpy.hw.core import Device, device_new


@dataclass
class Bus:
    """A bus devices can be plugged into.

    ``kind`` is QEMU's bus type name as its messages print it (``PCIE``,
    ``virtio-mmio-bus``); ``takes`` is the ``bus_type`` of the devices it accepts (``PCI``,
    ``virtio-bus``); ``inject`` are keyword arguments every device created for it receives
    (guest RAM, ...).
    """

    name: str
    kind: str
    takes: str
    plug: Callable[[Any], None]
    has_room: Callable[[], bool] = lambda: True
    inject: Mapping[str, Any] = field(default_factory=dict)
    parent: Bus | None = None
    """The bus the device carrying this one sits on, if it is to be searched after it."""


def device_specs(config: VMConfig) -> list[OptionSpec]:
    """The ``-device`` options, then one ``virtio-blk`` per ``-drive if=virtio``."""
    specs = list(config.devices)
    for drive in config.drives:
        if drive.props.get("if") == "virtio":
            specs.append(OptionSpec("virtio-blk", {"drive": drive.driver}, drive.text))
    return specs


def _find_bus(buses: list[Bus], name: str | None, cls: type[Device], driver: str) -> Bus:
    bus_type = cls.bus_type
    if name is not None:
        for bus in buses:
            if bus.name == name:
                if bus.takes != bus_type:
                    raise ConfigError(f"Device '{driver}' can't go on {bus.kind} bus")
                if not bus.has_room():
                    raise ConfigError(f"Bus '{name}' is full")
                return bus
        raise ConfigError(f"Bus '{name}' not found")
    for bus in buses:
        if bus.takes == bus_type and bus.has_room():
            return bus
    raise ConfigError(f"No '{bus_type}' bus found for device '{driver}'")


def create_devices(system: Any, buses: list[Bus],
                   carried_buses: Callable[[Any, str], list[Bus]] | None = None) -> list[Any]:
    """Create every ``-device`` of ``system.config`` on ``buses``; returns the devices.

    ``carried_buses(device, id)`` names the buses a new device brings (they are searched
    first, so ports go on the most recent ``virtio-serial``; one with a ``parent`` right
    after that bus).  A second device with an id already taken is refused, as in QEMU."""
    plugged: list[Any] = []
    nics: dict[str, int] = {}
    ids: set[str] = set()
    for spec in device_specs(system.config):
        what = spec.text or f"-device {spec.driver}"
        try:
            device, dev_id = _create_one(system, buses, spec, ids)
        except ConfigError as exc:
            if exc.option is None:
                exc.option = what
            raise
        plugged.append(device)
        _name_nic(device, dev_id, nics)
        if carried_buses is not None:
            for bus in reversed(carried_buses(device, dev_id)):
                _add_bus(buses, bus)
    return plugged


def _add_bus(buses: list[Bus], bus: Bus) -> None:
    """First in the search order, or right after its parent."""
    for i, other in enumerate(buses):
        if other is bus.parent:
            buses.insert(i + 1, bus)
            return
    buses.insert(0, bus)


def _name_nic(device: Any, dev_id: str, counts: dict[str, int]) -> None:
    """A NIC (or the NIC a proxy carries) is named as QEMU names its net client: the
    device's id, else ``MODEL.N`` counting the NICs of that model."""
    nic = device if hasattr(device, "nic_named") else getattr(device, "device", None)
    if nic is None or not hasattr(nic, "nic_named"):
        return
    model = device.type_name
    index = counts.get(model, 0)
    counts[model] = index + 1
    nic.nic_named(dev_id or f"{model}.{index}", model)


def _create_one(system: Any, buses: list[Bus], spec: OptionSpec, ids: set[str]
                ) -> tuple[Any, str]:
    driver = qom.resolve_alias(spec.driver)
    info = qom.type_info(driver)
    if info is None or not qom.is_a(driver, "device"):
        raise ConfigError(f"'{spec.driver}' is not a valid device model name")
    cls = info.cls
    if info.abstract or not issubclass(cls, Device) or not cls.user_creatable:
        raise ConfigError("Parameter 'driver' expects a pluggable device type")
    props = dict(spec.props)
    dev_id = props.pop("id", "")
    bus = _find_bus(buses, props.pop("bus", None), cls, driver)
    if dev_id in ids:  # ids name buses too (a bridge's bus is its id)
        raise ConfigError(f"Duplicate ID '{dev_id}' for device")
    if dev_id:
        ids.add(dev_id)
    kwargs = {**bus.inject, **cls.backends(system, props)}
    device = device_new(driver, props, **kwargs)
    if hasattr(device, "id"):
        device.id = dev_id
    bus.plug(device)
    return device, dev_id
