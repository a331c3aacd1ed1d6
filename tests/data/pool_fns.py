"""Worker functions for DeadlinePool tests (spawned workers import them by module path)."""

from __future__ import annotations

import time

WARMUP_S = 2.0


def slow_start() -> None:
    time.sleep(WARMUP_S)  # an import that is slow on a busy machine


def double_or_hang(x: int) -> int:
    if x < 0:
        time.sleep(60)
    return 2 * x
