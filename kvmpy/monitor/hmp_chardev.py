"""HMP's line discipline on a chardev (``-monitor stdio``, Ctrl-A c on ``mon:stdio``): echo,
line editing, the banner and prompt.  The commands (:mod:`kvmpy.monitor.hmp`) are imported
when the first line is entered, not when a VM with a monitor starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import kvmpy
from kvmpy.chardev.base import CHR_EVENT_MUX_IN, CHR_EVENT_MUX_OUT, CHR_EVENT_OPENED, Chardev

if TYPE_CHECKING:
    from kvmpy.monitor.hmp import HmpState
    from kvmpy.system import System

PROMPT = "(qemu) "


class HmpMonitor:
    """HMP on a chardev: echoes typed characters, edits a line, runs it on Enter."""

    def __init__(self, chardev: Chardev, banner: bool = True) -> None:
        self.chardev = chardev
        self.system: System | None = None
        self._state: HmpState | None = None
        self.banner = banner
        self._line = bytearray()
        self._hidden = False
        self._greeted = False

    def start(self, system: System) -> None:
        self.system = system
        self.chardev.set_handlers(self._receive, None, self._on_event)
        if self.chardev.connected and not self._hidden:
            self._greet()

    def close(self) -> None:
        self.chardev.set_handlers(None)

    def _on_event(self, event: str) -> None:
        if event == CHR_EVENT_OPENED and not self._hidden:
            self._greet()
        elif event == CHR_EVENT_MUX_OUT:
            self._hidden = True
        elif event == CHR_EVENT_MUX_IN:
            # On a mux (mon:stdio) the banner waits until the monitor first gets the focus.
            self._hidden = False
            if self._greeted:
                self._write("\n" + PROMPT)
            else:
                self._greet()

    def _greet(self) -> None:
        self._greeted = True
        if self.banner:
            self._write(f"kvmpy {kvmpy.__version__} monitor - type 'help' for more "
                        "information\n")
        self._write(PROMPT)

    def _write(self, text: str) -> None:
        self.chardev.write(text.replace("\n", "\r\n").encode())

    def _receive(self, data: bytes) -> None:
        for byte in data:
            if byte in (0x0D, 0x0A):
                if byte == 0x0A and not self._line and getattr(self, "_last_cr", False):
                    self._last_cr = False
                    continue
                self._last_cr = byte == 0x0D
                self._write("\n")
                line = self._line.decode(errors="replace")
                self._line.clear()
                if self.system is not None:
                    self._write(self._run(line))
                self._write(PROMPT)
            elif byte in (0x7F, 0x08):
                if self._line:
                    self._line.pop()
                    self._write("\b \b")
            elif 0x20 <= byte < 0x7F:
                self._line.append(byte)
                self.chardev.write(bytes([byte]))

    @property
    def state(self) -> HmpState:
        """The current CPU and last x/xp format, kept across commands."""
        if self._state is None:
            from kvmpy.monitor.hmp import HmpState

            self._state = HmpState()
        return self._state

    def _run(self, line: str) -> str:
        from kvmpy.monitor.hmp import run_command

        assert self.system is not None
        return run_command(self.system, line, state=self.state)
