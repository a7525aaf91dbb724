"""The bundled demo guest: a small Linux 6.1 kernel and a busybox initramfs for ``-M virt``.

Built by ``scripts/build-guest`` from Debian sources and committed here compressed:

* ``Image.xz``: the kernel Image (RISC-V boot header, loads at RAM base + 2 MiB).  QEMU and kvmpy
  load it uncompressed, so :func:`kernel_path` decompresses it once into a per-user cache.
* ``initramfs.cpio.gz``: a gzip newc cpio the kernel unpacks itself; :func:`initrd_path` is the
  packaged file.
* ``config-6.1`` (the kernel's .config) and ``MANIFEST`` (sources, versions, checksums).

The guest's ``/init`` mounts proc, sys and dev, prints :data:`BANNER`, and hands over to busybox
init, which runs a login shell on the console whose prompt is :data:`PROMPT`; ``poweroff`` and
``reboot`` in the guest go through the syscon nodes of the board.  In the background (the prompt
does not wait for it) it brings ``lo`` up and, when the board has a NIC, ``eth0`` by DHCP with
busybox ``udhcpc``: address, default route and ``/etc/resolv.conf`` from the lease, then the line
:data:`DHCP_BOUND` on the console.  With ``-nic user,hostfwd=tcp::8080-:80``, ``httpd -h DIR`` in
the guest answers on the host's port 8080.

The kernel's built-in command line (used when ``-append`` gives none) is ``console=ttyS0``:
the early messages come out of the log buffer when ttyS0 registers, and each line once (hvc0,
the SBI console, stays a tty).  With a virtio-serial device, ``kvmpy-ga --link-ports`` links
every named port as ``/dev/virtio-ports/NAME`` (what udev does elsewhere) and starts the hook
``/etc/virtio-ports/NAME`` of a port when it appears: for ``org.qemu.guest_agent.0`` that is
kvmpy's guest agent, ``/sbin/kvmpy-ga`` (see :mod:`kvmpy.guest_agent`; its log is
``/run/kvmpy-ga.log``).  ``/etc/os-release`` names the guest (``ID=kvmpy``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import lzma
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kvmpy.errors import LoaderError

__all__ = [
    "BANNER",
    "DHCP_BOUND",
    "PROMPT",
    "cache_dir",
    "config_path",
    "description",
    "initrd_path",
    "kernel_path",
    "manifest",
]

PROMPT = "~ # "
"""The guest shell's prompt (busybox ash, ``PS1='\\w \\$ '`` in ``/root``)."""

BANNER = "*** kvmpy guest:"
"""The start of the line ``/init`` prints once proc, sys and dev are mounted."""

DHCP_BOUND = "kvmpy-guest: eth0 "
"""The start of the line printed when ``eth0`` is configured from a DHCP lease, e.g.
``kvmpy-guest: eth0 10.0.2.15/24 via 10.0.2.2`` (``-netdev user,restrict=on`` offers no router:
no ``via``).  It may come before or after the first :data:`PROMPT`."""

GUEST_DIR = Path(__file__).resolve().parent
KERNEL_XZ = "Image.xz"
INITRD = "initramfs.cpio.gz"
CONFIG = "config-6.1"
MANIFEST = "MANIFEST"

_CHUNK = 1 << 20


def _packaged(name: str) -> Path:
    path = GUEST_DIR / name
    if not path.is_file():
        raise LoaderError(
            f"bundled guest: {path} is missing (rebuild it with scripts/build-guest)"
        )
    return path


@functools.cache
def manifest() -> dict[str, str]:
    """The ``key = value`` lines of ``MANIFEST`` (sources, versions, sizes, sha256 sums)."""
    entries: dict[str, str] = {}
    for line in _packaged(MANIFEST).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, value = line.partition(" = ")
        if sep:
            entries[key.strip()] = value.strip()
    for key in ("description", "kernel.sha256", "kernel.size"):
        if key not in entries:
            raise LoaderError(f"bundled guest: MANIFEST has no '{key}' entry")
    return entries


def description() -> str:
    """One line naming the bundled guest, for the "booting the bundled guest" notice."""
    return manifest()["description"]


def config_path() -> Path:
    """The kernel configuration the bundled kernel was built with."""
    return _packaged(CONFIG)


def initrd_path() -> Path:
    """The bundled initramfs (gzip-compressed newc cpio, passed to the kernel as is)."""
    return _packaged(INITRD)


def cache_dir() -> Path:
    """The per-user cache directory: ``$KVMPY_CACHE_DIR``, else ``$XDG_CACHE_HOME/kvmpy``,
    else ``~/.cache/kvmpy``.  Not created here."""
    explicit = os.environ.get("KVMPY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "kvmpy"
    try:
        return Path.home() / ".cache" / "kvmpy"
    except RuntimeError as exc:
        raise LoaderError(
            "bundled guest: no home directory for a cache (set KVMPY_CACHE_DIR)"
        ) from exc


def kernel_path() -> Path:
    """The bundled kernel Image, decompressed on first use into :func:`cache_dir`.

    The file lives in a directory named after its sha256, so different kvmpy versions never
    share one; it is written to a temporary name, checked against ``MANIFEST`` and renamed into
    place, under a lock, so concurrent first uses from several processes are safe and a reader
    never sees a partial file.
    """
    entries = manifest()
    digest = entries["kernel.sha256"]
    size = int(entries["kernel.size"])
    target_dir = cache_dir() / "guests" / digest[:16]
    target = target_dir / "Image"
    if _has_size(target, size):
        return target
    try:
        target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(target_dir / ".lock"):
            if not _has_size(target, size):
                _decompress(_packaged(KERNEL_XZ), target, digest, size)
    except OSError as exc:
        raise LoaderError(
            f"bundled guest: cannot write the kernel to {target_dir}: {exc.strerror or exc} "
            "(set KVMPY_CACHE_DIR to a writable directory)"
        ) from exc
    return target


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _decompress(source: Path, target: Path, digest: str, size: int) -> None:
    sha = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".Image.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, lzma.open(source, "rb") as compressed:
            try:
                while chunk := compressed.read(_CHUNK):
                    sha.update(chunk)
                    out.write(chunk)
            except (lzma.LZMAError, EOFError) as exc:
                raise LoaderError(f"bundled guest: {source} is corrupt: {exc}") from exc
            out.flush()
            os.fsync(out.fileno())
        written = os.stat(tmp_name).st_size
        if written != size or sha.hexdigest() != digest:
            raise LoaderError(
                f"bundled guest: {source.name} does not match MANIFEST "
                f"({written} bytes, sha256 {sha.hexdigest()[:16]}...)"
            )
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
