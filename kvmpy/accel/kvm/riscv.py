"""The ``kvm`` accelerator on a riscv64 host: policy on top of the thin KVM wrappers.

- selection: :func:`probe` says in one line why KVM cannot run here (or None);
- the vCPU (:class:`KvmRiscvVcpu`): exits as :mod:`kvmpy.accel.exits` values, registers by name
  through ONE_REG, the S-mode external interrupt through ``KVM_INTERRUPT``, kicks through
  ``immediate_exit`` plus a signal, power-on state per the KVM boot contract (pc = entry,
  a0 = hartid, a1 = FDT, S-mode; the other harts STOPPED until SBI HSM starts them in-kernel);
- the accelerator (:class:`KvmAccel`): one VM, one memory slot over guest RAM, one vCPU per hart,
  capabilities (ISA string from ``config.isa`` and the ISA_EXT registers, MMU mode, timebase,
  and QEMU's refusal of M-mode firmware, :data:`FIRMWARE_REFUSAL`) for the board.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, ClassVar

from kvmpy import log
from kvmpy.accel.base import IRQ_S_EXT, PRV_M, PRV_S, PRV_U, AccelCaps, Accelerator, Vcpu
from kvmpy.accel.exits import (
    DebugExit,
    InternalErrorExit,
    IntrExit,
    MmioExit,
    UnsupportedExit,
    VcpuExit,
)
from kvmpy.accel.kvm import abi, onereg
from kvmpy.accel.kvm.kvm import Kvm, KvmIoctlError, Vm
from kvmpy.accel.kvm.kvm import Vcpu as VcpuFd
from kvmpy.accel.kvm.swbreak import SwBreakpoints, instruction_length, next_pcs
from kvmpy.errors import AccelError, KvmpyError
from kvmpy.qom import register_type

if TYPE_CHECKING:
    from kvmpy.accel.kvm.c_loop import KvmCMmio
    from kvmpy.accel.kvm.ioeventfd import Doorbells
    from kvmpy.memory import GuestRAM, MmioBus
    from kvmpy.system import System

_log = logging.getLogger("kvmpy")

KVM_DEVICE = "/dev/kvm"
CPUINFO = "/proc/cpuinfo"
KICK_SIGNAL = signal.SIGUSR1
"""Sent to a vCPU thread blocked in ``KVM_RUN`` so that it returns EINTR (its handler does
nothing); ``immediate_exit`` covers a thread that is not inside ``KVM_RUN`` yet."""

_U64 = (1 << 64) - 1
_CSR_SEED = 0x015
# scounteren at boot: CY, TM and IR readable from U-mode, as KVM's own vCPU reset sets it
# (arch/riscv/kvm/vcpu.c, Linux 5.18-6.15) and OpenSBI leaves it (sbi_hart.c, mstatus_init);
# a kernel without the SBI PMU driver never sets it, and its vDSO reads `time` from U-mode.
_RESET_SCOUNTEREN = 0x7
_MMU_TYPES = {8: "riscv,sv39", 9: "riscv,sv48", 10: "riscv,sv57"}
FIRMWARE_REFUSAL = "Machine mode firmware is not supported in combination with KVM."
"""QEMU 7.2's words (hw/riscv/virt.c) for ``-bios default|FILE`` under KVM: a KVM guest starts
in S-mode, so only ``-bios none`` or kvmpy's ``builtin`` SBI (provided in-kernel) can run."""
_get_ident = threading.get_ident
_EXC_BREAKPOINT = 3
_SSTATUS_SIE = 1 << 1
_SSTATUS_SPIE = 1 << 5
_SSTATUS_SPP = 1 << 8
STEP_TIMEOUT = 5.0
"""Seconds a debugger step may run before the hart is stopped wherever it is (a step that
waits on a hart gdb keeps stopped, or never comes back from a trap)."""
NO_WATCHPOINTS = ("kvm: watchpoints need hardware triggers, which RISC-V KVM does not give "
                  "to the VMM (software breakpoints only)")


# -- selection --------------------------------------------------------------------------------


def host_has_h_extension(cpuinfo: str = CPUINFO) -> bool | None:
    """From the first ``isa`` line of /proc/cpuinfo; None when it cannot be told."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "isa":
                    base = value.strip().lower().split("_")[0]
                    return base.startswith("rv") and "h" in base[4:]
    except OSError:
        return None
    return None


def probe(host_machine: str | None = None, device: str = KVM_DEVICE,
          cpuinfo: str = CPUINFO) -> str | None:
    """None when a RISC-V KVM is usable here, else the one-line reason why not.

    Checks, in order: the host is riscv64; ``device`` opens; its API version is 12; a VM and a
    vCPU can be created and the vCPU answers a RISC-V ONE_REG read (``config.isa``), which an
    x86 ``/dev/kvm`` (even seen through qemu-user) does not.
    """
    machine = host_machine if host_machine is not None else os.uname().machine
    if machine != "riscv64":
        return f"the host is {machine}, not riscv64: its KVM cannot run RISC-V guests"
    try:
        kvm = Kvm(device)
    except FileNotFoundError:
        if host_has_h_extension(cpuinfo) is False:
            return (f"{device} not found: the host CPU has no H (hypervisor) extension, "
                    "which KVM needs")
        return (f"{device} not found: load the kvm module (modprobe kvm); the kernel needs "
                "CONFIG_KVM and the CPU the H extension")
    except PermissionError:
        return (f"permission denied opening {device}: add your user to the kvm group "
                "(usermod -aG kvm $USER) and log in again")
    except OSError as exc:
        return f"cannot open {device}: {exc.strerror}"
    with kvm:
        try:
            version = kvm.api_version()
        except OSError as exc:
            if exc.errno == errno.ENOSYS:  # qemu-user passes no KVM ioctl to the host
                return (f"{device} is not a RISC-V KVM: {exc} (an emulator such as "
                        "qemu-user, whose host KVM runs host guests only)")
            return f"{device} is not a usable KVM: {exc}"
        if version != abi.KVM_API_VERSION:
            return f"{device} has KVM API version {version}, kvmpy needs {abi.KVM_API_VERSION}"
        try:
            with kvm.create_vm() as vm, vm.create_vcpu(0) as vcpu:
                vcpu.get_one_reg(onereg.config_id("isa"))
        except OSError as exc:
            return f"{device} is not a RISC-V KVM: {exc} (config.isa)"
    return None


# -- kicks ------------------------------------------------------------------------------------


def _kick_handler(signum: int, frame: FrameType | None) -> None:
    """Nothing to do: the signal only makes ``KVM_RUN`` return EINTR in the vCPU thread."""


def install_kick_handler() -> bool:
    """Install the no-op handler of :data:`KICK_SIGNAL` (main thread only). False when it
    cannot be installed (not the main thread, or the application handles that signal
    itself); kicks then rely on ``immediate_exit`` and in-kernel wakeups alone."""
    try:
        current = signal.getsignal(KICK_SIGNAL)
        if current is _kick_handler:
            return True
        if current is not signal.SIG_DFL:
            _log.debug("kvm: signal %d is handled by the application; vCPU kicks use "
                       "immediate_exit only", KICK_SIGNAL)
            return False
        signal.signal(KICK_SIGNAL, _kick_handler)
    except ValueError:  # not the main thread
        return False
    return True


# -- the vCPU ---------------------------------------------------------------------------------


class KvmRiscvVcpu:
    """Hart ``index`` as a KVM vCPU; implements :class:`kvmpy.accel.base.Vcpu`.

    ``fd`` is the thin wrapper (:class:`kvmpy.accel.kvm.kvm.Vcpu`); everything this class does
    goes through it.  ``double_fp`` says that FP registers are the 64-bit FP_D file (the
    hart has D), else the 32-bit FP_F one.
    """

    def __init__(self, fd: VcpuFd, index: int, double_fp: bool = True) -> None:
        self.fd = fd
        self.index = index
        self._fd_run = fd.run
        self._double_fp = double_fp
        self._thread: int | None = None
        self._kick_signal = True
        self._mtimecmp = _U64
        self.accel: KvmAccel | None = None
        self._step_targets: set[int] = set()
        self._step_timer: threading.Timer | None = None
        self._step_expired = False
        self._step_count = 0
        """Which step a timer belongs to (one that fires as its step ends does nothing)."""

    # running

    def run(self) -> VcpuExit:
        """``KVM_RUN`` until an exit the VMM must handle. CSR exits (Zkr ``seed``) are
        completed here; KVM_RUN errors and FAIL_ENTRY/INTERNAL_ERROR become
        :class:`InternalErrorExit` with a register dump."""
        self._thread = _get_ident()
        try:
            exit_ = self._fd_run()
        except KvmIoctlError as exc:
            return InternalErrorExit(f"{exc}\n{self.register_dump()}")
        if exit_.__class__ is MmioExit:
            return exit_
        return self._other_exit(exit_)

    def use_run_loop(self, run: Callable[[], VcpuExit]) -> None:
        """Run through ``run`` (a C run loop over this vCPU's fd, :mod:`.c_loop`) instead of
        the wrapper's ``run()``; same exits."""
        self._fd_run = run

    def _other_exit(self, exit_: VcpuExit) -> VcpuExit:
        while True:
            if isinstance(exit_, InternalErrorExit):
                return InternalErrorExit(f"{exit_.message}\n{self.register_dump()}")
            if exit_.__class__ is IntrExit and self._step_expired:
                return DebugExit("step")
            if isinstance(exit_, UnsupportedExit) and exit_.code == abi.KVM_EXIT_DEBUG:
                debug = self._debug_exit()
                if debug is not None:
                    return debug
            elif isinstance(exit_, UnsupportedExit) and exit_.code == abi.KVM_EXIT_RISCV_CSR:
                self._complete_csr()
            else:
                return exit_
            try:
                exit_ = self._fd_run()
            except KvmIoctlError as exc:
                return InternalErrorExit(f"{exc}\n{self.register_dump()}")

    def _debug_exit(self) -> DebugExit | None:
        """``KVM_EXIT_DEBUG``: an ``ebreak`` at pc. One of the debugger's stops the hart;
        the guest's own goes to the guest as the breakpoint exception KVM did not delegate
        (None: run on)."""
        pc = self.get_reg("pc")
        if pc in self._step_targets:
            return DebugExit("step")
        if self.accel is not None and pc in self.accel.sw_breakpoints.patches:
            return DebugExit("breakpoint")
        self.inject_breakpoint(pc)
        return None

    def inject_breakpoint(self, pc: int) -> None:
        """The trap the hart takes for ``ebreak`` at ``pc`` (privileged spec 3.1.6.1, 4.1.1):
        sepc = pc, scause = 3, stval = pc, SPP = the mode it ran in, SPIE = SIE, SIE = 0,
        S-mode, pc = stvec's base (exceptions never vector)."""
        sstatus = self.get_reg("sstatus")
        user = self.get_reg("priv") == PRV_U
        sstatus = (sstatus & ~(_SSTATUS_SPP | _SSTATUS_SPIE | _SSTATUS_SIE)) \
            | (0 if user else _SSTATUS_SPP) | (_SSTATUS_SPIE if sstatus & _SSTATUS_SIE else 0)
        self.set_reg("sepc", pc)
        self.set_reg("scause", _EXC_BREAKPOINT)
        self.set_reg("stval", pc)
        self.set_reg("sstatus", sstatus)
        self.set_reg("priv", PRV_S)
        self.set_reg("pc", self.get_reg("stvec") & ~3 & _U64)

    def set_single_step(self, on: bool) -> None:
        """Debugger single-step without hardware help: temporary breakpoints where the
        instruction at pc may lead (:func:`next_pcs`), the breakpoint at pc itself lifted
        meanwhile; ``run()`` returns ``DebugExit("step")`` at one of them, or after
        :data:`STEP_TIMEOUT` wherever the hart is (interrupts stay enabled: their handlers run
        within the step, as with QEMU's ``sstep`` flags 0)."""
        accel = self.accel
        if accel is None or not accel.guest_debug:
            raise AccelError("kvm: single-step needs KVM_SET_GUEST_DEBUG")
        bps = accel.sw_breakpoints
        if not on:
            if self._step_timer is not None:
                self._step_timer.cancel()
                self._step_timer = None
            self._step_count += 1
            self._step_targets = set()
            self._step_expired = False
            bps.remove_owner("step")
            bps.relower()
            accel.sync_guest_debug()
            return
        pc = self.get_reg("pc")
        try:
            raw = accel.read_virtual(self.index, pc, 2)
            if instruction_length(int.from_bytes(raw, "little")) == 4:
                raw = accel.read_virtual(self.index, pc, 4)
            targets = next_pcs(int.from_bytes(raw, "little"), pc, self.get_reg,
                               self.get_reg("priv") == PRV_U)
        except KvmpyError as exc:  # pc not in memory: the fetch traps, the timeout ends it
            _log.debug("kvm: hart %d: no instruction at 0x%x to step: %s", self.index, pc, exc)
            targets = set()
        targets.discard(pc)  # `j .`: the step ends at the timeout
        bps.lift(pc)
        for target in set(targets):
            try:
                bps.insert(target, accel.translate(self.index, target), 0, "step")
            except KvmpyError as exc:  # not mapped now: a trap will tell; the timeout ends it
                _log.debug("kvm: hart %d: no step breakpoint at 0x%x: %s", self.index,
                           target, exc)
                targets.discard(target)
        self._step_targets = targets
        self._step_expired = False
        self._step_count += 1
        accel.sync_guest_debug()
        timer = threading.Timer(STEP_TIMEOUT, self._step_timeout, (self._step_count,))
        timer.daemon = True
        self._step_timer = timer
        timer.start()

    def _step_timeout(self, count: int) -> None:
        if count == self._step_count:
            self._step_expired = True
            self.kick()

    def _complete_csr(self) -> None:
        csr = self.fd.kvm_run.riscv_csr
        if csr.csr_num == _CSR_SEED:
            # Zkr: OPST = ES16 (valid entropy) with 16 random bits (Zkr spec, seed CSR).
            self.fd.complete_csr((0b10 << 30) | random.getrandbits(16))
        else:
            log.guest_error(f"hart {self.index}: access to CSR 0x{csr.csr_num:x} "
                            "forwarded by KVM, not implemented")
            self.fd.complete_csr(0)

    def complete_mmio_read(self, value: int) -> None:
        self.fd.complete_mmio_read(value)

    def complete_sbi(self, error: int, value: int) -> None:
        self.fd.complete_sbi(error, value)

    def kick(self) -> None:
        """``immediate_exit`` for a thread about to enter ``KVM_RUN``, and the kick signal
        for one already inside it."""
        self.fd.set_immediate_exit(True)
        thread = self._thread
        if self._kick_signal and thread is not None and thread != threading.get_ident():
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pthread_kill(thread, KICK_SIGNAL)

    def set_irq(self, irq: int, level: bool) -> None:
        """Only the S-mode external interrupt (mip bit 9) comes from the VMM (the PLIC);
        the timer and IPIs are in-kernel, so other pins are ignored."""
        if irq == IRQ_S_EXT:
            self.fd.interrupt(abi.KVM_INTERRUPT_SET if level else abi.KVM_INTERRUPT_UNSET)

    # registers

    def _reg_id(self, name: str) -> int | None:
        reg = onereg.gpr_id(name)
        if reg is not None:
            return reg
        if name in onereg.CSR_NAMES:
            return onereg.csr_id(name)
        if name == "fcsr":
            return onereg.fp_id(32, self._double_fp)
        if name.startswith("f") and name[1:].isdigit() and 0 <= int(name[1:]) < 32:
            return onereg.fp_id(int(name[1:]), self._double_fp)
        if name == "time":
            return onereg.timer_id("time")
        return None

    def get_reg(self, name: str) -> int:
        """``pc``, ``x0``..``x31``/ABI names, ``f0``..``f31``, ``fcsr``, the supervisor CSRs,
        ``time``, ``priv`` (PRV_S/PRV_U), ``mhartid``. M-mode state does not exist under KVM."""
        if name in ("x0", "zero"):
            return 0
        if name == "priv":
            mode = self._get(onereg.core_id("mode"), "mode")
            return PRV_S if mode == abi.KVM_RISCV_MODE_S else PRV_U
        if name == "mhartid":
            return self.index
        if name == "mtimecmp":
            return self._mtimecmp
        return self._get(self._lookup(name), name)

    def set_reg(self, name: str, value: int) -> None:
        if name in ("x0", "zero"):
            return
        if name == "priv":
            if value not in (PRV_S, PRV_U):
                raise AccelError(f"kvm: hart {self.index} cannot run in privilege {value}: "
                                 "KVM guests run in S or U mode")
            mode = abi.KVM_RISCV_MODE_S if value == PRV_S else abi.KVM_RISCV_MODE_U
            self._set(onereg.core_id("mode"), mode, "mode")
            return
        if name == "mtimecmp":  # no ACLINT under KVM: the timer is in-kernel (SBI TIME/Sstc)
            self._mtimecmp = value & _U64
            return
        self._set(self._lookup(name), value, name)

    def _lookup(self, name: str) -> int:
        reg = self._reg_id(name)
        if reg is None:
            raise AccelError(f"kvm: register '{name}' is not accessible under KVM")
        return reg

    def _get(self, reg: int, name: str) -> int:
        try:
            return self.fd.get_one_reg(reg)
        except OSError as exc:
            raise AccelError(f"kvm: hart {self.index}: {exc} ({name}, id 0x{reg:x})") from exc

    def _set(self, reg: int, value: int, name: str) -> None:
        try:
            self.fd.set_one_reg(reg, value)
        except OSError as exc:
            raise AccelError(f"kvm: hart {self.index}: {exc} ({name}, id 0x{reg:x})") from exc

    def reset(self, pc: int, priv: int, a0: int, a1: int, stopped: bool) -> None:
        """The KVM boot contract: GPRs and supervisor CSRs zero (satp = 0) but scounteren
        (CY, TM, IR, as KVM resets it), pc/a0/a1 set, S-mode, external interrupt line low;
        ``stopped`` harts wait in-kernel for SBI HSM."""
        if priv == PRV_M:
            raise AccelError("kvm: harts cannot start in M-mode under KVM "
                             f"({FIRMWARE_REFUSAL})")
        for name in onereg.ABI_NAMES[1:]:
            self._set(onereg.core_id(name), 0, name)
        for csr in ("sie", "stvec", "sscratch", "sepc", "scause", "stval", "satp", "sstatus"):
            self._set(onereg.csr_id(csr), 0, csr)
        self._set(onereg.csr_id("scounteren"), _RESET_SCOUNTEREN, "scounteren")
        self._set(onereg.core_id("pc"), pc, "pc")
        self._set(onereg.core_id("a0"), a0, "a0")
        self._set(onereg.core_id("a1"), a1, "a1")
        self.set_reg("priv", priv)
        with contextlib.suppress(OSError):
            self.fd.set_one_reg(onereg.timer_id("state"), abi.KVM_RISCV_TIMER_STATE_OFF)
        self.fd.interrupt(abi.KVM_INTERRUPT_UNSET)
        self.fd.set_mp_state(abi.KVM_MP_STATE_STOPPED if stopped else abi.KVM_MP_STATE_RUNNABLE)

    @property
    def stopped(self) -> bool:
        """Powered off (SBI HSM STOPPED). The vCPU thread still calls run(): KVM sleeps."""
        return self.fd.get_mp_state() == abi.KVM_MP_STATE_STOPPED

    def register_dump(self) -> str:
        """pc, mode, x1..x31 and the supervisor CSRs, for internal-error reports."""
        try:
            mode = "S" if self.fd.get_one_reg(onereg.core_id("mode")) else "U"
            lines = [f"pc  {self.fd.get_one_reg(onereg.core_id('pc')):016x}  mode {mode}"]
            regs = [f"{n:<4}{self.fd.get_one_reg(onereg.core_id(n)):016x}"
                    for n in onereg.ABI_NAMES[1:]]
            lines += ["  ".join(regs[i:i + 4]) for i in range(0, len(regs), 4)]
            csrs = [f"{n} {self.fd.get_one_reg(onereg.csr_id(n)):016x}"
                    for n in ("sstatus", "sepc", "scause", "stval", "satp", "stvec", "sie",
                              "sip")]
            lines += ["  ".join(csrs[i:i + 4]) for i in range(0, len(csrs), 4)]
        except OSError as exc:
            return f"(hart {self.index} registers unavailable: {exc})"
        return "\n".join(lines)


# -- the accelerator --------------------------------------------------------------------------

_SYS_RISCV_FLUSH_ICACHE = 259


def flush_icache() -> None:
    """``riscv_flush_icache`` on every host hart after a breakpoint patch (the guest fetches
    through the instruction cache); nothing elsewhere (tests on x86)."""
    if os.uname().machine != "riscv64":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall(_SYS_RISCV_FLUSH_ICACHE, ctypes.c_void_p(0), ctypes.c_void_p(_U64 >> 1),
                 ctypes.c_ulong(0))


def read_isa_extensions(vcpu: VcpuFd) -> tuple[str, ...]:
    """``riscv,isa`` after ``rv64``: letters from ``config.isa``, then each multi-letter
    ISA_EXT register that reads 1 (unknown to this kernel: -ENOENT/-EINVAL, skipped)."""
    letters = onereg.isa_letters(vcpu.get_one_reg(onereg.config_id("isa")))
    multi = []
    for index, name in enumerate(abi.KVM_RISCV_ISA_EXT_NAMES):
        if len(name) == 1:
            continue
        try:
            if vcpu.get_one_reg(onereg.isa_ext_id(index)):
                multi.append(name)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EINVAL):
                raise
    return (*letters, *sorted(multi, key=onereg.multi_letter_key))


def _optional_reg(vcpu: VcpuFd, reg: int) -> int | None:
    try:
        return vcpu.get_one_reg(reg)
    except OSError:
        return None


@register_type("kvm-accel", "accel", description="KVM accelerator (riscv64 hosts)")
class KvmAccel(Accelerator):
    """``-accel kvm``: guests run on ``/dev/kvm``; kvmpy handles MMIO, console SBI calls and
    system events.  ``kvm_factory`` opens the KVM device (tests pass a fake wrapper)."""

    name: ClassVar[str] = "kvm"
    threaded_vcpus = True
    """One thread per vCPU, blocked in KVM_RUN (``kvmpy.runloop.ThreadPerVcpuDriver``)."""

    def __init__(self, kvm_factory: Callable[[], Kvm] | None = None) -> None:
        self._factory: Callable[[], Kvm] = kvm_factory or (lambda: Kvm(KVM_DEVICE))
        self.vcpus: list[Vcpu] = []
        self._kvm: Kvm | None = None
        self._vm: Vm | None = None
        self._fds: list[VcpuFd] = []
        self._caps: AccelCaps | None = None
        self.dbcn_enabled = False
        self._regions: list[GuestRAM] = []
        self.doorbells: Doorbells | None = None
        """The devices' doorbells as ioeventfds, once the main loop runs."""
        self.c_mmio: KvmCMmio | None = None
        """Device windows whose MMIO exits complete in the C run loop, when it is built."""
        self._guest_debug: bool | None = None
        self._debug_enabled = False
        self.sw_breakpoints = SwBreakpoints(self._read_physical, self._write_physical)
        self.translate: Callable[[int, int], int] = lambda hart, vaddr: vaddr
        """Guest-physical address of a virtual one as hart sees it (the gdb stub sets its
        page walk with :meth:`set_debug_translator`)."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return probe()

    @property
    def caps(self) -> AccelCaps:
        """Read from vCPU 0 on first use (the board needs them before the vCPUs exist)."""
        if self._caps is None:
            vcpu = self._vcpu_fd(0)
            try:
                isa = read_isa_extensions(vcpu)
            except OSError as exc:
                raise AccelError(f"kvm: {exc} (config.isa)") from exc
            satp_mode = _optional_reg(vcpu, onereg.config_id("satp_mode"))
            freq = _optional_reg(vcpu, onereg.timer_id("frequency"))
            self._caps = AccelCaps(
                machine_mode=False, in_kernel_timer_ipi=True, isa_extensions=isa,
                mmu_type=_MMU_TYPES.get(satp_mode or 8, "riscv,sv39"),
                timebase_frequency=freq or 10_000_000, firmware_refusal=FIRMWARE_REFUSAL)
        return self._caps

    @caps.setter
    def caps(self, value: AccelCaps) -> None:
        self._caps = value

    def _open_vm(self) -> Vm:
        if self._vm is None:
            try:
                self._kvm = self._factory()
                self._vm = self._kvm.create_vm(0)
            except OSError as exc:
                self.close()
                raise AccelError(f"kvm: {exc}") from exc
        return self._vm

    def _vcpu_fd(self, index: int) -> VcpuFd:
        vm = self._open_vm()
        while len(self._fds) <= index:
            try:
                self._fds.append(vm.create_vcpu(len(self._fds)))
            except OSError as exc:
                raise AccelError(f"kvm: {exc} (vCPU {len(self._fds)})") from exc
        return self._fds[index]

    # -- guest debugging (gdb stub) ------------------------------------------------------

    @property
    def guest_debug(self) -> bool:
        """Whether software breakpoints work: ``KVM_SET_GUEST_DEBUG`` (Linux 6.10+ on RISC-V)
        accepted by vCPU 0 (with debugging off, which changes nothing), at machine init."""
        if self._guest_debug is None:
            if not self._fds:
                return False
            try:
                self._fds[0].set_guest_debug(0)
                self._guest_debug = True
            except OSError as exc:
                _log.debug("kvm: no guest debugging: %s", exc)
                self._guest_debug = False
        return self._guest_debug

    def set_debug_translator(self, translate: Callable[[int, int], int]) -> None:
        self.translate = translate

    def _region(self, gpa: int, size: int) -> GuestRAM:
        for region in self._regions:
            if region.contains(gpa, size):
                return region
        raise AccelError(f"kvm: no guest memory at 0x{gpa:x} for a breakpoint")

    def _read_physical(self, gpa: int, size: int) -> bytes:
        return self._region(gpa, size).read(gpa, size)

    def _write_physical(self, gpa: int, data: bytes) -> None:
        self._region(gpa, len(data)).write(gpa, data)
        flush_icache()

    def read_virtual(self, hart: int, vaddr: int, size: int) -> bytes:
        """Instruction bytes at ``vaddr`` (originals, not patches) for hart's translation."""
        out = b""
        while len(out) < size:
            addr = vaddr + len(out)
            n = min(size - len(out), 4096 - addr % 4096)
            gpa = self.translate(hart, addr)
            out += self.sw_breakpoints.hide(gpa, self._read_physical(gpa, n))
        return out

    def set_sw_breakpoints(self, kinds: dict[int, int], hart: int) -> None:
        """The debugger's breakpoints: virtual address -> gdb's kind (2 or 4, 0 unknown),
        translated as ``hart`` sees them. Vcpus must not run meanwhile."""
        if not self.guest_debug:
            raise AccelError("kvm: breakpoints need KVM_SET_GUEST_DEBUG")
        bps = self.sw_breakpoints
        for vaddr in bps.owned_by("gdb") - set(kinds):
            bps.remove(vaddr, "gdb")
        for vaddr, kind in kinds.items():
            if vaddr not in bps.owned_by("gdb"):
                bps.insert(vaddr, self.translate(hart, vaddr), kind, "gdb")
        self.sync_guest_debug()

    def set_watchpoints(self, watchpoints: Sequence[tuple[int, int, str]]) -> None:
        if watchpoints:
            raise AccelError(NO_WATCHPOINTS)

    def sync_guest_debug(self) -> None:
        """``KVM_SET_GUEST_DEBUG`` on every vCPU: ENABLE | USE_SW_BP while any breakpoint
        is patched (an ``ebreak`` then exits to kvmpy), else off (the guest's own again)."""
        want = bool(self.sw_breakpoints)
        if want == self._debug_enabled:
            return
        control = abi.KVM_GUESTDBG_ENABLE | abi.KVM_GUESTDBG_USE_SW_BP if want else 0
        try:
            for fd in self._fds:
                fd.set_guest_debug(control)
        except OSError as exc:
            raise AccelError(f"kvm: {exc}") from exc
        self._debug_enabled = want

    def hide_breakpoints(self, gpa: int, data: bytes) -> bytes:
        return self.sw_breakpoints.hide(gpa, data)

    def write_under_breakpoints(self, gpa: int, data: bytes) -> bytes:
        return self.sw_breakpoints.write_under(gpa, data)

    def init_machine(self, ram: GuestRAM, num_harts: int,
                     roms: Sequence[GuestRAM] = ()) -> None:
        """Memory slot 0 over ``ram``, a read-only slot per ROM (stores to it exit as MMIO),
        vCPUs 0..num_harts-1 (id = hartid) with the debug console SBI extension (DBCN)
        forwarded to the VMM where the kernel has it."""
        vm = self._open_vm()
        self._regions = [ram, *roms]
        for slot, (region, flags) in enumerate(
                [(ram, 0), *((rom, abi.KVM_MEM_READONLY) for rom in roms)]):
            try:
                vm.set_user_memory_region(slot, region.base, region.size, region.host_address,
                                          flags)
            except OSError as exc:
                raise AccelError(f"kvm: {exc} ({region.name} 0x{region.base:x}"
                                 f"+0x{region.size:x})") from exc
        caps = self.caps
        _ = self.guest_debug  # probed now: the ioctl would wait for a vCPU inside KVM_RUN
        kick_signal = install_kick_handler()
        if not kick_signal:
            _log.warning("kvm: no handler for the vCPU kick signal (accelerator set up off the "
                         "main thread, or the application handles signal %d): pausing a hart "
                         "that waits in the kernel may not take effect", KICK_SIGNAL)
        for index in range(num_harts):
            fd = self._vcpu_fd(index)
            try:
                fd.set_one_reg(onereg.sbi_ext_id(abi.KVM_RISCV_SBI_EXT_DBCN), 1)
                self.dbcn_enabled = True
            except OSError as exc:  # before Linux 6.8: legacy console only
                _log.debug("kvm: hart %d: DBCN not enabled: %s", index, exc)
            vcpu = KvmRiscvVcpu(fd, index, double_fp="d" in caps.isa_extensions)
            vcpu._kick_signal = kick_signal
            vcpu.accel = self
            self.vcpus.append(vcpu)

    def attach_c_mmio(self, bus: MmioBus) -> None:
        """With the C run loop built (:mod:`.c_loop`), the vCPUs run through it and complete
        MMIO exits to the devices of ``bus`` that have a C half without Python."""
        from kvmpy.accel.kvm import c_loop

        if self.c_mmio is not None or not self.vcpus or not c_loop.available():
            return
        self.c_mmio = attach_run_loop(self.vcpus, bus)  # type: ignore[arg-type]

    def start_doorbells(self, system: System) -> None:
        """Virtio kicks complete in the kernel (:mod:`.ioeventfd`); called once the main loop
        runs, which then serves them."""
        from kvmpy.accel.kvm.ioeventfd import Doorbells

        if self._vm is None or self.doorbells is not None:
            return
        self.doorbells = Doorbells(self._vm, system.bus, system.lock,
                                   on_error=system.report_internal_error)
        self.doorbells.attach(system.add_reader, system.remove_reader)

    def drain_doorbells(self) -> None:
        """Serve the kicks not served yet (the vCPUs are stopped: before state is read)."""
        if self.doorbells is not None:
            self.doorbells.drain()

    def close(self) -> None:
        if self.c_mmio is not None:
            self.c_mmio.close()
            self.c_mmio = None
        if self.doorbells is not None:
            self.doorbells.close()
            self.doorbells = None
        self.sw_breakpoints.patches.clear()  # restored by the gdb stub, which closes first
        self.vcpus = []
        for fd in self._fds:
            fd.close()
        self._fds = []
        if self._vm is not None:
            self._vm.close()
            self._vm = None
        if self._kvm is not None:
            self._kvm.close()
            self._kvm = None


def attach_run_loop(vcpus: Sequence[KvmRiscvVcpu], bus: MmioBus) -> KvmCMmio:
    """Make ``vcpus`` run through the C run loop with the C windows of ``bus`` (the C run
    loop must be built).  Also without any C window: its KVM_RUN is a cheaper call than the
    wrapper's (API mode, no libffi), which every exit to Python gains."""
    from kvmpy.accel.kvm.c_loop import CRunLoop, KvmCMmio

    windows = KvmCMmio(bus)
    for vcpu in vcpus:
        vcpu.use_run_loop(CRunLoop(vcpu.fd, windows).run)
    return windows
