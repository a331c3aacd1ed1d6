"""Process A: runs the trusted tests against the candidate, which lives in another sandbox (process B).

This file runs as a server in a sandbox of its own: it never sees candidate data itself. For each
job the host sends it (over a unix socket) the tests and three pipe ends, and it forks a fresh child
that grades that one candidate and exits, so no job can leave anything behind for the next, and the
interpreter start and imports are paid once per server instead of once per candidate.

A and B share nothing but two pipes: separate PID namespaces, separate uids, separate /tmp, and A's
working directory is the read-only /sandbox. Every name B reports becomes, for the tests, either a proxy
that calls B and turns B's reply back into plain data (Python literals only, parsed, never evaluated) or
a plain constant; B's names that are dunders or builtins are dropped, so the candidate cannot redefine
``range``, ``all`` or ``__name__`` under the tests, and so are the names the problem's prompt defines
(the prelude, run here: HumanEval's ``poly`` or ``encode_cyclic`` are the prompt's, never the
candidate's). Nothing B sends is ever imported or used to choose code.

Two kinds of failure reach the tests differently:
- An exception the candidate's code raised is raised in the test as its nearest built-in type, so a test
  that expects one (``try: f(-1) except ValueError: ...``) passes an honest solution. StopIteration
  becomes RuntimeError (as PEP 479 does in generators), so it can never end a test's loop early.
- A protocol failure (B exited or crashed, sent a reply that is not plain data or is over 16 MB, or
  raised SystemExit, KeyboardInterrupt or GeneratorExit) is a BaseException no ``except Exception``
  catches, and the unit fails even when a test catches it anyway.
A failure of the tests themselves (they do not compile, run out of memory, pass an argument that is not
plain data) is no verdict at all: the job reports an error and the item stays ungraded.

The verdict is the one line this process writes to its private copy of stdout; the tests' own prints go
to /dev/null. The tests are scored per unit, over at most 10 units: each top-level statement holding an
``assert`` of a program with several top-level asserts (MBPP style; the other statements are set-up,
and a set-up that fails fails every unit after it, or counts as one failed unit when none is left),
else each top-level ``test_*`` function, else the whole program as one unit. Coroutines that a test
function or a top-level call returns are run to the end.
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


class CandidateError(BaseException):
    """B died, broke the protocol, or returned something that is not plain data: a BaseException, so
    that a test's ``except Exception`` cannot swallow it (and the unit fails even if a test catches it)."""


class HarnessFault(Exception):
    """The tests cannot be run here: no verdict on the candidate."""


_NOT_CATCHABLE = ("SystemExit", "KeyboardInterrupt", "GeneratorExit")


def rebuilt(raised):
    """The exception to raise in the test for what B reports as [type, message, built-in base], or
    None for one that must fail the unit."""
    parts = [str(part)[:200] for part in raised] if isinstance(raised, list) else []
    name = parts[0] if parts else "an exception"
    message = parts[1] if len(parts) > 1 else ""
    base = parts[2] if len(parts) > 2 else "Exception"
    if base in _NOT_CATCHABLE or name in _NOT_CATCHABLE:
        return None  # the caller fails the unit: no test may catch these
    cls = getattr(builtins, base, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = Exception
    if issubclass(cls, (StopIteration, StopAsyncIteration)):
        cls = RuntimeError
    for candidate_cls in cls.__mro__:  # some built-ins want more arguments (UnicodeDecodeError)
        try:
            return candidate_cls(f"{name}: {message}" if name != cls.__name__ else message)
        except TypeError:
            continue
    return Exception(message)


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
    """The pipe to B. ``dead`` is why B can no longer answer; ``broken`` is the protocol failure of the
    current unit (reset for each), which fails it whatever the test caught."""

    def __init__(self, rfd, wfd):
        self.rd = os.fdopen(rfd, "r", encoding="utf-8", errors="replace")
        self.wr = os.fdopen(wfd, "wb")
        self.broken = None
        self.dead = None

    def fail(self, reason, *, dead=False):
        self.broken = self.broken or reason
        if dead:
            self.dead = self.dead or reason
        raise CandidateError(reason)

    def receive(self):
        if self.dead:
            self.fail(self.dead)
        line = self.rd.readline(MAX_LINE)
        if not line.endswith("\n"):
            self.fail("the candidate process exited" if not line else "a reply over 16 MB", dead=True)
        try:
            msg = ast.literal_eval(line)
        except (SyntaxError, ValueError, RecursionError, MemoryError, TypeError):
            self.fail("the candidate broke the protocol", dead=True)
        if not isinstance(msg, dict):
            self.fail("the candidate broke the protocol", dead=True)
        return msg

    def call(self, name, args, kwargs):
        if self.dead:
            self.fail(self.dead)
        try:
            # marshal: plain data only, and B (which trusts us) reads it without importing anything.
            request = marshal.dumps((name, args, kwargs))
        except ValueError:
            raise HarnessFault("the tests passed a value that is not plain data to " + name) from None
        except MemoryError:
            raise HarnessFault("the tests' arguments to " + name + " exhaust the harness's memory") from None
        try:
            self.wr.write(b"%d\n" % len(request) + request)
            self.wr.flush()
        except OSError:
            self.fail("the candidate process exited", dead=True)
        reply = self.receive()
        if isinstance(reply.get("ok"), str):
            try:
                return literal(reply["ok"])
            except CandidateError as exc:
                self.fail(str(exc))
        if "exc" in reply:
            error = rebuilt(reply["exc"])
            if error is None:
                self.fail("the candidate raised " + str(reply["exc"])[:100])
            raise error
        self.fail("the candidate broke the protocol", dead=True)

    def proxy(self, name):
        def call(*args, **kwargs):
            return self.call(name, args, kwargs)

        call.__name__ = name
        return call


def namespace(cand, names, prelude=None, entry_point=None):
    """The tests' globals: the prompt's own definitions (the prelude, trusted: it comes with the
    tests), then the candidate's names that the prompt does not define, as proxies or plain
    constants. The entry point is the one name the candidate must supply even if the prompt has it."""
    env = {"__name__": "__main__", "__builtins__": builtins, "__ddt_settle__": settle}
    if prelude:
        try:
            exec(compile(prelude, "prompt.py", "exec"), env)
        except Exception as exc:
            raise HarnessFault("the prompt's code does not run: " + type(exc).__name__) from None
    protected = {name for name in env if name != entry_point}
    if not isinstance(names, dict):
        cand.fail("the candidate broke the protocol", dead=True)
    for name, kind in names.items():
        if (not isinstance(name, str) or not name.isidentifier() or name.startswith("__")
                or name in _BUILTIN_NAMES or name in protected or not isinstance(kind, str)):
            continue
        if kind == "callable":
            env[name] = cand.proxy(name)
        else:
            with contextlib.suppress(CandidateError):  # not plain data: the name stays undefined
                env[name] = literal(kind)
    return env


def settle(value):
    """A coroutine a test returned, run to its end (an async test never awaited would pass anything)."""
    import inspect

    if inspect.iscoroutine(value):
        import asyncio

        return asyncio.run(value)
    return value


class _Settle(ast.NodeTransformer):
    """Top-level calls whose value is dropped (``check(candidate)``) go through ``settle``."""

    def visit_Module(self, node):
        for i, stmt in enumerate(node.body):
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                call = ast.Call(ast.Name("__ddt_settle__", ast.Load()), [stmt.value], [])
                node.body[i] = ast.copy_location(ast.Expr(call), stmt)
        return ast.fix_missing_locations(node)


def _holds_assert(node):
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return False  # a definition asserts nothing until it is called
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def plan(tests):
    """(set-up and unit statements in order, test functions to call after, the number of units)."""
    try:
        tree = _Settle().visit(ast.parse(tests, "tests.py"))
    except (SyntaxError, ValueError) as exc:  # ValueError: a NUL byte
        raise HarnessFault(f"the tests do not parse: {exc}") from None
    funcs = [n.name for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")
             and not n.args.args]
    if sum(isinstance(n, ast.Assert) for n in tree.body) >= 2:
        steps = [(n, _holds_assert(n)) for n in tree.body]
        return steps, [], min(sum(is_unit for _, is_unit in steps), MAX_UNITS)
    if funcs and not _calls_any(tree, funcs):
        return [(n, False) for n in tree.body], funcs[:MAX_UNITS], len(funcs[:MAX_UNITS])
    return [(tree, True)], [], 1


def _calls_any(tree, names):
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in names
               for n in ast.walk(tree))


def run_unit(cand, env, code):
    """One unit: None when it passed, else why it failed. A fault of the tests propagates."""
    cand.broken = None
    try:
        exec(code, env)
    except AssertionError as exc:
        return "assertion failed " + _where(exc)
    except CandidateError as exc:
        return str(exc)
    except HarnessFault:
        raise
    except MemoryError:
        raise HarnessFault("the tests exhaust the harness's memory") from None
    except Exception as exc:
        return type(exc).__name__ + ": " + str(exc)[:200] + " " + _where(exc)
    if cand.broken:
        return cand.broken + " (caught by the test, still a failure)"
    return None


def _compiled(node):
    return compile(node if isinstance(node, ast.Module) else ast.Module([node], []), "tests.py", "exec")


def grade(cand, job):
    steps, funcs, total = plan(job["tests"])
    hello = cand.receive()
    if "load_error" in hello:
        reason = ": ".join(str(p)[:300] for p in hello["load_error"]) if isinstance(
            hello["load_error"], list) else "?"
        return 0, max(total, 1), "candidate failed to load: " + reason
    env = namespace(cand, hello.get("names"), job.get("prelude"), job.get("entry_point"))
    passed, notes, units = 0, [], 0
    for node, is_unit in steps:
        if is_unit and units >= MAX_UNITS:
            continue
        why = run_unit(cand, env, _compiled(node))
        if is_unit:
            units += 1
            passed += why is None
            if why:
                notes.append(f"test {units}: {why}")
        elif why:
            # Every unit not yet run fails with the set-up; after the last one, the set-up is a unit.
            notes.append("set-up failed: " + why)
            return passed, total if units < total else total + 1, "; ".join(notes)
    for name in funcs:
        why = run_unit(cand, env, compile(f"__ddt_settle__({name}())", "tests.py", "exec"))
        passed += why is None
        if why:
            notes.append(f"{name}: {why}")
    return passed, total, "; ".join(notes)


def _where(exc):
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "tests.py"]
    return f"(tests.py line {frames[-1].lineno})" if frames else ""


def run_job(from_cand, to_cand, verdict_fd, job_text):
    """In a fresh child: grade one candidate, write the verdict, exit. The tests' prints go nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    cand = Candidate(from_cand, to_cand)
    try:
        job = json.loads(job_text)
        passed, total, detail = grade(cand, job)
        verdict = {"passed": passed, "total": total, "detail": detail[:2000]}
    except HarnessFault as exc:
        verdict = {"error": str(exc)[:2000]}
    except CandidateError as exc:  # B failed before the tests began (it never said hello)
        verdict = {"passed": 0, "total": 1, "detail": str(exc)[:2000]}
    except BaseException as exc:
        verdict = {"error": "the harness failed: " + type(exc).__name__ + ": " + str(exc)[:300]}
    os.write(verdict_fd, ("\n" + json.dumps(verdict) + "\n").encode())


def receive_job(sock):
    """(the job as JSON text: tests, prelude, entry_point; [from candidate, to candidate, verdict]) or
    None when the host hangs up."""
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
        job_text, fds = job
        if os.fork() == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                run_job(fds[0], fds[1], fds[2], job_text)
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
