"""The options libvirt generates, on kvmpy without libvirt: what they do, and bad values refused
with qemu-system-riscv64 7.2's own line (compared with the installed QEMU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmpy.cli import parse_command_line
from kvmpy.errors import ConfigError

from ..support import kvmpy_env

QEMU = shutil.which("qemu-system-riscv64")

BAD = [
    ["-uuid", "xyz"],
    ["-overcommit", "mem-lock=maybe"],
    ["-overcommit", "foo=on"],
    ["-rtc", "foo=1"],
    ["-boot", "strict=maybe"],
    ["-boot", "foo=1"],
    ["-audiodev", "none"],
    ["-audiodev", "driver=bogus,id=a"],
    ["-msg", "timestamp=maybe"],
    ["-msg", "foo=on"],
    ["-sandbox", "maybe"],
    ["-object", "bogus,id=x"],
    ["-object", "secret,id=s"],
    ["-object", "secret,id=s,data=abc,format=raw,foo=1"],
    ["-object", "memory-backend-ram,id=m"],
    ["-object", "memory-backend-ram,id=m,size=1M,foo=1"],
    ["-object", '{"qom-type":"memory-backend-ram","id":"m","size":1024,"bad":1}'],
    ["-object", "rng-random,id=r,filename=/nonexistent"],
    ["-machine", "none,usb=maybe"],
    ["-mon", "chardev=x,id=m,mode=control"],
    ["-object", "secret,id=a,data=x", "-object", "secret,id=a,data=y"],
    ["-kernel", "/etc/hostname"],
]


def _error_line(argv: list[str], program: list[str], env: dict[str, str] | None) -> str:
    done = subprocess.run([*program, "-M", "none", "-nodefaults", "-display", "none", *argv],
                          capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    return done.stderr.splitlines()[-1].split(": ", 1)[1]  # after any notice lines


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 is not installed")
@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a) for a in BAD])
def test_bad_values_are_refused_as_qemu_refuses_them(argv: list[str]) -> None:
    assert QEMU is not None
    expected = _error_line(argv, [QEMU], None)
    assert _error_line(argv, [sys.executable, "-m", "kvmpy"], kvmpy_env()) == expected


def test_libvirt_9_and_11_forms_of_object_give_the_same_configuration(tmp_path: Path) -> None:
    key = tmp_path / "master-key.aes"
    key.write_bytes(bytes(range(32)))
    legacy = parse_command_line([
        "-object", f"secret,id=masterKey0,format=raw,file={key}",
        "-machine", "virt,usb=off,dump-guest-core=off,memory-backend=riscv_virt_board.ram",
        "-object", "memory-backend-ram,id=riscv_virt_board.ram,size=268435456",
        "-object", "rng-random,id=objrng0,filename=/dev/urandom"]).config
    as_json = parse_command_line([
        "-object", json.dumps({"qom-type": "secret", "id": "masterKey0", "format": "raw",
                               "file": str(key)}),
        "-machine", "virt,usb=off,dump-guest-core=off,memory-backend=riscv_virt_board.ram",
        "-object", json.dumps({"qom-type": "memory-backend-ram",
                               "id": "riscv_virt_board.ram", "size": 268435456}),
        "-object", json.dumps({"qom-type": "rng-random", "id": "objrng0",
                               "filename": "/dev/urandom"})]).config
    for config in (legacy, as_json):
        assert config.objects["masterKey0"].value == bytes(range(32))
        assert config.ram_size == 256 << 20  # from the backend, without -m
        assert config.objects["objrng0"].props["filename"] == "/dev/urandom"
    assert legacy.objects.keys() == as_json.objects.keys()


def test_memory_backend_checks() -> None:
    base = ["-object", "memory-backend-ram,id=ram0,size=64M"]
    assert parse_command_line([*base, "-m", "64", "-M", "virt,memory-backend=ram0"]
                              ).config.ram_size == 64 << 20
    with pytest.raises(ConfigError, match=r"^Machine memory size does not match the size of "
                       r"the memory backend$"):
        parse_command_line([*base, "-m", "128", "-M", "virt,memory-backend=ram0"])
    with pytest.raises(ConfigError, match=r"^Memory backend 'nope' not found$"):
        parse_command_line([*base, "-M", "virt,memory-backend=nope"])
    assert parse_command_line(["-object", "memory-backend-memfd,id=m,size=64M",
                               "-M", "virt,memory-backend=m"]).config.ram_size == 64 << 20


def test_probe_command_line_and_machine_none() -> None:
    """libvirt's probe: -nographic with -daemonize is fine when -nodefaults leaves no default
    device on stdio (and refused, as by QEMU, when it does not)."""
    config = parse_command_line(["-S", "-no-user-config", "-nodefaults", "-nographic",
                                 "-machine", "none,accel=kvm:tcg", "-daemonize"]).config
    assert config.machine == "none" and config.daemonize
    with pytest.raises(ConfigError, match=r"^-nographic cannot be used with -daemonize$"):
        parse_command_line(["-nographic", "-daemonize"])


def test_a_libvirt_11_command_line_starts(tmp_path: Path) -> None:
    """The command line libvirt 11.x writes (every -object as JSON) builds and runs a VM."""
    key = tmp_path / "master-key.aes"
    key.write_bytes(bytes(32))
    argv = [
        "-name", "guest=rv,debug-threads=on", "-S",
        "-object", json.dumps({"qom-type": "secret", "id": "masterKey0", "format": "raw",
                               "file": str(key)}),
        "-machine", "virt,usb=off,dump-guest-core=off,memory-backend=riscv_virt_board.ram",
        "-accel", "tcg", "-m", "256",
        "-object", json.dumps({"qom-type": "memory-backend-ram", "id": "riscv_virt_board.ram",
                               "size": 268435456}),
        "-overcommit", "mem-lock=off", "-smp", "2,sockets=2,cores=1,threads=1",
        "-uuid", "de9dd1ff-0000-4000-8000-000000000001", "-display", "none",
        "-no-user-config", "-nodefaults", "-rtc", "base=utc", "-no-shutdown",
        "-boot", "strict=on",
        "-audiodev", json.dumps({"id": "audio1", "driver": "none"}),
        "-object", json.dumps({"qom-type": "rng-builtin", "id": "objrng0"}),
        "-device", "virtio-rng-device,rng=objrng0,id=rng0",
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-msg", "timestamp=on", "-qmp", "stdio"]
    messages = "\n".join(json.dumps(m) for m in (
        {"execute": "qmp_capabilities"}, {"execute": "query-status"},
        {"execute": "query-uuid"}, {"execute": "cont"}, {"execute": "query-status"},
        {"execute": "quit"})) + "\n"
    done = subprocess.run([sys.executable, "-m", "kvmpy", *argv], input=messages,
                          capture_output=True, text=True, timeout=120, env=kvmpy_env())
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    replies = [r for r in replies if "return" in r or "error" in r]
    assert done.returncode == 0, done.stderr
    assert replies[1]["return"]["status"] == "prelaunch"
    assert replies[2]["return"] == {"UUID": "de9dd1ff-0000-4000-8000-000000000001"}
    assert replies[4]["return"]["status"] == "running"
