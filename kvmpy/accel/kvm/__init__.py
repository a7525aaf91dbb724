"""``-accel kvm``: RISC-V KVM through cffi in ABI mode (no compiler needed at run time).

Three layers, kept apart: :mod:`.abi` (the inert cdef of the used ``linux/kvm.h`` and riscv64
``asm/kvm.h`` subset), :mod:`.kvm` (thin wrappers over the file descriptors that decide
nothing), :mod:`.riscv` (the accelerator: selection, vCPU glue, boot contract, capabilities).
Importing this package registers the ``kvm-accel`` type.
"""

from kvmpy.accel.kvm.riscv import FIRMWARE_REFUSAL, KvmAccel, KvmRiscvVcpu, probe

__all__ = ["FIRMWARE_REFUSAL", "KvmAccel", "KvmRiscvVcpu", "probe"]
