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
import json
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

from deepdistill_tui.core.grading.sandbox import seccomp
from deepdistill_tui.core.grading.sandbox.cgroups import Budget, Group, remove_stale
from deepdistill_tui.core.grading.sandbox.uids import Lease, NoFreeUid, lease_uid

SANDBOX_PYTHON = "/usr/bin/python3"
"""The system interpreter: it lives under /usr, which the sandbox mounts read-only."""
FILES_PREFIX = "ddt-sandbox-"
BOX_ENV = {"PATH": "/usr/bin:/bin"}
"""The whole environment setpriv and bwrap start with (bwrap's init inside keeps it)."""
_LAUNCHER = Path(__file__).with_name("inside") / "launch.py"
INFO_TIMEOUT_S = 60.0
"""How long bwrap may take to create the namespaces on a busy machine before the start counts as failed."""


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
    """bubblewrap is missing or cannot create namespaces here: permanent for this machine."""


class SandboxFailed(Exception):
    """One sandbox did not start (no free uid, bwrap could not clone, the program never ran): a fault of
    the machine, never a verdict on the code. The caller retries or leaves the item ungraded."""


def bwrap_argv(files_dir: Path, limits: Limits, workdir: str, *, info_fd: int,
               seccomp_fd: int | None) -> list[str]:
    tmpfs_size = str(limits.tmp_mb << 20)
    argv = [
        # --unshare-user explicitly (--unshare-all only tries it) so that --disable-userns can forbid a
        # nested user namespace, whose mount namespace would allow an unsized tmpfs.
        "bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
        "--new-session", "--clearenv", "--info-fd", str(info_fd),
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
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
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


def command(files_dir: Path, argv: Sequence[str], limits: Limits, uid: int, *, workdir: str = "/tmp",
            info_fd: int, seccomp_fd: int | None) -> list[str]:
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--"] if os.geteuid() == 0 else []
    box = bwrap_argv(files_dir, limits, workdir, info_fd=info_fd, seccomp_fd=seccomp_fd)
    return [*drop, *box, "--", *argv]


def _seccomp_pipe() -> int | None:
    """The read end of a pipe holding the filter for bwrap to load, or None without one. bwrap reads
    the program to its end, so every sandbox gets a fresh pipe."""
    prog = _seccomp_program()
    if prog is None:
        return None
    r, w = os.pipe()
    try:
        os.write(w, prog)  # 144 bytes: far below a pipe's buffer, so this never blocks
    finally:
        os.close(w)
    return r


@lru_cache(maxsize=1)
def _seccomp_program() -> bytes | None:
    return seccomp.program()


@lru_cache(maxsize=1)
def _launcher() -> str:
    return _LAUNCHER.read_text()


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
    """One running sandbox: its process, its files on the host, its cgroup, its uid. ``close`` removes
    all.

    With ``launch=True``, ``argv`` is a Python script under /sandbox and its arguments, run through
    ``inside/launch.py``: that trusted launcher writes one byte on a pipe before any untrusted code
    runs, so that ``started()`` tells a sandbox that never ran its program (a machine fault) from a
    program that exited at once (a verdict on the code)."""

    def __init__(self, argv: Sequence[str], files: dict[str, str], limits: Limits, *,
                 workdir: str = "/tmp", stdin: int | IO[Any] | None = subprocess.PIPE,
                 stdout: int | IO[Any] | None = subprocess.PIPE,
                 stderr: int | IO[Any] | None = subprocess.PIPE, pass_fds: Sequence[int] = (),
                 checked: bool = True, launch: bool = False) -> None:
        if checked:
            ok, reason = sandbox_status()
            if not ok:
                raise SandboxUnavailable(reason)
        become_subreaper()
        self.budget = Budget.detect()
        self.group = self.budget.acquire(limits.budget_bytes()) if self.budget else None
        if launch:
            files = {**files, "launch.py": _launcher()}
        self.files_dir = write_files(files)
        self.lease: Lease | None = None
        self._init_fd: int | None = None
        self._marker_r: int | None = None
        ends: list[int] = []
        try:
            try:
                self.lease = lease_uid()
            except NoFreeUid as exc:
                raise SandboxFailed(str(exc)) from None
            info_r, info_w = os.pipe()
            ends += [info_r, info_w]
            seccomp_fd = _seccomp_pipe()
            if seccomp_fd is not None:
                ends.append(seccomp_fd)
            extra = [info_w, *([seccomp_fd] if seccomp_fd is not None else [])]
            if launch:
                self._marker_r, marker_w = os.pipe()
                ends.append(marker_w)
                extra.append(marker_w)
                argv = [SANDBOX_PYTHON, "-I", "-S", "/sandbox/launch.py", str(marker_w), *argv]
            self.proc = subprocess.Popen(
                command(self.files_dir, argv, limits, self.lease.uid, workdir=workdir, info_fd=info_w,
                        seccomp_fd=seccomp_fd),
                stdin=stdin, stdout=stdout, stderr=stderr, env=BOX_ENV, start_new_session=True,
                close_fds=True, pass_fds=(*pass_fds, *extra),
                preexec_fn=lambda: _preexec(limits, self.group))
            for fd in ends[1:]:
                os.close(fd)  # the sandbox holds them now
            ends = [info_r]
            self._init_fd = self._await_init(info_r)
        except BaseException:
            for fd in ends:
                os.close(fd)
            if hasattr(self, "proc"):
                self.kill()
            self._remove()
            raise
        os.close(info_r)

    def _await_init(self, info_r: int) -> int:
        """A pidfd of bwrap's init (PID 1 inside): killing it first lets the kernel reap everything in
        the PID namespace and the outer bwrap reap the init. Killing the outer bwrap instead orphans the
        init, whose zombie then belongs to the machine's init; where that never reaps (this machine's
        PID 1 does not) the zombies pile up under the sandbox uids and count against RLIMIT_NPROC:
        measured, 30 assert grades left 30 of them, and long runs failed honest code."""
        data = _read_all(info_r, time.monotonic() + INFO_TIMEOUT_S)
        try:
            pid = int(json.loads(data)["child-pid"])
            return os.pidfd_open(pid)
        except (ValueError, KeyError, TypeError, OSError):
            err = b""
            if self.proc.stderr is not None and self.proc.poll() is not None:
                with contextlib.suppress(OSError, ValueError):
                    err = self.proc.stderr.read(4096)
            lines = err.decode(errors="replace").strip().splitlines()
            raise SandboxFailed("the sandbox did not start" + (f": {lines[-1]}" if lines else "")) \
                from None

    def started(self) -> bool:
        """Did the launcher inside write its byte (the program got to run)?"""
        if self._marker_r is None:
            return True
        with contextlib.suppress(OSError):
            os.set_blocking(self._marker_r, False)
            return os.read(self._marker_r, 1) == b"1"
        return False

    def kill(self) -> None:
        """SIGKILL bwrap's init (which takes the whole PID namespace with it), wait for the outer bwrap
        to follow, and only if it does not, the process group."""
        if self._init_fd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(self._init_fd, signal.SIGKILL)
        if self.proc.poll() is not None:
            return
        if self._init_fd is not None and _exited(self.proc, 5):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _reap_init(self) -> None:
        """The outer bwrap may exit before its init does (the init reports the exit code first), so
        the init is orphaned; as a subreaper this process inherits it and must wait for it here."""
        if self._init_fd is None:
            return
        with contextlib.suppress(ChildProcessError):  # none: the outer bwrap reaped it
            if _readable(self._init_fd, 5):  # a pidfd turns readable when its process exits
                os.waitid(os.P_PIDFD, self._init_fd, os.WEXITED | os.WNOHANG)

    def wait(self, timeout: float) -> int | None:
        if _exited(self.proc, timeout):
            return self.proc.returncode
        self.kill()
        return None

    def close(self) -> None:
        self.kill()
        _exited(self.proc, 5)
        self._reap_init()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._remove()

    def _remove(self) -> None:
        for fd in (self._init_fd, self._marker_r):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._init_fd = self._marker_r = None
        if self.lease is not None:
            self.lease.release()
            self.lease = None
        if self.group is not None and self.budget is not None:
            self.budget.release(self.group)  # reused once its last task has gone
            self.group = None
        shutil.rmtree(self.files_dir, ignore_errors=True)


def _readable(fd: int, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout=timeout))


def _exited(proc: subprocess.Popen[Any], timeout: float) -> bool:
    """Wait for ``proc`` to exit and reap it, woken by its pidfd rather than by Popen.wait's polling
    sleeps (4 ms of every sandboxed grade)."""
    if proc.poll() is not None:
        return True
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # already reaped
        return proc.poll() is not None
    try:
        _readable(fd, timeout)
    finally:
        os.close(fd)
    return proc.poll() is not None


@lru_cache(maxsize=1)
def become_subreaper() -> bool:
    """Orphans of our sandboxes come to this process instead of the machine's init (PR_SET_CHILD_
    SUBREAPER), so that ``Box`` can reap bwrap's init itself: an init that never reaps (this machine's
    does not, for a long while) would keep every zombie charged to its sandbox uid. Only pids this
    process waits for by name are reaped, so subprocess and multiprocessing are unaffected."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _read_all(fd: int, deadline: float) -> bytes:
    """What the writer of ``fd`` writes before closing it, or what came before the deadline."""
    out = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0 and sel.select(timeout=remaining):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            out += chunk
    return bytes(out)


def run(argv: list[str], files: dict[str, str], *, stdin: bytes = b"",
        limits: Limits = Limits(), launch: bool = False) -> RunResult:
    """Run ``argv`` inside a fresh sandbox with ``files`` under /sandbox (through the launcher when
    ``launch``). Raises SandboxUnavailable, and SandboxFailed when the program never got to run."""
    box = Box(argv, files, limits, launch=launch)
    try:
        result = execute(box, stdin, limits)
        if not box.started():
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            raise SandboxFailed("the sandbox did not run the program" + (f": {lines[-1][:200]}"
                                                                         if lines else ""))
        return result
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
    except (OSError, SandboxFailed) as exc:
        return False, f"the sandbox cannot be created here: {exc}"
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
