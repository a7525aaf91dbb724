"""libvirt 9.0 (Debian's libvirtd and virtlogd, started privately by :mod:`.daemons`) manages
kvmpy as the emulator of a riscv64 ``virt`` domain: the capability probe, ``virsh``'s
lifecycle with the bundled guest (console, suspend/resume, save/restore, reset, shutdown, the
guest's own poweroff, destroy, disks, the guest agent, monitor pass-through), live migration
between two libvirtds, ``virt-install --import``, and kvmpy's one-line errors shown by
``virsh`` as they are."""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmpy import guests

from .daemons import Libvirt, unavailable_reason, write_launcher

BOOT_TIMEOUT = 240.0
_REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


class Env:
    def __init__(self, daemons: Libvirt, emulator: Path, work: Path) -> None:
        self.daemons = daemons
        self.emulator = emulator
        self.work = work

    def virsh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.daemons.virsh(*args, check=check)

    def state(self, name: str) -> str:
        return self.virsh("domstate", "--reason", name).stdout.strip()

    def wait_state(self, name: str, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.state(name)
            if state.startswith(prefix):
                return state
            time.sleep(0.25)
        raise AssertionError(f"{name}: state {state!r}, not {prefix!r}, after {timeout:.0f} s")

    def domain_xml(self, name: str, disk: Path | None, extra: str = "") -> Path:
        path = self.work / f"{name}.xml"
        disk_xml = "" if disk is None else f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>"""
        path.write_text(f"""\
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='riscv64' machine='virt'>hvm</type>
    <kernel>{guests.kernel_path()}</kernel>
    <initrd>{guests.initrd_path()}</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{self.emulator}</emulator>{disk_xml}
    <interface type='user'><model type='virtio'/></interface>
    <serial type='pty'/>
    <console type='pty'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
  {extra}
</domain>
""")
        return path


class Console:
    """``virsh console NAME`` on a pseudo-terminal (the guest's serial pty, through libvirtd)."""

    def __init__(self, env: Env, name: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(["virsh", "-c", env.daemons.uri, "console", "--force",
                                      name], stdin=slave, stdout=slave, stderr=slave,
                                     close_fds=True, start_new_session=True)
        os.close(slave)
        self.seen = b""
        # Input sent before virsh makes its terminal raw is flushed: wait for its banner;
        # commands whose answer matters are repeated (expect_command) in case it was early.
        self.expect("Escape character is", 30)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, wanted: str, timeout: float = BOOT_TIMEOUT, poke: bool = False) -> None:
        """Read until ``wanted`` shows; ``poke``: press Enter every few seconds meanwhile (a
        console attached after the prompt was printed sees the next one)."""
        deadline = time.monotonic() + timeout
        start = len(self.seen)
        last_poke = 0.0
        while wanted.encode() not in self.seen[start:]:
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"no {wanted!r} on the console; last output: "
                                     f"{self.seen[-400:]!r}")
            if poke and now - last_poke > 5:
                self.send("\r")
                last_poke = now
            ready, _, _ = select.select([self.master], [], [], 0.5)
            if ready:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # virsh ended (the domain stopped)
                    time.sleep(0.2)

    def expect_command(self, command: str, wanted: str, timeout: float = 90.0) -> None:
        """Run ``command`` in the guest's shell every few seconds until its output shows
        ``wanted``."""
        deadline = time.monotonic() + timeout
        while True:
            start = len(self.seen)
            self.send(command + "\r")
            with contextlib.suppress(AssertionError):  # a line sent before the console was
                self.expect(guests.PROMPT, 10)         # raw is lost: send it again
            if wanted.encode() in self.seen[start:]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no {wanted!r} from {command!r}: "
                                     f"{self.seen[start:]!r}")
            time.sleep(3)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.close(self.master)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("libvirt")
    guests.kernel_path()  # decompressed before libvirt's emulator runs
    daemons = Libvirt(root / "daemons")
    try:
        daemons.start()
    except RuntimeError as exc:
        daemons.stop()
        pytest.skip(f"libvirtd cannot start here: {exc}")
    try:
        yield Env(daemons, write_launcher(root / "kvmpy-emulator"), root)
    finally:
        listing = daemons.virsh("list", "--name", "--all", check=False).stdout.split()
        for name in listing:
            daemons.virsh("destroy", name, check=False)
            daemons.virsh("undefine", name, check=False)
        daemons.stop()


def _disk(env: Env, name: str) -> Path:
    path = env.work / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def test_probe_finds_a_riscv64_emulator(env: Env) -> None:
    caps = env.virsh("domcapabilities", "--emulatorbin", str(env.emulator), "--arch",
                     "riscv64", "--machine", "virt", "--virttype", "qemu").stdout
    assert f"<path>{env.emulator}</path>" in caps
    assert "<arch>riscv64</arch>" in caps and "<machine>virt</machine>" in caps


def test_lifecycle(env: Env) -> None:
    disk = _disk(env, "rv1")
    xml = env.domain_xml("rv1", disk)
    env.virsh("define", str(xml))
    env.virsh("start", "rv1")
    console = Console(env, "rv1")
    try:
        console.expect(guests.PROMPT, poke=True)
        console.send("echo kvmpy-$((6*7))\r")
        console.expect("kvmpy-42", 30)
        # -netdev user: the guest's DHCP lease from libslirp.
        console.expect_command("ip -4 addr show eth0", "inet 10.0.2.15/24")

        env.virsh("suspend", "rv1")
        assert env.state("rv1") == "paused (user)"
        reply = env.virsh("qemu-monitor-command", "rv1", '{"execute":"query-status"}').stdout
        assert '"status":"paused"' in reply
        env.virsh("resume", "rv1")
        assert env.state("rv1") == "running (unpaused)"
        assert "VM status: running" in env.virsh("qemu-monitor-command", "rv1", "--hmp",
                                                 "info status").stdout

        blocks = env.virsh("domblklist", "rv1").stdout
        assert "vda" in blocks and str(disk) in blocks
        reply = env.virsh("qemu-monitor-command", "rv1", '{"execute":"query-block"}').stdout
        assert str(disk) in reply and '"drv":"qcow2"' in reply
        reply = env.virsh("qemu-monitor-command", "rv1", '{"execute":"query-balloon"}').stdout
        assert '"actual":268435456' in reply

        # The guest agent (once its port is open), through libvirt.
        deadline = time.monotonic() + 60
        while env.virsh("qemu-agent-command", "rv1", '{"execute":"guest-ping"}',
                        check=False).returncode != 0:
            assert time.monotonic() < deadline, "the guest agent did not answer"
            time.sleep(1)
        info = env.virsh("qemu-agent-command", "rv1", '{"execute":"guest-get-osinfo"}').stdout
        assert '"id":"kvmpy"' in info
        # The interfaces as the agent sees them (guest-network-get-interfaces): eth0 with the
        # MAC libvirt gave the NIC and the lease.
        mac = env.virsh("domiflist", "rv1").stdout.split()[-1]
        rows = [line.split() for line in
                env.virsh("domifaddr", "rv1", "--source", "agent").stdout.splitlines()]
        assert ["eth0", mac, "ipv4", "10.0.2.15/24"] in rows, rows
        assert ["lo", "00:00:00:00:00:00", "ipv4", "127.0.0.1/8"] in rows, rows

        # virsh shutdown --mode acpi is system_powerdown; QEMU 7.2's virt board has no power
        # button to press, so the guest goes on running (as under QEMU).
        env.virsh("shutdown", "--mode", "acpi", "rv1")
        console.send("echo still-$((2*21))\r")
        console.expect("still-42", 30)
        assert env.state("rv1").startswith("running")

        # virsh save and restore (QMP migrate to an fd, -incoming defer): the guest's shell
        # goes on with its memory as it was.
        console.send("KVMPY_MARK=saved-$((40+2))\r")
        console.expect(guests.PROMPT, 30)
        console.close()
        image = env.work / "rv1.save"
        env.virsh("save", "rv1", str(image))
        assert env.state("rv1") == "shut off (saved)"
        env.virsh("restore", str(image))
        assert env.state("rv1") == "running (restored)"
        console = Console(env, "rv1")
        console.expect_command('echo "[$KVMPY_MARK]"', "[saved-42]", 60)

        env.virsh("reset", "rv1")
        console.expect(guests.BANNER)
        console.expect(guests.PROMPT, poke=True)

        # The guest's own poweroff is a normal shutdown for libvirt.
        console.send("poweroff\r")
        assert env.wait_state("rv1", "shut off", BOOT_TIMEOUT) == "shut off (shutdown)"
    finally:
        console.close()

    # Through the guest agent (virsh shutdown's first choice when the channel is there).
    env.virsh("start", "rv1")
    console = Console(env, "rv1")
    try:
        console.expect(guests.PROMPT, poke=True)
    finally:
        console.close()
    deadline = time.monotonic() + 60
    while env.virsh("shutdown", "--mode", "agent", "rv1", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the guest agent did not answer"
        time.sleep(1)
    assert env.wait_state("rv1", "shut off", BOOT_TIMEOUT) == "shut off (shutdown)"

    env.virsh("start", "rv1")
    assert env.state("rv1").startswith("running")
    env.virsh("destroy", "rv1")
    assert env.state("rv1") == "shut off (destroyed)"
    env.virsh("undefine", "rv1")


def test_create_and_kvmpy_errors_as_they_are(env: Env) -> None:
    disk = _disk(env, "rv2")
    env.virsh("create", str(env.domain_xml("rv2", disk)))
    assert env.state("rv2").startswith("running")
    env.virsh("destroy", "rv2")
    assert "rv2" not in env.virsh("list", "--all", "--name").stdout.split()
    # A bad option from the domain's side: kvmpy's one line, shown by virsh verbatim.
    bad = env.domain_xml("rv3", disk, "<qemu:commandline><qemu:arg value='-device'/>"
                         "<qemu:arg value='no-such-device'/></qemu:commandline>")
    done = env.virsh("create", str(bad), check=False)
    assert done.returncode != 0
    assert ("kvmpy: -device no-such-device: 'no-such-device' is not a valid device model name"
            in done.stderr)


@pytest.fixture
def second_host(env: Env) -> Iterator[Libvirt]:
    """Another libvirtd on this machine, with its own host UUID (a migration target)."""
    daemons = Libvirt(env.work / "second", host_uuid="8a3c5a7e-1d2b-4c6f-9e0a-2b7d3f1c4e5a")
    try:
        daemons.start()
        yield daemons
    finally:
        for name in daemons.virsh("list", "--name", "--all", check=False).stdout.split():
            daemons.virsh("destroy", name, check=False)
        daemons.stop()


def test_live_migration_between_two_libvirtds(env: Env, second_host: Libvirt) -> None:
    """virsh migrate --live --p2p --tunnelled: libvirt carries kvmpy's stream itself, from
    QMP migrate on fd: to -incoming defer and migrate-incoming on the other side."""
    xml = env.domain_xml("rv5", None)
    env.virsh("create", str(xml))
    console = Console(env, "rv5")
    try:
        console.expect(guests.PROMPT, poke=True)
        console.send("KVMPY_MARK=moved-$((40+2))\r")
        console.expect(guests.PROMPT, 30)
    finally:
        console.close()
    target = f"qemu+unix:///system?socket={second_host.root}/run/libvirt-sock"
    env.virsh("migrate", "--live", "--p2p", "--tunnelled", "rv5", target)
    assert "rv5" not in env.virsh("list", "--name").stdout.split()
    assert second_host.virsh("domstate", "--reason", "rv5").stdout.strip() == \
        "running (migrated)"
    moved = Env(second_host, env.emulator, env.work)
    console = Console(moved, "rv5")
    try:
        console.expect_command('echo "[$KVMPY_MARK]"', "[moved-42]", 60)
    finally:
        console.close()
    second_host.virsh("destroy", "rv5")


@pytest.mark.skipif(not Path("/dev/net/tun").exists() or shutil.which("ip") is None,
                    reason="no /dev/net/tun or no ip(8) for a tap device")
def test_tap_interface_is_netdev_tap_fd(env: Env) -> None:
    """``<interface type='ethernet'>``: libvirt opens the tap and passes ``-netdev tap,fd=N``;
    the guest reaches the host's end of it (on this machine only, in 10.233.7.0/30)."""
    tap = f"kvt{os.getpid() % 100000}"
    disk = _disk(env, "rv4")
    xml = env.domain_xml("rv4", disk)
    xml.write_text(xml.read_text().replace(
        "<interface type='user'>",
        f"<interface type='ethernet'><target dev='{tap}' managed='yes'/>"))
    env.virsh("create", str(xml))
    console = Console(env, "rv4")
    try:
        subprocess.run(["ip", "addr", "add", "10.233.7.1/30", "dev", tap], check=True)
        console.expect(guests.PROMPT, poke=True)
        console.send("ip addr add 10.233.7.2/30 dev eth0; ip link set eth0 up\r")
        console.expect_command("ping -c 1 -W 2 10.233.7.1", "1 packets received", 20)
    finally:
        console.close()
        env.virsh("destroy", "rv4", check=False)
    log = (env.daemons.root / "log" / "qemu" / "rv4.log").read_text()
    assert "-netdev tap,fd=" in log


@pytest.mark.skipif(shutil.which("virt-install") is None, reason="virt-install is not installed")
def test_virt_install_import(env: Env) -> None:
    disk = _disk(env, "vi1")
    done = subprocess.run(
        ["virt-install", "--connect", env.daemons.uri, "--name", "vi1", "--import",
         "--arch", "riscv64", "--machine", "virt", "--osinfo", "detect=on,require=off",
         "--virt-type", "qemu", "--memory", "256", "--vcpus", "1",
         "--boot", f"kernel={guests.kernel_path()},initrd={guests.initrd_path()},"
         "kernel_args=console=ttyS0",
         "--disk", f"path={disk},format=qcow2,bus=virtio", "--network", "user",
         "--graphics", "none", "--noautoconsole", "--xml", f"./devices/emulator={env.emulator}"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert env.state("vi1").startswith("running")
    console = Console(env, "vi1")
    try:
        console.expect(guests.PROMPT, poke=True)
    finally:
        console.close()
    env.virsh("destroy", "vi1")
    env.virsh("undefine", "vi1")
