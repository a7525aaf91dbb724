"""The gdb remote-protocol stub: ``-gdb DEV``, ``-s`` (``-gdb tcp::1234``), HMP ``gdbserver``.

``DEV`` is a chardev as QEMU 7.2 takes it: ``tcp:[HOST]:PORT`` (made a server with
``wait=off,nodelay=on``), ``unix:PATH,server=on[,wait=off]``, ``chardev:ID``, ``stdio``, or
``none`` (no stub).  See :mod:`kvmpy.gdbstub.server` for the protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmpy.errors import ConfigError
from kvmpy.gdbstub.server import GdbStub

if TYPE_CHECKING:
    from kvmpy.chardev.base import Chardev
    from kvmpy.system import System

__all__ = ["DEFAULT_DEVICE", "GdbStub", "gdbserver_start"]

DEFAULT_DEVICE = "tcp::1234"
CHARDEV_ID = "gdb"


def _open_chardev(system: System, device: str, option: str) -> Chardev:
    from kvmpy.chardev.setup import ChardevBuilder, parse_compat

    if device.startswith("chardev:"):
        existing = system.chardevs.get(device[8:])
        if existing is None:
            raise ConfigError(f"chardev '{device[8:]}' not found", option=option or None)
        return existing
    spec = device
    if spec.startswith("tcp:"):
        spec += ",wait=off,nodelay=on,server=on"  # what QEMU enforces for gdb
    try:
        backend, props, _ = parse_compat(spec)
        chardev = ChardevBuilder().create(backend, props, CHARDEV_ID, option)
    except ConfigError as exc:
        if exc.option is None and option:
            exc.option = option
        raise
    return chardev


def gdbserver_start(system: System, device: str, option: str = "") -> GdbStub | None:
    """Serve gdb on ``device`` (replacing a stub already there); ``none`` stops serving.

    Raises ConfigError when the device cannot be opened (the old stub then keeps serving)."""
    if not system.harts:
        raise ConfigError("gdbstub: meaningless to attach gdb to a machine without any CPU.")
    chardev = None if device == "none" else _open_chardev(system, f"{device}", option)
    old: GdbStub | None = system.gdbstub
    if old is not None:
        old.close()
        if old.chardev is not chardev and system.chardevs.get(CHARDEV_ID) is old.chardev:
            del system.chardevs[CHARDEV_ID]
            old.chardev.close()
        system.gdbstub = None
    if chardev is None:
        return None
    stub = GdbStub(system, chardev, device)
    system.gdbstub = stub
    if not device.startswith("chardev:"):
        system.chardevs[CHARDEV_ID] = chardev
    system.at_close(stub.close)
    if system.loop is not None and not device.startswith("chardev:"):
        attach = getattr(chardev, "attach_loop", None)  # HMP gdbserver: the loop runs already
        if attach is not None:
            attach(system)
    stub.start()
    return stub
