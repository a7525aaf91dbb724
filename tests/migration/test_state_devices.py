"""State of the interrupt controllers, the 16550, the RTC, HTIF, sifive_test and the built-in
SBI: taken from a device in use, put into a fresh one that then behaves as the first would;
states that do not fit are refused with one line and leave the device as it was."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kvmpy.hw.char.serial import SerialMM
from kvmpy.hw.intc.aclint import AclintSwi
from kvmpy.hw.intc.plic import SiFivePlic
from kvmpy.hw.misc.htif import Htif
from kvmpy.hw.misc.sifive_test import SifiveTest
from kvmpy.hw.rtc.goldfish_rtc import GoldfishRtc
from kvmpy.migration import VmStateError
from kvmpy.migration.codec import decode, encode
from tests.hw.conftest import BufferChardev, FakeIrq


def through_stream(state: dict[str, Any]) -> dict[str, Any]:
    """What a load sees: the state encoded and decoded by the state format's codec."""
    decoded: dict[str, Any] = decode(encode(state))
    return decoded


def plic_pair() -> tuple[SiFivePlic, list[FakeIrq], SiFivePlic, list[FakeIrq]]:
    out_a, out_b = [FakeIrq() for _ in range(4)], [FakeIrq() for _ in range(4)]
    return (SiFivePlic(out_a, hart_config="MS,MS", num_sources=96), out_a,
            SiFivePlic(out_b, hart_config="MS,MS", num_sources=96), out_b)


def test_plic_state_round_trip_keeps_pending_claims_and_outputs() -> None:
    plic, outs, fresh, fresh_outs = plic_pair()
    plic.mmio_write(4 * 10, 4, 5)                 # priority of source 10
    plic.mmio_write(4 * 33, 4, 2)                 # priority of source 33
    plic.mmio_write(0x2000 + 0x80 * 1, 4, 1 << 10)   # context 1 (hart 0 S) enables 10
    plic.mmio_write(0x2000 + 0x80 * 1 + 4, 4, 1 << 1)  # ... and 33
    plic.irq_in(10).set(True)
    plic.irq_in(33).set(True)
    assert outs[1].history[-1] is True
    assert plic.mmio_read(0x200000 + 0x1000 * 1 + 4, 4) == 10     # claimed
    state = plic.get_state()
    fresh.set_state(through_stream(state))
    assert fresh.get_state() == state
    assert fresh_outs[1].history[-1] is True       # 33 is still pending for context 1
    assert fresh.mmio_read(0x200000 + 0x1000 * 1 + 4, 4) == 33
    fresh.mmio_write(0x200000 + 0x1000 * 1 + 4, 4, 10)            # complete 10 ...
    assert fresh.mmio_read(0x200000 + 0x1000 * 1 + 4, 4) == 10     # ... level: again


@pytest.mark.parametrize("change", [
    lambda s: s.pop("pending"),
    lambda s: s.update(priority=s["priority"][:-1]),
    lambda s: s.update(enable="x"),
    lambda s: s.update(pending=-1),
    lambda s: s.update(levels=1 << 200),
    lambda s: s.update(threshold=[True] * len(s["threshold"])),
    lambda s: s.update(extra=1),
])
def test_plic_bad_state_is_refused_and_changes_nothing(change: Any) -> None:
    plic, _, _, _ = plic_pair()
    plic.mmio_write(4 * 10, 4, 5)
    before = plic.get_state()
    bad = copy.deepcopy(before)
    change(bad)
    with pytest.raises(VmStateError) as info:
        plic.set_state(bad)
    assert "\n" not in str(info.value) and str(info.value).startswith("vmstate: ")
    assert plic.get_state() == before


def test_serial_state_keeps_registers_and_receive_fifo() -> None:
    irq, chardev = FakeIrq(), BufferChardev()
    uart = SerialMM(irq=irq, chardev=chardev)
    uart.mmio_write(3, 1, 0x83)                   # DLAB
    uart.mmio_write(0, 1, 0x01)                   # divisor 1
    uart.mmio_write(3, 1, 0x03)                   # 8N1
    uart.mmio_write(2, 1, 0x01)                   # FIFO on
    uart.mmio_write(1, 1, 0x01)                   # RX interrupt
    uart.mmio_write(7, 1, 0x5A)
    uart.receive(b"abc")
    state = uart.get_state()
    assert state["recv_fifo"] == list(b"abc")
    irq2, chardev2 = FakeIrq(), BufferChardev()
    fresh = SerialMM(irq=irq2, chardev=chardev2)
    fresh.set_state(through_stream(state))
    assert irq2.history[-1] is True                # the restored UART interrupts at once
    assert bytes(fresh.mmio_read(0, 1) for _ in range(3)) == b"abc"
    assert fresh.mmio_read(7, 1) == 0x5A
    assert fresh.mmio_read(5, 1) & 1 == 0         # FIFO drained: no data ready
    fresh.mmio_write(0, 1, ord("z"))
    assert bytes(chardev2.output) == b"z"


@pytest.mark.parametrize("field,value", [("lcr", 256), ("recv_fifo", [1] * 17),
                                         ("recv_fifo", [300]), ("recv_fifo_itl", 3),
                                         ("divider", -1), ("ier", "1"), ("thr_ipending", 2)])
def test_serial_bad_state_is_refused(field: str, value: Any) -> None:
    uart = SerialMM(irq=FakeIrq(), chardev=BufferChardev())
    before = uart.get_state()
    with pytest.raises(VmStateError):
        uart.set_state({**before, field: value})
    assert uart.get_state() == before


def test_aclint_swi_state_drives_msip_again_and_checks_hart_count() -> None:
    outs = [FakeIrq(), FakeIrq()]
    swi = AclintSwi(outputs=outs)
    swi.mmio_write(4, 4, 1)
    fresh_outs = [FakeIrq(), FakeIrq()]
    fresh = AclintSwi(outputs=fresh_outs)
    fresh.set_state(through_stream(swi.get_state()))
    assert fresh.mmio_read(4, 4) == 1 and fresh_outs[1].history[-1] is True
    with pytest.raises(VmStateError, match="for 3 harts"):
        fresh.set_state({"msip": [False, False, False]})
    assert fresh.get_state() == {"msip": [False, True]}


def test_goldfish_rtc_goes_on_from_the_saved_time() -> None:
    now = [1_000_000_000_000]
    rtc = GoldfishRtc(clock=lambda: now[0])
    guest_time = rtc.mmio_read(0, 4) | rtc.mmio_read(4, 4) << 32
    rtc.mmio_write(0x10, 4, 1)                    # IRQ_ENABLED
    state = through_stream(rtc.get_state())
    now[0] += 3600 * 10**9                        # an hour on disk
    fresh = GoldfishRtc(clock=lambda: now[0])
    fresh.set_state(state)
    restored = fresh.mmio_read(0, 4) | fresh.mmio_read(4, 4) << 32
    assert restored == guest_time                 # no jump by the time the file sat
    assert fresh.get_state()["irq_enabled"] == 1
    with pytest.raises(VmStateError):
        fresh.set_state({**state, "irq_enabled": 7})
    with pytest.raises(VmStateError):
        fresh.set_state({k: v for k, v in state.items() if k != "now_ns"})


def test_htif_and_sifive_test_states() -> None:
    htif = Htif(tohost_offset=0, fromhost_offset=8)
    htif.state.fromhost = 0x0101_0000_0000_0041
    fresh = Htif(tohost_offset=0, fromhost_offset=8)
    fresh.set_state(through_stream(htif.get_state()))
    assert fresh.mmio_read(8, 8) == 0x0101_0000_0000_0041
    with pytest.raises(VmStateError):
        fresh.set_state({"tohost": 1 << 64, "fromhost": 0})
    test = SifiveTest()
    test.set_state(through_stream(test.get_state()))
    with pytest.raises(VmStateError):
        test.set_state({"bogus": 1})


def test_builtin_sbi_state_is_empty_and_refuses_other_fields() -> None:
    from kvmpy.firmware.sbi import Sbi, SbiConsole

    sbi = Sbi(1, SbiConsole(), None, lambda: [], lambda *_: None,  # type: ignore[arg-type]
              lambda *_: None)
    assert sbi.get_state() == {}
    sbi.set_state({})
    with pytest.raises(VmStateError):
        sbi.set_state({"x": 1})


def test_plic_state_crosses_between_ms_and_s_only_contexts() -> None:
    """The interpreter's board has M and S contexts per hart, KVM's S ones only.  The guest
    addresses contexts by index, from the device tree it booted with, so a loaded state keeps
    its layout (wired to the target board's lines for each hart and mode) until a reset; a
    context in use that the target has no line for is refused."""
    outs = [FakeIrq() for _ in range(4)]
    ms = SiFivePlic(outs, hart_config="MS,MS", num_sources=96)
    ms.mmio_write(4 * 7, 4, 1)
    ms.mmio_write(0x2000 + 0x80 * 3, 4, 1 << 7)        # context 3 = hart 1 S
    ms.mmio_write(0x200000 + 0x1000 * 3, 4, 0)
    ms.irq_in(7).set(True)
    s_outs = [FakeIrq(), FakeIrq()]
    s_only = SiFivePlic(s_outs, hart_config="S,S", num_sources=96)
    s_only.set_state(through_stream(ms.get_state()))
    assert s_only.mmio_read(0x2000 + 0x80 * 3, 4) == 1 << 7  # where the guest left it
    assert s_outs[1].history[-1] is True                       # hart 1's S line
    assert s_only.mmio_read(0x200000 + 0x1000 * 3 + 4, 4) == 7  # claimed at context 3
    assert s_outs[1].history[-1] is False
    s_only.mmio_write(0x200000 + 0x1000 * 3 + 4, 4, 7)       # complete: level still high
    assert s_outs[1].history[-1] is True
    back = SiFivePlic([FakeIrq() for _ in range(4)], hart_config="MS,MS", num_sources=96)
    back.set_state(through_stream(s_only.get_state()))
    assert back.get_state()["enable"] == [0, 0, 0, 1 << 7]
    s_only.reset()                                           # the board's own layout again
    assert s_only.get_state()["contexts"] == ["0S", "1S"]
    assert s_only.get_state()["enable"] == [0, 0]
    ms.mmio_write(0x2000, 4, 1 << 7)                    # hart 0's M context in use
    before = s_only.get_state()
    with pytest.raises(VmStateError, match="context 0M is in use"):
        s_only.set_state(ms.get_state())
    assert s_only.get_state() == before


def test_plic_state_from_an_s_only_board_keeps_its_indexes_on_an_ms_board() -> None:
    """The other way (saved under KVM, loaded on the interpreter): the guest's context 1 is
    hart 1's S context, not hart 0's."""
    s_outs = [FakeIrq(), FakeIrq()]
    s_only = SiFivePlic(s_outs, hart_config="S,S", num_sources=96)
    s_only.mmio_write(4 * 9, 4, 1)
    s_only.mmio_write(0x2000 + 0x80 * 1, 4, 1 << 9)          # context 1 = hart 1 S
    s_only.irq_in(9).set(True)
    outs = [FakeIrq() for _ in range(4)]                     # 0M 0S 1M 1S
    ms = SiFivePlic(outs, hart_config="MS,MS", num_sources=96)
    ms.set_state(through_stream(s_only.get_state()))
    assert outs[3].history[-1] is True and not any(o.history and o.history[-1]
                                                   for o in outs[:3])
    assert ms.mmio_read(0x200000 + 0x1000 * 1 + 4, 4) == 9
