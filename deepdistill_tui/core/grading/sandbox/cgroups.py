"""One memory budget for a whole sandbox, through a cgroup where this machine lets us make one.

RLIMIT_AS bounds one process; a candidate that forks gets that much again per child. A memory cgroup
bounds everything inside a sandbox together: its processes' memory and the tmpfs pages they write (shmem
is charged to the writer's memory cgroup). Both cgroup v1 (the `memory` hierarchy) and v2 (the unified
hierarchy with the memory controller enabled for our subtree) work. The number of processes is left to
RLIMIT_NPROC under a uid of the sandbox's own: the v1 `pids` controller was measured here to keep one
task charged per sandbox run after every task had gone, so a reused group would fill up.
Where no cgroup can be written (an unprivileged container, say), ``Budget.detect()`` returns None and the
sandbox falls back to rlimits alone, whose bound is processes x RLIMIT_AS; docs/GRADING.md says so.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import signal
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PREFIX = "ddt-sandbox-"
POOL_MAX = 32
_counter = itertools.count()
_pool_lock = threading.Lock()
_free: list[Group] = []


@dataclass(frozen=True)
class Group:
    """One sandbox's memory cgroup."""

    dirs: tuple[Path, ...]

    def join_self(self) -> None:
        """Move the calling process into the group (in the child, between fork and exec)."""
        pid = str(os.getpid())
        for d in self.dirs:
            (d / "cgroup.procs").write_text(pid)

    def is_empty(self) -> bool:
        try:
            return all(not (d / "cgroup.procs").read_text().strip() for d in self.dirs)
        except OSError:
            return False

    def remove(self) -> None:
        """Kill whatever is left inside, then remove the directories (retried while tasks exit)."""
        for d in self.dirs:
            for _ in range(50):
                with contextlib.suppress(OSError):
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError, ValueError):
                            os.kill(int(pid), signal.SIGKILL)
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


@dataclass(frozen=True)
class Budget:
    """Where this process may create sandbox cgroups, and in which layout.

    Creating and removing a memory cgroup costs the kernel about as much as starting the sandbox
    itself, so groups are kept and reused: ``acquire`` hands out an empty one (no task left in it) with
    its caps set anew, ``release`` puts it back, and they are removed when the process exits."""

    version: int
    parents: tuple[Path, ...]  # the memory controller's parent group (v1 or v2)

    @staticmethod
    def detect() -> Budget | None:
        return _detect()

    def acquire(self, memory_bytes: int) -> Group | None:
        with _pool_lock:
            for i, group in enumerate(_free):
                if group.is_empty():
                    del _free[i]
                    break
            else:
                group = None
        if group is not None and self._set_cap(group, memory_bytes):
            return group
        if group is not None:
            group.remove()
        return self.create(memory_bytes)

    def release(self, group: Group) -> None:
        with _pool_lock:
            if len(_free) < POOL_MAX:
                _free.append(group)
                return
        group.remove()

    def create(self, memory_bytes: int) -> Group | None:
        name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        group = Group(tuple(p / name for p in self.parents))
        try:
            for d in group.dirs:
                d.mkdir()
        except OSError:
            group.remove()
            return None
        if not self._set_cap(group, memory_bytes):
            group.remove()
            return None
        return group

    def _set_cap(self, group: Group, memory_bytes: int) -> bool:
        d = group.dirs[0]
        try:
            if self.version == 2:
                (d / "memory.max").write_text(str(memory_bytes))
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")  # swapped pages would escape the cap
            else:
                (d / "memory.limit_in_bytes").write_text(str(memory_bytes))
        except OSError:
            return False
        return True


def _own_path(controller: str) -> str | None:
    """This process's cgroup path in the hierarchy of ``controller`` ('' for v2's unified one)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(",") or (controller == "" and controllers == ""):
                return path
    return None


def _writable_parent(hierarchy: Path, controller: str) -> Path | None:
    path = _own_path(controller)
    if path is None or not hierarchy.is_dir():
        return None
    parent = hierarchy / path.lstrip("/")
    probe = parent / f"{PREFIX}probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return None
    return parent


@lru_cache(maxsize=1)
def _detect() -> Budget | None:
    if (ROOT / "memory").is_dir():
        mem = _writable_parent(ROOT / "memory", "memory")
        if mem is not None:
            return Budget(1, (mem,))
    if (ROOT / "cgroup.controllers").exists():
        parent = _writable_parent(ROOT, "")
        if parent is not None and "memory" in (parent / "cgroup.subtree_control").read_text().split():
            return Budget(2, (parent,))
    return None


@atexit.register
def _remove_pool() -> None:
    with _pool_lock:
        groups, _free[:] = list(_free), []
    for group in groups:
        group.remove()


def remove_stale() -> int:
    """Remove sandbox cgroups left by processes that no longer exist (after a kill -9)."""
    budget = _detect()
    if budget is None:
        return 0
    removed = 0
    for parent in budget.parents:
        for d in parent.glob(f"{PREFIX}*"):
            owner = d.name[len(PREFIX):].split("-", 1)[0]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                Group((d,)).remove()
                removed += 1
    return removed
