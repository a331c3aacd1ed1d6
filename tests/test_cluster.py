"""Cluster bundles: batch arithmetic, serving plans, the scripts (bash -n, shellcheck), the engines'
own config parsers, carrying a pilot up, sharding, and the bundle's trainer under torchrun (gloo)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepdistill_tui.core.cluster.bundle import write_bundle
from deepdistill_tui.core.cluster.plan import batch_plan, plan_bundle, serve_plan
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.recipe import ClusterConfig, OpenAITeacher, Recipe, load_recipe, with_endpoints
from deepdistill_tui.core.store.database import Store


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deepdistill_tui", *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.mark.parametrize(("nodes", "gpus", "micro", "accum"), [
    (1, 8, 1, 8), (2, 8, 1, 4), (4, 8, 1, 2), (8, 8, 1, 1), (4, 8, 2, 1), (16, 4, 1, 1), (1, 1, 4, 16)])
def test_global_batch_is_nodes_x_gpus_x_micro_x_accumulation(nodes: int, gpus: int, micro: int,
                                                            accum: int) -> None:
    plan = batch_plan(64, nodes, gpus, micro)
    assert plan.grad_accum == accum
    assert plan.nodes * plan.gpus_per_node * plan.micro_batch * plan.grad_accum == 64


@pytest.mark.parametrize(("nodes", "gpus", "micro"), [(3, 8, 1), (16, 8, 1), (1, 6, 1), (8, 8, 2)])
def test_a_global_batch_that_does_not_divide_is_refused(nodes: int, gpus: int, micro: int) -> None:
    per_step = nodes * gpus * micro
    with pytest.raises(DeepDistillError, match=rf"global batch 64 is not a multiple .* = {per_step}"):
        batch_plan(64, nodes, gpus, micro)


def test_tensor_parallel_fits_the_weights() -> None:
    cluster = load_recipe("full-72b").cluster
    assert cluster is not None
    plans = {t.name: serve_plan(t, i, cluster) for i, t in enumerate(load_recipe("full-72b").teachers)}
    assert (plans["1.5b"].tensor_parallel, plans["1.5b"].pipeline_parallel) == (1, 1)
    assert (plans["7b"].tensor_parallel, plans["7b"].pipeline_parallel) == (1, 1)
    assert (plans["r1"].tensor_parallel, plans["r1"].pipeline_parallel) == (8, 2)  # 671 GB of FP8
    big = OpenAITeacher(name="q72", backend="openai", base_url="http://h:1/v1",
                        served_model="Qwen/Qwen2.5-72B")
    assert serve_plan(big, 0, cluster).tensor_parallel == 4  # 145 GB of bf16 over 80 GB GPUs
    one_node = ClusterConfig(nodes=1, gpus_per_node=8, teachers=cluster.teachers)
    r1 = next(t for t in load_recipe("full-72b").teachers if t.name == "r1")
    with pytest.raises(DeepDistillError, match="needs 2 nodes"):
        serve_plan(r1, 0, one_node)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, profile in (("full-32b", "cluster"), ("full-72b", "cluster"), ("full-32b", "cpu-test")):
        path = tmp_path_factory.mktemp("bundles") / name
        proc = run_cli("cluster-export", "--recipe", name, "--out", str(path), "--profile", profile)
        assert proc.returncode == 0, proc.stderr
        out[name if profile == "cluster" else f"{name}-{profile}"] = path
    return out


def scripts(bundle: Path) -> list[Path]:
    return sorted([bundle / "env.sh", bundle / "submit.sh", bundle / "recover.sh", *bundle.glob("jobs/*"),
                   *bundle.glob("serve/*"), bundle / "train" / "train.sbatch"])


def test_bundle_scripts_parse_and_pass_shellcheck(bundles: dict[str, Path]) -> None:
    for bundle in bundles.values():
        for script in scripts(bundle):
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script
        if shutil.which("shellcheck") is None:
            pytest.skip("shellcheck is not installed (CI installs it with apt-get)")
        proc = subprocess.run(["shellcheck", "-x", "-s", "bash", *map(str, scripts(bundle))],
                              capture_output=True, text=True, cwd=bundle)
        assert proc.returncode == 0, proc.stdout


def test_bundle_carries_the_paper_values(bundles: dict[str, Path]) -> None:
    b32 = bundles["full-32b"]
    s1 = json.loads((b32 / "train/stage1/config.json").read_text())["recipe"]["training"]
    s2 = json.loads((b32 / "train/stage2/config.json").read_text())["recipe"]["training"]
    assert (s1["learning_rate"], s1["epochs"], s1["packing"], s1["max_length"]) == (8e-5, 1, True, 32768)
    assert (s2["learning_rate"], s2["epochs"], s2["packing"]) == (8e-6, 2, False)
    assert s1["lr_scheduler"] == "cosine" and s1["warmup_ratio"] == 0.05
    assert s2["student"]["hf_model"] == "train/stage1/model"
    assert not (bundles["full-72b"] / "train/stage2").exists()  # the 72B model has no Stage II
    readme = (b32 / "README.md").read_text()
    assert "64 = 4 nodes x 8 GPUs x micro-batch\n  1 x accumulation 2" in readme
    assert "sbatch train/train.sbatch train/stage2" in readme and "GPU-hours" in readme
    assert "-m deepdistill_tui.core.train" in (b32 / "train/train.sbatch").read_text()
    assert "deepdistill-tui sample" in (b32 / "jobs/02_sample.sbatch").read_text()
    assert "--array=0-255%32" in (b32 / "jobs/02_sample.sbatch").read_text()
    assert load_recipe(str(b32 / "recipe.yaml")).training.learning_rate == 8e-5


DS_PARSE = """
import json, os, sys
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=sys.argv[3])
import deepspeed
from deepspeed.runtime.config import DeepSpeedConfig

class DataParallel:  # the data-parallel world a cluster launch would have
    def get_data_parallel_world_size(self):
        return int(sys.argv[2])

deepspeed.init_distributed(dist_backend="gloo")  # the parser asks the process group for its rank
try:
    cfg = DeepSpeedConfig(sys.argv[1], mpu=DataParallel())
except AssertionError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"stage": cfg.zero_optimization_stage, "batch": cfg.train_batch_size,
                      "micro": cfg.train_micro_batch_size_per_gpu,
                      "accum": cfg.gradient_accumulation_steps}))
"""


def parse_deepspeed(path: Path, world: int, port: int) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", DS_PARSE, str(path), str(world), str(port)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_deepspeed_config_passes_deepspeeds_own_parser(bundles: dict[str, Path]) -> None:
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (the dev extra installs it)")
    for (name, world), port in zip((("full-32b", 32), ("full-72b", 64)), (29541, 29542), strict=True):
        path = bundles[name] / "train/ds_zero3.json"
        cfg = parse_deepspeed(path, world, port)
        assert cfg["stage"] == 3 and cfg["batch"] == 64 and cfg["micro"] * cfg["accum"] * world == 64
        # The parser checks the arithmetic: the same file on twice the GPUs is refused.
        assert "train_batch_size is not equal" in parse_deepspeed(path, world * 2, port)["error"]


def test_fsdp_config_loads_through_accelerate(bundles: dict[str, Path]) -> None:
    from accelerate.commands.config.config_args import ClusterConfig as AccelerateConfig

    cfg = AccelerateConfig.from_yaml_file(str(bundles["full-72b"] / "train/accelerate_fsdp.yaml"))
    assert str(cfg.distributed_type).endswith("FSDP") and cfg.num_processes == 64 and cfg.num_machines == 8


def test_from_run_carries_the_pilot_and_states_every_change(tmp_path: Path) -> None:
    pilot = load_recipe("tiny").model_dump(mode="json")
    pilot["selection"]["cv_threshold"]["math"] = 0.2
    pilot_recipe = Recipe.model_validate(pilot)
    db = tmp_path / "pilot.db"
    with Store(db) as s:
        run_id = s.start_run("train", "tiny", pilot_recipe.to_json(), {"selection": "tiny"})
    out = tmp_path / "bundle"
    proc = run_cli("cluster-export", "--recipe", "full-72b", "--from-run", run_id, "--db", str(db),
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    carried = load_recipe(str(out / "recipe.yaml"))
    assert carried.selection.cv_threshold["math"] == 0.2  # the pilot's data rule
    assert carried.training.learning_rate == 8e-5 and carried.training.method == "full"
    readme = (out / "README.md").read_text()
    assert f"Carried from pilot run {run_id}" in readme
    lr_row = next(line for line in readme.splitlines() if line.startswith("| `training.learning_rate`"))
    assert "0.0005 | 8e-05" in lr_row and "full fine-tuning" in lr_row
    assert "| `training.method` | 'lora' | 'full' |" in readme
    assert "| `selection.cv_threshold` |" in readme and "carried from the pilot" in readme


@pytest.mark.parametrize(("args", "message"), [
    (["--recipe", "tiny"], "recipe tiny has no `cluster` section"),
    (["--recipe", "full-72b", "--from-run", "nope"], "--from-run needs --db"),
    (["--recipe", "full-72b", "--db", "missing.db"], "--db missing.db does not exist"),
])
def test_bad_cluster_export_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str],
                                                           message: str) -> None:
    proc = run_cli("cluster-export", *args, "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_endpoint_override() -> None:
    r = with_endpoints(load_recipe("full-72b"), ["r1=http://node7:8003/v1"])
    assert r.teacher("r1").base_url == "http://node7:8003/v1"
    for bad, msg in ((["r9=http://x/v1"], "no teacher 'r9'"), (["r1"], "expected NAME=http"),
                     (["smollm2-135m=http://x/v1"], "not an OpenAI-compatible server")):
        recipe = load_recipe("tiny") if "smollm2" in bad[0] else load_recipe("full-72b")
        with pytest.raises(DeepDistillError, match=msg):
            with_endpoints(recipe, bad)


def test_shards_split_the_training_queries_and_merge_back_once(tmp_path: Path) -> None:
    from deepdistill_tui.core.data.ingest import ingest

    main = tmp_path / "main.db"
    with Store(main) as s:
        ingest(s, load_recipe("tiny").data)
        train = {q for (q,) in s.conn.execute("SELECT query_id FROM queries WHERE split = 'train'")}
    assert run_cli("shard", "--db", str(main), "--shards", "3", "--out", str(tmp_path / "sh")).returncode == 0
    parts = []
    for i in range(3):
        with Store(tmp_path / "sh" / f"shard-{i:04d}.db") as s:
            parts.append({q for (q,) in s.conn.execute("SELECT query_id FROM queries")})
    assert set().union(*parts) == train and sum(map(len, parts)) == len(train) and all(parts)
    # Work done in a shard (as an array task would) comes back with merge, once.
    with Store(tmp_path / "sh" / "shard-0001.db") as s, s.write() as conn:
        conn.execute("INSERT INTO teachers (teacher_id, name, backend, model, params, created_at)"
                     " VALUES ('t', 'r1', 'openai', 'm', '{}', 0)")
        conn.executemany("INSERT INTO samples (query_id, teacher_id, pass_index, response, created_at)"
                         " VALUES (?, 't', 0, 'answer', 0)", [(q,) for q in parts[1]])
        conn.executemany("INSERT INTO grades (query_id, teacher_id, pass_index, verify_score, passed,"
                         " status, grader, grader_version, created_at) VALUES (?, 't', 0, 1, 1, 'ok',"
                         " 'math', '1', 0)", [(q,) for q in parts[1]])
    shards = [str(p) for p in sorted((tmp_path / "sh").glob("shard-*.db"))]
    first = run_cli("merge", "--db", str(main), *shards)
    assert first.returncode == 0, first.stderr
    again = run_cli("merge", "--db", str(main), *shards)
    assert "merged 0 queries, 0 teachers, 0 samples" in again.stdout
    with Store(main) as s:
        assert s.count("samples") == s.count("grades") == len(parts[1])


def test_merge_keeps_each_grade_with_the_response_it_graded(tmp_path: Path) -> None:
    """A pass sampled both in the store (a wrong answer, failed) and in a shard (a right one, passed):
    the merged store holds the shard's response with the shard's grade, never the wrong answer with
    the pass (the old merge kept the store's sample and took the shard's grade). A pass the shard
    sampled anew but has not graded drops the store's stale grade rather than lend it."""
    from tests.test_select import put

    main, shard = tmp_path / "main.db", tmp_path / "shard-0000.db"
    for path in (main, shard):
        with Store(path) as s:
            put(s, {("q1", "r1"): [0.0, 0.0], ("q2", "r1"): [0.0]})
    with Store(shard) as s, s.write() as conn:
        conn.execute("UPDATE samples SET response = 'right' WHERE query_id = 'q1' AND pass_index = 0")
        conn.execute("UPDATE grades SET verify_score = 1, passed = 1, created_at = created_at + 1"
                     " WHERE query_id = 'q1' AND pass_index = 0")
        conn.execute("UPDATE samples SET response = 'new' WHERE query_id = 'q2'")
        conn.execute("DELETE FROM grades WHERE query_id = 'q2'")
    out = run_cli("merge", "--db", str(main), str(shard))
    assert out.returncode == 0, out.stderr
    assert "2 replaced" in out.stdout, out.stdout
    with Store(main) as s:
        rows = s.conn.execute("SELECT s.query_id, s.pass_index, s.response, g.passed FROM samples s"
                              " LEFT JOIN grades g USING (query_id, teacher_id, pass_index)"
                              " ORDER BY 1, 2").fetchall()
    assert rows == [("q1", 0, "right", 1), ("q1", 1, "<think>r</think>a q11", 0), ("q2", 0, "new", None)]
    again = run_cli("merge", "--db", str(main), str(shard))
    assert "0 samples, 0 grades, 0 replaced" in again.stdout, again.stdout


@pytest.mark.slow
def test_bundle_trainer_runs_under_torchrun_with_two_processes_and_resumes(tmp_path: Path) -> None:
    """The tiny recipe with a cluster section: select, export, bundle; then the bundle's own training
    entrypoint under torchrun, 2 processes over loopback (gloo), with --smoke."""
    from deepdistill_tui.core.difficulty.export import export
    from tests.test_train import training_store

    data = load_recipe("tiny").model_dump(mode="json")
    data["cluster"] = {"nodes": 1, "gpus_per_node": 2, "sampling_shards": 2, "grading_shards": 1}
    recipe = Recipe.model_validate(data)
    with training_store(tmp_path / "pilot.db", recipe) as store:
        bundle = plan_bundle(recipe, store)
        out = tmp_path / "bundle"
        write_bundle(bundle, out)
        export(store, recipe, "s", "jsonl", out / "data" / "stage1.jsonl")

    def torchrun() -> list[dict[str, Any]]:
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
             "127.0.0.1", "--master_port", "29531", "-m", "deepdistill_tui.core.train", "train/stage1",
             "--smoke"], cwd=out, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    events = torchrun()
    started = next(e for e in events if e["event"] == "train_started")
    assert started["world_size"] == 2 and started["engine"] == "ddp"
    steps = [e for e in events if e["event"] == "train_step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]  # logged once, by rank 0
    assert all(e["loss"] > 0 for e in steps)
    ckpts = sorted(p.name for p in (out / "train/stage1/checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2", "checkpoint-4"]
    state = json.loads((out / "train/stage1/checkpoints/checkpoint-2/trainer_state.json").read_text())
    assert state["global_step"] == 2
    # As if the job died after step 2: the next launch resumes there and runs steps 3 and 4 only.
    shutil.rmtree(out / "train/stage1/checkpoints/checkpoint-4")
    again = torchrun()
    resumed = next(e for e in again if e["event"] == "train_started")
    assert resumed["resume_from"].endswith("checkpoint-2")
    resumed_steps = [e for e in again if e["event"] == "train_step"]
    assert [e["step"] for e in resumed_steps] == [3, 4]
    # Model, optimizer, schedule and data order all come back: the losses are the uninterrupted run's.
    assert [e["loss"] for e in resumed_steps] == pytest.approx([e["loss"] for e in steps[2:]], rel=1e-4)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["cluster"]["gpus_per_node"] == 2


def test_cpu_test_profile_changes_only_engine_resources_and_models(bundles: dict[str, Path]) -> None:
    gpu, cpu = bundles["full-32b"], bundles["full-32b-cpu-test"]

    def files(b: Path) -> set[str]:
        return {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and "models" not in p.parts}

    assert {f for f in files(gpu) ^ files(cpu) if not f.startswith("serve/")} == set()
    assert sorted(p.name for p in (cpu / "serve").iterdir()) == [
        "1.5b.llamacpp.sbatch", "7b.llamacpp.sbatch", "r1.llamacpp.sbatch"]
    assert "python -m llama_cpp.server --model models/teacher-smollm2-r1-style.gguf" in \
        (cpu / "serve/r1.llamacpp.sbatch").read_text()
    assert (cpu / "models/teacher-smollm2-r1-style.gguf").is_file()
    assert json.loads((cpu / "models/student-qwen2/config.json").read_text())["model_type"] == "qwen2"
    for script in scripts(cpu):
        assert "--gpus-per-node" not in script.read_text(), script
    # The plan, the chain and the data rules are the cluster's.
    plan = [line for line in (gpu / "README.md").read_text().splitlines() if line.startswith("| stage")]
    assert plan and plan == [line for line in (cpu / "README.md").read_text().splitlines()
                             if line.startswith("| stage")]
    for same in ("submit.sh", "recover.sh"):
        assert (gpu / same).read_text() == (cpu / same).read_text()

    def without_resources(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if not line.startswith("#SBATCH --cpus")]

    for job in ("jobs/02_sample.sbatch", "jobs/03_grade.sbatch", "jobs/04_select_export.sh"):
        assert without_resources(gpu / job) == without_resources(cpu / job), job
    g1, c1 = (json.loads((b / "train/stage1/config.json").read_text()) for b in (gpu, cpu))
    assert c1["recipe"]["training"].pop("student") == {"name": "qwen2.5-32b", "model": None,
                                                       "hf_model": "models/student-qwen2"}
    g1["recipe"]["training"].pop("student")
    g1["recipe"]["data"]["decontamination"].pop("embedding_model")
    c1["recipe"]["data"]["decontamination"].pop("embedding_model")
    assert g1 == c1
    assert 'ENGINE="${ENGINE:-ddp}"' in (cpu / "env.sh").read_text()
