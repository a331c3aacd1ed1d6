"""Embedding-similarity decontamination (docs/PAPER.md section 1 uses bge-m3 above 0.9).

Any local sentence-embedding model that transformers can load works: texts are mean-pooled over the last
hidden state and L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from deepdistill_tui.core.errors import DeepDistillError


def resolve_model_dir(spec: str) -> Path | str:
    """A directory, ``package:NAME`` for a model shipped in a Python package, or a Hub model id."""
    if spec.startswith("package:"):
        name = spec.removeprefix("package:")
        found = importlib.util.find_spec(name)
        if found is None or not found.submodule_search_locations:
            raise DeepDistillError(f"embedding model package {name!r} is not installed")
        root = Path(next(iter(found.submodule_search_locations)))
        configs = sorted(root.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
        if not configs:
            raise DeepDistillError(f"embedding model package {name!r} has no config.json")
        return configs[0].parent
    path = Path(spec)
    if path.is_dir() and not (path / "config.json").is_file():
        raise DeepDistillError(f"embedding model {spec}: no config.json in that directory")
    return path if path.is_dir() else spec


def embed(texts: list[str], model_dir: Path | str, batch: int = 64) -> Any:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i : i + batch], padding=True, truncation=True, max_length=256,
                      return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.zeros(0)


def embedding_contaminated(train: list[str], evals: list[str], model: str,
                           threshold: float) -> list[int]:
    """Indices of training texts whose cosine similarity to some eval text exceeds the threshold."""
    if not train or not evals:
        return []
    model_dir = resolve_model_dir(model)
    e = embed(evals, model_dir)
    hits: list[int] = []
    chunk = 1024
    for start in range(0, len(train), chunk):
        t = embed(train[start : start + chunk], model_dir)
        best = (t @ e.T).max(dim=1).values
        hits.extend(start + int(i) for i in (best > threshold).nonzero().flatten())
    return hits
