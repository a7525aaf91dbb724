"""``kvmpy run`` and ``kvmpy.run``: a command in the bundled guest, the host directory shared at
the same path (read-only unless asked), its output streamed back and its exit status kept."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvmpy
from kvmpy.runner import RUN_EXIT_ERROR, RUN_EXIT_TIMEOUT
from tests.support import kvmpy_env


def kvmpy_run(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmpy", "run", *args], cwd=cwd,
                          env=kvmpy_env(), capture_output=True, text=True, timeout=timeout)


def test_exit_status_and_output(tmp_path: Path) -> None:
    result = kvmpy_run("--", "sh", "-c", "echo hi; echo oops >&2; exit 3", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (3, "hi\n", "oops\n")


def test_share_is_the_working_directory_and_read_only(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(bytes(range(256)) * 1000)
    (tmp_path / "sub").mkdir()
    script = ("pwd; sha256sum data.bin; cd sub && pwd; "
              "touch new 2>&1 || echo refused; ls -A")
    result = kvmpy.run(["sh", "-c", script], share=tmp_path, cwd=tmp_path)
    import hashlib
    digest = hashlib.sha256((tmp_path / "data.bin").read_bytes()).hexdigest()
    lines = result.stdout.decode().splitlines()
    assert lines[0] == str(tmp_path)
    assert lines[1] == f"{digest}  data.bin"
    assert lines[2] == str(tmp_path / "sub")
    assert "Read-only file system" in lines[3] and lines[4] == "refused"
    assert lines[5:] == []
    assert result.returncode == 0
    assert not (tmp_path / "sub" / "new").exists()


def test_rw_share_changes_reach_the_host(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("before\n")
    result = kvmpy_run("--rw", "--", "sh", "-c",
                       "echo made >new; mv old renamed; echo more >>renamed; mkdir d",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "new").read_text() == "made\n"
    assert (tmp_path / "renamed").read_text() == "before\nmore\n"
    assert not (tmp_path / "old").exists() and (tmp_path / "d").is_dir()


def test_signal_input_env_and_api_results(tmp_path: Path) -> None:
    killed = kvmpy.run(["sh", "-c", "kill -TERM $$"], share=None)
    assert killed.returncode == -15
    fed = kvmpy.run(["sh", "-c", "tr a-z A-Z; echo $GREETING"], share=None,
                    input=b"hello\n", env={"GREETING": "hi there"})
    assert (fed.returncode, fed.stdout, fed.stderr) == (0, b"HELLO\nhi there\n", b"")
    missing = kvmpy.run(["no-such-program"], share=None)
    assert missing.returncode == 127 and b"no-such-program" in missing.stderr
    cli = kvmpy_run("--no-share", "--", "sh", "-c", "kill -KILL $$", cwd=tmp_path)
    assert cli.returncode == 128 + 9


def test_output_streams_while_the_command_runs(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "kvmpy", "run", "--", "sh", "-c",
                             "echo first; read -t 20 x </dev/virtio-ports/kvmpy.stdout; "
                             "echo second"],
                            cwd=tmp_path, env=kvmpy_env(), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        # The guest's command blocks reading a port that never gets input: "first" can
        # only have come while it still runs.
        assert proc.stdout.readline() == b"first\n"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_timeout_stops_the_vm(tmp_path: Path) -> None:
    result = kvmpy_run("--timeout", "8", "--", "sleep", "1000", cwd=tmp_path)
    assert result.returncode == RUN_EXIT_TIMEOUT
    assert result.stderr.strip().splitlines()[-1] == \
        "kvmpy run: sleep: still running after 8.0 s; VM stopped"


@pytest.mark.parametrize(("args", "message"), [
    ((), "kvmpy run: no command given (kvmpy run [OPTIONS] -- COMMAND [ARGS...])"),
    (("--share", "/nonexistent", "--", "true"),
     "kvmpy run: --share /nonexistent: not a directory"),
    (("--share", "/", "--", "true"),
     "kvmpy run: --share /: the guest keeps its own root; share a directory below it"),
    (("--env", "NOEQUALS", "--", "true"), "kvmpy run: --env NOEQUALS: expected NAME=VALUE"),
    (("--cwd", "/usr", "--", "true"), None),
    (("-m", "1T", "--", "true"), None),
])
def test_bad_options_give_one_line(args: tuple[str, ...], message: str | None,
                                   tmp_path: Path) -> None:
    result = kvmpy_run(*args, cwd=tmp_path, timeout=60)
    assert result.returncode == RUN_EXIT_ERROR
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    if message is not None:
        assert last == message
    else:
        assert last.startswith("kvmpy run: ")


def test_run_from_a_subdirectory_of_the_share(tmp_path: Path) -> None:
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    (tmp_path / "top.txt").write_text("top\n")
    result = kvmpy_run("--share", str(tmp_path), "--", "sh", "-c", "pwd; cat ../../top.txt",
                       cwd=sub)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{sub}\ntop\n"


def test_readme_guest_agent_example_runs_as_written(tmp_path: Path) -> None:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    if not readme.is_file():
        pytest.skip("README.md is not next to the tests (running outside a checkout)")
    section = readme.read_text().split("## Running commands in a guest", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "no python block in the section"
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=kvmpy_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "0 b'1\\n'\n"
