"""Inside a sandbox, before any untrusted code: say "started" on a pipe, close it, run the script.

argv: FD SCRIPT [ARGS...]. The byte on FD is how the host tells a sandbox that never got to run its
program (a fault of the machine: bwrap could not fork, the uid ran out of processes) from a program
that ran and exited at once (a verdict on the code). It is written and the pipe closed before the
script starts, so nothing the script does can take it back or fake its absence.
"""

import os
import sys


def main() -> None:
    fd = int(sys.argv[1])
    os.write(fd, b"1")
    os.close(fd)
    sys.argv = sys.argv[2:]
    # What runpy.run_path does for a plain script, without its imports (2.3 ms of every sandbox).
    with open(sys.argv[0], encoding="utf-8") as fh:
        code = compile(fh.read(), sys.argv[0], "exec")
    exec(code, {"__name__": "__main__", "__file__": sys.argv[0], "__builtins__": __builtins__})


if __name__ == "__main__":
    main()
