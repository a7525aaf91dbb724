"""The 9P2000.L file server behind ``-fsdev local`` / ``-virtfs`` (virtio-9p's back-end)."""

from kvmpy.fs.fsdev import FsDev, parse_fsdev, parse_virtfs
from kvmpy.fs.server import Server

__all__ = ["FsDev", "Server", "parse_fsdev", "parse_virtfs"]
