"""The command line: options into VMConfig, help from the registry, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmpy import qom
from kvmpy.cli import icount_supported, main, parse_command_line, smp_topology
from kvmpy.config import VMConfig
from kvmpy.errors import ConfigError
from kvmpy.registry_init import load_types
from kvmpy.system import accel_types

MiB = 1 << 20
GiB = 1 << 30


def config_of(*argv: str) -> VMConfig:
    result = parse_command_line(list(argv))
    assert result.output is None
    return result.config


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# -- options into the configuration ---------------------------------------------------------

def test_machine_options_merge_across_repeats() -> None:
    config = config_of("-M", "virt,aclint=on", "-machine", "dumpdtb=x.dtb", "-M", "aclint=off")
    assert config.machine == "virt"
    assert config.machine_props == {"aclint": "off", "dumpdtb": "x.dtb"}


def test_accel_order_is_fallback_order() -> None:
    load_types()
    names = [cls.name for cls in accel_types()]
    argv: list[str] = []
    for name in names:
        argv += ["-accel", name]
    config = config_of(*argv, "-enable-kvm")
    assert [a.driver for a in config.accels] == [*names, "kvm"]
    assert config.accels[-1].text == "-enable-kvm"


@pytest.mark.parametrize(("arg", "size"), [
    ("512", 512 * MiB), ("1G", GiB), ("1.5G", 3 * GiB // 2), ("size=2G", 2 * GiB),
    ("256M", 256 * MiB), ("2048k", 2 * MiB), ("1,,", None),
])
def test_memory_sizes(arg: str, size: int | None) -> None:
    if size is None:
        with pytest.raises(ConfigError):
            config_of("-m", arg)
        return
    assert config_of("-m", arg).ram_size == size


def test_last_memory_size_wins() -> None:
    assert config_of("-m", "2G,size=1G").ram_size == GiB


@pytest.mark.parametrize(("values", "cpus", "sockets", "cores", "threads", "maxcpus"), [
    ({}, 1, 1, 1, 1, 1),
    ({"cpus": 4}, 4, 1, 4, 1, 4),
    ({"cpus": 4, "sockets": 2}, 4, 2, 2, 1, 4),
    ({"cpus": 8, "sockets": 2, "cores": 2}, 8, 2, 2, 2, 8),
    ({"cpus": 4, "cores": 2}, 4, 2, 2, 1, 4),
    ({"sockets": 2, "cores": 2, "threads": 2}, 8, 2, 2, 2, 8),
    ({"cpus": 2, "maxcpus": 8}, 2, 1, 8, 1, 8),
])
def test_smp_topology(values: dict[str, int], cpus: int, sockets: int, cores: int,
                      threads: int, maxcpus: int) -> None:
    smp = smp_topology(values)
    assert (smp.cpus, smp.sockets, smp.cores, smp.threads, smp.maxcpus) == \
        (cpus, sockets, cores, threads, maxcpus)


def test_smp_implied_cpus() -> None:
    assert config_of("-smp", "4").smp.cpus == 4
    assert config_of("-smp", "2,cpus=3").smp.cpus == 3


def test_boot_options() -> None:
    config = config_of("-bios", "none", "-kernel", "Image", "-initrd", "rd.cpio",
                       "-append", "console=ttyS0 earlycon", "-dtb", "board.dtb")
    assert (config.bios, config.kernel, config.initrd, config.append, config.dtb) == \
        ("none", "Image", "rd.cpio", "console=ttyS0 earlycon", "board.dtb")


def test_flags() -> None:
    config = config_of("-S", "-no-reboot", "-no-shutdown", "-daemonize", "-pidfile", "p",
                       "-name", "guest=vm1,debug-threads=on",
                       "-d", "guest_errors,unimp", "-D", "log.txt", "-display", "none")
    assert config.start_paused and config.no_reboot and config.no_shutdown
    assert config.daemonize and config.pidfile == "p" and config.name == "vm1"
    assert config.log_items == ["guest_errors", "unimp"] and config.log_file == "log.txt"
    assert config.display == "none"


def test_icount(capsys: pytest.CaptureFixture[str]) -> None:
    if icount_supported():
        assert config_of("-icount", "shift=3").icount_shift == 3
        assert config_of("-icount", "4,align=off").icount_shift == 4
    else:
        status, _, err = run_main(capsys, "-icount", "shift=3")
        assert status == 1
        assert err == "kvmpy: -icount shift=3: -icount is not built in this version of kvmpy\n"


def test_double_dash_options() -> None:
    assert config_of("--machine", "virt", "--nographic").machine == "virt"


def test_nographic_defaults_to_mon_stdio() -> None:
    config = config_of("-nographic")
    assert config.serial == ["mon:stdio"] and config.monitor == []


def test_nographic_with_own_serial_puts_the_monitor_on_stdio() -> None:
    config = config_of("-nographic", "-serial", "pty")
    assert config.serial == ["pty"] and config.monitor == ["stdio"]


def test_nographic_with_qmp_keeps_serial_on_stdio() -> None:
    config = config_of("-nographic", "-qmp", "unix:q.sock,server=on,wait=off")
    assert config.serial == ["stdio"] and config.monitor == []
    assert config.qmp == [("unix:q.sock,server=on,wait=off", False)]


def test_without_nographic_defaults_go_to_the_virtual_console() -> None:
    config = config_of("-display", "none")
    assert config.serial == ["vc"] and config.monitor == ["vc"]


def test_nodefaults_and_serial_none() -> None:
    assert config_of("-nodefaults", "-nographic").serial == []
    config = config_of("-serial", "none", "-serial", "null", "-monitor", "none")
    assert config.serial == ["null"] and config.monitor == []


def test_chardev_and_mon() -> None:
    config = config_of("-chardev", "socket,id=mon0,path=m.sock,server=on,wait=off",
                       "-mon", "chardev=mon0,mode=control,pretty=on",
                       "-serial", "chardev:mon0", "-qmp-pretty", "null")
    spec = config.chardevs[0]
    assert spec.driver == "socket" and spec.props["id"] == "mon0"
    assert spec.props["server"] == "on" and spec.props["wait"] == "off"
    assert config.mon[0].driver == "mon0" and config.mon[0].props["mode"] == "control"
    assert config.qmp == [("null", True)]


def test_device_and_drive() -> None:
    config = config_of("-drive", "if=none,id=hd0,file=disk.img,format=raw",
                       "-device", "virtio-blk-device,drive=hd0")
    assert config.drives[0].driver == "hd0" and config.drives[0].props["file"] == "disk.img"
    assert config.devices[0].driver == "virtio-blk-device"
    assert config.devices[0].props == {"drive": "hd0"}
    assert config.devices[0].text == "-device virtio-blk-device,drive=hd0"


# -- help, answered from the registry ---------------------------------------------------------

def test_machine_help_lists_registered_machines(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_main(capsys, "-M", "help")
    assert status == 0 and err == ""
    assert out.startswith("Supported machines are:\n")
    from kvmpy.machine import machine_types
    for cls in machine_types():
        assert f"\n{cls.name:<20} {cls.desc}" in out


def test_machine_property_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(capsys, "-M", "virt,help")
    assert status == 0
    from kvmpy.machine import find_machine_class
    cls = find_machine_class("virt")
    assert cls is not None
    info = qom.type_info(cls.type_name)
    assert info is not None
    assert out.startswith(f"{info.name} options:\n")
    for name in info.properties:
        assert f"  {name}=" in out
    status, out, _ = run_main(capsys, "-M", "virt", "-M", "help")
    assert out.startswith(f"{info.name} options:\n")
    status, out, _ = run_main(capsys, "-M", "virt,kernel=help")
    assert out.splitlines()[1].startswith("  kernel=") and len(out.splitlines()) == 2


@pytest.mark.parametrize("arg", ["help", "?"])
def test_accel_help(capsys: pytest.CaptureFixture[str], arg: str) -> None:
    status, out, _ = run_main(capsys, "-accel", arg)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "Accelerators supported in QEMU binary:"
    assert sorted(lines[1:]) == sorted(cls.name for cls in accel_types())


def test_device_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(capsys, "-device", "help")
    assert status == 0
    from kvmpy.hw.core import Device
    for info in qom.object_class_get_list("device"):
        if issubclass(info.cls, Device) and info.cls.user_creatable:
            assert f'name "{info.name}"' in out
    status, out, _ = run_main(capsys, "-device", "virtio-rng-device,help")
    assert status == 0 and out.startswith("virtio-rng-device options:\n")


def test_chardev_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(capsys, "-chardev", "help")
    assert status == 0
    names = out.splitlines()[1:]
    for backend in ("stdio", "file", "null", "socket", "pty", "ringbuf", "mux"):
        assert f"  {backend}" in names
    status, out, _ = run_main(capsys, "-chardev", "socket,help")
    assert status == 0 and "  server=<bool>" in out and "  wait=<bool>" in out


def test_cpu_and_log_and_smp_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(capsys, "-cpu", "help")
    assert status == 0 and "rv64" in out.split()
    status, out, _ = run_main(capsys, "-d", "help")
    assert status == 0 and out.startswith("Log items (comma separated):\n")
    assert "\nguest_errors    log when the guest OS" in out
    status, out, _ = run_main(capsys, "-smp", "help")
    assert status == 0 and "  cpus=<num>" in out


def test_version_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(capsys, "-version")
    assert status == 0 and out.startswith("kvmpy emulator version ")
    for flag in ("-h", "-help", "--help"):
        status, out, _ = run_main(capsys, flag)
        assert status == 0 and "usage: kvmpy [options]" in out
        for option in ("-machine", "-accel", "-smp", "-m ", "-kernel", "-serial", "-qmp",
                       "-chardev", "-nographic", "-d item1", "-no-reboot", "-icount"):
            assert f"\n{option}" in out


# -- user errors: one line, status 1 -----------------------------------------------------------

ERRORS = [
    (["-foo"], "kvmpy: -foo: invalid option"),
    (["-m"], "kvmpy: -m: requires an argument"),
    (["-m", "12X"], "kvmpy: -m 12X: Parameter 'size' expects a non-negative number below 2^64"),
    (["-m", "-1"], "kvmpy: -m -1: Parameter 'size' expects a non-negative number below 2^64"),
    (["-m", "1.5"], "kvmpy: -m 1.5: Parameter 'size' expects a non-negative number below 2^64"),
    (["-m", "size="], "kvmpy: -m size=: Parameter 'size' expects a non-negative number "
                      "below 2^64"),
    (["-m", "foo=1"], "kvmpy: -m foo=1: Invalid parameter 'foo'"),
    (["-m", "1G,slots=x"], "kvmpy: -m 1G,slots=x: Parameter 'slots' expects a number"),
    (["-M", "virt,aclint"], "kvmpy: -M virt,aclint: Expected '=' after parameter 'aclint'"),
    (["-M", ",virt"], "kvmpy: -M ,virt: Invalid parameter ''"),
    (["-M", "help,virt"], "kvmpy: -M help,virt: Expected '=' after parameter 'virt'"),
    (["-smp", "x"], "kvmpy: -smp x: Parameter 'smp.cpus' expects integer"),
    (["-smp", "cpus=2,foo=1"], "kvmpy: -smp cpus=2,foo=1: Parameter 'smp.foo' is unexpected"),
    (["-smp", "cpus=2,sockets=x"], "kvmpy: -smp cpus=2,sockets=x: Parameter 'smp.sockets' "
                                   "expects integer"),
    (["-smp", "4,sockets=3,cores=2"], "kvmpy: -smp 4,sockets=3,cores=2: Invalid CPU topology: "
                                      "product of the hierarchy must match maxcpus: sockets "
                                      "(3) * cores (2) * threads (0) != maxcpus (4)"),
    (["-accel", "nosuch"], "kvmpy: -accel nosuch: invalid accelerator nosuch"),
    (["-accel", "kvm,foo=1"], "kvmpy: -accel kvm,foo=1: Property 'kvm-accel.foo' not found"),
    (["-accel", "thread=single"], "kvmpy: -accel thread=single: Parameter 'accel' is missing"),
    (["-cpu", "nosuch"], "kvmpy: -cpu nosuch: unable to find CPU model 'nosuch'"),
    (["-device", "nosuch"], "kvmpy: -device nosuch: 'nosuch' is not a valid device model name"),
    (["-device", "id=x"], "kvmpy: -device id=x: Parameter 'driver' is missing"),
    (["-device", "virtio-rng-device,foo=1"], "kvmpy: -device virtio-rng-device,foo=1: Property "
                                             "'virtio-rng-device.foo' not found"),
    (["-device", "virtio-rng-device,,x"], "kvmpy: -device virtio-rng-device,,x: "
                                          "'virtio-rng-device,x' is not a valid device model "
                                          "name"),
    (["-chardev", "null"], "kvmpy: -chardev null: chardev: no id specified"),
    (["-chardev", "nosuch,id=a"], "kvmpy: -chardev nosuch,id=a: 'nosuch' is not a valid char "
                                  "driver name"),
    (["-chardev", "null,id=a,foo=1"], "kvmpy: -chardev null,id=a,foo=1: Invalid parameter "
                                      "'foo'"),
    (["-chardev", "null,id=a", "-chardev", "null,id=a"],
     "kvmpy: -chardev null,id=a: Duplicate ID 'a' for chardev"),
    (["-chardev", "null,id=1a"], "kvmpy: -chardev null,id=1a: Parameter 'id' expects an "
                                 "identifier"),
    (["-serial", "nosuch"], "kvmpy: -serial nosuch: 'nosuch' is not a valid char driver"),
    (["-serial", "file:"], "kvmpy: -serial file:: Could not open '': No such file or directory"),
    (["-serial", "null,foo=1"], "kvmpy: -serial null,foo=1: 'null,foo=1' is not a valid char "
                                "driver"),
    (["-serial", "unix:/tmp/x.sock,bogus=1"], "kvmpy: -serial unix:/tmp/x.sock,bogus=1: "
                                              "Invalid parameter 'bogus'"),
    (["-serial", "tcp:1234"], "kvmpy: -serial tcp:1234: 'tcp:1234' is not a valid char driver "
                              "(tcp:[HOST]:PORT)"),
    (["-mon", "chardev=zz"], "kvmpy: -mon chardev=zz: chardev \"zz\" not found"),
    (["-mon", "foo,mode=xx"], "kvmpy: -mon foo,mode=xx: Parameter 'mode' does not accept value "
                              "'xx'"),
    (["-icount", "foo"], "kvmpy: -icount foo: icount: Invalid shift value"),
    (["-icount", "shift=11"], "kvmpy: -icount shift=11: icount: Invalid shift value"),
    (["-display", "xyz"], "kvmpy: -display xyz: Parameter 'type' does not accept value 'xyz'"),
    (["-display", "none,x=y"], "kvmpy: -display none,x=y: Parameter 'x' is unexpected"),
    (["-nographic", "-daemonize"], "kvmpy: -nographic cannot be used with -daemonize"),
    (["-d", "nosuch"], "kvmpy: -d nosuch: unknown log item 'nosuch' (-d help lists them)"),
    (["-name", "vm,foo=1"], "kvmpy: -name vm,foo=1: Invalid parameter 'foo'"),
    (["-M", "virt,accel=kvm", "-accel", "kvm"],
     "kvmpy: The -accel and \"-machine accel=\" options are incompatible"),
    (["-drive", "if=ide,file=x"], "kvmpy: -drive if=ide,file=x: -drive if=ide is not built in "
     "kvmpy; use if=virtio, or if=none,id=ID with -device virtio-blk-pci,drive=ID"),
]


@pytest.mark.parametrize(("argv", "message"), ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_user_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str],
                                  message: str) -> None:
    status, out, err = run_main(capsys, *argv)
    assert status == 1
    assert out == ""
    assert err == message + "\n"


NOT_BUILT = [["-netdev", "vde,id=n0"],
             ["-drive", "file=disk.img,if=scsi"], ["disk.img"], ["-display", "gtk"],
             ["-vga", "std"],
             ["-icount", "shift=auto"], ["-d", "trace:foo*"],
             ["-serial", "pipe:/tmp/p"], ["-m", "1G,slots=2,maxmem=4G"]]


@pytest.mark.parametrize("argv", NOT_BUILT, ids=[" ".join(a) for a in NOT_BUILT])
def test_not_built_options_say_so(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, err = run_main(capsys, *argv)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"kvmpy: {' '.join(argv)}: ")
    assert "not built" in err


def test_bad_log_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_main(capsys, "-d", "guest_errors", "-D", "/nonexistent/dir/log",
                              "-M", "virt")
    assert status == 1
    assert err.startswith("kvmpy: -D /nonexistent/dir/log: could not open log file")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("argv", "error"), [
    (["-m", "12X"], "kvmpy: -m 12X: "), (["-foo"], "kvmpy: -foo: invalid option"),
    (["-chardev", "null"], "kvmpy: -chardev null: "), (["-M", "virt,aclint"], "kvmpy: -M "),
    (["-serial", "file:/nonexistent/dir/out"], "kvmpy: -serial file:/nonexistent/dir/out: "),
])
def test_no_traceback_from_the_real_command(argv: list[str], error: str) -> None:
    """Parse errors are the only line; errors found while building the VM come last, after
    at most the one-line notices (an accelerator fallback)."""
    proc = subprocess.run([sys.executable, "-m", "kvmpy", "-M", "virt", *argv],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert all(line.startswith("kvmpy: ") for line in lines)
    assert lines[-1].startswith(error)


def test_help_from_the_real_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "kvmpy", "-M", "help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("Supported machines are:")


def test_log_items_go_to_the_log_file(tmp_path: Path) -> None:
    from kvmpy import log

    path = tmp_path / "kvmpy.log"
    path.write_text("old\n")
    log.configure(["guest_errors"], str(path))
    try:
        log.guest_error("write to unassigned address 0x1234")
        log.unimp("not enabled, not written")
    finally:
        log.configure([])
    assert path.read_text() == "write to unassigned address 0x1234\n"
    assert not log.is_enabled("guest_errors")


@settings(max_examples=150, deadline=None)
@given(argv=st.lists(st.sampled_from(
    ["-M", "virt", "help", "-m", "1G", "12X", "-smp", "x", "-accel", "tcg", "-chardev",
     "null", "null,id=a", "-serial", "-device", "virtio-rng-device", "-d", "int", "-foo",
     ",", ",,", "=", "-S", "-nographic", "-daemonize", "-mon", "a", "-icount", "-version"]),
    max_size=6))
def test_random_command_lines_never_trace_back(argv: list[str]) -> None:
    """Whatever the words, parsing ends in a configuration, text to print or a ConfigError."""
    try:
        parse_command_line(argv)
    except ConfigError as exc:
        assert "\n" not in str(exc)
