"""``-sandbox on`` (libvirt's default command line): QEMU 7.2's seccomp deny list, for real."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..support import kvmpy_env

LIBVIRT_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=kvmpy_env())


def test_spawn_deny_kills_a_fork_and_an_exec_but_not_a_thread() -> None:
    for call in ("os.fork()", "os.execv('/bin/true', ['true'])",
                 "subprocess.run(['/bin/true'])"):
        done = _python("import os, subprocess, threading\n"
                       "from kvmpy import sandbox\n"
                       "sandbox.start({'spawn': 'deny'})\n"
                       "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
                       f"{call}\nprint('survived')")
        assert done.stdout == "thread\n"
        assert done.returncode == -signal.SIGSYS, (call, done.stderr)
    allowed = _python("import os\nfrom kvmpy import sandbox\nsandbox.start({})\n"
                      "pid = os.fork()\nos._exit(0) if pid == 0 else print(os.waitpid(pid, 0)[1])")
    assert (allowed.returncode, allowed.stdout) == (0, "0\n")


def test_resourcecontrol_deny_refuses_affinity_and_privileges_deny_setuid() -> None:
    done = _python("import os\nfrom kvmpy import sandbox\n"
                   "sandbox.start({'resourcecontrol': 'deny'})\n"
                   "try:\n    os.sched_setaffinity(0, os.sched_getaffinity(0))\n"
                   "except PermissionError:\n    print('EPERM')")
    assert (done.returncode, done.stdout) == (0, "EPERM\n")
    done = _python("import os\nfrom kvmpy import sandbox\n"
                   "sandbox.start({'elevateprivileges': 'deny'})\nos.setuid(os.getuid())")
    assert done.returncode == -signal.SIGSYS
    # The default set is always denied (here: mount(2) through libc).
    done = _python("import ctypes\nfrom kvmpy import sandbox\nsandbox.start({'obsolete': "
                   "'allow'})\nctypes.CDLL(None).mount(b'x', b'/nonexistent', b'tmpfs', 0, None)")
    assert done.returncode == -signal.SIGSYS


def test_a_sandboxed_vm_runs_under_the_filter(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    proc = subprocess.Popen([sys.executable, "-m", "kvmpy", "-M", "virt", "-m", "128",
                             "-nodefaults", "-display", "none", "-sandbox", LIBVIRT_SANDBOX,
                             "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=kvmpy_env())
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.1)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock))
            reader = client.makefile("rwb")
            reader.readline()
            for command in (b'{"execute":"qmp_capabilities"}\n',
                            b'{"execute":"query-status"}\n'):
                reader.write(command)
                reader.flush()
                reply = reader.readline()
            assert b'"running"' in reply
            status = Path(f"/proc/{proc.pid}/status").read_text()
            assert "Seccomp:\t2" in status
            reader.write(b'{"execute":"quit"}\n')
            reader.flush()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
