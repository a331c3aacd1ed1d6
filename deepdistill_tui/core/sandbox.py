"""A sandbox for untrusted code: bubblewrap namespaces, a non-root uid, a cgroup budget, rlimits, a deadline.

The untrusted program sees a read-only root and /usr (the system's Python and libraries), its own files
read-only under /sandbox, a private size-limited /tmp and /dev/shm, no network (a new, empty network
namespace), no other process (a new PID namespace), an empty environment, and nothing of the host's home,
project or secrets. bubblewrap itself is started with an empty environment too: its init process inside
the PID namespace is readable through /proc/1, so it must carry nothing of the host's. The program runs as
an unprivileged uid so that RLIMIT_NPROC bounds fork and thread bombs (the limit does nothing for root),
with limits on CPU time, address space, file size and open files; where a cgroup can be made, the whole
sandbox (every process and every tmpfs page) shares one memory budget and one task budget. The host kills
the whole sandbox at a wall-clock deadline or when output passes a cap; the PID namespace's init dying
takes every process inside with it, daemons included.

Fail closed: when the sandbox cannot be created, nothing runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from deepdistill_tui.core.cgroups import Budget, Group, remove_stale

SANDBOX_PYTHON = "/usr/bin/python3"
"""The system interpreter: it lives under /usr, which the sandbox mounts read-only."""
UID_BASE = 61000
FILES_PREFIX = "ddt-sandbox-"
BOX_ENV = {"PATH": "/usr/bin:/bin"}
"""The whole environment setpriv and bwrap start with (bwrap's init inside keeps it)."""
_uid_counter = itertools.count()
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 512  # the whole sandbox under a cgroup; per process under rlimits alone
    file_mb: int = 16
    tmp_mb: int = 32  # /tmp and /dev/shm, each
    processes: int = 8  # small, so that processes x memory_mb stays bounded without a cgroup
    open_files: int = 64
    output_bytes: int = 1 << 20

    def budget_bytes(self) -> int:
        """A cgroup's memory cap: the processes plus the two tmpfs they can fill."""
        return (self.memory_mb + 2 * self.tmp_mb) << 20


@dataclass
class RunResult:
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    output_capped: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.output_capped


class SandboxUnavailable(Exception):
    """bubblewrap is missing or cannot create namespaces here."""


UIDS_PER_PROCESS = 16


def _take_uid() -> int:
    """A uid no other live sandbox of this process holds: RLIMIT_NPROC counts every process of a
    uid system-wide, and a long-lived harness server must not share its uid with a candidate."""
    base = UID_BASE + os.getpid() % 200 * UIDS_PER_PROCESS
    with _uid_lock:
        for _ in range(UIDS_PER_PROCESS):
            uid = base + next(_uid_counter) % UIDS_PER_PROCESS
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid
    raise SandboxUnavailable(f"more than {UIDS_PER_PROCESS} sandboxes at once in one process")


def _give_back_uid(uid: int | None) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def bwrap_argv(files_dir: Path, limits: Limits, workdir: str) -> list[str]:
    tmpfs_size = str(limits.tmp_mb << 20)
    argv = [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
        "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/lib", "/lib", "--symlink", "usr/bin", "/bin",
    ]
    if Path("/lib64").exists():
        argv += ["--symlink", "usr/lib64", "/lib64"]
    argv += [
        "--proc", "/proc", "--dev", "/dev",
        "--size", tmpfs_size, "--tmpfs", "/dev/shm",
        "--size", tmpfs_size, "--tmpfs", "/tmp",
        "--ro-bind", str(files_dir), "/sandbox",
        # bwrap's root and /dev are unsized tmpfs: read-only, so the only writable places are sized.
        "--remount-ro", "/dev", "--remount-ro", "/",
        "--chdir", workdir,
    ]
    return argv


def _preexec(limits: Limits, group: Group | None) -> None:
    """In the child, before exec: the cgroup and the rlimits (inherited through setpriv and bwrap)."""
    if group is not None:
        group.join_self()
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def command(files_dir: Path, argv: Sequence[str], limits: Limits, uid: int,
            workdir: str = "/tmp") -> list[str]:
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--"] if os.geteuid() == 0 else []
    return [*drop, *bwrap_argv(files_dir, limits, workdir), "--", *argv]


def write_files(files: dict[str, str]) -> Path:
    """A fresh host folder holding ``files`` for one sandbox's /sandbox (readable by its uid)."""
    files_dir = Path(tempfile.mkdtemp(prefix=f"{FILES_PREFIX}{os.getpid()}-"))
    files_dir.chmod(0o755)
    for name, text in files.items():
        path = files_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
    return files_dir


class Box:
    """One running sandbox: its process, its files on the host, its cgroup. ``close`` removes all."""

    def __init__(self, argv: Sequence[str], files: dict[str, str], limits: Limits, *,
                 workdir: str = "/tmp", stdin: int | IO[Any] | None = subprocess.PIPE,
                 stdout: int | IO[Any] | None = subprocess.PIPE,
                 stderr: int | IO[Any] | None = subprocess.PIPE, pass_fds: Sequence[int] = (),
                 checked: bool = True) -> None:
        if checked:
            ok, reason = sandbox_status()
            if not ok:
                raise SandboxUnavailable(reason)
        self.budget = Budget.detect()
        self.group = self.budget.acquire(limits.budget_bytes()) if self.budget else None
        self.files_dir = write_files(files)
        self.uid: int | None = None
        try:
            self.uid = _take_uid()
            self.proc = subprocess.Popen(
                command(self.files_dir, argv, limits, self.uid, workdir), stdin=stdin, stdout=stdout,
                stderr=stderr, env=BOX_ENV, start_new_session=True, close_fds=True,
                pass_fds=tuple(pass_fds), preexec_fn=lambda: _preexec(limits, self.group))
        except BaseException:
            self._remove()
            raise

    def kill(self) -> None:
        """SIGKILL the process group; bwrap's --die-with-parent then ends the PID namespace."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._remove()

    def _remove(self) -> None:
        _give_back_uid(self.uid)
        if self.group is not None and self.budget is not None:
            self.budget.release(self.group)  # reused once its last task has gone
        shutil.rmtree(self.files_dir, ignore_errors=True)


def run(argv: list[str], files: dict[str, str], *, stdin: bytes = b"",
        limits: Limits = Limits()) -> RunResult:
    """Run ``argv`` inside a fresh sandbox with ``files`` under /sandbox. Raises SandboxUnavailable."""
    box = Box(argv, files, limits)
    try:
        return execute(box, stdin, limits)
    finally:
        box.close()


def execute(box: Box, stdin: bytes, limits: Limits) -> RunResult:
    start = time.perf_counter()
    proc = box.proc
    assert proc.stdin and proc.stdout and proc.stderr
    writer = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
    writer.start()
    out, err, timed_out, capped = collect(proc, limits.output_bytes, start + limits.wall_s)
    if timed_out or capped:
        box.kill()
    code = box.wait(timeout=5)
    return RunResult(code, bytes(out), bytes(err[:65536]), timed_out, capped,
                     time.perf_counter() - start)


def _feed(pipe: object, data: bytes) -> None:
    try:
        pipe.write(data)  # type: ignore[attr-defined]
        pipe.close()  # type: ignore[attr-defined]
    except (BrokenPipeError, OSError):
        pass  # the program exited or closed stdin: what it did not read is irrelevant


def collect(proc: subprocess.Popen[bytes], output_bytes: int,
            deadline: float) -> tuple[bytearray, bytearray, bool, bool]:
    """Read stdout and stderr until both close, the deadline passes, or output passes the cap."""
    sel = selectors.DefaultSelector()
    out, err = bytearray(), bytearray()
    sel.register(proc.stdout, selectors.EVENT_READ, out)  # type: ignore[arg-type]
    sel.register(proc.stderr, selectors.EVENT_READ, err)  # type: ignore[arg-type]
    open_streams = 2
    while open_streams:
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return out, err, True, False
        for key, _ in sel.select(timeout=remaining):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            key.data.extend(chunk)
            if len(out) + len(err) > output_bytes:
                return out, err, False, True
    return out, err, False, False


@lru_cache(maxsize=1)
def sandbox_status() -> tuple[bool, str]:
    """(usable, reason). Runs one trivial program in a sandbox, once per process."""
    if shutil.which("bwrap") is None:
        return False, "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return False, "setpriv (util-linux) is needed to drop root before sandboxing"
    if not Path(SANDBOX_PYTHON).exists():
        return False, f"{SANDBOX_PYTHON} is missing: the sandbox runs the system Python"
    remove_leftovers()
    limits = Limits(wall_s=20)
    try:
        box = Box([SANDBOX_PYTHON, "-I", "-c", "print('ok')"], {}, limits, checked=False)
    except OSError as exc:
        return False, f"cannot start the sandbox: {exc}"
    try:
        res = execute(box, b"", limits)
    finally:
        box.close()
    if res.exit_code != 0 or res.stdout.strip() != b"ok":
        detail = res.stderr.decode(errors="replace").strip().splitlines()
        return False, f"the sandbox cannot be created here: {detail[-1] if detail else res.exit_code}"
    return True, "ok"


def remove_leftovers() -> int:
    """Files folders and cgroups of sandboxes whose grading process died (kill -9): they hold
    candidate code and would otherwise stay forever."""
    removed = remove_stale()
    for d in Path(tempfile.gettempdir()).glob(f"{FILES_PREFIX}*"):
        owner = d.name[len(FILES_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed
