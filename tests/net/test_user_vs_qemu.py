"""``-netdev user`` option errors and ``info usernet`` against qemu-system-riscv64 7.2 (the
oracle) on the same option strings.  Every QEMU here runs with ``restrict=on`` and
``-S -nodefaults``: no guest code runs and nothing leaves the machine."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from kvmpy.cli import format_error
from kvmpy.config import VMConfig
from kvmpy.errors import ConfigError
from kvmpy.net import options, setup
from kvmpy.net import slirp as slirp_wrapper
from kvmpy.net.user import UserNetdev

QEMU = shutil.which("qemu-system-riscv64")
pytestmark = [pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 is not installed"),
              pytest.mark.timeout(120)]

try:
    slirp_wrapper.load()
except OSError:
    pytest.skip("libslirp0 is not installed", allow_module_level=True)

BAD_OPTIONS = [
    "hostfwd=bogus", "hostfwd=icmp::1-:2", "hostfwd=tcp:1", "hostfwd=tcp:1.2.3.4.5:1-:2",
    "hostfwd=tcp::1:2", "hostfwd=tcp::x-:2", "hostfwd=tcp::65536-:2", "hostfwd=tcp::-1-:2",
    "hostfwd=tcp::1-2", "hostfwd=tcp::1-10.0.2.256:2", "hostfwd=tcp::1-:0", "hostfwd=tcp::1-:",
    "hostfwd=tcp::1-:22x", "hostfwd=tcp::1-:2 2", "hostfwd=tcp::0x10000-:2",
    "hostfwd=udp:localhost:1-:2",
    "guestfwd=bad", "guestfwd=tcp:10.0.2.100:0-cmd:cat", "guestfwd=tcp:10.0.2.2:80-cmd:cat",
    "foo=bar", "restrict=maybe", "ipv4=off,ipv6=off", "ipv6=on,net=10.0.3.0/24",
    "net=10.0.3.0/33", "net=10.0.3.0/3", "net=nonsense",
    "net=10.0.3.0/255.255.x", "net=10.0.3.0/ 24,host=10.0.3.200,dhcpstart=10.0.2.15",
    "host=10.0.3.2", "host=x", "dns=x", "dns=10.0.2.2", "dns=8.8.8.8",
    "dhcpstart=10.0.3.15", "dhcpstart=10.0.2.3", "dhcpstart=", "smbserver=x",
    "ipv6-prefix=x", "ipv6-prefixlen=127", "ipv6-prefixlen=abc", "ipv6-net=fec0::/x",
    "ipv6-host=fec1::2", "ipv6-dns=fec1::3", "domainname=", "hostname=" + "h" * 256,
    "smb=/nonexistent-dir",
]


def qemu_error(arg: str) -> str:
    """QEMU's first error line for ``-netdev ARG``, as kvmpy would print it."""
    assert QEMU is not None
    result = subprocess.run([QEMU, "-M", "virt", "-S", "-display", "none", "-nodefaults",
                             "-netdev", arg], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    line = result.stderr.splitlines()[0]
    assert line.startswith("qemu-system-riscv64: "), line
    return "kvmpy: " + line[len("qemu-system-riscv64: "):]


def kvmpy_error(arg: str) -> str:
    """kvmpy's error line for ``-netdev ARG``: the command line's parsing, then the back-end
    opened as the System opens it."""
    config = VMConfig()
    with pytest.raises(ConfigError) as info:
        try:
            options.add_netdev(config, arg, f"-netdev {arg}")
        except ConfigError as exc:
            exc.option = exc.option or f"-netdev {arg}"
            raise
        setup.close_netdevs(setup.open_netdevs(config.netdevs))
    return format_error(info.value)


@pytest.mark.parametrize("bad", BAD_OPTIONS)
def test_option_error_is_qemus(bad: str) -> None:
    if bad.startswith("smb=") and shutil.which("smbd", path="/usr/sbin"):
        pytest.skip("smbd is installed")
    arg = f"user,id=n0,restrict=on,{bad}"
    assert kvmpy_error(arg) == qemu_error(arg)


def test_repeated_rules_are_all_set_up() -> None:
    # The second rule is bad: QEMU (and kvmpy) only see it if every repetition is kept.
    arg = "user,id=n0,restrict=on,hostfwd=tcp::0-:22,hostfwd=bogus,guestfwd=tcp::1-cmd:x"
    assert kvmpy_error(arg) == qemu_error(arg)


def test_info_usernet_lines_are_qemus() -> None:
    """The same rules, port 0 everywhere: equal apart from the FD and the chosen ports."""
    rules = ["tcp:127.0.0.1:0-:22", "udp:127.0.0.1:0-:53", "tcp::0-10.0.2.20:80"]
    text = "user,id=n0,restrict=on," + ",".join(f"hostfwd={rule}" for rule in rules)
    assert QEMU is not None
    qemu = subprocess.run([QEMU, "-M", "virt", "-S", "-display", "none", "-nodefaults",
                           "-netdev", text, "-monitor", "stdio"], input="info usernet\nquit\n",
                          capture_output=True, text=True, timeout=30)
    out = qemu.stdout.replace("\r", "")
    out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)
    qemu_lines = out[out.index("Hub -1"):].split("\n(qemu)")[0].splitlines()
    netdev = UserNetdev("n0", {"restrict": "on", "hostfwd": rules[-1]}, {"hostfwd": rules})
    try:
        ours = netdev.connection_info().splitlines()
    finally:
        netdev.close()

    def normal(line: str) -> str:   # FD (cols 20-23) and host port (cols 40-45) vary
        if not line.startswith(("  TCP[", "  UDP[")):
            return line
        return line[:20] + "FD " + line[23:40] + "PORT " + line[45:]

    assert [normal(line) for line in ours] == [normal(line) for line in qemu_lines]
