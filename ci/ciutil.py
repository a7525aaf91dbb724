"""Small helpers shared by the ci/ scripts: timed steps and a console to expect/send on."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field


@dataclass
class Report:
    """Named steps with their duration and outcome, printed as a table at the end."""

    name: str
    steps: list[tuple[str, float, str]] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        print(f"== {self.name}: {what}", flush=True)
        t = time.monotonic()
        try:
            yield
        except StepFailed as exc:
            self.steps.append((what, time.monotonic() - t, f"FAIL: {exc}"))
            raise
        except BaseException:
            self.steps.append((what, time.monotonic() - t, "FAIL"))
            raise
        self.steps.append((what, time.monotonic() - t, "ok"))

    def print(self) -> None:
        print(f"\n== {self.name}: timings", flush=True)
        for what, secs, outcome in self.steps:
            print(f"  {secs:8.1f} s  {what}: {outcome}")
        print(f"  {time.monotonic() - self.t0:8.1f} s  total", flush=True)


class StepFailed(Exception):
    """A check did not hold; the message is the one-line reason."""


class Console:
    """A child process whose stdout/stderr is watched for patterns and whose stdin is typed on.

    The child runs in its own session so that a timeout kills all of it (and nothing else).
    Everything it prints is echoed to our stdout (prefixed) as it arrives, and kept.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        echo_prefix: str = "  | ",
        merge_stderr: bool = False,
    ) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.out = b""
        self.err = b""
        self._pos = 0
        self._echo_prefix = echo_prefix
        self._line_start = True

    def _echo(self, data: bytes) -> None:
        text = data.decode(errors="replace").replace("\r", "")
        out = []
        for ch in text:
            if self._line_start:
                out.append(self._echo_prefix)
                self._line_start = False
            out.append(ch)
            if ch == "\n":
                self._line_start = True
        sys.stdout.write("".join(out))
        sys.stdout.flush()

    def _pump(self, timeout: float) -> bool:
        """Read what is available within timeout; False at EOF on all streams."""
        fds = []
        if self.proc.stdout and not self.proc.stdout.closed:
            fds.append(self.proc.stdout)
        if self.proc.stderr and not self.proc.stderr.closed:
            fds.append(self.proc.stderr)
        if not fds:
            time.sleep(min(timeout, 0.1))
            return False
        ready, _, _ = select.select(fds, [], [], timeout)
        for f in ready:
            data = os.read(f.fileno(), 65536)
            if not data:
                f.close()
                continue
            if f is self.proc.stdout:
                self.out += data
            else:
                self.err += data
            self._echo(data)
        return True

    def expect(self, pattern: str | bytes, timeout: float) -> re.Match[bytes]:
        """Wait until pattern appears in stdout after the previous match."""
        pat = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = pat.search(self.out, self._pos)
            if m:
                self._pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"timeout after {timeout:.0f} s waiting for {pat.pattern!r}")
            if not self._pump(min(left, 1.0)) and self.proc.poll() is not None:
                m = pat.search(self.out, self._pos)
                if m:
                    self._pos = m.end()
                    return m
                raise StepFailed(
                    f"process exited ({self.proc.returncode}) before {pat.pattern!r} appeared"
                )

    def send(self, text: str) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.write(text.encode())
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass

    def wait(self, timeout: float) -> int:
        """Wait for exit while draining output; kill (group) at the deadline."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise StepFailed(f"still running after {timeout:.0f} s; killed")
            self._pump(min(left, 0.5))
        while self._pump(0.05):
            pass
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_timed(
    argv: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> int:  # fmt: skip
    """Run argv with output passed through; kill its session after timeout (returns 124)."""
    proc = subprocess.Popen(list(argv), env=env, cwd=cwd, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        print(f"timeout: killed after {timeout:.0f} s: {' '.join(argv[:4])} ...", flush=True)
        return 124
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
