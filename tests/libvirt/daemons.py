"""A private libvirtd and virtlogd (Debian's packages) for the libvirt tests.

Both run as root in their own mount namespace, where ``/etc/libvirt``, ``/run/libvirt``,
``/var/lib/libvirt``, ``/var/cache/libvirt`` and ``/var/log/libvirt`` are directories under one
temporary directory: the machine's libvirt configuration and state are never touched, and
nothing outlives :meth:`Libvirt.stop` (both daemons are stopped by their pid files).  The qemu
driver runs the emulator as root with no security driver, cgroups or namespaces of its own, as
a machine without systemd needs.  ``virsh`` reaches the daemon through
``qemu:///system?socket=ROOT/run/libvirt-sock``.

``python3 -m tests.libvirt.daemons DIR`` starts a pair by hand and prints the URI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import kvmpy

BIND_DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
             "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
cgroup_controllers = []
stdio_handler = "logd"
"""

LIBVIRTD_CONF = """\
unix_sock_dir = "/run/libvirt"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "1:file:/var/log/libvirt/libvirtd.log"
log_filters = "1:qemu.qemu_monitor_json 1:qemu.qemu_process 1:qemu.qemu_capabilities 3:*"
"""


def unavailable_reason() -> str | None:
    """Why this machine cannot run the private daemons, or None."""
    for program in ("libvirtd", "virtlogd", "virsh", "unshare"):
        if shutil.which(program) is None:
            return f"{program} is not installed (scripts/install-deps installs libvirt)"
    if os.geteuid() != 0:
        return "libvirtd's qemu driver runs here as root in a private mount namespace"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no mount namespace for a private libvirtd: {probe.stderr.strip()}"
    return None


def write_launcher(path: Path) -> Path:
    """An emulator for ``<emulator>``: ``python3 -m kvmpy`` with this kvmpy, whatever
    environment libvirt gives it (it passes only PATH, HOME and a few more)."""
    package_parent = Path(kvmpy.__file__).resolve().parent.parent
    path.write_text(f"#!/bin/sh\nPYTHONPATH={package_parent} exec {sys.executable} "
                    '-m kvmpy "$@"\n')
    path.chmod(0o755)
    return path


class Libvirt:
    """libvirtd and virtlogd under ``root``; :attr:`uri` for virsh."""

    def __init__(self, root: Path, host_uuid: str | None = None) -> None:
        """``host_uuid``: the host's identity to libvirt (two daemons on one machine can
        migrate between each other only when they differ)."""
        self.root = root
        self.host_uuid = host_uuid
        self.uri = f"qemu:///system?socket={root}/run/libvirt-sock"
        self.log = root / "log" / "libvirtd.log"

    def start(self, timeout: float = 30.0) -> None:
        for name in BIND_DIRS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        etc = self.root / "etc"
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True)
        shutil.rmtree(etc / "qemu" / "networks" / "autostart", ignore_errors=True)
        (etc / "qemu.conf").write_text(QEMU_CONF)
        conf = LIBVIRTD_CONF
        if self.host_uuid is not None:
            conf += f'host_uuid = "{self.host_uuid}"\n'
        (etc / "libvirtd.conf").write_text(conf)
        binds = " && ".join(f"mkdir -p {target} && mount --bind {self.root / name} {target}"
                            for name, target in BIND_DIRS.items())
        script = (f"{binds} && virtlogd -d -p /run/libvirt/virtlogd.pid && "
                  "libvirtd -d -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid")
        started = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                  script], capture_output=True, text=True,
                       env={"PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"),
                            "LC_ALL": "C"})
        if started.returncode != 0:
            raise RuntimeError(f"libvirtd did not start: {started.stderr.strip()}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(["virsh", "-c", self.uri, "list"], capture_output=True,
                                  text=True)
            if done.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"libvirtd did not answer within {timeout:.0f} s: {done.stderr}")

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.root / "run" / f"{name}.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 20.0) -> None:
        """Destroy the domains still running (a test that failed half-way leaves them, and
        they outlive libvirtd), then stop libvirtd and virtlogd by their pids (SIGTERM,
        SIGKILL after ``timeout``)."""
        if self._pid("libvirtd") is not None:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                running = self.virsh("list", "--name", timeout=30, check=False).stdout
                for domain in running.split():
                    self.virsh("destroy", domain, timeout=30, check=False)
        for name in ("libvirtd", "virtlogd"):
            pid = self._pid(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def virsh(self, *args: str, timeout: float = 120.0,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
        return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not our child) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__":
    daemons = Libvirt(Path(sys.argv[1]).resolve(), sys.argv[2] if len(sys.argv) > 2 else None)
    daemons.start()
    write_launcher(daemons.root / "kvmpy-emulator")
    print(daemons.uri)
