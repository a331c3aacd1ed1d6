"""A process pool with a hard deadline per item: a worker that overruns is killed and replaced.

Math-Verify's own timeout uses SIGALRM (main thread only) and printing some parsed values can hang
forever, so a verdict must come from a process that can be killed. Workers report each result as soon as
it is ready; the item in flight when a deadline passes is the one that hung.

A worker gets no item before it says it is ready: its start-up (the interpreter, then ``warmup``, which
imports what ``fn`` needs) can take longer than an item's deadline on a busy machine, and a deadline
that counted it would kill each fresh worker in turn and time out every item.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError

TIMED_OUT = object()
STARTUP_S = 300.0
"""How long a worker may take to become ready before the pool gives up on it."""


def _serve(conn: Connection, fn: Callable[[Any], Any], warmup: Callable[[], None] | None) -> None:
    if warmup is not None:
        warmup()
    conn.send(("ready", None))
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        try:
            conn.send(("ok", fn(item)))
        except Exception as exc:  # the item's failure is its result, not the worker's
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class _Worker:
    proc: Any
    conn: Connection
    started: float = 0.0
    item: tuple[int, Any] | None = None
    ready: bool = False


@contextlib.contextmanager
def _real_stderr() -> Iterator[None]:
    """multiprocessing hands sys.stderr's descriptor to the processes it starts; a UI that captures
    stderr (Textual does, while the app runs) leaves an object without a usable one, and the start
    fails with "bad value(s) in fds_to_keep". The process's real stderr stands in while starting."""
    try:
        usable = sys.stderr.fileno() >= 0
    except (AttributeError, OSError, ValueError):
        usable = False
    if usable or sys.__stderr__ is None:
        yield
        return
    captured, sys.stderr = sys.stderr, sys.__stderr__
    try:
        yield
    finally:
        sys.stderr = captured


class DeadlinePool:
    """map(fn, items) over ``n`` spawned processes; an item slower than ``deadline_s`` gives TIMED_OUT.

    ``fn`` must be importable (module level): workers are spawned, never forked, so that no SQLite
    connection or thread state is carried into them.
    """

    def __init__(self, fn: Callable[[Any], Any], n: int, deadline_s: float,
                 warmup: Callable[[], None] | None = None) -> None:
        self.fn = fn
        self.warmup = warmup
        self.n = max(1, n)
        self.deadline_s = deadline_s
        self.ctx = mp.get_context("spawn")
        self.workers: list[_Worker] = []

    def _start(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_serve, args=(child, self.fn, self.warmup), daemon=True)
        with _real_stderr():
            proc.start()
        child.close()
        return _Worker(proc, parent, started=time.monotonic())

    def _await_ready(self, workers: list[_Worker]) -> None:
        """Block until every worker has said it is ready (a dead one is an error: it cannot grade)."""
        for w in workers:
            if w.ready:
                continue
            if not w.conn.poll(max(0.0, w.started + STARTUP_S - time.monotonic())):
                raise DeepDistillError(f"a grading worker did not start within {STARTUP_S:.0f} s")
            try:
                w.conn.recv()
            except EOFError:
                raise DeepDistillError("a grading worker died while starting") from None
            w.ready = True

    def close(self) -> None:
        for w in self.workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                w.conn.send(None)
            w.proc.join(timeout=1)
            if w.proc.is_alive():
                w.proc.kill()
        self.workers = []

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def imap(self, items: Iterable[Any]) -> Iterator[tuple[int, str, Any]]:
        """Yield (index, status, value) in completion order; status is ok, error or timeout."""
        queue = deque(enumerate(items))
        if not self.workers:
            self.workers = [self._start() for _ in range(min(self.n, max(len(queue), 1)))]
        self._await_ready(self.workers)
        idle = list(self.workers)
        busy: list[_Worker] = []
        while queue or busy:
            while queue and idle:
                w = idle.pop()
                w.item = queue.popleft()
                w.started = time.monotonic()
                w.conn.send(w.item[1])
                busy.append(w)
            soonest = min(w.started for w in busy) + self.deadline_s
            ready = wait([w.conn for w in busy], timeout=max(0.0, soonest - time.monotonic()))
            now = time.monotonic()
            for w in list(busy):
                assert w.item is not None
                index = w.item[0]
                if w.conn in ready:
                    busy.remove(w)
                    try:
                        status, value = w.conn.recv()
                        idle.append(w)
                    except EOFError:  # the worker died (memory, a crash): replace it
                        status, value = "error", "grader process died"
                        idle.append(self._replace(w))
                    yield index, status, value
                elif now - w.started >= self.deadline_s:
                    busy.remove(w)
                    idle.append(self._replace(w))
                    yield index, "timeout", TIMED_OUT

    def _replace(self, w: _Worker) -> _Worker:
        w.proc.kill()
        w.proc.join(timeout=5)
        fresh = self._start()
        self.workers[self.workers.index(w)] = fresh
        self._await_ready([fresh])
        return fresh
