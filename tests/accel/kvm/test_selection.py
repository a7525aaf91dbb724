"""When kvm is available, and the one-line reason when it is not; the -bios refusal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmpy.accel.base import AccelCaps
from kvmpy.accel.kvm import riscv
from kvmpy.accel.kvm.riscv import FIRMWARE_REFUSAL, KvmAccel, probe
from kvmpy.errors import ConfigError
from kvmpy.hw.riscv import boot

needs_kvm_device = pytest.mark.skipif(
    not os.access("/dev/kvm", os.R_OK | os.W_OK),
    reason="needs a usable /dev/kvm (root or the kvm group)")


def test_a_non_riscv_host_is_refused_first() -> None:
    assert probe("x86_64") == \
        "the host is x86_64, not riscv64: its KVM cannot run RISC-V guests"
    assert probe("aarch64", device="/nonexistent") == \
        "the host is aarch64, not riscv64: its KVM cannot run RISC-V guests"


def test_unavailable_reason_on_this_host() -> None:
    import platform

    if platform.machine() == "riscv64":
        pytest.skip("on a riscv64 host the answer depends on its KVM")
    assert KvmAccel.unavailable_reason() == (
        f"the host is {platform.machine()}, not riscv64: its KVM cannot run RISC-V guests")


def test_missing_device_means_no_kvm_module(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdch_zicsr_zifencei\n")
    assert probe("riscv64", str(tmp_path / "kvm"), str(cpuinfo)) == (
        f"{tmp_path / 'kvm'} not found: load the kvm module (modprobe kvm); the kernel needs "
        "CONFIG_KVM and the CPU the H extension")


def test_missing_device_on_a_cpu_without_h_says_so(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdc_zicsr_zifencei\n"
                       "processor\t: 1\nisa\t\t: rv64imafdch\n")
    assert probe("riscv64", str(tmp_path / "kvm"), str(cpuinfo)) == (
        f"{tmp_path / 'kvm'} not found: the host CPU has no H (hypervisor) extension, "
        "which KVM needs")


def test_h_extension_detection(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("isa\t\t: rv64imafdch_sstc\n")
    assert riscv.host_has_h_extension(str(cpuinfo)) is True
    cpuinfo.write_text("isa\t\t: rv64imafdc_zihintpause\n")
    assert riscv.host_has_h_extension(str(cpuinfo)) is False
    cpuinfo.write_text("model name : x86\n")
    assert riscv.host_has_h_extension(str(cpuinfo)) is None
    assert riscv.host_has_h_extension(str(tmp_path / "missing")) is None


@needs_kvm_device
def test_permission_denied_says_how_to_fix_it() -> None:
    """A real EACCES: a child process drops root and opens the real /dev/kvm."""
    if os.getuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            message = probe("riscv64") or "None"
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    if message == "None":
        pytest.skip("/dev/kvm is world-accessible here")
    assert message == ("permission denied opening /dev/kvm: add your user to the kvm group "
                       "(usermod -aG kvm $USER) and log in again")


def test_a_device_that_is_not_kvm_is_refused() -> None:
    # ENOTTY natively; qemu-user answers an ioctl it does not know with ENOSYS.
    assert probe("riscv64", "/dev/null") in (
        "/dev/null is not a usable KVM: KVM_GET_API_VERSION failed: "
        "Inappropriate ioctl for device",
        "/dev/null is not a RISC-V KVM: KVM_GET_API_VERSION failed: Function not "
        "implemented (an emulator such as qemu-user, whose host KVM runs host guests only)")


@needs_kvm_device
def test_an_x86_kvm_is_not_a_riscv_kvm() -> None:
    """The real x86 /dev/kvm, as a riscv64 process would see it: everything works up to the
    RISC-V ONE_REG read."""
    import platform

    if platform.machine() == "riscv64":
        pytest.skip("this host's /dev/kvm may well be a RISC-V KVM")
    reason = probe("riscv64")
    assert reason is not None
    assert reason.startswith("/dev/kvm is not a RISC-V KVM: KVM_GET_ONE_REG failed: ")
    assert reason.endswith("(config.isa)")
    assert "\n" not in reason


KVM_CAPS = AccelCaps(machine_mode=False, in_kernel_timer_ipi=True,
                     firmware_refusal=FIRMWARE_REFUSAL)
"""What KvmAccel.caps says about firmware (tests/accel/kvm/test_riscv_glue.py checks that)."""


@pytest.mark.parametrize("bios", ["", "none", "builtin"])
def test_firmware_allowed_under_kvm(bios: str) -> None:
    boot.check_firmware(bios, KVM_CAPS)


@pytest.mark.parametrize("bios", ["default", "/usr/lib/riscv64-linux-gnu/opensbi/generic/"
                                  "fw_dynamic.bin", "fw.elf"])
def test_machine_mode_firmware_is_refused_as_qemu_does(bios: str) -> None:
    with pytest.raises(ConfigError) as info:
        boot.check_firmware(bios, KVM_CAPS)
    assert str(info.value) == "Machine mode firmware is not supported in combination with KVM."


def test_accel_kvm_alone_on_a_host_without_it_is_an_error() -> None:
    import platform

    from kvmpy.config import OptionSpec, VMConfig
    from kvmpy.errors import AccelError
    from kvmpy.system import System

    if platform.machine() == "riscv64":
        pytest.skip("on a riscv64 host kvm may be available")
    system = System(VMConfig(accels=[OptionSpec("kvm", text="-accel kvm")]))
    with pytest.raises(AccelError) as info:
        system._select_accelerator()
    assert str(info.value) == (f"-accel kvm: the host is {platform.machine()}, not riscv64: "
                               "its KVM cannot run RISC-V guests")


def test_default_falls_back_to_tcg_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import platform

    from kvmpy import registry_init
    from kvmpy.config import VMConfig
    from kvmpy.system import System, find_accel_class

    if platform.machine() == "riscv64":
        pytest.skip("on a riscv64 host kvm may be available")
    registry_init.load_types()
    if find_accel_class("tcg") is None:
        pytest.skip("the tcg accelerator is not registered in this tree")
    system = System(VMConfig())
    accel = system._select_accelerator()
    try:
        assert accel.name == "tcg"
        assert system.notices == [f"-accel kvm: the host is {platform.machine()}, not riscv64: "
                                  "its KVM cannot run RISC-V guests; falling back to tcg"]
        assert capsys.readouterr().err.count("\n") == 1
    finally:
        accel.close()


RISCV64_PYTHON = Path(__file__).resolve().parents[3] / "ci" / "work" / "qemu-user" / "bin" / \
    "python3"


@pytest.mark.skipif(not RISCV64_PYTHON.exists() or not os.path.exists("/dev/kvm"),
                    reason="needs the riscv64 userland of ci/qemu-user (ci/riscv64-userland "
                           "builds it) and a /dev/kvm")
def test_an_x86_kvm_seen_through_qemu_user_is_not_a_riscv_kvm() -> None:
    """A riscv64 python3 under qemu-riscv64-static: the ABI module loads without a compiler,
    its layouts are the riscv64 ones, and the host's /dev/kvm is refused in one line."""
    import subprocess

    src = Path(__file__).resolve().parents[3]         # the source tree, pure Python
    script = ("import platform; from kvmpy.accel.kvm import abi, probe;"
              "print(platform.machine(), abi.ffi.sizeof('struct kvm_run'),"
              " abi.ffi.offsetof('struct kvm_run', 'riscv_sbi', 'ret'));"
              "print(probe())")
    result = subprocess.run([str(RISCV64_PYTHON), "-c", script], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(src)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "riscv64 2352 96"
    assert lines[1].startswith("/dev/kvm is not a RISC-V KVM: ")
    assert len(lines) == 2
