"""The full-32b bundle, trimmed and rendered with the CPU test profile, submitted to a real one-node
Slurm by its own submit script: a sample task cancelled mid-run and a teacher's server killed, the
bundle's recovery step, and the chain's results checked to the row (tests/slurm.py starts Slurm)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepdistill_tui.core.recipe import load_recipe
from tests import slurm

pytestmark = pytest.mark.slow

TOPICS = ["the sea", "a mountain", "the city at night", "a garden", "winter", "a library", "the desert",
          "a train journey"]
PASSES, TEACHERS = 2, ("1.5b", "7b", "r1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    reason = slurm.why_not()
    if reason and os.environ.get("CI") and "not installed" in reason:
        pytest.fail(f"CI installs Slurm (.ci/run), yet {reason}")
    if reason:
        pytest.skip(f"no Slurm here: {reason}")
    root = tmp_path_factory.mktemp("slurm")
    with slurm.one_node_slurm(root) as env:
        # The jobs run this interpreter's deepdistill-tui, python and torchrun.
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        yield env


def queries(path: Path) -> int:
    """Instruction-following queries whose checks a 135M stand-in passes some of the time (so the
    selection keeps something and CV varies), a math and a code query for the other graders."""
    rows: list[dict[str, Any]] = []
    for i, topic in enumerate(TOPICS):
        check = {"type": "contains", "value": "the"} if i % 2 else {"type": "not_contains", "value": ","}
        rows.append({"question": f"Write two sentences about {topic}.", "category": "if",
                     "constraints": [{"type": "min_words", "value": 3}, check]})
    rows.append({"question": "What is 17 times 3? Give the number.", "category": "math",
                 "ground_truth": "51"})
    rows.append({"question": "Write a function add_five(x) that returns x plus 5.", "category": "code",
                 "test_cases": ["assert add_five(1) == 6", "assert add_five(-5) == 0"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def trimmed_full_32b(folder: Path) -> tuple[Path, int]:
    """full-32b with the counts cut: ten queries, two passes, short answers, three sampling shards
    over two grading tasks, one node of two training processes, a few optimizer steps."""
    n = queries(folder / "queries.jsonl")
    data = load_recipe("full-32b").model_dump(mode="json", exclude_none=True)
    data["data"]["sources"] = [{"path": str(folder / "queries.jsonl"), "format": "jsonl"}]
    data["sampling"]["passes"] = PASSES
    # The 135M stand-in does not close a reasoning block in 48 tokens; its answers are graded as they are.
    data["grading"]["require_reasoning"] = False
    for t in data["teachers"]:
        t.update(n_ctx=2048, concurrency=4, timeout_s=120)
        t["sampling"]["max_tokens"] = 48
    data["training"].update(max_length=256, max_steps=4, save_steps=2, global_batch=4)
    data["cluster"].update(nodes=1, gpus_per_node=2, sampling_shards=3, grading_shards=2)
    path = folder / "full-32b-trimmed.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, n


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, poll_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def chain(bundle: Path) -> dict[str, str]:
    rows = (line.split("\t") for line in (bundle / "logs/jobs.tsv").read_text().splitlines())
    return {step: job for step, job, _ in rows}


def states_of(env: dict[str, str], job: str) -> dict[str, str]:
    """The states of a job, or of each task of an array job (by task id)."""
    jobs = slurm.job_states(env)
    return {i.partition("_")[2] or "-": state for i, (_, state) in jobs.items()
            if i == job or i.startswith(f"{job}_")}


def ended(env: dict[str, str], jobs: list[str]) -> dict[str, dict[str, str]] | None:
    """Each job's task states once every task of them has ended (tasks that never started show as
    one range, "[0-1]")."""
    out = {job: states_of(env, job) for job in jobs}
    done = all(s and all(v in slurm.TERMINAL for v in s.values()) for s in out.values())
    return out if done else None


def samples_in(db: Path) -> int:
    if not db.is_file():
        return 0
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        try:
            return int(conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


def sbatch(env: dict[str, str], bundle: Path, *args: str) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=bundle, env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().split(";")[0]


def submitted_bundle(env: dict[str, str], tmp_path: Path) -> tuple[Path, dict[str, str], int]:
    """The trimmed full-32b, exported with the CPU profile and submitted by its own submit.sh."""
    recipe, n_queries = trimmed_full_32b(tmp_path)
    bundle = tmp_path / "bundle"
    export = subprocess.run([sys.executable, "-m", "deepdistill_tui", "cluster-export", "--recipe",
                             str(recipe), "--out", str(bundle), "--profile", "cpu-test"],
                            capture_output=True, text=True, env=env)
    assert export.returncode == 0, export.stderr[-2000:]
    submitted = subprocess.run(["bash", str(bundle / "submit.sh")], capture_output=True, text=True,
                               env=env)
    assert submitted.returncode == 0, submitted.stderr
    jobs = chain(bundle)
    assert list(jobs) == ["prepare", *(f"serve:{t}" for t in TEACHERS), "sample", "grade", "select",
                          "train:stage1", "train:stage2"]
    return bundle, jobs, n_queries


def test_full_32b_bundle_runs_on_slurm_every_job_completed(cluster: dict[str, str], tmp_path: Path) -> None:
    bundle, jobs, n_queries = submitted_bundle(cluster, tmp_path)
    final = wait_for("the chain to end", lambda: ended(cluster, list(jobs.values())), 1200, 2)
    failed = {step: final[job] for step, job in jobs.items() if set(final[job].values()) != {"COMPLETED"}}
    assert not failed, (failed, _tail_logs(bundle))
    assert len(final[jobs["sample"]]) == 3 and len(final[jobs["grade"]]) == 2  # one task per shard / share
    _check_results(bundle, n_queries)
    again = subprocess.run(["bash", str(bundle / "submit.sh")], capture_output=True, text=True, env=cluster)
    assert again.returncode == 2 and "submitted already" in again.stderr
    nothing = subprocess.run(["bash", str(bundle / "recover.sh")], capture_output=True, text=True,
                             env=cluster)
    assert nothing.returncode == 0 and "nothing to resubmit" in nothing.stdout, nothing.stdout


def test_full_32b_bundle_on_slurm_recovers_a_cancelled_task_and_a_killed_server(cluster: dict[str, str],
                                                                                 tmp_path: Path) -> None:
    env = {**cluster, "ENDPOINT_WAIT_S": "120"}
    bundle, jobs, n_queries = submitted_bundle(env, tmp_path)

    # Fault 1: a sample task cancelled once it has written part of its shard.
    shard1 = bundle / "store/shards/shard-0001.db"
    wait_for("sample task 1 to write its first sample",
             lambda: _no_failure_yet(env, bundle, jobs) and samples_in(shard1) > 0, 600, 0.5)
    subprocess.run(["scancel", f"{jobs['sample']}_1"], env=env, check=True)
    # Fault 2: a teacher's server killed while the other tasks sample.
    subprocess.run(["scancel", jobs["serve:7b"]], env=env, check=True)
    stopped = wait_for("the chain to stop", lambda: ended(env, [jobs[s] for s in jobs
                                                                if not s.startswith("serve:")]), 600)
    assert stopped[jobs["sample"]]["1"] == "CANCELLED", stopped
    assert states_of(env, jobs["serve:7b"])["-"] == "CANCELLED"
    for later in ("grade", "select", "train:stage1", "train:stage2"):  # cancelled, not left pending
        assert set(stopped[jobs[later]].values()) == {"CANCELLED"}, (later, stopped)
    assert not (bundle / "endpoints/7b.url").exists()  # the dead server took its address with it

    # A task that cannot reach a teacher fails with one line, not a hang: no address, then a stale one.
    quick = {**env, "ENDPOINT_WAIT_S": "5"}
    lost = sbatch(quick, bundle, "--array=0", "jobs/02_sample.sbatch")
    wait_for("the task without an endpoint to fail", lambda: ended(env, [lost]), 120)
    assert states_of(env, lost) == {"0": "FAILED"}
    assert "dd: teacher 7b has no endpoint after 5s" in (bundle / f"logs/dd-sample-{lost}_0.out").read_text()
    (bundle / "endpoints/7b.url").write_text(f"http://127.0.0.1:{slurm.free_port()}/v1\n")
    stale = sbatch(quick, bundle, "--array=0", "jobs/02_sample.sbatch")
    wait_for("the task with a stale endpoint to fail", lambda: ended(env, [stale]), 120)
    log = (bundle / f"logs/dd-sample-{stale}_0.out").read_text()
    assert "dd: teacher 7b does not answer at http://127.0.0.1:" in log, log[-1000:]

    # The documented recovery: resubmit what did not complete.
    recovered = subprocess.run(["bash", str(bundle / "recover.sh")], capture_output=True, text=True,
                               env=env)
    assert recovered.returncode == 0, recovered.stderr
    assert "sample: job" in recovered.stdout and "serve:7b" in recovered.stdout, recovered.stdout
    assert "prepare" not in recovered.stdout  # it completed: not run again
    again = chain(bundle)
    assert again["prepare"] == jobs["prepare"] and again["sample"] != jobs["sample"]
    final = wait_for("the recovered chain to end", lambda: ended(env, list(again.values())), 1500, 2)
    failed = {step: final[job] for step, job in again.items() if set(final[job].values()) != {"COMPLETED"}}
    assert not failed, (failed, recovered.stdout, _tail_logs(bundle))
    _check_results(bundle, n_queries)


def _check_results(bundle: Path, n_queries: int) -> None:
    expected = n_queries * PASSES * len(TEACHERS)
    shards = sorted((bundle / "store/shards").glob("shard-*.db"))
    assert len(shards) == 3 and sum(samples_in(s) for s in shards) == expected
    with sqlite3.connect(bundle / "store/main.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM queries WHERE split = 'train'").fetchone()[0] == n_queries
        per = conn.execute("SELECT COUNT(*), COUNT(DISTINCT query_id || '|' || teacher_id || '|'"
                           " || pass_index) FROM samples").fetchone()
        assert per == (expected, expected)  # none lost, none doubled
        assert conn.execute("SELECT COUNT(*) FROM grades").fetchone()[0] == expected
        assert conn.execute("SELECT MIN(n), MAX(n) FROM (SELECT COUNT(*) AS n FROM samples"
                            " GROUP BY query_id, teacher_id)").fetchone() == (PASSES, PASSES)
        selections = dict(conn.execute("SELECT name, n_members FROM selections"))
    assert selections.get("full-32b", 0) > 0, selections
    for stage, name in (("stage1", "full-32b"), ("stage2", "full-32b-stage2")):
        exported = (bundle / f"data/{stage}.jsonl").read_text().splitlines()
        assert len(exported) == selections[name] > 0, (stage, selections)
        run = bundle / "train" / stage
        assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == \
            ["checkpoint-2", "checkpoint-4"]
        assert json.loads((run / "config.json").read_text())["stage"] == stage
        result = json.loads((run / "result.json").read_text())
        assert result["steps"] == 4 and Path(bundle / result["output"]).is_dir(), result
    assert (bundle / "endpoints/release").is_file() and not list((bundle / "endpoints").glob("*.url"))


def _no_failure_yet(env: dict[str, str], bundle: Path, jobs: dict[str, str]) -> bool:
    """True while no job of the chain has failed (one that did fails the test with the logs)."""
    for step, job in jobs.items():
        if "FAILED" in states_of(env, job).values():
            raise AssertionError(f"{step} (job {job}) failed before any fault\n{_tail_logs(bundle)}")
    return True


def _tail_logs(bundle: Path) -> str:
    return "\n".join(f"== {p.name}\n{p.read_text()[-600:]}" for p in sorted((bundle / "logs").glob("*.out")))
