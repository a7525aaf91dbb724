"""The 16550's C half (uart_fast.c): the accesses it completes, the ones it leaves to Python,
and that the UART behaves exactly as the Python model alone does.

:class:`CCaller` calls the C function the way an accelerator does (kvmpy/hw/c_mmio.h): C
first, and the Python model when C declines, after the flush an accelerator makes when control
comes back to Python.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from kvmpy.hw.char import uart_fast
from kvmpy.hw.char.serial import SerialMM

pytestmark = pytest.mark.skipif(not uart_fast.available(),
                                reason="the C device models are not built "
                                       "(python kvmpy/hw/_build.py)")

RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


class CCaller:
    """An accelerator's view of one UART: C first, else (after a flush) the Python model.
    ``lock`` stands for the system lock the run loop holds around device calls."""

    def __init__(self, uart: SerialMM) -> None:
        from kvmpy.hw import _cdev  # type: ignore[attr-defined]

        handler = uart.c_mmio()
        assert handler is not None
        self.uart = uart
        self.handler = handler
        ffi = _cdev.ffi
        self.fn = ffi.cast("int (*)(void *, uint64_t, uint32_t, int, uint64_t *)",
                           handler.function)
        self.opaque = ffi.cast("void *", handler.opaque)
        self._ffi = ffi
        self.lock = threading.Lock()
        self.in_c = 0
        self.in_python = 0

    def read(self, reg: int, size: int = 1) -> int:
        value = self._ffi.new("uint64_t *")
        if self.fn(self.opaque, reg, size, 0, value):
            with self.lock:
                self.in_c += 1
            return int(value[0])
        self.handler.flush()
        with self.lock:
            self.in_python += 1
            return self.uart.mmio_read(reg, size)

    def write(self, reg: int, data: int, size: int = 1) -> None:
        value = self._ffi.new("uint64_t *", data)
        if self.fn(self.opaque, reg, size, 1, value):
            with self.lock:
                self.in_c += 1
            return
        self.handler.flush()
        with self.lock:
            self.in_python += 1
            self.uart.mmio_write(reg, size, data)


@pytest.fixture
def uart(make_irq: Any, chardev: Any) -> Any:
    device = SerialMM(irq=make_irq(10), chardev=chardev)
    yield device
    if device._fast_handler is not None:
        device._fast_handler.detach()


def console_write(c: CCaller, text: bytes) -> None:
    """Linux's serial8250_console_write: wait for THRE, store the byte."""
    for byte in text:
        while not c.read(LSR) & 0x20:
            pass
        c.write(THR, byte)


def wait_for_output(chardev: Any, n: int) -> bytes:
    deadline = time.monotonic() + 10
    while len(chardev.output) < n and time.monotonic() < deadline:
        time.sleep(0.001)
    return bytes(chardev.output)


def test_console_output_needs_no_python(uart: SerialMM, chardev: Any) -> None:
    c = CCaller(uart)
    text = b"[    0.000000] Linux version 6.1\r\n" * 20
    console_write(c, text)
    assert (c.in_c, c.in_python) == (2 * len(text), 0)
    c.handler.flush()
    assert bytes(chardev.output) == text
    state = uart.get_state()  # THR as the last store left it, THRE interrupt pending
    assert (state["thr"], state["thr_ipending"], state["lsr"]) == (ord("\n"), 1, 0x60)


def test_output_goes_out_without_a_return_to_python(uart: SerialMM, chardev: Any) -> None:
    c = CCaller(uart)
    console_write(c, b"idle guest\n")
    assert c.in_python == 0
    assert wait_for_output(chardev, 11) == b"idle guest\n"  # the flusher thread sent it


def test_c_leaves_interrupts_divisor_and_loopback_to_python(uart: SerialMM,
                                                              chardev: Any) -> None:
    c = CCaller(uart)
    irq = uart.irq
    c.write(IER, 0x02)  # THRI on: a store now raises the THRE interrupt
    assert c.in_python == 1 and irq.level is True
    assert c.read(IIR) == 0x02 and irq.level is False
    irq.history.clear()
    c.write(THR, ord("a"))
    assert c.in_python == 3
    assert irq.history == [False, True]
    c.write(IER, 0)
    c.write(LCR, 0x83)  # DLAB: offset 0 is the divisor latch
    c.write(DLL, 0x01)
    assert c.in_python == 6
    assert c.read(LSR) == 0x60 and c.in_c == 1  # LSR does not depend on DLAB
    c.write(LCR, 0x03)
    c.write(MCR, 0x10)  # loopback: the byte comes back to the receiver
    before = c.in_python
    c.write(THR, 0x55)
    assert c.in_python == before + 1
    assert c.read(LSR) == 0x61  # DR, answered by C
    c.write(THR, 0x56)  # no FIFO: overrun, so LSR.OE is set
    in_c = c.in_c
    assert c.read(LSR) == 0x63 and c.in_c == in_c  # clearing OE is Python's
    assert c.read(LSR) == 0x61 and c.in_c == in_c + 1
    assert c.read(RBR) == 0x56
    c.handler.flush()
    assert bytes(chardev.output) == b"a"
    assert [c.read(r) for r in (IER, LCR, MCR, SCR)] == [0, 0x03, 0x10, 0]


def test_lsr_as_qemu_7_2_gives_it(uart: SerialMM, chardev: Any) -> None:
    c = CCaller(uart)
    assert c.read(LSR) == 0x60  # THRE | TEMT after reset
    chardev.type(b"x")
    assert c.read(LSR) == 0x61  # DR
    uart.receive(b"y")  # no FIFO, RBR still full: overrun (QEMU's serial_receive1)
    assert c.read(LSR) == 0x63
    assert c.read(LSR) == 0x61  # the read cleared OE
    uart.receive_break()  # serial_receive_break: a NUL with BI | DR
    assert c.read(LSR) == 0x71
    assert c.read(LSR) == 0x61  # the read cleared BI
    c.read(RBR)
    assert c.read(LSR) == 0x60
    assert c.in_c == 5 and c.in_python == 3


def _random_ops(rng: random.Random, n: int) -> list[tuple[Any, ...]]:
    ops: list[tuple[Any, ...]] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.35:
            ops.append(("read", rng.choice([LSR, LSR, LSR, RBR, IER, IIR, LCR, MCR, MSR, SCR])))
        elif kind < 0.75:
            ops.append(("write", THR, rng.randrange(256)))
        elif kind < 0.92:
            reg = rng.choice([IER, FCR, LCR, MCR, SCR])
            value = {IER: rng.choice([0, 0, 0x01, 0x02, 0x05, 0x0F]),
                     FCR: rng.choice([0, 0x01, 0x07, 0xC1]),
                     LCR: rng.choice([0x03, 0x03, 0x83]),
                     MCR: rng.choice([0x08, 0x0B, 0x0B, 0x18, 0x1B]),
                     SCR: rng.randrange(256)}[reg]
            ops.append(("write", reg, value))
        elif kind < 0.98:
            ops.append(("receive", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))))
        else:
            ops.append(("break",))
    return ops


@pytest.mark.parametrize("seed", range(12))
def test_same_behaviour_as_the_python_model(seed: int, make_irq: Any) -> None:
    """One sequence of guest accesses and input on a UART with its C half and on the Python
    model alone: every value read, the interrupt line, the output and the final state agree."""
    from tests.hw.conftest import BufferChardev

    ops = _random_ops(random.Random(seed), 1500)
    out_c, out_py = BufferChardev(), BufferChardev()
    with_c = SerialMM(irq=make_irq(10), chardev=out_c)
    alone = SerialMM(irq=make_irq(10), chardev=out_py)
    c = CCaller(with_c)
    try:
        for i, op in enumerate(ops):
            if op[0] == "read":
                got, want = c.read(op[1]), alone.mmio_read(op[1], 1)
                assert got == want, f"op {i} {op}: {got:#x} != {want:#x}"
            elif op[0] == "write":
                c.write(op[1], op[2])
                alone.mmio_write(op[1], 1, op[2])
            elif op[0] == "receive":
                out_c.type(op[1])
                out_py.type(op[1])
            else:
                with_c.receive_break()
                alone.receive_break()
            assert with_c.irq.level == alone.irq.level, f"op {i} {op}"
        assert c.in_c > 150  # the sequences do exercise the C half
        assert with_c.get_state() == alone.get_state()
        assert bytes(out_c.output) == bytes(out_py.output)
    finally:
        c.handler.detach()


def test_c_and_python_output_interleave_in_order(uart: SerialMM, chardev: Any) -> None:
    c = CCaller(uart)
    expected = bytearray()
    for i in range(300):
        polled = i % 7 != 3
        if not polled:
            c.write(IER, 0x02)  # interrupt-driven: this byte goes through Python
        byte = 0x20 + i % 90
        c.write(THR, byte)
        expected.append(byte)
        if not polled:
            c.read(IIR)
            c.write(IER, 0)
    assert c.in_python > 100
    c.handler.flush()
    assert bytes(chardev.output) == bytes(expected)


def test_no_byte_lost_at_state_save_reset_and_detach(uart: SerialMM, chardev: Any) -> None:
    c = CCaller(uart)
    c.write(THR, ord("s"))
    uart.get_state()  # savevm / migration: taken while the vCPUs are stopped
    assert bytes(chardev.output) == b"s"
    c.write(THR, ord("r"))
    uart.reset()
    assert bytes(chardev.output) == b"sr"
    c.write(THR, ord("d"))
    c.handler.detach()  # the accelerator closes: C completes nothing from now on
    assert bytes(chardev.output) == b"srd"
    value = c._ffi.new("uint64_t *")
    assert not c.fn(c.opaque, LSR, 1, 0, value)
    assert not c.fn(c.opaque, THR, 1, 1, value)
    uart.mmio_write(THR, 1, ord("!"))
    assert bytes(chardev.output) == b"srd!"


def test_restored_state_reaches_c(uart: SerialMM) -> None:
    c = CCaller(uart)
    state = uart.get_state()
    state.update(lsr=0x61, rbr=0x41, ier=0x02)
    uart.set_state(state)
    assert c.read(LSR) == 0x61
    assert c.in_c == 1
    c.write(THR, 0x42)  # THRI on in the restored state: Python's
    assert c.in_python == 1


def test_more_output_than_the_buffer_holds(uart: SerialMM, chardev: Any) -> None:
    c = CCaller(uart)
    text = bytes(32 + i % 95 for i in range(3 * uart_fast.CAPACITY + 17))
    for byte in text:
        c.write(THR, byte)
    c.handler.flush()
    assert bytes(chardev.output) == text


def test_threads_writing_at_once(uart: SerialMM, chardev: Any) -> None:
    """Several vCPU threads print while another drives registers through Python: every byte
    arrives once, each thread's in its order."""
    c = CCaller(uart)
    per_thread = 3000
    stop = threading.Event()

    def printer(tag: int) -> None:
        for i in range(per_thread):
            c.write(THR, tag * 60 + i % 60)

    def fiddler() -> None:
        while not stop.is_set():
            c.write(SCR, 0x5A)
            c.read(IIR)
            c.read(LSR)

    threads = [threading.Thread(target=printer, args=(t,)) for t in range(4)]
    other = threading.Thread(target=fiddler)
    other.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    other.join()
    c.handler.flush()
    out = bytes(chardev.output)
    assert len(out) == 4 * per_thread
    for tag in range(4):
        mine = [b - tag * 60 for b in out if tag * 60 <= b < tag * 60 + 60]
        assert mine == [i % 60 for i in range(per_thread)]


def test_without_the_c_half_the_model_runs_alone(make_irq: Any, chardev: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uart_fast, "available", lambda: False)
    device = SerialMM(irq=make_irq(10), chardev=chardev)
    assert device.c_mmio() is None
    device.mmio_write(THR, 1, ord("p"))
    assert bytes(chardev.output) == b"p"
