"""The monitor commands of migration: QMP ``migrate``, ``migrate-incoming``, ``query-migrate``,
``migrate_cancel``, capabilities, parameters, ``getfd``/``closefd``; HMP ``migrate``,
``migrate_incoming``, ``migrate_cancel``, ``migrate_set_capability``, ``migrate_set_parameter``
and ``info migrate``/``migrate_capabilities``/``migrate_parameters``.  Texts as QEMU 7.2's
(``qapi/migration.json``, ``monitor/hmp-cmds.c``, ``monitor/misc.c``).
"""

from __future__ import annotations

import contextlib
import os
import re
import weakref
from typing import TYPE_CHECKING, Any

from kvmpy.errors import KvmpyError
from kvmpy.migration.migrate import (
    CAPABILITIES,
    HONOURED_CAPABILITIES,
    PARAMETER_DEFAULTS,
    migration_of,
)

if TYPE_CHECKING:
    from kvmpy.system import System


class MonitorFds:
    """The file descriptors a monitor received with ``getfd`` (QEMU's ``mon->fds``)."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}

    def add(self, name: str, fd: int) -> None:
        if name[:1].isdigit():
            os.close(fd)
            raise KvmpyError("Parameter 'fdname' expects a name not starting with a digit")
        old = self.fds.get(name)
        self.fds[name] = fd
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)

    def take(self, name: str) -> int | None:
        """The fd named ``name``, removed from the table (QEMU's monitor_get_fd)."""
        return self.fds.pop(name, None)

    def close(self, name: str) -> None:
        fd = self.fds.pop(name, None)
        if fd is None:
            raise KvmpyError(f"File descriptor named '{name}' not found")
        with contextlib.suppress(OSError):
            os.close(fd)

    def close_all(self) -> None:
        for name in list(self.fds):
            self.close(name)


_FDS: weakref.WeakKeyDictionary[Any, MonitorFds] = weakref.WeakKeyDictionary()
_NO_FDS = MonitorFds()


def monitor_fds(monitor: Any) -> MonitorFds:
    if monitor is None:
        return _NO_FDS
    found = _FDS.get(monitor)
    if found is None:
        found = _FDS[monitor] = MonitorFds()
    return found


# -- QMP: each handler takes (system, monitor, arguments) ------------------------------------

def qmp_getfd(system: System, monitor: Any, args: dict[str, Any]) -> dict[str, Any]:
    take = getattr(getattr(monitor, "chardev", None), "take_msgfd", None)
    fd = take() if take is not None else None
    if fd is None:
        raise KvmpyError("No file descriptor supplied via SCM_RIGHTS")
    monitor_fds(monitor).add(args["fdname"], fd)
    return {}


def qmp_closefd(system: System, monitor: Any, args: dict[str, Any]) -> dict[str, Any]:
    monitor_fds(monitor).close(args["fdname"])
    return {}


def qmp_migrate(system: System, monitor: Any, args: dict[str, Any]) -> dict[str, Any]:
    if args.get("blk") or args.get("inc"):
        raise KvmpyError("kvmpy is built without old-style (blk/-b, inc/-i) block migration")
    if args.get("resume"):
        raise KvmpyError("Cannot resume if there is no paused migration")
    migration_of(system).migrate(args["uri"], monitor_fds(monitor).take)
    return {}


def qmp_migrate_incoming(system: System, monitor: Any, args: dict[str, Any]) -> dict[str, Any]:
    migration_of(system).start_incoming(args["uri"], monitor_fds(monitor).take).start()
    return {}


def qmp_migrate_cancel(system: System, monitor: Any, args: dict[str, Any]) -> dict[str, Any]:
    migration_of(system).cancel()
    return {}


def qmp_query_migrate(system: System, monitor: Any, args: dict[str, Any]) -> dict[str, Any]:
    return migration_of(system).query()


def qmp_query_migrate_capabilities(system: System, monitor: Any,
                                   args: dict[str, Any]) -> list[dict[str, Any]]:
    """The capabilities kvmpy has (QEMU lists all it has; a tool such as libvirt takes an
    absent one as unsupported), in QEMU's order."""
    caps = migration_of(system).capabilities
    return [{"state": caps[name], "capability": name} for name in CAPABILITIES
            if name in HONOURED_CAPABILITIES]


def qmp_migrate_set_capabilities(system: System, monitor: Any,
                                 args: dict[str, Any]) -> dict[str, Any]:
    capabilities = args["capabilities"]
    if not isinstance(capabilities, list):
        raise KvmpyError("Invalid parameter type for 'capabilities', expected: array")
    migration_of(system).set_capabilities(capabilities)
    return {}


def qmp_query_migrate_parameters(system: System, monitor: Any,
                                 args: dict[str, Any]) -> dict[str, Any]:
    return dict(migration_of(system).parameters)


def qmp_migrate_set_parameters(system: System, monitor: Any,
                               args: dict[str, Any]) -> dict[str, Any]:
    migration_of(system).set_parameters(args)
    return {}


# -- HMP ------------------------------------------------------------------------------------

HMP_HELP = [  # name, parameters, description: as QEMU's hmp-commands.hx
    ("migrate", "[-d] [-b] [-i] [-r] uri",
     "migrate to URI (using -d to not wait for completion)"),
    ("migrate_cancel", "", "cancel the current VM migration"),
    ("migrate_incoming", "uri", "Continue an incoming migration from an -incoming defer"),
    ("migrate_set_capability", "capability state",
     "Enable/Disable the usage of a capability for migration"),
    ("migrate_set_parameter", "parameter value", "Set the parameter for migration"),
]

HMP_INFO = {
    "migrate": "show migration status",
    "migrate_capabilities": "show current migration capabilities",
    "migrate_parameters": "show current migration parameters",
}


def hmp_command(system: System, name: str, args: list[str]) -> str | None:
    """Run an HMP migration command; None if ``name`` is not one."""
    if name == "migrate":
        return _hmp_migrate(system, args)
    if name == "migrate_cancel":
        qmp_migrate_cancel(system, None, {})
        return ""
    if name == "migrate_incoming":
        if not args:
            raise _usage("migrate_incoming", "string expected")
        qmp_migrate_incoming(system, None, {"uri": args[0]})
        return ""
    if name == "migrate_set_capability":
        if len(args) < 2:
            raise _usage(name, "string expected" if not args else "expected boolean value")
        if args[1] not in ("on", "off"):
            raise _usage(name, "expected 'on' or 'off'")
        qmp_migrate_set_capabilities(system, None, {"capabilities": [
            {"capability": args[0], "state": args[1] == "on"}]})
        return ""
    if name == "migrate_set_parameter":
        if len(args) < 2:
            raise _usage(name, "string expected")
        qmp_migrate_set_parameters(system, None, {args[0]: _hmp_parameter(args[0], args[1])})
        return ""
    return None


def _usage(command: str, message: str) -> KvmpyError:
    from kvmpy.monitor.hmp import UsageError

    return UsageError(f"{command}: {message}", command)


def _hmp_migrate(system: System, args: list[str]) -> str:
    flags = [a for a in args if a in ("-d", "-b", "-i", "-r")]
    rest = [a for a in args if a not in flags]
    if not rest:
        raise _usage("migrate", "string expected")
    if len(rest) > 1:  # a URI with blanks is quoted: migrate "exec:cat > FILE"
        raise _usage("migrate", "extraneous characters at the end of line")
    qmp_migrate(system, None, {"uri": rest[0], "blk": "-b" in flags, "inc": "-i" in flags,
                               "resume": "-r" in flags})
    if "-d" in flags:
        return ""
    # QEMU suspends an interactive monitor until the migration ends; kvmpy's monitors
    # answer at once, as QEMU does when it cannot suspend the terminal.
    return "terminal does not allow synchronous migration, continuing detached"


def _hmp_parameter(name: str, text: str) -> Any:
    if name not in PARAMETER_DEFAULTS:
        raise KvmpyError(f"Parameter '{name}' does not accept value '{text}'")
    kind = type(PARAMETER_DEFAULTS[name])
    if kind is bool:
        if text not in ("on", "off"):
            raise KvmpyError(f"Parameter '{name}' expects 'on' or 'off'")
        return text == "on"
    if kind is str:
        return text
    if name in ("max-bandwidth", "max-postcopy-bandwidth", "xbzrle-cache-size"):
        return _size(name, text, default_unit="M" if name == "max-bandwidth" else "B")
    try:
        return int(text, 0)
    except ValueError:
        raise KvmpyError(f"Parameter '{name}' expects an integer") from None


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bBkKmMgGtTpPeE]?)\s*$")
_UNITS = {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40, "P": 50, "E": 60}


def _size(name: str, text: str, default_unit: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise KvmpyError(f"Parameter '{name}' expects a non-negative size")
    unit = (match.group(2) or default_unit).upper()
    return int(float(match.group(1)) * (1 << _UNITS[unit]))


def info(system: System, what: str) -> str:
    if what == "migrate":
        return info_migrate(system)
    if what == "migrate_capabilities":
        return "\n".join(f"{cap['capability']}: {'on' if cap['state'] else 'off'}"
                         for cap in qmp_query_migrate_capabilities(system, None, {}))
    return info_migrate_parameters(system)


def info_migrate(system: System) -> str:
    """QEMU's hmp_info_migrate, without its "globals" block (QEMU's internal switches)."""
    data = migration_of(system).query()
    lines = []
    status = data.get("status")
    if status is not None:
        head = f"Migration status: {status}"
        if status == "failed" and "error-desc" in data:
            head += f" ({data['error-desc']})"
        lines.append(head)
        lines.append(f"total time: {data.get('total-time', 0)} ms")
        if "expected-downtime" in data:
            lines.append(f"expected downtime: {data['expected-downtime']} ms")
        if "downtime" in data:
            lines.append(f"downtime: {data['downtime']} ms")
        if "setup-time" in data:
            lines.append(f"setup: {data['setup-time']} ms")
    ram = data.get("ram")
    if ram is not None:
        lines += [f"transferred ram: {ram['transferred'] >> 10} kbytes",
                  f"throughput: {ram['mbps']:0.2f} mbps",
                  f"remaining ram: {ram['remaining'] >> 10} kbytes",
                  f"total ram: {ram['total'] >> 10} kbytes",
                  f"duplicate: {ram['duplicate']} pages",
                  f"skipped: {ram['skipped']} pages",
                  f"normal: {ram['normal']} pages",
                  f"normal bytes: {ram['normal-bytes'] >> 10} kbytes",
                  f"dirty sync count: {ram['dirty-sync-count']}",
                  f"page size: {ram['page-size'] >> 10} kbytes",
                  f"multifd bytes: {ram['multifd-bytes'] >> 10} kbytes",
                  f"pages-per-second: {ram['pages-per-second']}"]
        if ram["precopy-bytes"]:
            lines.append(f"precopy ram: {ram['precopy-bytes'] >> 10} kbytes")
        if ram["downtime-bytes"]:
            lines.append(f"downtime ram: {ram['downtime-bytes'] >> 10} kbytes")
    addresses = data.get("socket-address")
    if addresses:
        lines.append("socket address: [")
        lines += [f"\ttcp:{a['host']}:{a['port']}" if a.get("type") == "inet"
                  else f"\tunix:{a['path']}" for a in addresses]
        lines.append("]")
    return "\n".join(lines)


def info_migrate_parameters(system: System) -> str:
    """QEMU's hmp_info_migrate_parameters: its order, its units."""
    p = migration_of(system).parameters

    def on(name: str) -> str:
        return "on" if p[name] else "off"

    return "\n".join([
        f"announce-initial: {p['announce-initial']} ms",
        f"announce-max: {p['announce-max']} ms",
        f"announce-rounds: {p['announce-rounds']}",
        f"announce-step: {p['announce-step']} ms",
        f"compress-level: {p['compress-level']}",
        f"compress-threads: {p['compress-threads']}",
        f"compress-wait-thread: {on('compress-wait-thread')}",
        f"decompress-threads: {p['decompress-threads']}",
        f"throttle-trigger-threshold: {p['throttle-trigger-threshold']}",
        f"cpu-throttle-initial: {p['cpu-throttle-initial']}",
        f"cpu-throttle-increment: {p['cpu-throttle-increment']}",
        f"cpu-throttle-tailslow: {on('cpu-throttle-tailslow')}",
        f"max-cpu-throttle: {p['max-cpu-throttle']}",
        f"tls-creds: '{p['tls-creds']}'",
        f"tls-hostname: '{p['tls-hostname']}'",
        f"max-bandwidth: {p['max-bandwidth']} bytes/second",
        f"downtime-limit: {p['downtime-limit']} ms",
        f"x-checkpoint-delay: {p['x-checkpoint-delay']} ms",
        f"block-incremental: {on('block-incremental')}",
        f"multifd-channels: {p['multifd-channels']}",
        f"multifd-compression: {p['multifd-compression']}",
        f"xbzrle-cache-size: {p['xbzrle-cache-size']} bytes",
        f"max-postcopy-bandwidth: {p['max-postcopy-bandwidth']}",
        f"tls-authz: '{p['tls-authz']}'",
    ])
