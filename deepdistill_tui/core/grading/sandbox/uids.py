"""Sandbox uids, leased machine-wide: one uid per live sandbox, never shared by two processes.

RLIMIT_NPROC counts every process of a uid on the whole machine, zombies included. Uids used to be
derived from ``pid % 200``, so two grading processes whose pids agreed mod 200 (shard graders on one
node, ``grade-file`` beside ``grade``) shared uids and each other's process budget: measured, HumanEval's
canonical solutions passed 121/164 and 153/164 in the two. Now a uid is leased with an flock on a file
named after it (the kernel drops the lock when its holder dies, kill -9 included), a uid that any process
still runs under (a zombie too) is skipped, and each process walks the range from a random start so a
uid is not reused until the range has gone round.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

UID_BASE = 61000
UID_COUNT = 4000
"""61000-64999: below 65534 (nobody) and above the distributions' ranges for system and human users."""
_lock = threading.Lock()
_next = random.randrange(UID_COUNT)


class NoFreeUid(Exception):
    """Every sandbox uid is leased or still has processes."""


@dataclass
class Lease:
    uid: int
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing drops the flock
            self.fd = None


def lock_dir() -> Path:
    """Shared by every process on the machine: /run/lock where it is writable, else the temp folder."""
    for base in (Path("/run/lock"), Path(tempfile.gettempdir())):
        d = base / "deepdistill-sandbox-uids"
        with contextlib.suppress(OSError):
            d.mkdir(mode=0o700, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
    raise NoFreeUid("no writable folder for sandbox uid locks (/run/lock or the temp folder)")


def uids_with_processes() -> set[int]:
    """The uids in our range that some process (running or zombie) has: one stat per process."""
    found = set()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    uid = entry.stat(follow_symlinks=False).st_uid
                    if UID_BASE <= uid < UID_BASE + UID_COUNT:
                        found.add(uid)
    return found


def lease_uid() -> Lease:
    """A uid no other sandbox on this machine holds and no process runs under, held until released."""
    global _next
    directory = lock_dir()
    busy = uids_with_processes()
    with _lock:
        start, _next = _next, (_next + 1) % UID_COUNT
    for step in range(UID_COUNT):
        uid = UID_BASE + (start + step) % UID_COUNT
        if uid in busy:
            continue
        fd = os.open(directory / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        with _lock:  # the next lease of this process starts after this one
            _next = (uid - UID_BASE + 1) % UID_COUNT
        return Lease(uid, fd)
    raise NoFreeUid(f"all {UID_COUNT} sandbox uids are leased or have processes")
