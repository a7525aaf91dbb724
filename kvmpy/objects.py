"""``-object``: user-creatable objects, QEMU's ``qom-type`` list for what kvmpy has.

Written ``TYPE,id=ID,prop=value`` (libvirt 9.0) or as JSON ``{"qom-type": ..., "id": ...}``
(libvirt 11.x), checked with QEMU 7.2's wording:

* ``secret`` (``data`` or ``file``, ``format=raw|base64``): read at once, as QEMU does;
* ``memory-backend-ram``, ``-file``, ``-memfd``: guest RAM for ``-machine memory-backend=ID``
  (``-file`` and ``-memfd`` RAM is a mapping of the file or memfd, shared with ``share=on``);
* ``rng-random`` (``filename``, default ``/dev/urandom``, opened at once) and ``rng-builtin``:
  entropy for ``virtio-rng-*,rng=ID``.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from kvmpy import keyval, qom
from kvmpy.errors import ConfigError

_BOOL, _SIZE, _STR, _INT = "bool", "size", "str", "int"
_MEMORY_COMMON = {"size": _SIZE, "share": _BOOL, "prealloc": _BOOL, "merge": _BOOL,
                  "dump": _BOOL, "policy": _STR, "host-nodes": _STR, "prealloc-threads": _INT,
                  "reserve": _BOOL, "x-use-canonical-path-for-ramblock-id": _BOOL}

OBJECT_TYPES: dict[str, dict[str, str]] = {
    "secret": {"data": _STR, "file": _STR, "format": _STR, "keyid": _STR, "iv": _STR,
               "loaded": _BOOL},
    "memory-backend-ram": dict(_MEMORY_COMMON),
    "memory-backend-file": {**_MEMORY_COMMON, "mem-path": _STR, "align": _SIZE,
                            "discard-data": _BOOL, "pmem": _BOOL, "readonly": _BOOL},
    "memory-backend-memfd": {**_MEMORY_COMMON, "hugetlb": _BOOL, "hugetlbsize": _SIZE,
                             "seal": _BOOL},
    "rng-random": {"filename": _STR, "opened": _BOOL},
    "rng-builtin": {"opened": _BOOL},
}
"""Each creatable type and its properties (QEMU 7.2's, by QAPI type)."""

PARENTS = {"secret": "secret_common", "memory-backend-ram": "memory-backend",
           "memory-backend-file": "memory-backend", "memory-backend-memfd": "memory-backend",
           "rng-random": "rng-backend", "rng-builtin": "rng-backend"}


@dataclass
class UserObject:
    """One ``-object``: its type, id and typed properties."""

    qom_type: str
    id: str
    props: dict[str, Any] = field(default_factory=dict)
    value: bytes | None = None
    """A secret's bytes."""

    @property
    def size(self) -> int:
        return int(self.props.get("size", 0))


def parse_object(text: str) -> UserObject:
    """``-object TEXT`` in either form -> a checked object (files read and opened)."""
    if text.lstrip().startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError:
            raise ConfigError("JSON parse error, expecting value") from None
        if not isinstance(raw, dict):
            raise ConfigError("Invalid parameter type, expected: object")
        return _build(dict(raw), json_form=True)
    parsed = keyval.parse(text, "qom-type", qemuopts=True)
    return _build(dict(parsed.props), json_form=False)


def _build(args: dict[str, Any], json_form: bool) -> UserObject:
    qom_type = args.pop("qom-type", None)
    if qom_type is None:
        raise ConfigError("Parameter 'qom-type' is missing")
    if qom_type not in OBJECT_TYPES:
        raise ConfigError(f"Parameter 'qom-type' does not accept value '{qom_type}'")
    object_id = args.pop("id", None)
    if object_id is None:
        raise ConfigError("Parameter 'id' is missing")
    kinds = OBJECT_TYPES[qom_type]
    props: dict[str, Any] = {}
    for key, value in args.items():
        kind = kinds.get(key)
        if kind is None:
            raise ConfigError(f"Parameter '{key}' is unexpected" if json_form
                              else f"Invalid parameter '{key}'")
        props[key] = _typed(key, kind, value, json_form)
    obj = UserObject(qom_type, str(object_id), props)
    _complete(obj)
    return obj


def _typed(key: str, kind: str, value: Any, json_form: bool) -> Any:
    if json_form:
        expected = {_BOOL: bool, _SIZE: int, _INT: int, _STR: str}[kind]
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            name = {bool: "boolean", int: "integer", str: "string"}[expected]
            raise ConfigError(f"Invalid parameter type for '{key}', expected: {name}")
        return value
    text = str(value)
    if kind == _BOOL:
        return qom.parse_bool(key, text)
    if kind == _SIZE:
        return qom.parse_size(key, text)
    if kind == _INT:
        return qom.parse_int(key, text)
    return text


def _complete(obj: UserObject) -> None:
    """What QEMU does when the object is created: read a secret, check a backend, open a
    random source.  Its errors, as QEMU's, do not repeat the option."""
    props = obj.props
    if obj.qom_type == "secret":
        fmt = props.get("format", "raw")
        if fmt not in ("raw", "base64"):
            raise ConfigError(f"Parameter 'format' does not accept value '{fmt}'", option="")
        if "data" in props and "file" in props:
            raise ConfigError("'data' and 'file' are mutually exclusive", option="")
        if "file" in props:
            try:
                with open(props["file"], "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise ConfigError(f"Unable to read {props['file']}: "
                                  f"{exc.strerror or exc}", option="") from None
        elif "data" in props:
            data = props["data"].encode()
        else:
            raise ConfigError("Either 'file' or 'data' must be provided", option="")
        if fmt == "base64":
            try:
                data = base64.b64decode(data, validate=True)
            except ValueError:
                raise ConfigError("Invalid base64 data", option="") from None
        obj.value = data
    elif obj.qom_type.startswith("memory-backend-"):
        if "size" not in props:
            raise ConfigError("Parameter 'size' is missing")
        if props["size"] == 0:
            raise ConfigError("can't create backend with size 0", option="")
        if obj.qom_type == "memory-backend-file" and not props.get("mem-path"):
            raise ConfigError("Parameter 'mem-path' is missing")
    elif obj.qom_type == "rng-random":
        path = props.setdefault("filename", "/dev/urandom")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"Could not open '{path}': {exc.strerror or exc}",
                              option="") from None


def add_object(objects: dict[str, UserObject], text: str) -> UserObject:
    """Parse ``-object TEXT`` and add it to ``objects`` (ids are unique among objects)."""
    obj = parse_object(text)
    if obj.id in objects:
        raise ConfigError(f"Duplicate ID '{obj.id}' for object")
    objects[obj.id] = obj
    return obj


def ram_backend(objects: dict[str, UserObject], backend_id: str,
                ram_size: int | None) -> int:
    """``-machine memory-backend=ID``: the RAM size it gives (checked against ``-m``)."""
    obj = objects.get(backend_id)
    if obj is None:
        raise ConfigError(f"Memory backend '{backend_id}' not found")
    if not obj.qom_type.startswith("memory-backend-"):
        raise ConfigError("Invalid parameter type for 'memory-backend', expected: "
                          "memory-backend")
    if ram_size is not None and ram_size != obj.size:
        raise ConfigError("Machine memory size does not match the size of the memory "
                          "backend")
    return obj.size


def open_ram_fd(obj: UserObject, region_name: str) -> tuple[int, bool] | None:
    """The file descriptor of a ``memory-backend-file`` or ``-memfd`` sized for its RAM and
    whether to map it shared (None: anonymous RAM), with QEMU 7.2's checks and wording."""
    size = obj.size
    if obj.qom_type == "memory-backend-memfd":
        flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
        if obj.props.get("hugetlb"):
            flags |= os.MFD_HUGETLB
        try:
            fd = os.memfd_create("memory-backend-memfd", flags)
        except OSError as exc:
            raise ConfigError(f"failed to create memfd with flags 0x{flags:x}: "
                              f"{exc.strerror}") from None
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"failed to resize memfd to {size}: {exc.strerror}") from None
        if obj.props.get("seal", True):
            seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
            try:
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            except OSError as exc:
                os.close(fd)
                raise ConfigError(f"failed to add seals 0x{seals:x}: {exc.strerror}") from None
        return fd, bool(obj.props.get("share", True))
    if obj.qom_type != "memory-backend-file":
        return None
    path = str(obj.props["mem-path"])
    readonly = bool(obj.props.get("readonly"))
    created = False
    while True:
        try:
            fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
            break
        except IsADirectoryError:
            safe = region_name.replace("/", "_")
            try:
                fd, tmp = tempfile.mkstemp(prefix=f"qemu_back_mem.{safe}.", dir=path)
            except OSError as exc:
                err = exc
            else:
                os.unlink(tmp)
                break
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                created = True
                break
            except OSError as exc:
                err = exc
        except OSError as exc:
            err = exc
        if err.errno not in (errno.EEXIST, errno.EINTR):
            raise ConfigError(f"can't open backing store {path} for guest RAM: "
                              f"{err.strerror}") from None
    file_size = os.fstat(fd).st_size
    try:
        if 0 < file_size < size:
            raise ConfigError(f"backing store size 0x{file_size:x} does not match 'size' "
                              f"option 0x{size:x}")
        if file_size == 0:
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                raise ConfigError("unable to map backing store for guest RAM: "
                                  f"{exc.strerror}") from None
    except ConfigError:
        os.close(fd)
        if created:
            os.unlink(path)
        raise
    return fd, bool(obj.props.get("share", False))


def type_properties(qom_type: str) -> list[dict[str, Any]]:
    """``qom-list-properties``' answer for one of these types."""
    kinds = OBJECT_TYPES.get(qom_type, {})
    qapi = {_BOOL: "bool", _SIZE: "int", _INT: "int", _STR: "string"}
    return [{"name": "type", "type": "string"}] + [
        {"name": name, "type": qapi[kind]} for name, kind in kinds.items()]
