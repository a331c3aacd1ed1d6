"""The Python half of bench/gpu_acceptance.sh: the capped `small` recipe it runs, and its report.

    python bench/gpu_acceptance.py recipe --out WORK/recipe.yaml [--queries 64 --passes 2 --max-tokens 2048]
    python bench/gpu_acceptance.py report --work WORK --out OUT

``recipe`` writes `small` capped to fit the acceptance run's time (fewer queries and passes, shorter
answers, one epoch, a smaller eval), plus the same recipe with plain transformers + peft training (the
Unsloth comparison). ``report`` reads what the shell script left in WORK (stage timings and GPU memory,
the JSON outputs of the commands) and writes OUT/gpu_acceptance.json and OUT/gpu_acceptance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import yaml


def capped(queries: int, passes: int, max_tokens: int, eval_limit: int) -> dict[str, Any]:
    from deepdistill_tui.core.recipe import load_recipe

    data = load_recipe("small").model_dump(mode="json")
    data["name"] = "small-acceptance"
    for src in data["data"]["sources"]:
        if src.get("split", "train") == "train":
            src["limit"] = queries
    data["sampling"].update({"passes": passes, "query_limit": queries})
    for t in data["teachers"]:
        t["sampling"]["max_tokens"] = max_tokens
        t["n_ctx"] = max_tokens + 1024
    data["training"].update({"epochs": 1, "max_length": max(max_tokens + 512, 2048)})
    data["eval"].update({"k": 1, "max_tokens": max_tokens, "limit": eval_limit})
    return data


def write_recipe(args: argparse.Namespace) -> None:
    data = capped(args.queries, args.passes, args.max_tokens, args.eval_limit)
    out = Path(args.out)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    steps = {**data, "name": "small-acceptance-steps"}
    steps["training"] = {**data["training"], "max_steps": args.compare_steps, "save_steps": 10**6,
                         "gguf": None}
    for backend in ("unsloth", "transformers"):
        variant = {**steps, "name": f"small-acceptance-{backend}",
                   "training": {**steps["training"], "backend": backend}}
        out.with_name(f"recipe-{backend}.yaml").write_text(yaml.safe_dump(variant, sort_keys=False))


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _stages(work: Path) -> list[dict[str, Any]]:
    rows = []
    tsv = work / "stages.tsv"
    for line in tsv.read_text().splitlines() if tsv.is_file() else []:
        name, status, seconds, peak = line.split("\t")
        rows.append({"stage": name, "status": status, "seconds": float(seconds),
                     "peak_gpu_mib": int(peak) if peak.isdigit() else None})
    return rows


def figures(work: Path) -> dict[str, Any]:
    sample_bench = _load(work / "sample_bench.json") or {}
    evals = _load(work / "eval.json") or []
    train = _load(work / "train.json") or {}
    stages = {s["stage"]: s for s in _stages(work)}
    by_model = {e["model"]: e for e in evals}
    trained = next((e for e in evals if e["model"] != "base"), None)
    eval_stage = stages.get("eval", {})
    answers = sum(e["problems"] * e["k"] for e in evals)
    return {
        "gpu": (work / "gpu.txt").read_text().strip() if (work / "gpu.txt").is_file() else None,
        "host": platform.node(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "stages": list(stages.values()),
        "sampling": sample_bench,
        "training": {"backend": train.get("backend"), "steps": train.get("steps"),
                     "first_loss": train.get("first_loss"), "last_loss": train.get("last_loss"),
                     "tokens_per_s": train.get("tokens_per_s")},
        "unsloth_tokens_per_s": (_load(work / "train-unsloth.json") or {}).get("tokens_per_s"),
        "peft_tokens_per_s": (_load(work / "train-transformers.json") or {}).get("tokens_per_s"),
        "eval_answers_per_s": answers / eval_stage["seconds"] if eval_stage.get("seconds") else None,
        "pass_at_1": {m: {k: e[k] for k in ("pass_at_1", "ci_low", "ci_high", "problems", "k")}
                      for m, e in by_model.items()},
        "delta_vs_base": trained.get("delta_vs_base") if trained else None,
    }


def markdown(f: dict[str, Any]) -> str:
    def num(x: Any, fmt: str = "{:.1f}") -> str:
        return "-" if x is None else fmt.format(x)

    lines = [f"# GPU acceptance: `small`, capped ({f['date']})", "", f"GPU: {f['gpu'] or 'unknown'}", "",
             "| stage | status | seconds | peak GPU memory (MiB) |", "|---|---|---:|---:|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} | {num(s['peak_gpu_mib'], '{}')} |"
              for s in f["stages"]]
    lines += ["", "| figure | value |", "|---|---:|"]
    for run in f["sampling"].get("runs", []):
        lines.append(f"| sampling N={run['passes']}: loop / continuous tok/s (ratio) | "
                     f"{run['loop_tok_s']:.0f} / {run['continuous_tok_s']:.0f} "
                     f"({run['continuous_over_loop']:.2f}x) |")
    unsloth, peft = f["unsloth_tokens_per_s"], f["peft_tokens_per_s"]
    ratio = f" ({unsloth / peft:.2f}x)" if unsloth and peft else ""
    lines.append(f"| training tok/s: Unsloth / peft QLoRA{ratio} | {num(unsloth, '{:.0f}')} / "
                 f"{num(peft, '{:.0f}')} |")
    lines.append(f"| eval answers/s (llama.cpp) | {num(f['eval_answers_per_s'], '{:.2f}')} |")
    for model, e in f["pass_at_1"].items():
        lines.append(f"| pass@1 {model} [95% CI] | {100 * e['pass_at_1']:.1f}% "
                     f"[{100 * e['ci_low']:.1f}, {100 * e['ci_high']:.1f}] |")
    d = f["delta_vs_base"]
    if d and d.get("problems"):
        lines.append(f"| trained - base, points [95% CI] | {100 * d['delta']:+.1f} "
                     f"[{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] |")
    return "\n".join(lines) + "\n"


def report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    f = figures(Path(args.work))
    (out / "gpu_acceptance.json").write_text(json.dumps(f, indent=2))
    (out / "gpu_acceptance.md").write_text(markdown(f))
    print(markdown(f))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recipe")
    r.add_argument("--out", required=True)
    r.add_argument("--queries", type=int, default=64)
    r.add_argument("--passes", type=int, default=2)
    r.add_argument("--max-tokens", type=int, default=2048)
    r.add_argument("--eval-limit", type=int, default=64)
    r.add_argument("--compare-steps", type=int, default=20)
    r.set_defaults(fn=write_recipe)
    p = sub.add_parser("report")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=report)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
