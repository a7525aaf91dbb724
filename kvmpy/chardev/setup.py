"""From options to open chardevs: ``-chardev``, the ``-serial``/``-monitor``/``-qmp`` shorthand,
``-mon``, and the frontends handed to the UARTs and monitors (QEMU's ``chardev/char.c``
``qemu_chr_parse_compat`` / ``qemu_chr_new_from_opts`` and ``vl.c``'s serial and monitor setup).

The shorthand: ``stdio``, ``mon:stdio`` (stdio shared by the serial port and a monitor, Ctrl-A
keys, Ctrl-C for the guest), ``null``, ``vc``, ``pty``, ``file:PATH``,
``unix:PATH[,server=on][,wait=off]``, ``tcp:[HOST]:PORT[,server=on][,wait=off]``,
``chardev:ID``, ``none``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmpy import keyval, qom
from kvmpy.chardev.base import Chardev
from kvmpy.chardev.common import Backend
from kvmpy.chardev.mux import MuxChardev
from kvmpy.config import OptionSpec, VMConfig
from kvmpy.errors import ConfigError, NotBuiltError

if TYPE_CHECKING:
    from kvmpy.system import System

COMMON_KEYS = frozenset({"id", "backend", "mux", "logfile", "logappend"})
_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*\Z")
_SIMPLE_BACKENDS = ("null", "stdio", "pty", "vc")
_NOT_BUILT_PREFIXES = ("pipe:", "udp:", "telnet:", "websocket:", "/dev/", "COM", "msmouse",
                       "braille", "testdev", "wctablet", "spicevmc", "spiceport", "qemu-vdagent")


def backend_types() -> dict[str, qom.TypeInfo]:
    """``-chardev`` backend name (``socket``) → its registered type (``chardev-socket``)."""
    types: dict[str, qom.TypeInfo] = {}
    for info in qom.object_class_get_list("chardev"):
        name = getattr(info.cls, "backend", None)
        if isinstance(name, str):
            types[name] = info
    return types


def backend_type(backend: str) -> qom.TypeInfo | None:
    """The registered type of one ``-chardev`` backend: ``chardev-<backend>`` imports just its
    module (:mod:`kvmpy.registry_init`); a name without such a type is looked for among all."""
    info = qom.type_info(f"chardev-{backend}")
    if info is not None and getattr(info.cls, "backend", None) == backend:
        return info
    return backend_types().get(backend)


def chardev_help() -> str:
    """``-chardev help``, from the registry."""
    return "\n".join(["Available chardev backend types: ",
                      *(f"  {name}" for name in sorted(backend_types()))])


def backend_help(backend: str, prop: str | None = None) -> str:
    """``-chardev BACKEND,help`` (or ``prop=help``): that backend's options."""
    info = backend_types().get(backend)
    if info is None:
        raise ConfigError(f"'{backend}' is not a valid char driver name")
    text = qom.property_help(info)
    if prop is None:
        return text
    lines = [line for line in text.splitlines()[1:] if line.strip().startswith(f"{prop}=")]
    if not lines:
        raise ConfigError(f"Invalid parameter '{prop}'")
    return "\n".join([text.splitlines()[0], *lines])


def check_id(chardev_id: str) -> None:
    if not _ID_RE.match(chardev_id):
        raise ConfigError("Parameter 'id' expects an identifier")


def check_props(backend: str, props: dict[str, str]) -> qom.TypeInfo:
    """The backend exists and takes these properties (values are checked at creation)."""
    info = backend_type(backend)
    if info is None:
        raise ConfigError(f"'{backend}' is not a valid char driver name")
    for key in props:
        if key not in COMMON_KEYS and key not in info.properties:
            raise ConfigError(f"Invalid parameter '{key}'")
    return info


def parse_chardev(text: str) -> OptionSpec:
    """``-chardev BACKEND,id=ID,...`` → OptionSpec(driver=BACKEND, props including ``id``)."""
    known = set(COMMON_KEYS)
    for info in backend_types().values():
        known.update(info.properties)
    parsed = keyval.parse(text, "backend", qemuopts=True, known_keys=known)
    props = dict(parsed.props)
    backend = props.pop("backend", "")
    if not backend:
        raise ConfigError("chardev: \"backend\" is not specified" if "id" in props
                          else "chardev: no id specified")
    check_props(backend, props)
    if "id" not in props:
        raise ConfigError("chardev: no id specified")
    check_id(props["id"])
    return OptionSpec(backend, props, f"-chardev {text}")


def parse_compat(text: str) -> tuple[str, dict[str, str], bool]:
    """A ``-serial``-style spec → (backend, props, wants a muxed monitor).

    ``chardev:ID`` and ``none`` are handled by the caller.
    """
    monitor = False
    spec = text
    if spec.startswith("mon:"):
        spec, monitor = spec[4:], True
    backend: str
    props: dict[str, str] = {}
    if spec in _SIMPLE_BACKENDS:
        backend = spec
    elif spec.startswith("vc:"):
        backend = "vc"
    elif spec.startswith("file:"):
        if not spec[5:]:
            raise ConfigError("Could not open '': No such file or directory")
        backend, props = "file", {"path": spec[5:]}
    elif spec.startswith("unix:"):
        path, _, rest = spec[5:].partition(",")
        backend = "socket"
        props = {"path": path, **_socket_opts(rest)}
    elif spec.startswith("tcp:"):
        hostport, _, rest = spec[4:].partition(",")
        host, sep, port = hostport.rpartition(":")
        if not sep or not port:
            raise ConfigError(f"'{text}' is not a valid char driver (tcp:[HOST]:PORT)")
        backend = "socket"
        props = {"host": host.strip("[]"), "port": port, **_socket_opts(rest)}
    elif spec.startswith(_NOT_BUILT_PREFIXES):
        raise NotBuiltError(f"'{spec.split(':')[0]}' chardevs are not built in kvmpy")
    else:
        raise ConfigError(f"'{spec}' is not a valid char driver")
    if monitor:
        props["mux"] = "on"
        if backend == "stdio":
            # QEMU: a monitor muxed with stdio passes Ctrl-C to the guest.
            props["signal"] = "off"
    check_props(backend, props)
    return backend, props, monitor


def _socket_opts(rest: str) -> dict[str, str]:
    info = backend_types()["socket"]
    return keyval.parse(rest, qemuopts=True, known_keys=set(info.properties)).props


def check_compat(text: str) -> None:
    """Syntax check of a ``-serial``/``-monitor``/``-qmp`` spec, for the command line."""
    if text == "none" or text.startswith("chardev:"):
        return
    parse_compat(text)


def _option_text(spec: OptionSpec, option: str) -> str:
    """The option as typed (``OptionSpec.text``), or rebuilt for a library-made spec."""
    if spec.text:
        return spec.text
    props = keyval.unparse(spec.props)
    return f"{option} {spec.driver}{',' + props if props else ''}"


@dataclass
class MonitorSpec:
    """A monitor to create on ``chardev``: ``readline`` (HMP) or ``control`` (QMP)."""

    chardev: Chardev
    mode: str
    pretty: bool
    label: str


class ChardevBuilder:
    """Creates and opens chardevs by id, hands out frontends, closes everything on failure."""

    def __init__(self, *, daemonize: bool = False,
                 on_exit: Callable[[], None] | None = None) -> None:
        self.chardevs: dict[str, Chardev] = {}
        self.daemonize = daemonize
        self.on_exit = on_exit
        self._taken: set[str] = set()

    def create(self, backend: str, props: dict[str, str], chardev_id: str,
               option: str = "") -> Chardev:
        """Create, open and register ``backend`` as ``chardev_id`` (muxed when mux=on)."""
        if chardev_id in self.chardevs:
            raise ConfigError(f"Duplicate ID '{chardev_id}' for chardev")
        info = check_props(backend, props)
        props = dict(props)
        mux = qom.parse_bool("mux", props.pop("mux", "off"))
        props["id"] = chardev_id
        if backend == "stdio" and self.daemonize:
            raise ConfigError("cannot use stdio with -daemonize")
        if backend == "mux":
            inner_id = props.get("chardev", "")
            inner = self.chardevs.pop(inner_id, None)
            if inner is None:
                raise ConfigError(f"chardev: mux: chardev \"{inner_id}\" not found")
            chardev: Chardev = self._mux(inner, chardev_id)
        else:
            chardev = qom.object_new(info.name, props)
            if isinstance(chardev, Backend):
                chardev.option = option
            chardev.open()
            if mux:
                try:
                    chardev = self._mux(chardev, chardev_id)
                except BaseException:
                    chardev.close()
                    raise
        self.chardevs[chardev_id] = chardev
        return chardev

    def _mux(self, inner: Chardev, chardev_id: str) -> MuxChardev:
        mux: MuxChardev = qom.object_new("chardev-mux", {"id": chardev_id}, on_exit=self.on_exit)
        mux.set_backend(inner)
        mux.open()
        return mux

    def add_chardev(self, spec: OptionSpec) -> Chardev:
        """``-chardev``: ``spec.driver`` is the backend, ``spec.props`` include ``id``."""
        props = dict(spec.props)
        chardev_id = props.pop("id", "")
        if not chardev_id:
            raise ConfigError("chardev: no id specified", option=_option_text(spec, "-chardev"))
        try:
            return self.create(spec.driver, props, chardev_id, _option_text(spec, "-chardev"))
        except ConfigError as exc:
            if exc.option is None:
                exc.option = _option_text(spec, "-chardev")
            raise

    def add_compat(self, text: str, label: str, option: str) -> tuple[Chardev, bool]:
        """A ``-serial``/``-monitor``/``-qmp`` spec → (chardev, wants a muxed monitor)."""
        try:
            if text.startswith("chardev:"):
                existing = self.chardevs.get(text[8:])
                if existing is None:
                    raise ConfigError(f"could not connect serial device to character backend "
                                      f"'{text}'")
                return existing, False
            backend, props, monitor = parse_compat(text)
            chardev = self.create(backend, props, label, option)
            if backend == "pty" and hasattr(chardev, "label"):
                chardev.label = label
            return chardev, monitor
        except ConfigError as exc:
            if exc.option is None:
                exc.option = option
            raise

    def frontend(self, chardev: Chardev, option: str = "") -> Chardev:
        """The chardev a frontend installs its handlers on: a new mux frontend when muxed."""
        if isinstance(chardev, MuxChardev):
            try:
                return chardev.add_frontend()
            except ConfigError as exc:
                exc.option = exc.option or option
                raise
        label = str(chardev.id)
        if label in self._taken:
            raise ConfigError(f"Device '{label}' is in use", option=option or None)
        self._taken.add(label)
        return chardev

    def close_all(self) -> None:
        for chardev in self.chardevs.values():
            chardev.close()
        self.chardevs.clear()


@dataclass
class VMChardevs:
    """What :func:`create_chardevs` made: backends by id, serial frontends, monitor specs."""

    chardevs: dict[str, Chardev]
    serials: list[Chardev | None]
    monitors: list[MonitorSpec]


def create_chardevs(config: VMConfig, *, on_exit: Callable[[], None] | None = None) \
        -> VMChardevs:
    """Open every chardev the configuration names, in QEMU's order, and pair frontends.

    Serial frontends are taken before monitor frontends, so on a shared ``mon:stdio`` the
    serial port has the focus at start, as in QEMU.
    """
    builder = ChardevBuilder(daemonize=config.daemonize, on_exit=on_exit)
    serials: list[Chardev | None] = []
    monitors: list[MonitorSpec] = []
    try:
        for spec in config.chardevs:
            builder.add_chardev(spec)
        muxed_monitors: list[tuple[Chardev, str]] = []
        for index, text in enumerate(config.serial):
            option = f"-serial {text}"
            chardev, monitor = builder.add_compat(text, f"serial{index}", option)
            serials.append(builder.frontend(chardev, option))
            if monitor:
                muxed_monitors.append((chardev, option))
        for chardev, option in muxed_monitors:
            monitors.append(MonitorSpec(builder.frontend(chardev, option), "readline", False,
                                        str(chardev.id)))
        plain = [(text, "readline", False, "-monitor") for text in config.monitor]
        plain += [(text, "control", pretty, "-qmp-pretty" if pretty else "-qmp")
                  for text, pretty in config.qmp]
        for counter, (text, mode, pretty, opt) in enumerate(plain):
            option = f"{opt} {text}"
            spec_text = text[4:] if text.startswith("mon:") else text
            label = f"compat_monitor{counter}"
            chardev, _ = builder.add_compat(spec_text, label, option)
            monitors.append(MonitorSpec(builder.frontend(chardev, option), mode, pretty, label))
        for mon in config.mon:
            option = _option_text(mon, "-mon")
            chardev_opt = builder.chardevs.get(mon.driver)
            if chardev_opt is None:
                raise ConfigError(f"chardev \"{mon.driver}\" not found", option=option)
            mode = mon.props.get("mode", "readline")
            pretty = qom.parse_bool("pretty", mon.props.get("pretty", "off"))
            monitors.append(MonitorSpec(builder.frontend(chardev_opt, option), mode, pretty,
                                        mon.driver))
    except BaseException:
        builder.close_all()
        raise
    return VMChardevs(builder.chardevs, serials, monitors)


def _module(name: str) -> Any:
    try:
        found = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        found = None
    return importlib.import_module(name) if found is not None else None


def make_monitor(system: System, spec: MonitorSpec) -> Any:
    """The monitor object for ``spec``: ``kvmpy.monitor.create_monitor(system, spec)`` when
    that exists, else HmpMonitor/QmpMonitor on the frontend; the spec itself when the monitor
    package is not there."""
    package = _module("kvmpy.monitor")
    factory = getattr(package, "create_monitor", None)
    if callable(factory):
        return factory(system, spec)
    if spec.mode == "control":
        qmp = _module("kvmpy.monitor.qmp")
        if qmp is not None:
            return qmp.QmpMonitor(spec.chardev, pretty=spec.pretty)
    else:
        hmp = _module("kvmpy.monitor.hmp_chardev")  # the commands wait for a first line
        if hmp is not None:
            return hmp.HmpMonitor(spec.chardev)
    return spec


def open_backends(system: System) -> tuple[dict[str, Chardev], list[Chardev | None], list[Any]]:
    """The System's hook: (chardevs by id, serial frontends, monitor objects).

    ``C-a x`` on a mux asks the System for a ``host-qmp-quit`` shutdown; monitors are made by
    :func:`make_monitor`.
    """
    made = create_chardevs(system.config,
                           on_exit=lambda: system.request_shutdown("host-qmp-quit", False))
    monitors: list[Any] = []
    try:
        for spec in made.monitors:
            monitors.append(make_monitor(system, spec))
    except BaseException:
        for chardev in made.chardevs.values():
            chardev.close()
        raise
    return made.chardevs, made.serials, monitors
