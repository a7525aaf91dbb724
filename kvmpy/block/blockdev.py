"""``-blockdev``: block node graphs in QEMU 7.2's syntax, JSON or dotted keyval.

    -blockdev driver=file,node-name=f0,filename=disk.qcow2
    -blockdev driver=qcow2,node-name=d0,file=f0
    -blockdev '{"driver":"qcow2","node-name":"d0","file":{"driver":"file","filename":"x"}}'
    -device virtio-blk-pci,drive=d0

Drivers: ``file`` (the protocol node: a host file), ``raw`` and ``qcow2`` (format nodes over a
``file`` child given inline or by node name).  A qcow2 node's ``backing`` is the name of
another format node, ``null`` (``backing=`` in keyval: no backing file, whatever the header
says), or absent (the
header's backing file, as with ``-drive``).  The options libvirt passes that change nothing
here (``auto-read-only``, ``discard``, ``cache``, ``detect-zeroes``, ...) are accepted.
Options are checked when given, with QEMU's messages; nodes are opened when a device uses
them.
"""

from __future__ import annotations

import json
from typing import Any

from kvmpy import keyval
from kvmpy.block.base import BlockImage
from kvmpy.block.drive import OTHER_FORMATS, open_image
from kvmpy.block.qcow2 import Qcow2Image
from kvmpy.block.raw import RawImage
from kvmpy.errors import ConfigError

_COMMON = {"driver", "node-name", "read-only", "auto-read-only", "discard", "cache",
           "detect-zeroes", "force-share"}
KEYS: dict[str, set[str]] = {
    "file": _COMMON | {"filename", "aio", "aio-max-batch", "locking", "drop-cache",
                       "x-check-cache-dropped", "pr-manager"},
    "raw": _COMMON | {"file"},
    "qcow2": _COMMON | {"file", "backing", "lazy-refcounts", "pass-discard-request",
                        "pass-discard-snapshot", "pass-discard-other", "overlap-check",
                        "cache-size", "l2-cache-size", "l2-cache-entry-size",
                        "refcount-cache-size", "cache-clean-interval"},
}
QEMU_DRIVERS = {*OTHER_FORMATS, "host_device", "host_cdrom", "nbd", "iscsi", "nfs", "ssh",
                "http", "https", "null-co", "null-aio", "throttle", "blkdebug", "copy-on-read",
                "quorum", "replication", "compress", "preallocate", "snapshot-access",
                "copy-before-write", "blklogwrites", "blkverify", "rbd", "gluster", "ftp"}
MAX_DEPTH = 64


def parse_blockdev(text: str) -> dict[str, Any]:
    """The option's node tree (nested dicts), checked; raises ConfigError."""
    if text.lstrip().startswith("{"):
        try:
            tree = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError("JSON parse error, " + _json_reason(exc)) from exc
        if not isinstance(tree, dict):
            raise ConfigError("Invalid parameter type, expected 'object'")
    else:
        tree = {}
        for key, value in keyval.parse(text).props.items():
            *path, last = key.split(".")
            node = tree
            for part in path:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ConfigError(f"Parameter '{part}' does not take members")
                node = child
            node[last] = value
    _check(tree, top=True)
    return tree


def _json_reason(exc: json.JSONDecodeError) -> str:
    return "premature EOI" if exc.pos >= len(exc.doc.rstrip()) else exc.msg


def _check(node: dict[str, Any], top: bool) -> None:
    driver = node.get("driver")
    if driver is None:
        raise ConfigError("Parameter 'driver' is missing")
    if not isinstance(driver, str) or (driver not in KEYS and driver not in QEMU_DRIVERS):
        raise ConfigError(f"Parameter 'driver' does not accept value '{driver}'")
    if driver not in KEYS:
        raise ConfigError(f"block driver '{driver}' is not supported by kvmpy "
                          "(file, raw, qcow2)")
    for key in node:
        if key not in KEYS[driver]:
            raise ConfigError(f"Parameter '{key}' is unexpected")
    if top and "node-name" not in node:
        raise ConfigError("A top-level node-name is required for -blockdev")
    if driver == "file" and not isinstance(node.get("filename"), str):
        raise ConfigError("Parameter 'filename' is missing")
    if driver in ("raw", "qcow2"):
        child = node.get("file")
        if child is None:
            raise ConfigError("Parameter 'file' is missing")
        if isinstance(child, dict):
            _check(child, top=False)
        elif not isinstance(child, str):
            raise ConfigError("Invalid parameter type for 'file', expected: BlockdevRef")
    backing = node.get("backing")
    if isinstance(backing, dict):
        _check(backing, top=False)
    _flag(node, "read-only")


def _flag(node: dict[str, Any], key: str) -> bool:
    value = node.get(key, False)
    if isinstance(value, bool):
        return value
    if value in ("on", "true"):
        return True
    if value in ("off", "false"):
        return False
    raise ConfigError(f"Parameter '{key}' expects 'on' or 'off'")


class BlockGraph:
    """The ``-blockdev`` nodes by node name."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def add(self, text: str) -> None:
        tree = parse_blockdev(text)
        names: list[str] = []
        _node_names(tree, names)
        for name in names:
            if name in self.nodes or names.count(name) > 1:
                raise ConfigError(f"Duplicate nodes with node-name='{name}'")
        _register(tree, self.nodes)

    def open(self, name: str) -> BlockImage:
        """The image a device with ``drive=name`` uses."""
        return self._open(self.nodes[name], False, 0)

    def _resolve(self, ref: Any) -> dict[str, Any]:
        if isinstance(ref, dict):
            return ref
        node = self.nodes.get(ref)
        if node is None:
            raise ConfigError(f"Cannot find device='{ref}' nor node-name='{ref}'")
        return node

    def _open(self, node: dict[str, Any], read_only: bool, depth: int) -> BlockImage:
        if depth > MAX_DEPTH:
            raise ConfigError(f"-blockdev: node graph deeper than {MAX_DEPTH} (a loop?)")
        read_only = read_only or _flag(node, "read-only")
        driver = node["driver"]
        if driver == "file":
            return RawImage(str(node["filename"]), read_only)
        child = self._resolve(node["file"])
        if child["driver"] != "file":
            raise ConfigError(f"-blockdev: the 'file' child of a {driver} node must be a "
                              "'file' node in kvmpy")
        path = str(child["filename"])
        read_only = read_only or _flag(child, "read-only")
        if driver == "raw":
            return RawImage(path, read_only)
        locking = child.get("locking", "auto") != "off"
        share = _flag(node, "force-share")
        if "backing" not in node:
            return open_image(path, "qcow2", read_only, locking=locking, force_share=share)
        backing_ref = node["backing"] or None  # keyval writes null as an empty value

        def backing(_name: str, _fmt: str | None) -> BlockImage | None:
            if backing_ref is None:
                return None
            return self._open(self._resolve(backing_ref), True, depth + 1)
        return Qcow2Image(path, read_only, backing, always_call_backing=True, locking=locking,
                          force_share=share)


def _node_names(tree: dict[str, Any], out: list[str]) -> None:
    if "node-name" in tree:
        out.append(str(tree["node-name"]))
    for key in ("file", "backing"):
        if isinstance(tree.get(key), dict):
            _node_names(tree[key], out)


def _register(tree: dict[str, Any], nodes: dict[str, dict[str, Any]]) -> None:
    if "node-name" in tree:
        nodes[str(tree["node-name"])] = tree
    for key in ("file", "backing"):
        if isinstance(tree.get(key), dict):
            _register(tree[key], nodes)


def open_blockdev(texts: list[str], name: str) -> BlockImage | None:
    """Open node ``name`` of the ``-blockdev`` options ``texts`` (None: no such node); an
    error names the option that made the node."""
    graph = BlockGraph()
    owner: dict[str, str] = {}
    for text in texts:
        graph.add(text)
        for node in graph.nodes:
            owner.setdefault(node, text)
    if name not in graph.nodes:
        return None
    try:
        return graph.open(name)
    except ConfigError as exc:
        exc.option = exc.option or f"-blockdev {owner[name]}"
        raise
