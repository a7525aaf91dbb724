"""The bundled Linux guest saved while its virtio-blk-pci disk, virtio-rng-pci and a virtio
console are busy, restored in a new VM: the guest's I/O carries on and completes with the
right data (checksums inside the guest against the disk image on the host).  Slow: two boots'
worth of the interpreter."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import pytest

from kvmpy import qom
from kvmpy.registry_init import load_types

BOOT_TIMEOUT = 180.0
CMD_TIMEOUT = 300.0
MiB = 1 << 20
ROUNDS = 6
BLOCKS = 256
"""4 KiB blocks per round: each round writes 1 MiB of random data at its own place."""

WORKLOAD = (
    "(head -c 1048576 /dev/hwrng > /tmp/src; echo W-START; "
    f"for i in $(seq 1 {ROUNDS}); do "
    f"dd if=/tmp/src of=/dev/vda bs=4096 seek=$((i*{BLOCKS})) conv=fsync 2>/dev/null; "
    "echo 3 > /proc/sys/vm/drop_caches; "
    f"dd if=/dev/vda bs=4096 skip=$((i*{BLOCKS})) count={BLOCKS} 2>/dev/null | md5sum; "
    "for t in /dev/hvc*; do echo round-$i > $t; done 2>/dev/null; "
    "done; md5sum /tmp/src; echo W-DONE) > /tmp/log 2>&1 &"
    " (for i in $(seq 1 40); do head -c 32768 /dev/hwrng | md5sum; done; echo R-DONE)"
    " > /tmp/rng 2>&1 &"
)


def _skip_reason() -> str | None:
    load_types()
    for info in qom.object_class_get_list("accel"):
        if getattr(info.cls, "name", None) == "tcg":
            reason: str | None = info.cls.unavailable_reason()
            return None if reason is None else f"interpreter accelerator unavailable: {reason}"
    return "the tcg accelerator is not registered in this build"


def run(vm: Any, prompt: str, command: str, timeout: float = CMD_TIMEOUT) -> str:
    vm.console.send(f"echo @@$((6*7))@@; {command}; echo @@$((6*8))@@\n")
    match = vm.console.expect(r"(?s)@@42@@\r?\n(.*?)@@48@@", timeout=timeout)
    vm.console.expect(re.escape(prompt), timeout=timeout)
    return str(match.group(1)).replace("\r", "")


TRANSPORT_DEVICES = {
    "pci": ["virtio-blk-pci,drive=hd0", "virtio-rng-pci", "virtio-serial-pci",
            "virtconsole,chardev=c1"],
    "mmio": ["virtio-blk-device,drive=hd0", "virtio-rng-device", "virtio-serial-device",
             "virtconsole,chardev=c1"],
}


@pytest.mark.parametrize("transport", sorted(TRANSPORT_DEVICES))
def test_busy_devices_carry_on_in_the_restored_vm(tmp_path: Path, transport: str) -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        import kvmpy.guests as guests

        kernel, initrd = guests.kernel_path(), guests.initrd_path()
    except Exception as exc:  # the bundle is missing or cannot be unpacked here
        pytest.skip(f"bundled guest unavailable: {exc}")
    from kvmpy.firmware import opensbi
    from kvmpy.vm import VM

    if opensbi.find_fw_dynamic() is None:
        pytest.skip("no OpenSBI fw_dynamic installed (Debian package opensbi)")

    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes((ROUNDS + 2) * BLOCKS * 4096))
    hvc = tmp_path / "hvc.out"
    state = tmp_path / "vm.state"
    prompt = guests.PROMPT
    vm = VM(machine="virt", accel="tcg", bios="default", kernel=str(kernel),
            initrd=str(initrd), append="console=ttyS0",
            extra_args=["-drive", f"file={disk},if=none,id=hd0,format=raw",
                        "-chardev", f"file,id=c1,path={hvc}"],
            devices=TRANSPORT_DEVICES[transport])
    restored: Any = None
    middle: Any = None
    try:
        vm.launch()
        vm.console.expect(re.escape(prompt), timeout=BOOT_TIMEOUT)
        run(vm, prompt, "ls /dev/vda /dev/hwrng")
        vm.console.send(WORKLOAD + "\n")
        vm.console.expect(re.escape(prompt), timeout=CMD_TIMEOUT)
        # The entropy is in; the disk rounds are running: save in the middle of them.
        run(vm, prompt, "while ! grep -q W-START /tmp/log; do sleep 0.1; done")
        vm.pause()
        vm.save(state)
        vm.kill()  # the saved VM goes no further: nothing of it touches the disk again

        # Restored, the rounds go on; saved again a few rounds later, restored again.
        middle = VM.restore(state)
        run(middle, prompt, "while [ $(grep -c . /tmp/log) -lt 3 ]; do sleep 0.1; done")
        middle.pause()
        middle.save(state)
        middle.kill()

        restored = VM.restore(state)
        done = run(restored, prompt, "wait; cat /tmp/log")
        entropy = run(restored, prompt, "cat /tmp/rng")
        sums = re.findall(r"^([0-9a-f]{32}) ", done, re.M)
        assert len(sums) == ROUNDS + 1, done
        source = sums[-1]
        assert sums[:-1] == [source] * ROUNDS, done  # every round read back what it wrote
        data = disk.read_bytes()
        for i in range(1, ROUNDS + 1):
            start = i * BLOCKS * 4096
            assert hashlib.md5(data[start:start + MiB]).hexdigest() == source, f"round {i}"
        assert data[start + MiB:] == bytes(len(data) - start - MiB)
        assert data[:BLOCKS * 4096] == bytes(BLOCKS * 4096)
        assert len(set(data[BLOCKS * 4096:BLOCKS * 4096 + MiB])) > 200  # entropy, not zeros
        # Every read of /dev/hwrng got fresh entropy, before, across and after the saves.
        rng = re.findall(r"^([0-9a-f]{32}) ", entropy, re.M)
        assert len(rng) == 40 and len(set(rng)) == 40 and "R-DONE" in entropy, entropy
        # The console port wrote its last round in the restored VM.
        assert f"round-{ROUNDS}" in hvc.read_text()
        # The devices still serve new requests.
        assert run(restored, prompt, "head -c 32 /dev/hwrng | wc -c").strip() == "32"
        restored.console.send("poweroff\n")
        assert restored.wait(CMD_TIMEOUT) == 0
    finally:
        for machine in (vm, middle, restored):
            if machine is not None and machine.is_running():
                machine.kill()


def test_open_9p_files_and_the_network_after_restore(tmp_path: Path) -> None:
    """A 9P export with files open in the guest and a shell inside it, and a user-mode
    network: after the restore the open files read and write on, the network answers
    through the new process's back-end (its connections are not carried, as in QEMU)."""
    import socket
    import threading

    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        import kvmpy.guests as guests

        kernel, initrd = guests.kernel_path(), guests.initrd_path()
    except Exception as exc:
        pytest.skip(f"bundled guest unavailable: {exc}")
    from kvmpy.firmware import opensbi
    from kvmpy.vm import VM

    if opensbi.find_fw_dynamic() is None:
        pytest.skip("no OpenSBI fw_dynamic installed (Debian package opensbi)")

    share = tmp_path / "share"
    (share / "sub").mkdir(parents=True)
    (share / "sub" / "log.txt").write_bytes(b"line-1\n")
    big = bytes(range(256)) * 4096
    (share / "big.bin").write_bytes(big)
    state = tmp_path / "vm.state"
    prompt = "# "  # the shell's working directory will be in the export
    vm = VM(machine="virt", accel="tcg", bios="default", kernel=str(kernel),
            initrd=str(initrd), append="console=ttyS0",
            extra_args=["-fsdev", f"local,id=f0,path={share},security_model=none",
                        "-netdev", "user,id=n0"],
            devices=["virtio-9p-pci,fsdev=f0,mount_tag=share", "virtio-net-pci,netdev=n0"])
    restored: Any = None
    try:
        vm.launch()
        vm.console.expect(re.escape(guests.PROMPT), timeout=BOOT_TIMEOUT)
        run(vm, prompt, "mkdir -p /mnt/s && mount -t 9p -o trans=virtio,version=9p2000.L,"
                        "msize=512000,cache=none share /mnt/s && cd /mnt/s/sub")
        run(vm, prompt, "exec 3<>/mnt/s/sub/log.txt 4</mnt/s/big.bin; read -r first <&3; "
                        "echo $first")
        # The guest reads the big file over and over while it is saved.
        vm.console.send("(while true; do md5sum /mnt/s/big.bin >> /tmp/sums; done) &\n")
        vm.console.expect(re.escape(prompt), timeout=CMD_TIMEOUT)
        run(vm, prompt, "while [ ! -s /tmp/sums ]; do sleep 0.1; done")
        deadline = time.monotonic() + CMD_TIMEOUT  # the DHCP lease, wherever it was printed
        while "kvmpy-guest: eth0 10.0.2.15/24" not in vm.console.log:
            assert time.monotonic() < deadline, "no DHCP lease"
            time.sleep(0.1)
        vm.pause()
        vm.save(state)
        vm.kill()

        restored = VM.restore(state)
        assert run(restored, prompt, "pwd").strip() == "/mnt/s/sub"
        run(restored, prompt, "echo line-2 >&3; kill %1; wait")
        assert (share / "sub" / "log.txt").read_bytes() == b"line-1\nline-2\n"
        sums = set(re.findall(r"^([0-9a-f]{32}) ", run(restored, prompt, "cat /tmp/sums"),
                              re.M))
        assert sums == {hashlib.md5(big).hexdigest()}
        assert run(restored, prompt, "md5sum <&4").split()[0] == hashlib.md5(big).hexdigest()
        assert run(restored, prompt, "echo *").split() == ["log.txt"]

        # The network: the guest reaches the host through the new user-mode back-end.
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            received: list[bytes] = []

            def serve() -> None:
                conn, _ = server.accept()
                with conn:
                    received.append(conn.recv(64))
                    conn.sendall(b"pong-from-host\n")

            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            answer = run(restored, prompt, f"echo ping-after-restore | nc 10.0.2.2 {port}")
            thread.join(CMD_TIMEOUT)
        assert answer == "pong-from-host\n"
        assert received == [b"ping-after-restore\n"]
        # The NIC asked the guest to announce itself after the load, and the guest did
        # (its driver acknowledged through the control queue).
        nic = next(fn for region in restored.system.bus.regions
                   if hasattr(region.device, "functions")
                   for name, fn in region.device.functions().items() if "virtio-net" in name)
        assert nic.state.config_generation >= 1 and nic.device.state.status == 1
    finally:
        for machine in (vm, restored):
            if machine is not None and machine.is_running():
                machine.kill()


def test_live_migration_carries_a_9p_read_finished_by_drain(tmp_path: Path) -> None:
    """Pre-copy with a 9P read in flight when the source stops: the device finishes it in
    drain, writing the file's data straight into the guest's buffers after the last pass
    sent those pages (the guest had zeroed them before the request); only the device's
    dirty marks get them into the stream.  On the target the guest's md5sum goes on with
    that data and gets the file's checksum."""
    import io
    import os
    import threading

    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    try:
        import kvmpy.guests as guests

        kernel, initrd = guests.kernel_path(), guests.initrd_path()
    except Exception as exc:
        pytest.skip(f"bundled guest unavailable: {exc}")
    from kvmpy.firmware import opensbi
    from kvmpy.migration import LiveSaver, load_vm
    from kvmpy.vm import VM

    if opensbi.find_fw_dynamic() is None:
        pytest.skip("no OpenSBI fw_dynamic installed (Debian package opensbi)")
    share = tmp_path / "share"
    share.mkdir()
    data = os.urandom(MiB)
    (share / "big.bin").write_bytes(data)
    options: dict[str, Any] = dict(
        machine="virt", accel="tcg", bios="default", kernel=str(kernel), initrd=str(initrd),
        append="console=ttyS0",
        extra_args=["-fsdev", f"local,id=f0,path={share},security_model=none"],
        devices=["virtio-9p-pci,fsdev=f0,mount_tag=share"])
    prompt = guests.PROMPT
    source = VM(**options)
    target: Any = None
    try:
        source.launch()
        source.console.expect(re.escape(prompt), timeout=BOOT_TIMEOUT)
        run(source, prompt, "mkdir -p /mnt/s && mount -t 9p -o trans=virtio,version=9p2000.L,"
                            "msize=512000,cache=none share /mnt/s")
        ninep = next(fn.device for region in source.system.bus.regions
                     if hasattr(region.device, "functions")
                     for name, fn in region.device.functions().items() if "9p" in name)
        entered, gate = threading.Event(), threading.Event()
        reads = ninep.server.read_direct

        def slow_read(*args: Any) -> Any:  # the host file system takes its time
            if not gate.is_set():
                entered.set()
                gate.wait(CMD_TIMEOUT)
            return reads(*args)

        out = io.BytesIO()
        saver = LiveSaver(source.system, out)
        source._on_loop(saver.begin)
        source._on_loop(saver.iterate)
        ninep.server.read_direct = slow_read
        source.console.send("md5sum /mnt/s/big.bin > /tmp/m; echo M-DONE >> /tmp/m\n")
        assert entered.wait(CMD_TIMEOUT)  # a read is in flight in the device
        source._on_loop(saver.iterate)  # the guest's buffers, zeroed, go now
        source.pause()
        threading.Timer(0.5, gate.set).start()  # the read ends while complete() drains
        source._on_loop(saver.complete)
        source.kill()

        target = VM(**options, start_paused=True).launch()
        target._on_loop(lambda: load_vm(target.system, io.BytesIO(out.getvalue())))
        target.resume()
        result = run(target, prompt, "while ! grep -q M-DONE /tmp/m; do sleep 0.1; done; "
                                     "cat /tmp/m", timeout=60)  # a lost reply: no end
        assert result.split()[0] == hashlib.md5(data).hexdigest(), result
    finally:
        for machine in (source, target):
            if machine is not None and machine.is_running():
                machine.kill()
