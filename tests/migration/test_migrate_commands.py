"""QEMU's migration commands between kvmpy processes, on a tiny guest that counts in RAM.

The guest (``-M virt -bios none``, a four-instruction loop) stores an ever-growing counter, so
every test sees memory written while the migration copies it; the counter's value on a stopped
source and on the destination that took over says whether the copy was complete.  What QEMU
7.2 answers (error texts, event order) is checked by running ``qemu-system-riscv64`` on the same
commands.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import kvmpy
from kvmpy.process import ProcessVM
from kvmpy.qmp_client import QMPError

RAM_BASE = 0x8000_0000
COUNTER_GPA = RAM_BASE + 0x1000
COUNTER = [
    0x00001397,  # auipc t2, 1          t2 = RAM_BASE + 0x1000
    0x00150513,  # loop: addi a0, a0, 1
    0x00A3B023,  #       sd a0, 0(t2)
    0xFF9FF06F,  #       j loop
]
EVENTS_ON = [{"capability": "events", "state": True}]
QEMU = shutil.which("qemu-system-riscv64")


@pytest.fixture(autouse=True)
def _this_kvmpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Child processes run the kvmpy under test, wherever pytest runs from."""
    parent = str(Path(kvmpy.__file__).resolve().parent.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (parent, os.environ.get("PYTHONPATH")) if p))


@pytest.fixture
def tiny(tmp_path: Path) -> list[str]:
    payload = tmp_path / "counter.bin"
    payload.write_bytes(b"".join(struct.pack("<I", word) for word in COUNTER))
    return ["-M", "virt", "-bios", "none", "-accel", "tcg", "-kernel", str(payload)]


def qemu_tiny(args: list[str]) -> list[str]:
    return [a for a in args if a not in ("-accel", "tcg")] + ["-accel", "tcg"]


def counter(vm: ProcessVM) -> int:
    return vm.memory.read_u64(COUNTER_GPA)


def wait_status(vm: ProcessVM, status: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while vm.status != status:
        if time.monotonic() > deadline:
            raise TimeoutError(f"status {vm.status}, expected {status}")
        time.sleep(0.02)


def wait_exit(vm: ProcessVM, timeout: float = 60.0) -> int:
    code = vm.wait(timeout)
    return code


def migration_events(vm: ProcessVM) -> list[str]:
    """Events as ``NAME`` or ``MIGRATION:status``; consecutive MIGRATION_PASS events as one
    (how many passes a copy takes depends on the dirty rate, not on the protocol)."""
    out: list[str] = []
    for event in vm.get_events():
        name = event["event"]
        if name == "MIGRATION":
            name = f"MIGRATION:{event['data']['status']}"
        if name == "MIGRATION_PASS" and out and out[-1] == name:
            continue
        out.append(name)
    return out


def test_exec_to_a_file_and_back(tiny: list[str], tmp_path: Path) -> None:
    state = tmp_path / "vm.mig"
    with ProcessVM(tiny) as src:
        src.qmp("migrate-set-capabilities", capabilities=EVENTS_ON)
        info = src.migrate(f"exec:cat > {state}")
        assert info["status"] == "completed"
        assert info["ram"]["transferred"] == state.stat().st_size
        assert info["ram"]["remaining"] == 0 and info["ram"]["normal"] >= 2
        assert {"setup-time", "downtime", "total-time"} <= info.keys()
        assert src.status == "postmigrate"
        events = migration_events(src)
        assert events[:3] == ["MIGRATION:setup", "MIGRATION_PASS", "MIGRATION:active"]
        assert events[-3:] == ["STOP", "MIGRATION_PASS", "MIGRATION:completed"]
        assert set(events[3:-3]) <= {"MIGRATION_PASS"}  # the passes the dirty rate takes
        stopped_at = counter(src)
        assert stopped_at > 0
        hmp = src.hmp("info migrate")
        assert "Migration status: completed" in hmp and "downtime:" in hmp
        assert error_of(src, "migrate", uri=f"exec:cat > {tmp_path / 'again'}") == \
            "Can't migrate the vm that was paused due to previous migration"
        src.resume()  # a source can go on after migrating, as QEMU's
        assert src.status == "running"
    with ProcessVM([*tiny, "-S", "-incoming", f"exec:cat {state}"]) as dst:
        wait_status(dst, "paused")  # -S: loaded, not started
        assert dst.qmp("query-migrate") == {"status": "completed"}
        assert counter(dst) == stopped_at
        dst.resume()
        time.sleep(0.2)
        assert counter(dst) > stopped_at


def test_incoming_defer_over_a_unix_socket(tiny: list[str], tmp_path: Path) -> None:
    path = str(tmp_path / "mig.sock")
    with ProcessVM(tiny) as src, ProcessVM([*tiny, "-incoming", "defer"]) as dst:
        assert dst.status == "inmigrate"
        assert dst.qmp("query-migrate") == {}
        dst.qmp("migrate-set-capabilities", capabilities=EVENTS_ON)
        dst.qmp("migrate-incoming", uri=f"unix:{path}")
        assert error_of(dst, "migrate-incoming", uri=f"unix:{path}2") == \
            "The incoming migration has already been started"
        assert dst.qmp("query-migrate") == {"socket-address": [{"path": path,
                                                                "type": "unix"}]}
        assert error_of(dst, "migrate", uri="exec:cat > /dev/null") == \
            "Guest is waiting for an incoming migration"
        assert src.migrate(f"unix:{path}")["status"] == "completed"
        wait_status(dst, "running")
        assert migration_events(dst) == ["MIGRATION:setup", "MIGRATION:active", "RESUME",
                                          "MIGRATION:completed"]
        before = counter_running(dst)
        assert counter_running(dst) > before >= counter(src) > 0


def counter_running(vm: ProcessVM) -> int:
    time.sleep(0.1)
    return counter(vm)


class RawQmp:
    """A second QMP monitor of a VM, spoken to directly (to send file descriptors)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.file = self.sock.makefile("rb")
        self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(self.file.readline())
            if "event" not in message:
                return message

    def execute(self, command: str, fds: list[int] | None = None, **args: Any) -> Any:
        data = json.dumps({"execute": command, "arguments": args}).encode()
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)
        reply = self._read()
        if "error" in reply:
            raise QMPError(reply["error"]["desc"])
        return reply["return"]

    def error(self, command: str, **args: Any) -> str:
        try:
            self.execute(command, **args)
        except QMPError as exc:
            return str(exc)
        return "no error"

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_fd_passed_with_getfd(tiny: list[str], tmp_path: Path) -> None:
    src_qmp, dst_qmp = str(tmp_path / "src.qmp"), str(tmp_path / "dst.qmp")
    left, right = socket.socketpair()
    with ProcessVM([*tiny, "-qmp", f"unix:{src_qmp},server=on,wait=off"]) as src, \
            ProcessVM([*tiny, "-S", "-incoming", "defer",
                       "-qmp", f"unix:{dst_qmp},server=on,wait=off"]) as dst:
        source, destination = RawQmp(src_qmp), RawQmp(dst_qmp)
        try:
            assert source.error("getfd", fdname="mig") == \
                "No file descriptor supplied via SCM_RIGHTS"
            assert source.error("migrate", uri="fd:mig") == \
                "File descriptor named 'mig' has not been found"
            source.execute("getfd", fds=[left.fileno()], fdname="mig")
            destination.execute("getfd", fds=[right.fileno()], fdname="mig")
            left.close()
            right.close()
            destination.execute("migrate-incoming", uri="fd:mig")
            source.execute("migrate", uri="fd:mig")
            wait_status(dst, "paused")
            assert src.qmp("query-migrate")["status"] == "completed"
            assert counter(dst) == counter(src) > 0
        finally:
            source.close()
            destination.close()


def fill_ram(vm: ProcessVM, size: int) -> None:
    """``size`` bytes of data that is not zero, after the guest's counter page."""
    chunk = os.urandom(1 << 18).hex()
    for offset in range(0, size, 1 << 18):
        vm.qmp("x-pmemwrite", val=RAM_BASE + 0x10_0000 + offset, data=chunk)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_cancel_leaves_the_source_running_and_fails_the_destination(
        tiny: list[str]) -> None:
    port = free_port()
    with ProcessVM(tiny) as src:
        fill_ram(src, 4 << 20)
        src.qmp("migrate-set-capabilities", capabilities=EVENTS_ON)
        src.qmp("migrate-set-parameters", max_bandwidth=256 << 10)  # 16 s for 4 MiB
        dst = ProcessVM([*tiny, "-incoming", f"tcp:127.0.0.1:{port}"])
        with dst:
            src.qmp("migrate", uri=f"tcp:127.0.0.1:{port}")
            deadline = time.monotonic() + 30
            while src.qmp("query-migrate").get("status") != "active" or \
                    src.qmp("query-migrate")["ram"]["transferred"] < 256 << 10:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            src.qmp("migrate_cancel")
            deadline = time.monotonic() + 30
            while src.qmp("query-migrate")["status"] != "cancelled":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert wait_exit(dst) == 1
            assert "kvmpy: load of migration failed: " in dst.get_log()
            assert "Traceback" not in dst.get_log()
        assert src.status == "running"
        assert migration_events(src) == ["MIGRATION:setup", "MIGRATION_PASS",
                                          "MIGRATION:active", "MIGRATION:cancelling",
                                          "MIGRATION:cancelled"]
        before = counter_running(src)
        assert counter_running(src) > before
        # and the source can migrate again, all of it
        src.qmp("migrate-set-parameters", max_bandwidth=1 << 30)
        port = free_port()
        with ProcessVM([*tiny, "-S", "-incoming", f"tcp:127.0.0.1:{port}"]) as dst2:
            assert src.migrate(f"tcp:127.0.0.1:{port}")["status"] == "completed"
            wait_status(dst2, "paused")
            assert counter(dst2) == counter(src)
            assert dst2.memory.read(RAM_BASE + 0x10_0000, 4096) == \
                src.memory.read(RAM_BASE + 0x10_0000, 4096)


def test_a_stream_that_is_not_one_fails_the_destination(tiny: list[str]) -> None:
    dst = ProcessVM([*tiny, "-incoming", "exec:echo garbage"])
    dst.launch()
    assert wait_exit(dst) == 1
    log = dst.get_log()
    assert "kvmpy: load of migration failed: not a kvmpy migration stream" in log
    assert "Traceback" not in log


def test_a_different_machine_fails_the_destination(tiny: list[str], tmp_path: Path) -> None:
    state = tmp_path / "vm.mig"
    with ProcessVM([*tiny, "-m", "128M"]) as src:
        assert src.migrate(f"exec:cat > {state}")["status"] == "completed"
    dst = ProcessVM([*tiny, "-m", "256M", "-incoming", f"exec:cat {state}"])
    dst.launch()
    assert wait_exit(dst) == 1
    lines = [line for line in dst.get_log().splitlines() if "load of migration" in line]
    assert len(lines) == 1 and lines[0].startswith("kvmpy: load of migration failed: vmstate:")


# -- the same commands on QEMU 7.2 ----------------------------------------------------------

VMMS = ["kvmpy", pytest.param("qemu", marks=pytest.mark.skipif(
    QEMU is None, reason="qemu-system-riscv64 (the oracle) is not installed"))]


def launch(vmm: str, args: list[str]) -> ProcessVM:
    if vmm == "qemu":
        assert QEMU is not None
        return ProcessVM(qemu_tiny(args), binary=[QEMU])
    return ProcessVM(args)


def error_of(vm: ProcessVM, command: str, **args: Any) -> str:
    try:
        vm.qmp(command, **args)
    except QMPError as exc:
        return str(exc)
    return "no error"


def errors_and_events(vmm: str, tiny: list[str]) -> dict[str, Any]:
    port = free_port()  # nobody listens there
    out: dict[str, Any] = {}
    with launch(vmm, tiny) as vm:
        vm.qmp("migrate-set-capabilities", capabilities=EVENTS_ON)
        for uri in ("foo:bar", "tcp:127.0.0.1", "unix:", "fd:nosuch"):
            out[uri] = (error_of(vm, "migrate", uri=uri), vm.qmp("query-migrate"))
        out["refused"] = vm.migrate(f"tcp:127.0.0.1:{port}")
        out["events"] = migration_events(vm)
        out["incoming"] = error_of(vm, "migrate-incoming", uri="tcp:127.0.0.1:1")
        out["getfd"] = error_of(vm, "getfd", fdname="x")
        out["downtime"] = error_of(vm, "migrate-set-parameters", downtime_limit=2000001)
        out["bogus-parameter"] = error_of(vm, "migrate-set-parameters", bogus=1)
        out["bogus-capability"] = error_of(vm, "migrate-set-capabilities", capabilities=[
            {"capability": "bogus", "state": True}])
        vm.qmp("migrate-set-parameters", downtime_limit=123, max_bandwidth=1 << 20)
        params = vm.qmp("query-migrate-parameters")
        out["parameters"] = (params["downtime-limit"], params["max-bandwidth"])
        out["cancel-idle"] = vm.qmp("migrate_cancel")
        vm.hmp("migrate_set_parameter max-bandwidth 2M")
        out["hmp"] = [vm.hmp(line) for line in (
            "info migrate_parameters", "migrate", "migrate bogus:", "migrate_cancel",
            "migrate_incoming tcp:127.0.0.1:1", "help migrate_incoming",
            "help migrate_cancel", "help migrate_set_parameter")]
    return out


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 (the oracle) is not installed")
def test_errors_and_events_are_qemus(tiny: list[str]) -> None:
    kvmpy_side, qemu_side = errors_and_events("kvmpy", tiny), errors_and_events("qemu", tiny)
    for side in (kvmpy_side, qemu_side):  # the port differs
        side["refused"]["error-desc"] = side["refused"]["error-desc"].split("': ")[-1]
    assert kvmpy_side == qemu_side
    assert kvmpy_side["refused"] == {"status": "failed", "error-desc": "Connection refused"}


def live_events(vmm: str, tiny: list[str], mode: str, tmp_path: Path) -> dict[str, Any]:
    state = tmp_path / f"{vmm}.mig"
    path = str(tmp_path / f"{vmm}.sock")
    paused = mode == "prelaunch"
    with launch(vmm, [*tiny, *(["-S"] if paused else [])]) as src:
        if mode == "stopped":
            src.qmp("stop")
        src.qmp("migrate-set-capabilities", capabilities=EVENTS_ON)
        info = src.migrate(f"exec:cat > {state}")
        source = {"status": info["status"], "events": migration_events(src),
                  "after": src.status}
    with launch(vmm, [*tiny, *(["-S"] if paused else []), "-incoming", "defer"]) as dst:
        before = dst.status
        dst.qmp("migrate-set-capabilities", capabilities=EVENTS_ON)
        dst.qmp("migrate-incoming", uri=f"unix:{path}")
        with socket.socket(socket.AF_UNIX) as sock:  # feed the file to the socket
            sock.connect(path)
            sock.sendall(state.read_bytes())
        deadline = time.monotonic() + 30
        while dst.qmp("query-migrate").get("status") != "completed":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        destination = {"before": before, "events": migration_events(dst),
                       "after": dst.status}
    return {"source": source, "destination": destination}


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 (the oracle) is not installed")
@pytest.mark.parametrize("mode", ["running", "prelaunch", "stopped"])
def test_states_and_event_order_are_qemus(tiny: list[str], mode: str,
                                          tmp_path: Path) -> None:
    """A running source's guest runs on at the destination, a stopped one stays stopped;
    the source ends in postmigrate; events in QEMU's order on both sides."""
    kvmpy_side = live_events("kvmpy", tiny, mode, tmp_path)
    qemu_side = live_events("qemu", tiny, mode, tmp_path)
    assert kvmpy_side == qemu_side
    assert kvmpy_side["source"]["after"] == "postmigrate"


def test_bad_incoming_uri_is_one_line(tiny: list[str]) -> None:
    import subprocess

    for uri, message in (("bogus:x", "unknown migration protocol: bogus:x"),
                         ("tcp:127.0.0.1", "error parsing address '127.0.0.1'")):
        result = subprocess.run([sys.executable, "-m", "kvmpy", *tiny, "-display", "none",
                                 "-incoming", uri], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1
        assert result.stderr.splitlines()[-1] == f"kvmpy: -incoming {uri}: {message}"


def start_slow_migration(src: ProcessVM, uri: str) -> None:
    """4 MiB at 256 KiB/s: a migration that is still copying for seconds."""
    fill_ram(src, 4 << 20)
    src.qmp("migrate-set-capabilities", capabilities=EVENTS_ON)
    src.qmp("migrate-set-parameters", max_bandwidth=256 << 10)
    src.qmp("migrate", uri=uri)
    deadline = time.monotonic() + 30
    while src.qmp("query-migrate").get("status") != "active":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_destination_that_dies_fails_the_migration_not_the_source(
        tiny: list[str]) -> None:
    port = free_port()
    with ProcessVM(tiny) as src:
        dst = ProcessVM([*tiny, "-incoming", f"tcp:127.0.0.1:{port}"])
        dst.launch()
        start_slow_migration(src, f"tcp:127.0.0.1:{port}")
        dst.kill()
        deadline = time.monotonic() + 30
        while (info := src.qmp("query-migrate"))["status"] == "active":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert info["status"] == "failed"
        assert info["error-desc"].startswith("Unable to write to socket: ")
        assert migration_events(src)[-1] == "MIGRATION:failed"
        assert src.status == "running"
        before = counter_running(src)
        assert counter_running(src) > before


def test_quit_during_a_migration(tiny: list[str], tmp_path: Path) -> None:
    with ProcessVM(tiny) as src:
        start_slow_migration(src, f"exec:cat > {tmp_path / 'never.mig'}")
        assert src.shutdown(timeout=30) == 0


def waiting_destination(vmm: str, tiny: list[str]) -> dict[str, Any]:
    port = free_port()
    with launch(vmm, [*tiny, "-incoming", f"tcp:127.0.0.1:{port}"]) as dst:
        info = dst.qmp("query-migrate")
        for address in info.get("socket-address", []):
            address["port"] = "PORT" if address.get("port") == str(port) else address["port"]
        return {"status": dst.qmp("query-status"), "migrate": info,
                "hmp": dst.hmp("info status"),
                "again": error_of(dst, "migrate-incoming", uri="tcp:127.0.0.1:1")}


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 (the oracle) is not installed")
def test_a_waiting_destination_is_qemus(tiny: list[str]) -> None:
    assert waiting_destination("kvmpy", tiny) == waiting_destination("qemu", tiny)


def cont_while_incoming(vmm: str, tiny: list[str], tmp_path: Path) -> list[str]:
    state = tmp_path / f"{vmm}-cont.mig"
    with launch(vmm, tiny) as src:
        assert src.migrate(f"exec:cat > {state}")["status"] == "completed"
    with launch(vmm, [*tiny, "-S", "-incoming", "defer"]) as dst:
        seen = [dst.status]
        dst.qmp("cont")  # QEMU: start once the state is in
        seen.append(dst.status)
        dst.qmp("migrate-incoming", uri=f"exec:cat {state}")
        deadline = time.monotonic() + 30
        while dst.status == "inmigrate":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        seen.append(dst.status)
        return seen


@pytest.mark.parametrize("vmm", VMMS)
def test_cont_while_inmigrate_starts_the_guest_once_loaded(vmm: str, tiny: list[str],
                                                           tmp_path: Path) -> None:
    assert cont_while_incoming(vmm, tiny, tmp_path) == ["inmigrate", "inmigrate", "running"]


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 (the oracle) is not installed")
def test_info_migrate_of_a_waiting_destination_is_qemus(tiny: list[str]) -> None:
    def info(vmm: str) -> str:
        port = free_port()
        with launch(vmm, [*tiny, "-incoming", f"tcp:127.0.0.1:{port}"]) as dst:
            text = dst.hmp("info migrate").replace(str(port), "PORT")
        return text[text.find("socket address"):]  # after QEMU's internal globals

    assert info("kvmpy") == info("qemu")
