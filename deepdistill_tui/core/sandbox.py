"""A sandbox for untrusted code: bubblewrap namespaces, a non-root uid, rlimits, a wall-clock kill.

The untrusted program sees a read-only /usr (the system's Python and libraries), its own files read-only
under /sandbox, a private size-limited /tmp, no network (a new, empty network namespace), no other
process (a new PID namespace), an empty environment, and nothing of the host's home, project or
secrets. It runs as an unprivileged uid so that RLIMIT_NPROC bounds fork and thread bombs (the limit does
nothing for root), with limits on CPU time, address space, file size and open files. The host kills the
whole sandbox at a wall-clock deadline or when output passes a cap; the PID namespace's init dying takes
every process inside with it, daemons included.

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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SANDBOX_PYTHON = "/usr/bin/python3"
"""The system interpreter: it lives under /usr, which the sandbox mounts read-only."""
UID_BASE = 61000
_uid_counter = itertools.count()
_uid_lock = threading.Lock()


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 512
    file_mb: int = 16
    tmp_mb: int = 32
    processes: int = 32
    open_files: int = 64
    output_bytes: int = 1 << 20


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


def _next_uid() -> int:
    # A distinct uid per concurrent run: RLIMIT_NPROC counts every process of a uid system-wide.
    with _uid_lock:
        return UID_BASE + os.getpid() % 500 * 8 + next(_uid_counter) % 8


def bwrap_argv(files_dir: Path, limits: Limits) -> list[str]:
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
        "--size", str(limits.tmp_mb << 20), "--tmpfs", "/tmp",
        "--ro-bind", str(files_dir), "/sandbox", "--chdir", "/tmp",
    ]
    return argv


def _preexec(limits: Limits) -> None:
    """In the child, before exec: the rlimits (inherited through setpriv and bwrap)."""
    mb = 1 << 20
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_mb * mb, limits.file_mb * mb))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def command(files_dir: Path, argv: list[str], limits: Limits) -> list[str]:
    uid = _next_uid()
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--"] if os.geteuid() == 0 else []
    return [*drop, *bwrap_argv(files_dir, limits), "--", *argv]


def run(argv: list[str], files: dict[str, str], *, stdin: bytes = b"",
        limits: Limits = Limits()) -> RunResult:
    """Run ``argv`` inside a fresh sandbox with ``files`` under /sandbox. Raises SandboxUnavailable."""
    ok, reason = sandbox_status()
    if not ok:
        raise SandboxUnavailable(reason)
    files_dir = Path(tempfile.mkdtemp(prefix="ddt-sandbox-"))
    try:
        files_dir.chmod(0o755)
        for name, text in files.items():
            path = files_dir / name
            path.write_text(text, encoding="utf-8")
            path.chmod(0o644)
        return _execute(command(files_dir, argv, limits), stdin, limits)
    finally:
        shutil.rmtree(files_dir, ignore_errors=True)


def _execute(cmd: list[str], stdin: bytes, limits: Limits) -> RunResult:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=lambda: _preexec(limits),
                            close_fds=True)
    assert proc.stdin and proc.stdout and proc.stderr
    writer = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
    writer.start()
    out, err, timed_out, capped = _collect(proc, limits, start + limits.wall_s)
    if timed_out or capped:
        _kill(proc)
    try:
        code: int | None = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _kill(proc)
        code = None
    return RunResult(code, bytes(out), bytes(err[:65536]), timed_out, capped,
                     time.perf_counter() - start)


def _feed(pipe: object, data: bytes) -> None:
    try:
        pipe.write(data)  # type: ignore[attr-defined]
        pipe.close()  # type: ignore[attr-defined]
    except (BrokenPipeError, OSError):
        pass  # the program exited or closed stdin: what it did not read is irrelevant


def _collect(proc: subprocess.Popen[bytes], limits: Limits,
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
            if len(out) + len(err) > limits.output_bytes:
                return out, err, False, True
    return out, err, False, False


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group; bwrap's --die-with-parent then ends the PID namespace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@lru_cache(maxsize=1)
def sandbox_status() -> tuple[bool, str]:
    """(usable, reason). Runs one trivial program in a sandbox, once per process."""
    if shutil.which("bwrap") is None:
        return False, "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return False, "setpriv (util-linux) is needed to drop root before sandboxing"
    if not Path(SANDBOX_PYTHON).exists():
        return False, f"{SANDBOX_PYTHON} is missing: the sandbox runs the system Python"
    with tempfile.TemporaryDirectory(prefix="ddt-probe-") as d:
        Path(d).chmod(0o755)
        try:
            res = _execute(command(Path(d), [SANDBOX_PYTHON, "-I", "-c", "print('ok')"], Limits()),
                           b"", Limits(wall_s=20))
        except OSError as exc:
            return False, f"cannot start the sandbox: {exc}"
    if res.exit_code != 0 or res.stdout.strip() != b"ok":
        detail = res.stderr.decode(errors="replace").strip().splitlines()
        return False, f"the sandbox cannot be created here: {detail[-1] if detail else res.exit_code}"
    return True, "ok"
