"""Character devices: the 16550A UART."""

from kvmpy.hw.char.serial import SerialMM

__all__ = ["SerialMM"]
