"""Process B: runs the untrusted candidate code and answers calls from the harness in another sandbox.

Protocol over two pipes (fds from argv). After executing the candidate code, B sends one line,
{"names": {name: "callable" | repr(value)}}; then for each request (a decimal length line, then
marshal bytes of (name, args, kwargs)) it sends one line, {"ok": repr(result)} or
{"exc": [type, message, nearest built-in class]}.
Requests come from the harness and are marshal data; replies are text the harness parses as literals.
No module is imported here: the candidate's process starts as fast as the interpreter can.
Nothing here is trusted by the harness: the candidate runs in this process and can write anything to
these pipes. The harness treats every byte as data (see harness.py).
"""

import builtins
import marshal
import os
import sys


def builtin_base(exc: BaseException) -> str:
    """The nearest built-in class of an exception (ValueError for a subclass of it): what the tests
    see it as. Whatever this says, the harness only ever raises a built-in type from it."""
    for cls in type(exc).__mro__:
        if getattr(builtins, cls.__name__, None) is cls:
            return cls.__name__
    return "Exception"


def main() -> None:
    rfd, wfd = int(sys.argv[1]), int(sys.argv[2])
    rd = os.fdopen(rfd, "rb")
    wr = os.fdopen(wfd, "w", encoding="utf-8")
    with open("/sandbox/candidate.py", encoding="utf-8") as fh:
        source = fh.read()
    namespace: dict = {"__name__": "__main__"}
    try:
        exec(compile(source, "candidate.py", "exec"), namespace)
    except BaseException as exc:  # the candidate's failure is data for the harness
        wr.write(repr({"load_error": [type(exc).__name__, str(exc)[:500]]}) + "\n")
        wr.flush()
        return
    names: dict = {}
    for key, value in list(namespace.items()):
        if key.startswith("__") or type(value).__name__ == "module":
            continue
        names[key] = "callable" if callable(value) else repr(value)[:100000]
    wr.write(repr({"names": names}) + "\n")
    wr.flush()
    for line in rd:
        request = rd.read(int(line))
        try:
            name, args, kwargs = marshal.loads(request)
            result = namespace[name](*args, **kwargs)
            reply: dict = {"ok": repr(result)}
        except BaseException as exc:
            reply = {"exc": [type(exc).__name__, str(exc)[:500], builtin_base(exc)]}
        wr.write(repr(reply) + "\n")
        wr.flush()


if __name__ == "__main__":
    main()
