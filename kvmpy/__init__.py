"""kvmpy: a QEMU-compatible RISC-V virtual machine monitor in Python.

``kvmpy -M virt ...`` behaves like ``qemu-system-riscv64``; :class:`kvmpy.VM` and
:class:`kvmpy.ProcessVM` make VM lifecycle tests a few lines long.
"""

from typing import TYPE_CHECKING, Any

from kvmpy.errors import AccelError, ConfigError, KvmpyError, StateError

if TYPE_CHECKING:
    from kvmpy.guest_agent import (
        ExecResult,
        GuestAgent,
        GuestAgentCommandError,
        GuestAgentError,
        GuestAgentProtocolError,
        GuestAgentTimeout,
    )
    from kvmpy.process import ProcessVM
    from kvmpy.runner import run
    from kvmpy.vm import VM

__version__ = "0.1.0"

__all__ = ["VM", "AccelError", "ConfigError", "ExecResult", "GuestAgent",
           "GuestAgentCommandError", "GuestAgentError", "GuestAgentProtocolError",
           "GuestAgentTimeout", "KvmpyError", "ProcessVM", "StateError", "__version__", "run"]

_GUEST_AGENT_NAMES = frozenset({"ExecResult", "GuestAgent", "GuestAgentCommandError",
                                "GuestAgentError", "GuestAgentProtocolError",
                                "GuestAgentTimeout"})


def __getattr__(name: str) -> Any:
    # The lifecycle classes import the whole VMM; load them on first use only.
    if name == "VM":
        from kvmpy.vm import VM

        return VM
    if name == "ProcessVM":
        from kvmpy.process import ProcessVM

        return ProcessVM
    if name == "run":  # kvmpy.run([...], share="."): see kvmpy.runner
        from kvmpy.runner import run

        return run
    if name in _GUEST_AGENT_NAMES:
        from kvmpy import guest_agent

        return getattr(guest_agent, name)
    raise AttributeError(f"module 'kvmpy' has no attribute '{name}'")
