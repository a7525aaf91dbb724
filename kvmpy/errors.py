"""The one error tree of kvmpy.

Configuration mistakes raise a subclass of :class:`KvmpyError` before the guest starts; the
command line prints ``kvmpy: <option>: <message>`` and exits 1.  Guest mistakes are never
exceptions: they are logged through :func:`kvmpy.log.guest_error` and the guest goes on.
"""

from __future__ import annotations


class KvmpyError(Exception):
    """Base of every error kvmpy raises on purpose; its text is the one-line message."""


class ConfigError(KvmpyError):
    """A bad option, property or file given by the user; reported before the guest starts.

    ``option`` is the command-line option it came from (``-m 12X``) when known; the command
    line prefixes the message with it the way QEMU does.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class LoaderError(ConfigError):
    """A firmware, kernel, initrd or device-tree file that cannot be loaded."""


class AccelError(KvmpyError):
    """An accelerator that is unavailable or failed (``KVM_CREATE_VCPU failed: ...``)."""


class NotBuiltError(ConfigError):
    """An option whose feature does not exist yet in this version of kvmpy."""


class StateError(KvmpyError):
    """A lifecycle request that the current run state does not allow.

    Mirrors ``qemu.machine``'s ``StateError(message, state, required)``.
    """

    def __init__(self, message: str, state: str, required: str | tuple[str, ...]) -> None:
        super().__init__(message)
        self.state = state
        self.required = required
