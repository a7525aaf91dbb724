"""The libslirp cdef against the real ``<slirp/libslirp.h>``: an offsetof/sizeof probe built with
the host's C compiler (Debian ``libslirp-dev``), field by field."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.net import slirp_abi
from kvmpy.net.slirp_abi import ffi

CC = shutil.which("cc") or shutil.which("gcc")
HEADER = Path("/usr/include/slirp/libslirp.h")

FIELDS: dict[str, list[str]] = {
    "SlirpConfig": ["version", "restricted", "in_enabled", "vnetwork", "vnetmask", "vhost",
                    "in6_enabled", "vprefix_addr6", "vprefix_len", "vhost6", "vhostname",
                    "tftp_server_name", "tftp_path", "bootfile", "vdhcp_start", "vnameserver",
                    "vnameserver6", "vdnssearch", "vdomainname", "if_mtu", "if_mru",
                    "disable_host_loopback", "enable_emu", "outbound_addr", "outbound_addr6",
                    "disable_dns", "disable_dhcp"],
    "SlirpCb": ["send_packet", "guest_error", "clock_get_ns", "timer_new", "timer_free",
                "timer_mod", "register_poll_fd", "unregister_poll_fd", "notify",
                "init_completed", "timer_new_opaque"],
    "struct in_addr": ["s_addr"],
}
SIZES = ["SlirpConfig", "SlirpCb", "struct in_addr", "struct in6_addr"]
CONSTANTS = ["SLIRP_POLL_IN", "SLIRP_POLL_OUT", "SLIRP_POLL_PRI", "SLIRP_POLL_ERR",
             "SLIRP_POLL_HUP", "SLIRP_TIMER_RA", "SLIRP_CONFIG_VERSION_MAX"]


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if CC is None or not HEADER.exists():
        pytest.skip("needs a C compiler and libslirp-dev")
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <slirp/libslirp.h>",
             "int main(void) {"]
    for struct, fields in FIELDS.items():
        for name in fields:
            lines.append(f'printf("{struct}.{name} %zu\\n", offsetof({struct}, {name}));')
    for struct in SIZES:
        lines.append(f'printf("sizeof {struct} %zu\\n", sizeof({struct}));')
    for name in CONSTANTS:
        lines.append(f'printf("{name} %d\\n", (int){name});')
    lines += ["return 0;", "}"]
    work = tmp_path_factory.mktemp("slirp_probe")
    (work / "probe.c").write_text("\n".join(lines))
    subprocess.run([CC, "-o", str(work / "probe"), str(work / "probe.c")], check=True)
    out = subprocess.run([str(work / "probe")], check=True, capture_output=True, text=True)
    values = {}
    for line in out.stdout.splitlines():
        key, value = line.rsplit(" ", 1)
        values[key] = int(value)
    return values


@pytest.mark.parametrize(("struct", "name"), [(s, n) for s, fields in FIELDS.items()
                                              for n in fields])
def test_field_offsets(probe: dict[str, int], struct: str, name: str) -> None:
    assert ffi.offsetof(struct, name) == probe[f"{struct}.{name}"]


@pytest.mark.parametrize("struct", SIZES)
def test_sizes(probe: dict[str, int], struct: str) -> None:
    assert ffi.sizeof(struct) == probe[f"sizeof {struct}"]


def test_constants(probe: dict[str, int]) -> None:
    ours = {name: getattr(slirp_abi, name) for name in CONSTANTS
            if name != "SLIRP_CONFIG_VERSION_MAX"}
    assert ours == {name: probe[name] for name in ours}
    assert probe["SLIRP_CONFIG_VERSION_MAX"] == slirp_abi.SLIRP_CONFIG_VERSION
