"""The monitor's network commands, as QEMU 7.2 has them (net/net.c): ``info network``,
``set_link``, ``netdev_add`` and ``netdev_del``, for HMP and QMP alike.

A NIC is named as QEMU names its net client: its ``-device ...,id=`` or ``MODEL.N``; a
back-end by its ``-netdev`` id.  ``set_link`` on a back-end also takes its NIC's link down
(the guest sees the link status change), on a NIC only the NIC's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kvmpy.config import OptionSpec
from kvmpy.errors import ConfigError, KvmpyError

if TYPE_CHECKING:
    from kvmpy.net.base import NetBackend
    from kvmpy.system import System


class DeviceNotFound(KvmpyError):
    """QEMU's ERROR_CLASS_DEVICE_NOT_FOUND."""


def _nic_line(name: str, nic: Any) -> str:
    info = getattr(nic, "nic_info", None)
    text = info() if callable(info) else ""
    return f"{name}: index=0,type=nic,{text}"


def info_network(system: System) -> str:
    """``info network``: each NIC with its back-end under it, then back-ends nobody uses
    (QEMU's hmp_info_network; the legacy ``-net`` pairs, which QEMU joins through hub 0,
    are shown as the direct pairs they are here)."""
    lines: list[str] = []
    for backend in system.netdevs.values():
        if backend.peer is None:
            lines.append(f"{backend.id}: index=0,{_backend_info(backend)}")
            continue
        lines.append(_nic_line(backend.peer_name, backend.peer))
        lines.append(f" \\ {backend.id}: index=0,{_backend_info(backend)}")
    return "\n".join(lines)


def _backend_info(backend: NetBackend) -> str:
    """``type=TYPE,INFO`` as print_net_client prints a back-end."""
    text = backend.info()
    prefix = f"type={backend.type_label}"
    return text if text.startswith(prefix) else f"{prefix},{text}"


def _find(system: System, name: str) -> tuple[NetBackend | None, Any]:
    """(back-end, NIC) named ``name``; the NIC of a back-end too."""
    backend = system.netdevs.get(name)
    if backend is not None:
        return backend, backend.peer
    for candidate in system.netdevs.values():
        if candidate.peer is not None and candidate.peer_name == name:
            return None, candidate.peer
    raise DeviceNotFound(f"Device '{name}' not found")


def set_link(system: System, name: str, up: bool) -> dict[str, Any]:
    backend, nic = _find(system, name)
    with system.lock:
        if backend is not None:
            backend.set_link(up)
        setter = getattr(nic, "set_link", None)
        if setter is not None:
            setter(up)
    return {}


def netdev_add(system: System, props: Mapping[str, Any], hmp: bool = False
               ) -> dict[str, Any]:
    """Create a back-end at run time (QMP's arguments: ``type``, ``id`` and the rest).
    QEMU words a duplicate id differently in HMP (which goes through QemuOpts)."""
    from kvmpy.net.options import _check_type
    from kvmpy.net.setup import open_netdevs

    kind = props.get("type")
    netdev_id = props.get("id")
    if not isinstance(kind, str):
        raise ConfigError("Parameter 'type' is missing")
    _check_type(kind)
    if not isinstance(netdev_id, str) or not netdev_id:
        raise ConfigError("Parameter 'id' is missing")
    if netdev_id in system.netdevs:
        raise ConfigError(f"Duplicate ID '{netdev_id}'" + (" for netdev" if hmp else ""))
    strings: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for key, value in props.items():
        if key == "type":
            continue
        if isinstance(value, list):
            lists[key] = [_text(v) for v in value]
            if value:
                strings[key] = _text(value[-1])
        else:
            strings[key] = _text(value)
    spec = OptionSpec(kind, strings, f"netdev_add {kind},id={netdev_id}", lists)
    backend = open_netdevs([spec])[netdev_id]
    system.netdevs[netdev_id] = backend
    if system.loop is not None:
        system.call_soon(lambda: backend.start(system))
    return {}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def netdev_del(system: System, netdev_id: str) -> dict[str, Any]:
    backend = system.netdevs.get(netdev_id)
    if backend is None:
        for candidate in system.netdevs.values():
            if candidate.peer_name == netdev_id:
                raise ConfigError(f"Device '{netdev_id}' is not a netdev")
        raise DeviceNotFound(f"Device '{netdev_id}' not found")
    with system.lock:
        backend.set_link(False)  # its NIC, if any, now sends into nothing
        del system.netdevs[netdev_id]
    system.call_soon(backend.close)
    return {}


def parse_hmp_netdev(text: str) -> dict[str, Any]:
    """``netdev_add type,id=ID,...`` as QMP arguments (repeated keys as lists)."""
    from kvmpy import keyval
    from kvmpy.net.options import LIST_KEYS

    parsed = keyval.parse(text, "type", qemuopts=True)
    args: dict[str, Any] = dict(parsed.props)
    for key in LIST_KEYS:
        if key in parsed.props:
            args[key] = parsed.values(key)
    return args
