"""HMP, the human monitor (``-monitor stdio``, Ctrl-A c on ``mon:stdio``), with QEMU's commands."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

import kvmpy
from kvmpy.errors import KvmpyError
from kvmpy.monitor import commands, net, pci
from kvmpy.monitor.hmp_chardev import PROMPT, HmpMonitor

__all__ = ["CSRS", "PROMPT", "HmpMonitor", "HmpState", "UnknownCommand", "UsageError",
           "run_command"]

if TYPE_CHECKING:
    from kvmpy.system import System

ABI_NAMES = ["zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2",
             "a3", "a4", "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9",
             "s10", "s11", "t3", "t4", "t5", "t6"]
FP_NAMES = ["ft0", "ft1", "ft2", "ft3", "ft4", "ft5", "ft6", "ft7", "fs0", "fs1", "fa0", "fa1",
            "fa2", "fa3", "fa4", "fa5", "fa6", "fa7", "fs2", "fs3", "fs4", "fs5", "fs6", "fs7",
            "fs8", "fs9", "fs10", "fs11", "ft8", "ft9", "ft10", "ft11"]
CSRS = ["mhartid", "mstatus", "mip", "mie", "mideleg", "medeleg", "mtvec", "stvec", "mepc",
        "sepc", "mcause", "scause", "mtval", "stval", "mscratch", "sscratch", "satp"]
UNIT_SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}


def _info_snapshots(system: System) -> str:
    from kvmpy.monitor import snapshots  # the snapshot commands are imported when used

    return snapshots.info_snapshots(system)


class UnknownCommand(KvmpyError):
    """The command line names no HMP command."""


class UsageError(KvmpyError):
    """A command line that does not parse: QEMU adds a pointer to the command's help."""

    def __init__(self, message: str, command: str) -> None:
        super().__init__(f"{message}\nTry \"help {command}\" for more information")


class HmpState:
    """Per-monitor state: the current CPU (``cpu N``) and the last x/xp format."""

    def __init__(self) -> None:
        self.cpu = 0
        self.fmt = ("x", 4)


def _get(system: System, cpu: int, name: str) -> int:
    try:
        return commands.vcpu(system, cpu).get_reg(name)
    except (KeyError, ValueError):
        return 0


def info_registers(system: System, state: HmpState, args: list[str]) -> str:
    lines = []
    cpus = range(len(system.harts)) if "-a" in args else [state.cpu]
    for cpu in cpus:  # the layout of QEMU 7.2's riscv_cpu_dump_state
        lines += ["", f"CPU#{cpu}", f" {'V':<6} = {0:3d}",
                  f" {'pc':<8} {_get(system, cpu, 'pc'):016x}"]
        lines += [f" {csr:<8} {_get(system, cpu, csr):016x}" for csr in CSRS]
        for prefix, names in (("x", ABI_NAMES), ("f", FP_NAMES)):
            cells = [f" {f'{prefix}{i}/{abi}':<8} {_get(system, cpu, f'{prefix}{i}'):016x}"
                     for i, abi in enumerate(names)]
            lines += ["".join(cells[i:i + 4]) for i in range(0, len(cells), 4)]
    return "\n".join(lines)


def info_mtree(system: System, state: HmpState, args: list[str]) -> str:
    lines = ["address-space: memory", "  0000000000000000-ffffffffffffffff (prio 0, i/o): system"]
    regions: list[tuple[int, int, str, str]] = []
    if system.ram is not None:
        regions.append((system.ram.base, system.ram.size, "ram", system.ram.name))
    for rom in system.roms:
        regions.append((rom.base, rom.size, "rom", rom.name))
    for region in system.bus.regions:
        regions.append((region.base, region.size, "i/o", region.name))
    for base, size, kind, name in sorted(regions):
        lines.append(f"    {base:016x}-{base + size - 1:016x} (prio 0, {kind}): {name}")
    return "\n".join(lines)


def info_qtree(system: System, state: HmpState, args: list[str]) -> str:
    lines = ["bus: main-system-bus", "  type System"]
    for region in system.bus.regions:
        dev = region.device
        type_name = getattr(dev, "type_name", type(dev).__name__)
        lines.append(f"  dev: {type_name}, id \"\"")
        lines.append(f"    mmio {region.base:016x}/{region.size:016x}")
    return "\n".join(lines)


def info_cpus(system: System, state: HmpState, args: list[str]) -> str:
    cpus = commands.query_cpus_fast(system)
    return "\n".join(f"{'*' if c['cpu-index'] == state.cpu else ' '} CPU #{c['cpu-index']}: "
                     f"thread_id={c['thread-id']}" for c in cpus)


def info_status(system: System, state: HmpState, args: list[str]) -> str:
    status = system.status
    if status == "running":
        return "VM status: running"
    if status == "paused":
        return "VM status: paused"
    return f"VM status: paused ({status})"


def info_version(system: System, state: HmpState, args: list[str]) -> str:
    return f"kvmpy {kvmpy.__version__}"


def info_name(system: System, state: HmpState, args: list[str]) -> str:
    return system.config.name or ""


def info_pci(system: System, state: HmpState, args: list[str]) -> str:
    return pci.info_pci(system)


def info_usernet(system: System, state: HmpState, args: list[str]) -> str:
    from kvmpy.net import user

    return user.hmp_info_usernet(system.netdevs)


def info_network(system: System, state: HmpState, args: list[str]) -> str:
    return net.info_network(system)


def _net_command(system: System, name: str, args: list[str]) -> str:
    """``set_link NAME on|off``, ``netdev_add TYPE,id=ID,...``, ``netdev_del ID``."""
    if len(args) < (2 if name == "set_link" else 1):
        raise UsageError(f"{name}: missing argument", name)
    if name == "set_link" and args[1] not in ("on", "off"):
        raise UsageError(f"{name}: expected 'on' or 'off'", name)
    try:
        if name == "set_link":
            net.set_link(system, args[0], args[1] == "on")
        elif name == "netdev_add":
            try:
                net.netdev_add(system, net.parse_hmp_netdev(args[0]), hmp=True)
            except KvmpyError as exc:  # QEMU reports it as a command-line error
                return f"kvmpy: {exc}\nTry \"help netdev_add\" for more information"
        else:
            net.netdev_del(system, args[0])
    except KvmpyError as exc:
        return f"Error: {exc}"
    return ""


def _gdbserver(system: System, args: list[str]) -> str:
    """``gdbserver [device]``: QEMU 7.2 refuses a second stub while one runs (the old one
    keeps serving); ``none`` stops it."""
    from kvmpy.gdbstub import DEFAULT_DEVICE, gdbserver_start

    device = args[0] if args else DEFAULT_DEVICE
    lines = []
    if device != "none" and system.gdbstub is not None:
        lines.append(f"a gdbserver already runs on device '{system.gdbstub.device}'")
    else:
        try:
            gdbserver_start(system, device)
        except KvmpyError as exc:
            lines.append(str(exc))
        else:
            return ("Disabled gdbserver" if device == "none"
                    else f"Waiting for gdb connection on device '{device}'")
    return "\n".join([*lines, f"Could not open gdbserver on device '{device}'"])


def _hostfwd(system: System, name: str, args: list[str]) -> str:
    """``hostfwd_add`` / ``hostfwd_remove``: two string arguments, the first optional."""
    from kvmpy.net import user

    if not args:
        raise UsageError(f"{name}: string expected", name)
    if len(args) > 2:
        raise UsageError(f"{name}: extraneous characters at the end of line", name)
    command = user.hmp_hostfwd_add if name == "hostfwd_add" else user.hmp_hostfwd_remove
    return command(system.netdevs, *args)


INFO: dict[str, tuple[Callable[[System, HmpState, list[str]], str], str, str]] = {
    "status": (info_status, "show the current VM status (running|paused)", ""),
    "registers": (info_registers, "show the cpu registers (-a: show register info for all "
                  "cpus; vcpu: specific vCPU to query; show the current CPU's registers if no "
                  "argument is specified)", "[-a|vcpu]"),
    "mtree": (info_mtree, "show memory tree", ""),
    "qtree": (info_qtree, "show device tree", ""),
    "cpus": (info_cpus, "show infos for each CPU", ""),
    "version": (info_version, "show the version of QEMU", ""),
    "name": (info_name, "show the current VM name", ""),
    "pci": (info_pci, "show PCI info", ""),
    "usernet": (info_usernet, "show user network stack connection states", ""),
    "network": (info_network, "show the network state", ""),
    "migrate": (lambda system, state, args: _migration_info(system, "migrate"),
                "show migration status", ""),
    "migrate_capabilities": (lambda system, state, args: _migration_info(
        system, "migrate_capabilities"), "show current migration capabilities", ""),
    "migrate_parameters": (lambda system, state, args: _migration_info(
        system, "migrate_parameters"), "show current migration parameters", ""),
    "snapshots": (lambda system, state, args: _info_snapshots(system),
                  "show the currently saved VM snapshots", ""),
}


def _parse_format(state: HmpState, name: str, text: str) -> tuple[int, str, int]:
    """``/[count][format][size]`` as QEMU's monitor parses it -> (count, format, size)."""
    pos, count = 1, 1
    digits = re.match(r"\d+", text[pos:])
    if digits:
        count = int(digits.group())
        pos += digits.end()
    fmt, size = "", 0
    while pos < len(text):
        char = text[pos]
        if char in "oduxic":
            fmt = char
        elif char in UNIT_SIZES:
            size = UNIT_SIZES[char]
        else:
            raise UsageError(f"invalid char in format: '{char}'", name)
        pos += 1
    fmt = fmt or state.fmt[0]
    if fmt != "i":
        size = size or state.fmt[1]
    state.fmt = (fmt, size or state.fmt[1])
    return count, fmt, size


def _memory_dump(system: System, state: HmpState, args: list[str], physical: bool) -> str:
    """QEMU's ``memory_dump``: 16 bytes a line (8 for bytes), each value padded as QEMU pads."""
    name = "xp" if physical else "x"
    count, fmt, unit = 1, *state.fmt
    if args and args[0].startswith("/"):
        count, fmt, unit = _parse_format(state, name, args.pop(0))
    if not args:
        raise UsageError("unexpected end of expression", name)
    addr = _parse_int(args[0])

    def read(address: int, size: int) -> bytes:
        if physical:
            return commands.read_physical(system, address, size, devices=True)
        return commands.read_virtual(system, state.cpu, address, size)

    if fmt == "i":
        return _disassemble(read(addr, count * 4), addr, count)
    length = count * unit
    line_size = 8 if unit == 1 else 16
    if fmt == "c":
        unit = 1  # after the length and line size, as QEMU
    lines = []
    for start in range(0, length, line_size):
        n = min(line_size, length - start)
        line = f"{addr + start:016x}:"
        try:
            data = read(addr + start, n)
        except KvmpyError:
            lines.append(line + " Cannot access memory")  # QEMU stops at the first hole
            break
        values = [int.from_bytes(data[i:i + unit], "little") for i in range(0, n, unit)]
        lines.append(line + "".join(" " + _format(v, fmt, unit) for v in values))
    return "\n".join(lines)


def _format(value: int, fmt: str, unit: int) -> str:
    bits = unit * 8
    if fmt == "o":
        return f"{'0' + format(value, 'o') if value else '0':>{-(-bits // 3)}}"
    if fmt == "u":
        return f"{value:>{-(-bits * 10 // 33)}}"
    if fmt == "d":
        if unit == 8 and value >> 63:  # only a 64-bit load is signed in QEMU's memory_dump
            value -= 1 << 64
        return f"{value:>{-(-bits * 10 // 33)}}"
    if fmt == "c":
        char = chr(value)
        escaped = {"'": "\\'", "\\": "\\\\", "\n": "\\n", "\r": "\\r"}.get(char)
        if escaped is None:
            escaped = char if 32 <= value <= 126 else f"\\x{value:02x}"
        return f"'{escaped}'"
    return f"0x{value:0{unit * 2}x}"


def _disassemble(code: bytes, addr: int, count: int) -> str:
    try:
        import capstone
    except ImportError:
        raise KvmpyError("disassembly needs the capstone package") from None
    md = capstone.Cs(capstone.CS_ARCH_RISCV,
                     capstone.CS_MODE_RISCV64 | capstone.CS_MODE_RISCVC)
    lines = []
    for insn in md.disasm(code, addr, count):
        lines.append(f"0x{insn.address:016x}:  {insn.mnemonic:<8} {insn.op_str}".rstrip())
    return "\n".join(lines)


def _parse_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise KvmpyError(f"invalid number '{text}'") from None


def run_command(system: System, line: str, cpu_index: int | None = None,
                state: HmpState | None = None) -> str:
    """Execute one HMP command line; returns its output (empty for silent commands)."""
    state = state or HmpState()
    if cpu_index is not None:
        state.cpu = cpu_index
    try:
        words = shlex.split(line)
    except ValueError as exc:
        return f"{exc}\n"
    if not words:
        return ""
    name, args = words[0], words[1:]
    # "x/4xw 0x1000" is written without a space after the command.
    match = re.match(r"^(xp|x)(/.*)$", name)
    if match:
        name, args = match.group(1), [match.group(2), *args]
    try:
        output = _dispatch(system, state, name, args)
    except (UnknownCommand, UsageError) as exc:  # parse errors: no "Error:", as QEMU
        return f"{exc}\n"
    except KvmpyError as exc:
        return f"Error: {exc}\n"
    return output + "\n" if output else ""


def _dispatch(system: System, state: HmpState, name: str, args: list[str]) -> str:
    if name == "info":
        if not args or args[0] not in INFO:
            return "\n".join(f"info {k} {v[2]} -- {v[1]}" for k, v in sorted(INFO.items()))
        return INFO[args[0]][0](system, state, args[1:])
    if name in ("stop", "s"):
        commands.stop(system)
        return ""
    if name in ("c", "cont"):
        commands.cont(system)
        return ""
    if name == "system_reset":
        commands.system_reset(system)
        return ""
    if name == "system_powerdown":
        commands.system_powerdown(system)
        return ""
    if name in ("q", "quit"):
        commands.quit_vm(system)
        return ""
    if name == "cpu":
        if not args:
            raise UsageError("missing argument", "cpu")
        index = _parse_int(args[0])
        if not 0 <= index < len(system.harts):
            raise UnknownCommand("invalid CPU index")
        state.cpu = index
        return ""
    if name in ("hostfwd_add", "hostfwd_remove"):
        return _hostfwd(system, name, args)
    if name in ("set_link", "netdev_add", "netdev_del"):
        return _net_command(system, name, args)
    if name == "gdbserver":
        return _gdbserver(system, args)
    if name in ("savevm", "loadvm", "delvm"):
        if name != "savevm" and not args:
            raise UsageError("missing argument", name)
        from kvmpy.monitor import snapshots

        return {"savevm": snapshots.hmp_savevm, "loadvm": snapshots.hmp_loadvm,
                "delvm": snapshots.hmp_delvm}[name](system, args)
    if name == "x":
        return _memory_dump(system, state, args, physical=False)
    if name == "xp":
        return _memory_dump(system, state, args, physical=True)
    if name in ("help", "?"):
        if args and args[0] == "info":
            return "\n".join(f"info {k} {v[2]} -- {v[1]}" for k, v in sorted(INFO.items()))
        return "\n".join(f"{cmd} {params} -- {desc}" for cmd, params, desc in HELP
                         if not args or args[0] in cmd.split("|"))
    if name.startswith("migrate"):
        from kvmpy.migration.commands import hmp_command

        output = hmp_command(system, name, args)
        if output is not None:
            return output
    raise UnknownCommand(f"unknown command: '{name}'")


def _migration_info(system: System, what: str) -> str:
    from kvmpy.migration.commands import info

    return info(system, what)


HELP = [  # name, parameters, description: as QEMU's hmp-commands.hx
    ("c|cont", "", "resume emulation"),
    ("cpu", "index", "set the default CPU"),
    ("delvm", "tag", "delete a VM snapshot from its tag"),
    ("gdbserver", "[device]", "start gdbserver on given device (default 'tcp::1234'), stop "
     "with 'none'"),
    ("help|?", "[cmd]", "show the help"),
    ("hostfwd_add", "[netdev_id] [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport",
     "redirect TCP or UDP connections from host to guest (requires -net user)"),
    ("hostfwd_remove", "[netdev_id] [tcp|udp]:[hostaddr]:hostport",
     "remove host-to-guest TCP or UDP redirection"),
    ("info", "[subcommand]", "show various information about the system state"),
    ("loadvm", "tag", "restore a VM snapshot from its tag"),
    ("netdev_add", "[user|tap|socket|stream|dgram],id=str[,prop=value][,...]",
     "add host network device"),
    ("migrate", "[-d] [-b] [-i] [-r] uri",
     "migrate to URI (using -d to not wait for completion)"),
    ("migrate_cancel", "", "cancel the current VM migration"),
    ("migrate_incoming", "uri", "Continue an incoming migration from an -incoming defer"),
    ("migrate_set_capability", "capability state",
     "Enable/Disable the usage of a capability for migration"),
    ("migrate_set_parameter", "parameter value", "Set the parameter for migration"),
    ("netdev_del", "id", "remove host network device"),
    ("q|quit", "", "quit the emulator"),
    ("savevm", "tag", "save a VM snapshot. If no tag is provided, a new snapshot is "
     "created"),
    ("set_link", "name on|off", "change the link status of a network adapter"),
    ("stop|s", "", "stop emulation"),
    ("system_powerdown", "", "send system power down event"),
    ("system_reset", "", "reset the system"),
    ("x", "/fmt addr", "virtual memory dump starting at 'addr'"),
    ("xp", "/fmt addr", "physical memory dump starting at 'addr'"),
]
