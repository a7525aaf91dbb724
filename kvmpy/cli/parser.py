"""Phase 1, the command line: ``qemu-system-riscv64``'s options into one :class:`VMConfig`.

Walks argv like QEMU's ``qemu_init``: each option's handler (``opt_<name>``) checks its argument
with QEMU's wording and fills the configuration; help requests become text to print.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmpy import keyval, log, qom
from kvmpy.cli.choices import (
    apply_default_devices,
    cpu_help,
    cpu_models,
    icount_supported,
    machine_help_text,
    module_exists,
    prop_help,
    smp_topology,
)
from kvmpy.cli.options import BY_NAME, NOT_BUILT, VERSION_TEXT, Option, log_help, usage
from kvmpy.config import OptionSpec, VMConfig
from kvmpy.errors import ConfigError, NotBuiltError
from kvmpy.registry_init import load_types

MiB = 1 << 20
_DISPLAYS_NOT_BUILT = ("gtk", "sdl", "curses", "vnc", "egl-headless", "spice-app", "dbus",
                       "cocoa")
_SMP_KEYS = ("cpus", "maxcpus", "sockets", "dies", "clusters", "cores", "threads")
_DRIVE_KEYS = frozenset({"file", "if", "format", "id", "readonly", "snapshot", "cache", "aio",
                         "media", "index", "discard", "werror", "rerror", "node-name",
                         "auto-read-only", "bus", "unit", "file.locking", "force-share"})
_MAX_ICOUNT_SHIFT = 10
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                      r"[0-9a-fA-F]{12}")
_RTC_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2})?")
_BOOT_KEYS = ("order", "once", "menu", "splash", "splash-time", "reboot-timeout", "strict")
_AUDIO_DRIVERS = ("none", "alsa", "coreaudio", "dbus", "dsound", "jack", "oss", "pa", "sdl",
                  "spice", "wav")


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
                raise NotBuiltError("disk images without an interface are not built in kvmpy "
                                    "(use -drive file=IMAGE,if=virtio)", option=word)
            name = word[2:] if word.startswith("--") else word[1:]
            option = BY_NAME.get(name)
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
        self._print(VERSION_TEXT + "\nCopyright (c) 2026 the kvmpy authors")

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
            self._print(prop_help(info, parsed.help_prop))
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
        driver = qom.resolve_alias(driver)
        info = qom.type_info(driver)
        if info is None or info.abstract or not qom.is_a(driver, "device"):
            raise ConfigError(f"'{driver}' is not a valid device model name")
        if not (issubclass(info.cls, Device) and info.cls.user_creatable):
            raise ConfigError("Parameter 'driver' expects a pluggable device type")
        if parsed.help:
            self._print(qom.property_help(info))
            return
        if parsed.help_prop is not None:
            self._print(prop_help(info, parsed.help_prop))
            return
        for key in props:
            if key not in ("id", "bus") and key not in info.properties:
                raise ConfigError(f"Property '{driver}.{key}' not found")
        self.config.devices.append(OptionSpec(driver, props, f"-device {arg}"))

    def opt_drive(self, arg: str) -> None:
        parsed = keyval.parse(arg, "file", qemuopts=True, known_keys=_DRIVE_KEYS)
        props = dict(parsed.props)
        for key in props:
            if key not in _DRIVE_KEYS:
                raise ConfigError(f"Invalid parameter '{key}'")
        interface = props.setdefault("if", "none")  # virt's default block interface
        if interface not in ("none", "virtio"):
            raise NotBuiltError(f"-drive if={interface} is not built in kvmpy; use if=virtio, "
                                "or if=none,id=ID with -device virtio-blk-pci,drive=ID")
        drive_id = props.get("id", "")
        if not drive_id:  # QEMU names it after the interface and its unit number
            unit = sum(1 for d in self.config.drives if d.props.get("if") == interface)
            drive_id = props["id"] = f"{interface}{unit}"
        if any(d.driver == drive_id for d in self.config.drives):
            raise ConfigError(f"Duplicate ID '{drive_id}' for drive")
        for key in ("readonly", "snapshot"):
            if key in props:
                qom.parse_bool(key, props[key])
        self.config.drives.append(OptionSpec(drive_id, props, f"-drive {arg}"))

    def opt_blockdev(self, arg: str) -> None:
        from kvmpy.block.blockdev import BlockGraph

        graph = BlockGraph()
        for text in self.config.blockdevs:
            graph.add(text)
        graph.add(arg)
        self.config.blockdevs.append(arg)

    def opt_snapshot(self) -> None:
        self.config.snapshot = True

    def opt_netdev(self, arg: str) -> None:
        from kvmpy.net import options

        self._print_if(options.add_netdev(self.config, arg, f"-netdev {arg}"))

    def opt_nic(self, arg: str) -> None:
        from kvmpy.net import options

        self._print_if(options.add_nic(self.config, arg, f"-nic {arg}"))

    def opt_net(self, arg: str) -> None:
        from kvmpy.net import options

        self._print_if(options.add_net(self.config, arg, f"-net {arg}"))

    def opt_fsdev(self, arg: str) -> None:
        from kvmpy.fs.fsdev import parse_fsdev

        try:  # QEMU refuses a taken id while it parses, before it looks at the rest
            given_id = keyval.parse(arg, "fsdriver", qemuopts=True).props.get("id")
        except ConfigError:
            given_id = None
        if given_id is not None and given_id in self.config.fsdevs:
            raise ConfigError(f"Duplicate ID '{given_id}' for fsdev")
        fsdev = parse_fsdev(arg)
        if fsdev.id in self.config.fsdevs:
            raise ConfigError(f"Duplicate ID '{fsdev.id}' for fsdev")
        self.config.fsdevs[fsdev.id] = fsdev

    def opt_virtfs(self, arg: str) -> None:
        """QEMU's -virtfs: an fsdev named by ``id`` (else the mount tag) and a
        ``virtio-9p-pci`` exporting it, in order with the ``-device`` options."""
        from kvmpy.fs.fsdev import parse_virtfs

        fsdev, tag, fsdev_id = parse_virtfs(arg)
        if fsdev_id in self.config.fsdevs or not _is_identifier(fsdev_id):
            raise ConfigError(f"duplicate or invalid fsdev id: {tag}")
        self.config.fsdevs[fsdev_id] = fsdev
        self.config.devices.append(OptionSpec("virtio-9p-pci",
                                              {"fsdev": fsdev_id, "mount_tag": tag},
                                              f"-virtfs {arg}"))

    def _print_if(self, text: str | None) -> None:
        if text is not None:
            self._print(text)

    def opt_nodefaults(self) -> None:
        self.result.default_serial = False
        self.result.default_monitor = False

    def opt_no_user_config(self) -> None:
        """kvmpy reads no configuration files, so there are none to skip."""

    def opt_object(self, arg: str) -> None:
        from kvmpy.objects import add_object

        add_object(self.config.objects, arg)

    def opt_uuid(self, arg: str) -> None:
        if not _UUID_RE.fullmatch(arg):
            raise ConfigError("failed to parse UUID string: wrong format")
        self.config.uuid = arg.lower()

    def opt_overcommit(self, arg: str) -> None:
        parsed = keyval.parse(arg, None, qemuopts=True)
        for key, value in parsed.props.items():
            if key not in ("mem-lock", "cpu-pm"):
                raise ConfigError(f"Invalid parameter '{key}'")
            if qom.parse_bool(key, value) and key == "mem-lock":
                raise NotBuiltError("-overcommit mem-lock=on is not built in kvmpy")

    def opt_rtc(self, arg: str) -> None:
        parsed = keyval.parse(arg, None, qemuopts=True)
        for key in parsed.props:
            if key not in ("base", "clock", "driftfix"):
                raise ConfigError(f"Invalid parameter '{key}'")
        base = parsed.props.get("base", "utc")
        if base not in ("utc", "localtime") and not _RTC_DATE_RE.fullmatch(base):
            raise ConfigError("invalid datetime format", option="")
        if base != "utc":
            raise NotBuiltError(f"-rtc base={base} is not built in kvmpy (the RTC follows "
                                "the host's UTC clock)")
        clock = parsed.props.get("clock", "host")
        if clock not in ("host", "rt", "vm"):
            raise ConfigError(f"invalid option value '{clock}'", option="")
        if clock != "host":
            raise NotBuiltError(f"-rtc clock={clock} is not built in kvmpy (the RTC follows "
                                "the host clock)")
        driftfix = parsed.props.get("driftfix", "none")
        if driftfix not in ("none", "slew"):
            raise ConfigError(f"invalid option value '{driftfix}'", option="")
        self.config.rtc_base = base

    def opt_boot(self, arg: str) -> None:
        parsed = keyval.parse(arg, "order", qemuopts=True)
        for key, value in parsed.props.items():
            if key not in _BOOT_KEYS:
                raise ConfigError(f"Parameter 'boot.{key}' is unexpected", option="")
            if key in ("menu", "strict"):
                try:
                    qom.parse_bool(key, value)
                except ConfigError:
                    raise ConfigError(f"Parameter 'boot.{key}' expects 'on' or 'off'",
                                      option="") from None

    def opt_audiodev(self, arg: str) -> None:
        if arg.lstrip().startswith("{"):
            import json  # here: 1.6 ms of every start-up otherwise

            try:
                props = {str(k): str(v) for k, v in json.loads(arg).items()}
            except (ValueError, AttributeError):
                raise ConfigError("JSON parse error, expecting value") from None
        else:
            props = dict(keyval.parse(arg, "driver").props)
        driver = props.get("driver")
        if driver is None:
            raise ConfigError("Parameter 'driver' is missing")
        if driver not in _AUDIO_DRIVERS:
            raise ConfigError(f"Parameter 'driver' does not accept value '{driver}'")
        if "id" not in props:
            raise ConfigError("Parameter 'id' is missing")
        if driver != "none":
            raise NotBuiltError(f"audio driver '{driver}' is not built in kvmpy (it has no "
                                "sound card: only driver=none)")

    def opt_msg(self, arg: str) -> None:
        parsed = keyval.parse(arg, None, qemuopts=True)
        for key, value in parsed.props.items():
            if key not in ("timestamp", "guest-name"):
                raise ConfigError(f"Invalid parameter '{key}'")
            if key == "timestamp":
                self.config.msg_timestamp = qom.parse_bool(key, value)
            else:
                qom.parse_bool(key, value)

    def opt_sandbox(self, arg: str) -> None:
        parsed = keyval.parse(arg, "enable", qemuopts=True)
        enable = False
        for key, value in parsed.props.items():
            if key == "enable":
                enable = qom.parse_bool(key, value)
            elif key in ("obsolete", "elevateprivileges", "spawn", "resourcecontrol"):
                allowed = ("allow", "deny", "children") if key == "elevateprivileges" \
                    else ("allow", "deny")
                if value not in allowed:
                    raise ConfigError(f"invalid argument for {key}")
            else:
                raise ConfigError(f"Invalid parameter '{key}'")
        self.config.sandbox = dict(parsed.props) if enable else None

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
            if key not in ("chardev", "mode", "pretty", "id"):
                raise ConfigError(f"Invalid parameter '{key}'")
        chardev_id = props.pop("chardev", None)
        if not chardev_id:
            raise ConfigError("Parameter 'chardev' is missing")
        if props.get("mode", "readline") not in ("readline", "control"):
            raise ConfigError(f"Parameter 'mode' does not accept value '{props['mode']}'")
        if "pretty" in props:
            qom.parse_bool("pretty", props["pretty"])
        self.result.default_monitor = False
        self.config.mon.append(OptionSpec(chardev_id, props, f"-mon {arg}"))

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

    def opt_incoming(self, arg: str) -> None:
        self.config.incoming = arg

    def opt_start_paused(self) -> None:
        self.config.start_paused = True

    def opt_gdb_default(self) -> None:
        self.opt_gdb("tcp::1234")

    def opt_gdb(self, arg: str) -> None:
        if not module_exists("kvmpy.gdbstub"):
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
        if config.legacy_nics or config.legacy_netdevs:
            from kvmpy.net import options

            options.finish(config)
        if self.machine_help is not None:
            self._print(machine_help_text(config.machine, self.machine_help))
            return
        if config.nographic and config.daemonize and (self.result.default_serial
                                                      or self.result.default_monitor):
            raise ConfigError("-nographic cannot be used with -daemonize")
        backend_id = config.machine_props.get("memory-backend")
        if backend_id is not None:
            from kvmpy.objects import ram_backend

            config.ram_size = ram_backend(config.objects, backend_id, config.ram_size)
        if config.accels and config.machine_props.get("accel"):
            raise ConfigError("The -accel and \"-machine accel=\" options are incompatible")
        chardev_ids = {c.props.get("id") for c in config.chardevs}
        for mon in config.mon:
            if mon.driver not in chardev_ids:
                raise ConfigError(f"chardev \"{mon.driver}\" not found",
                                  option=mon.text)


def _is_identifier(name: str) -> bool:
    """QEMU's id_wellformed: a letter, then letters, digits, '-', '.' and '_'."""
    return bool(name) and name[0].isascii() and name[0].isalpha() and \
        all(c.isascii() and (c.isalnum() or c in "-._") for c in name)


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
