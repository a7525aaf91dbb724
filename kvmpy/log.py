"""QEMU's ``-d`` log items on top of :mod:`logging`.

Each item is a logger ``kvmpy.<item>`` (``kvmpy.guest_errors``, ``kvmpy.int``, ...), silent
unless enabled with ``-d item`` (or :func:`enable`).  Guest errors are rate-limited so a guest
hammering a bad address cannot flood the log or slow the VMM down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import TextIO

LOG_ITEMS: dict[str, str] = {
    "guest_errors": "log when the guest OS does something invalid "
                    "(eg accessing a non-existent register)",
    "int": "show interrupts/exceptions in short format",
    "unimp": "log unimplemented functionality",
    "in_asm": "show target assembly code for each compiled TB",
    "exec": "show trace before each executed TB (lots of logs)",
    "cpu": "show CPU registers before entering a TB (lots of logs)",
    "mmu": "log MMU-related activities",
    "cpu_reset": "show CPU state before CPU resets",
}

_GUEST_ERROR_BURST = 100
_GUEST_ERROR_WINDOW_S = 1.0


def stderr_line(text: str) -> None:
    """One line for the user on stderr.  A stderr the reader has closed (EPIPE) or that is
    gone must not stop the VMM half-way through what it was doing (e.g. shutting down)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        # Nobody reads it any more: later lines, and Python's flush of stderr at exit (whose
        # failure would turn the exit status into 120), go nowhere, quietly.
        with contextlib.suppress(OSError):
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)


def warn_report(text: str) -> None:
    """QEMU's ``warn_report``: ``kvmpy: warning: <text>`` on stderr; the VM goes on."""
    stderr_line(f"kvmpy: warning: {text}")


def logger(item: str) -> logging.Logger:
    return logging.getLogger(f"kvmpy.{item}")


def is_enabled(item: str) -> bool:
    return logger(item).isEnabledFor(logging.DEBUG)


def parse_items(spec: str) -> list[str]:
    """Parse ``-d`` syntax (``int,guest_errors``); raises ValueError naming a bad item."""
    items = [s for s in spec.split(",") if s]
    for item in items:
        if item not in LOG_ITEMS:
            raise ValueError(f"Log items (comma separated):\n{help_text()}" if item == "help"
                             else f"unknown log item '{item}'")
    return items


def help_text() -> str:
    return "\n".join(f"{name:<14}{desc}" for name, desc in LOG_ITEMS.items())


def enable(items: list[str], stream: TextIO | None = None) -> None:
    """Send the given items to ``stream`` (stderr by default), one line per record."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for item in items:
        log = logger(item)
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
        log.propagate = False


class _RateLimit:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.window_start = 0.0
        self.count = 0
        self.suppressed = 0


_guest_rate = _RateLimit()


def guest_error(message: str) -> None:
    """Log a guest mistake (``LOG_GUEST_ERROR``); never raises, rate-limited per second."""
    log = logger("guest_errors")
    if not log.isEnabledFor(logging.DEBUG):
        return
    now = time.monotonic()
    rate = _guest_rate
    if now - rate.window_start >= _GUEST_ERROR_WINDOW_S:
        if rate.suppressed:
            log.debug("(%d guest errors suppressed)", rate.suppressed)
        rate.window_start, rate.count, rate.suppressed = now, 0, 0
    rate.count += 1
    if rate.count > _GUEST_ERROR_BURST:
        rate.suppressed += 1
        return
    log.debug("%s", message)


def unimp(message: str) -> None:
    """Log use of something kvmpy does not implement (``LOG_UNIMP``)."""
    logger("unimp").debug("%s", message)


_configured: list[tuple[logging.Logger, logging.Handler]] = []


def configure(items: list[str], path: str | None = None) -> None:
    """``-d items -D path``: send ``items`` to ``path`` (truncated, as QEMU) or stderr.

    Replaces what an earlier call set up, so the command line and the library can both call
    it.  Raises OSError when ``path`` cannot be opened.
    """
    for old_log, old_handler in _configured:
        old_log.removeHandler(old_handler)
        old_log.setLevel(logging.NOTSET)
        old_log.propagate = True
        old_handler.close()
    _configured.clear()
    _guest_rate.reset()  # a new log starts a new rate-limit window
    if not items:
        return
    if path is not None:
        handler: logging.Handler = logging.FileHandler(path, mode="w")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for item in items:
        log = logger(item)
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
        log.propagate = False
        _configured.append((log, handler))
