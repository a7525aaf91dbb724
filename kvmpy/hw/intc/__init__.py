"""Interrupt controllers: the SiFive PLIC and the RISC-V ACLINT (CLINT)."""

from kvmpy.hw.intc.aclint import AclintMtimer, AclintSwi, CounterTime, TimeSource
from kvmpy.hw.intc.plic import SiFivePlic

__all__ = ["AclintMtimer", "AclintSwi", "CounterTime", "SiFivePlic", "TimeSource"]
