"""SiFive PLIC (``sifive,plic-1.0.0``), QEMU's ``riscv.sifive.plic`` (hw/intc/sifive_plic.c).

Register map (32-bit little-endian accesses only; offsets inside the window)::

    priority_base  + 4*n               priority of source n (WARL: value mod (num_priorities+1))
    pending_base   + 4*w               pending bits of sources 32w..32w+31 (read-only)
    enable_base    + stride*ctx + 4*w  enable bits of context ctx
    context_base   + 0x1000*ctx        priority threshold of context ctx
    context_base   + 0x1000*ctx + 4    claim (read) / complete (write a source id)

Contexts come from ``hart-config`` (QEMU's "MS,MS" string: per hart, one context per mode
letter, in order).  A context's output is high while a source is pending, enabled, not claimed
and has a priority above the threshold.  Claim returns the highest-priority such source (ties
go to the lowest id), clears its pending bit and marks it claimed; complete clears the claimed
bit.

Inputs are level-triggered through a gateway (PLIC spec, "Interrupt Gateways"): raising a line
latches the source's pending bit, which stays set when the line drops and is cleared only by a
claim (QEMU 7.2 behaves the same: ``sifive_plic_irq_request`` acts on raises only, checked
against qemu-system-riscv64 by tests/hw/test_qemu_oracle.py).  Every raise latches again, even
while the source is claimed, as in QEMU.  A source whose line is still high when it is
completed becomes pending again, as the spec's gateway does; QEMU relies on the device raising
the line again instead, which its devices (and ours) do on every register access.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kvmpy import log
from kvmpy.errors import ConfigError
from kvmpy.hw.core import SysBusDevice, state_from_dict
from kvmpy.hw.irq import IrqLine
from kvmpy.qom import Property, register_type

_WORD = 0xFFFFFFFF


@dataclass
class PlicState:
    """Guest-visible PLIC state; bitfields are Python ints (bit n = source n)."""

    priority: list[int] = field(default_factory=list)
    threshold: list[int] = field(default_factory=list)
    enable: list[int] = field(default_factory=list)
    pending: int = 0
    claimed: int = 0
    levels: int = 0
    """Current level of each input line (wires, kept across reset)."""


def parse_hart_config(text: str, hartid_base: int = 0) -> list[tuple[int, str]]:
    """``"MS,MS"`` -> ``[(0, "M"), (0, "S"), (1, "M"), (1, "S")]``: (hartid, mode) per context."""
    contexts: list[tuple[int, str]] = []
    hartid = hartid_base
    for part in text.split(","):
        if not part:
            continue
        seen: set[str] = set()
        for mode in part:
            if mode not in "MSU":
                raise ConfigError(f"plic: invalid mode '{mode}'")
            if mode in seen:
                raise ConfigError(f"plic: duplicate mode '{mode}' in config: {text}")
            seen.add(mode)
            contexts.append((hartid, mode))
        hartid += 1
    return contexts


@register_type("riscv.sifive.plic", "sys-bus-device", description="SiFive PLIC")
class SiFivePlic(SysBusDevice):
    """The PLIC. ``outputs[ctx]`` is the external-interrupt line of context ``ctx`` (for the
    virt board: hart h's ``irq_line(11)`` for its M context and ``irq_line(9)`` for S)."""

    access_sizes = (4,)
    name = "riscv.sifive.plic"
    state: PlicState

    hart_config = Property(str, "MS", "contexts per hart, e.g. MS,MS")
    hartid_base = Property(int, 0, "first hart id")
    num_sources = Property(int, 96, "number of interrupt sources including source 0")
    num_priorities = Property(int, 7, "highest priority")
    priority_base = Property(int, 0x0, "offset of the priority registers")
    pending_base = Property(int, 0x1000, "offset of the pending bits")
    enable_base = Property(int, 0x2000, "offset of the enable bits")
    enable_stride = Property(int, 0x80, "distance between the enable bits of two contexts")
    context_base = Property(int, 0x200000, "offset of the threshold/claim registers")
    context_stride = Property(int, 0x1000, "distance between two contexts' registers")
    aperture_size = Property(int, 0, "size of the MMIO window (0: just enough)")

    def __init__(self, outputs: Sequence[IrqLine] = (), **props: object) -> None:
        self.set_properties(props)
        self.contexts = parse_hart_config(self.hart_config, self.hartid_base)
        if self.num_sources < 1 or self.num_sources > 1024:
            raise ConfigError("plic: invalid number of interrupt sources")
        if len(outputs) != len(self.contexts):
            raise ConfigError(f"plic: {len(self.contexts)} contexts in hart-config "
                              f"'{self.hart_config}' but {len(outputs)} output lines")
        self.outputs = list(outputs)
        self._native = (list(self.contexts), list(self.outputs))
        """The board's layout; a loaded state may bring its own until the next reset."""
        self.words = (self.num_sources + 31) // 32
        self._num_sources = self.num_sources
        self.region_size = self.aperture_size or (
            self.context_base + self.context_stride * len(self.contexts))
        self._out_levels = [False] * len(self.contexts)
        # The layout as plain ints: register decoding is on the interrupt path.
        self._layout = (self.priority_base, self.pending_base, self.enable_base,
                        self.enable_stride, self.context_base, self.context_stride)
        self.state = self._fresh_state()

    def _fresh_state(self) -> PlicState:
        n = len(self.contexts)
        return PlicState(priority=[0] * self.num_sources, threshold=[0] * n, enable=[0] * n)

    # -- wiring ---------------------------------------------------------------------------------

    def irq_in(self, n: int) -> IrqLine:
        """The input line of source ``n`` (1 .. num_sources-1)."""
        if not 0 < n < self.num_sources:
            raise ConfigError(f"plic: no interrupt source {n} (num-sources {self.num_sources})")
        return IrqLine(self._set_input, n)

    def _set_input(self, n: int, level: bool) -> None:
        s = self.state
        bit = 1 << n
        if level:
            s.levels |= bit
            if not s.pending & bit:
                s.pending |= bit
                self._update()
        else:
            s.levels &= ~bit  # the latched pending bit stays until claimed

    # -- interrupt logic ------------------------------------------------------------------------

    def _best(self, ctx: int) -> int:
        """Highest-priority claimable source of ``ctx`` above its threshold, or 0."""
        s = self.state
        bits = s.pending & ~s.claimed & s.enable[ctx]
        best, best_prio = 0, s.threshold[ctx]
        priority = s.priority
        while bits:
            low = bits & -bits
            irq = low.bit_length() - 1
            if priority[irq] > best_prio:
                best, best_prio = irq, priority[irq]
            bits ^= low
        return best

    def _update(self, force: bool = False) -> None:
        s = self.state
        active = s.pending & ~s.claimed
        for ctx, line in enumerate(self.outputs):
            level = bool(active & s.enable[ctx]) and self._best(ctx) != 0
            if force or level != self._out_levels[ctx]:
                self._out_levels[ctx] = level
                line.set(level)

    def _saved_layout(self, state: dict[str, object]
                      ) -> tuple[dict[str, object], list[tuple[int, str]], list[IrqLine]]:
        """The saved context layout with this board's lines for it.

        The guest addresses contexts by index, from the device tree it booted with, so a
        state keeps its own layout: one saved under KVM (S contexts only) loads into the
        interpreter's M+S PLIC as S-only, and back.  A context whose hart and mode this board
        has no line for (M-mode under KVM) is wired to nothing and must not be in use."""
        from kvmpy.migration.errors import VmStateError

        names, thresholds, enables = (state.get(k) for k in ("contexts", "threshold",
                                                               "enable"))
        if (not isinstance(names, list) or not isinstance(thresholds, list)
                or not isinstance(enables, list) or not len(names) == len(thresholds)
                == len(enables) or not all(isinstance(c, str) for c in names)
                or len(names) > 15872):
            raise VmStateError(f"vmstate: {self.name}: bad context list")
        lines = {f"{hart}{mode}": line for (hart, mode), line
                 in zip(self._native[0], self._native[1], strict=True)}
        contexts: list[tuple[int, str]] = []
        outputs: list[IrqLine] = []
        for name, enable in zip(names, enables, strict=True):
            if len(name) < 2 or not name[:-1].isdigit() or name[-1] not in "MSU":
                raise VmStateError(f"vmstate: {self.name}: bad context name {name!r}")
            line = lines.get(name)
            if line is None:
                if enable:
                    raise VmStateError(f"vmstate: {self.name}: context {name} is in use and "
                                       "this board has no such hart or mode")
                line = IrqLine(_unwired)
            contexts.append((int(name[:-1]), name[-1]))
            outputs.append(line)
        return {k: v for k, v in state.items() if k != "contexts"}, contexts, outputs

    def claim(self, ctx: int) -> int:
        s = self.state
        irq = self._best(ctx)
        if irq:
            s.pending &= ~(1 << irq)
            s.claimed |= 1 << irq
        self._update()
        return irq

    def complete(self, irq: int) -> None:
        s = self.state
        if not 0 <= irq < self._num_sources:
            log.guest_error(f"sifive_plic: complete of invalid source {irq}")
            return
        s.claimed &= ~(1 << irq)
        if s.levels >> irq & 1 and irq:
            s.pending |= 1 << irq  # gateway forwards a still-asserted level again
        self._update()

    # -- MMIO -----------------------------------------------------------------------------------

    def _warl_priority(self, value: int) -> int | None:
        top = self.num_priorities
        if (top + 1) & top == 0:
            return value % (top + 1)
        return value if value <= top else None

    def _decode(self, offset: int) -> tuple[str, int, int] | None:
        """Map an offset to (group, index, word); None if it is no register."""
        if offset & 3:
            return None
        prio_base, pending_base, enable_base, enable_stride, ctx_base, ctx_stride = self._layout
        n_ctx = len(self.contexts)
        rel = offset - ctx_base
        if 0 <= rel < n_ctx * ctx_stride:  # threshold / claim: the interrupt path, first
            ctx, reg = divmod(rel, ctx_stride)
            if reg == 4:
                return ("claim", ctx, 0)
            return ("threshold", ctx, 0) if reg == 0 else None
        if 0 <= offset - prio_base < self._num_sources * 4:
            return ("priority", (offset - prio_base) >> 2, 0)
        if 0 <= offset - pending_base < self.words * 4:
            return ("pending", 0, (offset - pending_base) >> 2)
        rel = offset - enable_base
        if 0 <= rel < n_ctx * enable_stride:
            ctx, word = divmod(rel, enable_stride)
            return ("enable", ctx, word >> 2) if word >> 2 < self.words else None
        return None

    def mmio_read(self, offset: int, size: int) -> int:
        reg = self._decode(offset)
        s = self.state
        if reg is None:
            log.guest_error(f"sifive_plic_read: Invalid register read 0x{offset:x}")
            return 0
        group, index, word = reg
        if group == "priority":
            return s.priority[index]
        if group == "pending":
            return (s.pending >> (32 * word)) & _WORD
        if group == "enable":
            return (s.enable[index] >> (32 * word)) & _WORD
        if group == "threshold":
            return s.threshold[index]
        return self.claim(index)

    def mmio_write(self, offset: int, size: int, value: int) -> None:
        reg = self._decode(offset)
        s = self.state
        if reg is None:
            log.guest_error(f"sifive_plic_write: Invalid register write 0x{offset:x}")
            return
        group, index, word = reg
        if group == "priority" or group == "threshold":
            legal = self._warl_priority(value)
            if legal is None:
                log.guest_error(f"sifive_plic_write: priority {value} out of range")
                return
            (s.priority if group == "priority" else s.threshold)[index] = legal
            self._update()
        elif group == "pending":
            log.guest_error(f"sifive_plic_write: invalid pending write: 0x{offset:x}")
        elif group == "enable":
            mask = _WORD << (32 * word)
            valid = (1 << self.num_sources) - 1
            s.enable[index] = (s.enable[index] & ~mask) | ((value << (32 * word)) & mask & valid)
            self._update()
        else:
            self.complete(value)

    def reset(self) -> None:
        self._set_layout(*self._native)  # the device tree written at reset describes it
        levels = self.state.levels
        self.state = self._fresh_state()
        self.state.levels = levels
        for ctx in range(len(self._out_levels)):
            self._out_levels[ctx] = False
        self._update(force=True)

    def get_state(self) -> dict[str, object]:
        """The registers, with ``contexts`` naming each context (``"0M"``, ``"0S"``, ...)
        so that a state loads into a PLIC with other contexts (KVM's has S ones only)."""
        state = super().get_state()
        state["contexts"] = [f"{hart}{mode}" for hart, mode in self.contexts]
        return state

    def set_state(self, state: dict[str, object]) -> None:
        from kvmpy.migration.errors import VmStateError

        contexts, outputs = self._native
        if isinstance(state, dict) and "contexts" in state:
            state, contexts, outputs = self._saved_layout(state)
        new = state_from_dict(self.state, state, self.name)
        n = len(contexts)
        if (len(new.priority) != self.num_sources or len(new.threshold) != n
                or len(new.enable) != n):
            raise VmStateError(f"vmstate: {self.name}: state is for another number of "
                               "sources or contexts")
        limit = 1 << (32 * self.words + 32)
        words = [*new.priority, *new.threshold]
        bits = [*new.enable, new.pending, new.claimed, new.levels]
        if not all(0 <= v <= 0xFFFF_FFFF for v in words) or not all(0 <= v < limit
                                                                        for v in bits):
            raise VmStateError(f"vmstate: {self.name}: a register value is out of range")
        self._set_layout(contexts, outputs)
        self.state = new
        self._update(force=True)

    def _set_layout(self, contexts: list[tuple[int, str]], outputs: list[IrqLine]) -> None:
        """Switch to another context layout, lowering the lines it no longer drives."""
        if contexts == self.contexts and outputs == self.outputs:
            return
        for line, level in zip(self.outputs, self._out_levels, strict=True):
            if level and line not in outputs:
                line.set(False)
        self.contexts, self.outputs = list(contexts), list(outputs)
        self._out_levels = [False] * len(contexts)

    def refresh_outputs(self) -> None:
        """Drive every context's line with its current level again (after the harts'
        pins were loaded from a saved state)."""
        self._update(force=True)


def _unwired(n: int, level: bool) -> None:
    """The line of a context no hart of this board can take (M-mode under KVM)."""
