"""The suite runs against the installed package when ci/test says so."""

import os
import sysconfig
from pathlib import Path

import pytest

import kvmpy


@pytest.mark.skipif(os.environ.get("KVMPY_TEST_INSTALLED") != "1",
                    reason="only meaningful under ci/test, which installs the package first")
def test_kvmpy_is_imported_from_the_installed_package() -> None:
    purelib = Path(sysconfig.get_paths()["purelib"]).resolve()
    platlib = Path(sysconfig.get_paths()["platlib"]).resolve()
    location = Path(kvmpy.__file__).resolve()
    assert purelib in location.parents or platlib in location.parents, location
