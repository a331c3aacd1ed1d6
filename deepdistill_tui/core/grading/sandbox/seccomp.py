"""A seccomp filter for sandboxed code, as the classic BPF program bubblewrap's ``--seccomp FD`` loads.

What the namespaces do not cover, and the filter refuses with EPERM:
- ``memfd_create`` and ``memfd_secret``: anonymous files are memory outside the sized tmpfs, so without
  a memory cgroup they escaped the bound (a red team held 1,200 MB against a stated 576 MB);
- ``add_key``, ``request_key``, ``keyctl``: the kernel's per-uid keyrings outlive a sandbox and were read
  back by the next sandbox of the same uid, a channel between candidates;
- ``socket(AF_VSOCK, ...)``: the network namespace does not cover vsock;
- ``io_uring_setup``, ``io_uring_enter``, ``io_uring_register``: io_uring issues operations (sockets
  among them) that this filter would never see;
- every system call of a foreign ABI (i386 through ``int 0x80``, x32), whose numbers differ.

Only x86_64 and aarch64 are known here; elsewhere ``program()`` returns None and the sandbox runs without
the filter (docs/GRADING.md says so).
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass

# Classic BPF opcodes (linux/filter.h) and seccomp's return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_EPERM = 0x00050000 | 1
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16
_X32_BIT = 0x40000000
AF_VSOCK = 40


@dataclass(frozen=True)
class _Abi:
    audit_arch: int
    denied: tuple[int, ...]  # memfd_create, memfd_secret, add_key, request_key, keyctl, io_uring x3
    socket: int
    x32: bool


_ABIS = {
    "x86_64": _Abi(0xC000003E, (319, 447, 248, 249, 250, 425, 426, 427), 41, x32=True),
    "aarch64": _Abi(0xC00000B7, (279, 447, 217, 218, 219, 425, 426, 427), 198, x32=False),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str | None = None) -> bytes | None:
    """The filter for this machine's ABI, or None where its system call numbers are not known."""
    abi = _ABIS.get(machine or platform.machine())
    if abi is None:
        return None
    checks: list[tuple[int, int, str]] = [(_JGE_K, _X32_BIT, "deny")] if abi.x32 else []
    checks += [(_JEQ_K, nr, "deny") for nr in abi.denied]
    checks.append((_JEQ_K, abi.socket, "socket"))
    # Layout: [0] load arch, [1] foreign ABI -> deny, [2] load nr, the checks, ALLOW, the socket's
    # family check (load, compare, ALLOW), DENY. A jump counts from the instruction after it.
    allow = 3 + len(checks)
    socket_at = allow + 1
    deny = socket_at + 3
    targets = {"deny": deny, "socket": socket_at}
    out = [_insn(_LD_W_ABS, _OFFSET_ARCH), _insn(_JEQ_K, abi.audit_arch, 0, deny - 2),
           _insn(_LD_W_ABS, _OFFSET_NR)]
    out += [_insn(code, k, targets[target] - i - 1, 0)
            for i, (code, k, target) in enumerate(checks, start=3)]
    out += [_insn(_RET_K, _RET_ALLOW),
            _insn(_LD_W_ABS, _OFFSET_ARG0), _insn(_JEQ_K, AF_VSOCK, 1, 0), _insn(_RET_K, _RET_ALLOW),
            _insn(_RET_K, _RET_EPERM)]
    assert len(out) == deny + 1
    return b"".join(out)
