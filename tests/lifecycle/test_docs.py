"""The README's "Using kvmpy from Python" example runs as written, and so does
``examples/test_lifecycle.py`` through the pytest plugin's fixtures."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import kvmpy_env

ROOT = Path(__file__).resolve().parents[2]


def _readme_example() -> str:
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.skip("README.md is not next to the tests (running outside a checkout)")
    text = readme.read_text()
    section = text.split("## Using kvmpy from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block in the section"
    return match.group(1)


def test_readme_example_runs_as_written(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(_readme_example())
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=kvmpy_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "'guest': True" in result.stdout
    assert "'reason': 'guest-shutdown'" in result.stdout


def _plugin_registered() -> bool:
    return any(ep.name == "kvmpy" for ep in importlib.metadata.entry_points(group="pytest11"))


def test_example_runs_with_the_plugin_fixtures() -> None:
    example = ROOT / "examples" / "test_lifecycle.py"
    if not example.is_file():
        pytest.skip("examples/ is not next to the tests (running outside a checkout)")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--rootdir", str(example.parent), str(example)]
    if not _plugin_registered():  # a source tree that is not installed
        command[3:3] = ["-p", "kvmpy.pytest_plugin"]
    result = subprocess.run(command, cwd=example.parent, env=kvmpy_env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
