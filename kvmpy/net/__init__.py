"""Network back-ends (``-netdev``): what a NIC's frames go to and come from."""

from kvmpy.net import stream, tap, user
from kvmpy.net.base import NetBackend, netdev_class

__all__ = ["NetBackend", "netdev_class", "stream", "tap", "user"]
