"""kvmpy-ga under random input, built for this host with AddressSanitizer and
UndefinedBehaviorSanitizer: garbage bytes and mutated requests never crash it or corrupt its
memory, and after a resynchronisation it answers as before."""

from __future__ import annotations

import json
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmpy.guest_agent import GuestAgent, GuestAgentError

from .test_kvmpy_ga_native import CC, SOURCE, PipeTransport

# Requests whose mutations cannot start programs or touch files on the host.
SEEDS = [
    {"execute": "guest-sync-delimited", "arguments": {"id": 12}},
    {"execute": "guest-ping", "id": [1, "two", {"3": None}]},
    {"execute": "guest-info"},
    {"execute": "guest-get-osinfo"},
    {"execute": "guest-file-read", "arguments": {"handle": 1000, "count": 17}},
    {"execute": "guest-file-close", "arguments": {"handle": 1001}},
    {"execute": "guest-exec-status", "arguments": {"pid": 1}},
    {"execute": "guest-shutdown", "arguments": {"mode": "halt"}},  # ignored outside a port
]


@pytest.fixture(scope="module")
def sanitized_agent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SOURCE.is_file() or CC is None:
        pytest.skip("no kvmpy-ga source or no C compiler")
    binary = tmp_path_factory.mktemp("kvmpy-ga-asan") / "kvmpy-ga"
    result = subprocess.run([CC, "-g", "-O1", "-fsanitize=address,undefined",
                             "-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror",
                             "-o", str(binary), str(SOURCE)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"no sanitizer runtime: {result.stderr.strip()[-300:]}")
    return binary


@pytest.fixture
def fuzzed(sanitized_agent: Path, tmp_path: Path) -> Iterator[tuple[GuestAgent, PipeTransport]]:
    proc = subprocess.Popen([str(sanitized_agent), "-p", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                            env={"PATH": "/nonexistent"})
    transport = PipeTransport(proc)
    yield GuestAgent(transport, timeout=20), transport
    transport.close()
    try:
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    assert proc.returncode == 0 and "Sanitizer" not in stderr, stderr[-3000:]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        choice = rng.random()
        position = rng.randrange(len(out) + 1)
        if choice < 0.4 and out:
            out[min(position, len(out) - 1)] = rng.choice(b'{}[]",:\\0123456789-eE.tfn \x00'
                                                          b'\x7f\x80\xc3\xff')
        elif choice < 0.7:
            out[position:position] = rng.choice([b"\\u", b"\\ud800", b'"', b"[", b"{", b"-",
                                                 b"1e999999", b"99999999999999999999", b"\xff"])
        elif out:
            del out[position:position + rng.randint(1, 8)]
    return bytes(out)


def test_random_and_mutated_input_never_breaks_the_agent(
        fuzzed: tuple[GuestAgent, PipeTransport]) -> None:
    client, transport = fuzzed
    rng = random.Random(20261205)
    for round_ in range(40):
        batch = b""
        for _ in range(25):
            if rng.random() < 0.3:
                batch += bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
            else:
                batch += mutate(rng, json.dumps(rng.choice(SEEDS)).encode())
        transport.send(batch)
        # Whatever the agent made of that, it resynchronises and answers.
        try:
            client.sync()
        except GuestAgentError as exc:
            raise AssertionError(f"round {round_}: {exc}") from exc
        client.ping()
        assert transport.proc.poll() is None
