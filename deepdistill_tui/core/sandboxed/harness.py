"""Process A: runs the trusted tests against the candidate, which lives in another sandbox (process B).

This file runs as a server in a sandbox of its own: it never sees candidate data itself. For each
job the host sends it (over a unix socket) the tests and three pipe ends, and it forks a fresh child
that grades that one candidate and exits, so no job can leave anything behind for the next, and the
interpreter start and imports are paid once per server instead of once per candidate.

A and B share nothing but two pipes: separate PID namespaces, separate uids, separate /tmp, and A's
working directory is the read-only /sandbox. Every name B reports becomes, for the tests, either a proxy
that calls B and turns B's reply back into plain data (Python literals only, parsed, never evaluated) or
a plain constant; B's names that are dunders or builtins are dropped, so the candidate cannot redefine
``range``, ``all`` or ``__name__`` under the tests. Nothing B sends is ever imported or used to choose
code. An exception raised by candidate code (StopIteration included) fails the test it happened in,
even if the test catches it. The verdict is the one line this process writes to its private copy of
stdout; the tests' own prints go to /dev/null.

The tests are scored per unit, over at most 10 units: each top-level ``assert`` of a program made of
several (MBPP style), else each top-level ``test_*`` function, else the whole program as one unit.
"""

import ast
import builtins
import contextlib
import json
import marshal
import os
import signal
import socket
import sys
import traceback

MAX_UNITS = 10
MAX_LINE = 1 << 24
_BUILTIN_NAMES = frozenset(dir(builtins))


class CandidateError(Exception):
    """B died, broke the protocol, or returned something that is not plain data."""


class CandidateRaised(BaseException):
    """Candidate code raised: a BaseException so that a test's `except Exception` cannot swallow it."""


def literal(text):
    """Python literal text -> value; also inf, nan and empty containers; anything else is refused."""
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise CandidateError("the candidate returned a value that is not plain data: " + text[:80]) from exc

    def conv(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(conv(e) for e in node.elts)
        if isinstance(node, ast.List):
            return [conv(e) for e in node.elts]
        if isinstance(node, ast.Set):
            return {conv(e) for e in node.elts}
        if isinstance(node, ast.Dict):
            return {conv(k): conv(v) for k, v in zip(node.keys, node.values, strict=False)}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = conv(node.operand)
            return -v if isinstance(node.op, ast.USub) else +v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            left, right = conv(node.left), conv(node.right)  # complex numbers: 1+2j
            if not all(isinstance(v, (int, float, complex)) for v in (left, right)):
                raise CandidateError("the candidate returned a value that is not plain data")
            return left + right if isinstance(node.op, ast.Add) else left - right
        if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
            return float(node.id)
        empty = {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args
                and not node.keywords and node.func.id in empty):
            return empty[node.func.id]()
        raise CandidateError("the candidate returned a value that is not plain data: " + text[:80])

    try:
        return conv(tree)
    except (RecursionError, TypeError, MemoryError) as exc:
        raise CandidateError("the candidate returned a value that is not plain data") from exc


class Candidate:
    """The pipe to B and what B raised during the current test unit."""

    def __init__(self, rfd, wfd):
        self.rd = os.fdopen(rfd, "r", encoding="utf-8", errors="replace")
        self.wr = os.fdopen(wfd, "wb")
        self.raised = None
        self.dead = None

    def receive(self):
        if self.dead:
            raise CandidateError(self.dead)
        line = self.rd.readline(MAX_LINE)
        if not line.endswith("\n"):
            self.dead = "the candidate process exited" if not line else "a reply over 16 MB"
            raise CandidateError(self.dead)
        try:
            msg = ast.literal_eval(line)
        except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError) as exc:
            self.dead = "the candidate broke the protocol"
            raise CandidateError(self.dead) from exc
        if not isinstance(msg, dict):
            self.dead = "the candidate broke the protocol"
            raise CandidateError(self.dead)
        return msg

    def call(self, name, args, kwargs):
        if self.dead:
            raise CandidateError(self.dead)
        try:
            # marshal: plain data only, and B (which trusts us) reads it without importing anything.
            request = marshal.dumps((name, args, kwargs))
        except ValueError:
            raise CandidateError("the tests passed a value that is not plain data to " + name) from None
        try:
            self.wr.write(b"%d\n" % len(request) + request)
            self.wr.flush()
        except OSError as exc:
            self.dead = "the candidate process exited"
            raise CandidateError(self.dead) from exc
        reply = self.receive()
        if isinstance(reply.get("ok"), str):
            return literal(reply["ok"])
        raised = reply.get("exc")
        text = " ".join(str(part)[:200] for part in raised) if isinstance(raised, list) else "an exception"
        self.raised = "the candidate raised " + text
        raise CandidateRaised(self.raised)

    def proxy(self, name):
        def call(*args, **kwargs):
            return self.call(name, args, kwargs)

        call.__name__ = name
        return call


def namespace(cand, names):
    """The tests' globals: the candidate's own names only, as proxies or plain constants."""
    env = {"__name__": "__main__", "__builtins__": builtins}
    if not isinstance(names, dict):
        raise CandidateError("the candidate broke the protocol")
    for name, kind in names.items():
        if (not isinstance(name, str) or not name.isidentifier() or name.startswith("__")
                or name in _BUILTIN_NAMES or not isinstance(kind, str)):
            continue
        if kind == "callable":
            env[name] = cand.proxy(name)
        else:
            with contextlib.suppress(CandidateError):  # not plain data: the name stays undefined
                env[name] = literal(kind)
    return env


def plan(tests):
    """(setup and unit statements in order, the number of units, test functions to call after)."""
    tree = ast.parse(tests, "tests.py")
    asserts = [n for n in tree.body if isinstance(n, ast.Assert)]
    funcs = [n.name for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")
             and not n.args.args]
    if len(asserts) >= 2:
        steps = [(n, isinstance(n, ast.Assert)) for n in tree.body]
        return steps, [], min(len(asserts), MAX_UNITS)
    if funcs and not _calls_any(tree, funcs):
        return [(n, False) for n in tree.body], funcs[:MAX_UNITS], len(funcs[:MAX_UNITS])
    return [(tree, True)], [], 1


def _calls_any(tree, names):
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names
               for n in ast.walk(tree))


def run_unit(cand, env, code):
    """One unit: None when it passed, else why it failed."""
    cand.raised = None
    try:
        exec(code, env)
    except AssertionError as exc:
        return "assertion failed " + _where(exc)
    except CandidateRaised:
        return cand.raised
    except CandidateError as exc:
        return str(exc)
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)[:200] + " " + _where(exc)
    if cand.raised:
        return cand.raised + " (caught by the test, still a failure)"
    return None


def grade(cand, tests):
    hello = cand.receive()
    if "load_error" in hello:
        reason = ": ".join(str(p)[:300] for p in hello["load_error"]) if isinstance(
            hello["load_error"], list) else "?"
        return 0, 1, "candidate failed to load: " + reason
    env = namespace(cand, hello.get("names"))
    steps, funcs, total = plan(tests)
    passed, notes, units = 0, [], 0
    for node, is_unit in steps:
        if is_unit and units >= MAX_UNITS:
            continue
        code = compile(node if isinstance(node, ast.Module) else ast.Module([node], []), "tests.py", "exec")
        why = run_unit(cand, env, code)
        if is_unit:
            units += 1
            passed += why is None
            if why:
                notes.append(f"test {units}: {why}")
        elif why:
            notes.append("set-up failed: " + why)
            return passed, total, "; ".join(notes)
    for name in funcs:
        why = run_unit(cand, env, compile(f"{name}()", "tests.py", "exec"))
        passed += why is None
        if why:
            notes.append(f"{name}: {why}")
    return passed, total, "; ".join(notes)


def _where(exc):
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "tests.py"]
    return f"(tests.py line {frames[-1].lineno})" if frames else ""


def run_job(from_cand, to_cand, verdict_fd, tests):
    """In a fresh child: grade one candidate, write the verdict, exit. The tests' prints go nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    cand = Candidate(from_cand, to_cand)
    try:
        passed, total, detail = grade(cand, tests)
    except SyntaxError as exc:
        passed, total, detail = 0, 0, f"the tests do not parse: {exc}"
    except BaseException as exc:
        passed, total, detail = 0, 1, type(exc).__name__ + ": " + str(exc)[:300]
    verdict = {"passed": passed, "total": total, "detail": detail[:2000]}
    os.write(verdict_fd, ("\n" + json.dumps(verdict) + "\n").encode())


def receive_job(sock):
    """(tests, [from candidate, to candidate, verdict]) or None when the host hangs up."""
    header, fds, _, _ = socket.recv_fds(sock, 16, 3)
    while header and not header.endswith(b"\n"):
        more = sock.recv(16)
        if not more:
            return None
        header += more
    if not header or len(fds) != 3:
        return None
    size = int(header)
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks).decode("utf-8"), fds


def serve(sock_fd):
    sock = socket.socket(fileno=sock_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished children are reaped by the kernel
    while True:
        job = receive_job(sock)
        if job is None:
            return
        tests, fds = job
        if os.fork() == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                run_job(fds[0], fds[1], fds[2], tests)
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
