"""The gdb stub: QEMU 7.2's ``gdbstub/gdbstub.c`` for a riscv64 machine, on a chardev.

One client at a time; the harts are gdb's threads (``p01.NN`` with multiprocess, else ``NN``,
NN = hart index + 1) of one process.  When gdb connects the VM is stopped as QMP ``stop``
stops it; ``c``/``vCont;c`` resume the whole VM; a breakpoint, watchpoint or finished step
stops the whole VM in the ``debug`` run state and the stop reply names the hart.  Stop
replies follow the VM's STOP event, so a QMP ``stop`` or a guest shutdown also reaches gdb
(``T02``, ``T03``), as in QEMU.

Stepping runs only the stepped hart (the others stay stopped meanwhile, a schedule QEMU's
round-robin TCG may also produce).  Breakpoints and watchpoints need the accelerator's debug
support: the interpreter has all; RISC-V KVM with KVM_SET_GUEST_DEBUG (Linux 6.10+) has
software breakpoints (``ebreak`` patched into guest memory, hidden from ``m`` reads) and steps
by temporary breakpoints, but no watchpoints (``E22``).  Without it (RISC-V KVM in Linux 6.1)
``Z`` packets fail with ``E22`` and a step is refused with a console message, while registers
and memory work as usual.
"""

from __future__ import annotations

import binascii
import contextlib
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy.accel.exits import DebugExit, HaltExit, IntrExit
from kvmpy.chardev.base import CHR_EVENT_CLOSED, CHR_EVENT_OPENED, Chardev
from kvmpy.errors import KvmpyError
from kvmpy.gdbstub import memory, target
from kvmpy.gdbstub.packet import (
    PACKET_SIZE,
    BadChecksum,
    Interrupt,
    Nak,
    Overrun,
    Packet,
    PacketReader,
    escape_binary,
    frame,
)
from kvmpy.log import stderr_line

if TYPE_CHECKING:
    from kvmpy.system import System

_log = logging.getLogger("kvmpy")

SIGINT, SIGQUIT, SIGTRAP, SIGABRT, SIGUNKNOWN = 2, 3, 5, 6, 143
_STOP_SIGNALS = {"debug": SIGTRAP, "paused": SIGINT, "prelaunch": SIGINT, "shutdown": SIGQUIT,
                 "internal-error": SIGABRT}
_WATCH_TYPES = {2: "write", 3: "read", 4: "access"}
_WATCH_PREFIX = {"write": "", "read": "r", "access": "a"}
_NO_GUEST_DEBUG = ("kvmpy: gdbstub: breakpoints, watchpoints and single-step need "
                   "KVM_SET_GUEST_DEBUG, which this accelerator does not provide")
_U64 = (1 << 64) - 1
_MAX_STEP_ROUNDS = 64
"""run() calls a step may take: exits completed in between, kicks."""


class ParseError(Exception):
    """A packet whose parameters do not parse: QEMU answers an empty packet."""


def _hex(text: str) -> int:
    if not text or not re.fullmatch(r"[0-9a-fA-F]+", text):
        raise ParseError(text)
    return int(text, 16)


@dataclass
class ThreadId:
    """``pPID.TID`` or ``TID``: -1 means all, 0 any."""

    pid: int
    tid: int


def parse_thread_id(text: str) -> ThreadId:
    def part(s: str) -> int:
        if s == "-1":
            return -1
        return _hex(s)

    if text.startswith("p"):
        pid_text, dot, tid_text = text[1:].partition(".")
        return ThreadId(part(pid_text), part(tid_text) if dot else -1)
    return ThreadId(1, part(text))


class GdbStub:
    """The RSP server on ``chardev`` for ``system``."""

    def __init__(self, system: System, chardev: Chardev, device: str) -> None:
        self.system = system
        self.chardev = chardev
        self.device = device
        self._reader = PacketReader()
        self._ack = True
        self._last = b""
        self.multiprocess = False
        self.attached = False
        self.has_xml = False
        self.connected = False
        self.waiting = False
        """gdb has resumed the VM and waits for a stop reply."""
        self.g_cpu = 0
        self.c_cpu = 0
        self._query_cpu: int | None = None
        self.phy_mem_mode = False
        self.breakpoints: Counter[int] = Counter()
        self.breakpoint_kinds: dict[int, int] = {}
        self.watchpoints: list[tuple[int, int, str]] = []
        self._watch_hit: DebugExit | None = None
        self._hmp_state: Any = None
        self._closed = False
        self._told_no_guest_debug = False
        self._told_no_watchpoints = False

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def num_harts(self) -> int:
        return len(self.system.harts)

    @property
    def guest_debug(self) -> bool:
        """Whether the accelerator can stop harts at breakpoints, watchpoints and steps."""
        accel = self.system.accel
        if hasattr(accel, "set_sw_breakpoints"):  # KVM: when the kernel has guest debugging
            return bool(getattr(accel, "guest_debug", False))
        return callable(getattr(accel, "set_breakpoints", None))

    def start(self) -> None:
        set_translator = getattr(self.system.accel, "set_debug_translator", None)
        if set_translator is not None:
            set_translator(lambda hart, vaddr: memory.translate(self.system, hart, vaddr))
        self.system.add_event_listener(self._on_vm_event)
        self.chardev.set_handlers(self._receive, lambda: PACKET_SIZE * 4, self._on_chr_event)
        if self.chardev.connected:  # a unix server with wait=on accepted gdb already
            self._on_chr_event(CHR_EVENT_OPENED)

    def close(self) -> None:
        """Stop serving (HMP ``gdbserver`` again, or the VM closes)."""
        if self._closed:
            return
        self._closed = True
        self.system.remove_event_listener(self._on_vm_event)
        self.chardev.set_handlers(None)
        self._clear_debug_state()

    # -- input ----------------------------------------------------------------------------

    def _on_chr_event(self, event: str) -> None:
        if event == CHR_EVENT_OPENED:
            self.connected = True
            self.attached = True
            self.multiprocess = False
            self.has_xml = False
            self._ack = True
            self._reader = PacketReader()
            self.c_cpu = self.g_cpu = 0
            self.waiting = False
            self.system.pause()  # QEMU: vm_stop(RUN_STATE_PAUSED) on connect
        elif event == CHR_EVENT_CLOSED:
            # The VM stays as it is (paused or running); gdb's breakpoints go with gdb.
            self.connected = False
            self.attached = False
            self.waiting = False
            self._clear_debug_state()

    def _receive(self, data: bytes) -> None:
        for event in self._reader.feed(data):
            try:
                self._on_event(event)
            except Exception as exc:  # a bug in kvmpy: never take the VMM down with it
                _log.error("gdbstub: failed to handle %r: %s", event, exc)
                self._send(b"E22")

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Packet):
            if self._ack:
                self.chardev.write(b"+")
            self._handle(event.payload)
        elif isinstance(event, Interrupt):
            self._interrupt()
        elif isinstance(event, BadChecksum):
            if self._ack:
                self.chardev.write(b"-")
        elif isinstance(event, Nak):
            if self._ack and self._last:
                self.chardev.write(self._last)
        elif isinstance(event, Overrun):
            _log.debug("gdbstub: command buffer overrun, dropping command")

    def _interrupt(self) -> None:
        """Ctrl-C: stop the whole VM (a STOP event brings gdb its T02)."""
        if self.system.running:
            self.system.pause()
        elif self.waiting:  # nothing runs (a VM that needs a reset): answer anyway
            self._stop_reply()

    # -- output ---------------------------------------------------------------------------

    def _send(self, payload: bytes | str) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self._last = frame(data)
        self.chardev.write(self._last)

    def _tid(self, hart: int) -> str:
        if self.multiprocess:
            return f"p01.{hart + 1:02x}"
        return f"{hart + 1:02x}"

    def _console(self, text: str) -> None:
        """An ``O`` packet: text on gdb's console (valid while gdb waits for a stop)."""
        data = text.replace("\n", "\r\n").encode()
        room = (PACKET_SIZE - 1) // 2
        for i in range(0, len(data), room):
            self._send(b"O" + binascii.hexlify(data[i:i + room]))

    # -- stops ----------------------------------------------------------------------------

    def debug_exception(self, hart: int, exit_: DebugExit) -> None:
        """A hart stopped for gdb (called on the main loop): stop the VM in ``debug``."""
        if not (self.attached and self.connected):  # gdb left meanwhile: run on
            driver = self.system.driver
            if self.system.running and driver is not None:
                driver.resume()  # undo the vCPU thread's stop request
            return
        self.c_cpu = self.g_cpu = hart
        self._watch_hit = exit_ if exit_.reason == "watchpoint" else None
        if self.system.running:
            self.system.pause("debug")

    def _on_vm_event(self, event: str, data: dict[str, Any]) -> None:
        if event == "STOP" and self.waiting and self.connected:
            self._stop_reply()
        elif event == "SHUTDOWN" and self.connected:
            reason = data.get("reason", "")
            if not self.system.config.no_shutdown or reason in ("host-qmp-quit", "host-signal"):
                self._send(b"W%02x" % (self.system.exit_code & 0xFF))  # the VM ends (QEMU)
                self.connected = False

    def _stop_reply(self) -> None:
        self.waiting = False
        status = self.system.status
        tid = self._tid(self.c_cpu)
        hit, self._watch_hit = self._watch_hit, None
        if status == "debug" and hit is not None:
            self._send(f"T05thread:{tid};{_WATCH_PREFIX[hit.kind]}watch:{hit.address:016x};")
            return
        self._send(f"T{_STOP_SIGNALS.get(status, SIGUNKNOWN):02x}thread:{tid};")

    # -- resuming -------------------------------------------------------------------------

    def _continue(self) -> None:
        self.waiting = True
        with contextlib.suppress(KvmpyError):  # a VM that needs a reset does not run (QEMU)
            self.system.resume()

    def _step(self, hart: int) -> None:
        """Execute one instruction of ``hart`` (others stay stopped), then stop in debug."""
        self.waiting = True
        system = self.system
        if not self.guest_debug:
            # SIGINT, not SIGTRAP: gdb must not take it for a finished step (a "next" would
            # step again forever); the O packet says why on gdb's console.
            self._console(_NO_GUEST_DEBUG.removeprefix("kvmpy: gdbstub: ") + "\n")
            self._say_no_guest_debug()
            self.waiting = False
            self._send(f"T{SIGINT:02x}thread:{self._tid(self.c_cpu)};")
            return
        if system.status in ("shutdown", "internal-error", "guest-panicked"):
            return
        from kvmpy.runloop import handle_exit

        assert system.accel is not None
        vcpu: Any = system.accel.vcpus[hart]
        system.status = "running"
        system.emit("RESUME")
        vcpu.set_single_step(True)
        try:
            for _ in range(_MAX_STEP_ROUNDS):
                exit_ = vcpu.run()
                if isinstance(exit_, DebugExit):
                    self._watch_hit = exit_ if exit_.reason == "watchpoint" else None
                    break
                if isinstance(exit_, HaltExit):
                    break
                if isinstance(exit_, IntrExit):
                    continue
                if not handle_exit(system, vcpu, exit_):
                    break
        finally:
            vcpu.set_single_step(False)
        self.c_cpu = self.g_cpu = hart
        if system.status == "running":
            system.status = "debug"
            system.emit("STOP")

    def _say_no_guest_debug(self) -> None:
        if not self._told_no_guest_debug:  # once per stub: gdb retries each breakpoint
            self._told_no_guest_debug = True
            stderr_line(_NO_GUEST_DEBUG)

    # -- debug state ----------------------------------------------------------------------

    def _apply_debug_state(self) -> None:
        accel: Any = self.system.accel
        if not self.guest_debug:
            return
        driver = self.system.driver
        running = self.system.running and driver is not None
        if running:
            assert driver is not None
            driver.pause()
        try:
            if hasattr(accel, "set_sw_breakpoints"):
                accel.set_sw_breakpoints(
                    {a: self.breakpoint_kinds.get(a, 0) for a in self.breakpoints}, self.g_cpu)
            else:
                accel.set_breakpoints(sorted(self.breakpoints))
            accel.set_watchpoints(self.watchpoints)
        finally:
            if running:
                assert driver is not None
                driver.resume()

    def _clear_debug_state(self) -> None:
        if self.breakpoints or self.watchpoints:
            self.breakpoints.clear()
            self.watchpoints.clear()
            self._apply_debug_state()

    # -- packets --------------------------------------------------------------------------

    def _handle(self, payload: bytes) -> None:
        try:
            text = payload.decode("latin-1")
        except UnicodeDecodeError:
            self._send(b"")
            return
        if not text:
            self._send(b"")
            return
        handler = _HANDLERS.get(text[0])
        if handler is None:
            self._send(b"")
            return
        try:
            handler(self, text[1:], payload[1:])
        except ParseError:
            self._send(b"")

    def _cpu(self, tid: ThreadId) -> int | None:
        """The hart a one-thread id names (QEMU's gdb_get_cpu)."""
        if tid.pid not in (0, 1) or tid.tid < 0 or tid.tid > self.num_harts:
            return None
        return 0 if tid.tid == 0 else tid.tid - 1

    def _vcpu(self, hart: int) -> Any:
        assert self.system.accel is not None
        return self.system.accel.vcpus[hart]

    # '?' and simple ones

    def cmd_halt_reason(self, args: str, raw: bytes) -> None:
        self._send(f"T{SIGTRAP:02x}thread:{self._tid(self.c_cpu)};")
        self.breakpoints.clear()  # gdb is connecting: a clean state (QEMU)
        self.watchpoints.clear()
        self._apply_debug_state()

    def cmd_extended(self, args: str, raw: bytes) -> None:
        self._send(b"OK")

    def cmd_kill(self, args: str, raw: bytes) -> None:
        self._kill()

    def _kill(self) -> None:
        stderr_line("kvmpy: Terminated via GDBstub")
        from kvmpy.monitor import commands

        self.system.exit_code = 0
        commands.quit_vm(self.system)

    def cmd_detach(self, args: str, raw: bytes) -> None:
        if self.multiprocess:
            if not args.startswith(";"):
                self._send(b"E22")
                return
            _hex(args[1:])
        self._clear_debug_state()
        self.attached = False
        self._continue()
        self.waiting = False
        self._send(b"OK")

    def cmd_continue(self, args: str, raw: bytes) -> None:
        if args:
            self._set_pc(self.c_cpu, _hex(args))
        self._continue()

    def cmd_continue_signal(self, args: str, raw: bytes) -> None:
        _hex(args.split(";")[0])
        self._continue()

    def cmd_step(self, args: str, raw: bytes) -> None:
        if args:
            self._set_pc(self.c_cpu, _hex(args))
        self._step(self.c_cpu)

    def _set_pc(self, hart: int, pc: int) -> None:
        self._vcpu(hart).set_reg("pc", pc & _U64)

    def cmd_v(self, args: str, raw: bytes) -> None:
        if args.startswith("Cont?"):
            self._send(b"vCont;c;C;s;S")
        elif args.startswith("Cont"):
            self._vcont(args[4:])
        elif args.startswith("Attach;"):
            try:
                pid = _hex(args[7:])
            except ParseError:
                pid = -1
            if pid != 1:
                self._send(b"E22")
                return
            self.attached = True
            self.c_cpu = self.g_cpu = 0
            self._send(f"T{SIGTRAP:02x}thread:{self._tid(0)};")
        elif args.startswith("Kill;"):
            self._send(b"OK")
            self._kill()
        else:
            self._send(b"")

    def _vcont(self, text: str) -> None:
        states: list[str | None] = [None] * self.num_harts
        pos = 0
        while pos < len(text):
            match = re.compile(r";([cCsS])([0-9a-fA-F]*)(?::([^;]*))?").match(text, pos)
            if match is None:
                self._send(b"")
                return
            pos = match.end()
            action = match.group(1).lower()
            if match.group(1) in "CS" and not match.group(2):
                self._send(b"E22")
                return
            thread = match.group(3)
            if thread is None:
                targets = list(range(self.num_harts))
            else:
                try:
                    tid = parse_thread_id(thread)
                except ParseError:
                    self._send(b"E22")
                    return
                if tid.pid == -1 or tid.tid == -1:
                    targets = list(range(self.num_harts))
                else:
                    hart = self._cpu(tid)
                    if hart is None:
                        self._send(b"E22")
                        return
                    targets = [hart]
            for hart in targets:
                if states[hart] is None:
                    states[hart] = action
        steps = [i for i, s in enumerate(states) if s == "s"]
        if not text:
            self._send(b"")  # no action at all
        elif steps:
            self._step(steps[0])
        elif any(s == "c" for s in states):
            self._continue()

    # registers

    def _read_reg(self, regnum: int) -> bytes | None:
        name = target.register_name(regnum)
        if name is None:
            return None
        try:
            value = int(self._vcpu(self.g_cpu).get_reg(name))
        except (KvmpyError, KeyError, ValueError):
            if regnum < target.CSR_BASE:
                return None
            value = 0  # a CSR of QEMU's list the hart does not implement
        return (value & _U64).to_bytes(8, "little")

    def _write_reg(self, regnum: int, data: bytes) -> None:
        name = target.register_name(regnum)
        if name is None or regnum == 0 or len(data) < 8:
            return
        value = int.from_bytes(data[:8], "little")
        if name == "priv":
            value &= 3
            value = 1 if value == 2 else value
        with contextlib.suppress(KvmpyError, KeyError, ValueError):  # QEMU ignores refusals
            self._vcpu(self.g_cpu).set_reg(name, value)

    def cmd_read_registers(self, args: str, raw: bytes) -> None:
        out = b"".join(self._read_reg(n) or bytes(8) for n in range(target.CORE_REGS))
        self._send(binascii.hexlify(out))

    def cmd_write_registers(self, args: str, raw: bytes) -> None:
        try:
            data = binascii.unhexlify(args[:len(args) // 2 * 2])
        except binascii.Error:
            self._send(b"E22")
            return
        for n in range(min(target.CORE_REGS, len(data) // 8)):
            self._write_reg(n, data[8 * n:8 * n + 8])
        self._send(b"OK")

    def cmd_read_register(self, args: str, raw: bytes) -> None:
        if not self.has_xml:
            self._send(b"")
            return
        value = self._read_reg(_hex(args))
        self._send(b"E14" if value is None else binascii.hexlify(value))

    def cmd_write_register(self, args: str, raw: bytes) -> None:
        if not self.has_xml:
            self._send(b"")
            return
        match = re.match(r"([0-9a-fA-F]+).", args)  # "n=r", any separator as QEMU's parser
        if match is None:
            self._send(b"E22")
            return
        regnum, value_text = int(match.group(1), 16), args[match.end():]
        try:
            data = binascii.unhexlify(value_text[:len(value_text) // 2 * 2])
        except binascii.Error:
            self._send(b"E22")
            return
        self._write_reg(regnum, data.ljust(8, b"\0"))
        self._send(b"OK")

    # memory

    def _addr_len(self, text: str) -> tuple[int, int]:
        addr_text, comma, len_text = text.partition(",")
        if not comma:
            raise ParseError(text)
        return _hex(addr_text), _hex(len_text)

    def cmd_read_memory(self, args: str, raw: bytes) -> None:
        try:
            addr, length = self._addr_len(args)
        except ParseError:
            self._send(b"E22")
            return
        if length > PACKET_SIZE // 2:
            self._send(b"E22")
            return
        try:
            data = memory.read(self.system, self.g_cpu, addr, length, self.phy_mem_mode)
        except KvmpyError:
            self._send(b"E14")
            return
        self._send(binascii.hexlify(data))

    def cmd_write_memory(self, args: str, raw: bytes) -> None:
        head, colon, hex_data = args.partition(":")
        if not colon:
            self._send(b"E22")
            return
        try:
            addr, length = self._addr_len(head)
            data = binascii.unhexlify(hex_data[:length * 2])
        except (ParseError, binascii.Error):
            self._send(b"E22")
            return
        if length > len(data):
            self._send(b"E22")
            return
        self._write_memory(addr, data)

    def cmd_write_binary(self, args: str, raw: bytes) -> None:
        head, colon, _ = args.partition(":")
        if not colon:
            self._send(b"E22")
            return
        try:
            addr, length = self._addr_len(head)
        except ParseError:
            self._send(b"E22")
            return
        data = raw[len(head) + 1:]
        if length != len(data):
            self._send(b"E22")
            return
        self._write_memory(addr, data)

    def _write_memory(self, addr: int, data: bytes) -> None:
        try:
            memory.write(self.system, self.g_cpu, addr, data, self.phy_mem_mode)
        except KvmpyError:
            self._send(b"E14")
            return
        self._send(b"OK")

    # breakpoints and watchpoints

    def _bp_params(self, args: str) -> tuple[int, int, int]:
        parts = args.split(",")
        if len(parts) < 3:
            raise ValueError(args)
        kind_text = parts[2].split(";")[0]
        return _hex(parts[0]), _hex(parts[1]), _hex(kind_text)

    def _z_request(self, args: str, inserting: bool) -> tuple[int, int, int] | None:
        """Z/z's type, address and kind; None once the refusal is sent: E22 for fewer than
        three parameters (one that does not parse reads as empty) or without guest debug,
        an empty answer for a type the stub does not know."""
        try:
            kind, addr, length = self._bp_params(args)
        except ValueError:
            self._send(b"E22")
            return None
        if kind not in (0, 1) and kind not in _WATCH_TYPES:
            self._send(b"")
            return None
        if not self.guest_debug:
            if inserting:
                self._say_no_guest_debug()
            self._send(b"E22")
            return None
        return kind, addr, length

    def cmd_insert(self, args: str, raw: bytes) -> None:
        request = self._z_request(args, inserting=True)
        if request is None:
            return
        kind, addr, length = request
        if kind in (0, 1):
            self.breakpoints[addr] += 1
            self.breakpoint_kinds[addr] = length
        else:
            if length == 0 or addr + length - 1 > _U64:
                stderr_line(f"kvmpy: tried to set invalid watchpoint at {addr:x}, "
                            f"len={length}")
                self._send(b"E22")
                return
            self.watchpoints.append((addr, length, _WATCH_TYPES[kind]))
        try:
            self._apply_debug_state()
        except KvmpyError as exc:
            if kind not in (0, 1) and not self._told_no_watchpoints:  # once per stub
                self._told_no_watchpoints = True
                stderr_line(f"kvmpy: gdbstub: {exc}; gdb's software watchpoints "
                            "(set can-use-hw-watchpoints 0) step instead")
            _log.debug("gdbstub: %s", exc)
            if kind in (0, 1):
                self.breakpoints[addr] -= 1
                self.breakpoints += Counter()
            else:
                self.watchpoints.pop()
            self._send(b"E22")
            return
        self._send(b"OK")

    def cmd_remove(self, args: str, raw: bytes) -> None:
        request = self._z_request(args, inserting=False)
        if request is None:
            return
        kind, addr, length = request
        if kind in (0, 1):
            if not self.breakpoints[addr]:
                self.breakpoints += Counter()
                self._send(b"E22")
                return
            self.breakpoints[addr] -= 1
            self.breakpoints += Counter()
        else:
            entry = (addr, length, _WATCH_TYPES[kind])
            if entry not in self.watchpoints:
                self._send(b"E22")
                return
            self.watchpoints.remove(entry)
        self._apply_debug_state()
        self._send(b"OK")

    # threads

    def cmd_set_thread(self, args: str, raw: bytes) -> None:
        if len(args) < 2:
            self._send(b"E22")
            return
        op, thread = args[0], args[1:]
        try:
            tid = parse_thread_id(thread)
        except ParseError:
            self._send(b"E22")
            return
        if tid.pid == -1 or tid.tid == -1:
            self._send(b"OK")
            return
        hart = self._cpu(tid)
        if hart is None:
            self._send(b"E22")
            return
        if op == "c":
            self.c_cpu = hart
        elif op == "g":
            self.g_cpu = hart
        else:
            self._send(b"E22")
            return
        self._send(b"OK")

    def cmd_thread_alive(self, args: str, raw: bytes) -> None:
        try:
            tid = parse_thread_id(args)
        except ParseError:
            self._send(b"E22")
            return
        hart = self._cpu(tid) if tid.pid != -1 and tid.tid != -1 else None
        self._send(b"E22" if hart is None else b"OK")

    # general queries

    def cmd_query(self, args: str, raw: bytes) -> None:
        if args == "C":
            self._send(f"QC{self._tid(0)}")
        elif args == "fThreadInfo":
            self._query_cpu = 0
            self._next_thread()
        elif args == "sThreadInfo":
            self._next_thread()
        elif args.startswith("ThreadExtraInfo,"):
            self._thread_extra(args[16:])
        elif args.startswith("Rcmd,"):
            self._rcmd(args[5:])
        elif args.startswith("Supported"):
            features = args[10:] if args.startswith("Supported:") else ""
            if "multiprocess+" in features:
                self.multiprocess = True
            self._send(f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;"
                       "vContSupported+;multiprocess+;QStartNoAckMode+")
        elif args.startswith("Xfer:features:read:"):
            self._xfer_features(args[19:])
        elif args == "Attached" or args.startswith("Attached:"):
            self._send(b"1")
        elif args == "qemu.Supported":
            self._send(b"sstepbits;sstep;PhyMemMode")
        elif args == "qemu.PhyMemMode":
            self._send(b"1" if self.phy_mem_mode else b"0")
        elif args == "qemu.sstepbits":
            self._send(b"ENABLE=1,NOIRQ=2,NOTIMER=4")
        elif args == "qemu.sstep":
            self._send(b"0x7")
        else:
            self._send(b"")

    def cmd_set(self, args: str, raw: bytes) -> None:
        if args == "StartNoAckMode":
            self._send(b"OK")
            self._ack = False
        elif args.startswith("qemu.PhyMemMode:"):
            try:
                self.phy_mem_mode = _hex(args[16:]) != 0
            except ParseError:
                self._send(b"E22")
                return
            self._send(b"OK")
        elif args.startswith(("qemu.sstep=", "qemu.sstep:")):
            try:
                flags = _hex(args[11:])
            except ParseError:
                self._send(b"E22")
                return
            self._send(b"E22" if flags & ~7 else b"OK")
        else:
            self._send(b"")

    def _next_thread(self) -> None:
        hart = self._query_cpu
        if hart is None or hart >= self.num_harts or not self.attached:
            self._send(b"l")
            return
        self._send(f"m{self._tid(hart)}")
        self._query_cpu = hart + 1

    def _thread_extra(self, text: str) -> None:
        try:
            hart = self._cpu(parse_thread_id(text))
        except ParseError:
            self._send(b"E22")
            return
        if hart is None:
            return  # QEMU sends nothing here
        vcpu = self._vcpu(hart)
        halted = bool(getattr(vcpu, "stopped", False) or getattr(vcpu, "halted", False))
        info = f"CPU#{hart} [{'halted ' if halted else 'running'}]"
        self._send(binascii.hexlify(info.encode()))

    def _rcmd(self, hex_text: str) -> None:
        if len(hex_text) % 2:
            self._send(b"E01")
            return
        try:
            line = binascii.unhexlify(hex_text).decode(errors="replace")
        except binascii.Error:
            self._send(b"E22")
            return
        from kvmpy.monitor import hmp

        if self._hmp_state is None:
            self._hmp_state = hmp.HmpState()
        output = hmp.run_command(self.system, line, state=self._hmp_state)
        if output:
            self._console(output)
        self._send(b"OK")

    def _xfer_features(self, text: str) -> None:
        match = re.fullmatch(r"([^:]*):([0-9a-fA-F]+),([0-9a-fA-F]+)", text)
        if match is None:
            self._send(b"E22")
            return
        self.has_xml = True
        document = target.FEATURES.get(match.group(1))
        if document is None:
            self._send(b"E00")
            return
        data = document.encode()
        offset, length = int(match.group(2), 16), int(match.group(3), 16)
        if offset > len(data):
            self._send(b"E00")
            return
        length = min(length, (PACKET_SIZE - 5) // 2)
        if length < len(data) - offset:
            self._send(b"m" + escape_binary(data[offset:offset + length]))
        else:
            self._send(b"l" + escape_binary(data[offset:]))


_HANDLERS = {
    "?": GdbStub.cmd_halt_reason, "!": GdbStub.cmd_extended, "k": GdbStub.cmd_kill,
    "D": GdbStub.cmd_detach, "c": GdbStub.cmd_continue, "C": GdbStub.cmd_continue_signal,
    "s": GdbStub.cmd_step, "v": GdbStub.cmd_v, "g": GdbStub.cmd_read_registers,
    "G": GdbStub.cmd_write_registers, "p": GdbStub.cmd_read_register,
    "P": GdbStub.cmd_write_register, "m": GdbStub.cmd_read_memory,
    "M": GdbStub.cmd_write_memory, "X": GdbStub.cmd_write_binary, "Z": GdbStub.cmd_insert,
    "z": GdbStub.cmd_remove, "H": GdbStub.cmd_set_thread, "T": GdbStub.cmd_thread_alive,
    "q": GdbStub.cmd_query, "Q": GdbStub.cmd_set,
}
