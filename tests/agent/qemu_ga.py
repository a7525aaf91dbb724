"""A test initramfs whose guest agent is Debian's qemu-ga instead of kvmpy-ga.

The bundled initramfs, then a second cpio: ``qemu-ga`` from Debian 13's riscv64
``qemu-guest-agent`` package with the shared libraries it loads and the dynamic loader, a
``/etc/virtio-ports/org.qemu.guest_agent.0`` hook that starts it on the agent port (replacing
the one that starts kvmpy-ga: the kernel unpacks both archives, the later file wins) and a
``/sbin/shutdown`` for its guest-shutdown.  The packages and their dependency closure come from
``ci/riscv64_userland.py`` (mirror from the system's apt configuration, downloads checked and
cached in ``ci/cache``); the combined initramfs is cached in ``ci/cache/qemu-ga/``.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import stat
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from kvmpy import guests

REPO = Path(__file__).resolve().parents[2]
USERLAND = REPO / "ci" / "riscv64_userland.py"
CACHE = REPO / "ci" / "cache" / "qemu-ga"
PACKAGE = "qemu-guest-agent"
LIB_DIRS = ("usr/lib/riscv64-linux-gnu", "usr/lib")
FORMAT = "2"  # bump when the archive's layout changes

HOOK = b"""#!/bin/sh
# Debian's qemu-ga on the guest agent port ($1), in place of kvmpy-ga.
mkdir -p /run/qemu-ga
exec /usr/sbin/qemu-ga -m virtio-serial -p "$1" -t /run/qemu-ga -f /run/qemu-ga.pid
"""
SHUTDOWN = b"""#!/bin/sh
# qemu-ga's guest-shutdown runs "shutdown -h -P|-H|-r +0 MESSAGE"; busybox has no shutdown.
for arg; do
    case "$arg" in
    -P) exec poweroff -f ;;
    -H) exec halt -f ;;
    -r) exec reboot -f ;;
    esac
done
exit 1
"""


class Unavailable(Exception):
    """qemu-ga cannot be had here (no mirror, no network, no ci/ next to the tests)."""


def userland() -> ModuleType:
    if not USERLAND.is_file():
        raise Unavailable("ci/riscv64_userland.py is not next to the tests")
    spec = importlib.util.spec_from_file_location("riscv64_userland", USERLAND)
    if spec is None or spec.loader is None:
        raise Unavailable(f"cannot load {USERLAND}")
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    return module


def _elf_needs(path: Path) -> tuple[list[str], str | None]:
    """(DT_NEEDED names, PT_INTERP path) of an ELF file."""
    try:
        from elftools.elf.dynamic import DynamicSection
        from elftools.elf.elffile import ELFFile
    except ImportError as exc:
        raise Unavailable("pyelftools is not installed") from exc
    with open(path, "rb") as f:
        elf = ELFFile(f)
        needed: list[str] = []
        interp = None
        for segment in elf.iter_segments():
            if segment["p_type"] == "PT_INTERP":
                interp = segment.get_interp_name()
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                needed += [tag.needed for tag in section.iter_tags() if tag.entry.d_tag
                           == "DT_NEEDED"]
        return needed, interp


def _closure(root: Path, program: str) -> dict[str, Path]:
    """Guest path -> file in ``root`` for the program, its libraries and the loader."""
    files = {program: root / program.lstrip("/")}
    todo = [files[program]]
    while todo:
        needed, interp = _elf_needs(todo.pop())
        if interp and interp not in files:
            files[interp] = (root / interp.lstrip("/")).resolve()
        for name in needed:
            for directory in LIB_DIRS:
                candidate = root / directory / name
                if candidate.exists():
                    guest_path = f"/{directory}/{name}"
                    if guest_path not in files:
                        files[guest_path] = candidate.resolve()
                        todo.append(candidate.resolve())
                    break
            else:
                raise Unavailable(f"{program}: library {name} not found in {PACKAGE}'s closure")
    return files


class Cpio:
    """A newc archive written in memory (owner root, fixed mtime)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes) -> None:
        encoded = name.lstrip("/").encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        self.ino += 1
        self.out.write(b"070701" + b"".join(b"%08X" % v for v in fields) + encoded)
        self.out.write(b"\0" * (-(110 + len(encoded)) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, b"")

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return self.out.getvalue()


def initrd() -> Path:
    """The bundled initramfs plus qemu-ga (gzip members, one after the other)."""
    module = userland()
    try:
        index = module.load_index()
        packages = index.closure([PACKAGE])
        debs = module.fetch_debs(index, packages)
    except (module.UserlandError, OSError) as exc:
        raise Unavailable(f"Debian's {PACKAGE} for riscv64: {exc}") from exc
    bundled = guests.initrd_path().read_bytes()
    key = hashlib.sha256(FORMAT.encode() + bundled + HOOK + SHUTDOWN
                         + "\n".join(sorted(p.name for p in debs)).encode()).hexdigest()[:16]
    target = CACHE / f"initramfs-qemu-ga-{key}.cpio.gz"
    if target.is_file():
        return target
    version = next(p.version for p in packages if p.name == PACKAGE)
    with tempfile.TemporaryDirectory(prefix="qemu-ga-") as tmp:
        root = Path(tmp) / "root"
        module.unpack(debs, root)
        files = _closure(root, "/usr/sbin/qemu-ga")
        cpio = Cpio()
        for directory in ("/lib", "/usr", "/usr/lib", "/usr/lib/riscv64-linux-gnu", "/usr/sbin",
                          "/etc", "/etc/virtio-ports"):
            cpio.directory(directory)
        for guest_path, host_path in sorted(files.items()):
            cpio.file(guest_path, host_path.read_bytes())
        cpio.file("/etc/virtio-ports/org.qemu.guest_agent.0", HOOK)
        cpio.file("/sbin/shutdown", SHUTDOWN)
        cpio.file("/etc/qemu-ga.version", f"{PACKAGE} {version}\n".encode(), 0o644)
        extra = gzip.compress(cpio.finish(), 6, mtime=0)
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(bundled + extra)
    partial.replace(target)
    for old in CACHE.glob("initramfs-qemu-ga-*.cpio.gz"):
        if old != target:
            old.unlink()
    return target


if __name__ == "__main__":
    print(initrd())
