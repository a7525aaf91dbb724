"""The guest agent of the bundled guest, for real: kvmpy-ga on the port
org.qemu.guest_agent.0, driven through ``vm.guest`` of ``kvmpy.VM`` and ``kvmpy.ProcessVM``
(``agent=True``): programs with their output, status, input, environment and signals, files in
and out, OS facts, shutdown and reboot.  Also: every console line of the boot comes out once."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from kvmpy import guests
from kvmpy.errors import KvmpyError
from kvmpy.guest_agent import (
    AGENT_PORT_NAME,
    GuestAgent,
    GuestAgentCommandError,
    GuestAgentTimeout,
)

BOOT_TIMEOUT = 180.0


@pytest.fixture(params=[False, True], ids=["VM", "ProcessVM"])
def booted(request: pytest.FixtureRequest, vm_factory: Any) -> Any:
    vm = vm_factory(machine="virt", memory="256M", agent=True, process=request.param)
    vm.guest.wait_ready(BOOT_TIMEOUT)
    return vm


def test_exec_output_status_input_environment_signals(booted: Any) -> None:
    guest: GuestAgent = booted.guest
    result = guest.exec(["sh", "-c", "echo to-out; echo to-err >&2; exit 7"])
    assert (result.returncode, result.stdout, result.stderr) == (7, b"to-out\n", b"to-err\n")
    assert result.args == ["sh", "-c", "echo to-out; echo to-err >&2; exit 7"]
    # stdin: binary, and larger than a pipe holds, so the agent writes it as it is read.
    payload = os.urandom(200_000)
    echoed = guest.exec(["cat"], input=payload)
    assert (echoed.returncode, echoed.stdout) == (0, payload)
    # No input: stdin is /dev/null, so a reader ends at once.
    assert guest.exec(["wc", "-c"]).stdout.split() == [b"0"]
    # env replaces the environment; the program is still found in the agent's PATH.
    env = guest.exec(["env"], env={"KVMPY_A": "1", "KVMPY_B": "two words"})
    assert sorted(env.stdout.splitlines()) == [b"KVMPY_A=1", b"KVMPY_B=two words"]
    assert b"PATH=" in guest.exec(["env"]).stdout
    # Killed by a signal: a negative return code, as subprocess has it.
    assert guest.exec(["sh", "-c", "kill -KILL $$"]).returncode == -9
    assert guest.exec(["sh", "-c", "kill -TERM $$"]).returncode == -15
    # More output than the agent keeps (16 MiB per stream): the rest is cut and flagged.
    big = guest.exec(["sh", "-c", "head -c 17000000 /dev/zero; echo small >&2"], timeout=120)
    assert (len(big.stdout), big.stdout_truncated) == (16 << 20, True)
    assert (big.stderr, big.stderr_truncated) == (b"small\n", False)
    with pytest.raises(GuestAgentCommandError, match="No such file or directory"):
        guest.exec(["/no/such/program"])
    # A program that outlives its timeout: the call ends, the agent goes on.
    with pytest.raises(GuestAgentTimeout, match="still running"):
        guest.exec(["sleep", "30"], timeout=0.5)
    assert guest.exec(["echo", "after"]).stdout == b"after\n"
    # The port was linked by name, as udev does.
    link = guest.exec(["readlink", f"/dev/virtio-ports/{AGENT_PORT_NAME}"]).stdout
    assert re.fullmatch(rb"\.\./vport\d+p\d+\n", link), link


def test_files_round_trip(booted: Any) -> None:
    guest: GuestAgent = booted.guest
    data = os.urandom(700_000) + bytes(range(256))
    guest.write_file("/tmp/blob", data, chunk_size=256 * 1024)
    assert guest.read_file("/tmp/blob", chunk_size=300_000) == data
    digest = guest.exec(["sha256sum", "/tmp/blob"]).stdout.split()[0]
    assert digest.decode() == hashlib.sha256(data).hexdigest()
    guest.write_file("/tmp/empty", b"")
    assert guest.read_file("/tmp/empty") == b""
    assert guest.exec(["stat", "-c", "%a %s", "/tmp/empty"]).stdout == b"666 0\n"
    with pytest.raises(GuestAgentCommandError) as info:
        guest.read_file("/no/such/file")
    assert info.value.desc == ("failed to open file '/no/such/file' (mode: 'r'): "
                               "No such file or directory")


def test_info_osinfo_and_poweroff(booted: Any) -> None:
    guest: GuestAgent = booted.guest
    guest.ping()
    commands = {c["name"] for c in guest.info()["supported_commands"]}
    assert {"guest-exec", "guest-exec-status", "guest-file-open", "guest-shutdown"} <= commands
    osinfo = guest.osinfo()
    assert osinfo["machine"] == "riscv64"
    assert osinfo["kernel-release"] == guests.manifest()["linux.release"]
    assert osinfo["id"] == "kvmpy"
    guest.shutdown()
    assert booted.wait(60) == 0


NIC_ARGS = ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]


def leased_interfaces(guest: GuestAgent, timeout: float = BOOT_TIMEOUT) -> list[dict[str, Any]]:
    """guest-network-get-interfaces once the guest's DHCP client has put an address on eth0
    (it runs in the background after boot)."""
    deadline = time.monotonic() + timeout
    while True:
        interfaces: list[dict[str, Any]] = guest.execute("guest-network-get-interfaces")
        if any(i["name"] == "eth0" and i.get("ip-addresses") for i in interfaces):
            return interfaces
        assert time.monotonic() < deadline, f"eth0 got no address: {interfaces}"
        time.sleep(0.5)


@pytest.mark.parametrize("process", [False, True], ids=["VM", "ProcessVM"])
def test_network_interfaces(vm_factory: Any, process: bool) -> None:
    vm = vm_factory(machine="virt", memory="256M", agent=True, process=process,
                    extra_args=NIC_ARGS)
    vm.guest.wait_ready(BOOT_TIMEOUT)
    commands = {c["name"] for c in vm.guest.info()["supported_commands"]}
    assert "guest-network-get-interfaces" in commands
    interfaces = {i["name"]: i for i in leased_interfaces(vm.guest)}
    assert sorted(interfaces) == ["eth0", "lo"]
    eth0 = interfaces["eth0"]
    assert eth0["hardware-address"] == "52:54:00:12:34:56"
    assert eth0["ip-addresses"] == [
        {"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24}]
    stats = eth0["statistics"]
    assert sorted(stats) == sorted(["rx-bytes", "rx-packets", "rx-errs", "rx-dropped",
                                    "tx-bytes", "tx-packets", "tx-errs", "tx-dropped"])
    assert stats["rx-packets"] > 0 and stats["tx-packets"] > 0  # the DHCP exchange
    assert stats["rx-bytes"] > stats["rx-packets"]
    lo = interfaces["lo"]
    assert lo["hardware-address"] == "00:00:00:00:00:00"
    assert lo["ip-addresses"] == [
        {"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]
    with pytest.raises(GuestAgentCommandError, match="unexpected"):
        vm.guest.execute("guest-network-get-interfaces", {"x": 1})


def test_reboot_and_the_agent_answers_again() -> None:
    from kvmpy.vm import VM

    with VM(machine="virt", memory="256M", agent=True) as vm:
        vm.guest.wait_ready(BOOT_TIMEOUT)
        vm.guest.write_file("/tmp/before-reboot", b"x")
        vm.get_events()
        vm.guest.shutdown("reboot")
        assert vm.event_wait("RESET", timeout=60)["data"]["guest"] is True
        vm.guest.wait_ready(BOOT_TIMEOUT)
        assert vm.guest.exec(["ls", "/tmp"]).stdout == b""  # a new boot: /tmp is empty


def test_every_named_port_is_linked(tmp_path: Path) -> None:
    from kvmpy.vm import VM

    out = tmp_path / "stdout.txt"
    extra = ["-chardev", f"file,id=out,path={out}",
             "-device", "virtserialport,bus=kvmpy-ga-serial.0,chardev=out,name=kvmpy.stdout",
             "-chardev", "null,id=con", "-device", "virtconsole,bus=kvmpy-ga-serial.0,chardev=con"]
    with VM(machine="virt", memory="256M", agent=True, extra_args=extra) as vm:
        vm.guest.wait_ready(BOOT_TIMEOUT)
        listing = vm.guest.exec(["ls", "/dev/virtio-ports"]).stdout
        assert listing.split() == [b"kvmpy.stdout", AGENT_PORT_NAME.encode()]  # not the console
        written = vm.guest.exec(["sh", "-c",
                                 "echo through-the-port >/dev/virtio-ports/kvmpy.stdout"])
        assert written.returncode == 0, written.stderr
        vm.shutdown()
    assert out.read_text() == "through-the-port\n"


def test_a_socket_port_of_ones_own(tmp_path: Path) -> None:
    from kvmpy.vm import VM

    path = tmp_path / "qga.sock"
    args = ["-M", "virt", "-m", "256M",
            "-chardev", f"socket,id=qga0,path={path},server=on,wait=off",
            "-device", "virtio-serial-pci,id=vser0",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]
    with VM(args) as vm:
        vm.guest.wait_ready(BOOT_TIMEOUT)
        assert vm.guest.exec(["echo", "hi"]).stdout == b"hi\n"


def test_a_vm_without_an_agent_port_says_so() -> None:
    from kvmpy.process import ProcessVM
    from kvmpy.vm import VM

    with pytest.raises(KvmpyError, match="no guest agent port"):
        _ = VM(machine="virt").guest
    with ProcessVM(machine="virt", memory="256M") as vm, \
            pytest.raises(KvmpyError, match="no guest agent port"):
        _ = vm.guest


def test_the_plugin_guest_fixture(guest: GuestAgent) -> None:
    assert guest.exec(["uname", "-m"]).stdout == b"riscv64\n"


def test_each_console_line_once() -> None:
    from kvmpy.vm import VM

    with VM(machine="virt", memory="256M") as vm:  # no -append: the built-in command line
        vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
        log = vm.console.log
    assert "Kernel command line: console=ttyS0" in log
    for line in ("Linux version", "Run /init as init process", "Serial: 8250/16550 driver",
                 guests.BANNER):
        assert log.count(line) == 1, f"{line!r} appears {log.count(line)} times"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    kernel_lines = lines[lines.index(next(x for x in lines if x.startswith("Linux version"))):]
    repeated = [a for a, b in itertools.pairwise(kernel_lines) if a == b]
    assert not repeated, repeated
