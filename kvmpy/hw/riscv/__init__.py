"""RISC-V boards: QEMU's ``virt`` (``virt.py``) with its device tree and boot helpers."""
