"""Miscellaneous devices: the SiFive test finisher."""

from kvmpy.hw.misc.sifive_test import SifiveTest

__all__ = ["SifiveTest"]
