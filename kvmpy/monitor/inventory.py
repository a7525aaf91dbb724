"""QMP queries of what a running VM is made of: chardevs, ``-device`` ids, block devices and the
UUID.

These are the queries a management tool sends while it takes over a VM (libvirt at start:
``query-chardev`` for the pty of a console, ``qom-list /machine/peripheral``,
``query-block``, ``query-named-block-nodes``, ``query-blockstats``); every answer comes from the
live objects.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kvmpy.errors import KvmpyError

if TYPE_CHECKING:
    from kvmpy.system import System

NULL_UUID = "00000000-0000-0000-0000-000000000000"


def query_chardev(system: System) -> list[dict[str, Any]]:
    return [{"frontend-open": chardev.connected,
             "filename": str(getattr(chardev, "filename", type(chardev).type_name)),
             "label": label} for label, chardev in system.chardevs.items()]


def _plugged(system: System) -> Iterator[tuple[str, Any]]:
    """(id or "", device) of each ``-device`` (and ``-drive if=virtio``) in creation order."""
    from kvmpy.hw.qdev import device_specs

    plugged = list(getattr(system.machine, "plugged", ()))
    specs = device_specs(system.config) if plugged else []
    for spec, device in zip(specs, plugged, strict=False):
        yield spec.props.get("id", ""), device


def _peripherals(system: System) -> Iterator[tuple[str, Any]]:
    """(id, device) of each ``-device`` given an id."""
    for dev_id, device in _plugged(system):
        if dev_id:
            yield dev_id, device


def qom_list(system: System, path: str) -> list[dict[str, Any]]:
    if path in ("/machine/peripheral", "/machine/peripheral/"):
        return [{"name": "type", "type": "string"},
                *({"name": dev_id, "type": f"child<{device.type_name}>"}
                  for dev_id, device in _peripherals(system))]
    if path in ("/", ""):
        return [{"name": "type", "type": "string"}, {"name": "machine", "type": "child<"
                 f"{type(system.machine).type_name if system.machine else 'container'}>"},
                {"name": "chardevs", "type": "child<container>"},
                {"name": "objects", "type": "child<container>"}]
    if path == "/machine":
        return [{"name": "type", "type": "string"},
                {"name": "peripheral", "type": "child<container>"},
                {"name": "peripheral-anon", "type": "child<container>"}]
    if path.startswith("/machine/peripheral/"):
        wanted = path[len("/machine/peripheral/"):].rstrip("/")
        for dev_id, device in _peripherals(system):
            if dev_id == wanted:
                return [{"name": "type", "type": "string"},
                        *({"name": prop.name, "type": "str"}
                          for prop in _properties(device))]
    raise KvmpyError(f"Device '{path}' not found", )


def _properties(device: Any) -> list[Any]:
    from kvmpy import qom

    info = qom.type_info(device.type_name)
    return [] if info is None else list(info.properties.values())


def _disks(system: System) -> Iterator[tuple[str, Any, Any]]:
    """(qdev, device, image) of each virtio-blk."""
    for index, (dev_id, device) in enumerate(_plugged(system)):
        inner = device if hasattr(device, "image") else getattr(device, "device", None)
        image = getattr(inner, "image", None)
        if inner is None or image is None:
            continue
        if not dev_id:
            qdev = f"/machine/peripheral-anon/device[{index}]"
        elif inner is device:
            qdev = dev_id
        else:
            qdev = f"/machine/peripheral/{dev_id}/virtio-backend"
        yield qdev, inner, image


def _format(image: Any) -> str:
    return "qcow2" if type(image).__name__.lower().startswith("qcow2") else "raw"


def _image_info(image: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"virtual-size": image.size, "filename": image.path,
                            "format": _format(image)}
    with contextlib.suppress(OSError):
        info["actual-size"] = os.stat(image.path).st_blocks * 512
    info["dirty-flag"] = False
    return info


def _inserted(device: Any, image: Any) -> dict[str, Any]:
    node = getattr(device, "drive", "") or ""
    return {"iops_rd": 0, "detect_zeroes": "off", "image": _image_info(image), "iops_wr": 0,
            "ro": bool(image.read_only), "node-name": node, "backing_file_depth": 0,
            "drv": _format(image), "iops": 0, "bps_wr": 0, "write_threshold": 0,
            "encrypted": False, "bps": 0, "bps_rd": 0,
            "cache": {"no-flush": False, "direct": False, "writeback": True},
            "file": image.path}


def query_block(system: System) -> list[dict[str, Any]]:
    return [{"io-status": "ok", "device": "", "locked": False, "removable": False,
             "inserted": _inserted(device, image), "qdev": qdev, "type": "unknown"}
            for qdev, device, image in _disks(system)]


def query_named_block_nodes(system: System) -> list[dict[str, Any]]:
    return [_inserted(device, image) for _, device, image in _disks(system)]


def query_blockstats(system: System) -> list[dict[str, Any]]:
    out = []
    for qdev, device, _image in _disks(system):
        node = getattr(device, "drive", "") or ""
        out.append({"device": "", "node-name": node, "qdev": qdev,
                    "stats": {"rd_bytes": 0, "wr_bytes": 0, "rd_operations": 0,
                              "wr_operations": 0, "flush_operations": 0,
                              "rd_total_time_ns": 0, "wr_total_time_ns": 0,
                              "flush_total_time_ns": 0, "wr_highest_offset": 0,
                              "invalid_rd_operations": 0, "invalid_wr_operations": 0,
                              "failed_rd_operations": 0, "failed_wr_operations": 0,
                              "account_invalid": False, "account_failed": False,
                              "idle_time_ns": 0, "unmap_operations": 0,
                              "unmap_bytes": 0, "timed_stats": []}})
    return out


def query_uuid(system: System) -> dict[str, Any]:
    return {"UUID": system.config.uuid or NULL_UUID}
