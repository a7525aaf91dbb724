"""Phase 1, the command line: ``qemu-system-riscv64``'s options into one :class:`VMConfig`.

``kvmpy -M virt -accel kvm -accel tcg -smp 4 -m 1G -kernel Image -append ... -nographic``
means what it means to QEMU 7.2.  Options take the keyval grammar of :mod:`kvmpy.keyval`;
``help`` lists choices, answered from the type registry.  Every user error is one line,
``kvmpy: <option as typed>: <message>``, and exit status 1.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmpy import __version__, keyval, log, qom
from kvmpy.config import OptionSpec, SmpConfig, VMConfig
from kvmpy.errors import ConfigError, KvmpyError, NotBuiltError
from kvmpy.registry_init import load_types

PROG = "kvmpy"
QEMU_VERSION = "7.2"
MiB = 1 << 20

_VERSION_TEXT = (f"kvmpy emulator version {__version__} "
                 f"(qemu-system-riscv64 {QEMU_VERSION} compatible)")

_DISPLAYS_NOT_BUILT = ("gtk", "sdl", "curses", "vnc", "egl-headless", "spice-app", "dbus",
                       "cocoa")
_SMP_KEYS = ("cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads")
_DRIVE_KEYS = frozenset({"file", "if", "format", "id", "readonly", "snapshot", "cache", "aio",
                         "media", "index", "discard", "werror", "rerror", "node-name",
                         "auto-read-only", "bus", "unit"})
_MAX_ICOUNT_SHIFT = 10


@dataclass
class Option:
    """One command-line option: its argument's name (None: a flag) and its ``-h`` text."""

    name: str
    arg: str | None
    help: str
    group: str
    handler: str
    aliases: tuple[str, ...] = ()


_GROUPS = ("Standard options", "Boot Image or Kernel specific", "Character device options",
           "Display options", "Debug/Expert options")

OPTIONS: list[Option] = [
    Option("h", None, "display this help and exit", _GROUPS[0], "help", ("help",)),
    Option("version", None, "display version information and exit", _GROUPS[0], "version"),
    Option("machine", "[type=]name[,prop[=value][,...]]",
           "selects emulated machine ('-machine help' for list)\n"
           "property accel=accel1[:accel2[:...]] selects accelerator\n"
           "(repeated -machine options are merged)", _GROUPS[0], "machine", ("M",)),
    Option("cpu", "cpu", "select CPU ('-cpu help' for list)", _GROUPS[0], "cpu"),
    Option("accel", "[accel=]name[,prop=value[,...]]",
           "select accelerator (kvm, tcg; '-accel help' for list);\n"
           "repeat it to give a fallback order: -accel kvm -accel tcg\n"
           "thread=single|multi (enable multi-threaded TCG)", _GROUPS[0], "accel"),
    Option("enable-kvm", None, "enable KVM full virtualization support (-accel kvm)",
           _GROUPS[0], "enable_kvm"),
    Option("smp", "[[cpus=]n][,maxcpus=maxcpus][,sockets=sockets][,cores=cores][,threads=threads]",
           "set the number of initial CPUs to 'n' [default=1]", _GROUPS[0], "smp"),
    Option("m", "[size=]megs[,slots=n,maxmem=size]",
           "configure guest RAM; size: initial amount of guest memory,\n"
           "a bare number is MiB, optional suffix k, M, G, T, P or E", _GROUPS[0], "memory"),
    Option("name", "string1[,process=string2][,debug-threads=on|off]",
           "set the name of the guest", _GROUPS[0], "name"),
    Option("device", "driver[,prop[=value][,...]]",
           "add device (based on driver); prop=value,... sets driver properties;\n"
           "use '-device help' to print all possible drivers,\n"
           "use '-device driver,help' to print all possible properties", _GROUPS[0], "device"),
    Option("drive", "if=none,id=ID,file=FILE[,format=raw][,readonly=on|off]",
           "use FILE as a drive image for -device virtio-blk-device,drive=ID",
           _GROUPS[0], "drive"),
    Option("nodefaults", None, "don't create default devices (serial port, monitor)",
           _GROUPS[0], "nodefaults"),
    Option("bios", "file", "set the firmware: default, none or a file (also -M firmware=)",
           _GROUPS[1], "bios"),
    Option("kernel", "bzImage", "use 'bzImage' as kernel image", _GROUPS[1], "kernel"),
    Option("append", "cmdline", "use 'cmdline' as kernel command line", _GROUPS[1], "append"),
    Option("initrd", "file", "use 'file' as initial ram disk", _GROUPS[1], "initrd"),
    Option("dtb", "file", "use 'file' as device tree image", _GROUPS[1], "dtb"),
    Option("chardev", "backend,id=id[,mux=on|off][,logfile=PATH][,...]",
           "backends: null, stdio[,signal=on|off], file,path=PATH[,append=on],\n"
           "pty, socket,path=PATH|host=HOST,port=PORT[,server=on][,wait=off],\n"
           "ringbuf[,size=SIZE], vc ('-chardev help' for list)", _GROUPS[2], "chardev"),
    Option("serial", "dev", "redirect the serial port to char device 'dev': stdio, mon:stdio,\n"
           "null, pty, file:PATH, unix:PATH[,server=on][,wait=off],\n"
           "tcp:HOST:PORT[,server=on][,wait=off], chardev:ID, none", _GROUPS[2], "serial"),
    Option("monitor", "dev", "redirect the human monitor to char device 'dev'", _GROUPS[2],
           "monitor"),
    Option("qmp", "dev", "like -monitor but opens in 'control' mode (QMP)", _GROUPS[2], "qmp"),
    Option("qmp-pretty", "dev", "like -qmp but uses pretty JSON formatting", _GROUPS[2],
           "qmp_pretty"),
    Option("mon", "[chardev=]name[,mode=readline|control][,pretty=on|off]",
           "a monitor on the chardev 'name'", _GROUPS[2], "mon"),
    Option("parallel", "dev", "the virt board has no parallel port: only 'none'", _GROUPS[2],
           "parallel"),
    Option("nographic", None, "disable graphical output and redirect serial I/Os to console\n"
           "(serial and monitor share stdio: Ctrl-A h for help)", _GROUPS[3], "nographic"),
    Option("display", "none", "select display backend type; kvmpy has no graphical display",
           _GROUPS[3], "display"),
    Option("vga", "none", "no VGA card ('none' only)", _GROUPS[3], "vga"),
    Option("S", None, "freeze CPU at startup (use 'c' to start execution)", _GROUPS[4],
           "start_paused"),
    Option("s", None, "shorthand for -gdb tcp::1234", _GROUPS[4], "gdb_default"),
    Option("gdb", "dev", "accept gdb connection on 'dev'", _GROUPS[4], "gdb"),
    Option("d", "item1,...", "enable logging of specified items (use '-d help' for a list)",
           _GROUPS[4], "log_items"),
    Option("D", "logfile", "output log to logfile (default stderr)", _GROUPS[4], "log_file"),
    Option("no-reboot", None, "exit instead of rebooting", _GROUPS[4], "no_reboot"),
    Option("no-shutdown", None, "stop before shutdown", _GROUPS[4], "no_shutdown"),
    Option("pidfile", "file", "write PID to 'file'", _GROUPS[4], "pidfile"),
    Option("daemonize", None, "daemonize kvmpy after initializing", _GROUPS[4], "daemonize"),
    Option("icount", "[shift=N][,align=on|off][,sleep=on|off]",
           "count instructions; virtual time advances 2^N ns per instruction", _GROUPS[4],
           "icount"),
]

# QEMU options that exist but whose feature kvmpy does not have: name -> takes an argument.
NOT_BUILT: dict[str, bool] = {
    "netdev": True, "nic": True, "net": True, "blockdev": True, "hda": True, "hdb": True,
    "hdc": True, "hdd": True, "cdrom": True, "fda": True, "fdb": True, "mtdblock": True,
    "sd": True, "pflash": True, "snapshot": False, "fsdev": True, "virtfs": True,
    "object": True, "global": True, "audiodev": True, "audio": True, "usb": False,
    "usbdevice": True, "boot": True, "rtc": True, "L": True, "action": True, "incoming": True,
    "loadvm": True, "trace": True, "plugin": True, "semihosting": False,
    "semihosting-config": True, "watchdog": True, "watchdog-action": True, "k": True,
    "echr": True, "chroot": True, "runas": True, "run-with": True, "numa": True,
    "add-fd": True, "set": True, "mem-path": True, "mem-prealloc": False, "overcommit": True,
    "readconfig": True, "writeconfig": True, "no-user-config": False, "nodefconfig": False,
    "msg": True, "dump-vmstate": True, "compat": True, "iscsi": True, "spice": True,
    "vnc": True, "full-screen": False, "portrait": False, "rotate": True, "g": True,
    "sandbox": True, "tpmdev": True, "seed": True, "only-migratable": False, "preconfig": False,
    "device-tree": True, "xen-domid": True, "singlestep": False, "bt": True, "smbios": True,
    "fw_cfg": True, "kernel-irqchip": True, "realtime": True, "mem-merge": False,
}

_BY_NAME: dict[str, Option] = {}
for _opt in OPTIONS:
    _BY_NAME[_opt.name] = _opt
    for _alias in _opt.aliases:
        _BY_NAME[_alias] = _opt


def usage() -> str:
    """``kvmpy -h``: QEMU's layout, generated from the option table."""
    lines = [_VERSION_TEXT,
             f"usage: {PROG} [options]", "",
             "A QEMU-compatible RISC-V virtual machine monitor (qemu-system-riscv64 options).",
             ""]
    for group in _GROUPS:
        lines.append(f"{group}:")
        for option in (o for o in OPTIONS if o.group == group):
            names = " or ".join(f"-{n}" for n in (option.name, *option.aliases)) \
                if option.name == "h" else f"-{option.name}"
            head = f"{names} {option.arg}" if option.arg else names
            text = option.help.split("\n")
            if len(head) < 16:
                lines.append(f"{head:<16}{text[0]}")
            else:
                lines.append(head)
                lines.append(f"{'':<16}{text[0]}")
            lines.extend(f"{'':<16}{more}" for more in text[1:])
        lines.append("")
    lines.append("During emulation with -nographic, Ctrl-A h lists the console keys:")
    lines.append("Ctrl-A x exits, Ctrl-A c switches between the console and the monitor.")
    return "\n".join(lines)


def log_help() -> str:
    return "\n".join(["Log items (comma separated):",
                      *(f"{name:<15} {desc}" for name, desc in log.LOG_ITEMS.items())])


@dataclass
class CommandLine:
    """What the command line asked for: a VM configuration, or text to print and a status."""

    config: VMConfig
    output: str | None = None
    status: int = 0
    default_serial: bool = True
    default_monitor: bool = True
    help_requests: list[Callable[[], str]] = field(default_factory=list)


class _Parser:
    """Walks argv like QEMU's ``qemu_init``: each option's handler fills the configuration."""

    def __init__(self) -> None:
        self.config = VMConfig()
        self.result = CommandLine(self.config)
        self.machine_help: str | None = None  # "" = the list, else a property name or "*"
        self.mon_options: list[str] = []

    # -- the walk ---------------------------------------------------------------------------

    def parse(self, argv: list[str]) -> CommandLine:
        index = 0
        while index < len(argv):
            word = argv[index]
            index += 1
            if not word.startswith("-") or word == "-":
                raise NotBuiltError("disk images are not built in kvmpy (use -drive if=none "
                                    "with -device virtio-blk-device)", option=word)
            name = word[2:] if word.startswith("--") else word[1:]
            option = _BY_NAME.get(name)
            if option is None:
                if name in NOT_BUILT:
                    arg = ""
                    if NOT_BUILT[name]:
                        if index >= len(argv):
                            raise ConfigError("requires an argument", option=word)
                        arg = argv[index]
                        index += 1
                    typed = f"{word} {arg}" if arg else word
                    raise NotBuiltError(f"{word} is not built in this version of kvmpy",
                                        option=typed)
                raise ConfigError("invalid option", option=word)
            if option.arg is None:
                self._call(option, word, None)
                continue
            if index >= len(argv):
                raise ConfigError("requires an argument", option=word)
            arg = argv[index]
            index += 1
            self._call(option, word, arg)
            if self.result.output is not None:
                return self.result
        self._finish()
        return self.result

    def _call(self, option: Option, word: str, arg: str | None) -> None:
        handler = getattr(self, f"opt_{option.handler}")
        try:
            if arg is None:
                handler()
            else:
                handler(arg)
        except ConfigError as exc:
            if exc.option is None:
                exc.option = word if arg is None else f"{word} {arg}"
            raise

    def _print(self, text: str, status: int = 0) -> None:
        if self.result.output is None:
            self.result.output = text
            self.result.status = status

    # -- standard options ----------------------------------------------------------------

    def opt_help(self) -> None:
        self._print(usage())

    def opt_version(self) -> None:
        self._print(_VERSION_TEXT + "\nCopyright (c) 2026 the kvmpy authors")

    def opt_machine(self, arg: str) -> None:
        parsed = keyval.parse(arg, "type")
        props = dict(parsed.props)
        machine_type = props.pop("type", None)
        if machine_type is not None:
            self.config.machine = machine_type
        self.config.machine_props.update(props)
        if parsed.help:
            self.machine_help = "*" if self.config.machine is not None else ""
        elif parsed.help_prop is not None:
            self.machine_help = parsed.help_prop

    def opt_accel(self, arg: str) -> None:
        from kvmpy.system import accel_help, find_accel_class

        parsed = keyval.parse(arg, "accel")
        props = dict(parsed.props)
        name = props.pop("accel", None)
        if parsed.help:
            self._print(accel_help())
            return
        if name is None:
            raise ConfigError("Parameter 'accel' is missing")
        cls = find_accel_class(name)
        if cls is None:
            raise ConfigError(f"invalid accelerator {name}")
        info = qom.type_info(cls.type_name)
        assert info is not None
        if parsed.help_prop is not None:
            self._print(_prop_help(info, parsed.help_prop))
            return
        for key in props:
            if key not in info.properties:
                raise ConfigError(f"Property '{info.name}.{key}' not found")
        self.config.accels.append(OptionSpec(name, props, f"-accel {arg}"))

    def opt_enable_kvm(self) -> None:
        self.config.accels.append(OptionSpec("kvm", {}, "-enable-kvm"))

    def opt_cpu(self, arg: str) -> None:
        parsed = keyval.parse(arg, "model", qemuopts=True)
        props = dict(parsed.props)
        model = props.pop("model", "")
        if parsed.help or keyval.is_help(model):
            self._print(cpu_help())
            return
        models = cpu_models()
        if models and model not in models:
            raise ConfigError(f"unable to find CPU model '{model}'")
        self.config.cpu = model
        self.config.cpu_props.update(props)

    def opt_smp(self, arg: str) -> None:
        parsed = keyval.parse(arg, "cpus", qemuopts=True)
        if parsed.help:
            self._print("smp-opts options:\n" + "\n".join(
                f"  {key}=<num>" for key in sorted(_SMP_KEYS)))
            return
        values: dict[str, int] = {}
        for key, text in parsed.props.items():
            if key not in _SMP_KEYS:
                raise ConfigError(f"Parameter 'smp.{key}' is unexpected")
            try:
                values[key] = int(text, 10)
            except ValueError:
                raise ConfigError(f"Parameter 'smp.{key}' expects integer") from None
            if values[key] < 0:
                raise ConfigError(f"Parameter 'smp.{key}' expects integer")
        self.config.smp = smp_topology(values)

    def opt_memory(self, arg: str) -> None:
        parsed = keyval.parse(arg, "size", qemuopts=True)
        for key in parsed.props:
            if key not in ("size", "slots", "maxmem"):
                raise ConfigError(f"Invalid parameter '{key}'")
        props = parsed.props
        if parsed.help and "size" not in props:
            props = {"size": "help", **props}
        if "slots" in props:
            try:
                int(props["slots"], 0)
            except ValueError:
                raise ConfigError("Parameter 'slots' expects a number") from None
        if "maxmem" in props:
            qom.parse_size("maxmem", props["maxmem"])
        size_text = props.get("size")
        if size_text is not None:
            size = qom.parse_size("size", size_text)
            if size_text.strip() and size_text.strip()[-1].isdigit():
                if size >= 1 << 44:
                    raise ConfigError("ram size too large")
                size *= MiB
            self.config.ram_size = size or None
        if "slots" in props or "maxmem" in props:
            raise NotBuiltError("memory hotplug (slots, maxmem) is not built in kvmpy")

    def opt_name(self, arg: str) -> None:
        parsed = keyval.parse(arg, "guest")
        for key in parsed.props:
            if key not in ("guest", "process", "debug-threads"):
                raise ConfigError(f"Invalid parameter '{key}'")
        if "debug-threads" in parsed.props:
            qom.parse_bool("debug-threads", parsed.props["debug-threads"])
        self.config.name = parsed.props.get("guest", self.config.name)

    def opt_device(self, arg: str) -> None:
        from kvmpy.hw.core import Device, device_help

        parsed = keyval.parse(arg, "driver", qemuopts=True)
        props = dict(parsed.props)
        driver = props.pop("driver", None)
        if driver is None or keyval.is_help(driver):
            if parsed.help or (driver is not None and keyval.is_help(driver)):
                self._print(device_help())
                return
            raise ConfigError("Parameter 'driver' is missing")
        info = qom.type_info(driver)
        if info is None or info.abstract or not qom.is_a(driver, "device"):
            raise ConfigError(f"'{driver}' is not a valid device model name")
        if not (issubclass(info.cls, Device) and info.cls.user_creatable):
            raise ConfigError("Parameter 'driver' expects a pluggable device type")
        if parsed.help:
            self._print(qom.property_help(info))
            return
        if parsed.help_prop is not None:
            self._print(_prop_help(info, parsed.help_prop))
            return
        self.config.devices.append(OptionSpec(driver, props, arg))

    def opt_drive(self, arg: str) -> None:
        parsed = keyval.parse(arg, "file", qemuopts=True, known_keys=_DRIVE_KEYS)
        props = dict(parsed.props)
        for key in props:
            if key not in _DRIVE_KEYS:
                raise ConfigError(f"Invalid parameter '{key}'")
        interface = props.get("if", "virtio")
        if interface != "none":
            raise NotBuiltError(f"-drive if={interface} is not built in kvmpy; use if=none,id=ID "
                                "with -device virtio-blk-device,drive=ID")
        drive_id = props.get("id", "")
        if not drive_id:
            raise ConfigError("Parameter 'id' is missing")
        if any(d.driver == drive_id for d in self.config.drives):
            raise ConfigError(f"Duplicate ID '{drive_id}' for drive")
        for key in ("readonly", "snapshot"):
            if key in props:
                qom.parse_bool(key, props[key])
        self.config.drives.append(OptionSpec(drive_id, props, arg))

    def opt_nodefaults(self) -> None:
        self.result.default_serial = False
        self.result.default_monitor = False

    # -- boot ---------------------------------------------------------------------------------

    def opt_bios(self, arg: str) -> None:
        self.config.bios = arg

    def opt_kernel(self, arg: str) -> None:
        self.config.kernel = arg

    def opt_append(self, arg: str) -> None:
        self.config.append = arg

    def opt_initrd(self, arg: str) -> None:
        self.config.initrd = arg

    def opt_dtb(self, arg: str) -> None:
        self.config.dtb = arg

    # -- character devices ------------------------------------------------------------------

    def opt_chardev(self, arg: str) -> None:
        from kvmpy.chardev.setup import backend_help, chardev_help, parse_chardev

        parsed = keyval.parse(arg, "backend", qemuopts=True)
        backend = parsed.props.get("backend")
        if backend is not None and keyval.is_help(backend):
            backend = None
        if parsed.help or parsed.help_prop is not None or (
                backend is None and keyval.is_help(arg.split(",")[0])):
            self._print(chardev_help() if backend is None
                        else backend_help(backend, parsed.help_prop))
            return
        spec = parse_chardev(arg)
        chardev_id = spec.props["id"]
        if any(c.props.get("id") == chardev_id for c in self.config.chardevs):
            raise ConfigError(f"Duplicate ID '{chardev_id}' for chardev")
        self.config.chardevs.append(spec)

    def opt_serial(self, arg: str) -> None:
        from kvmpy.chardev.setup import check_compat

        self.result.default_serial = False
        if arg.startswith("mon:"):
            self.result.default_monitor = False
        if arg == "none":
            return
        check_compat(arg)
        self.config.serial.append(arg)

    def opt_monitor(self, arg: str) -> None:
        from kvmpy.chardev.setup import check_compat

        self.result.default_monitor = False
        if arg.startswith("none"):
            return
        check_compat(arg[4:] if arg.startswith("mon:") else arg)
        self.config.monitor.append(arg)

    def opt_qmp(self, arg: str, pretty: bool = False) -> None:
        from kvmpy.chardev.setup import check_compat

        self.result.default_monitor = False
        check_compat(arg[4:] if arg.startswith("mon:") else arg)
        self.config.qmp.append((arg, pretty))

    def opt_qmp_pretty(self, arg: str) -> None:
        self.opt_qmp(arg, pretty=True)

    def opt_mon(self, arg: str) -> None:
        parsed = keyval.parse(arg, "chardev", qemuopts=True)
        props = dict(parsed.props)
        for key in props:
            if key not in ("chardev", "mode", "pretty"):
                raise ConfigError(f"Invalid parameter '{key}'")
        chardev_id = props.pop("chardev", None)
        if not chardev_id:
            raise ConfigError("Parameter 'chardev' is missing")
        if props.get("mode", "readline") not in ("readline", "control"):
            raise ConfigError(f"Parameter 'mode' does not accept value '{props['mode']}'")
        if "pretty" in props:
            qom.parse_bool("pretty", props["pretty"])
        self.result.default_monitor = False
        self.config.mon.append(OptionSpec(chardev_id, props, arg))

    def opt_parallel(self, arg: str) -> None:
        if arg != "none":
            raise NotBuiltError("the virt board has no parallel port")

    # -- display -------------------------------------------------------------------------------

    def opt_nographic(self) -> None:
        self.config.nographic = True
        self.config.display = "none"

    def opt_display(self, arg: str) -> None:
        parsed = keyval.parse(arg, "type")
        if parsed.help:
            self._print("Available display backend types:\nnone")
            return
        for key in parsed.props:
            if key != "type":
                raise ConfigError(f"Parameter '{key}' is unexpected")
        kind = parsed.props.get("type", "")
        if kind in _DISPLAYS_NOT_BUILT:
            raise NotBuiltError(f"display '{kind}' is not built: kvmpy has no graphical "
                                "display (use -display none or -nographic)")
        if kind != "none":
            raise ConfigError(f"Parameter 'type' does not accept value '{kind}'")
        self.config.display = "none"

    def opt_vga(self, arg: str) -> None:
        if arg != "none":
            raise NotBuiltError("graphics cards are not built in kvmpy (only -vga none)")

    # -- debug and expert -------------------------------------------------------------------

    def opt_start_paused(self) -> None:
        self.config.start_paused = True

    def opt_gdb_default(self) -> None:
        self.opt_gdb("tcp::1234")

    def opt_gdb(self, arg: str) -> None:
        if not _module_exists("kvmpy.gdbstub"):
            raise NotBuiltError("the gdb stub is not built in this version of kvmpy")
        self.config.gdb = arg

    def opt_log_items(self, arg: str) -> None:
        items = [item for item in arg.split(",") if item]
        if any(keyval.is_help(item) for item in items):
            self._print(log_help())
            return
        for item in items:
            if item.startswith("trace:"):
                raise NotBuiltError("trace events are not built in kvmpy")
            if item not in log.LOG_ITEMS:
                raise ConfigError(f"unknown log item '{item}' (-d help lists them)")
        if not items:
            raise ConfigError("no log items given (-d help lists them)")
        for item in items:
            if item not in self.config.log_items:
                self.config.log_items.append(item)

    def opt_log_file(self, arg: str) -> None:
        self.config.log_file = arg

    def opt_no_reboot(self) -> None:
        self.config.no_reboot = True

    def opt_no_shutdown(self) -> None:
        self.config.no_shutdown = True

    def opt_pidfile(self, arg: str) -> None:
        self.config.pidfile = arg

    def opt_daemonize(self) -> None:
        self.config.daemonize = True

    def opt_icount(self, arg: str) -> None:
        parsed = keyval.parse(arg, "shift", qemuopts=True)
        for key in parsed.props:
            if key not in ("shift", "align", "sleep", "rr", "rrfile", "rrsnapshot"):
                raise ConfigError(f"Invalid parameter '{key}'")
        if any(key in parsed.props for key in ("rr", "rrfile", "rrsnapshot")):
            raise NotBuiltError("record/replay is not built in kvmpy")
        for key in ("align", "sleep"):
            if key in parsed.props:
                qom.parse_bool(key, parsed.props[key])
        shift = parsed.props.get("shift")
        if shift is None:
            raise ConfigError("icount: shift is missing")
        if shift == "auto":
            raise NotBuiltError("icount: shift=auto is not built in kvmpy")
        try:
            value = int(shift, 0)
        except ValueError:
            value = -1
        if not 0 <= value <= _MAX_ICOUNT_SHIFT:
            raise ConfigError("icount: Invalid shift value")
        if not icount_supported():
            raise NotBuiltError("-icount is not built in this version of kvmpy")
        self.config.icount_shift = value

    # -- after the last option (vl.c's checks and default devices) ---------------------------

    def _finish(self) -> None:
        config = self.config
        if self.machine_help is not None:
            self._print(machine_help_text(config.machine, self.machine_help))
            return
        if config.nographic and config.daemonize:
            raise ConfigError("-nographic cannot be used with -daemonize")
        if config.accels and config.machine_props.get("accel"):
            raise ConfigError("The -accel and \"-machine accel=\" options are incompatible")
        chardev_ids = {c.props.get("id") for c in config.chardevs}
        for mon in config.mon:
            if mon.driver not in chardev_ids:
                raise ConfigError(f"chardev \"{mon.driver}\" not found",
                                  option=f"-mon {mon.text}")


def _module_exists(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def icount_supported() -> bool:
    """Whether an accelerator declares ``supports_icount`` (it then honours icount_shift)."""
    return any(getattr(info.cls, "supports_icount", False)
               for info in qom.object_class_get_list("accel"))


def _prop_help(info: qom.TypeInfo, prop: str) -> str:
    text = qom.property_help(info).splitlines()
    lines = [line for line in text[1:] if line.strip().startswith(f"{prop}=")]
    if not lines:
        raise ConfigError(f"Property '{info.name}.{prop}' not found")
    return "\n".join([text[0], *lines])


def machine_help_text(machine: str | None, what: str) -> str:
    """``-M help`` (``what`` empty), ``-M virt,help`` (``*``) or ``-M virt,prop=help``."""
    from kvmpy.machine import default_machine_class, find_machine_class, machine_help

    if not what:
        return machine_help()
    cls = find_machine_class(machine) if machine else default_machine_class()
    if cls is None:
        raise ConfigError("unsupported machine type (-machine help lists them)",
                          option=f"-machine {machine}")
    info = qom.type_info(cls.type_name)
    assert info is not None
    return qom.property_help(info) if what == "*" else _prop_help(info, what)


def cpu_models() -> list[str]:
    """CPU model names: registered ``cpu`` types (``rv64-riscv-cpu`` → ``rv64``), else the
    machines' default CPU types."""
    names = [info.name.removesuffix("-riscv-cpu") for info in qom.object_class_get_list("cpu")]
    if names:
        return sorted(names)
    from kvmpy.machine import machine_types

    return sorted({cls.default_cpu_type for cls in machine_types()})


def cpu_help() -> str:
    return "\n".join(cpu_models())


def smp_topology(values: dict[str, int]) -> SmpConfig:
    """QEMU 7.2's ``machine_parse_smp_config`` (hw/core/machine-smp.c), machine limits aside."""
    cpus = values.get("cpus", 0)
    maxcpus = values.get("maxcpus", 0)
    sockets = values.get("sockets", 0)
    dies = values.get("dies", 0) or 1
    clusters = values.get("clusters", 0) or 1
    cores = values.get("cores", 0)
    threads = values.get("threads", 0)
    if cpus == 0 and maxcpus == 0:
        sockets, cores, threads = sockets or 1, cores or 1, threads or 1
    else:
        maxcpus = maxcpus or cpus
        if sockets == 0:
            cores, threads = cores or 1, threads or 1
            sockets = max(maxcpus // (dies * clusters * cores * threads), 1)
        elif cores == 0:
            threads = threads or 1
            cores = max(maxcpus // (sockets * dies * clusters * threads), 1)
        elif threads == 0:
            threads = max(maxcpus // (sockets * dies * clusters * cores), 1)
    total = sockets * dies * clusters * cores * threads
    maxcpus = maxcpus or total
    cpus = cpus or maxcpus
    shape = f"sockets ({sockets}) * cores ({cores}) * threads ({threads})"
    if total != maxcpus:
        raise ConfigError("Invalid CPU topology: product of the hierarchy must match maxcpus: "
                          f"{shape} != maxcpus ({maxcpus})")
    if maxcpus < cpus:
        raise ConfigError("Invalid CPU topology: maxcpus must be equal to or greater than smp: "
                          f"{shape} == maxcpus ({maxcpus}) < smp_cpus ({cpus})")
    return SmpConfig(cpus=cpus, maxcpus=maxcpus, sockets=sockets, cores=cores, threads=threads)


def apply_default_devices(result: CommandLine) -> None:
    """vl.c's default serial port and monitor: ``mon:stdio`` with -nographic, else the
    (display-less) virtual console."""
    config = result.config
    if config.nographic:
        if result.default_serial and result.default_monitor:
            config.serial.append("mon:stdio")
        else:
            if result.default_serial:
                config.serial.append("stdio")
            if result.default_monitor:
                config.monitor.append("stdio")
    else:
        if result.default_serial:
            config.serial.append("vc")
        if result.default_monitor:
            config.monitor.append("vc")


def parse_command_line(argv: list[str], *, defaults: bool = True) -> CommandLine:
    """Parse ``argv`` (without the program name). Raises ConfigError for every user error.

    With ``defaults``, the default serial port and monitor are added as QEMU does.
    """
    load_types()
    result = _Parser().parse(argv)
    if defaults and result.output is None:
        apply_default_devices(result)
    return result


def parse_args(argv: list[str]) -> VMConfig:
    """The options as a VMConfig, without default devices (for :class:`kvmpy.VM`)."""
    result = parse_command_line(argv, defaults=False)
    if result.output is not None:
        raise ConfigError("help and version requests are for the command line only")
    return result.config


def format_error(exc: KvmpyError) -> str:
    """``kvmpy: <option>: <message>`` on one line."""
    message = " ".join(str(exc).split("\n")).strip() or type(exc).__name__
    option = getattr(exc, "option", None)
    return f"{PROG}: {option}: {message}" if option else f"{PROG}: {message}"


def _run(config: VMConfig) -> int:
    if not _module_exists("kvmpy.system"):
        raise NotBuiltError("running a VM is not built in this version of kvmpy")
    from kvmpy import system

    if not config.daemonize:
        return system.run(config)
    if config.pidfile:
        config.pidfile = os.path.abspath(config.pidfile)
    vm = system.System(config)
    try:
        vm.create()
    except BaseException:
        vm.close()
        raise
    _daemonize(config.pidfile)
    return vm.run()


def _daemonize(pidfile: str | None) -> None:
    """QEMU's ``-daemonize`` (os-posix.c): the command returns once the VM is built; the VM
    goes on in a new session with stdio on /dev/null.  Called before any thread starts."""
    ready_r, ready_w = os.pipe()
    if os.fork() > 0:
        os.close(ready_w)
        status = os.read(ready_r, 1)
        os._exit(0 if status == b"\0" else 1)
    os.close(ready_r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.umask(0o027)
    os.chdir("/")
    if pidfile:
        try:
            with open(pidfile, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            os.write(ready_w, b"\1")
            raise ConfigError(f"cannot create PID file: {exc.strerror}",
                              option=f"-pidfile {pidfile}") from exc
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.write(ready_w, b"\0")
    os.close(ready_w)


def _configure_logging(config: VMConfig) -> None:
    try:
        log.configure(config.log_items, config.log_file)
    except OSError as exc:
        raise ConfigError(f"could not open log file '{config.log_file}': "
                          f"{exc.strerror or exc}", option=f"-D {config.log_file}") from exc


def main(argv: list[str] | None = None) -> int:
    """``kvmpy [options]``: returns the process exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = parse_command_line(args)
        if result.output is not None:
            print(result.output, flush=True)
            return result.status
        _configure_logging(result.config)
        return _run(result.config)
    except KvmpyError as exc:
        print(format_error(exc), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: terminating on signal 2 (SIGINT)", file=sys.stderr, flush=True)
        return 1
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: still one line, and no hang; details on request
        if os.environ.get("KVMPY_DEBUG"):
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} "
              "(set KVMPY_DEBUG=1 for a traceback)", file=sys.stderr, flush=True)
        return 1
