"""pytest fixtures for VM lifecycle tests (registered through the ``pytest11`` entry point).

``vm_factory(**options)`` creates :class:`kvmpy.VM` objects (``process=True`` for
:class:`kvmpy.ProcessVM`; ``agent=True`` for a guest agent port) that are always torn down;
``vm`` is one launched VM on the bundled guest; ``guest`` is the answering guest agent of one
(``guest.exec(["uname", "-r"])``).  When a test fails, the console log of each of its VMs is
attached to the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

VmFactory = Callable[..., Any]


@pytest.fixture
def vm_factory(request: pytest.FixtureRequest) -> Iterator[VmFactory]:
    from kvmpy.process import ProcessVM
    from kvmpy.vm import VM

    created: list[Any] = []

    def make(*args: Any, process: bool = False, launch: bool = True, **options: Any) -> Any:
        machine = (ProcessVM if process else VM)(*args, **options)
        created.append(machine)
        if launch:
            machine.launch()
        return machine

    request.node.kvmpy_vms = created
    try:
        yield make
    finally:
        for machine in reversed(created):
            try:
                if machine.is_running():
                    machine.shutdown()
            except Exception:
                machine.kill()


@pytest.fixture
def vm(vm_factory: VmFactory) -> Any:
    """A launched ``kvmpy.VM`` of the virt board booting the bundled guest."""
    return vm_factory(machine="virt")


@pytest.fixture
def guest(vm_factory: VmFactory) -> Any:
    """The guest agent (:class:`kvmpy.GuestAgent`) of a launched ``kvmpy.VM`` booting the bundled
    guest with ``agent=True``, once it answers."""
    machine = vm_factory(machine="virt", agent=True)
    machine.guest.wait_ready()
    return machine.guest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for index, machine in enumerate(getattr(item, "kvmpy_vms", [])):
        try:
            log = machine.console.log
        except Exception:
            continue
        report.sections.append((f"kvmpy console {index}", log[-20000:]))
