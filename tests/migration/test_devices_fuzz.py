"""Device states from a state file are untrusted: whatever a file holds in place of a
device's state, ``set_state`` either takes it or refuses it with VmStateError, and a refused
state leaves the device exactly as it was."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmpy.fs import FsDev, Server
from kvmpy.hw.core import device_new
from kvmpy.hw.pci import GpexHost
from kvmpy.hw.virtio import RawImage, VirtioBlk, VirtioMmio, VirtioSerial
from kvmpy.hw.virtio.console import VirtConsole
from kvmpy.hw.virtio.ninep import VirtioNineP
from kvmpy.memory import GuestRAM, MmioBus
from kvmpy.migration import VmStateError
from kvmpy.registry_init import load_types
from tests.fs.client import Client
from tests.hw.conftest import BufferChardev, FakeIrq
from tests.hw.virtio_drivers import MMIO_BASE, MmioDriver, VirtioPciTestDriver, host_bus

RAM_BASE = 0x80000000
load_types()  # device_new by type name, as -device does

values = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 3), st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0xFFFF, 0x10000, 1024, 1025, 0xFFFFFFFF]),
    st.binary(max_size=8), st.sampled_from([b"", bytes(256), bytes(4096), b"/", b".."]),
    st.text(max_size=8), st.sampled_from(["52:54:00:12:34:56", "virtio-rng-device"]),
    st.lists(st.integers(0, 3), max_size=3), st.dictionaries(st.text(max_size=3),
                                                             st.integers(), max_size=2))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:4]):
            out += _paths(item, (*prefix, i))
    return out


def _mutate(state: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    if not path:
        return value
    state = copy.deepcopy(state)
    parent = state
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "delete" and isinstance(parent, dict):
        del parent[last]
    elif action == "extend" and isinstance(parent[last], list):
        parent[last].append(value)
    else:
        parent[last] = value
    return state


def _devices(tmp: Path, closing: contextlib.ExitStack) -> list[Any]:
    """Devices with states worth mutating: a driver has set each of them up; what they hold
    open is closed by ``closing``."""
    ram = GuestRAM(RAM_BASE, 1 << 20)
    closing.callback(ram.close)
    image = tmp / "disk.img"
    if not image.exists():
        image.write_bytes(bytes(1 << 16))
    share = tmp / "share"
    share.mkdir(exist_ok=True)
    (share / "f").write_bytes(b"x")
    made = []
    serial = VirtioSerial(max_ports=2)
    serial.add_port(VirtConsole(backend=BufferChardev()))
    server = Server(FsDev(id="f0", path=str(share), security_model="none"))
    closing.callback(server.close)
    client = Client(server)
    client.version(8192)
    client.attach(0)
    client.walk(0, 1, "f")
    client.lopen(1, 0)
    images = [RawImage(str(image)), RawImage(str(image))]
    for disk in images:
        closing.callback(disk.close)
    for device in (VirtioBlk(image=images[0]), serial,
                   device_new("virtio-net-device", {}),
                   VirtioNineP(server=server, mount_tag="t")):
        transport = VirtioMmio(FakeIrq(1), ram=ram, device=device, force_legacy=False)
        bus = MmioBus()
        bus.add(MMIO_BASE, transport.region_size, transport)
        MmioDriver(bus, ram, MMIO_BASE, False).probe(queues=len(device.queue_sizes))
        made.append(transport)
    host = GpexHost([FakeIrq(32 + i) for i in range(4)])
    port = device_new("pcie-root-port", {"chassis": "1"})
    host.bus.plug(port, 1 << 3)
    host.bus.plug(device_new("virtio-blk-pci", {}, ram=ram, image=images[1]), 2 << 3)
    VirtioPciTestDriver(host_bus(host), ram, 2 << 3, legacy=False).probe()
    made.append(host.ecam)
    return made


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_state_is_taken_or_refused_cleanly(tmp_path: Path, data: st.DataObject) -> None:
    with contextlib.ExitStack() as closing:
        _take_or_refuse(_devices(tmp_path, closing), data)


def _take_or_refuse(devices: list[Any], data: st.DataObject) -> None:
    device = data.draw(st.sampled_from(devices))
    good = device.get_state()
    state = good
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(state)))
        action = data.draw(st.sampled_from(["replace", "delete", "extend"]))
        state = _mutate(state, path, action, data.draw(values))
    try:
        device.set_state(state)
    except VmStateError as exc:
        assert "\n" not in str(exc)
        assert device.get_state() == good
    else:
        device.set_state(device.get_state())  # what it took, it gives back
    device.set_state(good)
    assert device.get_state() == good
