"""``-fsdev`` and ``-virtfs``: the host directory a 9P server exports.

Options, defaults and error texts follow QEMU 7.2 (``fsdev/qemu-fsdev.c``,
``fsdev/qemu-fsdev-opts.c``, ``hw/9pfs/9p-local.c`` local_parse_opts/local_init, the
``QEMU_OPTION_virtfs`` case of ``softmmu/vl.c``).  Only the ``local`` fsdriver exists here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from kvmpy import keyval
from kvmpy.errors import ConfigError

SECURITY_MODELS = ("passthrough", "mapped-xattr", "mapped-file", "none")
MAPPED_FMODE = 0o600          # QEMU SM_LOCAL_MODE_BITS
MAPPED_DMODE = 0o700          # QEMU SM_LOCAL_DIR_MODE_BITS
MAX_TAG_LEN = 32              # hw/9pfs/9p.h MAX_TAG_LEN (the tag holds at most 31 bytes)

_THROTTLE_KEYS = (
    *(f"throttling.{kind}-{what}{suffix}"
      for kind in ("bps", "iops") for what in ("total", "read", "write")
      for suffix in ("", "-max", "-max-length")),
    "throttling.iops-size")
_COMMON = ("id", "fsdriver", "readonly")
_DRIVER_KEYS = {
    "local": (*_COMMON, "security_model", "path", "writeout", "fmode", "dmode", "multidevs",
              *_THROTTLE_KEYS),
    "synth": _COMMON,
    "proxy": (*_COMMON, "socket", "sock_fd", "writeout"),
}
_FSDEV_KEYS = ("fsdriver", "path", "security_model", "writeout", "readonly", "multidevs",
               "socket", "sock_fd", "fmode", "dmode", "id", *_THROTTLE_KEYS)
_VIRTFS_KEYS = ("fsdriver", "path", "mount_tag", "security_model", "writeout", "readonly",
                "multidevs", "socket", "sock_fd", "fmode", "dmode", "id")
_ID = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")


@dataclass
class FsDev:
    """One ``-fsdev local,...`` (or the fsdev a ``-virtfs`` creates)."""

    id: str
    path: str                      # the shared directory: absolute, an existing directory
    security_model: str            # one of SECURITY_MODELS
    readonly: bool = False
    fmode: int = MAPPED_FMODE      # host mode of files the mapped models create
    dmode: int = MAPPED_DMODE      # host mode of directories the mapped models create
    writeout: str = ""             # "" or "immediate"
    multidevs: str = "warn"        # "remap" | "forbid" | "warn"


def _bool(key: str, value: str) -> bool:
    if value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise ConfigError(f"Parameter '{key}' expects 'on' or 'off'")


def _number(key: str, value: str) -> int:
    text = value.strip()
    try:
        if re.fullmatch(r"0[0-7]*", text):
            number = int(text, 8)
        elif re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            number = int(text, 16)
        elif re.fullmatch(r"[1-9][0-9]*", text):
            number = int(text)
        else:
            raise ValueError(text)
    except ValueError:
        raise ConfigError(f"Parameter '{key}' expects a number") from None
    if number >= 1 << 64:
        raise ConfigError(f"Value '{value}' is too large for parameter '{key}'")
    return number


def _parse(spec: str, keys: tuple[str, ...]) -> dict[str, str]:
    opts = keyval.parse(spec, "fsdriver", qemuopts=True, known_keys=keys)
    props = dict(opts.props)
    # QEMU has no help for these options: "help" is just a value (-fsdev help: "fsdev: No
    # id specified"; security_model=help: "invalid security_model property 'help'").
    if opts.help:
        props.setdefault("fsdriver", "help")
    if opts.help_prop is not None:
        props[opts.help_prop] = "help"
    for key in props:
        if key not in keys:
            raise ConfigError(f"Invalid parameter '{key}'")
    for key in ("fmode", "dmode", "sock_fd"):        # QEMU_OPT_NUMBER: checked when parsed
        if key in props:
            _number(key, props[key])
    if "readonly" in props:
        props["readonly"] = "on" if _bool("readonly", props["readonly"]) else "off"
    return props


def _build(props: dict[str, str]) -> FsDev:
    """qemu_fsdev_add + local_parse_opts + local_init's checks."""
    fsdev_id = props.get("id")
    if not fsdev_id:
        raise ConfigError("fsdev: No id specified")
    if not _ID.match(fsdev_id):
        raise ConfigError("Parameter 'id' expects an identifier")
    driver = props.get("fsdriver")
    if not driver:
        raise ConfigError("fsdev: No fsdriver specified")
    if driver not in _DRIVER_KEYS:
        raise ConfigError(f"fsdev: fsdriver {driver} not found")
    for key in props:
        if key not in _DRIVER_KEYS[driver]:
            raise ConfigError(f"'{key}' is invalid for fsdriver '{driver}'")
    if driver != "local":
        raise ConfigError(f"fsdev: fsdriver {driver} is not supported by kvmpy")
    readonly = props.get("readonly") == "on"
    model = props.get("security_model")
    if model is None:
        raise ConfigError("security_model property not set")
    if model == "mapped":
        model = "mapped-xattr"
    if model not in SECURITY_MODELS:
        raise ConfigError(f"invalid security_model property '{model}'")
    multidevs = props.get("multidevs", "warn")
    if multidevs not in ("remap", "forbid", "warn"):
        raise ConfigError(f"invalid multidevs property '{multidevs}'")
    path = props.get("path")
    if path is None:
        raise ConfigError("path property not set")
    fmode, dmode = MAPPED_FMODE, MAPPED_DMODE
    if model.startswith("mapped"):
        if "fmode" in props:
            fmode = _number("fmode", props["fmode"]) & 0o777
        if "dmode" in props:
            dmode = _number("dmode", props["dmode"]) & 0o777
    else:
        for key in ("fmode", "dmode"):
            if key in props:
                raise ConfigError(f"{key} is only valid for mapped security modes")
    writeout = props.get("writeout", "")
    writeout = "immediate" if writeout == "immediate" else ""
    path = os.path.abspath(path)
    try:
        fd = os.open(path, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot initialize fsdev '{fsdev_id}': failed to open '{path}': "
                          f"{os.strerror(exc.errno or 0)}") from None
    os.close(fd)
    return FsDev(id=fsdev_id, path=path, security_model=model, readonly=readonly,
                 fmode=fmode, dmode=dmode, writeout=writeout, multidevs=multidevs)


def parse_fsdev(spec: str) -> FsDev:
    """The ``-fsdev`` argument text -> FsDev; ConfigError with QEMU's words."""
    return _build(_parse(spec, _FSDEV_KEYS))


def parse_virtfs(spec: str) -> tuple[FsDev, str, str]:
    """The ``-virtfs`` argument text -> (fsdev, mount_tag, fsdev id the device refers to).

    As QEMU, the fsdev's id is ``id=`` if given, else the mount tag; the device that QEMU
    adds is ``virtio-9p-pci,fsdev=<id>,mount_tag=<tag>``."""
    props = _parse(spec, _VIRTFS_KEYS)
    if not props.get("fsdriver") or "mount_tag" not in props:
        raise ConfigError("Usage: -virtfs fsdriver,mount_tag=tag")
    tag = props.pop("mount_tag")
    props.pop("fmode", None)          # vl.c copies neither fmode nor dmode to the fsdev
    props.pop("dmode", None)
    props.setdefault("id", tag)
    if not _ID.match(props["id"]):
        raise ConfigError(f"duplicate or invalid fsdev id: {tag}")
    props.setdefault("readonly", "off")
    fsdev = _build(props)
    if len(tag.encode()) > MAX_TAG_LEN - 1:
        raise ConfigError(f"mount tag '{tag}' ({len(tag.encode())} bytes) is longer than "
                          f"maximum ({MAX_TAG_LEN - 1} bytes)")
    return fsdev, tag, fsdev.id
