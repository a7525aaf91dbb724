"""Save and restore of the running bundled Linux guest: ``vm.save(path)`` and
``kvmpy.VM.restore(path)`` (tmpfs contents kept, uptime going on from the save, the console
answering, two VMs from one file at once), ``save_vm``/``load_vm`` into a VM created with the
same arguments, a live save while the guest writes memory, and files that must be refused
with one line while the VM they were meant for stays as it was."""

from __future__ import annotations

import hashlib
import io
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmpy import guests
from kvmpy.migration import LiveSaver, VmStateError, load_vm, save_vm
from kvmpy.migration.stream import FORMAT_VERSION, MAGIC
from kvmpy.vm import VM

PROMPT = re.escape(guests.PROMPT)
BOOT_TIMEOUT = 180.0
OPTIONS: dict[str, Any] = {"machine": "virt", "accel": "tcg", "memory": "128M"}
SLEEP_ON_DISK = 3.0


def shell(vm: VM, command: str, pattern: str, timeout: float = 30) -> re.Match[str]:
    vm.console.send(command + "\n")
    match = vm.console.expect(pattern, timeout=timeout)
    if pattern != PROMPT:
        vm.console.expect(PROMPT, timeout=timeout)
    return match


def output(vm: VM, command: str, pattern: str) -> str:
    """The whole output line of ``command`` that matches ``pattern``."""
    return shell(vm, command, rf"\n({pattern})\r?\n").group(1)


def uptime(vm: VM) -> float:
    return float(output(vm, "cat /proc/uptime", r"\d+\.\d+ \d+\.\d+").split()[0])


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, float]]:
    """A file of the bundled guest at its prompt with /tmp/mark written, and its uptime."""
    path = tmp_path_factory.mktemp("vmstate") / "guest.vms"
    vm = VM(**OPTIONS).launch()
    try:
        vm.console.expect(PROMPT, timeout=BOOT_TIMEOUT)
        shell(vm, "echo kept-$((6*7)) > /tmp/mark", PROMPT)
        stats = vm.save(path)
        assert vm.status == "running"              # savevm keeps the run state
        saved_uptime = uptime(vm)                  # a little after the save point
        assert stats.ram_bytes < 128 << 20 and stats.pages > 0
        assert path.stat().st_blocks * 512 < stats.ram_bytes + (4 << 20)  # zero pages: holes
        shell(vm, "echo after-save > /tmp/mark", PROMPT)
    finally:
        vm.kill()
    yield path, saved_uptime


def test_restored_guest_carries_on(saved: tuple[Path, float]) -> None:
    path, saved_uptime = saved
    time.sleep(SLEEP_ON_DISK)
    vm = VM.restore(path)
    try:
        assert vm.status == "running"
        assert output(vm, "cat /tmp/mark", r"kept-\d+") == "kept-42"
        restored = uptime(vm)
        # guest time went on from the save, not by the seconds the file sat on disk
        assert restored < saved_uptime + SLEEP_ON_DISK
        shell(vm, "echo answer-$((7*6))", "answer-42")
    finally:
        vm.kill()


def test_two_vms_from_one_file_at_once(saved: tuple[Path, float]) -> None:
    path, _ = saved
    first = VM.restore(path)
    second = VM.restore(path, start_paused=True)
    try:
        assert second.status == "paused"
        shell(first, "echo first > /tmp/mark", PROMPT)
        second.resume()
        assert output(second, "cat /tmp/mark", r"kept-\d+|first") == "kept-42"
        assert output(first, "cat /tmp/mark", r"kept-\d+|first") == "first"
        # Both map the file's RAM copy-on-write: the pages they only read are shared.
        mappings = file_mappings(path)
        assert len(mappings) >= 2
        assert sum(m.get("Shared_Clean", 0) for m in mappings) > 0
    finally:
        first.kill()
        second.kill()


def file_mappings(path: Path) -> list[dict[str, int]]:
    """The kB counters of each mapping of ``path`` in this process (/proc/self/smaps)."""
    found: list[dict[str, int]] = []
    current: dict[str, int] | None = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                current = {} if fields[-1] == str(path) else None
                if current is not None:
                    found.append(current)
            elif current is not None and len(fields) == 3 and fields[2] == "kB":
                current[fields[0].rstrip(":")] = int(fields[1])
    return found


def test_a_restored_vm_saves_and_restores_again(saved: tuple[Path, float],
                                                tmp_path: Path) -> None:
    path, _ = saved
    vm = VM.restore(path)
    try:
        shell(vm, "echo again > /tmp/second", PROMPT)
        vm.pause()
        vm.save(tmp_path / "again.vms")
        assert vm.status == "paused"
    finally:
        vm.kill()
    again = VM.restore(tmp_path / "again.vms")
    try:
        assert output(again, "cat /tmp/second /tmp/mark", r"again\r?\nkept-42")
    finally:
        again.kill()


@pytest.fixture
def paused_target() -> Iterator[VM]:
    """A VM created with the saved VM's arguments, paused before its first instruction."""
    vm = VM(**OPTIONS, start_paused=True).launch()
    yield vm
    vm.kill()


def fingerprint(vm: VM) -> tuple[dict[str, int], str]:
    system = vm.system
    digest = hashlib.sha256(system.ram.view).hexdigest()
    return vm.registers(), digest


def refused(vm: VM, data: bytes) -> str:
    before = fingerprint(vm)
    with pytest.raises(VmStateError) as info:
        vm._on_loop(lambda: load_vm(vm.system, io.BytesIO(data)))
    assert fingerprint(vm) == before
    message = str(info.value)
    assert "\n" not in message and message.startswith("vmstate: ")
    return message


def test_load_vm_into_a_vm_of_the_same_arguments(saved: tuple[Path, float],
                                                 paused_target: VM) -> None:
    path, _ = saved
    with open(path, "rb") as f:
        paused_target._on_loop(lambda: load_vm(paused_target.system, f))
    paused_target.resume()
    assert output(paused_target, "cat /tmp/mark", r"kept-\d+") == "kept-42"


def test_truncated_corrupt_and_newer_files_are_refused(saved: tuple[Path, float],
                                                       paused_target: VM) -> None:
    path, _ = saved
    buf = io.BytesIO()
    vm = VM.restore(path, start_paused=True)   # the packed (stream) form of the same VM
    try:
        vm._on_loop(lambda: save_vm(vm.system, buf))
    finally:
        vm.kill()
    data = buf.getvalue()
    assert data.startswith(MAGIC)
    for cut in (0, 10, 40, len(data) // 3, len(data) // 2, len(data) - 5):
        assert "truncated" in refused(paused_target, data[:cut]) or cut < 16
    for at in (60, len(data) // 2, len(data) - 300, len(data) - 2):
        flipped = bytearray(data)
        flipped[at] ^= 0x40
        assert "corrupt" in refused(paused_target, bytes(flipped))
    newer = bytearray(data)
    struct.pack_into("<I", newer, 8, FORMAT_VERSION + 1)
    assert "newer" in refused(paused_target, bytes(newer))
    assert "not a kvmpy VM state" in refused(paused_target, b"QEVM" + data[4:])
    paused_target.resume()                    # the untouched VM boots as it would have
    paused_target.console.expect(PROMPT, timeout=BOOT_TIMEOUT)


@pytest.mark.parametrize("options,message", [
    ({"memory": "256M"}, "saved with -m 128M, this VM has -m 256M"),
    ({"smp": "2"}, "saved with -smp 1, this VM has -smp 2"),
    ({"devices": ["virtio-rng-device"]}, "different device set"),
    ({"machine": "spike"}, "state of machine 'virt', this VM is 'spike'"),
])
def test_a_vm_of_other_arguments_refuses_the_state(saved: tuple[Path, float],
                                                   options: dict[str, Any],
                                                   message: str) -> None:
    path, _ = saved
    vm = VM(**{**OPTIONS, **options}, start_paused=True).launch()
    try:
        assert message in refused(vm, path.read_bytes())
    finally:
        vm.kill()
    with pytest.raises(VmStateError, match=re.escape(message)):
        VM.restore(path, **options)


def test_live_save_while_the_guest_writes_memory(saved: tuple[Path, float],
                                                 paused_target: VM) -> None:
    path, _ = saved
    source = VM.restore(path)
    out = io.BytesIO()
    try:
        shell(source, "(i=0; while true; do i=$((i+1)); echo $i > /tmp/c; mv /tmp/c /tmp/count;"
              " done) &", PROMPT)
        saver = LiveSaver(source.system, out)
        source._on_loop(saver.begin)
        sent = []
        for i in range(3):
            sent.append(source._on_loop(saver.iterate))
            shell(source, f"echo pass-{i} > /tmp/pass", PROMPT)  # surely dirties pages
        assert all(n > 0 for n in sent)
        source.pause()
        count = source.memory.read(0x80000000, 16)          # anything: RAM is as sent
        stats = source._on_loop(saver.complete)
        assert stats.total_bytes == len(out.getvalue()) and saver.iterations == 4
        source.resume()                                      # the source runs on
        shell(source, "echo source-on", "source-on")
    finally:
        source.kill()
    target = paused_target
    target._on_loop(lambda: load_vm(target.system, io.BytesIO(out.getvalue())))
    assert target.memory.read(0x80000000, 16) == count
    target.resume()
    first = int(output(target, "cat /tmp/count", r"\d+"))
    second = int(output(target, "sleep 1; cat /tmp/count", r"\d+"))
    assert second > first > 0                               # the writer goes on
    assert output(target, "cat /tmp/mark", r"kept-\d+") == "kept-42"


def test_cancelled_live_save_leaves_the_source_as_it_was(saved: tuple[Path, float]) -> None:
    path, _ = saved
    source = VM.restore(path)
    try:
        saver = LiveSaver(source.system, io.BytesIO())
        source._on_loop(saver.begin)
        source._on_loop(saver.iterate)
        source._on_loop(saver.cancel)
        assert not source.system.ram.dirty_logging
        assert source.status == "running"
        shell(source, "echo still-$((1+1))", "still-2")
    finally:
        source.kill()


def _rewrite(data: bytes, edit_header: Any, edit_state: Any) -> bytes:
    """A stream with its header and machine state changed (records otherwise copied)."""
    from kvmpy.migration import codec
    from kvmpy.migration.stream import (
        TAG_END,
        TAG_HEADER,
        TAG_STATE,
        StreamReader,
        StreamWriter,
    )

    reader = StreamReader(io.BytesIO(data))
    reader.start()
    out = io.BytesIO()
    writer = StreamWriter(out)
    writer.start()
    while True:
        tag, flags, length, _ = reader.record_head()
        payload = reader.read(length)
        reader.read(4)
        if tag == TAG_END:
            writer.end()
            return out.getvalue()
        if tag == TAG_HEADER:
            payload = codec.encode(edit_header(codec.decode(payload)))
        elif tag == TAG_STATE:
            payload = codec.encode(edit_state(codec.decode(payload)))
        writer.record(tag, payload, flags)


def test_a_state_of_an_in_kernel_irqchip_board_loads_on_the_interpreter() -> None:
    """What a state saved under -accel kvm looks like at the board level (no ACLINT, the
    SBI in the kernel), made from one saved here with -bios
    builtin, loads into the interpreter's board with -bios builtin and the guest goes on.
    (The hart state's KVM side is in test_state_hart; the real KVM in ci/nested-kvm.)"""
    options = {**OPTIONS, "bios": "builtin"}
    vm = VM(**options).launch()
    buf = io.BytesIO()
    try:
        vm.console.expect(PROMPT, timeout=BOOT_TIMEOUT)
        shell(vm, "echo kvm-shaped > /tmp/mark", PROMPT)
        vm.pause()
        vm._on_loop(lambda: save_vm(vm.system, buf))
    finally:
        vm.kill()

    def as_kvm_header(header: dict[str, Any]) -> dict[str, Any]:
        fp = header["fingerprint"]
        fp.update(irqchip="kernel", firmware="sbi",
                  devices=[d for d in fp["devices"] if ":Aclint" not in d])
        return header

    def as_kvm_state(state: dict[str, Any]) -> dict[str, Any]:
        devices = state["devices"]
        for key in [k for k in devices if k.startswith("riscv.aclint")]:
            del devices[key]
        # The PLIC keeps the layout this guest booted with: a guest addresses contexts by
        # the indexes of its device tree, so a loaded state brings its layout along (a real
        # KVM guest's S-only one: tests/migration/test_state_devices.py, ci/nested-kvm).
        return state

    data = _rewrite(buf.getvalue(), as_kvm_header, as_kvm_state)
    target = VM(**options, start_paused=True).launch()
    try:
        target._on_loop(lambda: load_vm(target.system, io.BytesIO(data)))
        target.resume()
        assert output(target, "cat /tmp/mark", r"kvm-shaped") == "kvm-shaped"
        shell(target, "sleep 1; echo timer-ok", "timer-ok")
    finally:
        target.kill()


def test_restore_of_a_missing_or_argumentless_file_says_why(tmp_path: Path,
                                                            paused_target: VM) -> None:
    with pytest.raises(VmStateError, match="cannot open") as info:
        VM.restore(tmp_path / "missing.vms")
    assert "\n" not in str(info.value)
    bare = tmp_path / "bare.vms"
    with open(bare, "wb") as f:               # save_vm without the arguments of a VM
        paused_target._on_loop(lambda: save_vm(paused_target.system, f))
    with pytest.raises(VmStateError, match="does not say how the VM was created"):
        VM.restore(bare)
    with open(bare, "rb") as f:               # it still loads into a VM made alike
        paused_target._on_loop(lambda: load_vm(paused_target.system, f, map_ram=True))
    assert paused_target.status == "prelaunch"


def test_save_to_an_unwritable_place_says_why(paused_target: VM, tmp_path: Path) -> None:
    with pytest.raises(VmStateError, match="cannot write") as info:
        paused_target.save(tmp_path / "no-such-dir" / "x.vms")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    assert paused_target.status == "prelaunch"


@pytest.mark.parametrize("options", [{"smp": "2", "bios": "builtin"}, {"smp": "3"}])
def test_smp_guest_restores_with_every_hart(options: dict[str, Any], tmp_path: Path) -> None:
    vm = VM(**{**OPTIONS, **options}).launch()
    try:
        vm.console.expect(PROMPT, timeout=BOOT_TIMEOUT)
        vm.save(tmp_path / "smp.vms")
    finally:
        vm.kill()
    restored = VM.restore(tmp_path / "smp.vms")
    try:
        assert output(restored, "nproc", r"\d+") == options["smp"]
        for cpu in range(int(options["smp"])):   # every hart runs a program, and sleeps
            ran_on = output(restored, f"taskset -c {cpu} sh -c 'sleep 0.2; "
                                      "cut -d\" \" -f39 /proc/self/stat'", r"\d+")
            assert ran_on == str(cpu)
    finally:
        restored.kill()
