"""When the interpreter core does not load, the one line says where kvmpy was imported from and
what to do: the usual case is a source tree, whose core is not built, shadowing the copy that
``pip install .`` built (the current directory comes first on ``sys.path``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kvmpy
from kvmpy.accel.tcg import core

PACKAGE = Path(kvmpy.__file__).resolve().parent
PYPROJECT = '[project]\nname = "kvmpy"\n'
NOT_BUILT = ModuleNotFoundError(f"No module named '{core.ENGINE}'", name=core.ENGINE)


def make_tree(root: Path) -> Path:
    """A checkout: ``root/pyproject.toml`` and ``root/kvmpy``; returns the package."""
    (root / "kvmpy").mkdir(parents=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    return root / "kvmpy"


def make_site(site: Path, editable_tree: Path | None = None) -> Path:
    """A site directory where pip installed kvmpy (its core built), or an editable install of
    ``editable_tree``; returns the package pip's metadata points to."""
    info = site / "kvmpy-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kvmpy\nVersion: 0.1.0\n")
    if editable_tree is not None:
        (info / "direct_url.json").write_text(json.dumps(
            {"dir_info": {"editable": True}, "url": editable_tree.as_uri()}))
        (info / "RECORD").write_text("__editable__.kvmpy-0.1.0.pth,,\n")
        package = editable_tree / "kvmpy"
    else:
        (info / "RECORD").write_text("kvmpy/__init__.py,,\nkvmpy/accel/tcg/_engine.abi3.so,,\n")
        package = site / "kvmpy"
    (package / "accel" / "tcg").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").touch()
    (package / "accel" / "tcg" / "_engine.abi3.so").touch()
    return package


def test_a_source_tree_in_the_current_directory_shadows_the_installed_copy(
        tmp_path: Path) -> None:
    package = make_tree(tmp_path / "clone")
    installed = make_site(tmp_path / "site")
    assert core.installed_copy(package, [str(tmp_path / "site")]) == installed
    assert core.not_built_reason(package, NOT_BUILT, installed, cwd=tmp_path / "clone") == (
        "the interpreter core is not built: kvmpy was imported from the source tree in the "
        f"current directory, {tmp_path / 'clone'}, not from the installed copy at {installed}; "
        f"run from another directory, or build the tree with 'pip install -e .' in "
        f"{tmp_path / 'clone'}")


def test_an_editable_install_of_another_tree_is_the_installed_copy(tmp_path: Path) -> None:
    package = make_tree(tmp_path / "clone")
    other = make_tree(tmp_path / "work").parent
    installed = make_site(tmp_path / "site", editable_tree=other)
    assert core.installed_copy(package, [str(tmp_path / "site")]) == installed


def test_an_editable_install_of_this_very_tree_is_no_other_copy(tmp_path: Path) -> None:
    package = make_tree(tmp_path / "clone")
    make_site(tmp_path / "site", editable_tree=package.parent)
    assert core.installed_copy(package, [str(tmp_path / "site")]) is None
    assert core.not_built_reason(package, NOT_BUILT, None, cwd=tmp_path) == (
        f"the interpreter core is not built: kvmpy was imported from the source tree "
        f"{tmp_path / 'clone'}; build it with 'pip install -e .' in {tmp_path / 'clone'} "
        "(or 'python kvmpy/accel/tcg/_build.py' there)")


def test_an_installed_copy_without_its_core_is_reinstalled(tmp_path: Path) -> None:
    package = make_site(tmp_path / "site")
    assert core.not_built_reason(package, NOT_BUILT, None) == (
        f"the interpreter core is not built in {package}; reinstall kvmpy "
        "('pip install --force-reinstall .' in its source tree)")


def test_a_core_that_does_not_load_says_why(tmp_path: Path) -> None:
    package = make_tree(tmp_path / "clone")
    error = ImportError("_engine.abi3.so: undefined symbol: tcg_run\nmore")
    assert core.not_built_reason(package, error, None, cwd=tmp_path).startswith(
        "the interpreter core does not load (_engine.abi3.so: undefined symbol: tcg_run): "
        f"kvmpy was imported from the source tree {tmp_path / 'clone'}; ")


@pytest.mark.skipif(core.unavailable_reason() is not None,
                    reason="the kvmpy under test has no built core either")
def test_import_from_an_unbuilt_clone_names_both_copies(tmp_path: Path) -> None:
    """The reported case: ``python3 -c 'import kvmpy; kvmpy.VM().launch()'`` in the root of a
    clone whose core is not built, with kvmpy installed (the copy under test)."""
    clone = tmp_path / "clone"
    shutil.copytree(PACKAGE, clone / "kvmpy", ignore=shutil.ignore_patterns(
        "_engine.*", "__pycache__", "*.xz", "*.cpio.gz"))
    (clone / "pyproject.toml").write_text(PYPROJECT)
    installed = core.installed_copy(clone / "kvmpy")
    proc = subprocess.run([sys.executable, "-c", "import kvmpy; kvmpy.VM().launch()"],
                          cwd=clone, capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    last = proc.stderr.splitlines()[-1]
    assert proc.returncode == 1
    assert ("tcg: the interpreter core is not built: kvmpy was imported from the source tree in "
            f"the current directory, {clone}") in last
    if installed is not None:
        assert f"not from the installed copy at {installed}; " in last
    assert "'pip install -e .'" in last
