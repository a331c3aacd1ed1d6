"""Process A: runs the trusted tests against the candidate, which lives in another process (B).

The candidate's code never executes in this process: every name it defines is a proxy that calls B and
turns B's reply back into plain Python data (literals only). So the candidate cannot walk frames into
the tests, patch their builtins, return objects whose __eq__ is always true, or exit before the tests
with a success code: the verdict is the last line this process writes, and only this process writes it.
"""

import ast
import builtins
import contextlib
import ctypes
import json
import os
import sys

VERDICT_FD = 1


class CandidateError(Exception):
    """The candidate process died or broke the protocol."""


def literal(text):
    """Python literal text -> value; also inf, nan and set(); anything else is refused."""
    try:
        tree = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError) as exc:
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
            return left + right if isinstance(node.op, ast.Add) else left - right
        if isinstance(node, ast.Name) and node.id in ("inf", "nan"):
            return float(node.id)
        empty = {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict}
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args
                and node.func.id in empty):
            return empty[node.func.id]()
        raise CandidateError("the candidate returned a value that is not plain data: " + text[:80])

    return conv(tree)


def spawn_worker(req_r, rep_w, req_w, rep_r):
    """fork + exec of process B, its stdio on /dev/null (cheaper to start than subprocess)."""
    pid = os.fork()
    if pid == 0:
        try:
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(req_w)
            os.close(rep_r)
            os.set_inheritable(req_r, True)
            os.set_inheritable(rep_w, True)
            os.execv(sys.executable, [sys.executable, "-I", "-S", "/sandbox/worker.py",
                                      str(req_r), str(rep_w)])
        finally:
            os._exit(127)
    return pid


def no_ptrace():
    # PR_SET_DUMPABLE = 4: the candidate (same uid) can no longer ptrace us or open /proc/<pid>/fd.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)


def main():
    no_ptrace()
    # The tests come on stdin, never as a file: the candidate must not be able to read the answers.
    tests = sys.stdin.read()
    out = os.fdopen(os.dup(VERDICT_FD), "w")
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    child = spawn_worker(req_r, rep_w, req_w, rep_r)
    os.close(req_r)
    os.close(rep_w)
    to_b = os.fdopen(req_w, "w", encoding="utf-8")
    from_b = os.fdopen(rep_r, "r", encoding="utf-8")

    def receive():
        line = from_b.readline(1 << 24)
        if not line:
            raise CandidateError("the candidate process exited")
        return ast.literal_eval(line)

    def proxy(name):
        def call(*args, **kwargs):
            to_b.write(repr({"call": name, "args": repr((args, kwargs))}) + "\n")
            to_b.flush()
            reply = receive()
            if "ok" in reply:
                return literal(reply["ok"])
            kind, msg = reply["exc"]
            exc_type = getattr(builtins, kind, None)
            if isinstance(exc_type, type) and issubclass(exc_type, Exception):
                raise exc_type(msg)
            raise RuntimeError(kind + ": " + msg)

        call.__name__ = name
        return call

    verdict = {"verdict": "error", "detail": ""}
    try:
        hello = receive()
        if "load_error" in hello:
            reason = ": ".join(hello["load_error"])
            verdict = {"verdict": "fail", "detail": "candidate failed to load: " + reason}
        else:
            env = {"__name__": "__main__"}
            for name, kind in hello["names"].items():
                if kind == "callable":
                    env[name] = proxy(name)
                elif kind.startswith("module:"):
                    _import_into(env, name, kind[len("module:"):])
                else:
                    _set_literal(env, name, kind)
            exec(compile(tests, "tests.py", "exec"), env)
            verdict = {"verdict": "pass", "detail": ""}
    except AssertionError as exc:
        verdict = {"verdict": "fail", "detail": "assertion failed " + _where(exc)}
    except CandidateError as exc:
        verdict = {"verdict": "fail", "detail": str(exc)}
    except BaseException as exc:
        detail = type(exc).__name__ + ": " + str(exc)[:300] + " " + _where(exc)
        verdict = {"verdict": "fail", "detail": detail}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, 9)
    out.write("\n" + json.dumps(verdict) + "\n")
    out.flush()


def _set_literal(env, name, text):
    """A constant the candidate defined, if it is plain data; anything else stays undefined."""
    with contextlib.suppress(CandidateError, SyntaxError, ValueError, RecursionError):
        env[name] = literal(text)


def _import_into(env, name, module):
    """Modules the candidate imported (tests often lean on the prompt's `import math`)."""
    with contextlib.suppress(ImportError):
        __import__(module)
        env[name] = sys.modules[module]


def _where(exc):
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "tests.py"]
    return f"(tests.py line {frames[-1].lineno})" if frames else ""


if __name__ == "__main__":
    main()
