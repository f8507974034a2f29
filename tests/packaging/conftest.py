"""Fixtures for the packaging tests: the .deb built by packaging/build-deb, and throwaway roots to install
it into.

A throwaway root is a copy-on-write view of this (Debian) machine: an overlay whose lower layer is the host's
root file system and whose upper layer is a tmpfs, mounted in a private mount namespace held open by one
``unshare`` process. ``dpkg`` runs chrooted into it, so the maintainer scripts really run (adduser,
deb-systemd-helper, ...) against a real Debian system, while every change lands in the tmpfs and vanishes
with the namespace. The upper layer is exactly "what changed", which makes "purge leaves nothing behind"
checkable file by file.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_DEB = REPO / "packaging" / "build-deb"

# Changes that dpkg, adduser and deluser make to the system's own bookkeeping, not to the package's files.
BOOKKEEPING = (
    "/var/lib/dpkg/",
    "/var/log/",
    "/var/cache/debconf/",
    "/var/cache/man/",  # man-db's trigger re-indexes the man pages on install and purge
    "/etc/passwd-",
    "/etc/group-",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/.pwd.lock",
)


def build_deb(out_dir: Path, revision: str = "1") -> Path:
    env = {**os.environ, "OUT_DIR": str(out_dir), "DEB_REVISION": revision}
    t0 = time.monotonic()
    proc = subprocess.run([str(BUILD_DEB)], env=env, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    if proc.returncode != 0:
        pytest.fail(f"build-deb failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    debs = sorted(out_dir.glob(f"edge-agent_*-{revision}_*.deb"))
    assert len(debs) == 1, debs
    print(f"\nbuild-deb revision {revision}: {debs[0].name}, {debs[0].stat().st_size / 1e6:.1f} MB, {took:.1f}s")
    return debs[0]


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mount namespace + overlay for the throwaway root)")
    for tool in ("unshare", "nsenter", "chroot", "dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


def once_per_run(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Path]) -> Path:
    """What ``make(folder)`` returns, made once for the whole run even when pytest-xdist runs several worker
    processes (each has its own session fixtures): the first worker makes it under a lock in the run's shared
    temporary folder, the others wait for that lock and take the same file."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # popen-gwN's parent: shared by the run's workers
    folder = base / f"shared-{name}"
    folder.mkdir(exist_ok=True)
    with (base / f"shared-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder / "made"
        if done.exists():
            return Path(done.read_text())
        made = make(folder)
        done.write_text(str(made))
        return made


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return once_per_run(tmp_path_factory, "deb1", lambda folder: build_deb(folder, "1"))


def next_revision(deb: Path, out_dir: Path, revision: str) -> Path:
    """The same package under a later Debian revision, for the upgrade tests: dpkg sees a newer version and
    runs every maintainer script of an upgrade (prerm upgrade, preinst upgrade, postinst configure with the
    old version), which is what those tests check. Repacking the built tree saves a second build-deb run
    (a whole virtual environment with OpenCV: minutes on 2 cores); build-deb itself is tested by ``deb``."""
    tree = out_dir / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    control = tree / "DEBIAN" / "control"
    lines = control.read_text().splitlines()
    version = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Version:"))
    upstream = version.rsplit("-", 1)[0]
    control.write_text("".join(
        f"Version: {upstream}-{revision}\n" if line.startswith("Version:") else line + "\n" for line in lines))
    arch = deb.stem.rsplit("_", 1)[1]
    out = out_dir / f"edge-agent_{upstream}-{revision}_{arch}.deb"
    # gzip -1: the test's copy needs no small size, only to be quick to make
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree), str(out)],
                   check=True, capture_output=True)
    shutil.rmtree(tree)
    return out


@pytest.fixture(scope="session")
def deb_v2(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return once_per_run(tmp_path_factory, "deb2", lambda folder: next_revision(deb, folder, "2"))


SETUP = r"""
set -e
T="$1"
mkdir -p "$T"
mount -t tmpfs -o size=2g,mode=0755 edge-agent-test "$T"
mkdir "$T/upper" "$T/work" "$T/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$T/root"
mount -t proc proc "$T/root/proc"
mount --rbind /dev "$T/root/dev"
mount --rbind /sys "$T/root/sys"
mount -t tmpfs tmpfs "$T/root/run"
mount -t tmpfs tmpfs "$T/root/tmp"
echo READY
exec sleep 3600
"""


class ThrowawayRoot:
    """A private copy-on-write root; ``run`` executes a shell command chrooted into it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", SETUP, "setup", str(base)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "READY":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            pytest.fail(f"could not set up the throwaway root: {err}")

    @property
    def merged(self) -> str:
        return f"{self.base}/root"

    def host(self, cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace but outside the chroot (sees both the host and the root)."""
        return subprocess.run(
            ["nsenter", "--target", str(self.proc.pid), "--mount", "sh", "-c", cmd],
            capture_output=True, text=True, timeout=timeout,
        )

    def run(self, cmd: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
        proc = subprocess.run(
            ["nsenter", "--target", str(self.proc.pid), "--mount", "chroot", self.merged, "sh", "-c", cmd],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
        if check and proc.returncode != 0:
            pytest.fail(f"in throwaway root: {cmd!r} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def put(self, src: Path, dest: str) -> None:
        r = self.host(f"cp '{src}' '{self.merged}{dest}'")
        assert r.returncode == 0, r.stderr

    def changes(self) -> set[str]:
        """Paths that differ from the host: files whose content or type differs, new directories, and
        deletions (overlay whiteouts). Bookkeeping of dpkg/adduser is left out."""
        script = r"""
import hashlib, os, stat, sys
upper = sys.argv[1]
out = []
for dirpath, dirnames, filenames in os.walk(upper):
    for name in dirnames + filenames:
        full = os.path.join(dirpath, name)
        rel = full[len(upper):]
        st = os.lstat(full)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            out.append("deleted " + rel)
            continue
        try:
            hst = os.lstat(rel)
        except FileNotFoundError:
            out.append("new " + rel)
            continue
        if stat.S_IFMT(st.st_mode) != stat.S_IFMT(hst.st_mode):
            out.append("changed-type " + rel)
        elif stat.S_ISREG(st.st_mode):
            with open(full, "rb") as a, open(rel, "rb") as b:
                if hashlib.sha256(a.read()).digest() != hashlib.sha256(b.read()).digest():
                    out.append("changed " + rel)
        elif stat.S_ISLNK(st.st_mode) and os.readlink(full) != os.readlink(rel):
            out.append("changed " + rel)
print("\n".join(out))
"""
        helper = self.base.parent / "changes.py"
        helper.write_text(script)
        r = self.host(f"/usr/bin/python3 '{helper}' '{self.base}/upper'")
        assert r.returncode == 0, r.stderr
        lines = {ln for ln in r.stdout.splitlines() if ln}
        return {ln for ln in lines if not ln.split(" ", 1)[1].startswith(BOOKKEEPING)}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


@pytest.fixture
def throwaway_root(tmp_path: Path) -> Iterator[ThrowawayRoot]:
    need_root()
    root = ThrowawayRoot(tmp_path / "troot")
    try:
        yield root
    finally:
        root.close()
