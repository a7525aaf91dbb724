"""The riscv64 target description gdb reads (``qXfer:features:read``), and register numbers.

The same features, register names, types and numbers as QEMU 7.2's ``rv64`` CPU: the core
(x0..x31, pc: gdb registers 0..32), the FPU (f0..f31: 33..64, always 64 bits), the
``virtual`` feature (``priv``: 65), and the CSR feature QEMU generates at CPU creation
(register 66 + CSR number), listed here as QEMU 7.2 lists it for ``-M virt``.  CSRs in that
list that the hart does not implement (the hypervisor and trigger CSRs) read as zero.
"""

from __future__ import annotations

CORE_REGS = 33
FPU_BASE = 33
PRIV_REG = 65
CSR_BASE = 66
CSR_COUNT = 4096

QEMU_CSRS: tuple[tuple[str, int], ...] = (
    ("sstatus", 0x100), ("sie", 0x104), ("stvec", 0x105), ("scounteren", 0x106),
    ("senvcfg", 0x10a), ("sscratch", 0x140), ("sepc", 0x141), ("scause", 0x142), ("stval", 0x143),
    ("sip", 0x144), ("satp", 0x180), ("vsstatus", 0x200), ("vsie", 0x204), ("vstvec", 0x205),
    ("vsscratch", 0x240), ("vsepc", 0x241), ("vscause", 0x242), ("vstval", 0x243),
    ("vsip", 0x244), ("vsatp", 0x280), ("mstatus", 0x300), ("misa", 0x301), ("medeleg", 0x302),
    ("mideleg", 0x303), ("mie", 0x304), ("mtvec", 0x305), ("mcounteren", 0x306),
    ("menvcfg", 0x30a), ("mcountinhibit", 0x320), ("mhpmevent3", 0x323), ("mhpmevent4", 0x324),
    ("mhpmevent5", 0x325), ("mhpmevent6", 0x326), ("mhpmevent7", 0x327), ("mhpmevent8", 0x328),
    ("mhpmevent9", 0x329), ("mhpmevent10", 0x32a), ("mhpmevent11", 0x32b), ("mhpmevent12", 0x32c),
    ("mhpmevent13", 0x32d), ("mhpmevent14", 0x32e), ("mhpmevent15", 0x32f),
    ("mhpmevent16", 0x330), ("mhpmevent17", 0x331), ("mhpmevent18", 0x332),
    ("mhpmevent19", 0x333), ("mhpmevent20", 0x334), ("mhpmevent21", 0x335),
    ("mhpmevent22", 0x336), ("mhpmevent23", 0x337), ("mhpmevent24", 0x338),
    ("mhpmevent25", 0x339), ("mhpmevent26", 0x33a), ("mhpmevent27", 0x33b),
    ("mhpmevent28", 0x33c), ("mhpmevent29", 0x33d), ("mhpmevent30", 0x33e),
    ("mhpmevent31", 0x33f), ("mscratch", 0x340), ("mepc", 0x341), ("mcause", 0x342),
    ("mtval", 0x343), ("mip", 0x344), ("mtinst", 0x34a), ("mtval2", 0x34b), ("pmpcfg0", 0x3a0),
    ("pmpcfg1", 0x3a1), ("pmpcfg2", 0x3a2), ("pmpcfg3", 0x3a3), ("pmpaddr0", 0x3b0),
    ("pmpaddr1", 0x3b1), ("pmpaddr2", 0x3b2), ("pmpaddr3", 0x3b3), ("pmpaddr4", 0x3b4),
    ("pmpaddr5", 0x3b5), ("pmpaddr6", 0x3b6), ("pmpaddr7", 0x3b7), ("pmpaddr8", 0x3b8),
    ("pmpaddr9", 0x3b9), ("pmpaddr10", 0x3ba), ("pmpaddr11", 0x3bb), ("pmpaddr12", 0x3bc),
    ("pmpaddr13", 0x3bd), ("pmpaddr14", 0x3be), ("pmpaddr15", 0x3bf), ("hstatus", 0x600),
    ("hedeleg", 0x602), ("hideleg", 0x603), ("hie", 0x604), ("htimedelta", 0x605),
    ("hcounteren", 0x606), ("hgeie", 0x607), ("henvcfg", 0x60a), ("htval", 0x643), ("hip", 0x644),
    ("hvip", 0x645), ("htinst", 0x64a), ("hgatp", 0x680), ("tselect", 0x7a0), ("tdata1", 0x7a1),
    ("tdata2", 0x7a2), ("tdata3", 0x7a3), ("tinfo", 0x7a4), ("mcycle", 0xb00),
    ("minstret", 0xb02), ("mhpmcounter3", 0xb03), ("mhpmcounter4", 0xb04),
    ("mhpmcounter5", 0xb05), ("mhpmcounter6", 0xb06), ("mhpmcounter7", 0xb07),
    ("mhpmcounter8", 0xb08), ("mhpmcounter9", 0xb09), ("mhpmcounter10", 0xb0a),
    ("mhpmcounter11", 0xb0b), ("mhpmcounter12", 0xb0c), ("mhpmcounter13", 0xb0d),
    ("mhpmcounter14", 0xb0e), ("mhpmcounter15", 0xb0f), ("mhpmcounter16", 0xb10),
    ("mhpmcounter17", 0xb11), ("mhpmcounter18", 0xb12), ("hgeip", 0xe12), ("mvendorid", 0xf11),
    ("marchid", 0xf12), ("mimpid", 0xf13), ("mhartid", 0xf14), ("mconfigptr", 0xf15),
)
"""(name, CSR number) of QEMU 7.2's generated ``riscv-csr.xml`` for its default rv64 CPU."""

CSR_NAMES = dict((num, name) for name, num in QEMU_CSRS)

_HEADER = '<?xml version="1.0"?><!DOCTYPE feature SYSTEM "gdb-target.dtd">'


# gdb's feature files as QEMU 7.2 serves them (gdb-xml/ of its source), verbatim.
CPU_XML = """\
<?xml version="1.0"?>
<!-- Copyright (C) 2018-2019 Free Software Foundation, Inc.

     Copying and distribution of this file, with or without modification,
     are permitted in any medium without royalty provided the copyright
     notice and this notice are preserved.  -->

<!DOCTYPE feature SYSTEM "gdb-target.dtd">
<feature name="org.gnu.gdb.riscv.cpu">
  <reg name="zero" bitsize="64" type="int"/>
  <reg name="ra" bitsize="64" type="code_ptr"/>
  <reg name="sp" bitsize="64" type="data_ptr"/>
  <reg name="gp" bitsize="64" type="data_ptr"/>
  <reg name="tp" bitsize="64" type="data_ptr"/>
  <reg name="t0" bitsize="64" type="int"/>
  <reg name="t1" bitsize="64" type="int"/>
  <reg name="t2" bitsize="64" type="int"/>
  <reg name="fp" bitsize="64" type="data_ptr"/>
  <reg name="s1" bitsize="64" type="int"/>
  <reg name="a0" bitsize="64" type="int"/>
  <reg name="a1" bitsize="64" type="int"/>
  <reg name="a2" bitsize="64" type="int"/>
  <reg name="a3" bitsize="64" type="int"/>
  <reg name="a4" bitsize="64" type="int"/>
  <reg name="a5" bitsize="64" type="int"/>
  <reg name="a6" bitsize="64" type="int"/>
  <reg name="a7" bitsize="64" type="int"/>
  <reg name="s2" bitsize="64" type="int"/>
  <reg name="s3" bitsize="64" type="int"/>
  <reg name="s4" bitsize="64" type="int"/>
  <reg name="s5" bitsize="64" type="int"/>
  <reg name="s6" bitsize="64" type="int"/>
  <reg name="s7" bitsize="64" type="int"/>
  <reg name="s8" bitsize="64" type="int"/>
  <reg name="s9" bitsize="64" type="int"/>
  <reg name="s10" bitsize="64" type="int"/>
  <reg name="s11" bitsize="64" type="int"/>
  <reg name="t3" bitsize="64" type="int"/>
  <reg name="t4" bitsize="64" type="int"/>
  <reg name="t5" bitsize="64" type="int"/>
  <reg name="t6" bitsize="64" type="int"/>
  <reg name="pc" bitsize="64" type="code_ptr"/>
</feature>
"""

FPU_XML = """\
<?xml version="1.0"?>
<!-- Copyright (C) 2018-2019 Free Software Foundation, Inc.

     Copying and distribution of this file, with or without modification,
     are permitted in any medium without royalty provided the copyright
     notice and this notice are preserved.  -->

<!DOCTYPE feature SYSTEM "gdb-target.dtd">
<feature name="org.gnu.gdb.riscv.fpu">

  <union id="riscv_double">
    <field name="float" type="ieee_single"/>
    <field name="double" type="ieee_double"/>
  </union>

  <reg name="ft0" bitsize="64" type="riscv_double"/>
  <reg name="ft1" bitsize="64" type="riscv_double"/>
  <reg name="ft2" bitsize="64" type="riscv_double"/>
  <reg name="ft3" bitsize="64" type="riscv_double"/>
  <reg name="ft4" bitsize="64" type="riscv_double"/>
  <reg name="ft5" bitsize="64" type="riscv_double"/>
  <reg name="ft6" bitsize="64" type="riscv_double"/>
  <reg name="ft7" bitsize="64" type="riscv_double"/>
  <reg name="fs0" bitsize="64" type="riscv_double"/>
  <reg name="fs1" bitsize="64" type="riscv_double"/>
  <reg name="fa0" bitsize="64" type="riscv_double"/>
  <reg name="fa1" bitsize="64" type="riscv_double"/>
  <reg name="fa2" bitsize="64" type="riscv_double"/>
  <reg name="fa3" bitsize="64" type="riscv_double"/>
  <reg name="fa4" bitsize="64" type="riscv_double"/>
  <reg name="fa5" bitsize="64" type="riscv_double"/>
  <reg name="fa6" bitsize="64" type="riscv_double"/>
  <reg name="fa7" bitsize="64" type="riscv_double"/>
  <reg name="fs2" bitsize="64" type="riscv_double"/>
  <reg name="fs3" bitsize="64" type="riscv_double"/>
  <reg name="fs4" bitsize="64" type="riscv_double"/>
  <reg name="fs5" bitsize="64" type="riscv_double"/>
  <reg name="fs6" bitsize="64" type="riscv_double"/>
  <reg name="fs7" bitsize="64" type="riscv_double"/>
  <reg name="fs8" bitsize="64" type="riscv_double"/>
  <reg name="fs9" bitsize="64" type="riscv_double"/>
  <reg name="fs10" bitsize="64" type="riscv_double"/>
  <reg name="fs11" bitsize="64" type="riscv_double"/>
  <reg name="ft8" bitsize="64" type="riscv_double"/>
  <reg name="ft9" bitsize="64" type="riscv_double"/>
  <reg name="ft10" bitsize="64" type="riscv_double"/>
  <reg name="ft11" bitsize="64" type="riscv_double"/>
</feature>
"""

VIRTUAL_XML = """\
<?xml version="1.0"?>
<!-- Copyright (C) 2018-2019 Free Software Foundation, Inc.

     Copying and distribution of this file, with or without modification,
     are permitted in any medium without royalty provided the copyright
     notice and this notice are preserved.  -->

<!DOCTYPE feature SYSTEM "gdb-target.dtd">
<feature name="org.gnu.gdb.riscv.virtual">
  <reg name="priv" bitsize="64"/>
</feature>
"""


def _csr_xml() -> str:
    regs = "".join(f'<reg name="{name}" bitsize="64" regnum="{CSR_BASE + num}"/>'
                   for name, num in QEMU_CSRS)
    return f'{_HEADER}<feature name="org.gnu.gdb.riscv.csr">{regs}</feature>'


TARGET_XML = ('<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target>'
              "<architecture>riscv:rv64</architecture>"
              '<xi:include href="riscv-64bit-cpu.xml"/>'
              '<xi:include href="riscv-64bit-fpu.xml"/>'
              '<xi:include href="riscv-64bit-virtual.xml"/>'
              '<xi:include href="riscv-csr.xml"/></target>')

FEATURES: dict[str, str] = {
    "target.xml": TARGET_XML,
    "riscv-64bit-cpu.xml": CPU_XML,
    "riscv-64bit-fpu.xml": FPU_XML,
    "riscv-64bit-virtual.xml": VIRTUAL_XML,
    "riscv-csr.xml": _csr_xml(),
}
"""Annex name -> document, as QEMU 7.2 serves them to gdb."""


def register_name(regnum: int) -> str | None:
    """The vCPU register name (``Vcpu.get_reg``) of gdb register ``regnum``, or None for a
    number QEMU answers with an error."""
    if regnum < 32:
        return f"x{regnum}"
    if regnum == 32:
        return "pc"
    if FPU_BASE <= regnum < FPU_BASE + 32:
        return f"f{regnum - FPU_BASE}"
    if regnum == PRIV_REG:
        return "priv"
    return CSR_NAMES.get(regnum - CSR_BASE)
