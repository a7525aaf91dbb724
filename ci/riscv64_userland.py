"""A riscv64 Debian 13 userland with kvmpy installed, for qemu-user and nested-KVM runs.

Shared by `ci/riscv64-userland`, `ci/qemu-user` and `ci/nested-kvm`. Stdlib only, runs with the
host's python3. The steps, each cached so that a second run does no network and little work:

1. The Debian mirror comes from the system's apt configuration (never from this file). The
   trixie riscv64 `Packages.gz` is fetched (with `InRelease`, checked with gpgv when the keyring
   is present) into `ci/cache/index/`.
2. The dependency closure of the requested packages is resolved from that index, each `.deb` is
   downloaded into `ci/cache/debs/` and checked against the index's SHA256.
3. The runtime packages are unpacked with `dpkg-deb -x` into `ci/work/rootfs` (merged /usr:
   `bin`, `sbin`, `lib` are links into `usr/`); pure-Python wheels that Debian lacks (`fdt`) are
   fetched with `pip download` into `ci/cache/wheels/` and installed as a wheel installer would.
4. kvmpy is built into a `cp3XX-cp3XX-linux_riscv64` wheel: the package sources plus its cffi
   modules (the interpreter core `kvmpy/accel/tcg/_build.py`, the device models' C halves and
   the KVM run loop in C, each when present), whose C is emitted by the
   userland's own cffi under qemu-user and compiled with `riscv64-linux-gnu-gcc` against the
   riscv64 Python headers (from `libpython3.X-dev`, unpacked into `ci/work/devroot`). The wheel
   is installed into the rootfs' `/usr/local/lib/python3.X/dist-packages`.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import gzip
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "ci" / "cache"
WORK = REPO / "ci" / "work"
ROOTFS = WORK / "rootfs"
DEVROOT = WORK / "devroot"

SUITE = "trixie"
ARCH = "riscv64"
TRIPLET = "riscv64-linux-gnu"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
INDEX_MAX_AGE = 7 * 24 * 3600  # seconds before the cached index is refreshed

# What kvmpy and its tests need at run time on a riscv64 host.
RUNTIME_PACKAGES = [
    "python3",
    "python3-cffi-backend",
    "python3-cffi",
    "python3-pyelftools",
    "python3-psutil",
    "python3-pytest",
    "python3-pytest-timeout",  # pyproject's per-test timeout: a hang fails one test, not the run
    "python3-hypothesis",
    "python3-capstone",
    "busybox-static",
    "libslirp0",  # -netdev user (kvmpy.net.slirp opens libslirp.so.0 and libglib-2.0.so.0)
]
# Only needed to build kvmpy's C core (headers); never part of the runtime rootfs.
BUILD_PACKAGES = ["libpython3-dev"]
# kvmpy's dependencies that Debian does not package: pure-Python wheels from the package index.
WHEELS = ["fdt==0.3.3", "qemu.qmp==0.0.6"]
# Packages pulled in by maintainer-script machinery only; nothing in a chroot-less userland uses
# them.
SKIP_PACKAGES = {"debconf", "dpkg", "perl-base", "init-system-helpers", "cdebconf"}


def log(msg: str) -> None:
    print(f"[riscv64-userland] {msg}", file=sys.stderr, flush=True)


class UserlandError(Exception):
    """A one-line reason the userland could not be assembled."""


# --------------------------------------------------------------------------- mirror


def _apt_source_files() -> list[Path]:
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    return [f for f in files if f.is_file()]


def apt_debian_mirror() -> str:
    """The first Debian archive URI in the system's apt configuration (not a security mirror)."""
    candidates: list[str] = []
    for f in _apt_source_files():
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, v in (
                        line.split(":", 1)
                        for line in stanza.splitlines()
                        if ":" in line and not line.startswith("#")
                    )
                )
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                suites = fields.get("suites", "").split()
                if any(s.endswith("-security") for s in suites):
                    continue
                candidates += fields.get("uris", "").split()
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    opts_end = next((i for i, p in enumerate(rest) if "://" in p), None)
                    if opts_end is None or rest[opts_end + 1 :][:1] == []:
                        continue
                    uri, suite = rest[opts_end], rest[opts_end + 1]
                    if not suite.endswith("-security"):
                        candidates.append(uri)
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    if candidates:
        return candidates[0].rstrip("/")
    raise UserlandError("no Debian mirror found in /etc/apt/sources.list or sources.list.d")


# --------------------------------------------------------------------------- download


def fetch(url: str, dest: Path, *, tries: int = 3) -> None:
    """Download url to dest atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)
            tmp.replace(dest)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise
            last = exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last = exc
        time.sleep(1 + attempt * 2)
    raise UserlandError(f"download failed: {url}: {last}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- index


@dataclass
class Package:
    name: str
    version: str
    filename: str
    sha256: str
    size: int
    depends: list[list[str]] = field(default_factory=list)  # AND of OR-groups of names
    provides: list[str] = field(default_factory=list)


def _parse_relations(value: str) -> list[list[str]]:
    groups = []
    for group in value.split(","):
        alts = []
        for alt in group.split("|"):
            alt = re.sub(r"\(.*?\)|\[.*?\]|<.*?>", "", alt).strip()
            if alt:
                alts.append(alt.split(":", 1)[0])  # python3:any -> python3
        if alts:
            groups.append(alts)
    return groups


def parse_packages(text: str) -> dict[str, Package]:
    packages: dict[str, Package] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            k, v = line.split(":", 1)
            fields[k] = v.strip()
        if "Package" not in fields or "Filename" not in fields:
            continue
        deps = _parse_relations(fields.get("Pre-Depends", "")) + _parse_relations(
            fields.get("Depends", "")
        )
        provides = [g[0] for g in _parse_relations(fields.get("Provides", ""))]
        packages[fields["Package"]] = Package(
            fields["Package"],
            fields["Version"],
            fields["Filename"],
            fields["SHA256"],
            int(fields["Size"]),
            deps,
            provides,
        )
    return packages


class Index:
    """The trixie riscv64 main Packages index, cached in ci/cache/index/."""

    def __init__(self, mirror: str, *, refresh: bool = False) -> None:
        self.mirror = mirror
        self.dir = CACHE / "index"
        self.packages_gz = self.dir / f"{SUITE}_main_binary-{ARCH}_Packages.gz"
        stale = (
            not self.packages_gz.exists()
            or time.time() - self.packages_gz.stat().st_mtime > INDEX_MAX_AGE
        )
        if refresh or stale:
            self._download()
        self.packages = parse_packages(gzip.decompress(self.packages_gz.read_bytes()).decode())
        self.providers: dict[str, list[str]] = {}
        for p in self.packages.values():
            for v in p.provides:
                self.providers.setdefault(v, []).append(p.name)

    def _download(self) -> None:
        base = f"{self.mirror}/dists/{SUITE}"
        rel = f"main/binary-{ARCH}/Packages.gz"
        inrelease = self.dir / f"{SUITE}_InRelease"
        fetch(f"{base}/InRelease", inrelease)
        signed = self._check_signature(inrelease)
        fetch(f"{base}/{rel}", self.packages_gz)
        expected = self._release_sha256(inrelease, rel)
        if expected and sha256_file(self.packages_gz) != expected:
            # A mirror in the middle of a sync serves an index that does not match the release
            # file yet; the by-hash copy is the consistent one when the mirror keeps it.
            with contextlib.suppress(urllib.error.HTTPError):
                fetch(f"{base}/main/binary-{ARCH}/by-hash/SHA256/{expected}", self.packages_gz)
            if sha256_file(self.packages_gz) != expected:
                log(
                    f"warning: {rel} does not match {SUITE}/InRelease (mirror syncing?); "
                    "using it, package checksums still come from it"
                )
                return
        log(f"index {rel}: " + ("matches the signed InRelease" if signed else "fetched"))

    @staticmethod
    def _check_signature(inrelease: Path) -> bool:
        if not (KEYRING.exists() and shutil.which("gpgv")):
            return False
        r = subprocess.run(
            ["gpgv", "--keyring", str(KEYRING), str(inrelease)], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise UserlandError(f"{inrelease.name}: bad signature: {r.stderr.strip()[:200]}")
        return True

    @staticmethod
    def _release_sha256(inrelease: Path, rel: str) -> str | None:
        in_sha = False
        for line in inrelease.read_text(errors="replace").splitlines():
            if not line.startswith(" "):
                in_sha = line.startswith("SHA256:")
                continue
            parts = line.split()
            if in_sha and len(parts) == 3 and parts[2] == rel:
                return parts[0]
        return None

    def pick(self, alternatives: list[str]) -> str | None:
        for name in alternatives:
            if name in self.packages:
                return name
        for name in alternatives:
            if name in self.providers:
                return self.providers[name][0]
        return None

    def closure(self, roots: list[str], *, have: set[str] | None = None) -> list[Package]:
        """Packages needed for roots, skipping those in `have` (already present)."""
        have = set(have or ())
        done: dict[str, Package] = {}
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in done or name in have or name in SKIP_PACKAGES:
                continue
            if name not in self.packages:
                raise UserlandError(f"package {name!r} not in the {SUITE} {ARCH} index")
            pkg = self.packages[name]
            done[name] = pkg
            for group in pkg.depends:
                if any(a in done or a in have for a in group):
                    continue
                choice = self.pick(group)
                if choice is None:
                    raise UserlandError(f"{name}: cannot satisfy {' | '.join(group)}")
                if choice in SKIP_PACKAGES or any(a in SKIP_PACKAGES for a in group):
                    continue
                todo.append(choice)
        return sorted(done.values(), key=lambda p: p.name)

    def deb(self, pkg: Package) -> Path:
        """The verified .deb for pkg, from the cache or the mirror."""
        dest = CACHE / "debs" / Path(pkg.filename).name
        if dest.exists() and dest.stat().st_size == pkg.size:
            ok_marker = dest.with_name(dest.name + ".sha256")
            if ok_marker.exists() and ok_marker.read_text().strip() == pkg.sha256:
                return dest
            if sha256_file(dest) == pkg.sha256:
                ok_marker.write_text(pkg.sha256 + "\n")
                return dest
        fetch(f"{self.mirror}/{pkg.filename}", dest)
        got = sha256_file(dest)
        if got != pkg.sha256:
            dest.unlink()
            raise UserlandError(f"{dest.name}: SHA256 {got} does not match the index")
        dest.with_name(dest.name + ".sha256").write_text(pkg.sha256 + "\n")
        return dest


def load_index() -> Index:
    return Index(apt_debian_mirror())


def fetch_debs(index: Index, pkgs: list[Package]) -> list[Path]:
    missing = [p for p in pkgs if not (CACHE / "debs" / Path(p.filename).name).exists()]
    if missing:
        mb = sum(p.size for p in missing) / 1e6
        log(f"downloading {len(missing)} packages ({mb:.1f} MB)")
    try:
        return [index.deb(p) for p in pkgs]
    except urllib.error.HTTPError as exc:
        raise UserlandError(
            f"{exc.url}: HTTP {exc.code} (index out of date? rerun with --refresh-index)"
        ) from None


# --------------------------------------------------------------------------- rootfs


def _stamp(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def make_merged_usr(root: Path) -> None:
    (root / "usr").mkdir(parents=True, exist_ok=True)
    for d in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / d).mkdir(exist_ok=True)
        link = root / d
        if not link.is_symlink():
            if link.exists():
                shutil.rmtree(link)
            link.symlink_to(f"usr/{d}")


def unpack(debs: list[Path], root: Path) -> None:
    """dpkg-deb -x every deb into root, keeping the merged-/usr links."""
    if root.exists():
        shutil.rmtree(root)
    make_merged_usr(root)
    for deb in debs:
        # --keep-directory-symlink semantics: dpkg-deb -x would replace bin/lib links by
        # directories, so extract the data tarball through tar with that option.
        r = subprocess.run(
            f"dpkg-deb --fsys-tarfile {shlex.quote(str(deb))} | "
            f"tar -x --keep-directory-symlink --no-same-owner -C {shlex.quote(str(root))} -f -",
            shell=True,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise UserlandError(f"unpacking {deb.name}: {r.stderr.strip()[:300]}")
    make_merged_usr(root)


def fetch_wheels() -> list[Path]:
    dest = CACHE / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for spec in WHEELS:
        name, version = spec.split("==")
        norm = re.sub(r"[-_.]+", "_", name).lower()
        found = [
            w
            for w in dest.glob("*.whl")
            if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() == norm
            and w.name.split("-")[1] == version
        ]
        if not found:
            log(f"pip download {spec}")
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary=:all:", "-d", str(dest), spec],
                capture_output=True, text=True,
            )  # fmt: skip
            if r.returncode != 0:
                raise UserlandError(f"pip download {spec}: {r.stderr.strip().splitlines()[-1:]}")
            found = [
                w
                for w in dest.glob("*.whl")
                if re.sub(r"[-_.]+", "_", w.name.split("-")[0]).lower() == norm
            ]
        if not found or not found[0].name.endswith("-none-any.whl"):
            raise UserlandError(f"{spec}: no pure-Python wheel ({[w.name for w in found]})")
        out.append(sorted(found)[-1])
    return out


def python_version(root: Path) -> str:
    """'3.13' for the rootfs' Python."""
    libs = sorted(
        p.name[len("python") :]
        for p in (root / "usr" / "lib").glob("python3.*")
        if (p / "os.py").exists()
    )
    if not libs:
        raise UserlandError(f"no Python standard library in {root}/usr/lib")
    return libs[-1]


def site_packages(root: Path) -> Path:
    return root / "usr" / "local" / "lib" / f"python{python_version(root)}" / "dist-packages"


def install_wheel(whl: Path, root: Path, *, scripts_python: str = "/usr/bin/python3") -> None:
    """Install a wheel into root the way pip does for a purelib/platlib wheel: unpack into
    site-packages, generate console scripts from entry_points.txt, write RECORD."""
    site = site_packages(root)
    site.mkdir(parents=True, exist_ok=True)
    bindir = root / "usr" / "local" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as z:
        dist_info = next(n.split("/")[0] for n in z.namelist() if ".dist-info/" in n)
        uninstall(dist_info.split("-")[0], root)
        z.extractall(site)
        eps = site / dist_info / "entry_points.txt"
    record = site / dist_info / "RECORD"
    extra: list[str] = []
    if eps.exists():
        section = ""
        for line in eps.read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line.strip("[]")
            elif "=" in line and section == "console_scripts":
                name, target = (s.strip() for s in line.split("=", 1))
                mod, func = target.split(":")
                script = bindir / name
                script.write_text(
                    f"#!{scripts_python}\nimport sys\nfrom {mod} import {func}\n"
                    f"if __name__ == '__main__':\n    sys.exit({func}())\n"
                )
                script.chmod(0o755)
                extra.append(os.path.relpath(script, site))
    with open(record, "a") as f:
        for e in extra:
            f.write(f"{e},,\n")
    (site / dist_info / "INSTALLER").write_text("ci/riscv64_userland\n")


def uninstall(dist: str, root: Path) -> None:
    site = site_packages(root)
    norm = re.sub(r"[-_.]+", "_", dist).lower()
    for di in site.glob("*.dist-info"):
        if re.sub(r"[-_.]+", "_", di.name.rsplit("-", 1)[0]).lower() != norm:
            continue
        record = di / "RECORD"
        if record.exists():
            for row in csv.reader(record.read_text().splitlines()):
                if row:
                    p = (site / row[0]).resolve()
                    if p.is_file() and str(p).startswith(str(root.resolve())):
                        p.unlink()
        shutil.rmtree(di, ignore_errors=True)
    for d in sorted(site.rglob("*"), reverse=True):  # empty directories left behind
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


# --------------------------------------------------------------------------- qemu-user


def qemu_env(root: Path = ROOTFS, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "QEMU_"))
    }
    env["QEMU_LD_PREFIX"] = str(root)
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


def run_python(
    args: list[str], *, root: Path = ROOTFS, check: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run the rootfs' python3 under qemu-riscv64-static (no binfmt needed)."""
    qemu = shutil.which("qemu-riscv64-static") or shutil.which("qemu-riscv64")
    if qemu is None:
        raise UserlandError("qemu-riscv64-static not found (Debian package qemu-user-static)")
    env = kw.pop("env", None) or qemu_env(root)
    kw.setdefault("cwd", str(WORK))  # not the repository: kvmpy must come from site-packages
    cmd = [qemu, "-L", str(root), str(root / "usr" / "bin" / "python3"), *args]
    return subprocess.run(cmd, env=env, text=True, check=check, **kw)  # type: ignore[call-overload,no-any-return]


def compile_site(root: Path) -> None:
    """Byte-compile site-packages as pip does on install (and the standard library, as Debian's
    postinst does), so later runs under qemu start fast. One process: without binfmt_misc,
    compileall's worker processes could not start under qemu-user."""
    run_python(
        ["-W", "ignore", "-m", "compileall", "-q",
         str(site_packages(root)), str(root / "usr" / "lib" / f"python{python_version(root)}"),
         str(root / "usr" / "lib" / "python3" / "dist-packages")],
        root=root, check=False, capture_output=True,
    )  # fmt: skip


# --------------------------------------------------------------------------- kvmpy wheel


def _kvmpy_sources() -> list[Path]:
    files = []
    for p in sorted((REPO / "kvmpy").rglob("*")):
        if not p.is_file() or "__pycache__" in p.parts:
            continue
        if p.suffix in (".so", ".o", ".pyc") or p.name == "_engine.c":
            continue
        files.append(p)
    return files


def _tree_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(REPO)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _project_meta() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _ext_suffix(pyver: str) -> str:
    return f".cpython-{pyver.replace('.', '')}-{TRIPLET}.so"


EMIT_SCRIPT = r"""
import importlib.util, json, sys, os
build_py, out_c = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.dirname(build_py))
spec = importlib.util.spec_from_file_location("_kvmpy_tcg_build", build_py)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
ffi = None
for name in ("ffibuilder", "ffi", "builder"):
    if hasattr(mod, name):
        ffi = getattr(mod, name); break
if ffi is None:
    ffi = next(v for v in vars(mod).values() if type(v).__name__ == "FFI")
module_name, _src, _srcext, kwds = ffi._assigned_source
ffi.emit_c_code(out_c)
def norm(v):
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else v
print(json.dumps({"module": module_name, "kwds": {k: norm(v) for k, v in kwds.items()}}))
"""


CFFI_BUILDS = ("kvmpy/accel/tcg/_build.py", "kvmpy/hw/_build.py", "kvmpy/accel/kvm/_build.py")
"""kvmpy's cffi modules (setup.py's cffi_modules): the interpreter core first, then the device
models' C halves and the KVM run loop in C (optional: kvmpy runs their Python paths without)."""


def cross_build_tcg(root: Path, build_dir: Path) -> tuple[str, Path] | None:
    """Cross-compile kvmpy's cffi interpreter core; (module name, .so path) or None if the
    core is not in the tree yet."""
    return cross_build_module(root, build_dir, REPO / CFFI_BUILDS[0])


def cross_build_module(root: Path, build_dir: Path, build_py: Path) -> tuple[str, Path] | None:
    """Cross-compile the cffi module of ``build_py``; (module name, .so path) or None when the
    script is not in the tree."""
    import json

    tcg = build_py.parent
    if not build_py.exists():
        log(f"{build_py.relative_to(REPO)} not present: building kvmpy without its module")
        return None
    pyver = python_version(root)
    build_dir.mkdir(parents=True, exist_ok=True)
    out_c = build_dir / f"{build_py.parent.name}_gen.c"
    # The userland's own cffi writes the C, so the module matches its _cffi_backend exactly.
    r = run_python(
        ["-c", EMIT_SCRIPT, str(build_py), str(out_c)], root=root, capture_output=True,
        check=False, cwd=str(tcg),
    )  # fmt: skip
    if r.returncode != 0:
        raise UserlandError(f"emitting the cffi C code failed: {r.stderr.strip()[-500:]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    module_name: str = info["module"]
    kwds: dict[str, Any] = info["kwds"]
    cc = os.environ.get("CROSS_CC", f"{TRIPLET}-gcc")
    if shutil.which(cc) is None:
        raise UserlandError(f"{cc} not found (Debian package gcc-{TRIPLET})")
    inc = [
        DEVROOT / "usr" / "include" / f"python{pyver}",
        DEVROOT / "usr" / "include",  # holds only Python's headers (see ensure_userland)
        DEVROOT / "usr" / "include" / TRIPLET / f"python{pyver}",
    ]
    if not (inc[0] / "Python.h").exists():
        raise UserlandError(f"no Python.h in {inc[0]}")

    def rel(p: str) -> str:
        return p if os.path.isabs(p) else str(REPO / p) if (REPO / p).exists() else str(tcg / p)

    sources = [rel(s) for s in kwds.get("sources", [])]
    include_dirs = [rel(d) for d in kwds.get("include_dirs", [])] + [str(tcg)]
    cflags = ["-O2", "-fPIC", "-fno-strict-aliasing", "-DNDEBUG", "-Wall"]
    cflags += [f for f in kwds.get("extra_compile_args", []) if not f.startswith("-march")]
    macros = kwds.get("define_macros", [])
    defines = [f"-D{n}={v}" if v is not None else f"-D{n}" for n, v in macros]
    so = build_dir / (module_name.rsplit(".", 1)[-1] + _ext_suffix(pyver))
    cmd = [
        cc, "-shared", *cflags, *defines,
        *(f"-I{d}" for d in [*include_dirs, *map(str, inc)]),
        str(out_c), *sources, "-o", str(so),
        *(f"-l{lib}" for lib in kwds.get("libraries", [])),
        *kwds.get("extra_link_args", []),
    ]  # fmt: skip
    log(f"cross-compiling {module_name} ({cc})")
    r = subprocess.run(["nice", "-n", "10", *cmd], capture_output=True, text=True)
    if r.returncode != 0:
        raise UserlandError(f"{cc} failed: {r.stderr.strip()[-800:]}")
    if r.stderr.strip():
        log(f"{cc} warnings:\n{r.stderr.rstrip()}")
    return module_name, so


def build_kvmpy_wheel(root: Path, out_dir: Path) -> Path:
    """A kvmpy wheel for linux_riscv64 (cp3XX): package files plus the cross-built core."""
    meta = _project_meta()
    proj = meta["project"]
    assert isinstance(proj, dict)
    name, version = proj["name"], proj["version"]
    pyver = python_version(root)
    tag = f"cp{pyver.replace('.', '')}"
    build = WORK / "build-kvmpy"
    ext = cross_build_tcg(root, build)
    extras = [m for m in (cross_build_module(root, build, REPO / b) for b in CFFI_BUILDS[1:])
              if m is not None]
    plat = "linux_riscv64" if ext else "any"
    wheel_tag = f"{tag}-{tag}-{plat}" if ext else "py3-none-any"
    out_dir.mkdir(parents=True, exist_ok=True)
    whl = out_dir / f"{name}-{version}-{wheel_tag}.whl"
    dist_info = f"{name}-{version}.dist-info"
    records: list[tuple[str, bytes]] = []

    for p in _kvmpy_sources():
        records.append((str(p.relative_to(REPO)), p.read_bytes()))
    for module_name, so in [ext, *extras] if ext else []:
        records.append((module_name.replace(".", "/") + _ext_suffix(pyver), so.read_bytes()))

    md = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    md.append(f"Summary: {proj.get('description', '')}")
    md.append(f"Requires-Python: {proj.get('requires-python', '')}")
    md += [f"Requires-Dist: {d}" for d in proj.get("dependencies", [])]
    records.append((f"{dist_info}/METADATA", ("\n".join(md) + "\n").encode()))
    records.append(
        (
            f"{dist_info}/WHEEL",
            (
                "Wheel-Version: 1.0\nGenerator: ci/riscv64_userland\n"
                f"Root-Is-Purelib: {'false' if ext else 'true'}\nTag: {wheel_tag}\n"
            ).encode(),
        )
    )
    eps = []
    for group, entries in [
        ("console_scripts", proj.get("scripts", {})),
        *list(proj.get("entry-points", {}).items()),
    ]:
        if entries:
            eps.append(f"[{group}]")
            eps += [f"{k} = {v}" for k, v in entries.items()]
            eps.append("")
    records.append((f"{dist_info}/entry_points.txt", "\n".join(eps).encode()))
    records.append((f"{dist_info}/top_level.txt", b"kvmpy\n"))

    tmp = whl.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        lines = io.StringIO()
        w = csv.writer(lines, lineterminator="\n")
        for arc, data in records:
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            w.writerow([arc, f"sha256={digest.decode()}", len(data)])
        w.writerow([f"{dist_info}/RECORD", "", ""])
        z.writestr(f"{dist_info}/RECORD", lines.getvalue())
    for old in out_dir.glob(f"{name}-*.whl"):
        old.unlink()
    tmp.replace(whl)
    return whl


# --------------------------------------------------------------------------- top level


@dataclass
class Userland:
    root: Path
    python: str  # "3.13"
    kvmpy_wheel: Path
    has_tcg_core: bool


def ensure_userland(
    *, refresh_index: bool = False, quiet: bool = False, keep_kvmpy: bool = False
) -> Userland:
    """Assemble (or reuse) ci/work/rootfs with kvmpy installed; returns where it is.

    keep_kvmpy: leave an installed kvmpy as it is even if the tree changed (for experiments
    on the installed copy).
    """
    t0 = time.monotonic()
    stamp_file = WORK / "rootfs.stamp"
    dev_stamp_file = WORK / "devroot.stamp"
    index: Index | None = None

    # 1-3: packages. The stamp lists what is unpacked; the index is only read if it is missing
    # or asked to refresh, so that a second run needs no network.
    want = "\n".join(RUNTIME_PACKAGES + [f"+{w}" for w in WHEELS]) + "\n"
    stamp = _stamp(stamp_file)
    if refresh_index or not stamp.startswith(want) or not (ROOTFS / "usr/bin/python3").exists():
        index = Index(apt_debian_mirror(), refresh=refresh_index)
        pkgs = index.closure(RUNTIME_PACKAGES)
        debs = fetch_debs(index, pkgs)
        wheels = fetch_wheels()
        content = want + "".join(f"{p.name} {p.version} {p.sha256}\n" for p in pkgs)
        content += "".join(f"{w.name}\n" for w in wheels)
        if content != stamp or not (ROOTFS / "usr/bin/python3").exists():
            log(f"unpacking {len(debs)} packages into {ROOTFS.relative_to(REPO)}")
            stamp_file.unlink(missing_ok=True)
            (WORK / "kvmpy.stamp").unlink(missing_ok=True)
            unpack(debs, ROOTFS)
            for w in wheels:
                install_wheel(w, ROOTFS)
            compile_site(ROOTFS)
            stamp_file.write_text(content)

    pyver = python_version(ROOTFS)
    if (REPO / "kvmpy" / "accel" / "tcg" / "_build.py").exists():
        dev_want = "\n".join(BUILD_PACKAGES) + "\n" + _stamp(stamp_file)
        if _stamp(dev_stamp_file) != dev_want or not (DEVROOT / "usr/include").exists():
            index = index or Index(apt_debian_mirror(), refresh=refresh_index)
            runtime = {p.name for p in index.closure(RUNTIME_PACKAGES)}
            dev = index.closure(BUILD_PACKAGES, have=runtime)
            # Only Python's headers are needed; libc and friends come from the cross toolchain.
            dev = [p for p in dev if re.fullmatch(r"libpython3\.\d+-dev", p.name)]
            debs = fetch_debs(index, dev)
            log(f"unpacking {', '.join(p.name for p in dev)} into {DEVROOT.relative_to(REPO)}")
            unpack(debs, DEVROOT)
            dev_stamp_file.write_text(dev_want)

    # 4: kvmpy.
    kstamp_file = WORK / "kvmpy.stamp"
    sources = [*_kvmpy_sources(), REPO / "pyproject.toml", Path(__file__)]
    kwant = _tree_hash(sources) + "\n"
    wheel_dir = WORK / "dist"
    wheels = list(wheel_dir.glob("kvmpy-*.whl"))
    if not wheels or (_stamp(kstamp_file) != kwant and not keep_kvmpy):
        whl = build_kvmpy_wheel(ROOTFS, wheel_dir)
        install_wheel(whl, ROOTFS)
        compile_site(ROOTFS)
        kstamp_file.write_text(kwant)
        log(f"installed {whl.name}")
        wheels = [whl]
    whl = wheels[0]
    has_core = "linux_riscv64" in whl.name
    if not quiet:
        log(f"userland ready in {time.monotonic() - t0:.1f} s: python{pyver}, {whl.name}")
    return Userland(ROOTFS, pyver, whl, has_core)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="ci/riscv64-userland",
        description="Assemble ci/work/rootfs: Debian 13 riscv64 python3 + kvmpy.",
    )
    ap.add_argument("--refresh-index", action="store_true", help="fetch the Packages index again")
    ap.add_argument("--check", action="store_true", help="import kvmpy's dependencies under qemu")
    args = ap.parse_args(argv)
    try:
        u = ensure_userland(refresh_index=args.refresh_index)
        if args.check:
            t = time.monotonic()
            r = run_python(
                ["-c", "import _cffi_backend, elftools, psutil, fdt, kvmpy, platform; "
                 "print(platform.machine(), kvmpy.__file__)"],
                root=u.root, capture_output=True, check=False,
            )  # fmt: skip
            sys.stdout.write(r.stdout)
            sys.stderr.write(r.stderr)
            print(f"check: exit {r.returncode} in {time.monotonic() - t:.1f} s")
            return r.returncode
    except UserlandError as exc:
        print(f"ci/riscv64-userland: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
