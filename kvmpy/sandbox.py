"""``-sandbox on``: QEMU 7.2's seccomp filter (``softmmu/qemu-seccomp.c``), through libseccomp.

The filter allows everything but QEMU's deny list: the default set (``reboot``, ``mount``,
``kexec_load``, ...) always; the ``obsolete`` set unless ``obsolete=allow``; and, when asked
(libvirt asks for all of them), ``elevateprivileges=deny`` (``setuid`` and friends),
``spawn=deny`` (``fork``, ``execve``, a ``clone`` that makes a process rather than a thread) and
``resourcecontrol=deny`` (scheduling and affinity changes fail with EPERM).  A denied call kills
the process, as in QEMU.  The filter is loaded for every thread (TSYNC) once the VM is built,
before it runs.  libseccomp is loaded with ctypes; without it ``-sandbox on`` is refused.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from kvmpy.errors import ConfigError

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_FLTATR_CTL_TSYNC = 4
SCMP_CMP_NE = 1
SCMP_CMP_MASKED_EQ = 7
SCHED_IDLE = 5
CSIGNAL = 0xFF


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = (("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64))


_CLONE_REQUIRED = (0x100, 0x200, 0x400, 0x800, 0x10000, 0x40000, 0x80000, 0x100000, 0x200000)
"""What pthread_create always sets: VM, FS, FILES, SIGHAND, THREAD, SYSVSEM, SETTLS,
PARENT_SETTID, CHILD_CLEARTID.  A clone without one of them is no thread."""
_CLONE_FORBIDDEN = (0x1000, 0x2000, 0x4000, 0x8000, 0x20000, 0x800000, 0x2000000, 0x4000000,
                    0x8000000, 0x10000000, 0x20000000, 0x40000000, 0x80000000)
"""PIDFD, PTRACE, VFORK, PARENT, NEWNS, UNTRACED, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
NEWNET, IO."""

Rule = tuple[str, str, int, list[tuple[int, int, int, int]]]
"""(syscall, set, action, argument comparisons)."""

_TRAP = SCMP_ACT_TRAP
DENY_LIST: list[Rule] = [
    *((name, "default", _TRAP, []) for name in (
        "reboot", "swapon", "swapoff", "syslog", "mount", "umount", "kexec_load",
        "afs_syscall", "break", "ftime", "getpmsg", "gtty", "lock", "mpx", "prof", "profil",
        "putpmsg", "security", "stty", "tuxcall", "ulimit", "vserver")),
    *((name, "obsolete", _TRAP, []) for name in (
        "readdir", "_sysctl", "bdflush", "create_module", "get_kernel_syms", "query_module",
        "sgetmask", "ssetmask", "sysfs", "uselib", "ustat")),
    *((name, "privileged", _TRAP, []) for name in (
        "setuid", "setgid", "setpgid", "setsid", "setreuid", "setregid", "setresuid",
        "setresgid", "setfsuid", "setfsgid")),
    ("fork", "spawn", _TRAP, []),
    ("vfork", "spawn", _TRAP, []),
    ("execve", "spawn", _TRAP, []),
    ("clone", "spawn", _TRAP, [(0, SCMP_CMP_MASKED_EQ, ~CSIGNAL & 0xFFFFFFFFFFFFFFFF, 0)]),
    *(("clone", "spawn", _TRAP, [(0, SCMP_CMP_MASKED_EQ, flag, 0)])
      for flag in _CLONE_REQUIRED),
    *(("clone", "spawn", _TRAP, [(0, SCMP_CMP_MASKED_EQ, flag, flag)])
      for flag in _CLONE_FORBIDDEN),
    ("clone3", "spawn", scmp_act_errno(errno.ENOSYS), []),
    ("execveat", "spawn", SCMP_ACT_KILL_THREAD, []),
    ("setns", "spawn", SCMP_ACT_KILL_THREAD, []),
    ("unshare", "spawn", SCMP_ACT_KILL_THREAD, []),
    ("setpriority", "resourcecontrol", scmp_act_errno(errno.EPERM), []),
    ("sched_setparam", "resourcecontrol", scmp_act_errno(errno.EPERM), []),
    ("sched_setscheduler", "resourcecontrol", scmp_act_errno(errno.EPERM),
     [(1, SCMP_CMP_NE, SCHED_IDLE, 0)]),
    ("sched_setaffinity", "resourcecontrol", scmp_act_errno(errno.EPERM), []),
]
"""QEMU 7.2's deny list, in its order."""


def selected_sets(options: dict[str, str]) -> set[str]:
    """The sets ``-sandbox on,...`` denies (QEMU's ``parse_sandbox``)."""
    sets = {"default", "obsolete"}
    if options.get("obsolete") == "allow":
        sets.discard("obsolete")
    if options.get("elevateprivileges") in ("deny", "children"):
        sets.add("privileged")
    if options.get("spawn") == "deny":
        sets.add("spawn")
    if options.get("resourcecontrol") == "deny":
        sets.add("resourcecontrol")
    return sets


def _libseccomp() -> Any:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        raise ConfigError("-sandbox on needs libseccomp (libseccomp2), which is not "
                          "installed", option="-sandbox") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name.argtypes = (ctypes.c_char_p,)
    lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp))
    lib.seccomp_load.argtypes = (ctypes.c_void_p,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_api_get.restype = ctypes.c_uint
    return lib


def start(options: dict[str, str]) -> None:
    """Load the filter for ``-sandbox on,OPTIONS`` into every thread of this process."""
    import os

    lib = _libseccomp()
    sets = selected_sets(options)
    if options.get("elevateprivileges") == "children":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            raise ConfigError(f"failed to set no_new_privs: {os.strerror(ctypes.get_errno())}",
                              option="-sandbox")
    kill = SCMP_ACT_KILL_PROCESS if lib.seccomp_api_get() >= 3 else SCMP_ACT_TRAP
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise ConfigError("failed to initialize seccomp context", option="")
    try:
        rc = lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1)
        if rc != 0:
            raise ConfigError(f"failed to set seccomp thread synchronization: "
                              f"{os.strerror(-rc)}", option="")
        for name, group, action, cmps in DENY_LIST:
            if group not in sets:
                continue
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number == -1:  # __NR_SCMP_ERROR: a name libseccomp does not know
                continue
            args = (_ArgCmp * max(1, len(cmps)))(*(_ArgCmp(*c) for c in cmps))
            rc = lib.seccomp_rule_add_array(ctx, kill if action == SCMP_ACT_TRAP else action,
                                            number, len(cmps), args)
            if rc < 0:
                raise ConfigError(f"failed to add seccomp denylist rules: {os.strerror(-rc)}",
                                  option="")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise ConfigError(f"failed to load seccomp syscall filter in kernel: "
                              f"{os.strerror(-rc)}", option="")
    finally:
        lib.seccomp_release(ctx)
