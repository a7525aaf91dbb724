"""Miscellaneous devices: the SiFive test finisher and Spike's HTIF."""

from kvmpy.hw.misc.htif import Htif
from kvmpy.hw.misc.sifive_test import SifiveTest

__all__ = ["Htif", "SifiveTest"]
