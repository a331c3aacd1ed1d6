"""Near-duplicate detection (MinHash + LSH) and n-gram decontamination.

MinHash estimates the Jaccard similarity of character-shingle sets; LSH banding turns that into candidate
pairs in near-linear time, and each candidate is confirmed with the exact Jaccard before it is dropped, so
the threshold in the recipe means what it says.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from deepdistill_tui.core.data.text import words

_PRIME = np.uint64(4294967311)  # the first prime above 2**32


def shingles(normalized: str, k: int) -> set[str]:
    if len(normalized) <= k:
        return {normalized}
    return {normalized[i : i + k] for i in range(len(normalized) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class MinHasher:
    def __init__(self, num_perm: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # a < 2**31 keeps a * h (h < 2**32) inside uint64 without overflow.
        self.a = rng.integers(1, 1 << 31, size=num_perm, dtype=np.uint64)[:, None]
        self.b = rng.integers(0, 1 << 31, size=num_perm, dtype=np.uint64)[:, None]

    def signature(self, shingle_set: Iterable[str]) -> np.ndarray:
        h = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in shingle_set), dtype=np.uint64)
        return ((self.a * h[None, :] + self.b) % _PRIME).min(axis=1)


def near_duplicates(texts: Sequence[str], *, threshold: float, shingle: int, num_perm: int,
                    bands: int, seed: int = 0) -> list[int]:
    """Indices of texts that nearly duplicate an earlier text (first occurrence wins)."""
    hasher = MinHasher(num_perm, seed)
    rows = num_perm // bands
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    kept_shingles: dict[int, set[str]] = {}
    dropped: list[int] = []
    for i, text in enumerate(texts):
        sh = shingles(text, shingle)
        sig = hasher.signature(sh)
        keys = [sig[b * rows : (b + 1) * rows].tobytes() for b in range(bands)]
        candidates: set[int] = set()
        for band, key in enumerate(keys):
            candidates.update(buckets[band].get(key, ()))
        if any(jaccard(sh, kept_shingles[j]) >= threshold for j in candidates):
            dropped.append(i)
            continue
        kept_shingles[i] = sh
        for band, key in enumerate(keys):
            buckets[band].setdefault(key, []).append(i)
    return dropped


class Contamination:
    """Word n-grams of the eval set. Eval texts shorter than n words are matched whole."""

    def __init__(self, eval_texts: Iterable[str], n: int, max_overlap: float = 0.5) -> None:
        self.n = n
        self.max_overlap = max_overlap
        self.ngrams: set[tuple[str, ...]] = set()
        self.short: set[tuple[str, ...]] = set()
        for text in eval_texts:
            toks = words(text)
            if len(toks) < n:
                self.short.add(tuple(toks))
            else:
                self.ngrams.update(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))

    def __bool__(self) -> bool:
        return bool(self.ngrams or self.short)

    def is_contaminated(self, normalized: str) -> bool:
        toks = words(normalized)
        if tuple(toks) in self.short:
            return True
        n = self.n
        total = len(toks) - n + 1
        if total <= 0:
            return False
        hits = sum(tuple(toks[i : i + n]) in self.ngrams for i in range(total))
        return hits / total >= self.max_overlap
