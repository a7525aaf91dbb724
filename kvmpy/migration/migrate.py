"""Live migration, QEMU's way: the source's state machine and the destination's.

Source (``migrate``): ``setup`` -> ``active`` -> ``completed`` | ``failed`` | ``cancelling`` ->
``cancelled``.  A migration thread (never a vCPU thread, never the main loop) connects, then
copies RAM with :class:`kvmpy.migration.LiveSaver` while the guest runs, one pass of dirty
pages after another, until the last pass would fit in ``downtime-limit`` at the bandwidth
measured so far (or after :data:`MAX_PASSES`).  The main loop then stops the VM
(``finish-migrate``, ``STOP``), the thread sends the rest and the device state, and the source
ends in ``postmigrate``.  A failure or a cancel at any point turns dirty logging off and
restarts the guest if the migration stopped it: the source runs on as before.

Destination (``-incoming``, ``migrate-incoming``): run state ``inmigrate``; a thread waits for
the channel and loads the stream with :func:`kvmpy.migration.load_vm` (validated before
anything is applied); then the guest runs, or stays paused if the source was paused or the VM
was started with ``-S``.  A stream that fails to load ends the process with QEMU's message and
status 1.

Run-state changes and events happen on the main loop, in QEMU 7.2's order.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from kvmpy.errors import ConfigError, KvmpyError
from kvmpy.log import stderr_line
from kvmpy.migration.protocol import Cancelled, FramedReader, FramedWriter
from kvmpy.migration.uri import (
    Channel,
    FdLookup,
    Listener,
    MigrationError,
    MigrationURI,
    check_outgoing,
    connect,
    listen,
    parse,
)

if TYPE_CHECKING:
    from kvmpy.migration.save import LiveSaver, SaveStats
    from kvmpy.system import System

MAX_PASSES = 30
"""Pre-copy passes after which the source stops the guest whatever the dirty rate."""
PAGE_SIZE = 4096

CAPABILITIES = ("xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
                "postcopy-ram", "x-colo", "release-ram", "block", "return-path",
                "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
                "late-block-activate", "x-ignore-shared", "validate-uuid",
                "background-snapshot", "zero-copy-send", "postcopy-preempt")
"""QEMU 7.2's migration capabilities, in its order."""
HONOURED_CAPABILITIES = frozenset({"events"})
"""The ones kvmpy implements; the others can only be off."""

PARAMETER_DEFAULTS: dict[str, Any] = {
    # QEMU 7.2's query-migrate-parameters, in its order
    "cpu-throttle-tailslow": False, "xbzrle-cache-size": 67108864, "cpu-throttle-initial": 20,
    "announce-max": 550, "decompress-threads": 2, "compress-threads": 8, "compress-level": 1,
    "multifd-channels": 2, "multifd-zstd-level": 1, "announce-initial": 50,
    "block-incremental": False, "compress-wait-thread": True, "downtime-limit": 300,
    "tls-authz": "", "multifd-compression": "none", "announce-rounds": 5, "announce-step": 100,
    "tls-creds": "", "multifd-zlib-level": 1, "max-cpu-throttle": 99,
    "max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50,
    "max-bandwidth": 134217728, "x-checkpoint-delay": 20000, "cpu-throttle-increment": 10,
}
"""Every parameter is accepted and reported; ``downtime-limit`` and ``max-bandwidth`` act."""
MAX_DOWNTIME_MS = 2000 * 1000
SIZE_MAX = (1 << 64) - 1

RUNNING_STATES = ("setup", "active", "cancelling", "pre-switchover", "device")

_MIGRATIONS: weakref.WeakKeyDictionary[System, Migration] = weakref.WeakKeyDictionary()


def migration_of(system: System) -> Migration:
    """The migration state of ``system`` (made on first use)."""
    found = _MIGRATIONS.get(system)
    if found is None:
        found = _MIGRATIONS[system] = Migration(system)
        system.at_close(found.close)
    return found


class Migration:
    """Capabilities, parameters, and the outgoing and incoming migration of one VM."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.capabilities = dict.fromkeys(CAPABILITIES, False)
        self.parameters = dict(PARAMETER_DEFAULTS)
        self.autostart = not system.config.start_paused
        self.outgoing: Outgoing | None = None
        self.incoming: Incoming | None = None

    @property
    def events(self) -> bool:
        return self.capabilities["events"]

    def emit(self, name: str, data: dict[str, Any]) -> None:
        if self.events:
            self.system.emit(name, data)

    def running(self) -> bool:
        return self.outgoing is not None and self.outgoing.status in RUNNING_STATES

    # -- commands (main loop) ----------------------------------------------------------------

    def set_capabilities(self, caps: list[Any]) -> None:
        if self.running():
            raise MigrationError("There's a migration process in progress")
        wanted: dict[str, bool] = {}
        for entry in caps:
            if not isinstance(entry, dict):
                raise MigrationError("Invalid parameter type for 'capabilities[0]', "
                                     "expected: object")
            name, state = entry.get("capability"), entry.get("state")
            if name is None:
                raise MigrationError("Parameter 'capability' is missing")
            if state is None:
                raise MigrationError("Parameter 'state' is missing")
            if not isinstance(name, str) or name not in CAPABILITIES:
                raise MigrationError(f"Parameter 'capability' does not accept value '{name}'")
            if not isinstance(state, bool):
                raise MigrationError("Invalid parameter type for 'state', expected: boolean")
            if state and name not in HONOURED_CAPABILITIES:
                raise MigrationError(_UNSUPPORTED.get(name, f"Migration capability '{name}' "
                                                       "is not supported by kvmpy"))
            wanted[name] = state
        self.capabilities.update(wanted)

    def set_parameters(self, params: dict[str, Any]) -> None:
        checked: dict[str, Any] = {}
        for name, value in params.items():
            if name not in PARAMETER_DEFAULTS:
                raise MigrationError(f"Parameter '{name}' is unexpected")
            default = PARAMETER_DEFAULTS[name]
            kind = type(default)
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if not (isinstance(value, bool) if kind is bool else
                    is_int if kind is int else isinstance(value, str)):
                expected = {bool: "boolean", int: "integer", str: "string"}[kind]
                raise MigrationError(f"Invalid parameter type for '{name}', "
                                     f"expected: {expected}")
            checked[name] = value
        if "downtime-limit" in checked and not 0 <= checked["downtime-limit"] <= MAX_DOWNTIME_MS:
            raise MigrationError("Parameter 'downtime_limit' expects an integer in the range "
                                 "of 0 to (2000 * 1000) ms")
        if "max-bandwidth" in checked:
            bandwidth = checked["max-bandwidth"]
            checked["max-bandwidth"] = bandwidth + (1 << 64) if bandwidth < 0 else bandwidth
            if checked["max-bandwidth"] > SIZE_MAX:
                raise MigrationError("Parameter 'max_bandwidth' expects an integer in the "
                                     "range of 0 to 18446744073709551615 bytes/second")
        if checked.get("multifd-compression", "none") not in ("none", "zlib", "zstd"):
            raise MigrationError("Parameter 'multifd-compression' does not accept value "
                                 f"'{checked['multifd-compression']}'")
        self.parameters.update(checked)

    def migrate(self, uri: str, fds: FdLookup) -> None:
        """QMP ``migrate``: checks as QEMU's migrate_prepare, then starts the thread."""
        status = self.system.status
        if self.running():
            raise MigrationError("There's a migration process in progress")
        if status == "inmigrate":
            raise MigrationError("Guest is waiting for an incoming migration")
        if status == "postmigrate":
            raise MigrationError("Can't migrate the vm that was paused due to previous "
                                 "migration")
        outgoing = self.outgoing = Outgoing(self)
        outgoing.set_status("setup")
        try:
            parsed = parse(uri)
            fd = check_outgoing(parsed, fds)
        except MigrationError as exc:
            if uri.split(":", 1)[0] in ("tcp", "unix", "exec", "fd"):
                outgoing.error_desc = str(exc)  # QEMU keeps none for an unknown scheme
            outgoing.set_status("failed")
            raise
        outgoing.start(parsed, fd)

    def cancel(self) -> None:
        """QMP ``migrate_cancel``: nothing to do unless a migration runs."""
        if self.outgoing is not None:
            self.outgoing.cancel()

    def start_incoming(self, uri: str, fds: FdLookup, from_cli: bool = False) -> Incoming:
        """``-incoming URI`` (``from_cli``) or QMP ``migrate-incoming``: listen now, load on
        a thread once :meth:`Incoming.start` is called."""
        if not from_cli:
            if self.incoming is not None:
                raise MigrationError("The incoming migration has already been started")
            if self.system.status != "inmigrate":
                raise MigrationError("'-incoming' was not specified on the command line")
        self.system.emit("MIGRATION", {"status": "setup"})  # QEMU sends this one always
        parsed = parse(uri, incoming=True)
        incoming = Incoming(self, parsed, listen(parsed, fds))
        self.incoming = incoming
        return incoming

    def query(self) -> dict[str, Any]:
        """QMP ``query-migrate``: the outgoing migration's, else the incoming one's."""
        if self.outgoing is not None:
            return self.outgoing.query()
        return self.incoming.query() if self.incoming is not None else {}

    def close(self) -> None:
        """The VM is closing: stop whatever runs (the threads are daemons)."""
        if self.outgoing is not None:
            self.outgoing.cancel(quiet=True)
        if self.incoming is not None:
            self.incoming.close()

    # -- helpers for the threads ---------------------------------------------------------

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the main loop and wait for its result (from a migration thread)."""
        system = self.system
        if system.loop is not None and system.loop.is_closed():
            raise Cancelled("the VM closed")  # nothing is left to change
        if system.loop is None or threading.get_ident() == getattr(system, "_loop_thread",
                                                                   None):
            return fn()
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread
                future.set_exception(exc)

        system.call_soon(run)
        while True:
            try:
                return future.result(timeout=0.5)
            except concurrent.futures.TimeoutError:
                if system.loop is None or system.loop.is_closed():
                    raise Cancelled("the VM closed") from None


_UNSUPPORTED = {
    "postcopy-ram": "Postcopy is not supported",
    "background-snapshot": "Background-snapshot is not supported by host kernel",
    "multifd": "multifd is not supported by current protocol",
}


class Outgoing:
    """One outgoing migration and its figures for ``query-migrate``."""

    def __init__(self, owner: Migration) -> None:
        self.owner = owner
        self.system = owner.system
        self.status = "none"
        self.error_desc: str | None = None
        self.start_time = time.monotonic()
        self.setup_time_ms = 0
        self.end_time: float | None = None
        self.stop_time: float | None = None
        self.downtime_ms = 0
        self.expected_downtime_ms = owner.parameters["downtime-limit"]
        self.passes = 0
        self.remaining = 0
        self.writer: FramedWriter | None = None
        self.saver: LiveSaver | None = None
        self.stats: SaveStats | None = None
        self.bandwidth = 0.0
        """Measured while copying, bytes/s."""
        self.downtime_bytes = 0
        self._cancel = threading.Event()
        self._channel: Channel | None = None
        self._stopped_vm = False
        self._was_running = False

    # -- state (main loop) ------------------------------------------------------------------

    def set_status(self, status: str) -> None:
        self.status = status
        self.owner.emit("MIGRATION", {"status": status})

    def start(self, uri: MigrationURI, fd: int | None) -> None:
        thread = threading.Thread(target=self._run, args=(uri, fd), daemon=True,
                                  name="live_migration")
        thread.start()

    def cancel(self, quiet: bool = False) -> None:
        if self.status not in ("setup", "active"):
            return
        self._cancel.set()
        if not quiet:
            self.set_status("cancelling")
        channel = self._channel
        if channel is not None:
            channel.abort()

    # -- the migration thread -------------------------------------------------------------

    def _run(self, uri: MigrationURI, fd: int | None) -> None:
        try:
            self._channel = connect(uri, fd, self._cancel.is_set)
            if self._cancel.is_set():
                raise Cancelled("cancelled")
            self._copy()
        except Cancelled:
            self._end("cancelled", None)
        except (MigrationError, KvmpyError, OSError) as exc:
            self._end("cancelled" if self._cancel.is_set() else "failed",
                      str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug must still leave the source running
            self._end("failed", f"internal error: {type(exc).__name__}: {exc}")

    def _copy(self) -> None:
        from kvmpy.migration.save import LiveSaver

        assert self._channel is not None
        params = self.owner.parameters
        writer = self.writer = FramedWriter(self._channel, lambda: params["max-bandwidth"],
                                            self._cancel)
        writer.start()
        saver = self.saver = LiveSaver(self.system, cast(BinaryIO, writer))
        self.stats = saver.stats
        saver.begin()
        self._pass()
        self.setup_time_ms = _ms(time.monotonic() - self.start_time)
        self.system.call_soon(lambda: self._enter("active"))  # in order, not waited for
        copy_time = 0.0
        iterations = 0
        while True:
            if self._cancel.is_set():
                raise Cancelled("cancelled")
            started, before = time.monotonic(), writer.transferred
            saver.iterate()
            iterations += 1
            if iterations > 1:  # the first sends what begin() synced: QEMU's first pass
                self._pass()
            writer.flush()
            elapsed = time.monotonic() - started
            copy_time += elapsed
            moved = writer.transferred - before
            if copy_time > 0:
                self.bandwidth = max(writer.transferred / copy_time, 1.0)
            self.remaining = int(saver.remaining_bytes)
            # What the next pass sends was dirtied while this one ran: at most this much.
            self.expected_downtime_ms = _ms(moved / self.bandwidth) if self.bandwidth else 0
            if self.expected_downtime_ms <= params["downtime-limit"]:
                break
            if iterations >= MAX_PASSES:
                break
        self.owner.on_loop(self._stop_vm)
        self.stop_time = time.monotonic()
        writer.limited = False
        before = writer.transferred
        saver.complete()
        self._pass()
        writer.finish({"runstate": self._prior_state})
        self._channel.finish()
        self._channel = None
        self.downtime_bytes = writer.transferred - before
        self.remaining = 0
        self.downtime_ms = _ms(time.monotonic() - self.stop_time)
        self.end_time = time.monotonic()
        self.system.call_soon(self._completed)

    def _pass(self) -> None:
        self.passes += 1
        passes = self.passes
        self.system.call_soon(lambda: self.owner.emit("MIGRATION_PASS", {"pass": passes}))

    def _enter(self, status: str) -> None:
        if self.status in ("setup", "active"):
            self.set_status(status)

    def _stop_vm(self) -> None:
        """QEMU's vm_stop_force_state(RUN_STATE_FINISH_MIGRATE), on the main loop."""
        if self._cancel.is_set():
            raise Cancelled("cancelled")
        self._prior_state = self.system.status
        self._was_running = self.system.running
        self._stopped_vm = True
        stop_for_migration(self.system)

    _prior_state = "running"

    def _completed(self) -> None:
        self.system.runstate_set("postmigrate")
        self.set_status("completed")

    def _end(self, status: str, error: str | None) -> None:
        """Failed or cancelled: dirty logging off, the guest as it was, then the event."""
        saver, self.saver = self.saver, None
        if saver is not None:
            try:
                saver.cancel()
            except Exception as exc:  # still restart the guest below
                stderr_line(f"kvmpy: migration: {exc}")
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                channel.close()
            except Exception as exc:
                stderr_line(f"kvmpy: migration: {exc}")
        self.end_time = time.monotonic()

        def finish() -> None:
            if self._stopped_vm:
                if self._was_running and self.system.status == "finish-migrate":
                    self.system.resume()
                elif self.system.status == "finish-migrate":
                    self.system.runstate_set("postmigrate")  # QEMU's migration_iteration_finish
            self.error_desc = error
            if self.status in ("setup", "active", "cancelling"):
                self.set_status(status)

        with contextlib.suppress(Cancelled):
            self.owner.on_loop(finish)

    # -- query-migrate ----------------------------------------------------------------------

    def query(self) -> dict[str, Any]:
        status = self.status
        if status == "none":
            return {}
        if status == "setup":
            return {"status": "setup"}
        if status in ("cancelled",):
            return {"status": status}
        if status == "failed":
            info: dict[str, Any] = {"status": "failed"}
            if self.error_desc:
                info["error-desc"] = self.error_desc
            return info
        now = self.end_time or time.monotonic()
        info = {}
        if status in ("active", "cancelling"):
            info["expected-downtime"] = self.expected_downtime_ms
        info["status"] = status
        info["setup-time"] = self.setup_time_ms
        if status == "completed":
            info["downtime"] = self.downtime_ms
        info["total-time"] = _ms(now - self.start_time)
        info["ram"] = self.ram_info(now)
        return info

    def ram_info(self, now: float) -> dict[str, Any]:
        ram = self.system.ram
        total = ram.size if ram is not None else 0
        transferred = self.writer.transferred if self.writer is not None else 0
        stats = self.stats
        pages = stats.ram_bytes // PAGE_SIZE if stats else 0  # pages sent with their data
        zero_pages = max(stats.pages - pages, 0) if stats else 0  # pages sent as "zero"
        elapsed = max(now - self.start_time, 1e-9)
        remaining = self.remaining if self.passes > 1 else max(total - pages * PAGE_SIZE, 0)
        if self.status == "completed":
            remaining = 0
        precopy = transferred - self.downtime_bytes
        return {"total": total, "postcopy-requests": 0, "dirty-sync-count": self.passes,
                "multifd-bytes": 0, "pages-per-second": int(pages / elapsed),
                "downtime-bytes": self.downtime_bytes, "page-size": PAGE_SIZE,
                "remaining": remaining, "postcopy-bytes": 0,
                "mbps": transferred * 8 / 1e6 / elapsed, "transferred": transferred,
                "dirty-sync-missed-zero-copy": 0, "precopy-bytes": precopy,
                "duplicate": zero_pages, "dirty-pages-rate": 0, "skipped": 0,
                "normal-bytes": pages * PAGE_SIZE, "normal": pages}


def stop_for_migration(system: System) -> None:
    """QEMU's vm_stop_force_state(RUN_STATE_FINISH_MIGRATE): STOP only if it was running."""
    if system.running:
        system.pause("finish-migrate")
    else:
        system.runstate_set("finish-migrate")


class Incoming:
    """One incoming migration: its listener, then the load on a thread."""

    def __init__(self, owner: Migration, uri: MigrationURI, listener: Listener) -> None:
        self.owner = owner
        self.system = owner.system
        self.uri = uri
        self.listener = listener
        self.status = "none"
        self.error: str | None = None
        self._channel: Channel | None = None
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="incoming_migration").start()

    def set_status(self, status: str) -> None:
        self.status = status
        self.owner.emit("MIGRATION", {"status": status})

    def query(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.status != "none":
            info["status"] = self.status
        addresses = self.listener.addresses
        if addresses and self.status in ("none", "active"):
            info["socket-address"] = addresses
        return info

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        channel = self._channel
        if channel is not None:
            channel.abort()

    def _run(self) -> None:
        from kvmpy.migration import load_vm

        try:
            channel = self._channel = self.listener.accept()
            self.owner.on_loop(lambda: self.set_status("active"))
            reader = FramedReader(channel)
            reader.start()
            load_vm(self.system, cast(BinaryIO, reader))
            global_state = reader.finish()
            channel.close()
            self._channel = None
        except Cancelled:
            return
        except (KvmpyError, OSError) as exc:
            if not self._closed:
                message = str(exc) or type(exc).__name__
                self._call(lambda: self._failed(message))
            return
        except Exception as exc:  # a bug: still a clean failure
            message = f"internal error: {type(exc).__name__}: {exc}"
            self._call(lambda: self._failed(message))
            return
        self._call(lambda: self._loaded(global_state))

    def _call(self, fn: Callable[[], None]) -> None:
        with contextlib.suppress(Cancelled):
            self.owner.on_loop(fn)

    def _loaded(self, global_state: dict[str, Any]) -> None:
        """QEMU's process_incoming_migration_bh: run as the source ran."""
        system = self.system
        runstate = global_state.get("runstate", "running")
        if runstate == "running":
            if self.owner.autostart:
                system.resume()
            else:
                system.runstate_set("paused")
        else:
            system.runstate_set(runstate if runstate in ("paused", "prelaunch") else "paused")
        self.set_status("completed")

    def _failed(self, message: str) -> None:
        """QEMU's process_incoming_migration_co fail path: report, exit status 1."""
        self.error = message
        self.set_status("failed")
        stderr_line(f"kvmpy: load of migration failed: {message}")
        self.system.exit_code = 1
        self.system.quit()


def prepare_incoming(system: System, uri: str) -> Incoming | None:
    """``-incoming URI`` at start-up: bind now (a bad URI is a one-line error and exit 1,
    as QEMU's ``-incoming tcp:...: Failed to bind socket``); ``defer`` waits for
    ``migrate-incoming``."""
    if uri == "defer":
        return None
    try:
        return migration_of(system).start_incoming(uri, _no_fds, from_cli=True)
    except MigrationError as exc:
        raise ConfigError(str(exc), option=f"-incoming {uri}") from None


def _no_fds(name: str) -> int | None:
    return None


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
