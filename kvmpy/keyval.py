"""QEMU's option grammar: ``-opt [implied=]value,prop=val,...``.

QEMU 7.2 has two dialects, and kvmpy keeps both because users rely on their differences:

* **keyval** (``util/keyval.c``; ``-machine``, ``-accel``, ``-display``, ``-name``): the implied
  value ends at the first comma, every other item must be ``key=value``
  ("Expected '=' after parameter 'aclint'"), keys are QAPI names
  ("Invalid parameter ''").
* **QemuOpts** (``util/qemu-option.c``; ``-device``, ``-chardev``, ``-m``, ``-smp``, ``-mon``,
  ``-icount``): ``,,`` escapes a comma in the implied value too, and a bare ``key`` means
  ``key=on`` (``nokey`` means ``key=off`` when ``key`` is a known option).

In both, ``,,`` is a literal comma inside a value, a later ``key=`` replaces an earlier one, and
``help`` or ``?`` as a bare item asks for help.  ``key=help`` asks for the help of that one
property (a kvmpy extension: QEMU rejects it as a bad value).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

from kvmpy.errors import ConfigError

HELP_WORDS = ("help", "?")
_KEY_FRAGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_+-]*\Z")
_INDEX_FRAGMENT = re.compile(r"\d+\Z")
_MAX_KEY_LEN = 127


@dataclass
class ParsedOptions:
    """One option argument split into properties (string values, in the order given)."""

    props: dict[str, str] = field(default_factory=dict)
    help: bool = False
    """A bare ``help`` / ``?`` item (``-M help``, ``-device virtio-rng-device,help``)."""
    help_prop: str | None = None
    """``prop=help``: the property whose help was asked for."""
    repeated: dict[str, list[str]] = field(default_factory=dict)
    """Every value of a key given more than once, in order (``hostfwd=...,hostfwd=...``):
    the options whose QAPI type is a list keep them all."""

    def set(self, key: str, value: str) -> None:
        if key in self.props:
            self.repeated.setdefault(key, [self.props[key]]).append(value)
        self.props[key] = value

    def values(self, key: str) -> list[str]:
        """All values given for ``key``, in order."""
        if key in self.repeated:
            return list(self.repeated[key])
        return [self.props[key]] if key in self.props else []


def is_help(text: str) -> bool:
    return text in HELP_WORDS


def _check_key(key: str) -> None:
    """Keys are QAPI names, dotted for nested properties (``file.driver``)."""
    fragments = key.split(".")
    for index, fragment in enumerate(fragments):
        if len(fragment) > _MAX_KEY_LEN:
            kind = "Parameter fragment" if len(fragments) > 1 else "Parameter"
            raise ConfigError(f"{kind} '{fragment}' is too long")
        if _KEY_FRAGMENT.match(fragment):
            continue
        if index > 0 and _INDEX_FRAGMENT.match(fragment):
            continue
        raise ConfigError(f"Invalid parameter '{key}'")


def _read_value(text: str, pos: int) -> tuple[str, int]:
    """A value from ``pos`` to the next single comma; ``,,`` is a comma. Returns (value, next)."""
    out: list[str] = []
    n = len(text)
    while pos < n:
        ch = text[pos]
        if ch == ",":
            if pos + 1 < n and text[pos + 1] == ",":
                out.append(",")
                pos += 2
                continue
            return "".join(out), pos + 1
        out.append(ch)
        pos += 1
    return "".join(out), pos


def parse(text: str, implied_key: str | None = None, *, qemuopts: bool = False,
          known_keys: Collection[str] | None = None) -> ParsedOptions:
    """Parse ``text`` as an option argument; raises ConfigError with QEMU's wording.

    ``implied_key`` names the property a leading ``value`` (without ``key=``) sets, e.g.
    ``type`` for ``-machine``.  ``qemuopts`` selects the QemuOpts dialect (see the module
    docstring); ``known_keys`` lets it resolve ``nokey`` to ``key=off``.
    """
    result = ParsedOptions()
    pos, n = 0, len(text)
    first = True
    while pos < n:
        end = pos
        while end < n and text[end] not in "=,":
            end += 1
        key = text[pos:end]
        has_value = end < n and text[end] == "="
        if not has_value and key and is_help(key):
            result.help = True
            pos = end + 1
            first = False
            continue
        if first and implied_key is not None and qemuopts and not key and not has_value:
            result.props[implied_key] = ""
            pos = end + 1
            first = False
            continue
        if first and implied_key is not None and key and not has_value:
            if qemuopts:
                value, pos = _read_value(text, pos)
            else:
                value, pos = key, end + 1
            result.props[implied_key] = value
            first = False
            continue
        first = False
        if not has_value:
            if not qemuopts or not key:
                if key:
                    _check_key(key)
                    raise ConfigError(f"Expected '=' after parameter '{key}'")
                raise ConfigError("Invalid parameter ''")
            name, value = key, "on"
            if (known_keys is not None and key not in known_keys and key.startswith("no")
                    and key[2:] in known_keys):
                name, value = key[2:], "off"
            result.set(name, value)
            pos = end + 1
            continue
        if not qemuopts:
            _check_key(key)
        elif not key:
            raise ConfigError("Invalid parameter ''")
        value, pos = _read_value(text, end + 1)
        if is_help(value):
            result.help_prop = key
            continue
        result.set(key, value)
    return result


def unparse(props: dict[str, str]) -> str:
    """The inverse of :func:`parse` for simple dictionaries (commas doubled)."""
    return ",".join(f"{key}={value.replace(',', ',,')}" for key, value in props.items())
