"""16550A UART (``ns16550a``), QEMU's ``serial-mm`` (hw/char/serial.c, serial_mm_*).

Byte registers at ``offset >> regshift`` (the virt board uses regshift 0); wider accesses are
truncated to their low byte, as QEMU's serial_mm ops do::

    0 RBR (read) / THR (write)      DLL while LCR.DLAB
    1 IER (& 0x0f)                  DLM while LCR.DLAB
    2 IIR (read) / FCR (write)
    3 LCR   4 MCR (& 0x1f)   5 LSR (read clears BI/OE)   6 MSR (read clears deltas)   7 SCR

Transmission is instant: a THR write sends the byte to the chardev (or, in loopback, back to
the receiver) and THRE is set again at once.  THRE interrupt rules (16550 datasheet plus the
behaviour the Linux 8250 driver depends on, as QEMU): setting IER.THRI while THRE=1 raises the
THRE interrupt immediately and clearing THRI drops it; an IIR read that reports THRE clears it;
a THR write clears it.  Input arrives through ``Chardev.set_handlers`` with ``can_receive`` =
free receive-FIFO space, so no typed byte is lost; reading RBR calls ``chardev.accept_input()``.
The character timeout of the FIFO (QEMU: 4 character times after the last byte) is taken as
elapsed at once when a receive or a read leaves the FIFO below its trigger level: a burst from
the chardev is one event, and the guest sees its input without waiting for a timer.

With an accelerator that calls C on MMIO (:mod:`kvmpy.hw.c_mmio`), LSR reads and THR writes
that raise no interrupt (Linux's console output, byte by byte) are completed by the model's C
half (:mod:`kvmpy.hw.char.uart_fast`) without Python; this model stays the authority for all
state, pushes the LSR and the allowed accesses to C after each operation, and takes back the
last byte C stored and its buffered output (in order) before each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvmpy import log
from kvmpy.chardev.base import CHR_EVENT_BREAK, Chardev
from kvmpy.hw.char import uart_fast
from kvmpy.hw.core import SysBusDevice, state_from_dict
from kvmpy.hw.irq import IrqLine, unconnected_irq
from kvmpy.qom import Property, register_type

if TYPE_CHECKING:
    from kvmpy.hw.c_mmio import CMmio

UART_FIFO_LENGTH = 16

UART_LCR_DLAB = 0x80
UART_IER_MSI = 0x08
UART_IER_RLSI = 0x04
UART_IER_THRI = 0x02
UART_IER_RDI = 0x01

UART_IIR_NO_INT = 0x01
UART_IIR_ID = 0x06
UART_IIR_MSI = 0x00
UART_IIR_THRI = 0x02
UART_IIR_RDI = 0x04
UART_IIR_RLSI = 0x06
UART_IIR_CTI = 0x0C
UART_IIR_FE = 0xC0

UART_MCR_LOOP = 0x10
UART_MCR_OUT2 = 0x08

UART_MSR_DCD = 0x80
UART_MSR_DSR = 0x20
UART_MSR_CTS = 0x10
UART_MSR_ANY_DELTA = 0x0F

UART_LSR_TEMT = 0x40
UART_LSR_THRE = 0x20
UART_LSR_BI = 0x10
UART_LSR_OE = 0x02
UART_LSR_DR = 0x01
UART_LSR_INT_ANY = 0x1E

_THR_EMPTY = UART_LSR_THRE | UART_LSR_TEMT

UART_FCR_FE = 0x01
UART_FCR_RFR = 0x02
UART_FCR_XFR = 0x04

_TRIGGER_LEVELS = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}


@dataclass
class SerialState:
    """Register file and FIFOs (power-on values as QEMU's serial_reset)."""

    rbr: int = 0
    thr: int = 0
    ier: int = 0
    iir: int = UART_IIR_NO_INT
    lcr: int = 0
    mcr: int = UART_MCR_OUT2
    lsr: int = UART_LSR_TEMT | UART_LSR_THRE
    msr: int = UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS
    scr: int = 0
    fcr: int = 0
    divider: int = 0x0C
    recv_fifo: list[int] = field(default_factory=list)
    recv_fifo_itl: int = 1
    thr_ipending: int = 0
    timeout_ipending: int = 0


@register_type("serial-mm", "sys-bus-device", description="16550A UART (ns16550a)")
class SerialMM(SysBusDevice):
    """The UART: its interrupt line, and the chardev it writes to and reads from."""

    access_sizes = (1, 2, 4, 8)
    name = "serial"
    state: SerialState

    regshift = Property(int, 0, "register spacing is 1 << regshift bytes")
    baudbase = Property(int, 399193, "base baud rate (divisor 1)")

    def __init__(self, irq: IrqLine | None = None, chardev: Chardev | None = None,
                 **props: object) -> None:
        self.set_properties(props)
        self.irq = irq if irq is not None else unconnected_irq()
        self.chardev = chardev
        self.region_size = 8 << self.regshift
        self._shift = self.regshift  # plain int: every access uses it
        self.state = SerialState()
        self._fast: uart_fast.UartFast | None = None
        self._fast_handler: CMmio | None = None
        if chardev is not None:
            chardev.set_handlers(self.receive, self.can_receive, self._chardev_event)

    # -- the C half ---------------------------------------------------------------------------

    def c_mmio(self) -> CMmio | None:
        """Let C complete LSR reads and polled THR writes (see the module docstring); None
        when the C half is not built."""
        if self._fast_handler is None and uart_fast.available():
            from kvmpy.hw.c_mmio import CMmio

            self._fast = uart_fast.UartFast(self._shift, self._output)
            self._fast_leave()
            self._fast_handler = CMmio(self._fast.function, self._fast.opaque,
                                       self._fast.flush, self._detach_fast)
        return self._fast_handler

    def _detach_fast(self) -> None:
        fast = self._fast
        if fast is not None:
            self._fast_enter()
            self._fast = self._fast_handler = None
            fast.close()

    def _fast_enter(self) -> None:
        """Before Python acts: the THR write C took last, and C's output sent before ours."""
        fast = self._fast
        if fast is not None:
            thr = fast.take_thr()
            if thr >= 0:
                self.state.thr = thr
                self.state.thr_ipending = 1
                fast.flush()

    def _fast_leave(self) -> None:
        """After Python acted: what C may now complete (the 16550 datasheet's conditions
        under which an LSR read or a THR write has no effect beyond the one C gives it)."""
        fast = self._fast
        if fast is not None:
            s = self.state
            lsr = s.lsr
            mode = 0 if lsr & (UART_LSR_BI | UART_LSR_OE) else uart_fast.FAST_LSR
            if (lsr & _THR_EMPTY == _THR_EMPTY
                    and not (s.lcr & UART_LCR_DLAB or s.ier & UART_IER_THRI
                             or s.mcr & UART_MCR_LOOP)):
                mode |= uart_fast.FAST_THR
            fast.push(lsr, mode)

    def _output(self, data: bytes) -> None:
        if self.chardev is not None:
            self.chardev.write(data)

    def _send(self, byte: int) -> None:
        if self._fast is not None:
            self._fast.write(bytes((byte,)))
        elif self.chardev is not None:
            self.chardev.write(bytes((byte,)))

    def _chardev_event(self, event: str) -> None:
        if event == CHR_EVENT_BREAK:
            self.receive_break()

    def receive_break(self) -> None:
        """A line break from the host (mux ``C-a b``; Linux turns it into magic SysRq):
        a NUL with LSR.BI, as QEMU's serial_receive_break."""
        if self._fast is not None:
            self._fast_enter()
            try:
                self._receive_break()
            finally:
                self._fast_leave()
        else:
            self._receive_break()

    def _receive_break(self) -> None:
        s = self.state
        s.rbr = 0
        if len(s.recv_fifo) < UART_FIFO_LENGTH:
            s.recv_fifo.append(0)
        else:
            s.lsr |= UART_LSR_OE
        s.lsr |= UART_LSR_BI | UART_LSR_DR
        self._update_irq()

    # -- interrupt ------------------------------------------------------------------------------

    def _update_irq(self) -> None:
        s = self.state
        if s.ier & UART_IER_RLSI and s.lsr & UART_LSR_INT_ANY:
            iir = UART_IIR_RLSI
        elif s.ier & UART_IER_RDI and s.timeout_ipending:
            iir = UART_IIR_CTI
        elif (s.ier & UART_IER_RDI and s.lsr & UART_LSR_DR
              and (not s.fcr & UART_FCR_FE or len(s.recv_fifo) >= s.recv_fifo_itl)):
            iir = UART_IIR_RDI
        elif s.ier & UART_IER_THRI and s.thr_ipending:
            iir = UART_IIR_THRI
        elif s.ier & UART_IER_MSI and s.msr & UART_MSR_ANY_DELTA:
            iir = UART_IIR_MSI
        else:
            iir = UART_IIR_NO_INT
        s.iir = iir | (s.iir & 0xF0)
        self.irq.set(iir != UART_IIR_NO_INT)

    # -- receive side (chardev frontend) --------------------------------------------------------

    def can_receive(self) -> int:
        """Bytes the UART accepts now: free receive-FIFO space (1 byte without FIFO)."""
        s = self.state
        if s.fcr & UART_FCR_FE:
            return UART_FIFO_LENGTH - len(s.recv_fifo)
        return 0 if s.lsr & UART_LSR_DR else 1

    def receive(self, data: bytes) -> None:
        """Bytes from the chardev (or the loopback)."""
        if not data:
            return
        if self._fast is not None:
            self._fast_enter()
            try:
                self._receive(data)
            finally:
                self._fast_leave()
        else:
            self._receive(data)

    def _receive(self, data: bytes) -> None:
        s = self.state
        if s.fcr & UART_FCR_FE:
            for byte in data:
                if len(s.recv_fifo) < UART_FIFO_LENGTH:
                    s.recv_fifo.append(byte)
                else:
                    s.lsr |= UART_LSR_OE  # overruns do not overwrite the FIFO
            s.lsr |= UART_LSR_DR
            s.timeout_ipending = int(len(s.recv_fifo) < s.recv_fifo_itl)
        else:
            if s.lsr & UART_LSR_DR:
                s.lsr |= UART_LSR_OE
            s.rbr = data[-1]
            if len(data) > 1:
                s.lsr |= UART_LSR_OE
            s.lsr |= UART_LSR_DR
        self._update_irq()

    # -- transmit side --------------------------------------------------------------------------

    def _transmit(self, byte: int) -> None:
        s = self.state
        if not (s.ier & UART_IER_THRI or s.mcr & UART_MCR_LOOP):
            # Polled output (THRE interrupt off, no loopback): the interrupt line cannot
            # change, so skip the two IIR updates; the end state is the same as below.
            s.thr = byte
            s.thr_ipending = 1
            s.lsr |= UART_LSR_THRE | UART_LSR_TEMT
            self._send(byte)
            return
        s.thr = byte
        s.thr_ipending = 0
        s.lsr &= ~(UART_LSR_THRE | UART_LSR_TEMT)
        self._update_irq()
        # The byte moves to the shift register at once: THR is empty again.
        s.lsr |= UART_LSR_THRE
        if not s.thr_ipending:
            s.thr_ipending = 1
            self._update_irq()
        if s.mcr & UART_MCR_LOOP:
            self._receive(bytes((byte,)))
        else:
            self._send(byte)
        s.lsr |= UART_LSR_TEMT

    # -- registers ------------------------------------------------------------------------------

    def mmio_read(self, offset: int, size: int) -> int:
        if self._fast is None:
            return self._read(offset)
        self._fast_enter()
        try:
            return self._read(offset)
        finally:
            self._fast_leave()

    def _read(self, offset: int) -> int:
        reg = (offset >> self._shift) & 7
        s = self.state
        if reg == 0:
            if s.lcr & UART_LCR_DLAB:
                return s.divider & 0xFF
            return self._read_rbr()
        if reg == 1:
            return (s.divider >> 8) & 0xFF if s.lcr & UART_LCR_DLAB else s.ier
        if reg == 2:
            value = s.iir
            if value & UART_IIR_ID == UART_IIR_THRI:
                s.thr_ipending = 0
                self._update_irq()
            return value
        if reg == 3:
            return s.lcr
        if reg == 4:
            return s.mcr
        if reg == 5:
            value = s.lsr
            if s.lsr & (UART_LSR_BI | UART_LSR_OE):
                s.lsr &= ~(UART_LSR_BI | UART_LSR_OE)
                self._update_irq()
            return value
        if reg == 6:
            if s.mcr & UART_MCR_LOOP:
                # Loopback: the modem outputs are wired to the inputs.
                return ((s.mcr & 0x0C) << 4) | ((s.mcr & 0x02) << 3) | ((s.mcr & 0x01) << 5)
            value = s.msr
            if s.msr & UART_MSR_ANY_DELTA:
                s.msr &= 0xF0
                self._update_irq()
            return value
        return s.scr

    def _read_rbr(self) -> int:
        s = self.state
        if s.fcr & UART_FCR_FE:
            value = s.recv_fifo.pop(0) if s.recv_fifo else 0
            s.timeout_ipending = 0
            if not s.recv_fifo:
                s.lsr &= ~(UART_LSR_DR | UART_LSR_BI)
            elif len(s.recv_fifo) < s.recv_fifo_itl:
                s.timeout_ipending = 1
        else:
            value = s.rbr
            s.lsr &= ~(UART_LSR_DR | UART_LSR_BI)
        self._update_irq()
        if self.chardev is not None and not s.mcr & UART_MCR_LOOP:
            self.chardev.accept_input()
        return value

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        if self._fast is None:
            self._write(offset, value)
            return
        self._fast_enter()
        try:
            self._write(offset, value)
        finally:
            self._fast_leave()

    def _write(self, offset: int, value: int) -> None:
        reg = (offset >> self._shift) & 7
        value &= 0xFF
        s = self.state
        if reg == 0:
            if s.lcr & UART_LCR_DLAB:
                s.divider = (s.divider & 0xFF00) | value
            else:
                self._transmit(value)
        elif reg == 1:
            if s.lcr & UART_LCR_DLAB:
                s.divider = (s.divider & 0x00FF) | (value << 8)
            else:
                self._write_ier(value)
        elif reg == 2:
            self._write_fcr(value)
        elif reg == 3:
            s.lcr = value
        elif reg == 4:
            s.mcr = value & 0x1F
        elif reg == 7:
            s.scr = value
        else:
            log.guest_error(f"serial: write 0x{value:x} to read-only register {reg}")

    def _write_ier(self, value: int) -> None:
        s = self.state
        changed = (s.ier ^ value) & 0x0F
        s.ier = value & 0x0F
        # Turning THRI on while THR is empty raises the THRE interrupt at once, even if an IIR
        # read had cleared it (QEMU, Bochs; Linux's 8250 start_tx and THRE probe rely on it).
        if changed & UART_IER_THRI:
            s.thr_ipending = int(bool(s.ier & UART_IER_THRI and s.lsr & UART_LSR_THRE))
        if changed:
            self._update_irq()

    def _write_fcr(self, value: int) -> None:
        s = self.state
        if (value ^ s.fcr) & UART_FCR_FE:
            value |= UART_FCR_XFR | UART_FCR_RFR  # enabling/disabling flushes both FIFOs
        if value & UART_FCR_RFR:
            s.lsr &= ~(UART_LSR_DR | UART_LSR_BI)
            s.timeout_ipending = 0
            s.recv_fifo.clear()
        if value & UART_FCR_XFR:
            s.lsr |= UART_LSR_THRE
            s.thr_ipending = 1
        s.fcr = value & 0xC9
        if s.fcr & UART_FCR_FE:
            s.iir |= UART_IIR_FE
            s.recv_fifo_itl = _TRIGGER_LEVELS[value & 0xC0]
        else:
            s.iir &= ~UART_IIR_FE
        self._update_irq()
        if self.chardev is not None and value & UART_FCR_RFR:
            self.chardev.accept_input()

    def reset(self) -> None:
        self._fast_enter()  # what C took before the reset is sent
        self.state = SerialState()
        self._fast_leave()
        self.irq.lower()
        if self.chardev is not None:
            self.chardev.accept_input()

    def get_state(self) -> dict[str, object]:
        self._fast_enter()  # THR as C left it; its output sent before the state is taken
        return super().get_state()

    def set_state(self, state: dict[str, object]) -> None:
        from kvmpy.migration.errors import VmStateError

        new = state_from_dict(self.state, state, self.name)
        regs = (new.rbr, new.thr, new.ier, new.iir, new.lcr, new.mcr, new.lsr, new.msr,
                new.scr, new.fcr)
        if (not all(0 <= v <= 0xFF for v in regs) or not 0 <= new.divider <= 0xFFFF
                or len(new.recv_fifo) > UART_FIFO_LENGTH
                or not all(0 <= v <= 0xFF for v in new.recv_fifo)
                or new.recv_fifo_itl not in _TRIGGER_LEVELS.values()
                or new.thr_ipending not in (0, 1) or new.timeout_ipending not in (0, 1)):
            raise VmStateError(f"vmstate: {self.name}: a register or FIFO value is out of "
                               "range")
        self._fast_enter()
        self.state = new
        self._fast_leave()
        self._update_irq()
        if self.chardev is not None:  # room in the FIFO: input may flow again
            self.chardev.accept_input()
