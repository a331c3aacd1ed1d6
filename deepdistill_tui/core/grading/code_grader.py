"""Code grading in the sandbox: stdin/stdout cases compared by the host, assert programs by a harness.

Output rule for stdin/stdout: line endings are normalised to \\n, trailing whitespace is stripped from
every line, and trailing empty lines are dropped; everything else must match exactly (a correct prefix
of the expected output is wrong). The score is passed cases / total cases, over at most 10 cases.

Assert programs run in the harness (sandbox/inside/harness.py), which executes the candidate's code in a
second process and only ever sees plain data from it; the verdict is the harness's last output line.

A verdict is only ever about the code. A sandbox that did not start (the launcher inside never said so,
the harness died or was unreachable) is retried in a fresh sandbox with a fresh uid, and after
``ATTEMPTS`` such failures the item is ``sandbox_error``: no score, graded again by the next ``grade``.
Tests the harness cannot run are ``error``, never a 0.
"""

from __future__ import annotations

import ast
import json
import os
import re
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from deepdistill_tui import __version__
from deepdistill_tui.core.grading.base import GraderKind, GradingEnv, Item, Scored, Verdict
from deepdistill_tui.core.grading.sandbox import host as sandbox
from deepdistill_tui.core.grading.sandbox.host import Limits, SandboxFailed, SandboxUnavailable

GRADER = "sandbox-bwrap"
MAX_CASES = 10
ATTEMPTS = 3
RETRY_PAUSE_S = 0.5
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
_INSIDE = Path(__file__).parent / "sandbox" / "inside"


@dataclass(frozen=True)
class CodeResult:
    score: float | None
    status: str
    detail: str


def extract_code(answer: str | None, response: str) -> str | None:
    """The last fenced python block of the final answer, else of the whole response.

    Untagged fences count when no block is tagged python.
    """
    for text in (answer or "", response):
        blocks = _FENCE.findall(text)
        tagged = [code for lang, code in blocks if lang.lower() in ("python", "py", "python3")]
        chosen = tagged or [code for lang, code in blocks if not lang]
        if chosen:
            return chosen[-1]
    return None


def normalize_output(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def run_stdio(code: str, cases: list[dict[str, str]], limits: Limits) -> CodeResult:
    cases = cases[:MAX_CASES]
    passed, notes, timeouts = 0, [], 0
    for i, case in enumerate(cases):
        res = sandbox.run(["/sandbox/candidate.py"], {"candidate.py": code},
                          stdin=case["input"].encode(), limits=limits, launch=True)
        got = res.stdout.decode("utf-8", errors="replace")
        if res.timed_out:
            timeouts += 1
            notes.append(f"case {i}: timeout")
        elif res.output_capped:
            notes.append(f"case {i}: output over {limits.output_bytes} bytes")
        elif res.exit_code != 0:
            err = res.stderr.decode(errors="replace").strip().splitlines()
            notes.append(f"case {i}: exit {res.exit_code} {err[-1][:200] if err else ''}".strip())
        elif normalize_output(got) == normalize_output(case["output"]):
            passed += 1
        else:
            notes.append(f"case {i}: expected {case['output'][:60]!r}, got {got[:60]!r}")
    status = "timeout" if timeouts and passed < len(cases) else "ok"
    return CodeResult(passed / len(cases), status, "; ".join(notes)[:2000] or "all cases passed")


class HarnessServer:
    """A sandbox running sandbox/inside/harness.py as a server: one fresh forked child per candidate."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        host_end, box_end = socket.socketpair()
        try:
            self.box = sandbox.Box([sandbox.SANDBOX_PYTHON, "-I", "-S", "/sandbox/harness.py",
                                    str(box_end.fileno())],
                                   {"harness.py": _inside_file("harness.py")}, limits, workdir="/sandbox",
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, pass_fds=(box_end.fileno(),))
        except BaseException:
            host_end.close()
            raise
        finally:
            box_end.close()
        self.sock = host_end

    def alive(self) -> bool:
        return self.box.proc.poll() is None

    def submit(self, job: bytes, fds: list[int]) -> None:
        """Hand a job over: the job's JSON and [from candidate, to candidate, verdict] pipe ends."""
        try:
            socket.send_fds(self.sock, [b"%d\n" % len(job)], fds)
            self.sock.sendall(job)
        except OSError as exc:
            raise SandboxFailed(f"the harness is gone ({exc})") from None

    def close(self) -> None:
        self.sock.close()
        self.box.close()


class HarnessPool:
    """Idle harness servers for the threads of one grader; each serves one job at a time. A server
    whose job ran past its deadline is killed, never reused."""

    def __init__(self) -> None:
        self._idle: list[HarnessServer] = []
        self._lock = threading.Lock()

    def acquire(self, limits: Limits) -> HarnessServer:
        with self._lock:
            while self._idle:
                server = self._idle.pop()
                if server.alive() and server.limits == limits:
                    return server
                server.close()
        return HarnessServer(limits)

    def release(self, server: HarnessServer) -> None:
        with self._lock:
            self._idle.append(server)

    def close(self) -> None:
        with self._lock:
            servers, self._idle = self._idle, []
        for server in servers:
            server.close()


def run_assert(code: str, tests: Tests, limits: Limits, pool: HarnessPool | None = None) -> CodeResult:
    """The candidate in a fresh sandbox, the tests in a harness server's fresh child, two pipes
    between them and a third for the verdict. Raises SandboxFailed when either side did not run."""
    own_pool = pool is None
    pool = pool or HarnessPool()
    job = json.dumps({"tests": tests.program, "prelude": tests.prelude,
                      "entry_point": tests.entry_point}).encode("utf-8")
    to_cand_r, to_cand_w = os.pipe()
    to_harness_r, to_harness_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    ours = [to_cand_r, to_cand_w, to_harness_r, to_harness_w, verdict_w]
    candidate: sandbox.Box | None = None
    server: HarnessServer | None = None
    verdict: bytes | None = None
    start = time.perf_counter()
    try:
        candidate = sandbox.Box(
            ["/sandbox/worker.py", str(to_cand_r), str(to_harness_w)],
            {"candidate.py": code, "worker.py": _inside_file("worker.py")}, limits,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(to_cand_r, to_harness_w), launch=True)
        server = pool.acquire(limits)
        server.submit(job, [to_harness_r, to_cand_w, verdict_w])
        # Each pipe end now lives in its sandbox alone: one left open here would keep a dead peer's
        # pipe from reporting end-of-file. Close each exactly once: other threads reuse the numbers.
        while ours:
            os.close(ours.pop())
        verdict = _read_until(verdict_r, start + limits.wall_s, limits.output_bytes)
        started = candidate.started()
    finally:
        for fd in [*ours, verdict_r]:
            os.close(fd)
        if candidate is not None:
            candidate.close()
        if server is not None:
            if verdict and not own_pool:
                pool.release(server)
            else:
                server.close()  # past its deadline (its child may still run), dead, or a one-off
    if not started:
        raise SandboxFailed("the candidate's sandbox did not run its program")
    if verdict is None:
        return CodeResult(0.0, "timeout", f"no verdict within {limits.wall_s:g} s")
    if not verdict.strip():
        raise SandboxFailed("the harness ended without a verdict")
    return _verdict(verdict)


def _read_until(fd: int, deadline: float, cap: int) -> bytes | None:
    """Everything written to ``fd`` until its writer closes it; None past the deadline."""
    out = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not sel.select(timeout=remaining):
                return None
            chunk = os.read(fd, 65536)
            if not chunk or len(out) > cap:
                return bytes(out)
            out += chunk


def _verdict(output: bytes) -> CodeResult:
    lines = output.decode("utf-8", errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        verdict = None
    if isinstance(verdict, dict) and isinstance(verdict.get("error"), str):
        return CodeResult(None, "error", verdict["error"][:2000])
    if (not isinstance(verdict, dict) or not isinstance(verdict.get("passed"), int)
            or not isinstance(verdict.get("total"), int)):
        return CodeResult(None, "error", "no verdict from the harness")
    passed, total = verdict["passed"], verdict["total"]
    detail = str(verdict.get("detail") or "")[:2000]
    if total <= 0:
        return CodeResult(None, "error", detail or "the tests define no test")
    return CodeResult(passed / total, "ok", detail or f"{passed}/{total} tests passed")


@lru_cache(maxsize=4)
def _inside_file(name: str) -> str:
    return (_INSIDE / name).read_text()


@dataclass(frozen=True)
class Tests:
    """Test cases in one of the two forms the sandbox runs."""

    stdio: list[dict[str, str]] | None = None
    program: str | None = None
    prelude: str | None = None
    """The problem's own code (HumanEval's prompt): its names are the prompt's, never the candidate's."""
    entry_point: str | None = None


def code_tests(test_cases: Any) -> Tests | str:
    """Tests from any shape we know, or a sentence saying why not. Shapes: this project's
    {"stdin_stdout": [...]} and {"assert": program}; APPS/TACO's {"inputs", "outputs"} (stdin/stdout,
    or calls of "fn_name"); MBPP's {"test_list", "test_setup_code"}; HumanEval's {"test", "entry_point"};
    a list of assert lines; a bare program. JSON text of any of them too."""
    if isinstance(test_cases, str):
        try:
            test_cases = json.loads(test_cases)
        except json.JSONDecodeError:
            return Tests(program=test_cases) if test_cases.strip() else "empty test cases"
    if isinstance(test_cases, str):
        return Tests(program=test_cases)
    if isinstance(test_cases, list) and test_cases and all(isinstance(t, str) for t in test_cases):
        return Tests(program="\n".join(test_cases) + "\n")
    if not isinstance(test_cases, dict):
        return f"test cases in an unknown shape ({type(test_cases).__name__})"
    tc = test_cases
    if isinstance(tc.get("assert"), str):
        return Tests(program=tc["assert"])
    if "stdin_stdout" in tc:
        return _stdio_cases(tc["stdin_stdout"])
    if isinstance(tc.get("test_list"), list):
        setup = tc.get("test_setup_code") or ""
        return Tests(program=f"{setup}\n" + "\n".join(map(str, tc["test_list"])) + "\n")
    if isinstance(tc.get("test"), str) and isinstance(tc.get("entry_point"), str):
        prompt = tc.get("prompt")
        return Tests(program=f"{tc['test']}\ncheck({tc['entry_point']})\n",
                     prelude=prompt if isinstance(prompt, str) else None, entry_point=tc["entry_point"])
    if isinstance(tc.get("inputs"), list) and isinstance(tc.get("outputs"), list):
        if len(tc["inputs"]) != len(tc["outputs"]) or not tc["inputs"]:
            return "inputs and outputs differ in length (or are empty)"
        if tc.get("fn_name"):
            return _call_cases(str(tc["fn_name"]), tc["inputs"], tc["outputs"])
        return _stdio_cases([{"input": i, "output": o} for i, o in zip(tc["inputs"], tc["outputs"],
                                                                        strict=True)])
    return f"test cases in an unknown shape (keys: {', '.join(sorted(map(str, tc)))[:100]})"


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value) + "\n"  # APPS sometimes stores lines
    return None


def _stdio_cases(cases: Any) -> Tests | str:
    if not isinstance(cases, list) or not cases:
        return "stdin_stdout must be a non-empty list"
    out = []
    for i, case in enumerate(cases[:MAX_CASES]):
        given = _text(case.get("input")) if isinstance(case, dict) else None
        wanted = _text(case.get("output")) if isinstance(case, dict) else None
        if given is None or wanted is None:
            return f"stdin_stdout case {i} needs string 'input' and 'output'"
        out.append({"input": given, "output": wanted})
    return Tests(stdio=out)


def _call_cases(fn: str, inputs: list[Any], outputs: list[Any]) -> Tests | str:
    """One assert per case; TACO wraps a single expected value in a list, so either form matches."""
    if not fn.isidentifier():
        return f"fn_name {fn!r} is not a name"
    lines = []
    for args, want in list(zip(inputs, outputs, strict=True))[:MAX_CASES]:
        args = args if isinstance(args, list) else [args]
        lines.append(f"assert (lambda got, want: got == want or [got] == want)({fn}(*{args!r}), {want!r})")
    return Tests(program="\n".join(lines) + "\n")


def grade_code(answer: str | None, response: str, test_cases: Any, limits: Limits,
               pool: HarnessPool | None = None, question: str | None = None) -> CodeResult:
    """``question``, when it is the problem's Python (HumanEval's prompt) and the tests name an entry
    point, is the prelude whose definitions the candidate cannot replace."""
    if test_cases is None:
        return CodeResult(None, "error", "no test cases")
    tests = code_tests(test_cases)
    if isinstance(tests, str):
        return CodeResult(None, "error", tests)
    code = extract_code(answer, response)
    if code is None:
        return CodeResult(0.0, "wrong_format", "no fenced code block")
    if tests.entry_point and tests.prelude is None and question and _defines(question, tests.entry_point):
        tests = Tests(program=tests.program, prelude=question, entry_point=tests.entry_point)
    why = ""
    for attempt in range(ATTEMPTS):
        try:
            if tests.program is not None:
                return run_assert(code, tests, limits, pool)
            assert tests.stdio is not None
            return run_stdio(code, tests.stdio, limits)
        except SandboxUnavailable as exc:
            return CodeResult(None, "sandbox_unavailable", str(exc))
        except SandboxFailed as exc:
            why = str(exc)
            if attempt + 1 < ATTEMPTS:
                time.sleep(RETRY_PAUSE_S * (attempt + 1))
    return CodeResult(None, "sandbox_error", f"{why} ({ATTEMPTS} attempts): not graded")


def _defines(source: str, name: str) -> bool:
    """Does ``source`` parse as Python and define ``name`` at its top level?"""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body)


class SandboxCode(GraderKind):
    """Code run against its tests in the bubblewrap sandbox: stdin/stdout cases or assert programs."""

    name = "code"

    def __init__(self, env: GradingEnv) -> None:
        super().__init__(env)
        # Harness servers die with the thread that started them (bwrap's --die-with-parent), so the
        # threads live as long as the kind, and so do the servers they start.
        self._threads: ThreadPoolExecutor | None = None
        self._harnesses = HarnessPool()

    def version(self) -> str:
        return f"deepdistill-tui {__version__} + bubblewrap"

    def _one(self, item: Item) -> Scored:
        t0 = time.perf_counter()
        r = grade_code(item.answer, item.response, item.test_cases, self.env.limits, self._harnesses,
                       question=item.question)
        return Scored(item, Verdict(r.score, r.status, r.detail), time.perf_counter() - t0)

    def grade(self, items: list[Item]) -> Iterator[Scored]:
        # Each grade runs in sandboxed subprocesses: threads only wait on them.
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=self.env.workers)
        yield from self._threads.map(self._one, items)

    def close(self) -> None:
        self._harnesses.close()
        if self._threads:
            self._threads.shutdown()
            self._threads = None
