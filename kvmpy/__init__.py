"""kvmpy: a QEMU-compatible RISC-V virtual machine monitor in Python.

``kvmpy -M virt ...`` behaves like ``qemu-system-riscv64``; :class:`kvmpy.VM` and
:class:`kvmpy.ProcessVM` make VM lifecycle tests a few lines long.
"""

from kvmpy.errors import AccelError, ConfigError, KvmpyError, StateError

__version__ = "0.1.0"

__all__ = ["AccelError", "ConfigError", "KvmpyError", "StateError", "__version__"]
