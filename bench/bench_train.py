"""Training throughput on a skewed length mix, same data, one run, three ways: padded batches in random
order, padded batches of like lengths (``group_by_length``, what an unpacked recipe trains with), and
packing.

    python bench/bench_train.py                 # 24 steps each, SmolLM2-135M LoRA on CPU
    python bench/bench_train.py --steps 12

Useful tokens are the non-padding tokens the model trains on; the mix is 80% short answers (~20
tokens) and 20% long ones (~300 tokens), the shape that makes padding waste most of a batch.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any


def rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        long = rng.random() < 0.2
        words = " ".join(f"step{j} adds {rng.randint(1, 99)}" for j in range(100 if long else 6))
        out.append({"prompt": [{"role": "user", "content": f"Question {i}: sum the steps."}],
                    "completion": [{"role": "assistant", "content": f"<think>{words}</think> done"}]})
    return out


MODES = {"padding, random order": (False, "random"), "padding, grouped by length": (False, "group_by_length"),
         "packing": (True, "random")}


def run(mode: str, steps: int, data: list[dict[str, Any]], out: Path) -> tuple[float, int]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from deepdistill_tui.core.recipe import load_recipe
    from deepdistill_tui.core.student.checkpoint import student_checkpoint
    from deepdistill_tui.core.train.config import TrainBackend
    from deepdistill_tui.core.train.worker import sft_config, trainer_class

    packing, order = MODES[mode]
    recipe = load_recipe("tiny")
    cfg = recipe.training.model_copy(update={"packing": packing, "max_steps": steps, "max_length": 512,
                                             "micro_batch": 4, "grad_accum": 1, "save_steps": 10**6})
    path = student_checkpoint(cfg.student)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    args = sft_config(cfg, out, TrainBackend(unsloth=False, method="lora", device="cpu"), 0)
    args.include_num_input_tokens_seen = "non_padding"
    args.train_sampling_strategy = order
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter())

    trainer = trainer_class()(model=model, args=args, train_dataset=Dataset.from_list(data),
                              processing_class=tok, callbacks=[Clock()],
                              peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                     task_type="CAUSAL_LM"))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - (times[1] if len(times) > 1 else t0)  # skip the first step's warmup
    tokens = int(trainer.state.num_input_tokens_seen)
    per_step = tokens / max(trainer.state.global_step, 1)
    return seconds, int(per_step * (trainer.state.global_step - 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args()
    data = rows(400)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for i, mode in enumerate(MODES):
            seconds, tokens = run(mode, args.steps, data, Path(d) / str(i))
            results[mode] = tokens / seconds
            print(f"{mode}: {tokens} useful tokens in {seconds:.1f} s = "
                  f"{tokens / seconds:.0f} useful tokens/s")
    base = results["padding, random order"]
    print(json.dumps({f"{mode} / padding, random order": round(v / base, 2) for mode, v in results.items()}))


if __name__ == "__main__":
    main()
