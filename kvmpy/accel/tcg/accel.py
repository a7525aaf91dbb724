"""``-accel tcg``: the accelerator object and its vCPUs, over the C core of :mod:`.core`.

One engine holds every hart of the VM and the shared RAM mapping; each :class:`TcgVcpu` runs
its hart for a slice per ``run()`` and returns the exit values of :mod:`kvmpy.accel.exits`.
With ``thread=single`` the round-robin driver calls them in turn on one thread; with
``thread=multi`` (QEMU's MTTCG, what ``-accel tcg`` chooses unless ``-icount`` is on) each
vCPU has a thread of its own, ``run()`` releases the GIL for the C core, a hart in WFI sleeps
inside it, and a stopped hart's thread waits in ``run()`` until the hart is started.

Built-in firmware mode (``-bios builtin``, no M-mode code at all): an ``ecall`` from S-mode is
an :class:`~kvmpy.accel.exits.SbiExit`, and SBI TIME arms :meth:`TcgVcpu.set_sbi_timer`,
whose compare raises STIP inside the core.  The mode is switched on by
:meth:`TcgAccel.set_builtin_firmware`, and implied when a hart is reset into S-mode (there is
then no M-mode firmware that could take the ecall).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from kvmpy import log
from kvmpy.accel import exits
from kvmpy.accel.base import PRV_M, PRV_S, AccelCaps, Accelerator
from kvmpy.accel.tcg import core
from kvmpy.accel.tcg.disas import disassemble_one
from kvmpy.errors import AccelError
from kvmpy.qom import Property, register_type

if TYPE_CHECKING:
    from kvmpy.accel.tcg.c_mmio import TcgCMmio
    from kvmpy.memory import GuestRAM, MmioBus

RUN_SLICE = 200_000
"""Instructions per ``run()`` call at most: long enough to amortise the call, short enough
for fair round-robin slices and prompt pause requests."""

_EXC_NAMES = ("misaligned_fetch", "fault_fetch", "illegal_instruction", "breakpoint",
              "misaligned_load", "fault_load", "misaligned_store", "fault_store",
              "user_ecall", "supervisor_ecall", "hypervisor_ecall", "machine_ecall",
              "exec_page_fault", "load_page_fault", "reserved", "store_page_fault")
_INT_NAMES = ("u_software", "s_software", "vs_software", "m_software", "u_timer", "s_timer",
              "vs_timer", "m_timer", "u_external", "s_external", "vs_external", "m_external")
_PRIV_NAMES = {0: "U", 1: "S", 3: "M"}
_U64 = (1 << 64) - 1
_STATE_CSRS = ("mstatus", "medeleg", "mideleg", "mie", "mtvec", "mscratch", "mepc", "mcause",
               "mtval", "stvec", "sscratch", "sepc", "scause", "stval", "satp", "mcounteren",
               "scounteren", "menvcfg", "senvcfg", "mcountinhibit", "mcycle", "minstret",
               "stimecmp", "tselect", "tcontrol")
"""CSRs of the hart-state schema carried in its ``csr`` dict (kvmpy.migration)."""


class TcgVcpu:
    """One hart of a :class:`TcgAccel` (implements ``Vcpu`` and ``FirmwareHart``)."""

    def __init__(self, accel: TcgAccel, index: int) -> None:
        self.index = index
        self._accel = accel
        self._engine = accel.engine
        self._exit: Any = core.ffi.new("tcg_exit *")
        self._value: Any = core.ffi.new("uint64_t *")
        self._stopped = False
        """The hart's SBI HSM power state as last set through this object; the engine only
        changes it when told (reset, set_reg, hart_start/stop), so the run loop can ask on
        every exit without a call into C (which lets other threads take the GIL)."""
        self._started = threading.Event()
        """thread=multi: a stopped hart's thread waits here in ``run()`` until the hart is
        started or kicked (WFI sleeps inside the core instead)."""

    # -- running -----------------------------------------------------------------------

    def run(self) -> exits.VcpuExit:
        """Run this hart for up to :data:`RUN_SLICE` instructions or until an exit."""
        x = self._exit
        while True:
            core.lib.tcg_run(self._engine, self.index, RUN_SLICE, x)
            if self._accel.tracing:
                self._accel.drain_trace()
            kind = x.kind
            if kind != core.EXIT_TRACE:
                break
        if self._accel.c_mmio is not None:
            self._accel.c_mmio.flush()  # C devices' output goes before what this exit sends
        if kind == core.EXIT_MMIO:
            return exits.MmioExit(int(x.gpa), int(x.size), bool(x.is_write), int(x.value))
        if kind == core.EXIT_NONE:
            return exits.IntrExit()
        if kind == core.EXIT_SBI:
            a = x.args
            return exits.SbiExit(int(a[7]), int(a[6]),
                                 (int(a[0]), int(a[1]), int(a[2]), int(a[3]), int(a[4]),
                                  int(a[5])))
        if kind == core.EXIT_HALT:
            return exits.HaltExit(None if x.deadline_ns < 0 else int(x.deadline_ns))
        if kind == core.EXIT_STOPPED:
            if self._accel.threaded_vcpus:
                self._started.wait()
                self._started.clear()
                return exits.IntrExit()
            return exits.HaltExit(None)
        if kind == core.EXIT_ERROR:
            return exits.InternalErrorExit(core.ffi.string(x.message).decode())
        if kind == core.EXIT_DEBUG:
            return _debug_exit(x)
        return exits.UnsupportedExit(int(kind))

    def step(self, n: int = 1) -> exits.VcpuExit:
        """Run at most ``n`` instructions (for the library and debuggers)."""
        core.lib.tcg_run(self._engine, self.index, max(1, n), self._exit)
        if self._accel.tracing:
            self._accel.drain_trace()
        if self._accel.c_mmio is not None:
            self._accel.c_mmio.flush()
        if self._exit.kind == core.EXIT_TRACE:
            return exits.IntrExit()
        return self._decode_last()

    def _decode_last(self) -> exits.VcpuExit:
        x = self._exit
        if x.kind in (core.EXIT_NONE, core.EXIT_TRACE):
            return exits.IntrExit()
        if x.kind == core.EXIT_MMIO:
            return exits.MmioExit(int(x.gpa), int(x.size), bool(x.is_write), int(x.value))
        if x.kind == core.EXIT_SBI:
            a = x.args
            return exits.SbiExit(int(a[7]), int(a[6]), tuple(int(v) for v in a[0:6]))  # type: ignore[arg-type]
        if x.kind == core.EXIT_HALT:
            return exits.HaltExit(None if x.deadline_ns < 0 else int(x.deadline_ns))
        if x.kind == core.EXIT_DEBUG:
            return _debug_exit(x)
        return exits.HaltExit(None)

    def set_single_step(self, on: bool) -> None:
        """Debugger single-step: ``run()`` returns ``DebugExit("step")`` once one instruction
        retired or a trap was taken (interrupts are held off meanwhile, as QEMU's
        SSTEP_NOIRQ); an MMIO or SBI exit completed in between counts as the instruction."""
        core.lib.tcg_set_single_step(self._engine, self.index, 1 if on else 0)

    @property
    def halted(self) -> bool:
        """In WFI, waiting for an interrupt (QEMU's ``CPUState.halted``)."""
        return self._get(core.REG_HALTED) != 0

    @property
    def instructions(self) -> int:
        """Instructions this hart has retired since the VM was created."""
        return self._get(core.REG_INSTRET)

    def complete_mmio_read(self, value: int) -> None:
        core.lib.tcg_complete_mmio_read(self._engine, self.index, value & _U64)

    def complete_sbi(self, error: int, value: int) -> None:
        core.lib.tcg_complete_sbi(self._engine, self.index, _s64(error), _s64(value))

    def kick(self) -> None:
        core.lib.tcg_kick(self._engine, self.index)
        self._started.set()

    def cancel_kick(self) -> None:
        """Forget kicks of a pause that is over, so the hart's next turn is not empty."""
        core.lib.tcg_cancel_kick(self._engine, self.index)

    def set_irq(self, irq: int, level: bool) -> None:
        core.lib.tcg_set_irq(self._engine, self.index, irq, 1 if level else 0)

    # -- registers ---------------------------------------------------------------------

    def _get(self, reg: int) -> int:
        if core.lib.tcg_get_reg(self._engine, self.index, reg, self._value) != 0:
            raise AccelError(f"tcg: hart {self.index}: register id {reg} cannot be read")
        return int(self._value[0])

    def get_reg(self, name: str) -> int:
        try:
            reg = core.reg_id(name)
        except KeyError:
            raise AccelError(f"tcg: unknown register '{name}'") from None
        return self._get(reg)

    def set_reg(self, name: str, value: int) -> None:
        try:
            reg = core.reg_id(name)
        except KeyError:
            raise AccelError(f"tcg: unknown register '{name}'") from None
        if core.lib.tcg_set_reg(self._engine, self.index, reg, value & _U64) != 0:
            raise AccelError(f"tcg: hart {self.index}: register '{name}' cannot be written")
        if reg == core.REG_STOPPED:
            self._set_stopped(value != 0)

    def reset(self, pc: int, priv: int, a0: int, a1: int, stopped: bool) -> None:
        if priv == PRV_S:
            self._accel.set_builtin_firmware(True)
        elif priv != PRV_M:
            raise AccelError(f"tcg: hart {self.index} cannot start in privilege {priv}")
        core.lib.tcg_reset_hart(self._engine, self.index, pc & _U64, priv, a0 & _U64,
                                a1 & _U64, 1 if stopped else 0)
        self._set_stopped(stopped)

    def _set_stopped(self, stopped: bool) -> None:
        self._stopped = stopped
        if not stopped:
            self._started.set()

    # -- FirmwareHart (built-in SBI) ---------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self._stopped

    def set_sbi_timer(self, deadline: int) -> None:
        core.lib.tcg_set_reg(self._engine, self.index, core.REG_SBI_TIMECMP, deadline & _U64)

    def flush_tlb(self) -> None:
        core.lib.tcg_flush_tlb(self._engine, self.index)

    def hart_start(self, start_addr: int, opaque: int) -> None:
        core.lib.tcg_reset_hart(self._engine, self.index, start_addr & _U64, PRV_S,
                                self.index, opaque & _U64, 0)
        self._set_stopped(False)

    def hart_stop(self) -> None:
        core.lib.tcg_set_reg(self._engine, self.index, core.REG_STOPPED, 1)
        self._stopped = True

    # -- VM state (kvmpy.migration) -----------------------------------------------------

    def get_arch_state(self) -> dict[str, Any]:
        """The hart's whole architectural state in kvmpy.migration's hart schema (see
        ``docs/vmstate.md``).  Only while the hart does not run."""
        s = core.ffi.new("tcg_hart_state *")
        if core.lib.tcg_get_hart_state(self._engine, self.index, s) != 0:
            raise AccelError(f"tcg: hart {self.index}: state cannot be read")
        return {
            "pc": int(s.pc), "priv": int(s.priv),
            "x": [int(v) for v in s.x], "f": [int(v) for v in s.f],
            "fflags": int(s.fflags), "frm": int(s.frm),
            "csr": {name: int(getattr(s, name)) for name in _STATE_CSRS},
            "mip": int(s.mip_sw), "mip_pins": int(s.mip_pins),
            "mtimecmp": int(s.mtimecmp), "sbi_timecmp": int(s.sbi_timecmp),
            "pmpcfg": [int(v) for v in s.pmpcfg], "pmpaddr": [int(v) for v in s.pmpaddr],
            "tdata1": [int(v) for v in s.tdata1], "tdata2": [int(v) for v in s.tdata2],
            "stopped": bool(s.stopped), "halted": bool(s.halted),
            "reservation": int(s.resv_pa) if s.resv_valid else None,
            "instret": int(s.insns),
        }

    def set_arch_state(self, state: dict[str, Any]) -> None:
        """Load a state of :meth:`get_arch_state`'s schema (already validated: every key
        present, values in range).  Only while the hart does not run."""
        s = core.ffi.new("tcg_hart_state *")
        s.pc = state["pc"] & _U64
        s.priv = state["priv"]
        for i in range(32):
            s.x[i] = state["x"][i] & _U64
            s.f[i] = state["f"][i] & _U64
        s.fflags = state["fflags"] & _U64
        s.frm = state["frm"] & _U64
        for name in _STATE_CSRS:
            setattr(s, name, state["csr"][name] & _U64)
        s.mip_sw = state["mip"] & _U64
        s.mip_pins = state["mip_pins"] & _U64
        s.mtimecmp = state["mtimecmp"] & _U64
        s.sbi_timecmp = state["sbi_timecmp"] & _U64
        for i in range(core.lib.TCG_NUM_PMP):
            s.pmpcfg[i] = state["pmpcfg"][i] & 0xFF
            s.pmpaddr[i] = state["pmpaddr"][i] & _U64
        for i in range(core.lib.TCG_NUM_TRIGGERS):
            s.tdata1[i] = state["tdata1"][i] & _U64
            s.tdata2[i] = state["tdata2"][i] & _U64
        s.stopped = 1 if state["stopped"] else 0
        s.halted = 1 if state["halted"] else 0
        reservation = state["reservation"]
        s.resv_valid = 0 if reservation is None else 1
        s.resv_pa = 0 if reservation is None else reservation & _U64
        s.insns = state["instret"] & _U64
        if core.lib.tcg_set_hart_state(self._engine, self.index, s) != 0:
            raise AccelError(f"tcg: hart {self.index}: state not accepted (privilege "
                             f"{state['priv']}, tselect {state['csr']['tselect']})")
        self._set_stopped(bool(state["stopped"]))


_WATCH_KINDS = {core.WATCH_WRITE: "write", core.WATCH_READ: "read",
                core.WATCH_ACCESS: "access"}


def _debug_exit(x: Any) -> exits.DebugExit:
    reason = int(x.value)
    if reason == core.DEBUG_WATCHPOINT:
        return exits.DebugExit("watchpoint", int(x.gpa), int(x.args[0]),
                               _WATCH_KINDS.get(int(x.is_write), "access"))
    return exits.DebugExit("step" if reason == core.DEBUG_STEP else "breakpoint")


def _s64(v: int) -> int:
    v &= _U64
    return v - (1 << 64) if v >> 63 else v


@register_type("tcg-accel", "accel", description="TCG: the built-in RV64GC interpreter")
class TcgAccel(Accelerator):
    """The interpreter accelerator: harts start in M-mode, the VMM provides CLINT/ACLINT."""

    name: ClassVar[str] = "tcg"
    supports_icount: ClassVar[bool] = True

    thread = Property(str, "single", "vCPU threading: multi runs each hart on a host thread "
                      "of its own (what -accel tcg chooses unless -icount is on), single runs "
                      "every hart on one thread, round-robin", choices=("single", "multi"))
    jit = Property(bool, True, "translate hot blocks to host code (x86-64 hosts; elsewhere, "
                   "and with jit=off, every instruction is interpreted)")
    jit_threshold = Property(int, 32, "times a block runs interpreted before it is translated "
                             "(1: at once)", name="jit-threshold")

    def __init__(self) -> None:
        self.vcpus: list[TcgVcpu] = []  # type: ignore[assignment]
        self.caps = AccelCaps(machine_mode=True, in_kernel_timer_ipi=False,
                              isa_extensions=core.ISA_EXTENSIONS, mmu_type="riscv,sv48")
        self.engine: Any = None
        self.tracing = False
        self._trace_buf: Any = None
        self._trace_lock = threading.Lock()
        self._memory: list[GuestRAM] = []
        self._int_log = log.logger("int")
        self._asm_log = log.logger("in_asm")
        self._exec_log = log.logger("exec")
        self._asm_last_pc: int | None = None
        self._holes: list[tuple[int, int]] = []
        self._windows: list[tuple[int, int]] = []
        self.c_mmio: TcgCMmio | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return core.unavailable_reason()

    def init_machine(self, ram: GuestRAM, num_harts: int,
                     roms: Sequence[GuestRAM] = ()) -> None:
        reason = core.unavailable_reason()
        if reason is not None:
            raise AccelError(f"tcg: {reason}")
        engine = core.lib.tcg_engine_new(core.ffi.cast("uint8_t *", ram.host_address),
                                         ram.base, ram.size, num_harts)
        if engine == core.ffi.NULL:
            raise AccelError(f"tcg: cannot create the interpreter for {num_harts} harts and "
                             f"RAM 0x{ram.base:x}+0x{ram.size:x}")
        self.engine = engine
        self._memory = [ram, *roms]
        self.threaded_vcpus = self.thread == "multi"
        if core.lib.tcg_set_multithread(engine, 1 if self.threaded_vcpus else 0) != 0:
            raise AccelError("No MTTCG when icount is enabled")
        core.lib.tcg_set_jit(engine, 1 if self.jit else 0)
        core.lib.tcg_set_jit_threshold(engine, min(max(1, self.jit_threshold), 1 << 30))
        for rom in roms:
            if core.lib.tcg_add_memory(engine, rom.base,
                                       core.ffi.cast("uint8_t *", rom.host_address),
                                       rom.size, 0) != 0:
                raise AccelError(f"tcg: too many memory regions ({rom.name})")
        for gpa, size in self._holes:
            self._apply_hole(gpa, size)
        self._apply_windows()
        self.vcpus = [TcgVcpu(self, i) for i in range(num_harts)]
        self.configure_tracing()

    # -- accelerator-level controls ------------------------------------------------------

    def set_builtin_firmware(self, on: bool) -> None:
        """``-bios builtin``: S-mode ecalls become SBI exits (see the module docstring)."""
        self._require_engine()
        core.lib.tcg_set_builtin_firmware(self.engine, 1 if on else 0)

    def set_icount(self, shift: int | None) -> None:
        """``-icount shift=N``: each retired instruction is 2**N ns of guest time (QEMU's
        icount), so mtime = (instructions << N) / 100 at 10 MHz; None: host time."""
        self._require_engine()
        core.lib.tcg_set_icount(self.engine, -1 if shift is None else shift)

    def add_mmio_hole(self, gpa: int, size: int) -> None:
        """Make ``[gpa, gpa+size)`` inside RAM exit as MMIO (HTIF ``tohost``/``fromhost``).

        May be called in board init, before the engine exists (it is applied then)."""
        self._holes.append((gpa, size))
        if self.engine is not None:
            self._apply_hole(gpa, size)

    def set_mmio_windows(self, windows: Sequence[tuple[int, int]]) -> None:
        """Declare where devices are (``(gpa, size)`` pairs, e.g. the bus regions): a load
        or store elsewhere outside memory is then an access fault, as on QEMU, instead of
        an MMIO exit.  May be called in board init, before the engine exists."""
        self._windows = list(windows)
        if self.engine is not None:
            self._apply_windows()

    def attach_c_mmio(self, bus: MmioBus) -> None:
        """Devices of ``bus`` with a C half (kvmpy.hw.c_mmio) complete accesses in the engine."""
        from kvmpy.accel.tcg.c_mmio import TcgCMmio

        if self.engine is not None and self.c_mmio is None:
            self.c_mmio = TcgCMmio(self.engine, bus)

    def _apply_windows(self) -> None:
        for gpa, size in self._windows:
            if core.lib.tcg_add_mmio_window(self.engine, gpa, size) != 0:
                raise AccelError("tcg: out of memory for MMIO windows")

    def _apply_hole(self, gpa: int, size: int) -> None:
        if core.lib.tcg_add_mmio_hole(self.engine, gpa, size) != 0:
            raise AccelError("tcg: too many MMIO holes")

    # -- dirty logging (live migration) --------------------------------------------------

    def start_dirty_log(self) -> None:
        """Log the RAM pages the harts write (see engine.h); GuestRAM merges the log."""
        self._require_engine()
        if core.lib.tcg_dirty_log_start(self.engine) != 0:
            raise AccelError("tcg: out of memory for the dirty log")

    def collect_dirty(self) -> bytes:
        """Bitmap of the RAM pages written since the last call; only while no hart runs."""
        self._require_engine()
        n = int(core.lib.tcg_dirty_log_bytes(self.engine))
        buf = core.ffi.new("uint8_t[]", n)
        if core.lib.tcg_dirty_log_collect(self.engine, buf, n) != 0:
            raise AccelError("tcg: dirty logging is off")
        return bytes(core.ffi.buffer(buf, n))

    def stop_dirty_log(self) -> None:
        if self.engine is not None:
            core.lib.tcg_dirty_log_stop(self.engine)

    def read_mtime(self) -> int:
        """mtime (10 MHz ticks; from retired instructions with -icount)."""
        self._require_engine()
        return int(core.lib.tcg_read_mtime(self.engine))

    def write_mtime(self, value: int) -> None:
        self._require_engine()
        core.lib.tcg_write_mtime(self.engine, value & _U64)

    def mtime_to_ns(self, mtime: int) -> int | None:
        """Host monotonic time (ns) at which mtime reaches ``mtime``; None with -icount."""
        self._require_engine()
        ns = int(core.lib.tcg_mtime_to_ns(self.engine, mtime & _U64))
        return None if ns < 0 else ns

    # -- debugger (gdbstub) -------------------------------------------------------------

    def set_breakpoints(self, pcs: Sequence[int]) -> None:
        """Replace the breakpoints: every hart stops (``DebugExit("breakpoint")``) before
        executing an instruction at one of these virtual pcs.  Call with the harts paused."""
        self._require_engine()
        values = [pc & _U64 for pc in pcs]
        if core.lib.tcg_set_breakpoints(self.engine, core.ffi.new("uint64_t[]", values or [0]),
                                        len(values)) != 0:
            raise AccelError(f"tcg: at most {core.lib.TCG_MAX_BREAKPOINTS} breakpoints")

    def set_watchpoints(self, watchpoints: Sequence[tuple[int, int, str]]) -> None:
        """Replace the watchpoints, ``(virtual address, length, "write"|"read"|"access")``:
        a matching load or store stops its hart before it happens.  Call with harts paused."""
        self._require_engine()
        kinds = {v: k for k, v in _WATCH_KINDS.items()}
        n = len(watchpoints)
        addrs = core.ffi.new("uint64_t[]", [w[0] & _U64 for w in watchpoints] or [0])
        lens = core.ffi.new("uint64_t[]", [w[1] & _U64 for w in watchpoints] or [0])
        types = core.ffi.new("uint32_t[]", [kinds[w[2]] for w in watchpoints] or [0])
        if core.lib.tcg_set_watchpoints(self.engine, addrs, lens, types, n) != 0:
            raise AccelError(f"tcg: at most {core.lib.TCG_MAX_WATCHPOINTS} watchpoints")

    def flush_code(self) -> None:
        """Memory was written behind the harts' back (a debugger): decoded code and
        translations are checked again."""
        self._require_engine()
        for vcpu in self.vcpus:
            vcpu.flush_tlb()

    def _require_engine(self) -> None:
        if self.engine is None:
            raise AccelError("tcg: the accelerator has no machine yet")

    # -- tracing (-d int, in_asm, exec) ------------------------------------------------

    def configure_tracing(self) -> None:
        """Follow the ``-d`` items now enabled; the core records only what is asked."""
        flags = 0
        if log.is_enabled("int"):
            flags |= 1 << core.TRACE_INT
        if log.is_enabled("in_asm"):
            flags |= 1 << core.TRACE_IN_ASM
        if log.is_enabled("exec"):
            flags |= 1 << core.TRACE_EXEC
        self.tracing = flags != 0
        if self.tracing and self._trace_buf is None:
            self._trace_buf = core.ffi.new("tcg_trace_rec[]", 1024)
        core.lib.tcg_set_trace(self.engine, flags)

    def drain_trace(self) -> None:
        with self._trace_lock:  # thread=multi: every hart's thread drains
            buf = self._trace_buf
            while True:
                n = core.lib.tcg_trace_drain(self.engine, buf, 1024)
                for i in range(n):
                    self._log_record(buf[i])
                if n < 1024:
                    return

    def _log_record(self, r: Any) -> None:
        if r.kind == core.TRACE_INT:
            cause = int(r.a)
            is_async = cause >> 63
            code = cause & 0x3F
            names = _INT_NAMES if is_async else _EXC_NAMES
            desc = names[code] if code < len(names) else "(unknown)"
            self._int_log.debug(
                "riscv_cpu_do_interrupt: hart:%d, async:%d, cause:%016x, epc:0x%016x, "
                "tval:0x%016x, desc=%s, mode:%s", r.hart, is_async, cause, r.pc, r.b, desc,
                _PRIV_NAMES.get(int(r.c), "?"))
        elif r.kind == core.TRACE_IN_ASM:
            pc, raw, length = int(r.pc), int(r.a), int(r.c)
            if pc != self._asm_last_pc:
                self._asm_log.debug("----------------\nIN: \nhart %d", r.hart)
            text = disassemble_one(raw, length, pc)
            self._asm_log.debug("0x%016x:  %0*x          %s", pc, 2 * length, raw, text)
            self._asm_last_pc = pc + length
        elif r.kind == core.TRACE_EXEC:
            self._exec_log.debug("Trace %d: 0x%016x [priv %s]", r.hart, r.pc,
                                 _PRIV_NAMES.get(int(r.a), "?"))

    def close(self) -> None:
        if self.c_mmio is not None:
            self.c_mmio.close()
            self.c_mmio = None
        if self.engine is not None:
            core.lib.tcg_engine_free(self.engine)
            self.engine = None
        self.vcpus = []
        self._memory = []


