"""``mux=on`` / ``mon:stdio``: one backend shared by several frontends, QEMU's Ctrl-A keys.

Output from every frontend goes to the backend (optionally prefixed with timestamps); input goes
to the frontend that has the focus.  The escape key is Ctrl-A (QEMU's ``chardev/char-mux.c``):

=========  ===============================================================
``C-a h``  print the key help (also ``C-a ?``)
``C-a x``  print "kvmpy: Terminated" and call the injected exit action
``C-a s``  save disk data (nothing to save: kvmpy has no ``-snapshot``)
``C-a t``  toggle timestamps on output lines
``C-a b``  send a break to the focused frontend (CHR_EVENT_BREAK)
``C-a c``  give the focus to the next frontend (serial ↔ monitor)
``C-a a``  send Ctrl-A itself (``C-a C-a`` too)
=========  ===============================================================

Frontends are :class:`MuxFrontend` chardevs handed out by :meth:`MuxChardev.add_frontend`; the
first one starts with the focus.  A frontend losing or gaining the focus gets
CHR_EVENT_MUX_OUT / CHR_EVENT_MUX_IN; backend events (a socket peer arriving) go to all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kvmpy.chardev.base import (
    CHR_EVENT_BREAK,
    CHR_EVENT_MUX_IN,
    CHR_EVENT_MUX_OUT,
    CanReceiveHandler,
    Chardev,
    EventHandler,
    ReceiveHandler,
)
from kvmpy.chardev.common import Backend, LoopHost
from kvmpy.errors import ConfigError
from kvmpy.qom import Property, register_type

ESCAPE = 0x01  # Ctrl-A
MAX_FRONTENDS = 4

HELP_LINES = (
    "C-a h    print this help\n\r",
    "C-a x    exit emulator\n\r",
    "C-a s    save disk data back to file (if -snapshot)\n\r",
    "C-a t    toggle console timestamps\n\r",
    "C-a b    send break (magic sysrq)\n\r",
    "C-a c    switch between console and monitor\n\r",
    "C-a C-a  sends C-a\n\r",
)
TERMINATED = b"kvmpy: Terminated\n\r"


def _quit_process() -> None:
    raise SystemExit(0)


class MuxFrontend(Chardev):
    """What one frontend of a mux sees: a chardev whose input comes while it has the focus."""

    def __init__(self, mux: MuxChardev, index: int) -> None:
        super().__init__()
        self.mux = mux
        self.index = index

    def write(self, data: bytes) -> int:
        return self.mux.write_from(self, data)

    @property
    def connected(self) -> bool:
        return self.mux.connected

    @property
    def has_focus(self) -> bool:
        return self.mux.focus == self.index

    def set_handlers(self, receive: ReceiveHandler | None,
                     can_receive: CanReceiveHandler | None = None,
                     event: EventHandler | None = None) -> None:
        """As the base; a frontend without the focus is told so at once (MUX_OUT), before it
        looks at ``connected`` to decide on a greeting."""
        super().set_handlers(receive, can_receive, event)
        if event is not None and not self.has_focus:
            self.notify_event(CHR_EVENT_MUX_OUT)


@register_type("chardev-mux", "chardev", description="multiplexer: frontends share one backend")
class MuxChardev(Backend):
    backend = "mux"

    chardev = Property(str, "", "the backend chardev id")

    def __init__(self, backend_chr: Chardev | None = None,
                 on_exit: Callable[[], None] | None = None,
                 on_switch: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.backend_chr = backend_chr
        self.on_exit = on_exit if on_exit is not None else _quit_process
        """Called for ``C-a x`` (the System requests a ``host-qmp-quit`` shutdown)."""
        self.on_switch = on_switch
        """Called with the new focus index after ``C-a c``."""
        self.frontends: list[MuxFrontend] = []
        self.focus = 0
        self._got_escape = False
        self.timestamps = False
        self._timestamps_start: float | None = None
        self._linestart = False
        self._clock: Callable[[], float] = time.monotonic

    def set_backend(self, backend_chr: Chardev) -> None:
        self.backend_chr = backend_chr

    def add_frontend(self) -> MuxFrontend:
        if len(self.frontends) >= MAX_FRONTENDS:
            raise ConfigError(f"Too many uses of multiplexed chardev '{self.id}' "
                              f"(maximum is {MAX_FRONTENDS})")
        frontend = MuxFrontend(self, len(self.frontends))
        self.frontends.append(frontend)
        return frontend

    # -- backend side ---------------------------------------------------------------------

    def open(self) -> None:
        if self.backend_chr is None:
            raise ConfigError("chardev: mux: no chardev given")
        self.backend_chr.set_handlers(self._receive_input, None, self._backend_event)

    def close(self) -> None:
        if self.backend_chr is not None:
            self.backend_chr.close()

    def attach_loop(self, host: LoopHost) -> None:
        attach = getattr(self.backend_chr, "attach_loop", None)
        if attach is not None:
            attach(host)
        elif self.backend_chr is not None and self.backend_chr.fileno() is not None:
            fd = self.backend_chr.fileno()
            assert fd is not None
            host.add_reader(fd, self.backend_chr.on_readable)

    def fileno(self) -> int | None:
        # The backend registers itself through attach_loop.
        return None

    def on_readable(self) -> None:
        if self.backend_chr is not None:
            self.backend_chr.on_readable()

    @property
    def connected(self) -> bool:
        return self.backend_chr is not None and self.backend_chr.connected

    @property
    def filename(self) -> str:
        inner = getattr(self.backend_chr, "filename", "")
        return str(inner) if inner else "mux"

    def _backend_event(self, event: str) -> None:
        for frontend in self.frontends:
            frontend.notify_event(event)

    def write(self, data: bytes) -> int:
        """Output not from a frontend (help text, messages): straight to the backend."""
        if self.backend_chr is None:
            return 0
        return self.backend_chr.write(data)

    # -- frontend output ------------------------------------------------------------------

    def write_from(self, frontend: MuxFrontend, data: bytes) -> int:
        if self.backend_chr is None:
            return 0
        if not self.timestamps:
            return self.backend_chr.write(data)
        out = bytearray()
        for byte in data:
            if self._linestart:
                out += self._timestamp()
                self._linestart = False
            out.append(byte)
            if byte == 0x0A:
                self._linestart = True
        self.backend_chr.write(bytes(out))
        return len(data)

    def _timestamp(self) -> bytes:
        now = self._clock()
        if self._timestamps_start is None:
            self._timestamps_start = now
        ms = int((now - self._timestamps_start) * 1000)
        secs = ms // 1000
        return (f"[{secs // 3600:02d}:{(secs // 60) % 60:02d}:{secs % 60:02d}."
                f"{ms % 1000:03d}] ").encode()

    # -- input and the escape keys --------------------------------------------------------

    def _receive_input(self, data: bytes) -> None:
        passthrough = bytearray()
        for byte in data:
            if self._got_escape:
                self._got_escape = False
                if byte in (ESCAPE, ord("a")):
                    passthrough.append(ESCAPE)
                    continue
                self._flush(passthrough)
                self._command(byte)
            elif byte == ESCAPE:
                self._got_escape = True
            else:
                passthrough.append(byte)
        self._flush(passthrough)

    def _flush(self, passthrough: bytearray) -> None:
        if passthrough and self.frontends:
            self.frontends[self.focus].deliver(bytes(passthrough))
        passthrough.clear()

    def _command(self, key: int) -> None:
        char = chr(key)
        if char in "h?":
            self.write(b"\n\r" + "".join(HELP_LINES).encode())
        elif char == "x":
            self.write(TERMINATED)
            self.on_exit()
        elif char == "b":
            if self.frontends:
                self.frontends[self.focus].notify_event(CHR_EVENT_BREAK)
        elif char == "c":
            if self.frontends:
                self.set_focus((self.focus + 1) % len(self.frontends))
                if self.on_switch is not None:
                    self.on_switch(self.focus)
        elif char == "t":
            self.timestamps = not self.timestamps
            self._timestamps_start = None
            self._linestart = False
        # 's' (commit -snapshot data) and unknown keys are swallowed, as QEMU does.

    def set_focus(self, index: int) -> None:
        """Give the input focus to frontend ``index`` (MUX_OUT to the old one, MUX_IN to it)."""
        if not 0 <= index < len(self.frontends):
            raise ValueError(f"mux has no frontend {index}")
        if index == self.focus:
            return
        self.frontends[self.focus].notify_event(CHR_EVENT_MUX_OUT)
        self.focus = index
        self.frontends[index].notify_event(CHR_EVENT_MUX_IN)
        self.frontends[index].accept_input()
