"""A one-node Slurm on loopback for the tests: munge with its own key and socket, slurmctld and slurmd
on this machine's hostname, a slurm.conf written here, every daemon stopped by its pid file.

Nothing outside the folder it is given is touched: munge's key, socket and seed, Slurm's state, spool,
logs and pid files all live there, and the ports are free ones picked at start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE"}


def why_not() -> str | None:
    """Why a Slurm cannot be started here, or None."""
    missing = [d for d in COMMANDS if shutil.which(d) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "slurmd runs jobs as their users and needs root; this test runs as a user"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _conf(root: Path, host: str, cpus: int) -> str:
    # cons_tres with CR_Core over CPUs the node advertises beyond its cores (config_overrides): the
    # bundle's servers, array tasks and trainer run side by side on a small machine, as on nodes.
    return f"""ClusterName=ddtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=defer
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=86400
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=dd Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def one_node_slurm(root: Path, cpus: int = 16) -> Iterator[dict[str, str]]:
    """Start munge and Slurm in ``root``; yields the environment that reaches them (SLURM_CONF)."""
    (root / "state").mkdir(parents=True)
    (root / "spool").mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, socket.gethostname(), cpus))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[Path] = []
    try:
        subprocess.run(["munged", "-f", f"--key-file={key}", f"--socket={root}/munge.sock",
                        f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
                        f"--seed-file={root}/munged.seed"], check=True, env=env)
        started.append(root / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([daemon, "-f", str(conf)], check=True, env=env)
            started.append(root / f"{daemon}.pid")
        _wait_idle(root, env)
        yield env
    finally:
        if len(started) == 3:
            _cancel_all(env)
        for pid_file in reversed(started):
            _stop(pid_file)


def _cancel_all(env: dict[str, str], timeout_s: float = 60) -> None:
    """Cancel every job and wait for them to end: a job outlives the daemons that started it."""
    subprocess.run(["scancel", "--user", str(os.geteuid())], env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(state in TERMINAL for _, state in job_states(env).values()):
            return
        time.sleep(0.5)


def _wait_idle(root: Path, env: dict[str, str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env)
        if state.stdout.strip() == "idle":
            return
        time.sleep(0.5)
    logs = "\n".join(f"{p.name}: {p.read_text()[-800:]}" for p in root.glob("slurm*.log"))
    raise RuntimeError(f"the Slurm node did not become idle in {timeout_s:g} s\n{logs}")


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def job_states(env: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Every job Slurm remembers (MinJobAge keeps finished ones): id (array tasks as J_T) -> (name,
    state)."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%j|%T"], capture_output=True,
                         text=True, env=env, check=True).stdout
    return {i: (name, state) for i, name, state in (line.split("|") for line in out.splitlines() if line)}
