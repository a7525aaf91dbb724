"""The QMP answers libvirt's capability probe reads, on ``kvmpy -machine none``: the schema is
kvmpy's real command table and events in QEMU's introspection format, checked against the
installed qemu-system-riscv64 7.2's own schema; the QOM questions answer from the registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from kvmpy.monitor.qmp import COMMANDS
from kvmpy.monitor.schema import EVENTS

from ..support import kvmpy_env

QEMU = shutil.which("qemu-system-riscv64")
PROBE = ["-S", "-no-user-config", "-nodefaults", "-nographic", "-machine", "none,accel=kvm:tcg",
         "-qmp", "stdio"]


class Qmp:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env)
        assert "QMP" in json.loads(self.line())
        assert self.cmd("qmp_capabilities") == {"return": {}}

    def line(self) -> str:
        """The next line that is not an event."""
        assert self.proc.stdout is not None
        while True:
            text = self.proc.stdout.readline()
            assert text, "the VMM closed QMP"
            if "event" not in json.loads(text):
                return text

    def cmd(self, name: str, **args: Any) -> Any:
        assert self.proc.stdin is not None
        message: dict[str, Any] = {"execute": name}
        if args:
            message["arguments"] = args
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.line())

    def close(self) -> None:
        self.cmd("quit")
        self.proc.wait(30)


@pytest.fixture(scope="module")
def kvmpy_qmp() -> Iterator[Qmp]:
    qmp = Qmp([sys.executable, "-m", "kvmpy", *PROBE], kvmpy_env())
    yield qmp
    qmp.close()


@pytest.fixture(scope="module")
def qemu_schema() -> list[dict[str, Any]]:
    if QEMU is None:
        pytest.skip("qemu-system-riscv64 is not installed")
    qmp = Qmp([QEMU, *PROBE])
    try:
        schema: list[dict[str, Any]] = qmp.cmd("query-qmp-schema")["return"]
    finally:
        qmp.close()
    return schema


def _members(schema: list[dict[str, Any]], entry: dict[str, Any]) -> dict[str, bool]:
    """Argument name -> optional, of a command or event entry."""
    by_name = {e["name"]: e for e in schema}
    arg_type = by_name[entry["arg-type"]]
    return {m["name"]: "default" in m for m in arg_type.get("members", ())}


def test_schema_is_the_command_table_and_events(kvmpy_qmp: Qmp) -> None:
    schema = kvmpy_qmp.cmd("query-qmp-schema")["return"]
    commands = {e["name"]: e for e in schema if e["meta-type"] == "command"}
    events = {e["name"] for e in schema if e["meta-type"] == "event"}
    assert set(commands) == set(COMMANDS)
    assert events == set(EVENTS)
    listed = {c["name"] for c in kvmpy_qmp.cmd("query-commands")["return"]}
    assert listed == set(commands)
    for name, entry in commands.items():
        members = _members(schema, entry)
        command = COMMANDS[name]
        assert members == {**dict.fromkeys(command.required, False),
                           **dict.fromkeys(command.optional, True)}
    names = [e["name"] for e in schema]
    assert len(names) == len(set(names))
    for entry in schema:
        for key in ("arg-type", "ret-type"):
            if key in entry:
                assert entry[key] in names


def test_schema_agrees_with_qemu(kvmpy_qmp: Qmp, qemu_schema: list[dict[str, Any]]) -> None:
    """Every command and event kvmpy lists is QEMU's (or a kvmpy ``x-`` extension), with
    arguments QEMU has, required where QEMU requires them; builtins are QEMU's."""
    schema = kvmpy_qmp.cmd("query-qmp-schema")["return"]
    qemu = {e["name"]: e for e in qemu_schema if e["meta-type"] in ("command", "event")}
    for entry in schema:
        if entry["meta-type"] == "builtin":
            assert entry in qemu_schema
        if entry["meta-type"] not in ("command", "event"):
            continue
        if entry["name"].startswith("x-") and entry["name"] not in qemu:
            continue
        theirs = qemu[entry["name"]]
        assert theirs["meta-type"] == entry["meta-type"]
        ours, their_members = _members(schema, entry), _members(qemu_schema, theirs)
        for arg, optional in ours.items():
            assert arg in their_members, (entry["name"], arg)
            assert their_members[arg] == optional, (entry["name"], arg)


def test_probe_questions(kvmpy_qmp: Qmp) -> None:
    assert kvmpy_qmp.cmd("query-target") == {"return": {"arch": "riscv64"}}
    assert kvmpy_qmp.cmd("query-version")["return"]["qemu"] == {"micro": 0, "minor": 2,
                                                                "major": 7}
    kvm = kvmpy_qmp.cmd("query-kvm")["return"]
    assert set(kvm) == {"enabled", "present"}
    types = {t["name"] for t in kvmpy_qmp.cmd("qom-list-types")["return"]}
    assert {"tcg-accel", "kvm-accel", "virt-machine", "none-machine", "virtio-mmio",
            "virtio-blk-pci", "virtio-balloon-device", "pcie-root-port", "secret",
            "memory-backend-ram", "rng-random", "rng-builtin"} <= types
    assert "iothread" not in types  # so libvirt sends no query-iothreads
    machines = kvmpy_qmp.cmd("qom-list-types", implements="machine")["return"]
    assert {m["name"] for m in machines} == {"none-machine", "spike-machine", "virt-machine"}
    # qom-list-properties: a list for every name, even one kvmpy lacks (an error there
    # crashes libvirtd 9.0).
    for name in ("memory-backend-file", "memory-backend-memfd", "virt-machine",
                 "none-machine", "no-such-type"):
        reply = kvmpy_qmp.cmd("qom-list-properties", typename=name)
        assert isinstance(reply["return"], list)
    props = {p["name"] for p in kvmpy_qmp.cmd("qom-list-properties",
                                               typename="virt-machine")["return"]}
    assert {"aclint", "aia", "memory-backend", "usb", "dump-guest-core"} <= props
    blk = kvmpy_qmp.cmd("device-list-properties", typename="virtio-blk-pci")["return"]
    assert {"drive", "bootindex", "serial"} <= {p["name"] for p in blk}
    assert kvmpy_qmp.cmd("device-list-properties", typename="vfio-pci") == {
        "error": {"class": "DeviceNotFound", "desc": "Device 'vfio-pci' not found"}}
    options = {o["option"] for o in kvmpy_qmp.cmd("query-command-line-options")["return"]}
    assert {"machine", "object", "sandbox", "blockdev"} <= options
    assert kvmpy_qmp.cmd("query-migrate-capabilities") == {
        "return": [{"state": False, "capability": "events"}]}
    assert kvmpy_qmp.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "events", "state": True}]) == {"return": {}}
    assert kvmpy_qmp.cmd("query-migrate-capabilities")["return"][0]["state"] is True
    assert kvmpy_qmp.cmd("migrate-set-capabilities", capabilities=[
        {"capability": "bogus", "state": True}])["error"]["desc"] == \
        "Parameter 'capability' does not accept value 'bogus'"
    assert kvmpy_qmp.cmd("query-balloon") == {"error": {
        "class": "DeviceNotActive", "desc": "No balloon device has been activated"}}


def _startup_answers(program: list[str], env: dict[str, str] | None,
                     disk: str) -> dict[str, Any]:
    """What libvirt asks at start-up, on a paused virt machine with a qcow2 disk, a balloon
    and a UUID."""
    qmp = Qmp([*program, "-M", "virt", "-m", "256", "-S", "-nodefaults", "-display", "none",
               "-uuid", "6b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e",
               "-blockdev", json.dumps({"driver": "file", "filename": disk,
                                        "node-name": "libvirt-1-storage"}),
               "-blockdev", json.dumps({"node-name": "libvirt-1-format", "driver": "qcow2",
                                        "file": "libvirt-1-storage"}),
               "-device", "virtio-blk-device,drive=libvirt-1-format,id=virtio-disk0",
               "-device", "virtio-balloon-device,id=balloon0", "-qmp", "stdio"], env)
    try:
        out = {
            "peripheral": qmp.cmd("qom-list", path="/machine/peripheral"),
            "block": qmp.cmd("query-block")["return"],
            "uuid": qmp.cmd("query-uuid"),
            "chardev": qmp.cmd("query-chardev"),
            "balloon": qmp.cmd("query-balloon"),
            "balloon-0": qmp.cmd("balloon", value=0),
            "balloon-128M": qmp.cmd("balloon", value=128 << 20),
            "balloon-after": qmp.cmd("query-balloon"),
        }
    finally:
        qmp.close()
    return out


def test_startup_queries_agree_with_qemu(tmp_path: Any) -> None:
    if QEMU is None:
        pytest.skip("qemu-system-riscv64 is not installed")
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    theirs = _startup_answers([QEMU], None, str(disk))
    ours = _startup_answers([sys.executable, "-m", "kvmpy"], kvmpy_env(), str(disk))
    for key in ("uuid", "chardev", "balloon", "balloon-0", "balloon-128M", "balloon-after"):
        assert ours[key] == theirs[key], key

    def by_name(reply: dict[str, Any]) -> list[dict[str, Any]]:
        return sorted(reply["return"], key=lambda p: str(p["name"]))  # QEMU's is a hash's
    assert by_name(ours["peripheral"]) == by_name(theirs["peripheral"])
    [mine], [qemus] = ours["block"], theirs["block"]
    assert mine.keys() == qemus.keys()
    assert mine["inserted"].keys() == qemus["inserted"].keys()
    for key in ("device", "qdev", "removable", "locked", "io-status", "type"):
        assert mine[key] == qemus[key], key
    for key in ("node-name", "ro", "drv", "file", "backing_file_depth", "encrypted"):
        assert mine["inserted"][key] == qemus["inserted"][key], key
    for key in ("virtual-size", "filename", "format", "actual-size", "dirty-flag"):
        assert mine["inserted"]["image"][key] == qemus["inserted"]["image"][key], key
