"""Character device backends, QEMU's ``-chardev``: the byte pipes devices and monitors talk over.

A frontend (UART, monitor) writes with :meth:`Chardev.write` and receives input through the
handlers it installs with :meth:`Chardev.set_handlers` (QEMU's ``qemu_chr_fe_set_handlers``):
the backend calls ``can_receive()`` to learn how many bytes the frontend accepts now, then
``receive(data)`` with at most that many.  Backends are driven by the main loop through
:meth:`Chardev.fileno` / :meth:`Chardev.on_readable`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from kvmpy.qom import Object, Property, register_type

ReceiveHandler = Callable[[bytes], None]
CanReceiveHandler = Callable[[], int]
EventHandler = Callable[[str], None]

CHR_EVENT_OPENED = "opened"
"""A peer connected (socket accept/connect, pty opened): monitors send their greeting."""
CHR_EVENT_CLOSED = "closed"
"""The peer went away: monitors drop per-connection state."""
CHR_EVENT_BREAK = "break"
"""The user sent a break (mux ``C-a b``): a UART reports it as a line break (magic SysRq)."""
CHR_EVENT_MUX_IN = "mux-in"
"""A mux frontend got the focus (``C-a c``): a monitor shows its prompt again."""
CHR_EVENT_MUX_OUT = "mux-out"
"""A mux frontend lost the focus: a monitor holds its output until it gets it back."""


@register_type("chardev", "object", abstract=True, description="character device backend")
class Chardev(Object):
    """Base backend. Subclasses implement ``write`` and, when they have input, ``fileno``."""

    id = Property(str, "", "chardev id")
    logfile = Property(str, "", "also write output to this file")

    def __init__(self) -> None:
        self._receive: ReceiveHandler | None = None
        self._can_receive: CanReceiveHandler | None = None
        self._event: EventHandler | None = None
        self._pending = b""
        self.frontend_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
        """Held around frontend calls; the System sets its big lock for device frontends."""

    def set_handlers(self, receive: ReceiveHandler | None,
                     can_receive: CanReceiveHandler | None = None,
                     event: EventHandler | None = None) -> None:
        """Install the frontend's input handlers (None detaches)."""
        self._receive = receive
        self._can_receive = can_receive
        self._event = event
        self.accept_input()

    @property
    def connected(self) -> bool:
        """Whether a peer is there to read output (always, except for sockets and ptys)."""
        return True

    def notify_event(self, event: str) -> None:
        """Backends call this on CHR_EVENT_OPENED / CHR_EVENT_CLOSED."""
        if self._event is not None:
            with self.frontend_lock:
                self._event(event)

    def open(self) -> None:
        """Acquire OS resources (files, sockets, terminal mode); raises ConfigError."""

    def close(self) -> None:
        """Release OS resources and restore the terminal; safe to call twice."""

    def write(self, data: bytes) -> int:
        """Send frontend output; returns the bytes accepted (all of them unless closed)."""
        raise NotImplementedError

    def fileno(self) -> int | None:
        """File descriptor the main loop waits on for input, or None."""
        return None

    def on_readable(self) -> None:
        """The main loop saw ``fileno()`` readable: read and deliver input."""

    def deliver(self, data: bytes) -> None:
        """Hand input to the frontend, buffering what it cannot take yet."""
        self._pending += data
        self.accept_input()

    def accept_input(self) -> None:
        """Deliver buffered input as far as the frontend accepts it (call when it drains)."""
        with self.frontend_lock:
            while self._pending and self._receive is not None:
                room = (self._can_receive() if self._can_receive is not None
                        else len(self._pending))
                if room <= 0:
                    return
                chunk, self._pending = self._pending[:room], self._pending[room:]
                self._receive(chunk)
