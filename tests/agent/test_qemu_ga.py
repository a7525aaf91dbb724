"""Debian's qemu-ga (Debian 13, riscv64) answers ``vm.guest`` exactly as kvmpy-ga does.

The same guest (bundled kernel and initramfs) boots twice: once with kvmpy-ga on the agent
port, once with qemu-ga there instead (see qemu_ga.py); the same exec and file calls go to
both, and their results (return codes, output, truncation, error texts, file contents, OS
facts, network interfaces but for their packet counts) must be equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmpy import guests
from kvmpy.guest_agent import GuestAgent, GuestAgentCommandError
from kvmpy.process import ProcessVM
from kvmpy.vm import VM

from . import qemu_ga
from .test_bundled_agent import NIC_ARGS, leased_interfaces

BOOT_TIMEOUT = 180.0
BLOB = bytes(range(256)) * 1200 + hashlib.sha256(b"kvmpy").digest()


@pytest.fixture(scope="module")
def qemu_ga_initrd() -> Path:
    try:
        return qemu_ga.initrd()
    except qemu_ga.Unavailable as exc:
        pytest.skip(str(exc))


def outcome(call: Callable[[], Any]) -> Any:
    """A call's value, or its agent error as (class, text)."""
    try:
        return call()
    except GuestAgentCommandError as exc:
        return ("error", exc.error_class, exc.desc)


def summary(data: bytes) -> Any:
    """Small output as is, big output as its size and digest (a readable difference)."""
    return data if len(data) <= 4096 else (len(data), hashlib.sha256(data).hexdigest())


def run(guest: GuestAgent, argv: list[str], **kwargs: Any) -> Any:
    def call() -> Any:
        result = guest.exec(argv, timeout=120, **kwargs)
        return (result.returncode, summary(result.stdout), summary(result.stderr),
                result.stdout_truncated, result.stderr_truncated)
    return outcome(call)


def round_trip(guest: GuestAgent) -> Any:
    guest.write_file("/tmp/blob", BLOB, chunk_size=100_000)
    mode = guest.exec(["stat", "-c", "%a %s", "/tmp/blob"]).stdout
    return mode, summary(guest.read_file("/tmp/blob", chunk_size=70_000))


def interfaces(guest: GuestAgent) -> Any:
    """The interfaces once eth0 is leased, statistics by their names (the counts differ; qemu-ga
    orders the keys as its hash table has them)."""
    found = leased_interfaces(guest, BOOT_TIMEOUT)
    return [{**i, "statistics": sorted(i["statistics"])} if "statistics" in i else i
            for i in found]


SCENARIOS: dict[str, Callable[[GuestAgent], Any]] = {
    "status and both streams": lambda g: run(g, ["sh", "-c", "echo out; echo err >&2; exit 3"]),
    "exit 255": lambda g: run(g, ["sh", "-c", "exit 255"]),
    "binary stdin": lambda g: run(g, ["cat"], input=BLOB),
    "no stdin": lambda g: run(g, ["wc", "-c"]),
    "PATH search": lambda g: run(g, ["busybox", "echo", "found"]),
    "environment inherited": lambda g: run(g, ["env"]),
    "environment replaced": lambda g: run(g, ["env"], env={"A": "1", "B": "two words"}),
    "SIGKILL": lambda g: run(g, ["sh", "-c", "kill -KILL $$"]),
    "SIGTERM": lambda g: run(g, ["sh", "-c", "kill -TERM $$"]),
    "output cut at 16 MiB": lambda g: run(g, ["sh", "-c", "head -c 17000000 /dev/zero"]),
    "output not captured": lambda g: run(g, ["echo", "lost"], capture_output=False),
    "stderr merged": lambda g: run(g, ["sh", "-c", "echo 1; echo 2 >&2; echo 3"],
                                   capture_output="merged"),
    "stderr only": lambda g: run(g, ["sh", "-c", "echo 1; echo 2 >&2"], capture_output="stderr"),
    "no such program": lambda g: run(g, ["/no/such/program"]),
    "no such file": lambda g: outcome(lambda: g.read_file("/no/such/file")),
    "file round trip": lambda g: outcome(lambda: round_trip(g)),
    "/proc file": lambda g: outcome(lambda: g.read_file("/proc/sys/kernel/ostype")),
    "osinfo": lambda g: outcome(g.osinfo),
    "network interfaces": lambda g: outcome(lambda: interfaces(g)),
}


def answers(vm: Any) -> tuple[str, dict[str, Any]]:
    vm.guest.wait_ready(BOOT_TIMEOUT)
    version = str(vm.guest.info()["version"])
    results = {name: scenario(vm.guest) for name, scenario in SCENARIOS.items()}
    vm.guest.shutdown()
    assert vm.wait(60) == 0, "guest-shutdown powers the guest off"
    return version, results


def test_qemu_ga_answers_as_kvmpy_ga(qemu_ga_initrd: Path) -> None:
    options: dict[str, Any] = {"machine": "virt", "memory": "256M", "agent": True,
                               "kernel": str(guests.kernel_path()), "extra_args": NIC_ARGS}
    with VM(initrd=str(guests.initrd_path()), **options) as vm:
        kvmpy_version, kvmpy_answers = answers(vm)
    with ProcessVM(initrd=str(qemu_ga_initrd), **options) as vm:
        qemu_version, qemu_answers = answers(vm)
    assert kvmpy_version.startswith("kvmpy-ga ")
    assert qemu_version[:1].isdigit(), f"not qemu-ga: {qemu_version}"  # e.g. 10.0.13
    for name in SCENARIOS:
        assert kvmpy_answers[name] == qemu_answers[name], name
    # Equal, and right: not the same failure twice.
    assert kvmpy_answers["SIGKILL"][0] == -9
    assert kvmpy_answers["output cut at 16 MiB"][1][0] == 16 << 20
    assert kvmpy_answers["output cut at 16 MiB"][3] is True
    assert kvmpy_answers["binary stdin"] == (0, summary(BLOB), b"", False, False)
    assert kvmpy_answers["file round trip"] == (f"666 {len(BLOB)}\n".encode(), summary(BLOB))
    assert kvmpy_answers["no such program"][0] == "error"
    eth0 = next(i for i in kvmpy_answers["network interfaces"] if i["name"] == "eth0")
    assert eth0["hardware-address"] == "52:54:00:12:34:56"
    assert eth0["ip-addresses"] == [
        {"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24}]
