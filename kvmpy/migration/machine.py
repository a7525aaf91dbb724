"""The machine part of a VM state: fingerprint, harts, devices, built-in SBI, clock.

Collected with the VM paused; applied only after every part was checked, and rolled back
when a device refuses its state, so that a load never leaves a half-restored VM.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from kvmpy.errors import KvmpyError
from kvmpy.migration.errors import VmStateError
from kvmpy.migration.hart import check_hart_state, get_hart_state, set_hart_state

if TYPE_CHECKING:
    from kvmpy.system import System

STATE_VERSION = 1


def region_key(region: Any) -> str:
    """A device's stable name in a state: its region name and base (``serial@0x10000000``)."""
    return f"{region.name}@0x{region.base:x}"


def describe(device: Any) -> str:
    """What a device is, for the fingerprint: its type, the device behind a transport
    (``VirtioMmio/VirtioRng``), or what its own ``vmstate_fingerprint()`` says (a host
    bridge lists its functions there)."""
    own = getattr(device, "vmstate_fingerprint", None)
    if own is not None:
        return str(own())
    name = type(device).__name__
    inner = getattr(device, "device", None)
    if inner is not None and not isinstance(inner, (int, str)):
        name += "/" + type(inner).__name__
    return name


def _firmware(system: System) -> str:
    """The firmware mode, with KVM's in-kernel SBI and the built-in one the same ("sbi"):
    both give an S-mode kernel the same SBI, which is what makes states cross accelerators."""
    mode = system.firmware_mode
    if mode == "builtin" or (mode == "none" and system.caps.in_kernel_timer_ipi):
        return "sbi"
    return mode


def _is_clint(entry: str) -> bool:
    return entry.rpartition(":")[2].startswith("Aclint")


def fingerprint(system: System) -> dict[str, Any]:
    """What must be equal between the saved VM and the one a state is loaded into (the
    ACLINT excepted between an in-kernel and a VMM irqchip: KVM has the timer and IPIs in
    the kernel, the interpreter's board has the ACLINT for them)."""
    machine = system.machine
    ram = system.ram
    return {
        "irqchip": "kernel" if system.caps.in_kernel_timer_ipi else "vmm",
        "timebase": system.caps.timebase_frequency,
        "machine": getattr(type(machine), "name", "?") if machine is not None else "?",
        "smp": len(system.harts),
        "ram": [ram.base, ram.size] if ram is not None else None,
        "firmware": _firmware(system),
        "devices": [f"{region_key(r)}:{describe(r.device)}" for r in system.bus.regions],
    }


def _mib(size: int) -> str:
    return f"{size >> 20}M" if size % (1 << 20) == 0 else f"{size} bytes"


def check_fingerprint(saved: Any, system: System) -> set[str]:
    """VmStateError (one line) on the first difference between ``saved`` and ``system``;
    returns the device keys that may be missing on one side (the ACLINT across
    accelerators)."""
    here = fingerprint(system)
    if not isinstance(saved, dict):
        raise VmStateError("vmstate: corrupt header (no machine fingerprint)")
    optional: set[str] = set()
    devices = saved.get("devices")
    if saved.get("irqchip") != here["irqchip"] and isinstance(devices, list):
        optional = {e.partition(":")[0] for e in [*devices, *here["devices"]]
                    if isinstance(e, str) and _is_clint(e)}
        devices = [e for e in devices if not (isinstance(e, str) and _is_clint(e))]
        here["devices"] = [e for e in here["devices"] if not _is_clint(e)]
    if saved.get("timebase", here["timebase"]) != here["timebase"]:
        raise VmStateError(f"vmstate: state saved with a {saved.get('timebase')} Hz timebase, "
                           f"this VM's is {here['timebase']} Hz")
    if saved.get("machine") != here["machine"]:
        raise VmStateError(f"vmstate: state of machine '{saved.get('machine')}', this VM is "
                           f"'{here['machine']}'")
    if saved.get("smp") != here["smp"]:
        raise VmStateError(f"vmstate: state saved with -smp {saved.get('smp')}, this VM has "
                           f"-smp {here['smp']}")
    ram = saved.get("ram")
    if ram != here["ram"]:
        if (isinstance(ram, list) and len(ram) == 2 and all(type(v) is int for v in ram)
                and here["ram"] is not None):
            raise VmStateError(f"vmstate: state saved with -m {_mib(ram[1])}, this VM has "
                               f"-m {_mib(here['ram'][1])}")
        raise VmStateError("vmstate: state of a different RAM layout")
    if saved.get("firmware") != here["firmware"]:
        raise VmStateError(f"vmstate: state saved with firmware '{saved.get('firmware')}', "
                           f"this VM runs '{here['firmware']}'")
    if devices != here["devices"]:
        if not isinstance(devices, list):
            raise VmStateError("vmstate: corrupt header (device list)")
        extra = [d for d in devices if d not in here["devices"]]
        missing = [d for d in here["devices"] if d not in devices]
        what = (f"device {extra[0].split(':')[0]} is not in this VM" if extra else
                f"this VM has device {missing[0].split(':')[0]}, the state does not"
                if missing else "devices are in another order")
        raise VmStateError(f"vmstate: different device set: {what}")
    return optional


def _sbi(system: System) -> Any:
    sbi = system.sbi
    return sbi if sbi is not None and hasattr(sbi, "get_state") else None


def read_clock(system: System) -> int:
    """mtime as the guest sees it now (the frozen value while the VM is stopped)."""
    frozen = getattr(system, "_frozen_mtime", None)
    if frozen is not None:
        return int(frozen)
    accel = system.accel
    if accel is not None and not hasattr(accel, "read_mtime") and accel.vcpus:
        from kvmpy.accel.kvm import state as kvm_state

        return kvm_state.read_time(accel.vcpus[0])
    return int(system.time_source.read())


def write_clock(system: System, mtime: int) -> None:
    """Make guest time continue from ``mtime`` when the VM next runs (as pause does)."""
    accel = system.accel
    if accel is not None and hasattr(accel, "write_mtime"):
        if system.status == "running":
            system.time_source.write(mtime)
        else:
            system._frozen_mtime = mtime
        return
    if accel is not None and accel.vcpus:
        from kvmpy.accel.kvm import state as kvm_state

        kvm_state.write_time(accel.vcpus, mtime)


def drain(system: System) -> None:
    """Every device with ``drain()`` finishes the requests it has in flight."""
    for obj in _stateful(system):
        drainer = getattr(obj, "drain", None)
        if drainer is not None:
            drainer()


def devices(system: System) -> list[tuple[str, Any]]:
    """(key, device) of every device with a state, once each (a device behind several
    windows is keyed by its first)."""
    seen: set[int] = set()
    out: list[tuple[str, Any]] = []
    for region in system.bus.regions:
        device = region.device
        if id(device) in seen or getattr(device, "get_state", None) is None:
            continue
        seen.add(id(device))
        out.append((region_key(region), device))
    return out


def _stateful(system: System) -> Iterator[Any]:
    for _, device in devices(system):
        yield device
    sbi = _sbi(system)
    if sbi is not None:
        yield sbi


def collect(system: System) -> dict[str, Any]:
    """The state of harts, devices, SBI and clock (VM paused, devices drained)."""
    accel = system.accel
    if accel is None:
        raise VmStateError("vmstate: the VM has no accelerator yet")
    sbi = _sbi(system)
    return {
        "version": STATE_VERSION,
        "harts": [get_hart_state(vcpu) for vcpu in accel.vcpus],
        "devices": {key: _device_state(key, device) for key, device in devices(system)},
        "sbi": sbi.get_state() if sbi is not None else None,
        "clock": {"mtime": read_clock(system)},
    }


def _device_state(key: str, device: Any) -> Any:
    try:
        return device.get_state()
    except VmStateError:
        raise
    except Exception as exc:  # a device that cannot say its state: the save fails, not kvmpy
        raise VmStateError(f"vmstate: device {key} cannot be saved: "
                           f"{type(exc).__name__}: {exc}") from exc


def check(state: Any, system: System, optional: set[str] | None = None) -> dict[str, Any]:
    """``state`` (decoded from a stream) checked as far as it can be without applying it;
    devices keyed in ``optional`` may be missing on either side."""
    if not isinstance(state, dict):
        raise VmStateError("vmstate: corrupt state record")
    if state.get("version") != STATE_VERSION:
        raise VmStateError(f"vmstate: machine state version {state.get('version')} is not "
                           f"{STATE_VERSION}")
    harts = state.get("harts")
    if not isinstance(harts, list) or len(harts) != len(system.harts):
        raise VmStateError("vmstate: corrupt state record (number of harts)")
    checked_harts = [check_hart_state(h, i) for i, h in enumerate(harts)]
    accel = system.accel
    if accel is not None and getattr(accel, "caps", None) is not None \
            and not accel.caps.machine_mode:
        for i, hart in enumerate(checked_harts):
            if hart["priv"] == 3:
                raise VmStateError(f"vmstate: hart {i} is in M-mode, which "
                                   f"'{accel.name}' cannot run (M-mode firmware state)")
    saved = state.get("devices")
    if not isinstance(saved, dict):
        raise VmStateError("vmstate: corrupt state record (devices)")
    keys = {key for key, _ in devices(system)}
    odd = sorted((set(saved) ^ keys) - (optional or set()))
    if odd:
        raise VmStateError(f"vmstate: different device set: {odd[0]}")
    clock = state.get("clock")
    if (not isinstance(clock, dict) or type(clock.get("mtime")) is not int
            or not 0 <= clock["mtime"] < 1 << 64):
        raise VmStateError("vmstate: corrupt state record (clock)")
    return {**state, "harts": checked_harts}


@contextlib.contextmanager
def _rollback_on_error(undo: list[Any]) -> Iterator[None]:
    try:
        yield
    except BaseException:
        undo_all(undo)
        raise


def apply_devices(state: dict[str, Any], system: System) -> list[Any]:
    """Load the devices' and the SBI's states of a :func:`check`-ed state; each device
    validates its own, and a refusal rolls back those already set (VmStateError).  Returns
    the functions that undo it all, for a later failure."""
    undo: list[Any] = []
    with _rollback_on_error(undo), system.lock:
        for key, device in devices(system):
            if key not in state["devices"]:  # optional, and not in the state: as it is
                continue
            old = device.get_state()
            try:
                device.set_state(state["devices"][key])
            except VmStateError as exc:
                message = str(exc)
                raise VmStateError(message if key in message else f"{message} ({key})"
                                   ) from None
            except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                raise VmStateError(f"vmstate: device {key}: state not accepted ({exc})"
                                   ) from None
            undo.append(lambda d=device, o=old: d.set_state(o))
        sbi = _sbi(system)
        if sbi is not None:
            old_sbi = sbi.get_state()
            sbi.set_state(state.get("sbi") or {})
            undo.append(lambda: sbi.set_state(old_sbi))
    return undo


def undo_all(undo: list[Any]) -> None:
    for fn in reversed(undo):
        with contextlib.suppress(Exception):
            fn()


def apply_harts(state: dict[str, Any], system: System) -> None:
    """Load the harts and the clock of a :func:`check`-ed state (after RAM, whose decoded
    code the interpreter then forgets)."""
    accel = system.accel
    assert accel is not None
    with system.lock:
        for vcpu, hart in zip(accel.vcpus, state["harts"], strict=True):
            try:
                set_hart_state(vcpu, hart)
            except (OSError, KvmpyError) as exc:
                if isinstance(exc, VmStateError):
                    raise
                raise VmStateError(f"vmstate: hart {vcpu.index}: the accelerator refused "
                                   f"its state: {exc}") from exc
        for port, hart in zip(system.harts, state["harts"], strict=True):
            if hasattr(port, "_mtimecmp"):
                port._mtimecmp = hart["mtimecmp"]
        # The harts' pins came from the file; a device that changed a line while the
        # devices were loaded (a NIC's announce, ...) drives it again.
        for region in system.bus.regions:
            refresh = getattr(region.device, "refresh_outputs", None)
            if refresh is not None:
                refresh()
        write_clock(system, state["clock"]["mtime"])
