"""-fsdev / -virtfs parsing: values, defaults and QEMU 7.2's error texts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmpy.errors import ConfigError
from kvmpy.fs import parse_fsdev, parse_virtfs


def test_fsdev_values_and_defaults(tmp_path: Path) -> None:
    fs = parse_fsdev(f"local,id=fs0,path={tmp_path},security_model=mapped")
    assert (fs.id, fs.path, fs.security_model) == ("fs0", str(tmp_path), "mapped-xattr")
    assert (fs.readonly, fs.fmode, fs.dmode, fs.writeout) == (False, 0o600, 0o700, "")
    fs = parse_fsdev(f"fsdriver=local,id=x,path={tmp_path},security_model=mapped-file,"
                     "fmode=0644,dmode=0x1ff,readonly=on,writeout=immediate,multidevs=remap")
    assert (fs.security_model, fs.fmode, fs.dmode) == ("mapped-file", 0o644, 0o777)
    assert fs.readonly and fs.writeout == "immediate" and fs.multidevs == "remap"
    fs = parse_fsdev(f"local,id=x,path={tmp_path},security_model=passthrough,readonly")
    assert fs.readonly and fs.security_model == "passthrough"
    fs = parse_fsdev(f"local,id=x,path={tmp_path}/.,security_model=none,"
                     "throttling.bps-total=100")
    assert fs.path == str(tmp_path)


def test_virtfs(tmp_path: Path) -> None:
    fs, tag, fsdev_id = parse_virtfs(f"local,path={tmp_path},mount_tag=host0,"
                                     "security_model=passthrough")
    assert (tag, fsdev_id, fs.id) == ("host0", "host0", "host0")
    fs, tag, fsdev_id = parse_virtfs(f"local,id=fsx,path={tmp_path},mount_tag=t,"
                                     "security_model=mapped-xattr,fmode=0644,readonly=on")
    assert (tag, fsdev_id) == ("t", "fsx")
    assert fs.fmode == 0o600 and fs.readonly      # QEMU does not pass fmode on to the fsdev


FSDEV_ERRORS = [
    ("local,id=f", "security_model property not set"),
    ("local,id=f,path=/tmp", "security_model property not set"),
    ("local,id=f,path=/tmp,security_model=bogus", "invalid security_model property 'bogus'"),
    ("local,path=/tmp,security_model=none", "fsdev: No id specified"),
    ("bogus,id=f", "fsdev: fsdriver bogus not found"),
    ("id=f,path=/tmp", "fsdev: No fsdriver specified"),
    ("local,id=f,path=/tmp,security_model=none,fmode=0644",
     "fmode is only valid for mapped security modes"),
    ("local,id=f,path=/tmp,security_model=none,dmode=0644",
     "dmode is only valid for mapped security modes"),
    ("local,id=f,path=/tmp,security_model=mapped,fmode=abc", "Parameter 'fmode' expects a number"),
    ("local,id=f,path=/tmp,security_model=none,fmode=abc", "Parameter 'fmode' expects a number"),
    ("local,id=f,path=/tmp,security_model=mapped,fmode=99999999999999999999",
     "Value '99999999999999999999' is too large for parameter 'fmode'"),
    ("local,id=f,path=/tmp,security_model=none,foo=1", "Invalid parameter 'foo'"),
    ("local,id=f,path=/tmp,security_model=none,socket=x",
     "'socket' is invalid for fsdriver 'local'"),
    ("local,id=1f,path=/tmp,security_model=none", "Parameter 'id' expects an identifier"),
    ("local,id=f,path=/tmp,security_model=none,readonly=maybe",
     "Parameter 'readonly' expects 'on' or 'off'"),
    ("local,id=f,path=/tmp,security_model=none,multidevs=x", "invalid multidevs property 'x'"),
    ("local,id=f,security_model=none", "path property not set"),
    ("help", "fsdev: No id specified"),
    ("local,id=f,path=/tmp,security_model=help", "invalid security_model property 'help'"),
]

VIRTFS_ERRORS = [
    ("local,path=/tmp,security_model=none", "Usage: -virtfs fsdriver,mount_tag=tag"),
    ("local,mount_tag=t", "security_model property not set"),
    ("local,mount_tag=1t,path=/tmp,security_model=none", "duplicate or invalid fsdev id: 1t"),
    ("local,mount_tag=abcdefghijabcdefghijabcdefghijab,path=/tmp,security_model=none",
     "mount tag 'abcdefghijabcdefghijabcdefghijab' (32 bytes) is longer than maximum "
     "(31 bytes)"),
    ("local,mount_tag=t,path=/tmp,security_model=none,foo=bar", "Invalid parameter 'foo'"),
    ("help", "Usage: -virtfs fsdriver,mount_tag=tag"),
]


@pytest.mark.parametrize(("spec", "message"), FSDEV_ERRORS)
def test_fsdev_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_fsdev(spec)
    assert str(exc.value) == message


@pytest.mark.parametrize(("spec", "message"), VIRTFS_ERRORS)
def test_virtfs_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_virtfs(spec)
    assert str(exc.value) == message


def test_share_path_must_be_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    for path, reason in ((tmp_path / "missing", "No such file or directory"),
                         (tmp_path / "file", "Not a directory")):
        with pytest.raises(ConfigError) as exc:
            parse_fsdev(f"local,id=f,path={path},security_model=none")
        assert str(exc.value) == f"cannot initialize fsdev 'f': failed to open '{path}': {reason}"


QEMU = shutil.which("qemu-system-riscv64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-riscv64 is not installed")
@pytest.mark.parametrize(("option", "spec", "message"),
                         [("-fsdev", s, m) for s, m in FSDEV_ERRORS[:8] + FSDEV_ERRORS[-2:]]
                         + [("-virtfs", s, m) for s, m in VIRTFS_ERRORS])
def test_errors_match_qemu(option: str, spec: str, message: str) -> None:
    assert QEMU is not None
    args = [QEMU, "-M", "virt", "-display", "none", "-nodefaults", "-S", option, spec]
    if option == "-fsdev":
        args += ["-device", "virtio-9p-device,fsdev=f,mount_tag=t"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0
    first = proc.stderr.splitlines()[0]
    assert first.endswith(f": {message}"), first
