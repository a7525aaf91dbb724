"""Creating the back-ends of ``config.netdevs`` before board init (QEMU's net_init_clients),
starting them with the main loop and closing them with the VM."""

from __future__ import annotations

from collections.abc import Sequence

from kvmpy.config import OptionSpec
from kvmpy.errors import ConfigError
from kvmpy.log import stderr_line
from kvmpy.net.base import NetBackend, netdev_class

MODERN_TYPES = ("stream", "dgram")


def open_netdevs(specs: Sequence[OptionSpec]) -> dict[str, NetBackend]:
    """One back-end per ``-netdev``/``-nic``/``-net`` (or ``netdev_add``); a configuration
    error names the option it came from, and the back-ends opened so far are closed again."""
    netdevs: dict[str, NetBackend] = {}
    # QEMU 7.2 parses stream and dgram the QAPI way, into a queue it creates first.
    ordered = sorted(specs, key=lambda spec: spec.driver not in MODERN_TYPES)
    try:
        for spec in ordered:
            cls = netdev_class(spec.driver)
            if cls is None:
                raise ConfigError(f"Parameter 'type' does not accept value '{spec.driver}'",
                                  option=spec.text or None)
            netdev_id = spec.props["id"]
            props = {k: v for k, v in spec.props.items() if k != "id"}
            try:
                netdevs[netdev_id] = backend = cls(netdev_id, props, spec.lists)
                if spec.text.startswith("-net "):
                    backend.hub_id = 0  # QEMU joins -net NICs and back-ends through hub 0
            except ConfigError as exc:
                if exc.option is None:
                    exc.option = spec.text or f"-netdev {spec.driver},id={netdev_id}"
                raise
    except BaseException:
        close_netdevs(netdevs)
        raise
    return netdevs


def warn_unconnected(netdevs: dict[str, NetBackend]) -> None:
    """QEMU's warning for a back-end no NIC uses."""
    for netdev_id, backend in netdevs.items():
        if backend.peer is None:
            stderr_line(f"kvmpy: warning: netdev {netdev_id} has no peer")


def close_netdevs(netdevs: dict[str, NetBackend]) -> None:
    for backend in netdevs.values():
        backend.close()
