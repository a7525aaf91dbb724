"""Firmware: kvmpy's own SBI (``-bios builtin``) and finding the system's OpenSBI."""
