"""16550A UART: the register behaviour the Linux 8250 driver and firmware depend on."""

from __future__ import annotations

from typing import Any

import pytest

from kvmpy.hw.char.serial import SerialMM
from kvmpy.memory import MmioBus

RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


@pytest.fixture
def uart(make_irq: Any, chardev: Any) -> SerialMM:
    return SerialMM(irq=make_irq(10), chardev=chardev)


def rd(uart: SerialMM, reg: int) -> int:
    return uart.mmio_read(reg, 1)


def wr(uart: SerialMM, reg: int, value: int) -> None:
    uart.mmio_write(reg, 1, value)


def test_reset_values(uart: SerialMM) -> None:
    assert [rd(uart, r) for r in (IER, IIR, LCR, MCR, LSR, MSR, SCR)] == \
        [0, 0x01, 0, 0x08, 0x60, 0xB0, 0]
    wr(uart, LCR, 0x80)
    assert (rd(uart, DLL), rd(uart, DLM)) == (12, 0)
    assert uart.region_size == 8


def test_transmit_goes_to_the_chardev(uart: SerialMM, chardev: Any) -> None:
    for byte in b"hi\n":
        wr(uart, THR, byte)
    assert bytes(chardev.output) == b"hi\n"
    assert rd(uart, LSR) & 0x60 == 0x60  # THRE and TEMT: transmission is instant


def test_linux_identifies_a_16550a(uart: SerialMM) -> None:
    # serial8250 autoconfig: scratch register, then FIFO enable shows IIR bits 7:6.
    wr(uart, SCR, 0xA5)
    assert rd(uart, SCR) == 0xA5
    wr(uart, FCR, 0xE7)
    assert rd(uart, IIR) & 0xC0 == 0xC0
    wr(uart, FCR, 0)
    assert rd(uart, IIR) & 0xC0 == 0


def test_thri_enable_raises_immediately_and_iir_read_clears(uart: SerialMM) -> None:
    irq = uart.irq
    wr(uart, IER, 0x02)
    assert irq.level is True
    assert rd(uart, IIR) == 0x02
    assert irq.level is False  # IIR read reporting THRE clears it
    assert rd(uart, IIR) == 0x01
    wr(uart, IER, 0x00)
    wr(uart, IER, 0x02)  # off -> on again re-samples THRE
    assert irq.level is True
    wr(uart, IER, 0x00)  # clearing THRI drops it
    assert irq.level is False


def test_thr_write_clears_then_reraises_thre(uart: SerialMM) -> None:
    irq = uart.irq
    wr(uart, IER, 0x02)
    rd(uart, IIR)
    irq.history.clear()
    wr(uart, THR, ord("x"))
    assert irq.history == [False, True]  # cleared by the write, raised when the byte left
    assert rd(uart, IIR) == 0x02


def test_rx_with_fifo_trigger_level_one(uart: SerialMM, chardev: Any) -> None:
    wr(uart, FCR, 0x01)
    wr(uart, IER, 0x01)
    chardev.type(b"ab")
    assert uart.irq.level is True
    assert rd(uart, IIR) == 0xC4
    assert rd(uart, LSR) & 0x01
    assert rd(uart, RBR) == ord("a")
    assert rd(uart, RBR) == ord("b")
    assert not rd(uart, LSR) & 0x01
    assert uart.irq.level is False
    assert rd(uart, RBR) == 0  # empty FIFO reads 0


def test_rx_below_trigger_level_gives_char_timeout(uart: SerialMM, chardev: Any) -> None:
    wr(uart, FCR, 0x81)  # trigger at 8 bytes
    wr(uart, IER, 0x01)
    chardev.type(b"ls\r")
    assert rd(uart, IIR) == 0xCC
    assert bytes(rd(uart, RBR) for _ in range(3)) == b"ls\r"
    assert rd(uart, IIR) == 0xC1


def test_rx_at_trigger_level_gives_rx_data_interrupt(uart: SerialMM, chardev: Any) -> None:
    wr(uart, FCR, 0x41)  # trigger at 4 bytes
    wr(uart, IER, 0x01)
    chardev.type(b"abcd")
    assert rd(uart, IIR) == 0xC4


def test_typed_input_is_never_lost(uart: SerialMM, chardev: Any) -> None:
    wr(uart, FCR, 0x01)
    text = bytes(range(32, 32 + 40))
    chardev.type(text)
    assert len(chardev.pending) == 40 - 16  # the FIFO took what it had room for
    got = bytearray()
    while rd(uart, LSR) & 0x01:
        got.append(rd(uart, RBR))  # each read makes room; the chardev refills
    assert bytes(got) == text
    assert not rd(uart, LSR) & 0x02  # no overrun


def test_rx_without_fifo_one_byte_at_a_time(uart: SerialMM, chardev: Any) -> None:
    chardev.type(b"xyz")
    assert uart.can_receive() == 0
    assert bytes(rd(uart, RBR) for _ in range(3)) == b"xyz"
    assert not rd(uart, LSR) & 0x02


def test_loopback(uart: SerialMM, chardev: Any) -> None:
    wr(uart, MCR, 0x10 | 0x0B)  # LOOP | OUT2 | RTS | DTR
    assert rd(uart, MSR) == 0x80 | 0x10 | 0x20  # DCD<-OUT2, CTS<-RTS, DSR<-DTR
    wr(uart, THR, 0x55)
    assert chardev.output == b""
    assert rd(uart, LSR) & 0x01
    assert rd(uart, RBR) == 0x55
    # No FIFO: a second unread byte overruns.
    wr(uart, THR, 1)
    wr(uart, THR, 2)
    assert rd(uart, LSR) & 0x02
    assert not rd(uart, LSR) & 0x02  # LSR read clears OE
    assert rd(uart, RBR) == 2


def test_line_status_interrupt(uart: SerialMM) -> None:
    wr(uart, MCR, 0x10)
    wr(uart, IER, 0x04)
    wr(uart, THR, 1)
    wr(uart, THR, 2)
    assert uart.irq.level is True
    assert rd(uart, IIR) == 0x06
    rd(uart, LSR)
    assert uart.irq.level is False


def test_divisor_latch(uart: SerialMM) -> None:
    wr(uart, LCR, 0x83)
    wr(uart, DLL, 0x01)
    wr(uart, DLM, 0x02)
    assert (rd(uart, DLL), rd(uart, DLM)) == (1, 2)
    wr(uart, LCR, 0x03)
    assert rd(uart, IER) == 0
    assert rd(uart, LCR) == 3


def test_fcr_flush_and_write_only_bits(uart: SerialMM, chardev: Any) -> None:
    wr(uart, FCR, 0x01)
    chardev.type(b"abc")
    wr(uart, FCR, 0x03)  # clear RX FIFO
    assert not rd(uart, LSR) & 0x01
    wr(uart, IER, 0xFF)
    assert rd(uart, IER) == 0x0F


def test_wide_accesses_use_the_low_byte(make_irq: Any, chardev: Any) -> None:
    uart = SerialMM(irq=make_irq(), chardev=chardev)
    bus = MmioBus()
    bus.add(0x10000000, uart.region_size, uart)
    bus.write(0x10000000, 4, 0x12345641)
    assert chardev.output == b"A"
    assert bus.read(0x10000004, 4) == 0x08  # MCR alone, not MCR..SCR
    bus.write(0x10000003, 2, 0x1283)
    assert bus.read(0x10000003, 2) == 0x83
    assert bus.read(0x10000005, 4) == 0  # runs past the 8-byte window: rejected by the bus


def test_read_only_register_writes_are_logged(uart: SerialMM, guest_errors: Any) -> None:
    wr(uart, LSR, 0)
    wr(uart, MSR, 0)
    assert rd(uart, LSR) == 0x60
    assert len(guest_errors) == 2


def test_reset_and_state_roundtrip(uart: SerialMM, chardev: Any) -> None:
    wr(uart, FCR, 0x01)
    wr(uart, IER, 0x01)
    chardev.type(b"q")
    saved = uart.get_state()
    uart.reset()
    assert uart.irq.level is False
    assert rd(uart, LSR) == 0x60
    uart.set_state(saved)
    assert uart.irq.level is True
    assert rd(uart, RBR) == ord("q")


def test_short_chardev_write_does_not_stall(make_irq: Any) -> None:
    from kvmpy.chardev.base import Chardev

    class Closed(Chardev):
        def write(self, data: bytes) -> int:
            return 0

    uart = SerialMM(irq=make_irq(), chardev=Closed())
    wr(uart, THR, 1)
    assert rd(uart, LSR) & 0x60 == 0x60


def test_no_chardev() -> None:
    uart = SerialMM()
    wr(uart, THR, 1)
    assert rd(uart, LSR) == 0x60


def test_linux_8250_probe_and_startup(uart: SerialMM, chardev: Any) -> None:
    """The register dance of Linux 6.1 drivers/tty/serial/8250/8250_port.c against the
    model: autoconfig() must find a 16550A with a working FIFO, the UART_BUG_THRE probe
    in serial8250_do_startup() must not flag a bug, and interrupt-driven I/O must work."""
    # autoconfig(): IER scratch test
    wr(uart, IER, 0)
    assert rd(uart, IER) & 0x0F == 0
    wr(uart, IER, 0x0F)
    assert rd(uart, IER) & 0x0F == 0x0F
    wr(uart, IER, 0)
    # loopback test: MSR must follow MCR
    wr(uart, MCR, 0x10 | 0x0A)
    assert rd(uart, MSR) & 0xF0 == 0x90
    wr(uart, MCR, 0x08)
    # FIFO probe: LCR 0xBF (EFR access on later chips), then enable the FIFO
    wr(uart, LCR, 0xBF)
    wr(uart, IIR, 0)  # EFR = 0 on a 16650; FCR here
    wr(uart, LCR, 0)
    wr(uart, FCR, 0x01)
    assert rd(uart, IIR) >> 6 == 3  # 16550A family
    wr(uart, LCR, 0xBF)
    assert rd(uart, IIR) != 0  # "EFR" reads non-zero: not a 16650/16850
    wr(uart, LCR, 0x80)
    assert rd(uart, IIR) != 0
    wr(uart, LCR, 0)
    # serial8250_do_startup(): clear FIFOs, read the status registers, 8N1 at 115200
    wr(uart, FCR, 0x01)
    wr(uart, FCR, 0x07)
    wr(uart, FCR, 0)
    for reg in (LSR, RBR, IIR, MSR):
        rd(uart, reg)
    assert rd(uart, LSR) != 0xFF  # the port exists
    wr(uart, LCR, 0x83)
    wr(uart, DLL, 2)
    wr(uart, DLM, 0)
    wr(uart, LCR, 0x03)
    wr(uart, FCR, 0x81)  # 16550A: FIFO on, RX trigger 8
    # UART_BUG_THRE probe
    wr(uart, IER, 0x02)
    iir1 = rd(uart, IIR)
    wr(uart, IER, 0)
    wr(uart, IER, 0x02)
    iir = rd(uart, IIR)
    wr(uart, IER, 0)
    assert not (not iir1 & 0x01 and iir & 0x01), "UART_BUG_THRE would be set"
    # Interrupt-driven operation: RX and TX through serial8250_handle_irq()
    wr(uart, MCR, 0x0B)
    wr(uart, IER, 0x05)  # RDI | RLSI
    chardev.type(b"ls\r")
    got = bytearray()
    assert uart.irq.level
    while not rd(uart, IIR) & 0x01:
        while rd(uart, LSR) & 0x01:
            got.append(rd(uart, RBR))
    assert bytes(got) == b"ls\r"
    assert not uart.irq.level
    wr(uart, IER, 0x07)  # start_tx: THRI on, THRE interrupt at once
    assert uart.irq.level
    out = b"/ # "
    while out:
        iir = rd(uart, IIR)
        if iir & 0x01:
            break
        if iir & 0x0E == 0x02:
            for byte in out[:16]:
                wr(uart, THR, byte)
            out = out[16:]
            if not out:
                wr(uart, IER, 0x05)  # stop_tx
    assert chardev.output.endswith(b"/ # ")
    assert not uart.irq.level


def test_break_from_the_host(uart: SerialMM, chardev: Any) -> None:
    from kvmpy.chardev.base import CHR_EVENT_BREAK

    wr(uart, FCR, 0x01)
    wr(uart, IER, 0x05)  # RDI | RLSI
    chardev.notify_event(CHR_EVENT_BREAK)
    assert uart.irq.level
    assert rd(uart, IIR) == 0xC6  # line status: break
    assert rd(uart, LSR) & 0x11 == 0x11  # BI | DR (reading clears BI)
    assert rd(uart, RBR) == 0
    assert not rd(uart, LSR) & 0x11
