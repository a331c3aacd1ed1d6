"""Process B: runs the untrusted candidate code and answers calls from the harness.

Protocol over two pipes (fds from argv): one line per message, a Python dict literal (repr). After
executing the candidate code, B sends {"names": {name: "callable" | "module:NAME" | repr}}; then for
each {"call": name, "args": repr} it sends {"ok": repr(result)} or {"exc": [type name, message]}.
Values travel as Python literal text: whatever the candidate does, the harness receives plain data.
"""

import ast
import os
import sys


def main() -> None:
    rfd, wfd = int(sys.argv[1]), int(sys.argv[2])
    rd = os.fdopen(rfd, "r", encoding="utf-8")
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
        if key.startswith("__"):
            continue
        if type(value).__name__ == "module":
            names[key] = "module:" + value.__name__
        else:
            names[key] = "callable" if callable(value) else repr(value)[:100000]
    wr.write(repr({"names": names}) + "\n")
    wr.flush()
    for line in rd:
        msg = ast.literal_eval(line)
        try:
            args, kwargs = ast.literal_eval(msg["args"])
            result = namespace[msg["call"]](*args, **kwargs)
            reply: dict = {"ok": repr(result)}
        except BaseException as exc:
            reply = {"exc": [type(exc).__name__, str(exc)[:500]]}
        wr.write(repr(reply) + "\n")
        wr.flush()


if __name__ == "__main__":
    main()
