"""The option table of the command line: names, arguments, ``-h`` text, and the QEMU options
kvmpy knows but does not have."""

from __future__ import annotations

from dataclasses import dataclass

from kvmpy import __version__, log

PROG = "kvmpy"
QEMU_VERSION = "7.2"

VERSION_TEXT = (f"kvmpy emulator version {__version__} "
                 f"(qemu-system-riscv64 {QEMU_VERSION} compatible)")


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
    Option("drive", "if=none,id=ID,file=FILE[,format=raw|qcow2][,readonly=on|off]",
           "use FILE as a drive image for -device virtio-blk-device,drive=ID",
           _GROUPS[0], "drive"),
    Option("blockdev", "[driver=]driver[,node-name=N][,read-only=on|off][,file=...]",
           "configure a block backend (file, raw, qcow2; JSON or keyval)", _GROUPS[0],
           "blockdev"),
    Option("snapshot", None, "write to temporary files instead of disk image files",
           _GROUPS[0], "snapshot"),
    Option("netdev", "type,id=str[,prop=value][,...]",
           "configure a network backend: user[,hostfwd=...][,restrict=on|off],\n"
           "tap,ifname=NAME|fd=N ('-netdev help' for the list)", _GROUPS[0], "netdev"),
    Option("nic", "type[,prop=value][,...][,model=M][,mac=MAC]",
           "a network backend and its NIC (a virtio-net-pci unless model= says otherwise)",
           _GROUPS[0], "nic"),
    Option("net", "nic[,model=M][,macaddr=MAC]|type[,prop=value][,...]",
           "legacy: a NIC, or a backend for the next -net nic", _GROUPS[0], "net"),
    Option("fsdev", "local,id=id,path=path,security_model=mapped-xattr|mapped-file|"
           "passthrough|none",
           "[,writeout=immediate][,readonly=on][,fmode=fmode][,dmode=dmode]\n"
           "a host directory to export over 9P (-device virtio-9p-pci,fsdev=id,mount_tag=tag)",
           _GROUPS[0], "fsdev"),
    Option("virtfs", "local,path=path,mount_tag=tag,security_model=mapped-xattr|mapped-file|"
           "passthrough|none",
           "[,id=id][,writeout=immediate][,readonly=on][,fmode=fmode][,dmode=dmode]\n"
           "an -fsdev and the virtio-9p-pci exporting it", _GROUPS[0], "virtfs"),
    Option("no-user-config", None, "do not load default user-provided config files at startup\n"
           "(kvmpy reads none: accepted for QEMU's callers)", _GROUPS[0], "no_user_config",
           ("nodefconfig",)),
    Option("object", "TYPENAME[,PROP1=VALUE1,...]|{JSON}",
           "create a new object of type TYPENAME setting properties (secret, "
           "memory-backend-ram,\nrng-random, rng-builtin)", _GROUPS[0], "object"),
    Option("uuid", "%08x-%04x-%04x-%04x-%012x", "specify machine UUID", _GROUPS[0], "uuid"),
    Option("overcommit", "mem-lock=on|off[,cpu-pm=on|off]",
           "run qemu with overcommit hints (kvmpy never locks guest memory)", _GROUPS[0],
           "overcommit"),
    Option("rtc", "[base=utc|localtime|datetime][,clock=host|rt|vm][,driftfix=none|slew]",
           "set the RTC base and clock", _GROUPS[0], "rtc"),
    Option("boot", "[order=drives][,once=drives][,menu=on|off][,strict=on|off]...",
           "boot order (the virt board boots -kernel or the firmware: checked, not used)",
           _GROUPS[0], "boot"),
    Option("audiodev", "driver=none,id=id", "an audio backend (kvmpy has no sound card: "
           "'none' only)", _GROUPS[0], "audiodev"),
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
    Option("incoming", "tcp:[host]:port|unix:socketpath|exec:cmdline|fd:N|defer",
           "prepare for incoming migration, listen on the given address\n"
           "('defer': wait for the monitor's migrate-incoming)", _GROUPS[4], "incoming"),
    Option("S", None, "freeze CPU at startup (use 'c' to start execution)", _GROUPS[4],
           "start_paused"),
    Option("s", None, "shorthand for -gdb tcp::1234", _GROUPS[4], "gdb_default"),
    Option("gdb", "dev", "accept gdb connection on 'dev'", _GROUPS[4], "gdb"),
    Option("msg", "[timestamp[=on|off]][,guest-name=[on|off]]",
           "control error message format: timestamp=on prefixes the time", _GROUPS[4], "msg"),
    Option("sandbox", "on|off[,obsolete=allow|deny][,elevateprivileges=allow|deny|children]"
           "\n[,spawn=allow|deny][,resourcecontrol=allow|deny]",
           "Enable seccomp mode 2 system call filter (default 'off')", _GROUPS[4], "sandbox"),
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
    "hda": True, "hdb": True,
    "hdc": True, "hdd": True, "cdrom": True, "fda": True, "fdb": True, "mtdblock": True,
    "sd": True, "pflash": True,
    "global": True, "audio": True, "usb": False,
    "usbdevice": True, "L": True, "action": True,
    "loadvm": True, "trace": True, "plugin": True, "semihosting": False,
    "semihosting-config": True, "watchdog": True, "watchdog-action": True, "k": True,
    "echr": True, "chroot": True, "runas": True, "run-with": True, "numa": True,
    "add-fd": True, "set": True, "mem-path": True, "mem-prealloc": False,
    "readconfig": True, "writeconfig": True,
    "dump-vmstate": True, "compat": True, "iscsi": True, "spice": True,
    "vnc": True, "full-screen": False, "portrait": False, "rotate": True, "g": True,
    "tpmdev": True, "seed": True, "only-migratable": False, "preconfig": False,
    "device-tree": True, "xen-domid": True, "singlestep": False, "bt": True, "smbios": True,
    "fw_cfg": True, "kernel-irqchip": True, "realtime": True, "mem-merge": False,
}

BY_NAME: dict[str, Option] = {}
for _opt in OPTIONS:
    BY_NAME[_opt.name] = _opt
    for _alias in _opt.aliases:
        BY_NAME[_alias] = _opt


def usage() -> str:
    """``kvmpy -h``: QEMU's layout, generated from the option table."""
    lines = [VERSION_TEXT,
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
