"""Fixtures for the 9P server tests: a share with a canary file and directory beside it.

Every test that uses ``env`` ends by checking that nothing outside the share was written
(the canary tree is unchanged) and that no reply carried the canary's secret bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kvmpy.fs import FsDev, Server
from tests.fs.client import Client

SECRET = b"CANARY-SECRET-7f3e9a"


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    out: dict[str, tuple[int, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            out[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, data)
    return out


class WatchingClient(Client):
    """A client that fails the test if any reply contains the canary secret."""

    def raw(self, data: bytes, room: int | None = None) -> bytes:
        reply = super().raw(data, room)
        assert SECRET not in reply, "a reply carried bytes from outside the share"
        return reply


@dataclass
class Env:
    base: Path
    share: Path
    outside: Path
    servers: list[Server] = field(default_factory=list)

    def server(self, model: str = "passthrough", readonly: bool = False,
               fmode: int = 0o600, dmode: int = 0o700, max_msize: int = 512 * 1024) -> Server:
        fsdev = FsDev(id="fs0", path=str(self.share), security_model=model, readonly=readonly,
                      fmode=fmode, dmode=dmode)
        server = Server(fsdev, max_msize=max_msize)
        self.servers.append(server)
        return server

    def client(self, model: str = "passthrough", readonly: bool = False,
               msize: int = 512 * 1024, **kwargs: int) -> WatchingClient:
        """A client with a finished Tversion and Tattach (fid 0 = the root)."""
        client = WatchingClient(self.server(model, readonly, **kwargs), msize)
        client.version(msize)
        client.attach(0)
        return client


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    share = tmp_path / "share"
    share.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_bytes(SECRET + b"\n")
    (outside / "dir").mkdir()
    (outside / "dir" / "inner.txt").write_bytes(SECRET + b" inner\n")
    (tmp_path / "canary.txt").write_bytes(SECRET + b" beside\n")
    before = _snapshot(outside)
    before_top = sorted(p.name for p in tmp_path.iterdir())
    beside = (tmp_path / "canary.txt").stat().st_mtime_ns
    e = Env(tmp_path, share, outside)
    yield e
    for server in e.servers:
        server.close()
    assert _snapshot(outside) == before, "something outside the share changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == before_top
    assert (tmp_path / "canary.txt").read_bytes() == SECRET + b" beside\n"
    assert (tmp_path / "canary.txt").stat().st_mtime_ns == beside


@pytest.fixture
def fd_count() -> Callable[[], int]:
    return lambda: len(os.listdir("/proc/self/fd"))
