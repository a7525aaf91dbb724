"""Opening a ``-drive``: format probing, backing chains, read-only and ``snapshot=on``.

As QEMU 7.2 does it (block.c): without ``format=`` the first bytes decide (a qcow2 header
makes a qcow2 image; anything else is raw, with QEMU's three-line warning, and a probed raw
image refuses writes that would make its first sector look like a qcow2 header).  A backing
file named relative is found in the directory of the image that names it.  With
``snapshot=on`` (or ``-snapshot``) the image is opened read-only under a temporary qcow2
overlay whose backing file it is; the overlay is deleted at once and its writes are gone when
the VM ends.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Mapping

from kvmpy import log
from kvmpy.block.base import BlockImage
from kvmpy.block.qcow2 import Qcow2Image
from kvmpy.block.qcow2_header import MAGIC, Qcow2Error, create_image
from kvmpy.block.raw import RawImage
from kvmpy.errors import ConfigError
from kvmpy.hostfile import NotAFileError, open_host_file

MAX_CHAIN = 64
"""Backing files deeper than this are refused (a loop is refused as soon as it closes)."""

# Formats QEMU 7.2 has that kvmpy does not; their magic for probing, where they have one.
OTHER_FORMATS: dict[str, bytes | None] = {
    "qcow": None, "vmdk": b"KDMV", "vdi": None, "vhdx": b"vhdxfile", "vpc": b"conectix",
    "qed": b"QED\0", "luks": b"LUKS\xba\xbe", "parallels": b"WithoutFreeSpace",
    "dmg": None, "bochs": None, "cloop": None, "vvfat": None,
}


def probe(path: str) -> str:
    """The format of the image at ``path`` as QEMU's probing names it."""
    try:
        host = open_host_file(path, os.O_RDONLY)
    except NotAFileError as exc:
        raise ConfigError(f"'file' driver requires '{path}' to be a regular file") from exc
    except OSError as exc:
        raise ConfigError(f"Could not open '{path}': {exc.strerror}") from exc
    try:
        head = os.pread(host.fd, 512, 0)
    except OSError as exc:
        raise ConfigError(f"Could not read image for determining its format: "
                          f"{exc.strerror}") from exc
    finally:
        os.close(host.fd)
    if len(head) >= 8 and int.from_bytes(head[:4], "big") == MAGIC:
        return "qcow2" if int.from_bytes(head[4:8], "big") >= 2 else "qcow"
    for name, magic in OTHER_FORMATS.items():
        if magic and head.startswith(magic):
            return name
    return "raw"


class ProbedRawImage(RawImage):
    """A raw image whose format was guessed: a write that would make sector 0 probe as
    something else is refused (EPERM), as QEMU's raw driver does."""

    def writefrom(self, offset: int, buffers: list[memoryview]) -> None:
        if offset < 512:
            first = b"".join(bytes(b) for b in buffers)[:512 - offset]
            sector = bytearray(self.pread(0, 512))
            sector[offset:offset + len(first)] = first
            if int.from_bytes(sector[:4], "big") == MAGIC:
                log.guest_error(f"raw image {self.path}: write to sector 0 refused: it "
                                "would make a probed raw image look like qcow2")
                raise OSError(errno.EPERM, "write to block 0 of a probed raw image")
        super().writefrom(offset, buffers)

    def pwrite(self, offset: int, data: bytes) -> None:
        self.writefrom(offset, [memoryview(data)])


def open_image(path: str, fmt: str | None = None, read_only: bool = False, *,
               chain: tuple[str, ...] = (), warn_probe: bool = True, locking: bool = True,
               force_share: bool = False) -> BlockImage:
    """A :class:`RawImage` or :class:`Qcow2Image` for ``path``; ``fmt`` None probes.
    ``chain`` are the real paths of the images above this one (a backing file)."""
    probed = fmt is None
    if fmt is None:
        fmt = probe(path)
    if fmt == "raw":
        if probed and warn_probe:
            log.stderr_line(f"WARNING: Image format was not specified for '{path}' and "
                            "probing guessed raw.\n"
                            "         Automatically detecting the format is dangerous for "
                            "raw images, write operations on block 0 will be restricted.\n"
                            "         Specify the 'raw' format explicitly to remove the "
                            "restrictions.")
        return (ProbedRawImage if probed else RawImage)(path, read_only)
    if fmt == "qcow2":
        real = os.path.realpath(path)
        if real in chain:
            raise Qcow2Error(f"Backing file chain loops back to '{path}'")
        if len(chain) >= MAX_CHAIN:
            raise Qcow2Error(f"Backing file chain deeper than {MAX_CHAIN} images")

        def backing(name: str, backing_fmt: str | None) -> BlockImage:
            return open_image(name, backing_fmt, True, chain=(*chain, real),
                              warn_probe=False, locking=locking, force_share=force_share)
        return Qcow2Image(path, read_only, backing, locking=locking, force_share=force_share)
    if fmt in OTHER_FORMATS:
        raise ConfigError(f"'{path}': image format '{fmt}' is not supported by kvmpy "
                          "(raw, qcow2)")
    raise ConfigError(f"Unknown driver '{fmt}'")


def open_snapshot(path: str, fmt: str | None) -> Qcow2Image:
    """``snapshot=on``: the image read-only under a temporary qcow2 overlay."""
    base = open_image(path, fmt, True)
    size, base_fmt = base.size, "qcow2" if isinstance(base, Qcow2Image) else "raw"
    base.close()
    tmpdir = os.environ.get("TMPDIR", "/var/tmp")
    try:
        fd, overlay = tempfile.mkstemp(prefix="vl.", suffix=".qcow2", dir=tmpdir)
    except OSError as exc:
        raise ConfigError(f"Could not create temporary overlay in '{tmpdir}': "
                          f"{exc.strerror}") from exc
    os.close(fd)
    try:
        create_image(overlay, size, backing_file=os.path.abspath(path),
                     backing_format=base_fmt)
        return Qcow2Image(overlay, False, lambda name, fmt: open_image(name, fmt, True))
    except OSError as exc:
        raise ConfigError(f"Could not create temporary overlay '{overlay}': "
                          f"{exc.strerror}") from exc
    finally:
        os.unlink(overlay)


def open_drive(props: Mapping[str, str], snapshot: bool = False) -> BlockImage:
    """Open a ``-drive``'s image; ``snapshot`` is the global ``-snapshot``."""
    from kvmpy.qom import parse_bool

    path = props.get("file")
    if not path:
        raise ConfigError(f"drive {props.get('id', '')}: 'file' is required")

    def flag(name: str, default: bool = False) -> bool:
        text = props.get(name)
        return default if text is None else parse_bool(name, text)

    fmt = props.get("format")
    locking = props.get("file.locking", "auto")
    if locking not in ("on", "off", "auto"):
        raise ConfigError(f"invalid parameter value: {locking}")
    force_share = flag("force-share")
    if force_share and not flag("readonly"):
        raise ConfigError("force-share=on can only be used with read-only images")
    if flag("snapshot", snapshot) and not flag("readonly"):
        return open_snapshot(path, fmt)
    return open_image(path, fmt, flag("readonly"), locking=locking != "off",
                      force_share=force_share)
