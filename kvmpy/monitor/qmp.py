"""QMP, the QEMU Machine Protocol, served on a chardev (``-qmp``, ``-mon mode=control``).

One JSON object per command; the server greets each new connection, refuses everything but
``qmp_capabilities`` until negotiated, echoes ``id``, and broadcasts events with timestamps.
The framing survives partial reads, garbage, oversized input and abrupt disconnects: a bad
client only ever gets an error reply or its connection reset, the guest never notices.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvmpy.chardev.base import CHR_EVENT_CLOSED, CHR_EVENT_OPENED, Chardev
from kvmpy.errors import KvmpyError, StateError
from kvmpy.monitor import commands

if TYPE_CHECKING:
    from kvmpy.system import System

MAX_MESSAGE_BYTES = 1 << 20
"""Input without a complete JSON object beyond this is discarded with an error."""


class QmpError(Exception):
    """An error reply: ``class`` as QEMU's QapiErrorClass, ``desc`` the message."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


@dataclass(frozen=True)
class Command:
    handler: Callable[[QmpMonitor, dict[str, Any]], Any]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    types: dict[str, type] = field(default_factory=dict)


def _timestamp() -> dict[str, int]:
    now = time.time()
    seconds = int(now)
    return {"seconds": seconds, "microseconds": int((now - seconds) * 1_000_000)}


class QmpMonitor:
    """A QMP server on one chardev (one client at a time, as QEMU)."""

    def __init__(self, chardev: Chardev, pretty: bool = False) -> None:
        self.chardev = chardev
        self.pretty = pretty
        self.system: System | None = None
        self._buffer = b""
        self._negotiated = False
        self._discarding = False
        self._loop_thread: int | None = None

    # -- wiring ----------------------------------------------------------------------------

    def start(self, system: System) -> None:
        self.system = system
        self._loop_thread = threading.get_ident()
        system.add_event_listener(self._on_event)
        self.chardev.set_handlers(self._receive, None, self._on_chardev_event)
        if self.chardev.connected:
            self._greet()

    def close(self) -> None:
        if self.system is not None:
            self.system.remove_event_listener(self._on_event)
        self.chardev.set_handlers(None)

    def _on_chardev_event(self, event: str) -> None:
        if event == CHR_EVENT_OPENED:
            self._greet()
        elif event == CHR_EVENT_CLOSED:
            self._buffer = b""
            self._negotiated = False

    def _greet(self) -> None:
        self._buffer = b""
        self._negotiated = False
        self._send({"QMP": {"version": commands.version_info(), "capabilities": ["oob"]}})

    def _send(self, obj: dict[str, Any]) -> None:
        text = json.dumps(obj, indent=4) if self.pretty else json.dumps(obj)
        self.chardev.write(text.encode() + b"\r\n")

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        message: dict[str, Any] = {"timestamp": _timestamp(), "event": name}
        if data:
            message["data"] = data

        def send() -> None:
            if self._negotiated:
                self._send(message)

        if threading.get_ident() == self._loop_thread or self.system is None:
            send()
        else:
            self.system.call_soon(send)

    # -- framing ---------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return
            self._discarding = False
            data = data[newline + 1:]
        self._buffer += data
        while True:
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return
            end = _message_end(self._buffer)
            if end is None:
                if len(self._buffer) > MAX_MESSAGE_BYTES:
                    self._discarding = b"\n" not in self._buffer
                    self._error_and_resync("JSON parse error, message too long")
                return
            raw, self._buffer = self._buffer[:end], self._buffer[end:]
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                self._reply_error(None, QmpError("JSON parse error, invalid UTF-8 sequence"))
                continue
            except json.JSONDecodeError as exc:
                self._reply_error(None, QmpError(f"JSON parse error, {exc.msg.lower()}"))
                continue
            self._dispatch(obj)

    def _error_and_resync(self, desc: str) -> None:
        """Reply once and drop input up to the next newline (QEMU's lexer resets there)."""
        newline = self._buffer.find(b"\n")
        self._buffer = b"" if newline < 0 else self._buffer[newline + 1:]
        self._reply_error(None, QmpError(desc))

    def _reply_error(self, msg_id: Any, error: QmpError) -> None:
        reply: dict[str, Any] = {"error": {"class": error.error_class, "desc": error.desc}}
        if msg_id is not None:
            reply["id"] = msg_id
        self._send(reply)

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, obj: Any) -> None:
        msg_id = obj.get("id") if isinstance(obj, dict) else None
        try:
            result = self.execute_message(obj)
        except QmpError as error:
            self._reply_error(msg_id, error)
            return
        reply: dict[str, Any] = {"return": result}
        if msg_id is not None:
            reply["id"] = msg_id
        self._send(reply)

    def execute_message(self, obj: Any) -> Any:
        if not isinstance(obj, dict):
            raise QmpError("QMP input must be a JSON object")
        name = obj.get("execute", obj.get("exec-oob"))
        if name is None:
            raise QmpError("QMP input lacks member 'execute'")
        if not isinstance(name, str):
            raise QmpError("QMP input member 'execute' must be a string")
        for key in obj:
            if key not in ("execute", "exec-oob", "arguments", "id", "control"):
                raise QmpError(f"QMP input member '{key}' is unexpected")
        args = obj.get("arguments", {})
        if not isinstance(args, dict):
            raise QmpError("QMP input member 'arguments' must be an object")
        if not self._negotiated and name != "qmp_capabilities":
            raise QmpError("Expecting capabilities negotiation with 'qmp_capabilities'",
                           "CommandNotFound")
        return self.execute(name, args)

    def execute(self, name: str, args: dict[str, Any]) -> Any:
        command = COMMANDS.get(name)
        if command is None:
            raise QmpError(f"The command {name} has not been found", "CommandNotFound")
        for key in args:
            if key not in command.required and key not in command.optional:
                raise QmpError(f"Parameter '{key}' is unexpected")
        for key in command.required:
            if key not in args:
                raise QmpError(f"Parameter '{key}' is missing")
        for key, expected in command.types.items():
            if key in args and not _is_type(args[key], expected):
                kind = {int: "integer", str: "string", bool: "boolean", list: "array"}[expected]
                raise QmpError(f"Invalid parameter type for '{key}', expected: {kind}")
        try:
            return command.handler(self, args)
        except StateError as exc:
            raise QmpError(str(exc)) from None
        except KvmpyError as exc:
            raise QmpError(str(exc)) from None
        except OSError as exc:
            raise QmpError(f"Could not open '{args.get('filename', '')}': "
                           f"{exc.strerror or exc}") from None

    @property
    def sys(self) -> System:
        if self.system is None:
            raise QmpError("monitor is not attached to a machine")
        return self.system


def _message_end(buffer: bytes) -> int | None:
    """Length of the first complete JSON value in ``buffer`` (which starts non-blank).

    Objects and arrays end at their closing bracket (strings and escapes respected); anything
    else ends at the next newline.  None means more input is needed.
    """
    if buffer[:1] not in (b"{", b"["):
        newline = buffer.find(b"\n")
        return None if newline < 0 else newline + 1
    depth = 0
    in_string = False
    escaped = False
    for i, byte in enumerate(buffer):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
        elif byte in (0x7D, 0x5D):
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _is_type(value: Any, expected: type) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


# -- commands ---------------------------------------------------------------------------------

def _qmp_capabilities(mon: QmpMonitor, args: dict[str, Any]) -> Any:
    if mon._negotiated:
        raise QmpError("Capabilities negotiation is already complete, command ignored",
                       "CommandNotFound")
    enable = args.get("enable", [])
    for cap in enable:
        if cap != "oob":
            raise QmpError(f"Parameter 'enable' does not accept value '{cap}'")
    mon._negotiated = True
    return {}


def _quit(mon: QmpMonitor, args: dict[str, Any]) -> Any:
    commands.quit_vm(mon.sys)
    return {}


def _human_monitor_command(mon: QmpMonitor, args: dict[str, Any]) -> Any:
    from kvmpy.monitor.hmp import run_command

    output = run_command(mon.sys, args["command-line"], args.get("cpu-index"))
    return output.replace("\n", "\r\n")


def _simple(fn: Callable[[System], Any]) -> Callable[[QmpMonitor, dict[str, Any]], Any]:
    return lambda mon, args: fn(mon.sys)


COMMANDS: dict[str, Command] = {
    "qmp_capabilities": Command(_qmp_capabilities, optional=("enable",), types={"enable": list}),
    "query-status": Command(_simple(commands.query_status)),
    "stop": Command(_simple(commands.stop)),
    "cont": Command(_simple(commands.cont)),
    "system_reset": Command(_simple(commands.system_reset)),
    "system_powerdown": Command(_simple(commands.system_powerdown)),
    "quit": Command(_quit),
    "query-cpus-fast": Command(_simple(commands.query_cpus_fast)),
    "query-version": Command(lambda mon, args: commands.version_info()),
    "query-commands": Command(lambda mon, args: [{"name": n} for n in sorted(COMMANDS)]),
    "query-machines": Command(lambda mon, args: commands.query_machines()),
    "query-name": Command(_simple(commands.query_name)),
    "query-kvm": Command(_simple(commands.query_kvm)),
    "query-target": Command(lambda mon, args: {"arch": "riscv64"}),
    "human-monitor-command": Command(_human_monitor_command, required=("command-line",),
                                     optional=("cpu-index",),
                                     types={"command-line": str, "cpu-index": int}),
    "pmemsave": Command(lambda mon, args: commands.pmemsave(mon.sys, args["val"], args["size"],
                                                            args["filename"]),
                        required=("val", "size", "filename"),
                        types={"val": int, "size": int, "filename": str}),
    "memsave": Command(lambda mon, args: commands.memsave(mon.sys, args["val"], args["size"],
                                                          args["filename"],
                                                          args.get("cpu-index", 0)),
                       required=("val", "size", "filename"), optional=("cpu-index",),
                       types={"val": int, "size": int, "filename": str, "cpu-index": int}),
    "x-query-registers": Command(lambda mon, args: commands.query_registers(
        mon.sys, args.get("cpu-index", 0)), optional=("cpu-index",), types={"cpu-index": int}),
    "x-pmemwrite": Command(lambda mon, args: commands.pmemwrite(mon.sys, args["val"],
                                                                args["data"]),
                           required=("val", "data"), types={"val": int, "data": str}),
}

__all__ = ["COMMANDS", "QmpError", "QmpMonitor"]
