"""Phase 1 output: one typed description of a VM, built by the command line or the library."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmpy.fs.fsdev import FsDev
    from kvmpy.objects import UserObject


@dataclass
class OptionSpec:
    """A keyval option value: ``driver,prop=val,...`` split into the driver and its properties.

    ``text`` is the option as the user wrote it, for error messages (``-device foo,x=1``).
    """

    driver: str
    props: dict[str, str] = field(default_factory=dict)
    text: str = ""
    lists: dict[str, list[str]] = field(default_factory=dict)
    """Every value of the list-typed properties given more than once (``hostfwd``)."""


@dataclass
class SmpConfig:
    cpus: int = 1
    maxcpus: int | None = None
    sockets: int | None = None
    cores: int | None = None
    threads: int | None = None


@dataclass
class VMConfig:
    """Everything the user asked for, before any machine exists.

    Paths are as given; files are opened in board init. ``None`` means "the machine's default".
    """

    machine: str | None = None
    machine_props: dict[str, str] = field(default_factory=dict)
    accels: list[OptionSpec] = field(default_factory=list)
    """``-accel`` options in fallback order; empty means the default (kvm, then tcg)."""
    cpu: str | None = None
    cpu_props: dict[str, str] = field(default_factory=dict)
    smp: SmpConfig = field(default_factory=SmpConfig)
    ram_size: int | None = None
    bios: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    append: str | None = None
    dtb: str | None = None
    nographic: bool = False
    display: str | None = None
    serial: list[str] = field(default_factory=list)
    monitor: list[str] = field(default_factory=list)
    qmp: list[tuple[str, bool]] = field(default_factory=list)
    """``-qmp``/``-qmp-pretty`` chardev specs with their pretty flag."""
    mon: list[OptionSpec] = field(default_factory=list)
    chardevs: list[OptionSpec] = field(default_factory=list)
    devices: list[OptionSpec] = field(default_factory=list)
    start_paused: bool = False
    incoming: str | None = None
    """``-incoming``: the URI an incoming migration arrives on, or ``defer``."""
    gdb: str | None = None
    log_items: list[str] = field(default_factory=list)
    log_file: str | None = None
    no_reboot: bool = False
    no_shutdown: bool = False
    name: str | None = None
    pidfile: str | None = None
    daemonize: bool = False
    icount_shift: int | None = None
    drives: list[OptionSpec] = field(default_factory=list)
    """``-drive`` options (``driver`` is the ``id``; ``props`` hold every key, ``id`` too)."""
    snapshot: bool = False
    blockdevs: list[str] = field(default_factory=list)
    """``-blockdev`` options as given (JSON or keyval), checked by the parser."""
    """``-snapshot``: every drive's writes go to a temporary overlay."""
    netdevs: list[OptionSpec] = field(default_factory=list)
    """Network back-ends (``driver`` is the type, ``user``; ``props`` hold ``id`` and the
    rest), from ``-netdev``, ``-nic`` and ``-net``."""
    fsdevs: dict[str, FsDev] = field(default_factory=dict)
    """Exported host directories by id (``-fsdev``, and the one each ``-virtfs`` makes)."""
    legacy_nics: list[OptionSpec] = field(default_factory=list)
    legacy_netdevs: list[OptionSpec] = field(default_factory=list)
    """``-net nic`` and ``-net TYPE`` until the command line ends and they are paired."""
    objects: dict[str, UserObject] = field(default_factory=dict)
    """``-object`` instances by id (secrets, memory backends, random sources)."""
    uuid: str | None = None
    """``-uuid``: the VM's UUID (``query-uuid``), canonical lower-case form."""
    rtc_base: str = "utc"
    """``-rtc base=utc|localtime|DATE``: what the RTC starts from."""
    msg_timestamp: bool = False
    """``-msg timestamp=on``: error and notice lines start with the time."""
    sandbox: dict[str, str] | None = None
    """``-sandbox on,...``: the seccomp filter's options (:mod:`kvmpy.sandbox`); None: off."""
