"""``-netdev``, ``-nic`` and ``-net``: QEMU 7.2's three ways to ask for networking, turned into
back-end specifications (``config.netdevs``) and NIC devices (``config.devices``).

- ``-netdev TYPE,id=ID,...`` is a back-end; a NIC names it with ``netdev=ID``.
- ``-nic TYPE[,model=M][,mac=MAC],...`` is a back-end and its NIC in one option (QEMU 7.2's
  virt board ignores it with a warning; kvmpy creates the NIC, a ``virtio-net-pci`` unless
  ``model=`` says otherwise).  ``-nic none`` asks for none.
- ``-net nic[,model=M][,macaddr=MAC]`` and ``-net TYPE,...`` are the legacy pair: each NIC is
  connected to the next back-end given this way (QEMU joins them through hub 0).
"""

from __future__ import annotations

import re

from kvmpy import keyval
from kvmpy.config import OptionSpec, VMConfig
from kvmpy.errors import ConfigError

DEFAULT_NIC_MODEL = "virtio-net-pci"
LIST_KEYS = ("hostfwd", "guestfwd", "dnssearch")
"""Back-end options whose QAPI type is a list: every repetition counts."""

_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
QEMU_NETDEV_TYPES = ("socket", "stream", "dgram", "hubport", "tap", "user", "l2tpv3", "vde",
                     "bridge", "vhost-user", "vhost-vdpa")
"""``-netdev help``'s order in QEMU 7.2 (kvmpy lists the ones it has in this order)."""


def netdev_help() -> str:
    from kvmpy.net.base import netdev_types

    have = {getattr(info.cls, "type_label", "") for info in netdev_types()}
    return "\n".join(["Available netdev backend types:",
                      *(t for t in QEMU_NETDEV_TYPES if t in have)])


def _known_type(kind: str) -> bool:
    from kvmpy.net.base import netdev_class

    return netdev_class(kind) is not None


def _check_type(kind: str | None) -> str:
    if kind is None or kind == "":
        raise ConfigError("Parameter 'type' is missing")
    if kind not in QEMU_NETDEV_TYPES:
        raise ConfigError(f"Parameter 'type' does not accept value '{kind}'")
    if not _known_type(kind):
        from kvmpy.errors import NotBuiltError

        raise NotBuiltError(f"network backend '{kind}' is not built in kvmpy")
    return kind


def _spec(kind: str, netdev_id: str, parsed: keyval.ParsedOptions, text: str,
          drop: tuple[str, ...] = ()) -> OptionSpec:
    props = {k: v for k, v in parsed.props.items() if k not in ("type", "id", *drop)}
    spec = OptionSpec(kind, {"id": netdev_id, **props}, text)
    spec.lists = {key: parsed.values(key) for key in LIST_KEYS if key in parsed.props}
    return spec


def _parse(arg: str) -> tuple[keyval.ParsedOptions, str | None, bool]:
    """The option, its ``type`` and whether help was asked for (``help``, ``type=help``)."""
    parsed = keyval.parse(arg, "type", qemuopts=True)
    kind = parsed.props.get("type")
    return parsed, kind, parsed.help or (kind is not None and keyval.is_help(kind))


def add_netdev(config: VMConfig, arg: str, text: str) -> str | None:
    """``-netdev``: returns help text when help was asked for."""
    parsed, kind, wants_help = _parse(arg)
    if wants_help:
        return netdev_help()
    _check_type(kind)
    netdev_id = parsed.props.get("id")
    if not netdev_id:
        raise ConfigError("Parameter 'id' is missing")
    if not _IDENTIFIER.match(netdev_id):
        raise ConfigError("Parameter 'id' expects an identifier")
    if any(spec.props["id"] == netdev_id for spec in config.netdevs):
        raise ConfigError(f"Duplicate ID '{netdev_id}' for netdev")
    assert kind is not None
    config.netdevs.append(_spec(kind, netdev_id, parsed, text))
    return None


def add_nic(config: VMConfig, arg: str, text: str) -> str | None:
    """``-nic``: a back-end with an id of its own and the NIC on it."""
    parsed, kind, wants_help = _parse(arg)
    if wants_help:
        return netdev_help()
    if kind == "none":
        return None
    model = parsed.props.get("model", DEFAULT_NIC_MODEL)
    if keyval.is_help(model):
        return nic_model_help()
    _check_type(kind)
    assert kind is not None
    netdev_id = f"__org.qemu.nic{sum(1 for s in config.netdevs if s.text.startswith('-nic'))}"
    config.netdevs.append(_spec(kind, netdev_id, parsed, text, drop=("model", "mac")))
    nic = {"netdev": netdev_id}
    if "mac" in parsed.props:
        nic["mac"] = parsed.props["mac"]
    config.devices.append(OptionSpec(model, nic, text))
    return None


def add_net(config: VMConfig, arg: str, text: str) -> str | None:
    """Legacy ``-net``: NICs and back-ends paired in order at the end (:func:`finish`)."""
    parsed, kind, wants_help = _parse(arg)
    if wants_help:
        return netdev_help()
    if kind == "none":
        return None
    if kind == "nic":
        model = parsed.props.get("model", DEFAULT_NIC_MODEL)
        if keyval.is_help(model):
            return nic_model_help()
        nic = {}
        if "macaddr" in parsed.props:
            nic["mac"] = parsed.props["macaddr"]
        if "netdev" in parsed.props:
            nic["netdev"] = parsed.props["netdev"]
        config.legacy_nics.append(OptionSpec(model, nic, text))
        return None
    _check_type(kind)
    assert kind is not None
    netdev_id = parsed.props.get("id") or f"hub0port{len(config.legacy_netdevs)}"
    config.legacy_netdevs.append(_spec(kind, netdev_id, parsed, text, drop=("vlan", "name")))
    return None


def finish(config: VMConfig) -> None:
    """Pair the legacy ``-net nic`` options with the ``-net TYPE`` back-ends, in order."""
    backends = list(config.legacy_netdevs)
    config.netdevs.extend(backends)
    for nic in config.legacy_nics:
        if "netdev" not in nic.props and backends:
            nic.props["netdev"] = backends.pop(0).props["id"]
        config.devices.append(nic)
    config.legacy_nics.clear()
    config.legacy_netdevs.clear()


def nic_model_help() -> str:
    from kvmpy import qom

    names = [info.name for info in qom.object_class_get_list("device")
             if info.name.startswith("virtio-net")]
    return "\n".join(["Supported NIC models:", *names])
