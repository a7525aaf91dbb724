"""PCI Express capabilities as QEMU 7.2 builds them (hw/pci/pcie.c, pcie_aer.c): the PCI
Express capability structure (PCIe Base spec 4.0 §7.5.3) and the extended capabilities in
configuration space from 0x100 (§7.6): AER (§7.8.4), ACS (§7.7.7), ATS (§10.5.1).

Each function here sets the bytes, write masks and write-1-to-clear masks of one QEMU helper
on a :class:`PciDevice`, so the layout a guest reads is QEMU's byte for byte.  The hot-plug
slot registers belong to the port that has them (:mod:`kvmpy.hw.pci.root_port`).
"""

from __future__ import annotations

from kvmpy.hw.pci.device import PCI_CONFIG_SPACE_SIZE, PCI_STATUS, PciDevice

PCI_CAP_ID_EXP = 0x10
PCI_EXP_VER2_SIZEOF = 0x3C

# The PCI Express capability (offsets from its start; linux/pci_regs.h names).
PCI_EXP_FLAGS = 0x02
PCI_EXP_FLAGS_VER2 = 0x0002
PCI_EXP_FLAGS_TYPE_SHIFT = 4
PCI_EXP_FLAGS_SLOT = 0x0100
PCI_EXP_FLAGS_IRQ = 0x3E00
PCI_EXP_TYPE_ENDPOINT = 0x0
PCI_EXP_TYPE_ROOT_PORT = 0x4
PCI_EXP_TYPE_UPSTREAM = 0x5
PCI_EXP_TYPE_DOWNSTREAM = 0x6
PCI_EXP_TYPE_RC_END = 0x9
PCI_EXP_DEVCAP = 0x04
PCI_EXP_DEVCAP_RBER = 0x00008000
PCI_EXP_DEVCAP_FLR = 0x10000000
PCI_EXP_DEVCTL = 0x08
PCI_EXP_DEVCTL_ERRORS = 0x000F
"""Correctable, non-fatal, fatal and unsupported-request reporting enables."""
PCI_EXP_DEVCTL_BCR_FLR = 0x8000
PCI_EXP_DEVSTA = 0x0A
PCI_EXP_DEVSTA_ERRORS = 0x000F
PCI_EXP_LNKCAP = 0x0C
PCI_EXP_LNKCAP_SLS = 0x0000000F
PCI_EXP_LNKCAP_MLW = 0x000003F0
PCI_EXP_LNKCAP_ASPMS_0S = 0x00000400
PCI_EXP_LNKCAP_DLLLARC = 0x00100000
PCI_EXP_LNKCAP_LBNC = 0x00200000
PCI_EXP_LNKCAP_PN_SHIFT = 24
PCI_EXP_LNKCTL = 0x10
PCI_EXP_LNKCTL_CCC_ES = 0x00C0
PCI_EXP_LNKSTA = 0x12
PCI_EXP_LNKSTA_CLS = 0x000F
PCI_EXP_LNKSTA_NLW = 0x03F0
PCI_EXP_LNKSTA_DLLLA = 0x2000
PCI_EXP_SLTCAP = 0x14
PCI_EXP_SLTCTL = 0x18
PCI_EXP_SLTSTA = 0x1A
PCI_EXP_RTCTL = 0x1C
PCI_EXP_RTCTL_ENABLES = 0x0007
PCI_EXP_DEVCAP2 = 0x24
PCI_EXP_DEVCAP2_ARI = 0x00000020
PCI_EXP_DEVCAP2_EFF = 0x00100000
PCI_EXP_DEVCAP2_EETLPP = 0x00200000
PCI_EXP_DEVCTL2 = 0x28
PCI_EXP_DEVCTL2_ARI = 0x0020
PCI_EXP_DEVCTL2_EETLPPB = 0x8000
PCI_EXP_LNKCAP2 = 0x2C
PCI_EXP_LNKCTL2 = 0x30
PCI_EXP_LNKCTL2_TLS = 0x000F

LINK_SPEEDS = {"2_5": 1, "5": 2, "8": 3, "16": 4}
"""``x-speed`` values -> QEMU's PCIExpLinkSpeed (LNKCAP's SLS encoding)."""
LINK_WIDTHS = {"1": 1, "2": 2, "4": 4, "8": 8, "12": 12, "16": 16, "32": 32}
LINK_2_5GT, LINK_5GT, LINK_8GT = 1, 2, 3

# Extended capabilities.
PCI_EXT_CAP_ID_ERR = 0x0001
PCI_EXT_CAP_ID_ACS = 0x000D
PCI_EXT_CAP_ID_ATS = 0x000F
PCI_ERR_VER = 2
PCI_ERR_SIZEOF = 0x48
PCI_ACS_VER = 1
PCI_ACS_SIZEOF = 8
PCI_EXT_CAP_ATS_SIZEOF = 8

PCI_ERR_UNCOR_STATUS = 0x04
PCI_ERR_UNCOR_SEVER = 0x0C
PCI_ERR_COR_STATUS = 0x10
PCI_ERR_COR_MASK = 0x14
PCI_ERR_CAP = 0x18
PCI_ERR_CAP_ECRC_GENC = 0x020
PCI_ERR_CAP_ECRC_GENE = 0x040
PCI_ERR_CAP_ECRC_CHKC = 0x080
PCI_ERR_CAP_ECRC_CHKE = 0x100
PCI_ERR_CAP_MHRC = 0x200
PCI_ERR_CAP_MHRE = 0x400
PCI_ERR_ROOT_COMMAND = 0x2C
PCI_ERR_ROOT_STATUS = 0x30
PCI_ERR_ROOT_CMD_EN_MASK = 0x07
PCI_ERR_ROOT_STATUS_REPORT_MASK = 0x7F
PCI_ERR_UNC_SUPPORTED = 0x03FFF030
"""DLP, surprise down, poisoned TLP, FCP, completion timeout/abort, unexpected completion,
receiver overflow, malformed TLP, ECRC, UR, ACS violation, internal, MC blocked, atomic
egress blocked, TLP prefix blocked (QEMU's pcie_regs.h)."""
PCI_ERR_UNC_SEVERITY_DEFAULT = 0x00462030
PCI_ERR_COR_SUPPORTED = 0x0000F1C1
PCI_ERR_COR_MASK_DEFAULT = 0x0000E000
PCI_SEC_STATUS_RCV_SYSTEM_ERROR = 0x4000
PCI_BRIDGE_CONTROL = 0x3E
PCI_BRIDGE_CTL_SERR = 0x02
PCIE_AER_LOG_MAX_DEFAULT = 8
PCIE_AER_LOG_MAX_LIMIT = 128

PCI_ACS_CAP = 0x04
PCI_ACS_CTRL = 0x06
PCI_ACS_DOWNSTREAM = 0x005F
"""Source validation, translation blocking, P2P request/completion redirect, upstream
forwarding, direct translated P2P: what a downstream port must implement."""
PCI_ATS_CAP = 0x04
PCI_ATS_CAP_PAGE_ALIGNED = 0x0020
PCI_ATS_CTRL = 0x06


def get(buf: bytearray, offset: int, size: int) -> int:
    return int.from_bytes(buf[offset:offset + size], "little")


def put(buf: bytearray, offset: int, size: int, value: int) -> None:
    buf[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def set_bits(buf: bytearray, offset: int, size: int, bits: int) -> None:
    put(buf, offset, size, get(buf, offset, size) | bits)


def clear_bits(buf: bytearray, offset: int, size: int, bits: int) -> int:
    """Clear ``bits``; returns which of them were set (QEMU's test_and_clear_mask)."""
    old = get(buf, offset, size)
    put(buf, offset, size, old & ~bits)
    return old & bits


# -- the PCI Express capability -----------------------------------------------------------------

def cap_init(dev: PciDevice, port_type: int, port: int,
             link: tuple[int, int] | None = None, extcap_init: bool = True) -> int:
    """pcie_cap_init: a version 2 capability of ``port_type`` at the first free offset;
    ``link`` (speed, width) for a port's slot (pcie_cap_fill_slot_lnk); ``extcap_init``
    (``x-pcie-extcap-init``) makes the dword at 0x100 read-only, a null extended capability
    header.  Returns its offset."""
    pos = dev.add_capability(PCI_CAP_ID_EXP, PCI_EXP_VER2_SIZEOF)
    dev.exp_cap = pos
    c = dev.config
    put(c, pos + PCI_EXP_FLAGS, 2, port_type << PCI_EXP_FLAGS_TYPE_SHIFT | PCI_EXP_FLAGS_VER2)
    put(c, pos + PCI_EXP_DEVCAP, 4, PCI_EXP_DEVCAP_RBER)
    put(c, pos + PCI_EXP_LNKCAP, 4, port << PCI_EXP_LNKCAP_PN_SHIFT | PCI_EXP_LNKCAP_ASPMS_0S |
        1 << 4 | LINK_2_5GT)
    put(c, pos + PCI_EXP_LNKSTA, 2, 1 << 4 | LINK_2_5GT)
    if link is not None:
        _fill_slot_link(dev, *link)
    put(c, pos + PCI_EXP_DEVCAP2, 4, PCI_EXP_DEVCAP2_EFF | PCI_EXP_DEVCAP2_EETLPP)
    put(dev.wmask, pos + PCI_EXP_DEVCTL2, 2, PCI_EXP_DEVCTL2_EETLPPB)
    if extcap_init:
        put(dev.wmask, PCI_CONFIG_SPACE_SIZE, 4, 0)
    return pos


def _fill_slot_link(dev: PciDevice, speed: int, width: int) -> None:
    pos, c = dev.exp_cap, dev.config
    clear_bits(c, pos + PCI_EXP_LNKCAP, 4, PCI_EXP_LNKCAP_MLW | PCI_EXP_LNKCAP_SLS)
    set_bits(c, pos + PCI_EXP_LNKCAP, 4, width << 4 | speed)
    if width > 1 or speed > LINK_2_5GT:
        set_bits(c, pos + PCI_EXP_LNKCAP, 4, PCI_EXP_LNKCAP_LBNC)
    if speed > LINK_2_5GT:
        set_bits(c, pos + PCI_EXP_LNKCAP, 4, PCI_EXP_LNKCAP_DLLLARC)
        clear_bits(c, pos + PCI_EXP_LNKCTL2, 2, PCI_EXP_LNKCTL2_TLS)
        set_bits(c, pos + PCI_EXP_LNKCTL2, 2, speed & PCI_EXP_LNKCTL2_TLS)
    if speed > LINK_5GT:
        # LNKCAP2's vector: every speed up to the highest (2.5, 5, 8, then 16 GT/s).
        put(c, pos + PCI_EXP_LNKCAP2, 4, 0x0E | (0x10 if speed > LINK_8GT else 0))


def endpoint_cap_init(dev: PciDevice, on_root_bus: bool) -> int:
    """pcie_endpoint_cap_init: an endpoint, or a root complex integrated endpoint when the
    function sits on the root bus itself."""
    return cap_init(dev, PCI_EXP_TYPE_RC_END if on_root_bus else PCI_EXP_TYPE_ENDPOINT, 0)


def port_type(dev: PciDevice) -> int:
    return get(dev.config, dev.exp_cap + PCI_EXP_FLAGS, 2) >> PCI_EXP_FLAGS_TYPE_SHIFT & 0xF


def deverr_init(dev: PciDevice) -> None:
    pos = dev.exp_cap
    set_bits(dev.config, pos + PCI_EXP_DEVCAP, 4, PCI_EXP_DEVCAP_RBER)
    set_bits(dev.wmask, pos + PCI_EXP_DEVCTL, 4, PCI_EXP_DEVCTL_ERRORS)
    set_bits(dev.w1cmask, pos + PCI_EXP_DEVSTA, 4, PCI_EXP_DEVSTA_ERRORS)


def deverr_reset(dev: PciDevice) -> None:
    clear_bits(dev.config, dev.exp_cap + PCI_EXP_DEVCTL, 4, PCI_EXP_DEVCTL_ERRORS)


def lnkctl_init(dev: PciDevice) -> None:
    set_bits(dev.wmask, dev.exp_cap + PCI_EXP_LNKCTL, 4, PCI_EXP_LNKCTL_CCC_ES)


def lnkctl_reset(dev: PciDevice) -> None:
    clear_bits(dev.config, dev.exp_cap + PCI_EXP_LNKCTL, 4, PCI_EXP_LNKCTL_CCC_ES)


def flr_init(dev: PciDevice) -> None:
    """Function level reset: the bit is writable so a write of 1 can be seen (and cleared:
    :func:`flr_requested`)."""
    set_bits(dev.config, dev.exp_cap + PCI_EXP_DEVCAP, 4, PCI_EXP_DEVCAP_FLR)
    set_bits(dev.wmask, dev.exp_cap + PCI_EXP_DEVCTL, 2, PCI_EXP_DEVCTL_BCR_FLR)


def flr_requested(dev: PciDevice) -> bool:
    """pcie_cap_flr_write_config's test: was FLR written?  The caller resets the function,
    then calls :func:`flr_done`."""
    return bool(get(dev.config, dev.exp_cap + PCI_EXP_DEVCTL, 2) & PCI_EXP_DEVCTL_BCR_FLR)


def flr_done(dev: PciDevice) -> None:
    clear_bits(dev.config, dev.exp_cap + PCI_EXP_DEVCTL, 2, PCI_EXP_DEVCTL_BCR_FLR)


def arifwd_init(dev: PciDevice) -> None:
    set_bits(dev.config, dev.exp_cap + PCI_EXP_DEVCAP2, 4, PCI_EXP_DEVCAP2_ARI)
    set_bits(dev.wmask, dev.exp_cap + PCI_EXP_DEVCTL2, 4, PCI_EXP_DEVCTL2_ARI)


def arifwd_reset(dev: PciDevice) -> None:
    clear_bits(dev.config, dev.exp_cap + PCI_EXP_DEVCTL2, 4, PCI_EXP_DEVCTL2_ARI)


def root_init(dev: PciDevice) -> None:
    """Root control: the system error enables are writable (PME is not emulated)."""
    put(dev.wmask, dev.exp_cap + PCI_EXP_RTCTL, 2, PCI_EXP_RTCTL_ENABLES)


def root_reset(dev: PciDevice) -> None:
    put(dev.config, dev.exp_cap + PCI_EXP_RTCTL, 2, 0)


# -- extended capabilities ----------------------------------------------------------------------

def add_extended_capability(dev: PciDevice, cap_id: int, version: int, offset: int,
                            size: int) -> None:
    """pcie_add_capability: a read-only extended capability at ``offset``, linked from the
    last one in the list (the list starts at 0x100)."""
    if offset != PCI_CONFIG_SPACE_SIZE:
        last = _last_extended_capability(dev)
        header = get(dev.config, last, 4)
        put(dev.config, last, 4, header & ~(0xFFC << 20) | (offset & 0xFFC) << 20)
    put(dev.config, offset, 4, version << 16 | cap_id)
    dev.wmask[offset:offset + size] = bytes(size)
    dev.w1cmask[offset:offset + size] = bytes(size)


def _last_extended_capability(dev: PciDevice) -> int:
    pos = PCI_CONFIG_SPACE_SIZE
    header = get(dev.config, pos, 4)
    while header >> 20:
        pos = header >> 20
        header = get(dev.config, pos, 4)
    return pos


def aer_init(dev: PciDevice, offset: int, log_max: int = PCIE_AER_LOG_MAX_DEFAULT) -> None:
    """pcie_aer_init: Advanced Error Reporting.  No error is ever injected (QEMU's HMP
    ``pcie_aer_inject_error`` is not provided), so the status and log registers stay 0."""
    add_extended_capability(dev, PCI_EXT_CAP_ID_ERR, PCI_ERR_VER, offset, PCI_ERR_SIZEOF)
    c, wmask, w1c = dev.config, dev.wmask, dev.w1cmask
    put(w1c, offset + PCI_ERR_UNCOR_STATUS, 4, PCI_ERR_UNC_SUPPORTED)
    put(c, offset + PCI_ERR_UNCOR_SEVER, 4, PCI_ERR_UNC_SEVERITY_DEFAULT)
    put(wmask, offset + PCI_ERR_UNCOR_SEVER, 4, PCI_ERR_UNC_SUPPORTED)
    set_bits(w1c, offset + PCI_ERR_COR_STATUS, 4, PCI_ERR_COR_SUPPORTED)
    put(c, offset + PCI_ERR_COR_MASK, 4, PCI_ERR_COR_MASK_DEFAULT)
    put(wmask, offset + PCI_ERR_COR_MASK, 4, PCI_ERR_COR_SUPPORTED)
    multiple = log_max > 0  # multiple header recording
    put(c, offset + PCI_ERR_CAP, 4, PCI_ERR_CAP_ECRC_GENC | PCI_ERR_CAP_ECRC_CHKC |
        (PCI_ERR_CAP_MHRC if multiple else 0))
    put(wmask, offset + PCI_ERR_CAP, 4, PCI_ERR_CAP_ECRC_GENE | PCI_ERR_CAP_ECRC_CHKE |
        (PCI_ERR_CAP_MHRE if multiple else 0))
    if dev.exp_cap and port_type(dev) in (PCI_EXP_TYPE_ROOT_PORT, PCI_EXP_TYPE_UPSTREAM,
                                          PCI_EXP_TYPE_DOWNSTREAM):
        set_bits(wmask, PCI_BRIDGE_CONTROL, 2, PCI_BRIDGE_CTL_SERR)
        set_bits(w1c, PCI_STATUS, 4, PCI_SEC_STATUS_RCV_SYSTEM_ERROR)


def aer_root_init(dev: PciDevice, offset: int) -> None:
    put(dev.wmask, offset + PCI_ERR_ROOT_COMMAND, 4, PCI_ERR_ROOT_CMD_EN_MASK)
    put(dev.w1cmask, offset + PCI_ERR_ROOT_STATUS, 4, PCI_ERR_ROOT_STATUS_REPORT_MASK)


def aer_root_reset(dev: PciDevice, offset: int) -> None:
    put(dev.config, offset + PCI_ERR_ROOT_COMMAND, 4, 0)


def aer_root_interrupt(dev: PciDevice, offset: int) -> bool:
    """pcie_aer_root_write_config's INTx level: an enabled error reporting in the root
    status (which stays 0 here, no error being injected)."""
    status = get(dev.config, offset + PCI_ERR_ROOT_STATUS, 4)
    enabled = ((1 if status & 0x01 else 0) | (2 if status & 0x20 else 0) |
               (4 if status & 0x40 else 0))  # pcie_aer_status_to_cmd
    return bool(get(dev.config, offset + PCI_ERR_ROOT_COMMAND, 4) & enabled)


def acs_init(dev: PciDevice, offset: int, downstream: bool) -> None:
    """pcie_acs_init: a downstream port implements the ACS controls it must; an endpoint
    none."""
    add_extended_capability(dev, PCI_EXT_CAP_ID_ACS, PCI_ACS_VER, offset, PCI_ACS_SIZEOF)
    bits = PCI_ACS_DOWNSTREAM if downstream else 0
    put(dev.config, offset + PCI_ACS_CAP, 2, bits)
    put(dev.wmask, offset + PCI_ACS_CTRL, 2, bits)


def acs_reset(dev: PciDevice, offset: int) -> None:
    put(dev.config, offset + PCI_ACS_CTRL, 2, 0)


def ats_init(dev: PciDevice, offset: int, aligned: bool) -> None:
    add_extended_capability(dev, PCI_EXT_CAP_ID_ATS, 1, offset, PCI_EXT_CAP_ATS_SIZEOF)
    if aligned:
        put(dev.config, offset + PCI_ATS_CAP, 2, PCI_ATS_CAP_PAGE_ALIGNED)
    put(dev.config, offset + PCI_ATS_CTRL, 2, 0)
    put(dev.wmask, offset + PCI_ATS_CTRL, 2, 0x800F)
