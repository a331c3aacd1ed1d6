"""Code grading in the sandbox: stdin/stdout cases compared by the host, assert programs by a harness.

Output rule for stdin/stdout: line endings are normalised to \\n, trailing whitespace is stripped from
every line, and trailing empty lines are dropped; everything else must match exactly (a correct prefix
of the expected output is wrong). The score is passed cases / total cases, over at most 10 cases.

Assert programs run in the harness (sandboxed/harness.py), which executes the candidate's code in a
second process and only ever sees plain data from it; the verdict is the harness's last output line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from deepdistill_tui.core import sandbox
from deepdistill_tui.core.sandbox import Limits, SandboxUnavailable

GRADER = "sandbox-bwrap"
MAX_CASES = 10
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)
_SANDBOXED = Path(__file__).with_name("sandboxed")


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
        res = sandbox.run([sandbox.SANDBOX_PYTHON, "-I", "-S", "/sandbox/candidate.py"],
                          {"candidate.py": code}, stdin=case["input"].encode(), limits=limits)
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


def run_assert(code: str, tests: str, limits: Limits) -> CodeResult:
    files = {"candidate.py": code, **_harness_files()}
    res = sandbox.run([sandbox.SANDBOX_PYTHON, "-I", "-S", "/sandbox/harness.py"], files,
                      stdin=tests.encode("utf-8"), limits=limits)
    if res.timed_out:
        return CodeResult(0.0, "timeout", f"no verdict within {limits.wall_s:g} s")
    lines = res.stdout.decode("utf-8", errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        verdict = None
    if not isinstance(verdict, dict) or verdict.get("verdict") not in ("pass", "fail"):
        return CodeResult(0.0, "error", f"no verdict from the harness (exit {res.exit_code})")
    passed = verdict["verdict"] == "pass"
    return CodeResult(1.0 if passed else 0.0, "ok", str(verdict.get("detail") or "passed")[:2000])


@lru_cache(maxsize=1)
def _harness_files() -> dict[str, str]:
    return {name: (_SANDBOXED / name).read_text() for name in ("harness.py", "worker.py")}


def grade_code(answer: str | None, response: str, test_cases: Any, limits: Limits) -> CodeResult:
    if isinstance(test_cases, str):
        test_cases = json.loads(test_cases)
    if not isinstance(test_cases, dict):
        return CodeResult(None, "error", "no test cases")
    code = extract_code(answer, response)
    if code is None:
        return CodeResult(0.0, "wrong_format", "no fenced code block")
    try:
        if isinstance(test_cases.get("assert"), str):
            return run_assert(code, test_cases["assert"], limits)
        cases = test_cases.get("stdin_stdout")
        if isinstance(cases, list) and cases:
            return run_stdio(code, cases, limits)
    except SandboxUnavailable as exc:
        return CodeResult(None, "sandbox_unavailable", str(exc))
    return CodeResult(None, "error", "test cases have neither 'assert' nor 'stdin_stdout'")
