"""QMP, the QEMU Machine Protocol, served on a chardev (``-qmp``, ``-mon mode=control``).

One JSON object per command; the server greets each new connection, refuses everything but
``qmp_capabilities`` until negotiated, echoes ``id``, and broadcasts events with timestamps.
The framing survives partial reads, garbage, oversized input and abrupt disconnects: a bad
client only ever gets an error reply or its connection reset, the guest never notices.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvmpy.chardev.base import CHR_EVENT_CLOSED, CHR_EVENT_OPENED, Chardev
from kvmpy.errors import KvmpyError, StateError
from kvmpy.monitor import commands, inventory, net, pci, schema, snapshots
from kvmpy.monitor.hmp import HmpState

if TYPE_CHECKING:
    from kvmpy.system import System

MAX_MESSAGE_BYTES = 64 << 20
"""QEMU's MAX_TOKEN_SIZE: a message (all its tokens) beyond this is refused and dropped."""
MAX_NESTING = 1 << 10
"""QEMU's MAX_NESTING: deeper objects and arrays are refused."""


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
    open_args: bool = False
    """Arguments beyond ``required``/``optional`` are the command's to check
    (``netdev_add`` takes each back-end's options)."""


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
        self._framer = Framer()
        self._negotiated = False
        self._oob = False
        self.hmp_state = HmpState()  # x/xp remember the last format, as in QEMU
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
            self._framer = Framer()
            self._negotiated = False
            self._oob = False

    def _greet(self) -> None:
        self._framer = Framer()
        self._negotiated = False
        self._oob = False
        self._send({"QMP": {"version": commands.version_info(), "capabilities": ["oob"]}})

    def _send(self, obj: dict[str, Any]) -> None:
        text = _pretty(obj).replace("\n", "\r\n") if self.pretty else json.dumps(obj)
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
        for item in self._framer.feed(data):
            if isinstance(item, QmpError):
                self._reply_error(None, item)
                continue
            try:
                obj = _parse(item)
            except QmpError as error:
                self._reply_error(None, error)
                continue
            self._dispatch(obj)

    def _reply_error(self, msg_id: Any, error: QmpError) -> None:
        reply: dict[str, Any] = {}
        if msg_id is not None:
            reply["id"] = msg_id  # QEMU puts the id first in error replies
        reply["error"] = {"class": error.error_class, "desc": error.desc}
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
        """Check a request as QEMU's ``qmp_dispatch_check_obj`` does, then run it."""
        if not isinstance(obj, dict):
            raise QmpError("QMP input must be a JSON object")
        for key, value in obj.items():
            if key == "execute" or (key == "exec-oob" and self._oob):
                if not isinstance(value, str):
                    raise QmpError(f"QMP input member '{key}' must be a string")
            elif key == "arguments":
                if not isinstance(value, dict):
                    raise QmpError("QMP input member 'arguments' must be an object")
            elif key != "id":
                raise QmpError(f"QMP input member '{key}' is unexpected")
        if "execute" in obj and "exec-oob" in obj:
            raise QmpError("QMP input member 'execute' clashes with 'exec-oob'")
        name = obj.get("execute", obj.get("exec-oob"))
        if name is None:
            raise QmpError("QMP input lacks member 'execute'")
        args = obj.get("arguments", {})
        if not self._negotiated and name != "qmp_capabilities":
            raise QmpError("Expecting capabilities negotiation with 'qmp_capabilities'",
                           "CommandNotFound")
        if "exec-oob" in obj:
            if name not in COMMANDS:
                raise QmpError(f"The command {name} has not been found", "CommandNotFound")
            raise QmpError(f"The command {name} does not support OOB")
        return self.execute(name, args)

    def execute(self, name: str, args: dict[str, Any]) -> Any:
        command = COMMANDS.get(name)
        if command is None:
            raise QmpError(f"The command {name} has not been found", "CommandNotFound")
        for key in args:
            if key not in command.required and key not in command.optional and \
                    not command.open_args:
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
        except net.DeviceNotFound as exc:
            raise QmpError(str(exc), "DeviceNotFound") from None
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


_TOP_TOKEN_END = re.compile(rb'[ \t\r\n{}\[\]":,]')
_NOT_BLANK = re.compile(rb"[^ \t\r\n]")
_IN_VALUE = re.compile(rb'[\x22{}\[\]]')
_IN_STRING = re.compile(rb'[\x22\\]')


class Framer:
    """Splits QMP input into JSON texts as QEMU's json-streamer does.

    An object or array ends at its matching bracket (brackets inside strings ignored); a
    top-level string at its closing quote; any other top-level token at the next blank or
    structural character.  Scanning resumes where the previous chunk stopped, so a message
    arriving a byte at a time costs no more than one arriving whole.  A message beyond
    :data:`MAX_MESSAGE_BYTES` or nested deeper than :data:`MAX_NESTING` yields a
    :class:`QmpError` and the input is dropped up to the next newline.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0          # where scanning resumes
        self._depth = 0        # open brackets of the current message
        self._in_string = False
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes | QmpError]:
        """Add ``data``; returns the complete messages (and errors) it finished, in order."""
        out: list[bytes | QmpError] = []
        if self._discarding:
            newline = data.find(b"\n")
            if newline < 0:
                return out
            self._discarding = False
            data = data[newline + 1:]
        self._buf += data
        while True:
            end = self._scan()
            if end is None:
                break
            if end < 0:
                out.append(QmpError("JSON nesting depth limit exceeded"
                                    if end == -1 else "JSON token size limit exceeded"))
                self._resync()
                if self._discarding:
                    break
                continue
            out.append(bytes(self._buf[:end]))
            del self._buf[:end]
            self._pos = 0
        if len(self._buf) > MAX_MESSAGE_BYTES:
            out.append(QmpError("JSON token size limit exceeded"))
            self._resync()
        return out

    def _resync(self) -> None:
        newline = self._buf.find(b"\n", self._pos)
        if newline < 0:
            self._buf.clear()
            self._discarding = True
        else:
            del self._buf[:newline + 1]
        self._pos = self._depth = 0
        self._in_string = False

    def _scan(self) -> int | None:
        """End of the first complete message in the buffer; None: more input needed;
        -1: nested too deep."""
        buf = self._buf
        if self._depth == 0 and not self._in_string:
            first = _NOT_BLANK.search(buf)
            if first is None:
                buf.clear()
                return None
            del buf[:first.start()]
            head = buf[0]
            if head in b"{[":
                self._depth, self._pos = 1, 1
            elif head == 0x22:
                self._in_string, self._pos = True, 1
            elif head in b"}]:,":
                return 1
            else:
                stop = _TOP_TOKEN_END.search(buf, 1)
                return None if stop is None else stop.start()
        while True:
            if self._in_string:
                hit = _IN_STRING.search(buf, self._pos)
                if hit is None:
                    self._pos = len(buf)
                    return None
                if hit.group() == b"\\":
                    if hit.end() >= len(buf):
                        self._pos = hit.start()  # the escaped byte has not arrived yet
                        return None
                    self._pos = hit.end() + 1
                    continue
                self._in_string = False
                self._pos = hit.end()
                if self._depth == 0:
                    return self._pos
                continue
            hit = _IN_VALUE.search(buf, self._pos)
            if hit is None:
                self._pos = len(buf)
                return None
            self._pos = hit.end()
            char = hit.group()
            if char == b'"':
                self._in_string = True
            elif char in b"{[":
                self._depth += 1
                if self._depth > MAX_NESTING:
                    return -1
            else:
                self._depth -= 1
                if self._depth == 0:
                    return self._pos


_LEX_TOKEN = re.compile(rb'(?P<string>"(?:[^"\\]|\\.)*"?)|(?P<number>-?[0-9][0-9.eE+-]*)'
                        rb"|(?P<keyword>[a-z]+)|(?P<blank>[ \t\r\n{}\[\]:,]+)|(?P<stray>.)",
                        re.S)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _parse(raw: bytes) -> Any:
    """One JSON text -> its value, or QmpError worded as QEMU's json-parser words it."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise QmpError(_parse_error_text(raw, exc)) from None


def _parse_error_text(raw: bytes, exc: Exception) -> str:
    """QEMU's message for the first error in ``raw``: a stray character, an invalid keyword,
    or the grammar error the parser meets first."""
    if isinstance(exc, RecursionError):
        return "JSON nesting depth limit exceeded"
    error_pos = exc.pos if isinstance(exc, json.JSONDecodeError) else len(raw)
    if isinstance(exc, json.JSONDecodeError):
        error_pos = len(exc.doc[:exc.pos].encode())
    keyword_error = None
    for token in _LEX_TOKEN.finditer(raw):
        text = token.group()
        if token.lastgroup == "stray":
            char = text.decode("ascii", errors="replace")
            return f"JSON parse error, stray '{char}'"  # the lexer stops at once
        if (token.lastgroup == "keyword" and keyword_error is None
                and token.start() <= error_pos and text not in (b"true", b"false", b"null")):
            keyword_error = f"JSON parse error, invalid keyword '{text.decode()}'"
    if keyword_error is not None:
        return keyword_error
    if not isinstance(exc, json.JSONDecodeError):
        return "JSON parse error, expecting value"
    msg = exc.msg
    context = _context(raw[:error_pos])
    if msg.startswith("Expecting ',' delimiter"):
        return ("JSON parse error, expected separator in dict" if context == b"{"
                else "JSON parse error, expected separator in list")
    if msg.startswith("Expecting ':' delimiter"):
        return "JSON parse error, missing : in object pair"
    if msg.startswith("Expecting property name"):
        rest = raw[error_pos:].lstrip()
        if rest[:1] in (b"}", b""):
            return "JSON parse error, expecting value"
        return "JSON parse error, key is not a string in dict"
    return "JSON parse error, expecting value"


def _context(prefix: bytes) -> bytes:
    """The innermost bracket open at the end of ``prefix`` (strings skipped)."""
    stack: list[bytes] = []
    for token in re.finditer(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]', prefix, re.S):
        text = token.group()
        if text in (b"{", b"["):
            stack.append(text)
        elif text in (b"}", b"]") and stack:
            stack.pop()
    return stack[-1] if stack else b""

def _pretty(value: Any, level: int = 0) -> str:
    """QEMU's pretty JSON: four spaces a level, and empty containers on two lines too."""
    inner, outer = " " * 4 * (level + 1), " " * 4 * level
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(str(k))}: {_pretty(v, level + 1)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + ("\n" if items else "") + outer + "}"
    if isinstance(value, (list, tuple)):
        items = [inner + _pretty(v, level + 1) for v in value]
        return "[\n" + ",\n".join(items) + ("\n" if items else "") + outer + "]"
    return json.dumps(value)


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
            # sic: QEMU 7.2 names the list element 'null' in this message
            raise QmpError(f"Parameter 'null' does not accept value '{cap}'")
    mon._negotiated = True
    mon._oob = "oob" in enable
    return {}


def _quit(mon: QmpMonitor, args: dict[str, Any]) -> Any:
    commands.quit_vm(mon.sys)
    return {}


def _human_monitor_command(mon: QmpMonitor, args: dict[str, Any]) -> Any:
    from kvmpy.monitor.hmp import run_command

    cpu = args.get("cpu-index")
    if cpu is not None and not 0 <= cpu < len(mon.sys.harts):
        raise QmpError("Parameter 'cpu-index' expects a CPU number")
    output = run_command(mon.sys, args["command-line"], args.get("cpu-index"),
                         state=mon.hmp_state)
    return output.replace("\n", "\r\n")


def _simple(fn: Callable[[System], Any]) -> Callable[[QmpMonitor, dict[str, Any]], Any]:
    return lambda mon, args: fn(mon.sys)


def _balloon(name: str, mon: QmpMonitor, *args: Any) -> Any:
    from kvmpy.hw.virtio import balloon

    try:
        return getattr(balloon, name)(mon.sys, *args)
    except balloon.BalloonNotActive as exc:
        raise QmpError(str(exc), "DeviceNotActive") from None


def _migration(name: str) -> Callable[[QmpMonitor, dict[str, Any]], Any]:
    """A command of :mod:`kvmpy.migration.commands` (loaded on first use)."""

    def run(mon: QmpMonitor, args: dict[str, Any]) -> Any:
        from kvmpy.migration import commands as migration

        return getattr(migration, name)(mon.sys, mon, args)

    return run


def _introspect(fn: Callable[[Any], Any], key: str = "typename"
                ) -> Callable[[QmpMonitor, dict[str, Any]], Any]:
    """A registry question: an unknown type is QEMU's DeviceNotFound."""
    def run(mon: QmpMonitor, args: dict[str, Any]) -> Any:
        try:
            return fn(args.get(key))
        except schema.TypeNotFound as exc:
            raise QmpError(str(exc), "DeviceNotFound") from None
        except ValueError as exc:
            raise QmpError(str(exc)) from None
    return run


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
    "query-pci": Command(_simple(pci.query_pci)),
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
        mon.sys, args.get("cpu-index", 0), args.get("names")),
        optional=("cpu-index", "names"), types={"cpu-index": int, "names": list}),
    "set_link": Command(lambda mon, args: net.set_link(mon.sys, args["name"], args["up"]),
                        required=("name", "up"), types={"name": str, "up": bool}),
    "netdev_add": Command(lambda mon, args: net.netdev_add(mon.sys, args),
                          required=("type", "id"), types={"type": str, "id": str},
                          open_args=True),
    "netdev_del": Command(lambda mon, args: net.netdev_del(mon.sys, args["id"]),
                          required=("id",), types={"id": str}),
    "snapshot-save": Command(lambda mon, args: snapshots.start_job(
        mon.sys, args["job-id"], "snapshot-save", args),
        required=("job-id", "tag", "vmstate", "devices"),
        types={"job-id": str, "tag": str, "vmstate": str, "devices": list}),
    "snapshot-load": Command(lambda mon, args: snapshots.start_job(
        mon.sys, args["job-id"], "snapshot-load", args),
        required=("job-id", "tag", "vmstate", "devices"),
        types={"job-id": str, "tag": str, "vmstate": str, "devices": list}),
    "snapshot-delete": Command(lambda mon, args: snapshots.start_job(
        mon.sys, args["job-id"], "snapshot-delete", args),
        required=("job-id", "tag", "devices"),
        types={"job-id": str, "tag": str, "devices": list}),
    "query-jobs": Command(lambda mon, args: snapshots.query_jobs(mon.sys)),
    "job-dismiss": Command(lambda mon, args: snapshots.job_dismiss(mon.sys, args["id"]),
                           required=("id",), types={"id": str}),
    "x-pmemwrite": Command(lambda mon, args: commands.pmemwrite(mon.sys, args["val"],
                                                                args["data"]),
                           required=("val", "data"), types={"val": int, "data": str}),
    "query-qmp-schema": Command(lambda mon, args: schema.qmp_schema(COMMANDS)),
    "qom-list-types": Command(lambda mon, args: schema.qom_list_types(
        args.get("implements"), args.get("abstract", False)),
        optional=("implements", "abstract"), types={"implements": str, "abstract": bool}),
    "device-list-properties": Command(_introspect(schema.device_list_properties),
                                      required=("typename",), types={"typename": str}),
    "qom-list-properties": Command(_introspect(schema.qom_list_properties),
                                   required=("typename",), types={"typename": str}),
    "query-command-line-options": Command(
        _introspect(schema.command_line_options, "option"), optional=("option",),
        types={"option": str}),
    "query-chardev": Command(_simple(inventory.query_chardev)),
    "qom-list": Command(lambda mon, args: inventory.qom_list(mon.sys, args["path"]),
                        required=("path",), types={"path": str}),
    "query-block": Command(_simple(inventory.query_block)),
    "query-named-block-nodes": Command(_simple(inventory.query_named_block_nodes),
                                       optional=("flat",), types={"flat": bool}),
    "query-blockstats": Command(_simple(inventory.query_blockstats),
                                optional=("query-nodes",), types={"query-nodes": bool}),
    "query-uuid": Command(_simple(inventory.query_uuid)),
    "balloon": Command(lambda mon, args: _balloon("qmp_balloon", mon, args["value"]),
                       required=("value",), types={"value": int}),
    "query-balloon": Command(lambda mon, args: _balloon("qmp_query_balloon", mon)),
    "migrate": Command(_migration("qmp_migrate"), required=("uri",),
                       optional=("blk", "inc", "detach", "resume"),
                       types={"uri": str, "blk": bool, "inc": bool, "detach": bool,
                              "resume": bool}),
    "migrate_cancel": Command(_migration("qmp_migrate_cancel")),
    "migrate-incoming": Command(_migration("qmp_migrate_incoming"), required=("uri",),
                                types={"uri": str}),
    "query-migrate": Command(_migration("qmp_query_migrate")),
    "query-migrate-capabilities": Command(_migration("qmp_query_migrate_capabilities")),
    "migrate-set-capabilities": Command(_migration("qmp_migrate_set_capabilities"),
                                        required=("capabilities",),
                                        types={"capabilities": list}),
    "query-migrate-parameters": Command(_migration("qmp_query_migrate_parameters")),
    "migrate-set-parameters": Command(_migration("qmp_migrate_set_parameters"),
                                      open_args=True),
    "getfd": Command(_migration("qmp_getfd"), required=("fdname",), types={"fdname": str}),
    "closefd": Command(_migration("qmp_closefd"), required=("fdname",),
                       types={"fdname": str}),
}

__all__ = ["COMMANDS", "QmpError", "QmpMonitor"]
