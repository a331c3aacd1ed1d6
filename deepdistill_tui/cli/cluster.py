"""shard, merge and cluster-export: scaling out to a cluster."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deepdistill_tui.cli.common import positive_int


def cmd_shard(args: argparse.Namespace) -> int:
    from deepdistill_tui.cli.common import open_store
    from deepdistill_tui.core.store.shards import write_shards

    with open_store(args) as store:
        report = write_shards(store, args.shards, Path(args.out))
    queries = sum(r["queries"] for r in report)
    print(f"wrote {len(report)} shards of {queries} training queries to {args.out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from deepdistill_tui.cli.common import open_store
    from deepdistill_tui.core.store.shards import merge_shards

    with open_store(args, "merge") as store:
        added = merge_shards(store, [Path(p) for p in args.shards])
    print("merged " + ", ".join(f"{n} {table}" for table, n in added.items()) + f" into {args.db}")
    return 0


def cmd_cluster_export(args: argparse.Namespace) -> int:
    from deepdistill_tui.cli.common import console_for, load_recipe_arg
    from deepdistill_tui.core.cluster.bundle import write_cluster_bundle
    from deepdistill_tui.core.errors import DeepDistillError
    from deepdistill_tui.core.store.database import Store

    recipe = load_recipe_arg(args)
    if args.from_run and not args.db:
        raise DeepDistillError("--from-run needs --db, the pilot's database")
    if args.db and not Path(args.db).is_file():
        raise DeepDistillError(f"--db {args.db} does not exist")
    store = Store(args.db, create=False) if args.db else None
    try:
        written = write_cluster_bundle(recipe, Path(args.out), store, args.from_run, args.profile)
    finally:
        if store is not None:
            store.close()
    bundle = written["plan"]
    console = console_for()
    console.print(f"wrote {written['files']} files to {args.out}; the plan and the commands are in "
                  f"{Path(args.out) / 'README.md'}")
    for st in bundle.stages:
        hours = f", ~{st.gpu_hours:,.0f} GPU-hours" if st.gpu_hours else ""
        console.print(f"  {st.name}: {st.steps:,} optimizer steps at global batch "
                      f"{st.batch.global_batch} ({st.batch.nodes}x{st.batch.gpus_per_node} GPUs x "
                      f"micro {st.batch.micro_batch} x accum {st.batch.grad_accum}){hours}")
    for ch in bundle.changes:
        console.print(f"  changed {ch.key}: {ch.pilot!r} -> {ch.bundle!r} ({ch.why})")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser, with_recipe: argparse.ArgumentParser) -> None:
    p = sub.add_parser("shard", parents=[common],
                       help="split the training queries into shard databases for array jobs")
    p.add_argument("--shards", type=positive_int, required=True, metavar="N")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(handler=cmd_shard)

    p = sub.add_parser("merge", parents=[common],
                       help="fold shard databases' samples and grades into the store")
    p.add_argument("shards", nargs="+", metavar="SHARD.db")
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser("cluster-export", parents=[with_recipe],
                       help="write a bundle that runs the recipe on Slurm, vLLM/SGLang and torchrun")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--db", metavar="PATH",
                   help="a store whose selections size the plan (and, with --from-run, the pilot's)")
    p.add_argument("--from-run", metavar="RUN_ID",
                   help="carry a pilot train run's data rules and hyperparameters up")
    p.add_argument("--profile", choices=("cluster", "cpu-test"), default="cluster",
                   help="cluster: GPUs, vLLM/SGLang, DeepSpeed/FSDP; cpu-test: the same bundle on CPUs "
                        "(llama.cpp servers on a stand-in GGUF, DDP over gloo) for a test Slurm")
    p.set_defaults(handler=cmd_cluster_export)
