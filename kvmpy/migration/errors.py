"""The error of the VM-state code: a state that cannot be written or accepted."""

from __future__ import annotations

from kvmpy.errors import KvmpyError


class VmStateError(KvmpyError):
    """A VM state that cannot be saved or loaded; the text is the one-line reason
    (``vmstate: truncated stream``, ``vmstate: saved with -smp 2, this VM has -smp 1``)."""
