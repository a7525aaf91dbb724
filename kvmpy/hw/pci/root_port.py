"""QEMU 7.2's generic PCI Express root port, ``pcie-root-port`` (1b36:000c;
hw/pci-bridge/gen_pcie_root_port.c, pcie_root_port.c, hw/pci/pcie.c, pcie_aer.c).

A PCI-to-PCI bridge (:mod:`kvmpy.hw.pci.bridge`) whose configuration space is QEMU's byte for
byte: the subsystem ID capability at 0x40, one MSI-X vector in BAR0 (capability at 0x48), the
PCI Express capability (v2, root port, with a slot) at 0x54, AER at 0x100 and ACS at 0x148
(``disable-acs`` leaves it out), QEMU's resource reserve capability when one of the
``*-reserve`` properties is set.  Reset closes every window and sets the slot's power and
power indicator from whether function 0 behind the port is present.

The slot (PCIe Base spec §6.7): presence and link active are set for the functions plugged at
start; writes to slot control complete at once (a command completed event); a hot-plug event
signals MSI-X vector 0 when MSI-X is enabled, else the port's INTx, which, as in QEMU, the
same configuration write drops again (pcie_aer_root_write_config).  Hot-plug itself (adding
or removing functions at run time, the attention button, a guest powering off an occupied slot
to eject it) is not provided: there is no ``device_add``/``device_del``.  A slot the guest
powers off (power controller control) leaves its functions unpowered, invisible to
configuration cycles, as QEMU does.

``(chassis, slot)`` must be unique below the host bridge, as in QEMU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmpy.errors import ConfigError
from kvmpy.hw.pci import pcie
from kvmpy.hw.pci.bridge import (
    PCI_BRIDGE_CONTROL,
    PCI_BRIDGE_CTL_DISCARD,
    PCI_BRIDGE_CTL_DISCARD_SERR,
    PCI_BRIDGE_CTL_DISCARD_STATUS,
    PCI_BRIDGE_CTL_FAST_BACK,
    PCI_BRIDGE_CTL_MASTER_ABORT,
    PCI_BRIDGE_CTL_SEC_DISCARD,
    PCI_CAP_ID_VNDR,
    PCI_IO_BASE,
    PCI_IO_LIMIT,
    PCI_SEC_STATUS,
    PciBridge,
)
from kvmpy.hw.pci.bus import PciBus
from kvmpy.hw.pci.device import (
    PCI_COMMAND,
    PCI_COMMAND_IO,
    PCI_INTERRUPT_PIN,
    PCI_STATUS,
    PciDevice,
)
from kvmpy.hw.pci.msix import MSIX_CAP_LENGTH, Msix
from kvmpy.hw.pci.pcie import clear_bits, get, put, set_bits
from kvmpy.hw.virtio.vmstate import Applier, StateReader
from kvmpy.memory import GuestRAM
from kvmpy.qom import InvalidPropertyValue, Property, parse_size, register_type

PCI_VENDOR_ID_REDHAT = 0x1B36
PCI_DEVICE_ID_REDHAT_PCIE_RP = 0x000C
AER_OFFSET = 0x100
ACS_OFFSET = AER_OFFSET + pcie.PCI_ERR_SIZEOF
RESERVE_CAP_SIZE = 32
"""QEMU's PCIBridgeQemuCap: id, next, len, type, then bus (u32), io (u64), mem (u32),
32-bit prefetchable (u32), 64-bit prefetchable (u64) to reserve."""
REDHAT_PCI_CAP_RESOURCE_RESERVE = 1
GEN_PCIE_ROOT_DEFAULT_IO_RANGE = 4096
_NOT_SET = (1 << 64) - 1

# Slot registers (PCIe Base spec §7.5.3.9-11).
SLTCAP_ABP, SLTCAP_PCP, SLTCAP_AIP, SLTCAP_PIP = 0x01, 0x02, 0x08, 0x10
SLTCAP_HPS, SLTCAP_HPC, SLTCAP_EIP = 0x20, 0x40, 0x20000
SLTCAP_PSN_SHIFT = 19
SLTCTL_ABPE, SLTCTL_PDCE, SLTCTL_CCIE, SLTCTL_HPIE = 0x01, 0x08, 0x10, 0x20
SLTCTL_AIC, SLTCTL_PIC, SLTCTL_PCC, SLTCTL_EIC = 0x00C0, 0x0300, 0x0400, 0x0800
SLTCTL_AIC_OFF, SLTCTL_PIC_OFF, SLTCTL_PIC_ON = 0x00C0, 0x0300, 0x0100
SLTSTA_ABP, SLTSTA_PFD, SLTSTA_MRLSC, SLTSTA_PDC = 0x01, 0x02, 0x04, 0x08
SLTSTA_CC, SLTSTA_PDS, SLTSTA_EIS = 0x10, 0x40, 0x80
HP_EV_SUPPORTED = SLTSTA_ABP | SLTSTA_PDC | SLTSTA_CC
SLOT_EVENTS = SLTSTA_ABP | SLTSTA_PFD | SLTSTA_MRLSC | SLTSTA_PDC | SLTSTA_CC


class UintProperty(Property[int]):
    """An unsigned property of ``bits`` bits, with QEMU's visitor errors."""

    def __init__(self, bits: int, default: int, description: str = "", name: str = "") -> None:
        super().__init__(int, default, description, name=name)
        self.bits = bits

    @property
    def type_name(self) -> str:
        return f"uint{self.bits}"

    def parse(self, text: str) -> Any:
        body = text.strip()
        negative = body.startswith("-")
        digits = body.lstrip("+-")
        try:
            value = int(digits, 16) if digits[:2].lower() == "0x" else \
                int(digits, 8) if len(digits) > 1 and digits[0] == "0" else int(digits, 10)
        except ValueError:
            raise ConfigError(f"Parameter '{self.name}' expects integer") from None
        if negative or value >> self.bits:
            raise ConfigError(f"Parameter '{self.name}' expects uint{self.bits}_t")
        return value


class ReserveProperty(Property[int]):
    """A ``*-reserve`` size; unset is all ones, as QEMU's default."""

    def __init__(self, description: str = "") -> None:
        super().__init__("size", _NOT_SET, description)

    def parse(self, text: str) -> Any:
        try:
            return parse_size(self.name, text)
        except (ConfigError, InvalidPropertyValue):
            raise ConfigError(f"Parameter '{self.name}' expects size") from None


@register_type("pcie-root-port", "base-pci-bridge", description="PCI Express Root Port")
class PcieRootPort(PciBridge):
    """``-device pcie-root-port,chassis=C[,slot=S][,port=P]``; its bus is named by its
    ``id``.  ``ram``, ``deliver_msi`` and ``pcie_port`` are what the bus injects."""

    user_creatable = True
    desc = "PCI Express Root Port"
    vendor_id = PCI_VENDOR_ID_REDHAT
    device_id = PCI_DEVICE_ID_REDHAT_PCIE_RP

    port = UintProperty(8, 0)
    chassis = UintProperty(8, 0)
    slot = UintProperty(16, 0)
    hotplug = Property(bool, True, "")
    x_native_hotplug = Property(bool, True, "")
    disable_acs = Property(bool, False, "")
    power_controller_present = Property(bool, True, "on/off", name="power_controller_present")
    aer_log_max = UintProperty(16, pcie.PCIE_AER_LOG_MAX_DEFAULT, name="aer_log_max")
    x_speed = Property(str, "16", "", choices=tuple(pcie.LINK_SPEEDS))
    x_width = Property(str, "32", "", choices=tuple(pcie.LINK_WIDTHS))
    bus_reserve = UintProperty(32, 0xFFFFFFFF)
    io_reserve = ReserveProperty()
    mem_reserve = ReserveProperty()
    pref32_reserve = ReserveProperty()
    pref64_reserve = ReserveProperty()
    x_migrate_msix = Property(bool, True, "")
    x_pcie_extcap_init = Property(bool, True, "on/off")
    x_pcie_lnksta_dllla = Property(bool, True, "on/off")

    def __init__(self, ram: GuestRAM | None = None,
                 deliver_msi: Callable[[int, int], None] | None = None,
                 pcie_port: bool = False, **props: Any) -> None:
        self.set_properties(props)
        super().__init__(express=True)
        self.hpev_notified = False
        self._realize_port(deliver_msi or (lambda address, data: None))
        self._reset_port()

    # -- construction (rp_realize, gen_rp_realize) ----------------------------------------------

    def _realize_port(self, deliver_msi: Callable[[int, int], None]) -> None:
        c = self.config
        c[PCI_INTERRUPT_PIN] = 1
        # pcie_port_init_reg: 66 MHz and fast back-to-back do not apply to PCI Express.
        put(c, PCI_STATUS, 2, 0)
        put(c, PCI_SEC_STATUS, 2, 0)
        clear_bits(self.wmask, PCI_BRIDGE_CONTROL, 2, PCI_BRIDGE_CTL_MASTER_ABORT |
                   PCI_BRIDGE_CTL_FAST_BACK | PCI_BRIDGE_CTL_DISCARD |
                   PCI_BRIDGE_CTL_SEC_DISCARD | PCI_BRIDGE_CTL_DISCARD_STATUS |
                   PCI_BRIDGE_CTL_DISCARD_SERR)
        self.ssvid_init(self.vendor_id, 0)
        self.msix = Msix(self, 1, 0, deliver_msi)
        self.register_bar(0, self.msix.bar_size, 0, self.msix)
        link = (pcie.LINK_SPEEDS[self.x_speed], pcie.LINK_WIDTHS[self.x_width])
        pcie.cap_init(self, pcie.PCI_EXP_TYPE_ROOT_PORT, self.port, link,
                      self.x_pcie_extcap_init)
        pcie.arifwd_init(self)
        pcie.deverr_init(self)
        self._slot_init()
        pcie.root_init(self)
        if self.aer_log_max > pcie.PCIE_AER_LOG_MAX_LIMIT:
            raise ConfigError(f"Invalid aer_log_max {self.aer_log_max}. The max number of aer "
                              f"log is {pcie.PCIE_AER_LOG_MAX_LIMIT}")
        pcie.aer_init(self, AER_OFFSET, self.aer_log_max)
        pcie.aer_root_init(self, AER_OFFSET)
        if not self.disable_acs:
            pcie.acs_init(self, ACS_OFFSET, downstream=True)
        self._reserve_init()

    def _slot_init(self) -> None:
        """pcie_cap_slot_init."""
        pos, c, wmask = self.exp_cap, self.config, self.wmask
        set_bits(c, pos + pcie.PCI_EXP_FLAGS, 2, pcie.PCI_EXP_FLAGS_SLOT)
        put(c, pos + pcie.PCI_EXP_SLTCAP, 4, self.slot << SLTCAP_PSN_SHIFT | SLTCAP_EIP |
            SLTCAP_PIP | SLTCAP_AIP | SLTCAP_ABP)
        if self.hotplug and self.x_native_hotplug:
            set_bits(c, pos + pcie.PCI_EXP_SLTCAP, 4, SLTCAP_HPS | SLTCAP_HPC)
        if self.power_controller_present:
            set_bits(c, pos + pcie.PCI_EXP_SLTCAP, 4, SLTCAP_PCP)
            clear_bits(c, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_PCC)
            set_bits(wmask, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_PCC)
        clear_bits(c, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_PIC | SLTCTL_AIC)
        set_bits(c, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_PIC_OFF | SLTCTL_AIC_OFF)
        # EIC always reads 0: it is writable so that a write of 1 is seen (and undone).
        set_bits(wmask, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_PIC | SLTCTL_AIC | SLTCTL_HPIE |
                 SLTCTL_CCIE | SLTCTL_PDCE | SLTCTL_ABPE | SLTCTL_EIC)
        set_bits(self.w1cmask, pos + pcie.PCI_EXP_SLTSTA, 2, HP_EV_SUPPORTED)

    def _reserve_init(self) -> None:
        """pci_bridge_qemu_reserve_cap_init, then gen_rp_realize's I/O decision."""
        io = self.io_reserve
        if io == _NOT_SET and self.hotplug and not self.x_native_hotplug:
            io = GEN_PCIE_ROOT_DEFAULT_IO_RANGE
        pref32, pref64 = self.pref32_reserve, self.pref64_reserve
        if pref32 != _NOT_SET and pref64 != _NOT_SET:
            raise ConfigError("PCI resource reserve cap: PREF32 and PREF64 conflict")
        if self.mem_reserve != _NOT_SET and self.mem_reserve >= 1 << 32:
            raise ConfigError("PCI resource reserve cap: mem-reserve must be less than 4G")
        if pref32 != _NOT_SET and pref32 >= 1 << 32:
            raise ConfigError("PCI resource reserve cap: pref32-reserve  must be less than 4G")
        if (self.bus_reserve, io, self.mem_reserve, pref32, pref64) != \
                (0xFFFFFFFF, _NOT_SET, _NOT_SET, _NOT_SET, _NOT_SET):
            pos = self.add_capability(PCI_CAP_ID_VNDR, RESERVE_CAP_SIZE)
            fields = bytes([RESERVE_CAP_SIZE, REDHAT_PCI_CAP_RESOURCE_RESERVE])
            fields += self.bus_reserve.to_bytes(4, "little") + io.to_bytes(8, "little")
            fields += (self.mem_reserve & 0xFFFFFFFF).to_bytes(4, "little")
            fields += (pref32 & 0xFFFFFFFF).to_bytes(4, "little") + pref64.to_bytes(8, "little")
            self.config[pos + 2:pos + RESERVE_CAP_SIZE] = fields
        if io == 0:
            clear_bits(self.wmask, PCI_COMMAND, 2, PCI_COMMAND_IO)
            self.wmask[PCI_IO_BASE] = self.wmask[PCI_IO_LIMIT] = 0

    # -- placement ------------------------------------------------------------------------------

    def realize(self, bus: PciBus) -> None:
        """pcie_chassis_add_slot: (chassis, slot) is taken at most once."""
        slots = bus.root.pcie_slots
        if (self.chassis, self.slot) in slots:
            raise ConfigError("Can't add chassis slot, error -16")
        super().realize(bus)
        slots.add((self.chassis, self.slot))

    def secondary_plugged(self, device: PciDevice) -> None:
        """pcie_cap_slot_plug_cb for a function present at start: presence detect, link
        active; then the slot's power as the reset before the guest runs leaves it."""
        pos = self.exp_cap
        set_bits(self.config, pos + pcie.PCI_EXP_SLTSTA, 2, SLTSTA_PDS)
        lnkcap = get(self.config, pos + pcie.PCI_EXP_LNKCAP, 4)
        if self.x_pcie_lnksta_dllla or lnkcap & pcie.PCI_EXP_LNKCAP_DLLLARC:
            set_bits(self.config, pos + pcie.PCI_EXP_LNKSTA, 2, pcie.PCI_EXP_LNKSTA_DLLLA)
        self._slot_reset()

    # -- configuration access (rp_write_config) -------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        lnksta = self.exp_cap + pcie.PCI_EXP_LNKSTA
        if offset < lnksta + 2 and lnksta < offset + size:
            self._sync_link_status()
        return super().config_read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        pos = self.exp_cap
        old_ctl = get(self.config, pos + pcie.PCI_EXP_SLTCTL, 2)
        old_sta = get(self.config, pos + pcie.PCI_EXP_SLTSTA, 2)
        super().config_write(offset, size, value)
        if offset < self.msix.cap + MSIX_CAP_LENGTH and self.msix.cap < offset + size:
            self.msix.control_written()
        self._slot_write(old_ctl, old_sta, offset, size, value)
        # pcie_aer_root_write_config: with INTx, the pin follows the enabled error
        # reporting, which no injected error ever sets.
        if not self.msix.enabled:
            self.set_irq(pcie.aer_root_interrupt(self, AER_OFFSET))

    def _sync_link_status(self) -> None:
        """pcie_sync_bridge_lnk: the link status is the function below's, within the
        port's capabilities (the port's own maximum when the slot is empty)."""
        c, pos = self.config, self.exp_cap
        lnkcap = get(c, pos + pcie.PCI_EXP_LNKCAP, 2)
        target = self.secondary_bus.devices.get(0)
        if target is None or not target.exp_cap:
            lnksta = lnkcap
        else:
            lnksta = target.config_read(target.exp_cap + pcie.PCI_EXP_LNKSTA, 2)
            nlw, cls = pcie.PCI_EXP_LNKSTA_NLW, pcie.PCI_EXP_LNKSTA_CLS
            if lnksta & nlw > lnkcap & pcie.PCI_EXP_LNKCAP_MLW:
                lnksta = lnksta & ~nlw | lnkcap & pcie.PCI_EXP_LNKCAP_MLW
            elif not lnksta & nlw:
                lnksta |= 1 << 4
            if lnksta & cls > lnkcap & pcie.PCI_EXP_LNKCAP_SLS:
                lnksta = lnksta & ~cls | lnkcap & pcie.PCI_EXP_LNKCAP_SLS
            elif not lnksta & cls:
                lnksta |= pcie.LINK_2_5GT
        mask = pcie.PCI_EXP_LNKSTA_CLS | pcie.PCI_EXP_LNKSTA_NLW
        clear_bits(c, pos + pcie.PCI_EXP_LNKSTA, 2, mask)
        set_bits(c, pos + pcie.PCI_EXP_LNKSTA, 2, lnksta & mask)

    # -- the slot (pcie_cap_slot_*) -------------------------------------------------------------

    def _slot_write(self, old_ctl: int, old_sta: int, offset: int, size: int,
                    value: int) -> None:
        """pcie_cap_slot_write_config; ``value`` is tested unshifted, as QEMU does."""
        pos, c = self.exp_cap, self.config
        sltsta = get(c, pos + pcie.PCI_EXP_SLTSTA, 2)
        if offset < pos + pcie.PCI_EXP_SLTSTA + 2 and pos + pcie.PCI_EXP_SLTSTA < offset + size:
            # Guests clear every bit at init: events they did not see stay (QEMU's work-around).
            if value & ~old_sta & SLOT_EVENTS:
                sltsta = sltsta & ~SLOT_EVENTS | old_sta & SLOT_EVENTS
                put(c, pos + pcie.PCI_EXP_SLTSTA, 2, sltsta)
            self._hotplug_event_clear()
        if not (offset < pos + pcie.PCI_EXP_SLTCTL + 2 and
                pos + pcie.PCI_EXP_SLTCTL < offset + size):
            return
        if clear_bits(c, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_EIC):
            sltsta ^= SLTSTA_EIS  # the electromechanical interlock toggles
            put(c, pos + pcie.PCI_EXP_SLTSTA, 2, sltsta)
        self._update_power()
        self._hotplug_event_notify()
        self._slot_event(SLTSTA_CC)  # the command completes at once (§6.7.3.2)

    def _slot_reset(self) -> None:
        pos, c = self.exp_cap, self.config
        clear_bits(c, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_EIC | SLTCTL_PIC | SLTCTL_AIC |
                   SLTCTL_HPIE | SLTCTL_CCIE | SLTCTL_PDCE | SLTCTL_ABPE)
        set_bits(c, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_AIC_OFF)
        if self.power_controller_present:
            populated = 0 in self.secondary_bus.devices  # a downstream port has device 0 only
            if populated:
                clear_bits(c, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_PCC)
            else:
                set_bits(c, pos + pcie.PCI_EXP_SLTCTL, 2, SLTCTL_PCC)
            set_bits(c, pos + pcie.PCI_EXP_SLTCTL, 2,
                     SLTCTL_PIC_ON if populated else SLTCTL_PIC_OFF)
        clear_bits(c, pos + pcie.PCI_EXP_SLTSTA, 2,
                   SLTSTA_EIS | SLTSTA_CC | SLTSTA_PDC | SLTSTA_ABP)
        self._update_power()
        self._update_event_status()

    def _update_power(self) -> None:
        """pcie_cap_update_power: with a power controller, the functions behind have power
        while power controller control is 0 (on)."""
        power = True
        if get(self.config, self.exp_cap + pcie.PCI_EXP_SLTCAP, 4) & SLTCAP_PCP:
            power = not get(self.config, self.exp_cap + pcie.PCI_EXP_SLTCTL, 2) & SLTCTL_PCC
        for device in list(self.secondary_bus.devices.values()):
            device.set_power(power)

    def _update_event_status(self) -> None:
        pos = self.exp_cap
        sltctl = get(self.config, pos + pcie.PCI_EXP_SLTCTL, 2)
        sltsta = get(self.config, pos + pcie.PCI_EXP_SLTSTA, 2)
        self.hpev_notified = bool(sltctl & SLTCTL_HPIE and sltsta & sltctl & HP_EV_SUPPORTED)

    def _hotplug_event_notify(self) -> None:
        previous = self.hpev_notified
        self._update_event_status()
        if previous == self.hpev_notified:
            return
        if self.msix.enabled:
            flags = get(self.config, self.exp_cap + pcie.PCI_EXP_FLAGS, 2)
            self.msix.notify((flags & pcie.PCI_EXP_FLAGS_IRQ) >> 9)
        elif self.intx_pin:
            self.set_irq(self.hpev_notified)

    def _hotplug_event_clear(self) -> None:
        self._update_event_status()
        if not self.msix.enabled and self.intx_pin and not self.hpev_notified:
            self.set_irq(False)

    def _slot_event(self, event: int) -> None:
        sta = self.exp_cap + pcie.PCI_EXP_SLTSTA
        if get(self.config, sta, 2) & event == event:
            return
        set_bits(self.config, sta, 2, event)
        self._hotplug_event_notify()

    # -- reset and state ------------------------------------------------------------------------

    def reset(self) -> None:
        super().reset()  # pci_do_device_reset, pci_bridge_reset, the bus behind
        self.msix.reset()
        self._reset_port()

    def _reset_port(self) -> None:
        """rp_reset (the AER interrupt message number stays 0)."""
        pcie.root_reset(self)
        pcie.deverr_reset(self)
        self._slot_reset()
        pcie.arifwd_reset(self)
        if not self.disable_acs:
            pcie.acs_reset(self, ACS_OFFSET)
        pcie.aer_root_reset(self, AER_OFFSET)
        self.disable_base_limit()

    def get_state(self) -> dict[str, Any]:
        return {"pci": super().get_state(), "msix": self.msix.get_state(),
                "hpev_notified": self.hpev_notified}

    def prepare_state(self, state: dict[str, Any]) -> Applier:
        r = StateReader(state, self.describe())
        apply_msix = self.msix.prepare_state(r.reader("msix"))
        notified = r.flag("hpev_notified")
        apply_pci = self.prepare_pci_state(r.reader("pci"))

        def apply() -> None:
            apply_msix()
            self.hpev_notified = notified
            apply_pci()
        return apply
