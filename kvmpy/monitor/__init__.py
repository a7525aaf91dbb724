"""The monitors: QMP (JSON, for programs) and HMP (text, for people), as QEMU's."""
