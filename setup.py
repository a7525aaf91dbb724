"""Builds the interpreter core (kvmpy/accel/tcg/engine.c) and the device models' C halves
(kvmpy/hw/) and the KVM run loop in C (kvmpy/accel/kvm/vcpu_loop.c) through cffi; metadata is
in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["kvmpy/accel/tcg/_build.py:ffibuilder", "kvmpy/hw/_build.py:ffibuilder",
                   "kvmpy/accel/kvm/_build.py:ffibuilder"])
