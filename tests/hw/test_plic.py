"""SiFive PLIC: register map, claim/complete, thresholds, contexts, bad accesses."""

from __future__ import annotations

from typing import Any

import pytest

from kvmpy.errors import ConfigError
from kvmpy.hw.core import device_new
from kvmpy.hw.intc.plic import SiFivePlic, parse_hart_config
from kvmpy.memory import MmioBus

PRIO, PENDING, ENABLE, CONTEXT = 0x0, 0x1000, 0x2000, 0x200000


def enable_reg(ctx: int, word: int = 0) -> int:
    return ENABLE + 0x80 * ctx + 4 * word


def threshold_reg(ctx: int) -> int:
    return CONTEXT + 0x1000 * ctx


def claim_reg(ctx: int) -> int:
    return CONTEXT + 0x1000 * ctx + 4


@pytest.fixture
def plic(make_irq: Any) -> SiFivePlic:
    outs = [make_irq(i) for i in range(4)]
    return SiFivePlic(outputs=outs, hart_config="MS,MS")


def test_hart_config_contexts() -> None:
    assert parse_hart_config("MS,MS") == [(0, "M"), (0, "S"), (1, "M"), (1, "S")]
    assert parse_hart_config("S,S,S") == [(0, "S"), (1, "S"), (2, "S")]
    assert parse_hart_config("M,MS", hartid_base=4) == [(4, "M"), (5, "M"), (5, "S")]
    with pytest.raises(ConfigError, match="invalid mode 'X'"):
        parse_hart_config("MX")
    with pytest.raises(ConfigError, match="duplicate mode 'M'"):
        parse_hart_config("MM")


def test_output_count_must_match(make_irq: Any) -> None:
    with pytest.raises(ConfigError, match="2 contexts"):
        SiFivePlic(outputs=[make_irq()], hart_config="MS")


def test_window_size_is_virt_plic_size(plic: SiFivePlic) -> None:
    assert plic.region_size == 0x200000 + 4 * 0x1000


def test_claim_complete_single_source(plic: SiFivePlic) -> None:
    uart = plic.irq_in(10)
    plic.mmio_write(PRIO + 4 * 10, 4, 1)
    plic.mmio_write(enable_reg(1), 4, 1 << 10)  # hart 0 S-mode
    s_out = plic.outputs[1]
    assert s_out.level is False
    uart.raise_()
    assert s_out.level is True
    assert plic.outputs[0].level is False  # M context has nothing enabled
    assert plic.mmio_read(PENDING, 4) == 1 << 10
    assert plic.mmio_read(claim_reg(1), 4) == 10
    assert plic.mmio_read(PENDING, 4) == 0
    assert s_out.level is False
    assert plic.mmio_read(claim_reg(1), 4) == 0  # claimed: nothing more to claim
    uart.lower()
    plic.mmio_write(claim_reg(1), 4, 10)  # complete
    assert s_out.level is False


def test_level_still_high_at_complete_pends_again(plic: SiFivePlic) -> None:
    line = plic.irq_in(5)
    plic.mmio_write(PRIO + 4 * 5, 4, 3)
    plic.mmio_write(enable_reg(1), 4, 1 << 5)
    line.raise_()
    assert plic.mmio_read(claim_reg(1), 4) == 5
    assert not plic.outputs[1].level
    plic.mmio_write(claim_reg(1), 4, 5)
    assert plic.outputs[1].level  # line still high: pending again
    assert plic.mmio_read(claim_reg(1), 4) == 5


def test_pending_is_latched_until_claimed(plic: SiFivePlic) -> None:
    # QEMU 7.2 (and the PLIC gateway): a pulse is remembered, lowering does not unpend.
    line = plic.irq_in(4)
    plic.mmio_write(PRIO + 4 * 4, 4, 1)
    plic.mmio_write(enable_reg(1), 4, 1 << 4)
    line.pulse()
    assert plic.mmio_read(PENDING, 4) == 1 << 4
    assert plic.outputs[1].level
    assert plic.mmio_read(claim_reg(1), 4) == 4
    plic.mmio_write(claim_reg(1), 4, 4)
    assert not plic.outputs[1].level  # line low at completion: nothing more


def test_reassert_while_claimed_pends_but_waits_for_complete(plic: SiFivePlic) -> None:
    line = plic.irq_in(7)
    plic.mmio_write(PRIO + 4 * 7, 4, 1)
    plic.mmio_write(enable_reg(1), 4, 1 << 7)
    line.raise_()
    assert plic.mmio_read(claim_reg(1), 4) == 7
    line.lower()
    line.raise_()  # device raises again during the handler (QEMU re-sets pending)
    assert plic.mmio_read(PENDING, 4) == 1 << 7
    assert not plic.outputs[1].level  # but it is claimed
    plic.mmio_write(claim_reg(1), 4, 7)
    assert plic.outputs[1].level


def test_priority_order_and_ties(plic: SiFivePlic) -> None:
    for n, prio in ((3, 2), (4, 5), (5, 5), (40, 7)):
        plic.mmio_write(PRIO + 4 * n, 4, prio)
    plic.mmio_write(enable_reg(0, 0), 4, (1 << 3) | (1 << 4) | (1 << 5))
    plic.mmio_write(enable_reg(0, 1), 4, 1 << (40 - 32))
    for n in (3, 4, 5, 40):
        plic.irq_in(n).raise_()
    claims = [plic.mmio_read(claim_reg(0), 4) for _ in range(5)]
    assert claims == [40, 4, 5, 3, 0]  # highest priority first, ties to the lowest id


def test_threshold_masks_lower_priorities(plic: SiFivePlic) -> None:
    line = plic.irq_in(9)
    plic.mmio_write(PRIO + 4 * 9, 4, 3)
    plic.mmio_write(enable_reg(1), 4, 1 << 9)
    plic.mmio_write(threshold_reg(1), 4, 3)
    line.raise_()
    assert not plic.outputs[1].level  # priority must be strictly above the threshold
    assert plic.mmio_read(claim_reg(1), 4) == 0
    plic.mmio_write(threshold_reg(1), 4, 2)
    assert plic.outputs[1].level
    assert plic.mmio_read(threshold_reg(1), 4) == 2


def test_priority_zero_never_fires(plic: SiFivePlic) -> None:
    plic.mmio_write(enable_reg(1), 4, 1 << 1)
    plic.irq_in(1).raise_()
    assert not plic.outputs[1].level
    assert plic.mmio_read(claim_reg(1), 4) == 0


def test_priorities_are_warl(plic: SiFivePlic) -> None:
    plic.mmio_write(PRIO + 4 * 2, 4, 0xF)
    assert plic.mmio_read(PRIO + 4 * 2, 4) == 7
    plic.mmio_write(PRIO + 4 * 2, 4, 9)
    assert plic.mmio_read(PRIO + 4 * 2, 4) == 1
    plic.mmio_write(threshold_reg(3), 4, 12)
    assert plic.mmio_read(threshold_reg(3), 4) == 4


def test_contexts_are_independent(plic: SiFivePlic) -> None:
    line = plic.irq_in(33)
    plic.mmio_write(PRIO + 4 * 33, 4, 1)
    plic.mmio_write(enable_reg(3, 1), 4, 1 << 1)  # hart 1 S-mode, source 33
    plic.mmio_write(enable_reg(1, 1), 4, 1 << 1)  # hart 0 S-mode
    line.raise_()
    assert [o.level for o in plic.outputs] == [False, True, False, True]
    assert plic.mmio_read(claim_reg(3), 4) == 33  # the first claim wins
    assert [o.level for o in plic.outputs] == [False, False, False, False]
    assert plic.mmio_read(claim_reg(1), 4) == 0
    plic.mmio_write(claim_reg(1), 4, 33)  # completion from another context (QEMU: no check)
    line.lower()
    assert plic.mmio_read(enable_reg(3, 1), 4) == 2


def test_enable_words_read_back(plic: SiFivePlic) -> None:
    plic.mmio_write(enable_reg(2, 2), 4, 0xFFFFFFFF)
    assert plic.mmio_read(enable_reg(2, 2), 4) == 0xFFFFFFFF
    assert plic.mmio_read(enable_reg(2, 1), 4) == 0


def test_guest_mistakes_are_logged(plic: SiFivePlic, guest_errors: Any) -> None:
    plic.irq_in(3).raise_()
    plic.mmio_write(PENDING, 4, 0)  # pending is read-only
    assert plic.mmio_read(PENDING, 4) == 1 << 3
    assert plic.mmio_read(PENDING + 0xC, 4) == 0  # no 4th pending word with 96 sources
    plic.mmio_write(enable_reg(0, 3), 4, 1)  # enable word beyond the sources
    assert plic.mmio_read(enable_reg(0, 3), 4) == 0
    plic.mmio_write(CONTEXT + 8, 4, 1)  # neither threshold nor claim
    plic.mmio_read(CONTEXT + 0x1000 * 4, 4)  # context 4 does not exist
    plic.mmio_write(claim_reg(0), 4, 96)  # complete of a source that does not exist
    plic.mmio_read(0x1800, 4)  # hole between pending and enable
    plic.mmio_read(2, 4)  # misaligned
    assert len(guest_errors) == 9
    assert "invalid pending write" in guest_errors.messages[0]


def test_bus_rejects_other_widths(plic: SiFivePlic, guest_errors: Any) -> None:
    bus = MmioBus()
    bus.add(0xC000000, plic.region_size, plic)
    bus.write(0xC000000 + 4 * 10, 1, 5)
    bus.write(0xC000000 + 4 * 10, 8, 5)
    assert bus.read(0xC000000 + 4 * 10, 4) == 0
    bus.write(0xC000000 + 4 * 10, 4, 5)
    assert bus.read(0xC000000 + 4 * 10, 4) == 5
    assert bus.read(0xC000000 + 4 * 10, 2) == 0
    assert len(guest_errors) == 3


def test_invalid_input_number_is_config_error(plic: SiFivePlic) -> None:
    with pytest.raises(ConfigError):
        plic.irq_in(96)
    with pytest.raises(ConfigError):
        plic.irq_in(0)


def test_reset_and_state_roundtrip(plic: SiFivePlic) -> None:
    line = plic.irq_in(10)
    plic.mmio_write(PRIO + 4 * 10, 4, 2)
    plic.mmio_write(enable_reg(1), 4, 1 << 10)
    line.raise_()
    saved = plic.get_state()
    plic.reset()
    assert not plic.outputs[1].level
    assert plic.mmio_read(PRIO + 4 * 10, 4) == 0
    assert plic.mmio_read(enable_reg(1), 4) == 0
    plic.set_state(saved)
    assert plic.outputs[1].level
    assert plic.mmio_read(claim_reg(1), 4) == 10


def test_kvm_style_s_only_config(make_irq: Any) -> None:
    outs = [make_irq(), make_irq()]
    plic = SiFivePlic(outputs=outs, hart_config="S,S")
    plic.mmio_write(PRIO + 4 * 1, 4, 1)
    plic.mmio_write(enable_reg(1), 4, 1 << 1)
    plic.irq_in(1).raise_()
    assert [o.level for o in outs] == [False, True]


def test_created_through_registry_with_qemu_property_names(make_irq: Any) -> None:
    plic = device_new("riscv.sifive.plic", {"hart-config": "S", "num-sources": "33"},
                      outputs=[make_irq()])
    assert isinstance(plic, SiFivePlic)
    assert plic.num_sources == 33 and plic.words == 2
    with pytest.raises(ConfigError, match=r"Property 'riscv\.sifive\.plic\.nope' not found"):
        device_new("riscv.sifive.plic", {"nope": "1"}, outputs=[make_irq()])


def test_unknown_constructor_property_is_a_programming_error(make_irq: Any) -> None:
    with pytest.raises(TypeError, match="no property 'hart_confg'"):
        SiFivePlic(outputs=[make_irq()], hart_confg="S")
