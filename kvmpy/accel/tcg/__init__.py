"""``-accel tcg``: kvmpy's RV64GC interpreter, a C core built through cffi.

:mod:`.core` loads the compiled core (``engine.c``, built by ``_build.py``), :mod:`.accel` is
the accelerator and its vCPUs, :mod:`.disas` the disassembler for ``-d in_asm``.  Importing
this package registers the ``tcg-accel`` type even when the core is not built; selecting it
then says why in one line.
"""

from kvmpy.accel.tcg.accel import RUN_SLICE, TcgAccel, TcgVcpu
from kvmpy.accel.tcg.core import ISA_EXTENSIONS, isa_string, unavailable_reason

__all__ = ["ISA_EXTENSIONS", "RUN_SLICE", "TcgAccel", "TcgVcpu", "isa_string",
           "unavailable_reason"]
